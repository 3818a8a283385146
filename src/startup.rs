//! Assembly: open the store, bootstrap the admin key, start the singleton actors, recover
//! unfinished executions, bind (port 0 works) and serve.

use actix_web::{dev::Server, web, App, HttpServer};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::actors::{execution::ExecutionDeps, Registry, StartExecution};
use crate::api::{self, AppState};
use crate::channels::ProjectFeed;
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::routing::{HealthBoard, QuotaBoard};
use crate::settings::Settings;
use crate::store::{hash_secret, KeyRole, Store};

pub struct Application {
    address: SocketAddr,
    server: Server,
    /// `GET /metrics` on its own address (`[metrics] listen`).
    metrics_server: Option<(SocketAddr, Server)>,
    store: Store,
    /// Its day counters are saved once more at shutdown.
    quota: Arc<QuotaBoard>,
    bootstrap_admin_key: Option<String>,
    recovered: usize,
}

impl Application {
    /// Must run inside an actix system (the actors and the group committer live on it).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(settings.listen)?;
        Self::build_on(settings, listener).await
    }

    /// [`Self::build`] serving on a listener bound beforehand: the binary keeps one across
    /// store reopens, so clients wait in its backlog instead of finding the port closed.
    pub async fn build_on(
        settings: Settings,
        listener: TcpListener,
    ) -> anyhow::Result<Application> {
        if let (Some(var), None) = (
            &settings.metrics.bearer_token_env,
            &settings.metrics.bearer_token,
        ) {
            // Failing closed: a typo must not publish the metrics unprotected.
            anyhow::bail!("invalid config: metrics.bearer_token_env: variable `{var}` is not set");
        }
        match raise_fd_limit() {
            Ok((before, after)) if before != after => {
                tracing::info!(
                    before,
                    after,
                    "raised the open-file limit to the hard limit"
                )
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot raise the open-file limit"),
        }
        let store = Store::open_with(
            &settings.data_dir,
            settings.limits.store_cache_mb.saturating_mul(1024 * 1024),
            settings.limits.min_free_disk_mb,
        )?;
        let metrics = Arc::new(Metrics::new());
        store.commit.observe_flushes(metrics.store_flush.clone());
        let bootstrap_admin_key = bootstrap_admin(&store, &settings)?;
        load_catalog(&store, &settings)?;
        let settings = Arc::new(settings);
        let providers = Arc::new(Providers::from_settings(&settings)?);
        let health = Arc::new(HealthBoard::new(&settings));
        let quota = Arc::new(QuotaBoard::new(&settings));
        quota.restore(store.load_route_days()?);
        start_quota_saver(store.clone(), quota.clone());
        let (cluster, webhook_queue) = match &settings.cluster {
            Some(c) => {
                let (cluster, queue) =
                    crate::cluster::Cluster::join(c, &settings.retention).await?;
                (Some(Arc::new(cluster)), Some(queue))
            }
            None => (None, None),
        };
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
            cluster.clone(),
        )?;
        let ledger = Arc::new(match &cluster {
            Some(_) => crate::ledger::Ledger::open_shared(store.clone())?,
            None => crate::ledger::Ledger::open(
                store.clone(),
                crate::ledger::recovery_window(settings.limits.max_execution_ms),
            )?,
        });
        let (registry, launcher) = Registry::start(Arc::new(ExecutionDeps {
            store: store.clone(),
            settings: settings.clone(),
            providers: providers.clone(),
            health: health.clone(),
            quota: quota.clone(),
            project_feed: project_feed.clone(),
            metrics: metrics.clone(),
            webhook_wake: webhook_wake.clone(),
            ledger: ledger.clone(),
            cluster: cluster.clone(),
        }));

        let revocations = Arc::<crate::revocation::Revocations>::default();
        let recovered = match &cluster {
            // A cluster resumes through leases: this node's own (from before a restart) at once,
            // other nodes' once they run out.
            Some(cluster) => {
                let webhooks = (webhook_queue.expect("joined"), webhook_wake.clone());
                tokio::spawn(cluster.clone().mirror_ledger(store.clone(), ledger.clone()));
                quota.share_days();
                tokio::spawn(cluster.clone().share_quotas(quota.clone()));
                start_cluster(
                    cluster,
                    &store,
                    &project_feed,
                    &registry,
                    webhooks,
                    metrics.cluster_takeovers.clone(),
                );
                0
            }
            None => recover(&store, &ledger, &registry)?,
        };
        crate::retention::Sweeper::start(
            store.clone(),
            settings.retention.clone(),
            metrics.clone(),
        );
        // Tokens from before the expiry index were never deleted: one scan removes them.
        let tokens = store.clone();
        let kept = settings.retention.ws_tokens.as_millis() as u64;
        tokio::task::spawn_blocking(move || {
            let cutoff = crate::domain::now_ms().saturating_sub(kept);
            match tokens.remove_expired_ws_tokens_by_scan(cutoff) {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "removed expired websocket tokens"),
                Err(err) => tracing::warn!(error = %err, "websocket token scan failed"),
            }
        });

        let limits = Arc::new(crate::limits::RateLimits::new(
            &settings.limits,
            store.key_limit_overrides()?,
            store.project_limit_overrides()?,
        ));
        if let Some(cluster) = &cluster {
            let changed = shared_change(revocations.clone(), limits.clone(), ledger.clone());
            tokio::spawn(cluster.clone().mirror_shared(store.clone(), changed));
        }
        let shrink = limits.clone();
        actix_web::rt::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                shrink.shrink();
            }
        });
        let state = web::Data::new(AppState {
            store: store.clone(),
            settings: settings.clone(),
            providers,
            health,
            quota: quota.clone(),
            registry,
            launcher,
            metrics,
            project_feed,
            revocations,
            webhooks,
            env_admin_key_hash: settings.admin_key.as_deref().map(hash_secret),
            limits,
            ledger,
            cluster,
        });
        let metrics_server = match settings.metrics.listen {
            Some(addr) => Some(metrics_server(addr, state.clone())?),
            None => None,
        };
        let address = listener.local_addr()?;
        let shutdown = Duration::from_millis(settings.limits.shutdown_timeout_ms);
        let limiter = api::ConnectionLimiter::new(settings.limits.ip_max_connections);
        let cors = settings.cors.clone();
        let server = HttpServer::new(move || {
            App::new()
                .wrap(api::cors::middleware(&cors))
                .wrap(actix_web::middleware::from_fn(api::refuse_over_cap))
                .wrap(actix_web::middleware::from_fn(api::rate_limit_headers))
                .wrap(actix_web::middleware::from_fn(api::observe))
                .app_data(state.clone())
                .configure(api::configure)
        })
        // actix-web leaves accepted sockets at the OS default (Nagle on): a response written
        // in more than one piece (every stream) then waits ~40 ms on the client's delayed ACK.
        .tcp_nodelay(true)
        .on_connect(move |conn, data| limiter.on_connect(conn, data))
        // A client that connects and never finishes its request head is closed (408).
        .client_request_timeout(Duration::from_millis(settings.limits.header_timeout_ms))
        .listen(listener)?
        .shutdown_timeout(shutdown.as_secs().max(1))
        .run();
        Ok(Application {
            address,
            server,
            metrics_server,
            store,
            quota,
            bootstrap_admin_key,
            recovered,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Where `/metrics` is served when `[metrics] listen` is set.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|(addr, _)| *addr)
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
        let metrics = self.metrics_server.map(|(_, server)| {
            let handle = server.handle();
            actix_web::rt::spawn(server);
            handle
        });
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
        if let Some(handle) = metrics {
            handle.stop(true).await;
        }
        if self.store.health.failure().is_none() {
            save_quota_days(&self.store, &self.quota);
            if let Err(err) = self.store.flush() {
                tracing::error!(error = %err, "final store flush failed");
            }
        }
        tracing::info!("stopped");
        exit
    }
}

/// How often the upstream quota day counters are saved: the most a crash can lose (a clean
/// shutdown saves them once more).
pub const QUOTA_SAVE_EVERY: Duration = Duration::from_secs(1);

/// Saves the quota board's day counters on a timer, in one batch, only when they changed.
fn start_quota_saver(store: Store, quota: Arc<QuotaBoard>) {
    actix_web::rt::spawn(async move {
        let mut every = tokio::time::interval(QUOTA_SAVE_EVERY);
        loop {
            every.tick().await;
            save_quota_days(&store, &quota);
        }
    });
}

fn save_quota_days(store: &Store, quota: &QuotaBoard) {
    let Some(days) = quota.take_dirty_days() else {
        return;
    };
    if let Err(err) = store.save_route_days(&days) {
        tracing::warn!(error = %err, "cannot save upstream quota counters");
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

/// A one-worker server answering only `GET /metrics` (scrapes are rare and cheap).
fn metrics_server(
    addr: SocketAddr,
    state: web::Data<AppState>,
) -> anyhow::Result<(SocketAddr, Server)> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot bind metrics.listen {addr}: {e}"))?;
    let address = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/metrics", web::get().to(api::metrics_listener))
    })
    .workers(1)
    .listen(listener)?
    .disable_signals()
    .run();
    Ok((address, server))
}

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard limit and returns
/// (before, after). The common soft default of 1,024 is a few hundred clients: each connection,
/// each provider stream and sled's files take one descriptor.
// `rlim_t` is u64 on Linux and macOS but not on every target, hence the casts.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur as u64;
    if limit.rlim_cur >= limit.rlim_max {
        return Ok((before, before));
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit only reads the struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((before, limit.rlim_cur as u64))
}

/// Restarts the executions a previous process left unfinished (read from the `unfinished`
/// index, not the history) and removes those a crash left unacknowledged. Returns how many
/// were restarted.
/// What follows a shared entry another node changed: a revoked or rotated key ends its streams
/// here too, and key and project limits (monthly caps included) apply here at once.
fn shared_change(
    revocations: Arc<crate::revocation::Revocations>,
    limits: Arc<crate::limits::RateLimits>,
    ledger: Arc<crate::ledger::Ledger>,
) -> Arc<crate::cluster::shared_state::SharedChange> {
    use crate::store::{KeyLimits, KeyRecord};
    Arc::new(
        move |tree: &str, key: &[u8], before: Option<&[u8]>, after: Option<&[u8]>| {
            let record =
                |b: Option<&[u8]>| b.and_then(|b| serde_json::from_slice::<KeyRecord>(b).ok());
            match tree {
                "keys" => {
                    if let Some(id) = crate::cluster::shared_state::ended_key(before, after) {
                        revocations.revoke(&id);
                    }
                    if let Some(after) = record(after) {
                        if record(before).is_none_or(|b| b.limits != after.limits) {
                            limits.set_key_limits(&after.id, after.limits);
                            let capped =
                                after.limits.monthly_spend_cap_micros.is_some_and(|c| c > 0);
                            ledger.set_capped(&after.id, capped);
                        }
                    }
                }
                "project_limits" => {
                    let project = String::from_utf8_lossy(key);
                    let parsed = after
                        .and_then(|b| serde_json::from_slice::<KeyLimits>(b).ok())
                        .unwrap_or_default();
                    limits.set_project_limits(&project, parsed);
                }
                _ => {}
            }
        },
    )
}

/// The cluster's background work: lease renewal, the mirror of events and records, takeover.
fn start_cluster(
    cluster: &Arc<crate::cluster::Cluster>,
    store: &Store,
    project_feed: &Arc<ProjectFeed>,
    registry: &actix::Addr<Registry>,
    (webhook_queue, webhook_wake): (crate::cluster::WebhookQueue, Arc<tokio::sync::Notify>),
    takeovers: prometheus::IntCounter,
) {
    tokio::spawn(cluster.clone().forward_webhooks(webhook_queue));
    tokio::spawn(cluster.clone().mirror_webhooks(store.clone(), webhook_wake));
    let (queue, writes) = tokio::sync::mpsc::unbounded_channel();
    store.replication.attach(queue);
    tokio::spawn(cluster.clone().forward_shared(writes));
    tokio::spawn(cluster.clone().renew_leases());
    tokio::spawn(
        cluster
            .clone()
            .mirror_events(store.clone(), project_feed.clone()),
    );
    tokio::spawn(cluster.clone().mirror_records(store.clone()));
    tokio::spawn(
        cluster
            .clone()
            .take_over_loop(store.clone(), registry.clone(), takeovers),
    );
}

fn recover(
    store: &Store,
    ledger: &crate::ledger::Ledger,
    registry: &actix::Addr<Registry>,
) -> anyhow::Result<usize> {
    let mut recovered = 0;
    for record in store.unfinished_executions()? {
        if !store.is_acknowledged(&record)? {
            tracing::info!(execution_id = %record.id, "removing an execution a crash left unacknowledged");
            let key_id = record.key_id.as_deref().unwrap_or_default();
            ledger.settle(&record.id, &record.project_id, key_id, None)?;
            store.remove_orphan(&record)?;
            continue;
        }
        let Some(request) = store.get_request(&record.id)? else {
            tracing::error!(execution_id = %record.id, "unfinished execution without its request, left as it is");
            continue;
        };
        tracing::info!(execution_id = %record.id, status = record.status.as_str(), "recovering unfinished execution");
        store.reindex(&record)?;
        registry.do_send(StartExecution::new(record, Arc::new(request)));
        recovered += 1;
    }
    Ok(recovered)
}

/// Stores the config's structures and workflows as their newest versions (an unchanged one is
/// not a new version), so submits and the admin API see one catalog.
fn load_catalog(store: &Store, settings: &Settings) -> anyhow::Result<()> {
    use crate::store::CatalogKind;
    for s in &settings.structures {
        let schema = s.schema.clone().unwrap_or_default();
        store.catalog_put(
            CatalogKind::Structure,
            "",
            &s.name,
            schema,
            s.description.clone(),
        )?;
    }
    for w in &settings.workflows {
        let body = serde_json::to_value(w)?;
        store.catalog_put(
            CatalogKind::Workflow,
            "",
            &w.name,
            body,
            w.description.clone(),
        )?;
    }
    Ok(())
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
        crate::store::KeyMode::Live,
    )?;
    store.flush()?;
    Ok(Some(secret))
}
