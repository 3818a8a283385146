//! Provider wire formats behind one interface: a canonical request in, a stream of canonical
//! deltas out, and every failure classified into exactly one normalized code.

mod anthropic;
mod attempt;
mod error;
mod gemini;
mod headroom;
mod http;
mod mock;
mod openai;
mod sse;
mod structured;
mod turns;

pub use attempt::{spawn_attempt, AttemptEvent, AttemptHandle};
pub use error::ProviderError;
pub use headroom::Headroom;

use futures_util::stream::BoxStream;
use std::collections::HashMap;
use std::sync::Arc;

use crate::domain::{Message, Params, ToolCallDelta, Usage};
use crate::settings::{ProviderKind, ProviderSettings, Settings, StructuredMode};
use crate::store::AttemptLog;

/// What one provider event carried, in canonical form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub text: Option<String>,
    /// Fragments of tool calls, assembled by the execution into whole calls.
    pub tool_calls: Vec<ToolCallDelta>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// A fragment of a thinking block (extended thinking; Anthropic routes).
    pub thinking: Option<crate::domain::ThinkingDelta>,
    /// The stop sequence that ended the answer, when the provider names it.
    pub stop_sequence: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Delta(Delta),
    /// An event that could not be understood; skipped and recorded, not fatal.
    Skipped {
        raw: String,
        reason: String,
    },
    /// The response's rate-limit headers, first and at most once per attempt.
    Headroom(Headroom),
}

/// Ends (`None`) only after a clean finish; an interrupted stream ends with an `Err`.
pub type ProviderStream = BoxStream<'static, Result<StreamItem, ProviderError>>;

/// Vectors for each input, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u64,
    /// What the response's rate-limit headers said, for the quota board.
    pub headroom: Option<Headroom>,
}

/// The request as sent to one route.
#[derive(Debug, Clone, Default)]
pub struct UpstreamRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub params: Params,
    /// A testing execution's simulated fault: only the built-in mock acts it out.
    pub fault: Option<crate::domain::Simulate>,
    /// How the route asks for the JSON `params.response_format` wants (see `structured`).
    pub structured: StructuredMode,
}

enum Client {
    OpenAi(openai::OpenAi),
    Anthropic(anthropic::Anthropic),
    Gemini(gemini::Gemini),
    Mock(mock::Mock),
}

/// One configured provider, ready to open streams.
pub struct Provider {
    pub settings: ProviderSettings,
    client: Client,
}

impl Provider {
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Whether it can be called at all (a network provider needs its key, unless it is
    /// configured without `api_key_env`, as local servers and proxies often are).
    pub fn usable(&self) -> bool {
        match self.settings.kind {
            ProviderKind::Mock => true,
            ProviderKind::Openai | ProviderKind::Anthropic | ProviderKind::Gemini => {
                self.settings.api_key_env.is_none() || self.settings.api_key.is_some()
            }
        }
    }

    /// Sends the request and returns the stream once response headers say it is a success.
    /// Every request, response and raw chunk is written to `log`.
    pub async fn open(
        &self,
        req: &UpstreamRequest,
        log: &AttemptLog,
    ) -> Result<ProviderStream, ProviderError> {
        match &self.client {
            Client::OpenAi(p) => p.open(req, log).await,
            Client::Anthropic(p) => p.open(req, log).await,
            Client::Gemini(p) => p.open(req, log).await,
            Client::Mock(p) => p.open(req, log),
        }
    }

    /// Embeds `input` with `model`; kinds without an embeddings API refuse (not retryable, so
    /// routing moves on).
    pub async fn embed(
        &self,
        model: &str,
        input: &[String],
        dimensions: Option<u32>,
    ) -> Result<Embeddings, ProviderError> {
        match &self.client {
            Client::OpenAi(p) => p.embed(model, input, dimensions).await,
            Client::Mock(p) => Ok(p.embed(input, dimensions.unwrap_or(8) as usize)),
            Client::Anthropic(_) | Client::Gemini(_) => Err(ProviderError::new(
                crate::error::ErrorCode::ProviderError,
                format!(
                    "provider `{}` has no embeddings API in Switchyard",
                    self.name()
                ),
            )),
        }
    }
}

/// Every configured provider by name, sharing the HTTP clients (one connection pool per thread).
pub struct Providers {
    by_name: HashMap<String, Arc<Provider>>,
    /// The built-in answerers of testing-mode executions: a primary and a fallback (never in
    /// a model's routes, never paid).
    testing: [Arc<Provider>; 2],
}

impl Providers {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Providers> {
        let connect_timeout = settings
            .providers
            .iter()
            .map(|p| p.connect_timeout())
            .max()
            .unwrap_or_default();
        let http = http::Http::new(connect_timeout)?;
        let by_name = settings
            .providers
            .iter()
            .map(|p| {
                let client = match p.kind {
                    ProviderKind::Openai => Client::OpenAi(openai::OpenAi::new(p, http.clone())),
                    ProviderKind::Anthropic => {
                        Client::Anthropic(anthropic::Anthropic::new(p, http.clone()))
                    }
                    ProviderKind::Gemini => Client::Gemini(gemini::Gemini::new(p, http.clone())),
                    ProviderKind::Mock => Client::Mock(mock::Mock::new(p)),
                };
                let provider = Provider {
                    settings: p.clone(),
                    client,
                };
                (p.name.clone(), Arc::new(provider))
            })
            .collect();
        let testing = ["testing", "testing-fallback"].map(|name| {
            let t = &settings.testing;
            let settings: ProviderSettings = serde_json::from_value(serde_json::json!({
                "name": name,
                "kind": "mock",
                "mock_chunks": t.chunks,
                "mock_chunk_interval_ms": t.chunk_interval_ms,
                "idle_timeout_ms": t.idle_timeout_ms,
                "first_chunk_timeout_ms": t.idle_timeout_ms,
                "max_attempts": 1,
            }))
            .expect("testing provider settings");
            Arc::new(Provider {
                client: Client::Mock(mock::Mock::new(&settings)),
                settings,
            })
        });
        Ok(Providers { by_name, testing })
    }

    /// The testing providers: primary, then fallback.
    pub fn testing(&self) -> &[Arc<Provider>; 2] {
        &self.testing
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.by_name.values()
    }

    pub fn any_usable(&self) -> bool {
        self.all().any(|p| p.usable())
    }
}

/// A rough token count for providers that report none (the mock): words.
pub fn approx_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Runs a future to completion on a throwaway runtime (unit tests of stream adapters).
#[cfg(test)]
pub(crate) fn block_on_test<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime")
        .block_on(f)
}
