//! The binary as a newcomer meets it: the example configs (each loads and `check-config`
//! accepts it), the lines every start prints, the bootstrap admin key created only once the
//! port is bound, plain logs into a pipe, `--help` naming the environment.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard::settings::Settings;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.env_remove("SWITCHYARD_CONFIG")
        .env_remove("SWITCHYARD_ADMIN_KEY")
        .env("RUST_LOG", "info");
    cmd
}

fn examples() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_loads_and_check_config_prints_its_routes() {
    let files = examples();
    assert!(files.len() >= 8, "{files:?}");
    for path in files {
        let settings = Settings::load(Some(&path)).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        for p in &settings.providers {
            assert!(p.base_url.is_some(), "{path:?}: {} has a base_url", p.name);
        }
        let out = bin().arg("check-config").arg(&path).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{path:?}: {stdout}");
        assert!(stdout.contains(": valid"), "{stdout}");
        for m in &settings.models {
            assert!(stdout.contains(&format!("model {}:", m.slug)), "{stdout}");
            for r in &m.routes {
                assert!(stdout.contains(&format!("{}/{}", r.provider, r.model)));
            }
        }
    }
}

#[test]
fn check_config_names_what_is_wrong_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\n[[providers]]\nname = \"a\"\nkind = \"anthropic\"\nbase_url = \"ftp://x\"\n[[models]]\nslug = \"m\"\nroutes = [{ provider = \"a\", model = \"x\" }]\n",
    )
    .unwrap();
    let out = bin().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("providers[0].base_url"), "{stderr}");
}

#[test]
fn help_lists_the_environment_variables() {
    let out = bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "SWITCHYARD_CONFIG",
        "SWITCHYARD_ADMIN_KEY",
        "SWITCHYARD_LOG_FORMAT",
        "RUST_LOG",
        "check-config",
    ] {
        assert!(help.contains(var), "{var} in --help:\n{help}");
    }
}

/// Starts the binary and reads stdout up to its `models:` line.
fn start(args: &[&str], data: &std::path::Path) -> (std::process::Child, Vec<String>) {
    let mut child = bin()
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let last = line.starts_with("models:");
        seen.push(line);
        if last {
            break;
        }
    }
    (child, seen)
}

fn stop(mut child: std::process::Child) -> String {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

#[test]
fn a_start_says_where_everything_is_and_logs_without_colour_into_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, lines) = start(&["--listen", "127.0.0.1:0"], &data);
    let text = lines.join("\n");
    let address = lines
        .iter()
        .find_map(|l| l.strip_prefix("switchyard listening on "))
        .unwrap_or_else(|| panic!("{text}"))
        .to_string();
    for expected in [
        "created the admin key of project `default`".to_string(),
        "config: embedded default (the built-in mock provider, no API keys)".to_string(),
        format!("data dir: {}", data.display()),
        format!("dashboard: {address}/"),
        "providers: mock (mock)".to_string(),
        "models: chat-default → mock/mock-1; chat-fast → mock/mock-fast".to_string(),
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(&expected)),
            "`{expected}` in:\n{text}"
        );
    }
    let stderr = stop(child);
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no colour codes: {stderr:?}");

    // A second start on the same data finds the key: it creates and prints none.
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, switchyard::settings::DEFAULT_CONFIG).unwrap();
    let (child, lines) = start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &data,
    );
    let text = lines.join("\n");
    assert!(!text.contains("created the admin key"), "{text}");
    assert!(
        text.contains(&format!("config: {}", config.display())),
        "{text}"
    );
    stop(child);
}

#[actix_web::test]
async fn a_first_start_on_a_busy_port_stores_no_key_and_the_next_start_prints_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    let out = bin()
        .args(["--listen", &port, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {port}")),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    drop(busy);

    let (child, lines) = start(&["--listen", "127.0.0.1:0"], &data);
    let at = lines
        .iter()
        .position(|l| l.starts_with("created the admin key"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    let key = lines[at + 1].trim().to_string();
    let address = lines
        .iter()
        .find_map(|l| l.strip_prefix("switchyard listening on "))
        .unwrap()
        .to_string();
    let res = reqwest::Client::new()
        .get(format!("{address}/v1/me"))
        .bearer_auth(&key)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the printed key works");
    stop(child);
}
