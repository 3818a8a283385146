//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API, stream
//! and non-stream, running as an execution through the same actor, event log and failover as
//! every other submit, on routes of any wire format. The execution id comes back in
//! `x-switchyard-execution-id`.
//!
//! `request` turns the body into the canonical submit (`conversation` its messages), `reply`
//! reads the result as a message object, `stream` translates the event log into Anthropic's events, `error` gives every
//! failure Anthropic's shape and status.

mod conversation;
mod error;
mod reply;
mod request;
mod stream;

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use futures_util::stream::StreamExt;
use serde_json::json;
use std::time::Duration;

use self::error::MessagesError;
use self::reply::Outcome;
use self::request::{estimate_input_tokens, CountRequest, MessagesRequest};
use self::stream::StreamState;
use super::executions::{accept, live_feed, Ack, Reading};
use super::following::{blame_store, until_done, DisconnectGuard};
use super::{body::read_json, AppState, Principal};
use crate::cursor::Cursor;
use crate::error::{ApiError, ErrorCode};

/// The caller: `x-api-key` (what Anthropic's SDKs and Claude Code send) or, as everywhere
/// else, `Authorization: Bearer`.
fn principal(state: &AppState, req: &HttpRequest) -> Result<Principal, ApiError> {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let secret = header("x-api-key")
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let (scheme, token) = header(header::AUTHORIZATION.as_str())?.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim())
                .filter(|t| !t.is_empty())
        })
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "missing api key: send `x-api-key: <key>` or `Authorization: Bearer <key>`",
            )
        })?;
    Principal::from_secret(state, secret)
}

pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, MessagesError> {
    let principal = principal(&state, &req)?;
    let request: MessagesRequest =
        read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let key = crate::api::following::idempotency_key(&req, "msg");
    let streaming = request.stream;
    let (body, conversation) = request.into_submit(key)?;
    let accepted = accept(&state, &req, &principal, &body, Ack::ByEvents)
        .await
        .map_err(|err| conversation.own_field_names(err))?;
    let record = accepted.record;
    let live = live_feed(&state, &record.id, accepted.live, Reading::of(streaming)).await?;
    let guard = DisconnectGuard::new(&state, &record.id);
    let id = format!("msg_{}", record.id.trim_start_matches("exec_"));
    let cursor = Cursor::new(state.store.event_log(), record.id.clone(), 0, live);
    let mut res = HttpResponse::Ok();
    res.insert_header(("x-switchyard-execution-id", record.id.clone()));
    if streaming {
        let keepalive = Duration::from_millis(state.settings.limits.sse_keepalive_ms);
        let mut st = StreamState::new(cursor, guard, id, record.model.clone());
        let (head, finished) = stream::head(&mut st, keepalive)
            .await
            .map_err(|err| blame_store(&state, err))?;
        let head = futures_util::stream::once(async move { Ok(head) });
        let tail = futures_util::stream::iter((!finished).then_some(st))
            .flat_map(move |st| stream::tail(st, keepalive));
        // A revoked or rotated key ends the answer with an error event.
        let revoked = principal.revocation(&state);
        let body = head.chain(stream::until_revoked(tail, revoked));
        return Ok(res
            .content_type("text/event-stream")
            .insert_header(("cache-control", "no-cache"))
            .streaming(body));
    }
    let done = until_done(cursor, guard)
        .await
        .map_err(|err| blame_store(&state, err))?;
    let message = Outcome::parse(&done)?.message(&id, &record.model)?;
    Ok(res.json(message))
}

/// An estimate, not a tokenizer's count: characters / 4 (see `request::estimate_input_tokens`).
pub async fn count_tokens(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, MessagesError> {
    principal(&state, &req)?;
    let request: CountRequest =
        read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let (body, conversation) = request.into_submit()?;
    body.validate()
        .map_err(|err| conversation.own_field_names(err))?;
    if body.model != "auto" && state.settings.model(&body.model).is_none() {
        return Err(ApiError::invalid(format!("model: unknown model `{}`", body.model)).into());
    }
    Ok(HttpResponse::Ok().json(json!({"input_tokens": estimate_input_tokens(&body)})))
}
