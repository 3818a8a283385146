//! The `switchyard` binary: parse the command line, load the settings, run.

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard::settings::{Settings, StructuredMode};
use switchyard::startup::{Application, Exit};

/// jemalloc instead of glibc's malloc: the request path allocates and frees from many threads
/// (HTTP workers, the execution arbiter, the blocking pool, sled's IO threads), and glibc's
/// arenas spent 15 % of the gateway's CPU in malloc/free and consolidation (issue 16).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its first allocation; `_RJEM_MALLOC_CONF` in the environment
/// overrides them. One arena (two cores, and sled's threads would each take one), unused pages
/// returned after 250 ms rather than 10 s, no lazily purged pages kept, and thread caches for
/// sizes up to 4 KiB: together they keep peak memory under load below glibc's instead of ~40 %
/// above it, for most of the CPU jemalloc saves (README "The write path").
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: &[u8; 62] =
    b"narenas:1,dirty_decay_ms:250,muzzy_decay_ms:0,tcache_max:4096\0";

const ENVIRONMENT: &str = "\
Environment:
  SWITCHYARD_CONFIG      the config file (as --config)
  SWITCHYARD_ADMIN_KEY   an admin key of project `default` (never stored; without it the first
                         start creates one and prints it once)
  SWITCHYARD_LOG_FORMAT  `json` for one JSON object per log line
  RUST_LOG               log filter (default: info)
  <api_key_env>          each provider's key, from the variable its `api_key_env` names; also
                         [metrics] bearer_token_env and [webhooks] secret_env";

/// Actor-based streaming router for AI providers.
#[derive(Parser)]
#[command(version, about, after_help = ENVIRONMENT)]
struct Cli {
    /// TOML config file (default: the embedded config, mock provider, ./data).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the config (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory, overriding the config.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validates a config file and prints the providers and routes it resolves to, without
    /// starting (exit status 1 and the faulty field on an invalid config).
    CheckConfig {
        /// The config file.
        path: PathBuf,
    },
}

/// `check-config`: what the config resolves to, one line per provider and route.
fn check_config(path: &Path) -> anyhow::Result<()> {
    let settings = Settings::load(Some(path))?;
    println!("{}: valid", path.display());
    println!(
        "listen {}, data dir {}",
        settings.listen,
        settings.data_dir.display()
    );
    for p in &settings.providers {
        let key = match &p.api_key_env {
            Some(var) if std::env::var(var).is_ok_and(|v| !v.is_empty()) => {
                format!(", key from ${var}")
            }
            Some(var) => format!(", key from ${var} (not set here)"),
            None => String::new(),
        };
        println!(
            "provider {} ({}{}{key})",
            p.name,
            p.kind.as_str(),
            p.base_url
                .as_deref()
                .map(|u| format!(" at {u}"))
                .unwrap_or_default()
        );
    }
    for m in &settings.models {
        println!("model {}:", m.slug);
        for (i, r) in m.routes.iter().enumerate() {
            let mut extra = Vec::new();
            if r.input_per_mtok > 0.0 || r.output_per_mtok > 0.0 {
                extra.push(format!(
                    "${} in / ${} out per Mtok",
                    r.input_per_mtok, r.output_per_mtok
                ));
            }
            for (name, v) in [
                ("requests/min", r.requests_per_minute),
                ("tokens/min", r.tokens_per_minute),
                ("requests/day", r.requests_per_day),
                ("tokens/day", r.tokens_per_day),
            ] {
                if v > 0 {
                    extra.push(format!("{v} {name}"));
                }
            }
            let caps: Vec<&str> = [
                ("json", r.json_mode),
                ("tools", r.tools),
                ("vision", r.vision),
            ]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
            extra.push(caps.join("+"));
            if r.structured_output != StructuredMode::Native {
                extra.push(format!(
                    "structured output {}",
                    r.structured_output.as_str()
                ));
            }
            if let Some(w) = r.context_window {
                extra.push(format!("{w}-token window"));
            }
            println!(
                "  {}. {}/{} ({})",
                i + 1,
                r.provider,
                r.model,
                extra.join(", ")
            );
        }
    }
    Ok(())
}

/// The lines every start prints: where the config and data are, where to point a client and a
/// browser, what it routes to.
fn announce(settings: &Settings, config: Option<&Path>, address: SocketAddr) {
    println!("switchyard listening on http://{address}");
    match config {
        Some(path) => println!("config: {}", path.display()),
        None => println!("config: embedded default (the built-in mock provider, no API keys)"),
    }
    println!("data dir: {}", settings.data_dir.display());
    let dashboard = settings
        .public_url
        .as_deref()
        .map(|u| format!("{}/", u.trim_end_matches('/')))
        .unwrap_or_else(|| format!("http://{address}/"));
    println!("dashboard: {dashboard}");
    let providers: Vec<String> = settings
        .providers
        .iter()
        .map(|p| format!("{} ({})", p.name, p.kind.as_str()))
        .collect();
    println!("providers: {}", providers.join(", "));
    let models: Vec<String> = settings
        .models
        .iter()
        .map(|m| {
            let routes: Vec<String> = m
                .routes
                .iter()
                .map(|r| format!("{}/{}", r.provider, r.model))
                .collect();
            format!("{} → {}", m.slug, routes.join(" → "))
        })
        .collect();
    println!("models: {}", models.join("; "));
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,actix_server=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for a person at a terminal, never into files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // One JSON object per line for log shippers; key=value text otherwise.
    if std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { path }) = &cli.command {
        if let Err(err) = check_config(path) {
            eprintln!("{}: {err}", path.display());
            std::process::exit(1);
        }
        return Ok(());
    }
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(listen) = cli.listen {
        settings.listen = listen;
    }
    if let Some(dir) = cli.data_dir {
        settings.data_dir = dir;
    }
    settings.read_secrets_from_env();

    // Bound once, before anything is stored (a first start on a busy port must not create an
    // admin key it never prints): a store reopen builds the application again on this socket.
    let listener = std::net::TcpListener::bind(settings.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    let config_path = cli.config.clone();
    let mut first_start = true;
    loop {
        let attempt = settings.clone();
        let shown = settings.clone();
        let config_path = config_path.clone();
        let socket = listener.try_clone()?;
        let exit = actix_web::rt::System::new().block_on(async move {
            let app = match Application::build_on(attempt, socket).await {
                Ok(app) => app,
                // The previous engine's store may still be closing; the disk may still be
                // short. A restart keeps trying; a first start fails loudly.
                Err(err) if !first_start => {
                    tracing::error!(error = %err, "reopening the store failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return Ok::<_, anyhow::Error>(Exit::ReopenStore);
                }
                Err(err) => return Err(err),
            };
            if let Some(key) = app.bootstrap_admin_key() {
                println!(
                    "created the admin key of project `default` (shown once, only its hash is stored):"
                );
                println!("  {key}");
            }
            let address = app.address();
            if first_start {
                announce(&shown, config_path.as_deref(), address);
                if let Some(addr) = app.metrics_address() {
                    println!("metrics on http://{addr}/metrics");
                }
            } else {
                tracing::info!(%address, "store reopened; serving again");
            }
            Ok(app.run_until_stopped().await?)
        })?;
        match exit {
            Exit::Stopped => return Ok(()),
            Exit::ReopenStore => first_start = false,
        }
    }
}
