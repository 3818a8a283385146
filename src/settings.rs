//! The TOML configuration: parsing with field names in every error, validation of values, and
//! secrets read from the environment (never from the file).

use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The configuration used when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("default_config.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The URL clients reach this server at (`https://router.example/switchyard`): submit
    /// answers build `websocket_url` from it instead of from the request's Host header.
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub compat: Compat,
    #[serde(default)]
    pub webhooks: WebhookSettings,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub cors: CorsSettings,
    #[serde(default)]
    pub testing: TestingSettings,
    #[serde(default)]
    pub structures: Vec<StructureSettings>,
    /// `[cluster]`: share state through NATS JetStream; absent, the embedded sled store alone.
    #[serde(default)]
    pub cluster: Option<ClusterSettings>,
    #[serde(default)]
    pub workflows: Vec<crate::workflows::WorkflowDef>,
    pub providers: Vec<ProviderSettings>,
    pub models: Vec<ModelSettings>,
    /// From `SWITCHYARD_ADMIN_KEY`; never read from the file.
    #[serde(skip)]
    pub admin_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// An execution still running after this long ends as `expired`.
    pub max_execution_ms: u64,
    /// How long SIGTERM waits for open connections before closing them.
    pub shutdown_timeout_ms: u64,
    /// Idle SSE streams get a comment line this often so proxies keep them open.
    pub sse_keepalive_ms: u64,
    /// Single-use WebSocket tokens stop working after this long.
    pub ws_token_ttl_ms: u64,
    /// The server pings every WebSocket this often.
    pub ws_heartbeat_ms: u64,
    /// A WebSocket silent for this long (no pong, no frame) is closed.
    pub ws_client_timeout_ms: u64,
    /// A client must send its request head within this long after connecting (or after the
    /// previous response on a kept-alive connection); else the connection is closed with 408.
    pub header_timeout_ms: u64,
    /// A request body must arrive completely within this long after its head: 408
    /// `request_timeout` and the connection closed otherwise.
    pub body_timeout_ms: u64,
    /// After `body_rate_grace_ms`, a body arriving slower than this on average is cut off the
    /// same way (0 = no minimum rate).
    pub body_min_bytes_per_sec: u64,
    pub body_rate_grace_ms: u64,
    /// Open connections one client address may hold; more are answered 429 `rate_limited` and
    /// closed (0 = no cap). Counts the TCP peer: behind a proxy, raise it or turn it off.
    pub ip_max_connections: usize,
    /// Largest WebSocket message a client may send (one frame or a fragmented message); a
    /// larger one closes the socket with 1009.
    pub ws_max_message_bytes: usize,
    /// The store's page cache (sled's `cache_capacity`): most of the process's memory once
    /// the data outgrows it.
    pub store_cache_mb: u64,
    /// Below this much free space on the data dir's disk new work is refused (503 with
    /// `Retry-After`), so what is running can still finish; 0 turns the check off.
    pub min_free_disk_mb: u64,
    /// Client rate limits (`crate::limits`), each 0 = no limit. Requests per minute per
    /// client address, per API key and per project; the whole minute's allowance may be
    /// spent at once (the burst), then it refills evenly.
    pub ip_requests_per_minute: u64,
    pub key_requests_per_minute: u64,
    pub project_requests_per_minute: u64,
    /// Per API key: prompt estimate + `max_tokens` of each submit, per minute.
    pub key_tokens_per_minute: u64,
    /// Per API key: executions not yet terminal.
    pub key_concurrent_executions: u64,
    /// Proxies (addresses or CIDRs) whose `X-Forwarded-For` / `Forwarded` name the client;
    /// from any other peer those headers are ignored, so they cannot dodge the per-IP limit.
    pub trusted_proxies: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            max_execution_ms: 10 * 60 * 1000,
            shutdown_timeout_ms: 5_000,
            sse_keepalive_ms: 15_000,
            ws_token_ttl_ms: 5 * 60 * 1000,
            ws_heartbeat_ms: 5_000,
            ws_client_timeout_ms: 15_000,
            ws_max_message_bytes: 64 * 1024,
            header_timeout_ms: 5_000,
            body_timeout_ms: 60_000,
            body_min_bytes_per_sec: 1_024,
            body_rate_grace_ms: 5_000,
            ip_max_connections: 256,
            store_cache_mb: 4,
            min_free_disk_mb: 256,
            ip_requests_per_minute: 0,
            key_requests_per_minute: 0,
            project_requests_per_minute: 0,
            key_tokens_per_minute: 0,
            key_concurrent_executions: 0,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Webhook delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Environment variable holding the signing secret; without it a secret is generated on
    /// the first start, stored, and shown to admins at `GET /v1/webhooks/secret`.
    pub secret_env: Option<String>,
    /// First retry delay; each further retry doubles it (capped at 10 minutes).
    pub retry_base_ms: u64,
    /// Deliveries tried before giving up.
    pub max_attempts: u32,
    /// One delivery's timeout (connecting, sending, and waiting for the answer).
    pub timeout_ms: u64,
    /// Deliveries in flight at once, over all projects.
    pub max_in_flight: usize,
    /// Deliveries in flight at once for one project: the others' share when it has a backlog.
    pub max_in_flight_per_project: usize,
    /// Deliveries in flight at once to one destination (scheme, host, port): a receiver that
    /// never answers holds this many slots, not all of them.
    pub max_in_flight_per_destination: usize,
    /// Hosts (names, addresses or CIDRs) a webhook may target although they are, or resolve
    /// to, loopback, private, link-local or metadata addresses: internal receivers.
    pub allowed_hosts: Vec<String>,
    /// Resolved from `secret_env` at start.
    #[serde(skip)]
    pub secret: Option<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            secret_env: None,
            retry_base_ms: 1_000,
            max_attempts: 20,
            timeout_ms: 10_000,
            max_in_flight: 64,
            max_in_flight_per_project: 16,
            max_in_flight_per_destination: 4,
            allowed_hosts: Vec::new(),
            secret: None,
        }
    }
}

/// How long finished state is kept (`[retention]`, humantime durations such as `"30d"`);
/// older state is deleted in the background and answers 404.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Finished executions with their events, idempotency keys and webhook jobs.
    #[serde(with = "humantime_field")]
    pub executions: Duration,
    /// Debug logs (`GET /v1/executions/{id}/log`) of finished executions.
    #[serde(with = "humantime_field")]
    pub debug_logs: Duration,
    /// Per-minute analytics aggregates.
    #[serde(with = "humantime_field")]
    pub analytics: Duration,
    /// Spent or expired WebSocket tokens, counted from their expiry.
    #[serde(with = "humantime_field")]
    pub ws_tokens: Duration,
    /// Webhook jobs that gave up (visible at `GET /v1/webhooks/deliveries` until then).
    #[serde(with = "humantime_field")]
    pub dead_webhooks: Duration,
    /// How often the background sweep runs.
    #[serde(with = "humantime_field")]
    pub sweep_interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 24 * 60 * 60;
        Retention {
            executions: Duration::from_secs(30 * DAY),
            debug_logs: Duration::from_secs(7 * DAY),
            analytics: Duration::from_secs(90 * DAY),
            ws_tokens: Duration::from_secs(60 * 60),
            dead_webhooks: Duration::from_secs(30 * DAY),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

/// `"30d"`, `"12h"`, `"90s"`: durations in the config as humantime strings.
mod humantime_field {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration ({e})")))
    }
}

/// How testing-mode executions answer (`"mode": "testing"`): the built-in answer's pace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingSettings {
    /// Chunks of a text answer (a JSON answer is as long as its sample).
    pub chunks: u32,
    /// Pause between chunks: a realistic pace, so an application sees streaming as it will.
    pub chunk_interval_ms: u64,
    /// How long a simulated stall lasts before the testing route counts it as failed.
    pub idle_timeout_ms: u64,
}

impl Default for TestingSettings {
    fn default() -> TestingSettings {
        TestingSettings {
            chunks: 24,
            chunk_interval_ms: 25,
            idle_timeout_ms: 2_000,
        }
    }
}

/// `[cluster]`: this node's place in a cluster of peers sharing NATS JetStream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// `nats://host:port` (several comma-separated servers of one NATS cluster work too).
    pub nats_url: String,
    /// Unique per node and stable across its restarts: a node restarted with the same id takes
    /// its own executions back at once instead of waiting for their leases to expire.
    pub node_id: String,
    /// A variable holding NATS credentials: `user:password` or a token.
    #[serde(default)]
    pub credentials_env: Option<String>,
    /// How long an execution's lease lasts unrenewed: a dead node's executions are taken over
    /// this long (plus one scan) after its last renewal. Renewed every third of it.
    #[serde(default = "ClusterSettings::default_lease_ms")]
    pub lease_ms: u64,
    /// JetStream replicas of every stream and bucket (1 for one NATS server, 3 for a NATS
    /// cluster of three). A stream that exists with another count stops the start.
    #[serde(default = "ClusterSettings::default_replicas")]
    pub replicas: usize,
    /// Read from `credentials_env`; never from the file.
    #[serde(skip)]
    pub credentials: Option<String>,
}

impl ClusterSettings {
    fn default_lease_ms() -> u64 {
        5_000
    }

    fn default_replicas() -> usize {
        1
    }
}

/// A named JSON Schema (`[[structures]]`): inline, or read from a file relative to the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StructureSettings {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    #[serde(default)]
    pub schema_file: Option<PathBuf>,
}

/// Which other origins' pages may call the API from a browser.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSettings {
    /// Exact origins (`https://app.example`, `http://localhost:3000`), or `"*"` for any. Empty:
    /// no cross-origin access (the default).
    pub allowed_origins: Vec<String>,
}

/// `scheme://host[:port]` with nothing after it: what a browser sends in `Origin`.
fn is_origin(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host().is_some()
            && u.path() == "/"
            && !s.ends_with('/')
            && u.query().is_none()
            && u.fragment().is_none()
            && u.username().is_empty()
    })
}

/// Who may scrape `GET /metrics`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Environment variable holding a token scrapers must send as `Authorization: Bearer …`.
    /// Set but empty or missing at start: the server refuses to start (it fails closed).
    pub bearer_token_env: Option<String>,
    /// Serve `/metrics` on this address only (e.g. an internal interface), not on `listen`.
    pub listen: Option<SocketAddr>,
    /// Resolved from `bearer_token_env` at start.
    #[serde(skip)]
    pub bearer_token: Option<String>,
}

/// The OpenAI-compatible endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Compat {
    /// Cancel the execution when a `/v1/chat/completions` client goes away before the end
    /// (by default it runs on, and stays readable under its execution id).
    pub cancel_on_disconnect: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible chat completions API.
    Openai,
    /// The Anthropic Messages API (`{base_url}/messages`).
    Anthropic,
    /// The Gemini API (`{base_url}/models/{model}:streamGenerateContent`).
    Gemini,
    /// Built in, no network: deterministic text with configurable pacing.
    Mock,
}

impl ProviderKind {
    /// The provider's own API, for a provider configured without `base_url`.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com/v1"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            ProviderKind::Mock => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Mock => "mock",
        }
    }
}

/// How a route asks its provider for the JSON a request's `response_format` wants
/// (`crate::providers::structured` decides what each kind is sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredMode {
    /// The provider's own mechanism: OpenAI's `response_format`, Gemini's response MIME type
    /// and schema, a forced tool call on Anthropic.
    #[default]
    Native,
    /// OpenAI-compatible APIs with JSON mode but no strict schemas (Groq, Together, Ollama…):
    /// `{"type": "json_object"}`, the schema in a system instruction.
    JsonMode,
    /// No format field at all: a system instruction asks for one JSON value.
    Instructions,
}

impl StructuredMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StructuredMode::Native => "native",
            StructuredMode::JsonMode => "json_mode",
            StructuredMode::Instructions => "instructions",
        }
    }
}

/// How an interrupted answer is continued on the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContinuationStrategy {
    /// The emitted text as a final assistant message, which the model extends.
    Prefill,
    /// The emitted text as an assistant turn, then a user instruction to continue it.
    Instruction,
    /// The original request again; the repeated head is skipped when reconciling.
    Restart,
}

impl ContinuationStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            ContinuationStrategy::Prefill => "prefill",
            ContinuationStrategy::Instruction => "instruction",
            ContinuationStrategy::Restart => "restart",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    pub name: String,
    pub kind: ProviderKind,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "defaults::first_chunk_timeout_ms")]
    pub first_chunk_timeout_ms: u64,
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "defaults::total_timeout_ms")]
    pub total_timeout_ms: u64,
    /// Tries of one route before the next route is used.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Consecutive failures that open the provider's circuit breaker.
    #[serde(default = "defaults::breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker keeps the provider out of rotation before one probe.
    #[serde(default = "defaults::breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
    /// Default per kind: `prefill` where the API continues a final assistant message (anthropic,
    /// mock), `instruction` elsewhere (openai, gemini).
    #[serde(default)]
    pub continuation: Option<ContinuationStrategy>,
    /// Mock only: chunks per answer.
    #[serde(default = "defaults::mock_chunks")]
    pub mock_chunks: u32,
    /// Mock only: pause between chunks.
    #[serde(default = "defaults::mock_chunk_interval_ms")]
    pub mock_chunk_interval_ms: u64,
    /// Read from `api_key_env` at start.
    #[serde(skip)]
    pub api_key: Option<String>,
}

mod defaults {
    pub fn connect_timeout_ms() -> u64 {
        5_000
    }
    pub fn first_chunk_timeout_ms() -> u64 {
        15_000
    }
    pub fn idle_timeout_ms() -> u64 {
        10_000
    }
    pub fn total_timeout_ms() -> u64 {
        300_000
    }
    pub fn max_attempts() -> u32 {
        2
    }
    pub fn yes() -> bool {
        true
    }
    pub fn breaker_failures() -> u32 {
        5
    }
    pub fn breaker_cooldown_ms() -> u64 {
        5_000
    }
    pub fn mock_chunks() -> u32 {
        24
    }
    pub fn mock_chunk_interval_ms() -> u64 {
        40
    }
}

impl ProviderSettings {
    pub fn continuation(&self) -> ContinuationStrategy {
        self.continuation.unwrap_or(match self.kind {
            ProviderKind::Openai | ProviderKind::Gemini => ContinuationStrategy::Instruction,
            ProviderKind::Anthropic | ProviderKind::Mock => ContinuationStrategy::Prefill,
        })
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn first_chunk_timeout(&self) -> Duration {
        Duration::from_millis(self.first_chunk_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn total_timeout(&self) -> Duration {
        Duration::from_millis(self.total_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub slug: String,
    pub routes: Vec<RouteSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    pub provider: String,
    pub model: String,
    /// The upstream model's context window in tokens; a prompt clearly larger skips the route.
    #[serde(default)]
    pub context_window: Option<u32>,
    /// Accepts `response_format` JSON modes.
    #[serde(default = "defaults::yes")]
    pub json_mode: bool,
    /// Accepts `tools` (function calling).
    #[serde(default = "defaults::yes")]
    pub tools: bool,
    /// Accepts image input. Off unless declared: a text-only model would fail or, worse,
    /// answer as if it had seen the image.
    #[serde(default)]
    pub vision: bool,
    /// How this route asks for the JSON a `response_format` wants.
    #[serde(default)]
    pub structured_output: StructuredMode,
    /// USD per million input (prompt) tokens; embeddings are priced per input token only.
    #[serde(default)]
    pub input_per_mtok: f64,
    /// USD per million output (completion) tokens.
    #[serde(default)]
    pub output_per_mtok: f64,
    /// Output tokens a request without `max_tokens` is reserved for when a hold is placed
    /// (`crate::ledger`): the route's own default cap on an answer.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Upstream quotas of this (provider, model) — its tier's caps; 0 = none.
    #[serde(default)]
    pub requests_per_minute: u64,
    #[serde(default)]
    pub tokens_per_minute: u64,
    #[serde(default)]
    pub requests_per_day: u64,
    #[serde(default)]
    pub tokens_per_day: u64,
}

/// Largest price per million tokens a route may declare: anything above is a typo.
pub const MAX_PRICE_PER_MTOK: f64 = 10_000.0;
/// Largest upstream quota a route may declare.
pub const MAX_ROUTE_QUOTA: u64 = 1_000_000_000_000;

impl Settings {
    /// Parses and validates a TOML document.
    pub fn parse(text: &str) -> anyhow::Result<Settings> {
        Settings::parse_in(text, Path::new("."))
    }

    /// [`Settings::parse`] with `schema_file`s read relative to `dir` (the config's folder).
    pub fn parse_in(text: &str, dir: &Path) -> anyhow::Result<Settings> {
        let mut settings: Settings =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
        for p in &mut settings.providers {
            if p.base_url.is_none() {
                p.base_url = p.kind.default_base_url().map(String::from);
            }
        }
        for (i, s) in settings.structures.iter_mut().enumerate() {
            let Some(file) = &s.schema_file else { continue };
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                anyhow::anyhow!(
                    "invalid config: structures[{i}].schema_file: cannot read {}: {e}",
                    path.display()
                )
            })?;
            let schema = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "invalid config: structures[{i}].schema_file: {} is not JSON: {e}",
                    path.display()
                )
            })?;
            if s.schema.is_some() {
                anyhow::bail!(
                    "invalid config: structures[{i}]: give schema or schema_file, not both"
                );
            }
            s.schema = Some(schema);
        }
        settings.validate()?;
        Ok(settings)
    }

    pub fn embedded_default() -> Settings {
        Settings::parse(DEFAULT_CONFIG).expect("the embedded default config is valid")
    }

    /// The file at `path`, or the embedded default.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Settings> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
                Settings::parse_in(&text, path.parent().unwrap_or(Path::new(".")))
            }
            None => Ok(Settings::embedded_default()),
        }
    }

    /// Reads each provider's key from its `api_key_env` variable, and the admin key.
    pub fn read_secrets_from_env(&mut self) {
        for p in &mut self.providers {
            if let Some(var) = &p.api_key_env {
                p.api_key = std::env::var(var).ok().filter(|k| !k.is_empty());
                if p.api_key.is_none() {
                    tracing::warn!(provider = %p.name, variable = %var, "provider api key variable is not set");
                }
            }
        }
        if let Some(var) = &self.metrics.bearer_token_env {
            self.metrics.bearer_token = std::env::var(var).ok().filter(|t| !t.is_empty());
        }
        if let Some(var) = &self.webhooks.secret_env {
            self.webhooks.secret = std::env::var(var).ok().filter(|s| !s.is_empty());
        }
        if let Some(cluster) = &mut self.cluster {
            if let Some(var) = &cluster.credentials_env {
                cluster.credentials = std::env::var(var).ok().filter(|c| !c.is_empty());
            }
        }
        self.admin_key = std::env::var("SWITCHYARD_ADMIN_KEY")
            .ok()
            .filter(|k| !k.is_empty());
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderSettings> {
        self.providers.iter().find(|p| p.name == name)
    }

    pub fn model(&self, slug: &str) -> Option<&ModelSettings> {
        self.models.iter().find(|m| m.slug == slug)
    }

    /// `[[structures]]` and `[[workflows]]`: names, schemas that compile, references that
    /// resolve within the config.
    fn validate_catalog(&self) -> anyhow::Result<()> {
        let fail =
            |field: String, msg: String| Err(anyhow::anyhow!("invalid config: {field}: {msg}"));
        let mut names = Vec::new();
        for (i, s) in self.structures.iter().enumerate() {
            if !crate::workflows::valid_name(&s.name) || names.contains(&s.name.as_str()) {
                return fail(
                    format!("structures[{i}].name"),
                    "1 to 64 letters, digits, `_` or `-`, unique".into(),
                );
            }
            names.push(&s.name);
            let Some(schema) = &s.schema else {
                return fail(
                    format!("structures[{i}]"),
                    "needs schema or schema_file".into(),
                );
            };
            if let Err(e) = crate::structured::compile(schema) {
                return fail(format!("structures[{i}].schema"), e.to_string());
            }
        }
        let mut workflows = Vec::new();
        for (i, w) in self.workflows.iter().enumerate() {
            if !crate::workflows::valid_name(&w.name) || workflows.contains(&w.name.as_str()) {
                return fail(
                    format!("workflows[{i}].name"),
                    "1 to 64 letters, digits, `_` or `-`, unique".into(),
                );
            }
            workflows.push(&w.name);
            if let Err(e) = w.check() {
                return Err(anyhow::anyhow!("invalid config: workflows[{i}].{e}"));
            }
            for (field, name) in w.structure_refs() {
                if !names.contains(&name) {
                    return fail(
                        format!("workflows[{i}].{field}"),
                        format!("unknown structure `{name}`"),
                    );
                }
            }
            for (field, slug) in w.model_refs() {
                if self.model(slug).is_none() {
                    return fail(
                        format!("workflows[{i}].{field}"),
                        format!("unknown model `{slug}`"),
                    );
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        let fail =
            |field: String, msg: &str| Err(anyhow::anyhow!("invalid config: {field}: {msg}"));
        if self.providers.is_empty() {
            return fail("providers".into(), "at least one provider is required");
        }
        if self.models.is_empty() {
            return fail("models".into(), "at least one model is required");
        }
        self.validate_catalog()?;
        if let Some(c) = &self.cluster {
            if !c.nats_url.split(',').all(|u| {
                url::Url::parse(u.trim()).is_ok_and(|u| u.scheme() == "nats" && u.host().is_some())
            }) {
                return fail("cluster.nats_url".into(), "must be nats://host:port");
            }
            if !crate::domain::ids::valid_name(&c.node_id) {
                return fail(
                    "cluster.node_id".into(),
                    "1 to 64 letters, digits, `_` or `-`",
                );
            }
            if c.lease_ms < 300 {
                return fail("cluster.lease_ms".into(), "at least 300");
            }
            if !(1..=5).contains(&c.replicas) {
                return fail("cluster.replicas".into(), "1 to 5");
            }
        }
        for (i, origin) in self.cors.allowed_origins.iter().enumerate() {
            if origin != "*" && !is_origin(origin) {
                return fail(
                    format!("cors.allowed_origins[{i}]"),
                    "must be \"*\" or an origin: scheme://host[:port], no path",
                );
            }
        }
        if let Some(u) = &self.public_url {
            let ok = url::Url::parse(u)
                .map(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && u.query().is_none()
                        && u.fragment().is_none()
                })
                .unwrap_or(false);
            if !ok {
                return fail(
                    "public_url".into(),
                    "must be an http or https URL without query or fragment",
                );
            }
        }
        let l = &self.limits;
        for (field, v) in [
            ("limits.max_body_bytes", l.max_body_bytes as u64),
            ("limits.max_execution_ms", l.max_execution_ms),
            ("limits.sse_keepalive_ms", l.sse_keepalive_ms),
            ("limits.ws_token_ttl_ms", l.ws_token_ttl_ms),
            ("limits.ws_heartbeat_ms", l.ws_heartbeat_ms),
            ("limits.ws_client_timeout_ms", l.ws_client_timeout_ms),
            ("limits.store_cache_mb", l.store_cache_mb),
            ("limits.ws_max_message_bytes", l.ws_max_message_bytes as u64),
            ("limits.header_timeout_ms", l.header_timeout_ms),
            ("limits.body_timeout_ms", l.body_timeout_ms),
        ] {
            if v == 0 {
                return fail(field.into(), "must be greater than 0");
            }
        }
        for (field, v, max) in [
            (
                "limits.ip_requests_per_minute",
                l.ip_requests_per_minute,
                crate::limits::MAX_REQUESTS_PER_MINUTE,
            ),
            (
                "limits.key_requests_per_minute",
                l.key_requests_per_minute,
                crate::limits::MAX_REQUESTS_PER_MINUTE,
            ),
            (
                "limits.project_requests_per_minute",
                l.project_requests_per_minute,
                crate::limits::MAX_REQUESTS_PER_MINUTE,
            ),
            (
                "limits.key_tokens_per_minute",
                l.key_tokens_per_minute,
                crate::limits::MAX_TOKENS_PER_MINUTE,
            ),
            (
                "limits.key_concurrent_executions",
                l.key_concurrent_executions,
                crate::limits::MAX_CONCURRENT_EXECUTIONS,
            ),
        ] {
            if v > max {
                return fail(
                    field.into(),
                    &format!("must be between 0 (no limit) and {max}"),
                );
            }
        }
        if let Err(e) = crate::limits::parse_trusted_proxies(&l.trusted_proxies) {
            return Err(anyhow::anyhow!("invalid config: limits.{e}"));
        }
        let w = &self.webhooks;
        for (field, v) in [
            ("webhooks.retry_base_ms", w.retry_base_ms),
            ("webhooks.max_attempts", w.max_attempts as u64),
            ("webhooks.timeout_ms", w.timeout_ms),
            ("webhooks.max_in_flight", w.max_in_flight as u64),
            (
                "webhooks.max_in_flight_per_project",
                w.max_in_flight_per_project as u64,
            ),
            (
                "webhooks.max_in_flight_per_destination",
                w.max_in_flight_per_destination as u64,
            ),
        ] {
            if v == 0 {
                return fail(field.into(), "must be greater than 0");
            }
        }
        if let Err(e) = crate::webhooks::egress::AllowList::parse(&w.allowed_hosts) {
            return Err(anyhow::anyhow!("invalid config: webhooks.{e}"));
        }
        let r = &self.retention;
        for (field, v) in [
            ("retention.executions", r.executions),
            ("retention.debug_logs", r.debug_logs),
            ("retention.analytics", r.analytics),
            ("retention.ws_tokens", r.ws_tokens),
            ("retention.dead_webhooks", r.dead_webhooks),
            ("retention.sweep_interval", r.sweep_interval),
        ] {
            if v.is_zero() {
                return fail(field.into(), "must be longer than 0");
            }
        }
        let mut names = HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = |f: &str| format!("providers[{i}].{f}");
            if p.name.trim().is_empty() {
                return fail(at("name"), "must not be empty");
            }
            if !names.insert(p.name.as_str()) {
                return fail(at("name"), &format!("duplicate provider name `{}`", p.name));
            }
            if p.kind != ProviderKind::Mock {
                match &p.base_url {
                    None => return fail(at("base_url"), "is required for this kind"),
                    Some(u) => {
                        let ok = url::Url::parse(u)
                            .map(|u| matches!(u.scheme(), "http" | "https"))
                            .unwrap_or(false);
                        if !ok {
                            return fail(at("base_url"), "must be an http or https URL");
                        }
                    }
                }
            }
            for (f, v) in [
                ("connect_timeout_ms", p.connect_timeout_ms),
                ("first_chunk_timeout_ms", p.first_chunk_timeout_ms),
                ("idle_timeout_ms", p.idle_timeout_ms),
                ("total_timeout_ms", p.total_timeout_ms),
                ("max_attempts", p.max_attempts as u64),
                ("breaker_failures", p.breaker_failures as u64),
                ("breaker_cooldown_ms", p.breaker_cooldown_ms),
                ("mock_chunks", p.mock_chunks as u64),
            ] {
                if v == 0 {
                    return fail(at(f), "must be greater than 0");
                }
            }
        }
        let mut slugs = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if m.slug.trim().is_empty() || m.slug == "auto" {
                return fail(
                    format!("models[{i}].slug"),
                    "must be a non-empty name other than `auto`",
                );
            }
            if !slugs.insert(m.slug.as_str()) {
                return fail(
                    format!("models[{i}].slug"),
                    &format!("duplicate slug `{}`", m.slug),
                );
            }
            if m.routes.is_empty() {
                return fail(
                    format!("models[{i}].routes"),
                    "at least one route is required",
                );
            }
            for (j, r) in m.routes.iter().enumerate() {
                if self.provider(&r.provider).is_none() {
                    return fail(
                        format!("models[{i}].routes[{j}].provider"),
                        &format!("unknown provider `{}`", r.provider),
                    );
                }
                let at = |f: &str| format!("models[{i}].routes[{j}].{f}");
                if r.model.trim().is_empty() {
                    return fail(at("model"), "must not be empty");
                }
                for (f, v) in [
                    ("input_per_mtok", r.input_per_mtok),
                    ("output_per_mtok", r.output_per_mtok),
                ] {
                    if !(0.0..=MAX_PRICE_PER_MTOK).contains(&v) {
                        return fail(
                            at(f),
                            &format!("must be a price in USD between 0 and {MAX_PRICE_PER_MTOK}"),
                        );
                    }
                }
                if r.max_output_tokens == Some(0) {
                    return fail(at("max_output_tokens"), "must be greater than 0");
                }
                for (f, v) in [
                    ("requests_per_minute", r.requests_per_minute),
                    ("tokens_per_minute", r.tokens_per_minute),
                    ("requests_per_day", r.requests_per_day),
                    ("tokens_per_day", r.tokens_per_day),
                ] {
                    if v > MAX_ROUTE_QUOTA {
                        return fail(
                            at(f),
                            &format!("must be between 0 (no quota) and {MAX_ROUTE_QUOTA}"),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_routes_chat_default_to_the_mock() {
        let s = Settings::embedded_default();
        let m = s.model("chat-default").unwrap();
        assert_eq!(
            s.provider(&m.routes[0].provider).unwrap().kind,
            ProviderKind::Mock
        );
        assert_eq!(s.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn unknown_fields_are_named() {
        let text = DEFAULT_CONFIG.replace("mock_chunks = 24", "mock_chunkz = 24");
        let err = Settings::parse(&text).unwrap_err().to_string();
        assert!(err.contains("mock_chunkz"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let text = DEFAULT_CONFIG.replace(
            "provider = \"mock\", model = \"mock-1\"",
            "provider = \"nope\", model = \"m\"",
        );
        let err = Settings::parse(&text).unwrap_err().to_string();
        assert!(err.contains("models[0].routes[0].provider"), "{err}");
        let text = DEFAULT_CONFIG.replace("127.0.0.1:8080", "not an address");
        let err = Settings::parse(&text).unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
        let text = format!("{DEFAULT_CONFIG}\n[limits]\nmax_execution_ms = 0\n");
        let err = Settings::parse(&text).unwrap_err().to_string();
        assert!(err.contains("limits.max_execution_ms"), "{err}");
    }

    #[test]
    fn route_prices_and_quotas_are_checked_and_named() {
        let route = |extra: &str| {
            DEFAULT_CONFIG.replace(
                "provider = \"mock\", model = \"mock-1\"",
                &format!("provider = \"mock\", model = \"mock-1\", {extra}"),
            )
        };
        let s = Settings::parse(&route(
            "input_per_mtok = 0.15, output_per_mtok = 0.6, tokens_per_day = 1000",
        ))
        .unwrap();
        let r = &s.model("chat-default").unwrap().routes[0];
        assert_eq!((r.input_per_mtok, r.output_per_mtok), (0.15, 0.6));
        assert_eq!(r.tokens_per_day, 1000);
        for (extra, field) in [
            ("input_per_mtok = -1.0", "routes[0].input_per_mtok"),
            ("output_per_mtok = nan", "routes[0].output_per_mtok"),
            ("output_per_mtok = 1e9", "routes[0].output_per_mtok"),
            ("requests_per_day = -3", "requests_per_day"),
            ("tokens_per_minute = 1e20", "tokens_per_minute"),
            ("max_output_tokens = 0", "routes[0].max_output_tokens"),
        ] {
            let err = Settings::parse(&route(extra)).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
    }

    #[test]
    fn structured_output_defaults_to_native_and_names_bad_values() {
        let route = |extra: &str| {
            DEFAULT_CONFIG.replace(
                "provider = \"mock\", model = \"mock-1\"",
                &format!("provider = \"mock\", model = \"mock-1\"{extra}"),
            )
        };
        let mode = |extra: &str| {
            let s = Settings::parse(&route(extra)).unwrap();
            s.model("chat-default").unwrap().routes[0].structured_output
        };
        assert_eq!(mode(""), StructuredMode::Native);
        assert_eq!(
            mode(", structured_output = \"json_mode\""),
            StructuredMode::JsonMode
        );
        assert_eq!(
            mode(", structured_output = \"instructions\""),
            StructuredMode::Instructions
        );
        let err = Settings::parse(&route(", structured_output = \"strict\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("structured_output") || err.contains("strict"),
            "{err}"
        );
    }

    #[test]
    fn retention_takes_humantime_durations_and_names_bad_ones() {
        let text = format!("{DEFAULT_CONFIG}\n[retention]\nexecutions = \"2d 12h\"\n");
        let s = Settings::parse(&text).unwrap();
        assert_eq!(s.retention.executions, Duration::from_secs(60 * 60 * 60));
        assert_eq!(s.retention.debug_logs, Retention::default().debug_logs);
        let text = format!("{DEFAULT_CONFIG}\n[retention]\ndebug_logs = \"soon\"\n");
        let err = Settings::parse(&text).unwrap_err().to_string();
        assert!(err.contains("debug_logs") && err.contains("soon"), "{err}");
        let text = format!("{DEFAULT_CONFIG}\n[retention]\nsweep_interval = \"0s\"\n");
        let err = Settings::parse(&text).unwrap_err().to_string();
        assert!(err.contains("retention.sweep_interval"), "{err}");
    }

    #[test]
    fn webhook_allowed_hosts_and_limits_are_checked_and_named() {
        let text = format!(
            "{DEFAULT_CONFIG}\n[webhooks]\nallowed_hosts = [\"hooks.internal\", \"10.0.0.0/8\", \"::1\"]\n"
        );
        assert_eq!(
            Settings::parse(&text).unwrap().webhooks.allowed_hosts.len(),
            3
        );
        let text = format!(
            "{DEFAULT_CONFIG}\n[webhooks]\nallowed_hosts = [\"ok.example\", \"http://x/\"]\n"
        );
        let err = Settings::parse(&text).unwrap_err().to_string();
        assert!(err.contains("webhooks.allowed_hosts[1]"), "{err}");
        let text = format!("{DEFAULT_CONFIG}\n[webhooks]\nmax_in_flight_per_destination = 0\n");
        let err = Settings::parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("webhooks.max_in_flight_per_destination"),
            "{err}"
        );
    }

    #[test]
    fn rate_limits_are_checked_and_named() {
        let text = format!(
            "{DEFAULT_CONFIG}\n[limits]\nkey_requests_per_minute = 60\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n"
        );
        let s = Settings::parse(&text).unwrap();
        assert_eq!(s.limits.key_requests_per_minute, 60);
        assert_eq!(
            Settings::embedded_default().limits.ip_requests_per_minute,
            0
        );
        let text = format!("{DEFAULT_CONFIG}\n[limits]\nkey_tokens_per_minute = 99999999999999\n");
        let err = Settings::parse(&text).unwrap_err().to_string();
        assert!(err.contains("limits.key_tokens_per_minute"), "{err}");
        let text = format!("{DEFAULT_CONFIG}\n[limits]\nip_requests_per_minute = -1\n");
        let err = Settings::parse(&text).unwrap_err().to_string();
        assert!(err.contains("ip_requests_per_minute"), "{err}");
        let text =
            format!("{DEFAULT_CONFIG}\n[limits]\ntrusted_proxies = [\"10.0.0.1\", \"proxy\"]\n");
        let err = Settings::parse(&text).unwrap_err().to_string();
        assert!(err.contains("limits.trusted_proxies[1]"), "{err}");
    }

    #[test]
    fn network_providers_default_to_their_own_api_and_check_a_given_base_url() {
        for (kind, url) in [
            ("openai", "https://api.openai.com/v1"),
            ("anthropic", "https://api.anthropic.com/v1"),
            ("gemini", "https://generativelanguage.googleapis.com/v1beta"),
        ] {
            let text = DEFAULT_CONFIG.replace("kind = \"mock\"", &format!("kind = \"{kind}\""));
            let s = Settings::parse(&text).unwrap();
            assert_eq!(s.providers[0].base_url.as_deref(), Some(url));
            let text = text.replace(
                &format!("kind = \"{kind}\""),
                &format!("kind = \"{kind}\"\nbase_url = \"ftp://x\""),
            );
            let err = Settings::parse(&text).unwrap_err().to_string();
            assert!(err.contains("providers[0].base_url"), "{kind}: {err}");
        }
    }

    #[test]
    fn continuation_defaults_follow_the_kind() {
        let text = DEFAULT_CONFIG.replace(
            "kind = \"mock\"",
            "kind = \"gemini\"\nbase_url = \"http://127.0.0.1:1/v1beta\"",
        );
        let s = Settings::parse(&text).unwrap();
        assert_eq!(s.providers[0].kind, ProviderKind::Gemini);
        let mut p = s.providers[0].clone();
        for (kind, want) in [
            (ProviderKind::Openai, ContinuationStrategy::Instruction),
            (ProviderKind::Gemini, ContinuationStrategy::Instruction),
            (ProviderKind::Anthropic, ContinuationStrategy::Prefill),
            (ProviderKind::Mock, ContinuationStrategy::Prefill),
        ] {
            p.kind = kind;
            assert_eq!(p.continuation(), want, "{kind:?}");
        }
        p.continuation = Some(ContinuationStrategy::Restart);
        assert_eq!(p.continuation(), ContinuationStrategy::Restart);
    }
}
