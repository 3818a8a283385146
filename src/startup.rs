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
        let webhooks = Arc::new(crate::webhooks::Webhooks::new(
            &settings.webhooks,
            &store,
            webhook_wake.clone(),
        )?);
        crate::webhooks::Deliverer::start(
            store.clone(),
            settings.clone(),
            webhooks.clone(),
            metrics.clone(),
            webhook_wake.clone(),
        )?;
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

        let mut unfinished = Vec::new();
        for record in store.unfinished_executions()? {
            if store.is_acknowledged(&record)? {
                unfinished.push(record);
            } else {
                tracing::info!(execution_id = %record.id, "removing an execution a crash left unacknowledged");
                store.remove_orphan(&record)?;
            }
        }
        let recovered = unfinished.len();
        for record in unfinished {
            tracing::info!(execution_id = %record.id, status = record.status.as_str(), "recovering unfinished execution");
            registry.do_send(StartExecution(record));
        }

        let state = web::Data::new(AppState {
            store: store.clone(),
            settings: settings.clone(),
            providers,
            health,
            registry,
            metrics,
            project_feed,
            webhooks,
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
    ///
    /// A store that failed a write (a full disk: sled poisons itself and never writes again)
    /// ends the serving too, once disk space is back: the caller then builds a fresh
    /// application on the same address, which reopens the store and resumes what was running
    /// from its log, as after a crash ([`Exit::ReopenStore`]).
    pub async fn run_until_stopped(self) -> std::io::Result<Exit> {
        let handle = self.server.handle();
        let reopen = self.store.health.reopen_due();
        tokio::pin!(reopen);
        let server = self.server;
        tokio::pin!(server);
        let exit = tokio::select! {
            result = &mut server => result.map(|()| Exit::Stopped),
            () = &mut reopen => {
                tracing::warn!("disk space is back: restarting the engine to reopen the store");
                // Streams cannot make progress on a failed store; their clients resume with
                // Last-Event-ID against the reopened one.
                // The stop command is sent on the call; the server future itself carries it
                // out, so it is the one awaited (awaiting the stop would never be polled).
                drop(handle.stop(false));
                let _ = server.await;
                Ok(Exit::ReopenStore)
            }
        };
        if self.store.health.failure().is_none() {
            if let Err(err) = self.store.flush() {
                tracing::error!(error = %err, "final store flush failed");
            }
        }
        tracing::info!("stopped");
        exit
    }
}

/// Why [`Application::run_until_stopped`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A signal or the server handle stopped it: the process ends.
    Stopped,
    /// The store failed and disk space is back: build the application again.
    ReopenStore,
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
