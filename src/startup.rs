//! Assembly: open the store, bootstrap the admin key, start the singleton actors, recover
//! unfinished executions, bind (port 0 works) and serve.

use actix::Actor;
use actix_web::{dev::Server, web, App, HttpServer};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::actors::{execution::ExecutionDeps, Registry, StartExecution};
use crate::api::{self, AppState};
use crate::channels::ProjectFeed;
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::routing::HealthBoard;
use crate::settings::Settings;
use crate::store::{hash_secret, KeyRole, Store};

pub struct Application {
    address: SocketAddr,
    server: Server,
    store: Store,
    bootstrap_admin_key: Option<String>,
    recovered: usize,
}

impl Application {
    /// Must run inside an actix system (the actors and the group committer live on it).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let store = Store::open_with(
            &settings.data_dir,
            settings.limits.store_cache_mb.saturating_mul(1024 * 1024),
            settings.limits.min_free_disk_mb,
        )?;
        let metrics = Arc::new(Metrics::new());
        store.commit.observe_flushes(metrics.store_flush.clone());
        let bootstrap_admin_key = bootstrap_admin(&store, &settings)?;
        let settings = Arc::new(settings);
        let providers = Arc::new(Providers::from_settings(&settings)?);
        let health = Arc::new(HealthBoard::new(&settings));
        let project_feed = Arc::new(ProjectFeed::default());
        let webhook_wake = Arc::new(tokio::sync::Notify::new());
        let webhook_secret = match &settings.webhooks.secret {
            Some(secret) => secret.clone(),
            None => store.webhook_secret()?,
        };
        crate::webhooks::Deliverer::start(
            store.clone(),
            webhook_secret.clone(),
            settings.webhooks.clone(),
            metrics.clone(),
            webhook_wake.clone(),
        );
        let registry = Registry::new(Arc::new(ExecutionDeps {
            store: store.clone(),
            settings: settings.clone(),
            providers: providers.clone(),
            health: health.clone(),
            project_feed: project_feed.clone(),
            metrics: metrics.clone(),
            webhook_wake: webhook_wake.clone(),
        }))
        .start();

        let recovered = recover(&store, &registry)?;
        crate::retention::Sweeper::start(
            store.clone(),
            settings.retention.clone(),
            metrics.clone(),
        );

        let state = web::Data::new(AppState {
            store: store.clone(),
            settings: settings.clone(),
            providers,
            health,
            registry,
            metrics,
            project_feed,
            webhook_secret,
            env_admin_key_hash: settings.admin_key.as_deref().map(hash_secret),
        });
        let listener = TcpListener::bind(settings.listen)?;
        let address = listener.local_addr()?;
        let shutdown = Duration::from_millis(settings.limits.shutdown_timeout_ms);
        let server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(api::observe))
                .app_data(state.clone())
                .configure(api::configure)
        })
        // actix-web leaves accepted sockets at the OS default (Nagle on): a response written
        // in more than one piece (every stream) then waits ~40 ms on the client's delayed ACK.
        .tcp_nodelay(true)
        .listen(listener)?
        .shutdown_timeout(shutdown.as_secs().max(1))
        .run();
        Ok(Application {
            address,
            server,
            store,
            bootstrap_admin_key,
            recovered,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The admin key created on the first start (printed once, then only its hash exists).
    pub fn bootstrap_admin_key(&self) -> Option<&str> {
        self.bootstrap_admin_key.as_deref()
    }

    /// Executions found unfinished at start and resumed.
    pub fn recovered(&self) -> usize {
        self.recovered
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT (or a stop through the handle), then makes the store durable.
    /// Running executions keep their log; the next start resumes them.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        if let Err(err) = self.store.flush() {
            tracing::error!(error = %err, "final store flush failed");
        }
        tracing::info!("stopped");
        result
    }
}

/// Restarts the executions a previous process left unfinished (read from the `unfinished`
/// index, not the history) and removes those a crash left unacknowledged. Returns how many
/// were restarted.
fn recover(store: &Store, registry: &actix::Addr<Registry>) -> anyhow::Result<usize> {
    let mut recovered = 0;
    for record in store.unfinished_executions()? {
        if !store.is_acknowledged(&record)? {
            tracing::info!(execution_id = %record.id, "removing an execution a crash left unacknowledged");
            store.remove_orphan(&record)?;
            continue;
        }
        let Some(request) = store.get_request(&record.id)? else {
            tracing::error!(execution_id = %record.id, "unfinished execution without its request, left as it is");
            continue;
        };
        tracing::info!(execution_id = %record.id, status = record.status.as_str(), "recovering unfinished execution");
        store.reindex(&record)?;
        registry.do_send(StartExecution(record, Arc::new(request)));
        recovered += 1;
    }
    Ok(recovered)
}

/// Without `SWITCHYARD_ADMIN_KEY` and without an admin key in the store, creates one and
/// returns its secret (the only time it exists outside the caller's hands).
fn bootstrap_admin(store: &Store, settings: &Settings) -> anyhow::Result<Option<String>> {
    if settings.admin_key.is_some() || store.has_admin_key(api::DEFAULT_PROJECT)? {
        return Ok(None);
    }
    let (_, secret) = store.create_key(
        api::DEFAULT_PROJECT,
        KeyRole::Admin,
        Some("bootstrap admin".into()),
    )?;
    store.flush()?;
    Ok(Some(secret))
}
