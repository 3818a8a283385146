//! `/v1/responses`: OpenAI's Responses API over executions. A response *is* an execution
//! (`resp_X` ↔ `exec_X`): created through the same submit path (failover, persistence, debug
//! log, limits, balances), its events derived from the execution's log ([`events`]), so a
//! stream resumes with `starting_after` across disconnects and restarts.
//!
//! - [`request`]: the request body into the canonical submit, and the [`meta::Meta`] kept
//!   beside it
//! - [`events`]: the log as protocol events and the response object
//! - [`stream`]: the SSE body

mod events;
mod meta;
mod request;
mod stream;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

use super::executions::{accept, live_feed, Ack, Reading};
use super::{body::read_json, openai_error::OpenAiError, AppState, Principal};
use crate::actors::live::Subscription;
use crate::actors::CancelExecution;
use crate::cursor::Cursor;
use crate::domain::{ExecutionRecord, Message, Role};
use crate::error::{ApiError, ErrorCode};
use events::Translation;
use meta::Meta;
use request::CreateRequest;

/// `resp_X` (or the execution id itself) → `exec_X`.
fn execution_id(id: &str) -> Option<String> {
    if let Some(rest) = id.strip_prefix("resp_") {
        return Some(format!("exec_{rest}"));
    }
    id.starts_with("exec_").then(|| id.to_string())
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no response with id `{id}` (finished responses are deleted after retention.executions)"),
    )
}

/// The execution behind response `id` if the caller's project owns it; unknown and foreign
/// ids look the same.
async fn owned(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<ExecutionRecord, ApiError> {
    let exec = execution_id(id).ok_or_else(|| not_found(id))?;
    crate::api::shared::project_execution(state, &principal.project_id, &exec)
        .await?
        .ok_or_else(|| not_found(id))
}

fn translation(state: &AppState, record: &ExecutionRecord) -> Result<Translation, ApiError> {
    let meta = Meta::load(&state.store, &record.id)?;
    Ok(Translation::new(
        &record.id,
        record.created_at_ms,
        &record.model,
        record.metadata.clone(),
        Arc::new(meta),
    ))
}

/// The response folded from the whole log as it stands.
async fn current(state: &AppState, record: &ExecutionRecord) -> Result<Translation, ApiError> {
    let mut t = translation(state, record)?;
    for event in state.store.all_events(&record.id)? {
        t.apply(&event);
    }
    if !t.finished() {
        // The log may hold events no commit covers yet: make what is shown durable first, so
        // a crash cannot take back text a reader was given.
        state.durable().await?;
    }
    Ok(t)
}

/// The conversation of a previous response: its input (without its instructions, which do
/// not carry over) and its output.
async fn prior_conversation(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Vec<Message>, ApiError> {
    let field = |why: String| ApiError::invalid(format!("previous_response_id: {why}"));
    let record = owned(state, principal, id).await.map_err(|e| {
        if e.code() == ErrorCode::NotFound {
            ApiError::new(
                ErrorCode::NotFound,
                format!("previous_response_id: no response with id `{id}`"),
            )
        } else {
            e
        }
    })?;
    if !record.status.is_terminal() {
        return Err(field(format!("response `{id}` has not finished yet")));
    }
    let meta = Meta::load(&state.store, &record.id)?;
    let request = state
        .store
        .get_request(&record.id)?
        .ok_or_else(|| field(format!("response `{id}` has no stored input")))?;
    let skip = usize::from(meta.instructions.is_some());
    let mut messages: Vec<Message> = request.messages.into_iter().skip(skip).collect();
    let text = record.output_text.clone().unwrap_or_default();
    if !text.is_empty() || !record.output_tool_calls.is_empty() {
        let mut answer = Message::new(Role::Assistant, text);
        answer.tool_calls = record.output_tool_calls.clone();
        messages.push(answer);
    }
    Ok(messages)
}

/// The query string, with errors in this API's shape naming the parameter.
fn parse_query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::invalid(format!("invalid query string: {e}")))
}

fn keepalive(state: &AppState) -> Duration {
    Duration::from_millis(state.settings.limits.sse_keepalive_ms)
}

fn sse(res: &mut actix_web::HttpResponseBuilder) -> &mut actix_web::HttpResponseBuilder {
    res.content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
}

/// Follows the log from seq 1, sending the protocol events numbered above `after` (all
/// without it) — until the response ends, or the key that opened the stream is revoked or
/// rotated (the client resumes with a valid key and `starting_after`).
async fn follow(
    state: &AppState,
    principal: &Principal,
    record: &ExecutionRecord,
    started: Option<Subscription>,
    after: Option<u64>,
) -> Result<
    impl futures_util::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>>,
    ApiError,
> {
    let revoked = principal.revocation(state);
    // Subscribe before the cursor reads the log, so nothing falls between the two.
    let live = live_feed(state, &record.id, started, Reading::Follows).await?;
    let cursor = Cursor::new(state.store.event_log(), record.id.clone(), 0, live);
    let body = stream::body(cursor, translation(state, record)?, after, keepalive(state));
    Ok(futures_util::StreamExt::take_until(body, revoked.fired()))
}

pub async fn create(
    state: web::Data<AppState>,
    principal: Result<Principal, ApiError>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, OpenAiError> {
    let principal = principal?;
    let request: CreateRequest =
        read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let prior = match &request.previous_response_id {
        Some(id) => prior_conversation(&state, &principal, id).await?,
        None => Vec::new(),
    };
    let key = crate::api::following::idempotency_key(&req, "resp");
    let streaming = request.stream;
    let (body, meta) = request
        .into_submit(prior, key)
        .map_err(request::own_field_names)?;
    let background = meta.background;
    let accepted = accept(&state, &req, &principal, &body, Ack::ByEvents)
        .await
        .map_err(request::own_field_names)?;
    let (record, created, started) = (accepted.record, accepted.created, accepted.live);
    if created {
        meta.save(&state.store, &record.id)?;
    }
    if background {
        // A background response is polled and resumed later: it must survive a crash from
        // the moment its id is given out.
        state.durable().await?;
    }
    let mut res = HttpResponse::Ok();
    res.insert_header(("x-switchyard-execution-id", record.id.clone()));
    if streaming {
        let body = follow(&state, &principal, &record, started, None).await?;
        return Ok(sse(&mut res).streaming(body));
    }
    if background {
        let t = translation(&state, &record)?;
        return Ok(res.json(t.response()));
    }
    let t = until_finished(&state, &record, started).await?;
    match t.status() {
        "completed" | "incomplete" => Ok(res.json(t.response())),
        // The SDKs raise it; the failed response stays readable with `GET`.
        status => Err(why_not(&state, &record, status).into()),
    }
}

/// The error a response that did not complete ended with.
fn why_not(state: &AppState, record: &ExecutionRecord, status: &str) -> ApiError {
    match state.store.get_execution(&record.id) {
        Ok(Some(ExecutionRecord { error: Some(e), .. })) => ApiError::new(e.code, e.message),
        Ok(_) => ApiError::new(ErrorCode::Cancelled, format!("the response was {status}")),
        Err(e) => e.into(),
    }
}

/// Waits for the response's end, folding the log as it comes.
async fn until_finished(
    state: &AppState,
    record: &ExecutionRecord,
    started: Option<Subscription>,
) -> Result<Translation, ApiError> {
    let live = live_feed(state, &record.id, started, Reading::Outcome).await?;
    let mut cursor = Cursor::new(state.store.event_log(), record.id.clone(), 0, live);
    let mut t = translation(state, record)?;
    while let Some(event) = cursor.next().await {
        t.apply(&event);
        if t.finished() {
            return Ok(t);
        }
    }
    let ended = ApiError::new(ErrorCode::Internal, "the response ended without a result");
    Err(super::following::blame_store(state, ended))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrieveQuery {
    /// Text, so that a bad value gets an error naming the parameter.
    stream: Option<String>,
    starting_after: Option<String>,
    include: Option<String>,
    /// Random padding on deltas against length side channels; none is added, which changes
    /// no answer, so both values are accepted.
    include_obfuscation: Option<String>,
}

pub async fn retrieve(
    state: web::Data<AppState>,
    principal: Result<Principal, ApiError>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, OpenAiError> {
    let principal = principal?;
    let query: RetrieveQuery = parse_query(&req)?;
    let record = owned(&state, &principal, &id).await?;
    if query.include.as_deref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::invalid("include: no additional output data is available").into());
    }
    if let Some(v) = query.include_obfuscation.as_deref() {
        if !matches!(v, "true" | "false") {
            return Err(ApiError::invalid(format!(
                "include_obfuscation: must be true or false, got `{v}`"
            ))
            .into());
        }
    }
    let streaming = match query.stream.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(
                ApiError::invalid(format!("stream: must be true or false, got `{other}`")).into(),
            )
        }
    };
    let after = match query.starting_after.as_deref() {
        None => None,
        Some(n) => Some(n.parse::<u64>().map_err(|_| {
            ApiError::invalid(format!(
                "starting_after: must be a sequence number (a non-negative integer), got `{n}`"
            ))
        })?),
    };
    if !streaming {
        if query.starting_after.is_some() {
            return Err(ApiError::invalid("starting_after: only with stream=true").into());
        }
        let t = current(&state, &record).await?;
        return Ok(HttpResponse::Ok().json(t.response()));
    }
    if let Some(after) = after {
        let t = current(&state, &record).await?;
        if after >= t.count() {
            return Err(ApiError::invalid(format!(
                "starting_after: {after} is beyond the last event of the response (sequence number {})",
                t.count().saturating_sub(1)
            ))
            .into());
        }
    }
    let body = follow(&state, &principal, &record, None, after).await?;
    Ok(sse(&mut HttpResponse::Ok()).streaming(body))
}

pub async fn cancel(
    state: web::Data<AppState>,
    principal: Result<Principal, ApiError>,
    id: web::Path<String>,
) -> Result<HttpResponse, OpenAiError> {
    let principal = principal?;
    let record = owned(&state, &principal, &id).await?;
    if record.status.is_terminal() {
        let t = current(&state, &record).await?;
        if t.status() == "cancelled" {
            // Cancelling twice answers the same cancelled response.
            return Ok(HttpResponse::Ok().json(t.response()));
        }
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("cannot cancel a response that is {}", t.status()),
        )
        .into());
    }
    stop(&state, &record).await?;
    let record = owned(&state, &principal, &id).await?;
    Ok(HttpResponse::Ok().json(current(&state, &record).await?.response()))
}

/// Cancels a running execution; one that finished meanwhile is left as it ended.
async fn stop(state: &AppState, record: &ExecutionRecord) -> Result<(), ApiError> {
    let cancelled = state
        .registry
        .send(CancelExecution(record.id.clone()))
        .await
        .map_err(ApiError::internal)?;
    match cancelled {
        Ok(_) => Ok(()),
        Err(e) if e.code() == ErrorCode::Conflict => Ok(()),
        Err(e) => Err(e),
    }
}

pub async fn delete(
    state: web::Data<AppState>,
    principal: Result<Principal, ApiError>,
    id: web::Path<String>,
) -> Result<HttpResponse, OpenAiError> {
    let principal = principal?;
    let mut record = owned(&state, &principal, &id).await?;
    if !record.status.is_terminal() {
        stop(&state, &record).await?;
        record = owned(&state, &principal, &id).await?;
        if !record.status.is_terminal() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the response is still running and could not be cancelled; retry",
            )
            .into());
        }
    }
    state
        .store
        .delete_finished_execution(&record)
        .map_err(ApiError::from)?;
    state.durable().await?;
    let id = format!("resp_{}", record.id.trim_start_matches("exec_"));
    Ok(HttpResponse::Ok().json(json!({"id": id, "object": "response.deleted", "deleted": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemsQuery {
    order: Option<String>,
    limit: Option<String>,
    after: Option<String>,
    include: Option<String>,
}

pub async fn input_items(
    state: web::Data<AppState>,
    principal: Result<Principal, ApiError>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, OpenAiError> {
    let principal = principal?;
    let query: ItemsQuery = parse_query(&req)?;
    let record = owned(&state, &principal, &id).await?;
    if query.include.as_deref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::invalid("include: no additional item data is available").into());
    }
    let limit = match query.limit.as_deref() {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| {
                ApiError::invalid(format!("limit: must be between 1 and 100, got `{l}`"))
            })?,
    };
    let meta = Meta::load(&state.store, &record.id)?;
    let stem = record.id.trim_start_matches("exec_");
    let mut items: Vec<Value> = meta
        .input
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            let prefix = match item["type"].as_str() {
                Some("function_call") => "fc",
                Some("function_call_output") => "fco",
                _ => "msg",
            };
            item["id"] = json!(format!("{prefix}_{stem}_in{i}"));
            item
        })
        .collect();
    match query.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(other) => {
            return Err(
                ApiError::invalid(format!("order: must be asc or desc, got `{other}`")).into(),
            )
        }
    }
    if let Some(after) = &query.after {
        let at = items
            .iter()
            .position(|i| i["id"] == json!(after))
            .ok_or_else(|| ApiError::invalid(format!("after: no input item `{after}`")))?;
        items.drain(..=at);
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": items,
        "first_id": items.first().map(|i| i["id"].clone()),
        "last_id": items.last().map(|i| i["id"].clone()),
        "has_more": has_more,
    })))
}
