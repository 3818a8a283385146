//! The `switchyard` binary: parse the command line, load the settings, run.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use switchyard::settings::Settings;
use switchyard::startup::{Application, Exit};

/// Actor-based streaming router for AI providers.
#[derive(Parser)]
#[command(version, about)]
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
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,actix_server=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // One JSON object per line for log shippers; key=value text otherwise.
    if std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(listen) = cli.listen {
        settings.listen = listen;
    }
    if let Some(dir) = cli.data_dir {
        settings.data_dir = dir;
    }
    settings.read_secrets_from_env();

    // Bound once: a store reopen builds the application again on the same socket.
    let listener = std::net::TcpListener::bind(settings.listen)?;
    let mut first_start = true;
    loop {
        let attempt = settings.clone();
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
                println!("switchyard listening on http://{address}");
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
