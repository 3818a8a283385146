//! One integration binary: real HTTP on 127.0.0.1 port 0, a temp sled dir per app, fake
//! providers as real HTTP servers.

mod fake_anthropic;
mod fake_gemini;
mod fake_http;
mod fake_openai;
mod helpers;
mod nats_server;

mod access;
mod analytics;
mod bad_input;
mod balances;
mod cluster;
mod connections;
mod continuation_corpus;
mod cors;
mod disk_full;
mod durability;
mod events;
mod executions;
mod failover;
mod keys;
mod limits;
mod messages;
mod metrics;
mod mock;
mod openai_compat;
mod provider_signatures;
mod provider_structured;
mod provider_tools;
mod provider_vision;
mod providers;
mod quotas;
mod responses;
mod retention;
mod routing;
mod startup;
mod storage;
mod storage_figures;
mod structured;
mod testing_mode;
mod thinking;
mod tools;
mod webhooks;
mod websocket;
mod workflows;
