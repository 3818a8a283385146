//! Switchyard: an actor-based streaming router for AI providers.
//!
//! Data flow, one module each:
//! - [`api`]: REST submit, reads, keys, SSE — HTTP in, JSON and event streams out
//! - [`actors`]: the `Registry` singleton and one `Execution` actor per execution
//! - [`routing`]: route plans, failover decisions and continuation requests (pure functions),
//!   route health and upstream quotas
//! - [`providers`]: wire formats (openai, anthropic, gemini, mock), timeouts, error classification
//! - [`store`]: sled trees behind typed functions, with group commit
//! - [`cluster`]: cluster mode — the event log, records, claims and leases on NATS JetStream
//! - [`cursor`]: a reader's position in an event log (replay, then live)
//! - [`channels`]: WebSocket channel names and the project status feed
//! - [`metrics`]: every Prometheus collector
//! - [`limits`]: client rate limits (per address, key, project) and executions in flight per key
//! - [`revocation`]: the broadcast that ends a revoked or rotated key's open streams
//! - [`webhooks`]: webhook egress rules, per-project signing, fair delivery from the outbox
//! - [`retention`]: the background sweep that deletes state past its `[retention]`
//! - [`structured`]: structured output — JSON modes, schemas, validation of answers
//! - [`workflows`]: named workflows, their steps and prompt templates
//! - [`domain`]: ids, requests, statuses, events and the execution record
//! - [`settings`]: the TOML configuration; [`error`]: the API error type; [`startup`]: assembly

pub mod actors;
pub mod api;
pub mod channels;
pub mod cluster;
pub mod cursor;
pub mod domain;
pub mod error;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod providers;
pub mod retention;
pub mod revocation;
pub mod routing;
pub mod settings;
pub mod startup;
pub mod store;
pub mod structured;
pub mod webhooks;
pub mod workflows;
