//! `POST /v1/embeddings` in OpenAI's format, routed over the model's routes with the same
//! retry, failover and health rules as chat (before the first byte there is nothing to
//! continue, so it needs no event log and is not stored as an execution).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::{body::read_json, openai_error::OpenAiError, AppState, Principal};
use crate::domain::now_ms;
use crate::error::ApiError;
use crate::providers::{Embeddings, ProviderError};
use crate::routing::{self, Decision, FailureContext, Outcome};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    model: String,
    input: Input,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

const MAX_INPUTS: usize = 2048;

pub async fn create(
    state: web::Data<AppState>,
    principal: Result<Principal, ApiError>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, OpenAiError> {
    let principal = principal?;
    let body: EmbeddingsRequest =
        read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let _ = &body.user;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "encoding_format: must be `float` or `base64`, got `{other}`"
            ))
            .into())
        }
    };
    if body.dimensions.is_some_and(|d| !(1..=8192).contains(&d)) {
        return Err(ApiError::invalid("dimensions: must be between 1 and 8192").into());
    }
    let input = match body.input {
        Input::One(s) => vec![s],
        Input::Many(v) => v,
    };
    if input.is_empty() || input.len() > MAX_INPUTS || input.iter().any(String::is_empty) {
        return Err(
            ApiError::invalid(format!("input: 1 to {MAX_INPUTS} non-empty strings")).into(),
        );
    }
    let chars: usize = input.iter().map(String::len).sum();
    // Held while the request runs: embeddings count among the key's work in flight.
    let permit = super::rate_limits::admit(
        &state,
        &req,
        &principal,
        crate::limits::estimate_tokens(chars, Some(0)),
    )?;
    let routes = routing::plan(&state.settings, &state.providers, &body.model)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::invalid(format!("model: unknown model `{}`", body.model)))?;
    // A test key never reaches a provider: the built-in testing routes embed, for free.
    let routes = match principal.test_only {
        true => routing::testing_routes(&state.providers),
        false => routes,
    };
    let cap = state.limits.monthly_spend_cap(&principal.key_id);
    let limited = cap.is_some() || state.ledger.is_limited(&principal.project_id);
    let reservation = if limited && !principal.test_only {
        let worst = super::balance::embedding_worst_case(
            routes.iter().map(|r| r.price),
            crate::ledger::pricing::approx_tokens(chars),
        );
        let amount = crate::ledger::pricing::hold_for(worst);
        super::balance::reserve_amount(&state, &principal, cap, amount)?
    } else {
        None
    };
    // A failed request drops its reservation: nothing is charged.
    let (model, price, embeddings) = route(&state, &routes, &input, body.dimensions).await?;
    if let Some(permit) = &permit {
        permit.correct(embeddings.prompt_tokens);
    }
    let cost = price.cost_micros(embeddings.prompt_tokens, 0);
    if let (Some(cluster), true) = (&state.cluster, cost > 0) {
        // Balances and keys' months are the shared ledger's: charged there (no hold: an
        // embedding is answered at once), at most what the balance can pay.
        if limited {
            if let Err(err) = cluster
                .charge(
                    &principal.project_id,
                    &principal.key_id,
                    cost,
                    cap.is_some(),
                )
                .await
            {
                tracing::error!(error = %err, "embedding charge not written to the shared ledger");
            }
        }
    }
    let charged = match reservation {
        Some(r) => state.ledger.charge_reserved(r, cost),
        None if cost > 0 => state
            .ledger
            .charge(&principal.project_id, &principal.key_id, cost),
        None => Ok(0),
    };
    // The answer exists: it is returned even when its charge cannot be written.
    if let Err(err) = charged {
        state.store.health.fail(&err);
    }
    let data: Vec<_> = embeddings
        .vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                json!(encode_base64(&v))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": embeddings.prompt_tokens, "total_tokens": embeddings.prompt_tokens},
    })))
}

/// OpenAI's base64 form: the little-endian f32 bytes.
fn encode_base64(vector: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The first route at or after `from` with headroom (see `routing::pick_route`); no route
/// with upstream quota left answers `503` with `Retry-After` at once (a synchronous call does
/// not wait for a reset).
fn pick(state: &AppState, routes: &[routing::Route], from: usize) -> Result<usize, ApiError> {
    let now_ms = now_ms();
    routing::pick_route(
        routes,
        from,
        &state.health,
        &state.quota,
        Instant::now(),
        now_ms,
    )
    .map_err(|e| e.api_error("model", now_ms))
}

/// Tries the routes in order (skipping open breakers and routes out of quota), retrying
/// transient failures.
async fn route(
    state: &AppState,
    routes: &[routing::Route],
    input: &[String],
    dimensions: Option<u32>,
) -> Result<(String, crate::ledger::pricing::Price, Embeddings), ApiError> {
    let mut index = pick(state, routes, 0)?;
    let mut tries = 1;
    let estimate = input.iter().map(|i| i.len() as u64 / 4).sum::<u64>();
    loop {
        let r = &routes[index];
        if !state.quota.admits(r.key(), now_ms()) {
            // A retry of a route that a 429 cooled down: the next one with headroom.
            index = pick(state, routes, index)?;
            tries = 1;
            continue;
        }
        let r = &routes[index];
        let name = r.provider.name();
        let started = Instant::now();
        state.health.begin(r.key(), started);
        let charge = state.quota.begin(r.key(), estimate, now_ms());
        let timeout = r.provider.settings.total_timeout();
        let result = match tokio::time::timeout(
            timeout,
            r.provider.embed(&r.model, input, dimensions),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(ProviderError::total_timeout(timeout)),
        };
        let err = match result {
            Ok(embeddings) => {
                // A provider that reported no usage (0) keeps the estimate.
                if embeddings.prompt_tokens > 0 {
                    let used = embeddings.prompt_tokens;
                    state.quota.settle(r.key(), charge, used);
                }
                if let Some(h) = &embeddings.headroom {
                    state.quota.observe(r.key(), h);
                }
                let outcome = Outcome::Success {
                    latency: started.elapsed(),
                    first_chunk: None,
                };
                state.health.end(r.key(), Instant::now(), outcome, false);
                return Ok((r.model.clone(), r.price, embeddings));
            }
            Err(err) => err,
        };
        state.quota.failed(r.key(), &err, now_ms());
        let outcome = if err.counts_against_provider() {
            Outcome::Failure
        } else {
            Outcome::Neutral
        };
        state
            .health
            .end(r.key(), Instant::now(), outcome, err.is_provider_wide());
        tracing::warn!(provider = %name, code = %err.code, error = %err.message, "embeddings attempt failed");
        let ctx = FailureContext {
            route_index: index,
            route_count: routes.len(),
            tries_on_route: tries,
            max_tries_on_route: r.provider.settings.max_attempts,
            emitted_any: false,
            attempt_delivered: false,
            switches: 0,
            max_switches: 0,
            strategy: None,
        };
        match routing::decide(&ctx, &err) {
            Decision::Retry { delay, .. } => {
                tries += 1;
                let delay = if err.retry_after.is_some() {
                    delay
                } else {
                    routing::jitter(delay)
                };
                tokio::time::sleep(delay).await;
            }
            Decision::Next { index: next } => {
                index = pick(state, routes, next)?;
                tries = 1;
            }
            Decision::Fail => {
                let mut api = ApiError::new(err.code, err.message);
                api.retry_after = err.retry_after;
                return Err(api);
            }
        }
    }
}
