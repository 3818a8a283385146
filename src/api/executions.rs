//! `/v1/executions`: submit (async, idempotent), read, list, cancel.

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{body::read_json, AppState, Principal};
use crate::actors::live::Subscription;
use crate::actors::{CancelExecution, StartExecution, Subscribe};
use crate::cluster::in_flight::InFlightSlot;
use crate::cluster::submit::Shared;
use crate::cluster::takeover::Replica;
use crate::domain::{ids, now_ms, rfc3339, Cost, Event, ExecutionRecord, Status, SubmitBody};
use crate::error::{ApiError, ErrorCode};
use crate::routing;
use crate::store::{SubmitOutcome, WsTokenRecord};

pub async fn submit(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: SubmitBody = read_json(&req, payload, state.settings.limits.max_body_bytes).await?;
    let Accepted {
        record,
        created,
        token,
        ..
    } = accept(&state, &req, &principal, &body, Ack::Accepted).await?;
    let token = token.unwrap_or_default();
    let status = if created {
        actix_web::http::StatusCode::ACCEPTED
    } else {
        actix_web::http::StatusCode::OK
    };
    Ok(HttpResponse::build(status)
        .insert_header((header::LOCATION, format!("/v1/executions/{}", record.id)))
        .json(submit_view(&state, &req, &record, &token)))
}

/// How the caller acknowledges a submit, which decides whether [`accept`] waits for it to be
/// durable.
pub(super) enum Ack {
    /// A `202` (with a fresh WebSocket token): the submit is made durable before returning.
    Accepted,
    /// Only through the execution's events (the OpenAI-compatible endpoint): no wait, since every
    /// event is published after a group commit, and that commit covers the submit written
    /// before it. Saves one whole commit per request.
    ByEvents,
}

/// Validates and persists a submit and starts it: `created` for a new execution, the original
/// for a retry with the same idempotency key and body; with a fresh
/// WebSocket token for [`Ack::Accepted`] (made durable by the same group commit).
pub(super) async fn accept(
    state: &AppState,
    req: &HttpRequest,
    principal: &Principal,
    body: &SubmitBody,
    ack: Ack,
) -> Result<Accepted, ApiError> {
    body.validate()?;
    let resolved = super::design::resolve(state, principal, body)?;
    if let Some(url) = &resolved.webhook_url {
        state.webhooks.check_target(url)?;
    }
    let chars = body.messages.iter().map(|m| m.content.len()).sum();
    let permit = super::rate_limits::admit(
        state,
        req,
        principal,
        crate::limits::estimate_tokens(chars, body.params.max_tokens),
    )?;
    // Refused before anything is written: a full disk or failed store answers 503 now
    // instead of accepting work it could not keep.
    state.store.health.admit()?;
    let testing = !resolved.design.mode.is_live();
    let request = std::sync::Arc::new(resolved.request);
    let needs = routing::Needs::of(&request);
    let model = match testing {
        // Testing answers come from the built-in testing routes: the slug must exist, its
        // routes' health and quota do not matter.
        true => known_model(state, &resolved.model)?,
        false => resolve_model(state, &resolved.model, &needs)?,
    };
    // Checked and counted now, written once the execution exists: a retry of an existing
    // submit drops it unwritten and holds nothing twice. Testing executions cost nothing.
    let mut hold = match testing {
        true => None,
        false => super::balance::reserve(state, principal, &model, &needs, body)?,
    };
    let id = ids::execution_id();
    // In a cluster the project's balance is held in the shared ledger, exactly, before
    // anything is written; given back unless the submit creates `id` (the guard).
    let mut shared_hold = None;
    if let (Some(cluster), false) = (&state.cluster, testing) {
        let what = (model.as_str(), &needs, body);
        if let Some(amount) =
            super::balance::hold_shared(state, cluster, principal, what, &id).await?
        {
            shared_hold = Some(SharedHold {
                cluster: cluster.clone(),
                id: id.clone(),
                amount,
                kept: false,
            });
        }
    }
    // In a cluster the executions in flight per key and project are counted across nodes.
    let mut slot = None;
    if let Some(cluster) = &state.cluster {
        let limits = state
            .limits
            .max_in_flight(&principal.key_id, &principal.project_id);
        if limits != (0, 0) {
            let entered = cluster
                .enter_in_flight(
                    &state.store,
                    &principal.key_id,
                    &principal.project_id,
                    &id,
                    limits,
                )
                .await
                .map_err(ApiError::cluster_unavailable)?;
            if let Err(full) = entered {
                return Err(in_flight_full(state, full));
            }
            slot = Some(InFlightSlot::new(
                cluster.clone(),
                &principal.key_id,
                &principal.project_id,
                &id,
            ));
        }
    }
    let held = hold
        .as_ref()
        .map(|h| h.amount())
        .or(shared_hold.as_ref().map(|h| h.amount));
    let record = ExecutionRecord {
        channel_id: crate::channels::channel_id_for(&id),
        id,
        project_id: principal.project_id.clone(),
        status: Status::Pending,
        model,
        idempotency_key: body.idempotency_key.clone(),
        fingerprint: body.fingerprint(),
        metadata: body.metadata.clone(),
        webhook_url: resolved.webhook_url,
        output_text: None,
        output_tool_calls: Vec::new(),
        error: None,
        finish_reason: None,
        usage: None,
        attempts: Vec::new(),
        key_id: Some(principal.key_id.clone()),
        cost: held.map(|held_micros| Cost {
            held_micros,
            settled_micros: None,
        }),
        created_at_ms: now_ms(),
        started_at_ms: None,
        completed_at_ms: None,
        design: resolved.design,
    };
    // In a cluster the idempotency claim is shared: the same key raced on two nodes runs once.
    let shared = match &state.cluster {
        Some(cluster) => Some(
            cluster
                .share_submit(&record, &request)
                .await
                .map_err(ApiError::cluster_unavailable)?,
        ),
        None => None,
    };
    let outcome = match shared {
        Some(Shared::Existing { ref id, same_body }) => SubmitOutcome::Existing {
            id: id.clone(),
            same_body,
        },
        _ => state
            .store
            .create_execution(&record, &request, &Event::status(1, Status::Pending))?,
    };
    let (record, created) = match outcome {
        SubmitOutcome::Created => {
            if let Some(hold) = hold.as_mut() {
                // Before the actor starts: every event it publishes follows a commit that
                // covers the hold too.
                state.ledger.hold(hold, &record.id)?;
            }
            (record, true)
        }
        SubmitOutcome::Existing {
            id,
            same_body: true,
        } => {
            let existing = super::shared::claimed_execution(state, &id)
                .await?
                .ok_or_else(|| ApiError::internal("idempotency entry without execution"))?;
            (existing, false)
        }
        SubmitOutcome::Existing { .. } => {
            return Err(ApiError::new(
                ErrorCode::IdempotencyConflict,
                "idempotency_key was already used with a different request body",
            ))
        }
    };
    if let (true, Some(hold)) = (created, shared_hold.as_mut()) {
        hold.kept = true;
    }
    // In a cluster the token and the first event go to NATS side by side.
    let token = async {
        match ack {
            Ack::Accepted => issue_ws_token(state, principal, &record).await.map(Some),
            Ack::ByEvents => Ok(None),
        }
    };
    let first_event = async {
        match (&state.cluster, &shared, created) {
            (Some(cluster), Some(Shared::New(_)), true) => {
                let first = Event::status(1, Status::Pending);
                Some(cluster.share_first_event(&record.id, first).await)
            }
            _ => None,
        }
    };
    let (token, shared_first) = futures_util::join!(token, first_event);
    let mut live = None;
    if created {
        // The `pending` event was written with the record. The execution may start before the
        // submit is durable: it publishes nothing until a commit covers the submit as well.
        state.metrics.events.inc();
        let mut start = StartExecution::new(record.clone(), request).holding(permit);
        if let (Some(cluster), Some(Shared::New(lease)), Some(shared_first)) =
            (&state.cluster, shared, shared_first)
        {
            match shared_first {
                Ok(position) => {
                    start = start.replicated(Replica {
                        cluster: cluster.clone(),
                        lease,
                        position,
                        slot: slot.take(),
                    })
                }
                Err(err) => {
                    // Not started here: once the lease runs out a node (maybe this one) resumes
                    // it, and a retry with the same idempotency key finds it.
                    cluster.lease_release(&lease, false).await;
                    return Err(ApiError::cluster_unavailable(err));
                }
            }
        }
        live = Some(state.launcher.start_new(start));
    }
    // After the start: an execution that exists runs even when its token could not be made (a
    // retry with the same idempotency key gets it and a token).
    let token = token?;
    if matches!(ack, Ack::Accepted) {
        // Accepting promises the execution survives a crash: wait for the group commit.
        state.durable().await?;
    }
    Ok(Accepted {
        record,
        created,
        token,
        live,
    })
}

/// What [`accept`] did.
pub(super) struct Accepted {
    pub record: ExecutionRecord,
    /// A new execution, not a retry of one with the same idempotency key and body.
    pub created: bool,
    /// A fresh WebSocket token ([`Ack::Accepted`]).
    pub token: Option<String>,
    /// The new execution's feed, subscribed before it started; `None` for a retry.
    pub live: Option<Subscription>,
}

/// How a reader shows an execution.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Reading {
    /// Each event as it comes (a stream).
    Follows,
    /// Only the outcome (a non-stream answer): see [`Subscription::for_outcome`].
    Outcome,
}

impl Reading {
    /// A client asking for a stream follows; one asking for the whole answer reads the outcome.
    pub(super) fn of(streaming: bool) -> Reading {
        match streaming {
            true => Reading::Follows,
            false => Reading::Outcome,
        }
    }
}

/// The execution's live feed: `started` (subscribed when this request started it), else the
/// registry's; `None` when it is not running.
pub(super) async fn live_feed(
    state: &AppState,
    id: &str,
    started: Option<Subscription>,
    reading: Reading,
) -> Result<Option<Subscription>, ApiError> {
    let live = match started {
        Some(live) => Some(live),
        None => state
            .registry
            .send(Subscribe(id.to_owned()))
            .await
            .map_err(ApiError::internal)?,
    };
    Ok(match reading {
        Reading::Follows => live,
        Reading::Outcome => live.map(Subscription::for_outcome),
    })
}

/// The 429 for a submit whose key or project has as many executions in flight as it may,
/// counted across the cluster.
fn in_flight_full(state: &AppState, full: crate::cluster::in_flight::Full) -> ApiError {
    use crate::cluster::in_flight::Full;
    let (scope, what) = match full {
        Full::Key => ("concurrency", "per-key concurrent executions"),
        Full::Project => ("project_concurrency", "per-project concurrent executions"),
    };
    state.metrics.rate_limited.with_label_values(&[scope]).inc();
    let mut err = ApiError::new(
        ErrorCode::RateLimited,
        format!("rate limit exceeded ({what} limit, counted across the cluster); retry after 1s"),
    );
    err.retry_after = Some(std::time::Duration::from_secs(1));
    err
}

/// A hold in the cluster's shared ledger for a submit in progress: given back when dropped
/// before the submit created its execution (an error, or an idempotent retry of another).
struct SharedHold {
    cluster: std::sync::Arc<crate::cluster::Cluster>,
    id: String,
    amount: u64,
    kept: bool,
}

impl Drop for SharedHold {
    fn drop(&mut self) {
        if !self.kept {
            let (cluster, id) = (self.cluster.clone(), std::mem::take(&mut self.id));
            tokio::spawn(cluster.close_hold_eventually(id, None));
        }
    }
}

/// The model slug to run: a configured slug that has a route able to serve the request, or for
/// `auto` the capable model with a healthy route and the fewest attempts in flight.
fn resolve_model(state: &AppState, slug: &str, needs: &routing::Needs) -> Result<String, ApiError> {
    let plan =
        |slug: &str| routing::plan(&state.settings, &state.providers, slug).unwrap_or_default();
    let (now, now_ms) = (tokio::time::Instant::now(), now_ms());
    if slug == "auto" {
        // Only models with a route that is healthy and has upstream quota left.
        let load = |slug: &str| {
            routing::capable(plan(slug), needs)
                .iter()
                .filter(|r| r.provider.usable() && state.health.admits(r.key(), now))
                .filter(|r| state.quota.admits(r.key(), now_ms))
                .map(|r| state.health.in_flight(r.key()))
                .min()
        };
        let models = &state.settings.models;
        let picked = models
            .iter()
            .filter_map(|m| load(&m.slug).map(|l| (l, m.slug.as_str())))
            .min_by_key(|(l, _)| *l)
            .map(|(_, slug)| slug.to_string());
        return picked.ok_or_else(|| {
            // When quota is what is missing, say when the first route has some again.
            let ready = models
                .iter()
                .map(|m| routing::capable(plan(&m.slug), needs))
                .filter_map(|routes| {
                    routing::submit_headroom(&routes, &state.health, &state.quota, now, now_ms)
                        .err()
                })
                .min_by_key(|e| e.until_ms);
            match ready {
                Some(e) => e.api_error("auto", now_ms),
                None => ApiError::new(
                    ErrorCode::ProviderUnavailable,
                    "no model has a healthy route able to serve this request",
                ),
            }
        });
    }
    let model = configured_model(state, slug)?;
    let routes = plan(&model.slug);
    let capable = routing::capable(routes.clone(), needs);
    if capable.is_empty() {
        let why = routes
            .first()
            .and_then(|r| needs.unmet_by(r))
            .unwrap_or_default();
        let code = if why.starts_with("a context window") {
            ErrorCode::ContextLengthExceeded
        } else {
            ErrorCode::InvalidRequest
        };
        return Err(ApiError::new(
            code,
            format!(
                "model: no route of `{}` can serve this request (it needs {why})",
                model.slug
            ),
        ));
    }
    routing::submit_headroom(&capable, &state.health, &state.quota, now, now_ms)
        .map_err(|e| e.api_error(&format!("model `{}`", model.slug), now_ms))?;
    Ok(model.slug.clone())
}

/// The configured model `slug`, or a 400 listing the configured ones.
fn configured_model<'a>(
    state: &'a AppState,
    slug: &str,
) -> Result<&'a crate::settings::ModelSettings, ApiError> {
    state.settings.model(slug).ok_or_else(|| {
        ApiError::invalid(format!(
            "model: unknown model `{slug}` (configured: {})",
            state
                .settings
                .models
                .iter()
                .map(|m| m.slug.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// A testing execution's model: a configured slug (`auto` is the first one).
fn known_model(state: &AppState, slug: &str) -> Result<String, ApiError> {
    match (slug, state.settings.models.first()) {
        ("auto", Some(first)) => Ok(first.slug.clone()),
        _ => configured_model(state, slug).map(|m| m.slug.clone()),
    }
}

fn websocket_channel(record: &ExecutionRecord) -> String {
    crate::channels::execution_channel(&record.project_id, &record.id)
}

/// The execution's WebSocket token for this caller: an idempotent retry gets the token the
/// first answer carried while it is unspent, instead of minting one more. In a cluster the
/// token is shared, so it opens a session on any node, once.
async fn issue_ws_token(
    state: &AppState,
    principal: &Principal,
    record: &ExecutionRecord,
) -> Result<String, ApiError> {
    let now = now_ms();
    let token_record = WsTokenRecord {
        project_id: record.project_id.clone(),
        execution_id: record.id.clone(),
        channel: websocket_channel(record),
        expires_at_ms: now + state.settings.limits.ws_token_ttl_ms,
        key_id: principal
            .key_hash
            .as_ref()
            .map(|_| principal.key_id.clone()),
        key_hash: principal.key_hash.clone(),
    };
    let token = state.store.ws_token_for(&token_record, now)?;
    let Some(cluster) = &state.cluster else {
        return Ok(token);
    };
    let share = |token: &str| {
        let (token, record) = (token.to_string(), &token_record);
        async move {
            cluster
                .share_token(&token, record)
                .await
                .map_err(ApiError::cluster_unavailable)
        }
    };
    if share(&token).await? {
        return Ok(token);
    }
    // Spent on another node: this node's copy is stale; mint another.
    state.store.take_ws_token(&token)?;
    let fresh = state.store.ws_token_for(&token_record, now)?;
    share(&fresh).await?;
    Ok(fresh)
}

/// `public_url` + `/v1/ws` when configured (behind a proxy the Host header names the proxy's
/// upstream, not what browsers reach), else built from the request's scheme and Host.
fn websocket_url(state: &AppState, req: &HttpRequest) -> String {
    if let Some(public) = &state.settings.public_url {
        let (scheme, rest) = match public.split_once("://") {
            Some(("https", rest)) => ("wss", rest),
            Some((_, rest)) => ("ws", rest),
            None => ("ws", public.as_str()),
        };
        return format!("{scheme}://{}/v1/ws", rest.trim_end_matches('/'));
    }
    let conn = req.connection_info();
    let scheme = if conn.scheme() == "https" {
        "wss"
    } else {
        "ws"
    };
    format!("{scheme}://{}/v1/ws", conn.host())
}

fn submit_view(
    state: &AppState,
    req: &HttpRequest,
    record: &ExecutionRecord,
    token: &str,
) -> serde_json::Value {
    json!({
        "id": record.id,
        "object": "execution",
        "status": record.status,
        "model": record.model,
        "channel_id": record.channel_id,
        "websocket_url": websocket_url(state, req),
        "websocket_channel": websocket_channel(record),
        "ws_token": token,
        "events_url": format!("/v1/executions/{}/events", record.id),
        "created_at": rfc3339(record.created_at_ms),
    })
}

/// The execution if the caller's project owns it; unknown and foreign ids look the same.
pub(super) async fn owned(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<ExecutionRecord, ApiError> {
    super::shared::project_execution(state, &principal.project_id, id)
        .await?
        .ok_or_else(|| not_found(state, id, ""))
}

/// The 404 for an execution that is not (or no longer) there: the message says how long
/// finished executions are kept, since an id that once worked was most likely deleted by
/// retention. `doing` says what could not be done, for a more specific message.
pub(super) fn not_found(state: &AppState, id: &str, doing: &str) -> ApiError {
    let keep = humantime::format_duration(state.settings.retention.executions);
    ApiError::new(
        ErrorCode::NotFound,
        format!("{doing}no execution with id `{id}`; finished executions are kept for {keep} (retention.executions), then deleted"),
    )
}

/// The partial output of a running execution (`None` once it has its final text).
async fn live_text(state: &AppState, record: &ExecutionRecord) -> Result<Option<String>, ApiError> {
    Ok(if record.output_text.is_none() {
        // The log may hold chunks no commit covers yet: what was read is made durable before
        // it is shown, so a crash cannot take back text a reader was given.
        let text = state.store.emitted(&record.id)?.text;
        state.durable().await?;
        Some(text)
    } else {
        None
    })
}

pub async fn get(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let record = owned(&state, &principal, &id).await?;
    let live = live_text(&state, &record).await?;
    Ok(HttpResponse::Ok().json(record.view(live.as_deref())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    /// Text, so that a non-number gets an error naming `limit`.
    limit: Option<String>,
    cursor: Option<String>,
}

pub async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "status: must be one of pending, processing, completed, failed, cancelled, expired; got `{s}`"
            ))
        })?),
    };
    let limit = super::paging::limit(query.limit.as_deref())?;
    let cursor = match &query.cursor {
        Some(c) => Some(
            hex::decode(c)
                .map_err(|_| ApiError::invalid("cursor: not a cursor from a previous page"))?,
        ),
        None => None,
    };
    let page =
        state
            .store
            .list_executions(&principal.project_id, status, limit, cursor.as_deref())?;
    let data: Vec<serde_json::Value> = page
        .records
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r.view(None)).expect("views serialize");
            v["prompt_excerpt"] = json!(prompt_excerpt(&state, &r.id));
            v
        })
        .collect();
    Ok(super::paging::list(&data, page.next_cursor.as_deref()))
}

/// The start of the last user message (what a list shows to tell executions apart): at most
/// `EXCERPT_CHARS` characters, `None` when the request is gone (past retention) or unreadable.
fn prompt_excerpt(state: &AppState, id: &str) -> Option<String> {
    const EXCERPT_CHARS: usize = 80;
    let request = state.store.get_request(id).ok()??;
    let last = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == crate::domain::Role::User)?;
    let text: String = last.content.chars().take(EXCERPT_CHARS).collect();
    Some(if last.content.chars().count() > EXCERPT_CHARS {
        format!("{text}…")
    } else {
        text
    })
}

pub async fn cancel(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let record = owned(&state, &principal, &id).await?;
    if record.status.is_terminal() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("execution is already {}", record.status.as_str()),
        ));
    }
    let cancelled = state
        .registry
        .send(CancelExecution(record.id.clone()))
        .await
        .map_err(ApiError::internal)??;
    Ok(HttpResponse::Ok().json(cancelled.view(None)))
}
