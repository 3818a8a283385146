//! `GET /v1/executions/{id}/events`: the event log as Server-Sent Events, resumable with
//! `Last-Event-ID` or `?after=`, live until `done` — or until the key that opened it is revoked
//! or rotated (the stream then ends; the client reconnects with a valid key and `Last-Event-ID`).

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;

use super::{
    executions::{not_found, owned},
    AppState, Principal,
};
use crate::actors::Subscribe;
use crate::cursor::Cursor;
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Text, so that a non-number gets an error naming it.
    after: Option<String>,
}

const KEEPALIVE: Bytes = Bytes::from_static(b": keep-alive\n\n");

pub async fn stream(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
    query: web::Query<EventsQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let after = match req.headers().get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::invalid("Last-Event-ID: must be an event seq number"))?,
        None => match query.after.as_deref() {
            None => 0,
            Some(text) => text.trim().parse::<u64>().map_err(|_| {
                ApiError::invalid(format!("after: must be an event seq number, got `{text}`"))
            })?,
        },
    };
    let record = match after {
        0 => owned(&state, &principal, &id).await?,
        // A reader resuming a log it once read: tell it the log is gone, not just unknown.
        after => super::shared::project_execution(&state, &principal.project_id, &id)
            .await?
            .ok_or_else(|| {
                let doing = format!("cannot resume events after seq {after}: ");
                not_found(&state, &id, &doing)
            })?,
    };
    // Subscribe before the cursor reads the log, so nothing falls between the two.
    let live = state
        .registry
        .send(Subscribe(record.id.clone()))
        .await
        .map_err(ApiError::internal)?;
    let cursor = Cursor::new(state.store.event_log(), record.id, after, live);
    let keepalive = Duration::from_millis(state.settings.limits.sse_keepalive_ms);
    let revoked = principal.revocation(&state);
    let gauge = SubscriberGauge::open(state.metrics.sse_subscribers.clone());
    let body = stream::unfold((cursor, gauge), move |(mut cursor, gauge)| async move {
        match tokio::time::timeout(keepalive, cursor.next()).await {
            Ok(Some(event)) => Some((Ok::<_, Infallible>(event.sse_frame()), (cursor, gauge))),
            Ok(None) => None,
            Err(_) => Some((Ok(KEEPALIVE), (cursor, gauge))),
        }
    })
    .take_until(revoked.fired());
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}

/// Counts an open SSE stream for as long as it lives (the client may vanish at any point).
struct SubscriberGauge(prometheus::IntGauge);

impl SubscriberGauge {
    fn open(gauge: prometheus::IntGauge) -> SubscriberGauge {
        gauge.inc();
        SubscriberGauge(gauge)
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
