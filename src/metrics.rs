//! Every Prometheus collector in one place, one registry per server. Names carry the
//! `switchyard_` prefix and their unit; labels are bounded (routes, models, providers, codes —
//! never ids).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub executions: IntCounterVec,
    pub active_executions: IntGauge,
    pub attempts: IntCounterVec,
    pub failovers: IntCounterVec,
    pub first_chunk: HistogramVec,
    pub stream_duration: HistogramVec,
    pub chunk_gap: HistogramVec,
    pub tokens: IntCounterVec,
    pub events: IntCounter,
    pub sse_subscribers: IntGauge,
    pub ws_sockets: IntGauge,
    pub ws_channels: IntGauge,
    pub ws_frames_sent: IntCounter,
    pub ws_lagged: IntCounter,
    pub breaker_state: IntGaugeVec,
    pub breaker_cooldown: prometheus::GaugeVec,
    pub route_breaker_state: IntGaugeVec,
    pub route_headroom_requests: IntGaugeVec,
    pub route_headroom_tokens: IntGaugeVec,
    pub store_size: IntGauge,
    pub store_flush: Histogram,
    pub webhooks: IntCounterVec,
    pub retention_deleted: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub spend: IntCounterVec,
    pub insufficient_balance: IntCounter,
    pub held: IntGauge,
    /// Cluster mode (absent from a single node's scrape until a cluster sets them).
    pub cluster_node: IntGaugeVec,
    pub cluster_leases: IntGauge,
    pub cluster_takeovers: IntCounter,
    pub cluster_fenced: IntCounter,
    pub cluster_append: prometheus::Histogram,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("collector names are unique");
    c
}

/// Seconds, from 1 ms to 2 min: request latencies and stream lengths.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Seconds, from 50 µs to 10 s: gaps between chunks and fsyncs.
const FINE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            register(&r, HistogramVec::new(opts, labels).expect("valid metric"))
        };
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric"));
        let counter = |name: &str, help: &str| {
            register(&r, IntCounter::new(name, help).expect("valid metric"))
        };
        Metrics {
            spend: counter_vec(
                "switchyard_spend_micros_total",
                "What completed answers cost at the routes' prices, in micro-dollars, by model slug.",
                &["model"],
            ),
            insufficient_balance: counter(
                "switchyard_insufficient_balance_total",
                "Submits refused because the balance or the key's monthly cap did not cover their hold.",
            ),
            held: gauge(
                "switchyard_held_micros",
                "What all projects' open holds reserve, in micro-dollars.",
            ),
            cluster_node: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "switchyard_cluster_node",
                        "1 for the node id this process runs as in a cluster (every other figure of this scrape is this node's).",
                    ),
                    &["node"],
                )
                .expect("valid metric"),
            ),
            cluster_leases: gauge(
                "switchyard_cluster_leases",
                "Execution leases this node holds (the executions it drives).",
            ),
            cluster_takeovers: counter(
                "switchyard_cluster_takeovers_total",
                "Executions this node took over from a node whose lease ran out.",
            ),
            cluster_fenced: counter(
                "switchyard_cluster_fenced_total",
                "Executions this node stopped driving because another node took them over.",
            ),
            cluster_append: register(
                &r,
                prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "switchyard_cluster_append_seconds",
                        "Appending a batch of events to the shared log, until JetStream acknowledged it.",
                    )
                    .buckets(FINE_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            rate_limited: counter_vec(
                "switchyard_rate_limited_total",
                "Requests refused by a client rate limit, by scope (ip, key, project, tokens, concurrency).",
                &["scope"],
            ),
            http_requests: counter_vec(
                "switchyard_http_requests_total",
                "HTTP requests by route pattern, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: histogram_vec(
                "switchyard_http_request_duration_seconds",
                "Time to the response head, by route pattern and method.",
                &["route", "method"],
                LATENCY_BUCKETS,
            ),
            executions: counter_vec(
                "switchyard_executions_total",
                "Executions that reached a terminal status.",
                &["model", "status"],
            ),
            active_executions: gauge("switchyard_active_executions", "Executions running now."),
            attempts: counter_vec(
                "switchyard_provider_attempts_total",
                "Provider attempts by outcome and error code (`none` when it succeeded).",
                &["provider", "outcome", "code"],
            ),
            failovers: counter_vec(
                "switchyard_failovers_total",
                "Failovers announced to subscribers.",
                &["from", "to", "reason"],
            ),
            first_chunk: histogram_vec(
                "switchyard_time_to_first_chunk_seconds",
                "Attempt start to its first text chunk.",
                &["provider"],
                LATENCY_BUCKETS,
            ),
            stream_duration: histogram_vec(
                "switchyard_stream_duration_seconds",
                "Length of successful provider streams.",
                &["provider"],
                LATENCY_BUCKETS,
            ),
            chunk_gap: histogram_vec(
                "switchyard_inter_chunk_gap_seconds",
                "Silence between consecutive chunks of one attempt.",
                &["provider"],
                FINE_BUCKETS,
            ),
            tokens: counter_vec(
                "switchyard_tokens_total",
                "Tokens of completed executions.",
                &["model", "direction"],
            ),
            events: counter(
                "switchyard_events_appended_total",
                "Events appended to execution logs.",
            ),
            sse_subscribers: gauge("switchyard_sse_subscribers", "Open SSE event streams."),
            ws_sockets: gauge(
                "switchyard_websocket_sockets",
                "Open WebSocket connections.",
            ),
            ws_channels: gauge(
                "switchyard_websocket_channels",
                "Channels joined over all open WebSocket connections.",
            ),
            ws_frames_sent: counter(
                "switchyard_websocket_frames_sent_total",
                "Frames sent to WebSocket clients.",
            ),
            ws_lagged: counter(
                "switchyard_websocket_lagged_total",
                "Times a WebSocket channel fell behind the live feed and caught up from the log.",
            ),
            breaker_state: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "switchyard_provider_breaker_state",
                        "Aggregate breaker over all of a provider's routes (informational): 0 closed, 1 half-open, 2 open.",
                    ),
                    &["provider"],
                )
                .expect("valid metric"),
            ),
            breaker_cooldown: register(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "switchyard_provider_cooldown_seconds",
                        "Time left before an open breaker admits its probe.",
                    ),
                    &["provider"],
                )
                .expect("valid metric"),
            ),
            route_breaker_state: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "switchyard_route_breaker_state",
                        "Circuit breaker of one route (provider, upstream model), the one admission reads: 0 closed, 1 half-open, 2 open.",
                    ),
                    &["provider", "model"],
                )
                .expect("valid metric"),
            ),
            route_headroom_requests: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "switchyard_route_headroom_requests",
                        "Requests a route may still send upstream: window minute or day (its configured cap less use, UTC fixed windows) or provider (its last rate-limit headers). Absent when uncapped or unreported.",
                    ),
                    &["provider", "model", "window"],
                )
                .expect("valid metric"),
            ),
            route_headroom_tokens: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "switchyard_route_headroom_tokens",
                        "Tokens a route may still use upstream, by window as for switchyard_route_headroom_requests.",
                    ),
                    &["provider", "model", "window"],
                )
                .expect("valid metric"),
            ),
            store_size: gauge(
                "switchyard_store_size_bytes",
                "Size of the sled store on disk.",
            ),
            store_flush: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "switchyard_store_flush_seconds",
                        "Group-commit flush (write + fsync) latency.",
                    )
                    .buckets(FINE_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            webhooks: counter_vec(
                "switchyard_webhook_deliveries_total",
                "Webhook delivery tries by outcome (delivered, failed, dead).",
                &["outcome"],
            ),
            retention_deleted: counter_vec(
                "switchyard_retention_deleted_total",
                "What the retention sweep deleted, by kind (execution, debug_log, analytics_minute, ws_token).",
                &["kind"],
            ),
            registry: r,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
