//! A real full disk under a real process: a tmpfs of a few MB holds the data dir (mounted
//! here when running as root, CI does; skipped with a message otherwise). Filling it must
//! answer `storage_unavailable` promptly — never a 500, never a hang — turn `/readyz`
//! not-ready, and once space is freed the server reopens its store by itself, serves again
//! and finishes what it acknowledged with the right text.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::helpers::*;

/// A tmpfs mounted for one test, unmounted (lazily, the server may still hold files) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        if !status.success() {
            eprintln!("skipped: mount -t tmpfs failed (no CAP_SYS_ADMIN in this container?)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros into `path` until the file system says it is full.
fn fill(path: &Path) -> PathBuf {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match file.write_all(&block).and_then(|()| file.sync_all()) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => return path.to_path_buf(),
            Err(err) => panic!("filling the disk: {err}"),
        }
    }
}

struct Client {
    http: reqwest::Client,
    address: String,
}

impl Client {
    async fn submit(&self, key: &str, prompt: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/executions", self.address))
            .bearer_auth(ADMIN_KEY)
            .json(&chat_body(key, prompt, "chat-default"))
            .send()
            .await
            .expect("a submit is answered, never left hanging")
    }

    async fn ready(&self) -> u16 {
        self.http
            .get(format!("{}/readyz", self.address))
            .send()
            .await
            .expect("readyz answers")
            .status()
            .as_u16()
    }

    async fn wait_terminal(&self, id: &str) -> Value {
        for _ in 0..3000 {
            let res = self
                .http
                .get(format!("{}/v1/executions/{id}", self.address))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await;
            if let Ok(res) = res {
                if res.status() == 200 {
                    let exec: Value = res.json().await.unwrap();
                    if !matches!(exec["status"].as_str().unwrap(), "pending" | "processing") {
                        return exec;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("execution {id} did not finish");
    }
}

async fn until_ready_is(client: &Client, want: u16) {
    for _ in 0..600 {
        if client.ready().await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never answered {want}");
}

#[actix_web::test]
async fn a_full_disk_answers_503_and_the_store_reopens_when_space_returns() {
    let Some(disk) = Tmpfs::mount("16m") else {
        return;
    };
    let config = disk.path().join("switchyard.toml");
    // No floor: this test is about the disk really filling up.
    let toml = config_for_disk_test();
    std::fs::write(&config, toml).unwrap();
    let server = spawn_process(&config, &disk.path().join("data"));
    let client = Client {
        // A hang is a failure: no request may outlive this.
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        address: server.address.clone(),
    };
    let prompt = "Tell me about disks";
    let reference = client.submit("reference", prompt).await;
    assert_eq!(reference.status(), 202);
    let reference: Value = reference.json().await.unwrap();
    let reference = client
        .wait_terminal(reference["id"].as_str().unwrap())
        .await;
    assert_eq!(reference["status"], "completed");
    let expected = reference["output"]["text"].clone();
    assert!(
        expected.as_str().is_some_and(|t| !t.is_empty()),
        "{reference}"
    );

    let filler = fill(&disk.path().join("filler"));
    // Submit until the store's writes fail: every answer is an acceptance or a clean 503.
    let mut accepted = Vec::new();
    let mut refused = false;
    for i in 0..400 {
        let res = client.submit(&format!("full-{i}"), prompt).await;
        match res.status().as_u16() {
            202 => accepted.push(
                res.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ),
            503 => {
                assert!(res.headers().contains_key("retry-after"));
                assert_error(res, 503, "storage_unavailable").await;
                refused = true;
                break;
            }
            other => panic!(
                "a full disk answered {other}: {}",
                res.text().await.unwrap()
            ),
        }
    }
    assert!(refused, "400 submits fit on a full 16 MB disk?");
    until_ready_is(&client, 503).await;
    let again = client.submit("while-full", prompt).await;
    assert_error(again, 503, "storage_unavailable").await;

    std::fs::remove_file(filler).unwrap();
    until_ready_is(&client, 200).await;

    // Serving again, on the same address, with the same data.
    let after = client.submit("after", prompt).await;
    assert_eq!(after.status(), 202, "{}", after.text().await.unwrap());
    let after: Value = after.json().await.unwrap();
    let after = client.wait_terminal(after["id"].as_str().unwrap()).await;
    assert_eq!(after["status"], "completed");
    assert_eq!(after["output"]["text"], expected);
    // Everything acknowledged before the disk filled finishes, with the whole answer.
    for id in &accepted {
        let exec = client.wait_terminal(id).await;
        assert_eq!(exec["status"], "completed", "{exec}");
        assert_eq!(exec["output"]["text"], expected, "{exec}");
    }
}

fn config_for_disk_test() -> String {
    format!("{}\n[limits]\nmin_free_disk_mb = 0\n", config(&[]))
}
