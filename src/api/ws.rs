//! `GET /v1/ws`: one actor per WebSocket connection (actix-web-actors, kept to this one file).
//!
//! Each joined channel is a [`Cursor`] stream added to this session's own context. actix polls
//! that context only while the socket can take more bytes, so a slow client holds back only its
//! own cursors; their live feed lags and they catch up from the event log (the client gets a
//! `lagged` frame with the last seq it had). Frames queued in one poll leave in one write.
//!
//! The session ends with a close code that says why: 4401 when its credential is refused or
//! later revoked or rotated, 4408 on heartbeat timeout, 1002 on a WebSocket protocol error, 1003
//! on binary data, 1007 on text that is not UTF-8, 1009 on a message over
//! `limits.ws_max_message_bytes`.

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use bytes::BytesMut;
use bytestring::ByteString;
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

use super::{auth::watch_key, AppState, Principal};
use crate::actors::Subscribe;
use crate::channels::{self, ChannelRef};
use crate::cursor::Cursor;
use crate::domain::now_ms;
use crate::revocation::Revoked;

/// Close codes (4000–4999 are the application's): documented in the README.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4408;

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    api_key: Option<String>,
}

/// What the connection may join.
enum Grant {
    /// A single-use token: exactly one execution channel.
    Token {
        project: String,
        channel: String,
    },
    /// An API key: any channel of its project.
    Key {
        project: String,
    },
    Refused(&'static str),
}

pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    query: web::Query<WsQuery>,
) -> actix_web::Result<HttpResponse> {
    // A request that is no WebSocket upgrade is refused before its one-time token is spent.
    ws::handshake(&req)?;
    let header_key = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::to_string);
    // The key behind the grant (the token's issuer, or the key itself) is watched: revoking or
    // rotating it closes the session with 4401.
    let taken = match (&query.token, &state.cluster) {
        (None, _) => Ok(None),
        (Some(token), None) => state.store.take_ws_token(token).map_err(|e| e.to_string()),
        (Some(token), Some(cluster)) => {
            // The shared record decides (single use across nodes); the local copy, if this node
            // issued it, goes too.
            let _ = state.store.take_ws_token(token);
            cluster.take_token(token).await.map_err(|e| e.to_string())
        }
    };
    let (grant, revoked) = match (&query.token, query.api_key.clone().or(header_key)) {
        (Some(_), _) => match taken {
            Ok(Some(t)) if t.expires_at_ms > now_ms() => {
                let revoked = match &t.key_id {
                    Some(key_id) => watch_key(&state, key_id, t.key_hash.as_deref()),
                    None => Revoked::never(),
                };
                if revoked.is_fired() {
                    (
                        Grant::Refused("the key that issued this token was revoked or rotated"),
                        Revoked::never(),
                    )
                } else {
                    let grant = Grant::Token {
                        project: t.project_id,
                        channel: t.channel,
                    };
                    (grant, revoked)
                }
            }
            Ok(Some(_)) => (Grant::Refused("token expired"), Revoked::never()),
            _ => (
                Grant::Refused("invalid or already used token"),
                Revoked::never(),
            ),
        },
        (None, Some(key)) => match Principal::from_secret(&state, &key) {
            Ok(p) => {
                let revoked = p.revocation(&state);
                let grant = Grant::Key {
                    project: p.project_id,
                };
                (grant, revoked)
            }
            Err(_) => (Grant::Refused("invalid api key"), Revoked::never()),
        },
        (None, None) => (Grant::Refused("missing token or api key"), Revoked::never()),
    };
    let max_message = state.settings.limits.ws_max_message_bytes;
    let session = WsSession {
        state: state.into_inner(),
        grant,
        revoked: Some(revoked),
        channels: HashMap::new(),
        last_seen: Instant::now(),
        fragments: None,
        max_message,
    };
    // One frame may not exceed the message limit either (the codec refuses it with Overflow).
    ws::WsResponseBuilder::new(session, &req, body)
        .frame_size(max_message)
        .start()
}

pub struct WsSession {
    state: Arc<AppState>,
    grant: Grant,
    /// Taken by `started`, which waits on it.
    revoked: Option<Revoked>,
    channels: HashMap<String, SpawnHandle>,
    last_seen: Instant,
    /// A fragmented text message being assembled (actix hands over the fragments).
    fragments: Option<BytesMut>,
    max_message: usize,
}

/// A frame for the client, or the end of a channel's stream.
enum ChannelItem {
    Frame(ByteString),
    Lagged { channel: String, last_seq: u64 },
    Ended(String),
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Join {
        channel: String,
        #[serde(default)]
        after: u64,
    },
    Leave {
        channel: String,
    },
    Ping,
}

impl WsSession {
    fn send(&self, ctx: &mut ws::WebsocketContext<Self>, frame: impl Into<ByteString>) {
        self.state.metrics.ws_frames_sent.inc();
        ctx.text(frame);
    }

    fn error(&self, ctx: &mut ws::WebsocketContext<Self>, code: &str, message: &str) {
        let frame = json!({"event": "error", "data": {"code": code, "message": message}});
        self.send(ctx, frame.to_string());
    }

    /// Sends a close frame with `code` and ends the session.
    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: ws::CloseCode, why: &str) {
        ctx.close(Some(ws::CloseReason {
            code,
            description: Some(why.to_string()),
        }));
        ctx.stop();
    }

    /// One piece of a fragmented message: assembled within the size limit, then handled as a
    /// whole text frame.
    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        let (data, last) = match item {
            actix_http::ws::Item::FirstBinary(_) => {
                return self.close(ctx, ws::CloseCode::Unsupported, "frames are JSON text")
            }
            actix_http::ws::Item::FirstText(data) => {
                if self.fragments.is_some() {
                    return self.close(
                        ctx,
                        ws::CloseCode::Protocol,
                        "fragmented message restarted",
                    );
                }
                self.fragments = Some(BytesMut::new());
                (data, false)
            }
            actix_http::ws::Item::Continue(data) => (data, false),
            actix_http::ws::Item::Last(data) => (data, true),
        };
        let Some(buf) = self.fragments.as_mut() else {
            return self.close(
                ctx,
                ws::CloseCode::Protocol,
                "continuation without a first frame",
            );
        };
        if buf.len() + data.len() > self.max_message {
            let why = format!("message larger than {} bytes", self.max_message);
            return self.close(ctx, ws::CloseCode::Size, &why);
        }
        buf.extend_from_slice(&data);
        if last {
            let buf = self.fragments.take().unwrap_or_default();
            match std::str::from_utf8(&buf) {
                Ok(text) => self.on_client_text(text, ctx),
                Err(_) => self.close(ctx, ws::CloseCode::Invalid, "text frame is not UTF-8"),
            }
        }
    }

    /// Maps a frame the codec refused to the close code RFC 6455 gives it.
    fn on_protocol_error(&self, err: ws::ProtocolError, ctx: &mut ws::WebsocketContext<Self>) {
        match err {
            ws::ProtocolError::Overflow => {
                let why = format!("message larger than {} bytes", self.max_message);
                self.close(ctx, ws::CloseCode::Size, &why)
            }
            // actix reports a text frame that is not UTF-8 as an I/O error carrying the UTF-8
            // error's text; any other I/O error is the connection failing (nothing to send on).
            ws::ProtocolError::Io(e) if e.to_string().contains("utf-8") => {
                self.close(ctx, ws::CloseCode::Invalid, "text frame is not UTF-8")
            }
            ws::ProtocolError::Io(_) => ctx.stop(),
            other => self.close(ctx, ws::CloseCode::Protocol, &other.to_string()),
        }
    }

    fn project(&self) -> &str {
        match &self.grant {
            Grant::Token { project, .. } | Grant::Key { project } => project,
            Grant::Refused(_) => "",
        }
    }

    fn on_client_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => return self.error(ctx, "invalid_request", &format!("bad frame: {e}")),
        };
        match frame {
            ClientFrame::Ping => self.send(ctx, r#"{"event":"pong"}"#),
            ClientFrame::Leave { channel } => match self.channels.remove(&channel) {
                Some(handle) => {
                    ctx.cancel_future(handle);
                    self.state.metrics.ws_channels.dec();
                    self.send(
                        ctx,
                        json!({"channel": channel, "event": "left"}).to_string(),
                    );
                }
                None => self.error(ctx, "not_found", &format!("not joined to `{channel}`")),
            },
            ClientFrame::Join { channel, after } => self.join(channel, after, false, ctx),
        }
    }

    /// `looked_up`: the execution was already searched for in the cluster's shared records.
    fn join(
        &mut self,
        channel: String,
        after: u64,
        looked_up: bool,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let not_found = || format!("no channel `{channel}`");
        let target = channels::parse(&channel).filter(|target| match (target, &self.grant) {
            (
                _,
                Grant::Token {
                    channel: allowed, ..
                },
            ) => *allowed == channel,
            (
                ChannelRef::Execution { project, .. } | ChannelRef::Project { project },
                Grant::Key { project: own },
            ) => project == own,
            (_, Grant::Refused(_)) => false,
        });
        let items = match target {
            Some(ChannelRef::Execution { execution_id, .. }) => {
                match self
                    .state
                    .store
                    .get_project_execution(self.project(), &execution_id)
                {
                    Ok(Some(_)) => self
                        .execution_items(channel.clone(), execution_id, after)
                        .boxed_local(),
                    // Submitted on another node a moment ago: not mirrored here yet.
                    Ok(None) if self.state.cluster.is_some() && !looked_up => {
                        let (state, project) = (self.state.clone(), self.project().to_string());
                        let lookup = async move {
                            super::shared::project_execution(&state, &project, &execution_id).await
                        };
                        ctx.spawn(lookup.into_actor(self).map(
                            move |found, act, ctx| match found {
                                Ok(Some(_)) => act.join(channel, after, true, ctx),
                                _ => {
                                    act.error(ctx, "not_found", &format!("no channel `{channel}`"))
                                }
                            },
                        ));
                        return;
                    }
                    _ => return self.error(ctx, "not_found", &not_found()),
                }
            }
            Some(ChannelRef::Project { project }) => {
                self.project_items(channel.clone(), &project).boxed_local()
            }
            None => return self.error(ctx, "not_found", &not_found()),
        };
        if let Some(old) = self.channels.remove(&channel) {
            ctx.cancel_future(old);
        } else {
            self.state.metrics.ws_channels.inc();
        }
        self.send(
            ctx,
            json!({"channel": channel, "event": "joined"}).to_string(),
        );
        let handle = ctx.add_stream(items);
        self.channels.insert(channel, handle);
    }

    /// The execution's log from `after`, then live, as frames, then `Ended`.
    fn execution_items(
        &self,
        channel: String,
        id: String,
        after: u64,
    ) -> impl Stream<Item = ChannelItem> + 'static {
        let registry = self.state.registry.clone();
        let log = self.state.store.event_log();
        let start = async move {
            // Subscribe before the cursor reads the log, so nothing falls between the two.
            let live = registry.send(Subscribe(id.clone())).await.ok().flatten();
            (Cursor::new(log, id, after, live), channel, Vec::new())
        };
        stream::once(start).flat_map(|state| {
            stream::unfold(Some(state), |state| async move {
                let (mut cursor, channel, mut pending) = state?;
                if let Some(item) = pending.pop() {
                    return Some((item, Some((cursor, channel, pending))));
                }
                match cursor.next().await {
                    Some(event) => {
                        let frame = ChannelItem::Frame(event.ws_frame(&channel));
                        let item = match cursor.take_lag() {
                            Some(last_seq) => {
                                pending.push(frame);
                                ChannelItem::Lagged {
                                    channel: channel.clone(),
                                    last_seq,
                                }
                            }
                            None => frame,
                        };
                        Some((item, Some((cursor, channel, pending))))
                    }
                    None => Some((ChannelItem::Ended(channel), None)),
                }
            })
        })
    }

    /// The project's live status notes.
    fn project_items(
        &self,
        channel: String,
        project: &str,
    ) -> impl Stream<Item = ChannelItem> + 'static {
        let rx = self.state.project_feed.subscribe(project);
        stream::unfold((rx, channel), |(mut rx, channel)| async move {
            match rx.recv().await {
                Ok(frame) => Some((ChannelItem::Frame(frame), (rx, channel))),
                Err(RecvError::Lagged(_)) => {
                    let item = ChannelItem::Lagged {
                        channel: channel.clone(),
                        last_seq: 0,
                    };
                    Some((item, (rx, channel)))
                }
                Err(RecvError::Closed) => None,
            }
        })
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.state.metrics.ws_sockets.inc();
        if let Grant::Refused(reason) = self.grant {
            return self.close(ctx, ws::CloseCode::Other(CLOSE_UNAUTHORIZED), reason);
        }
        if let Some(revoked) = self.revoked.take() {
            ctx.spawn(revoked.fired().into_actor(self).map(|(), act, ctx| {
                let why = "the api key was revoked or rotated";
                act.close(ctx, ws::CloseCode::Other(CLOSE_UNAUTHORIZED), why);
            }));
        }
        let limits = &self.state.settings.limits;
        let timeout = Duration::from_millis(limits.ws_client_timeout_ms);
        ctx.run_interval(
            Duration::from_millis(limits.ws_heartbeat_ms),
            move |act, ctx| {
                if act.last_seen.elapsed() > timeout {
                    ctx.close(Some(ws::CloseReason {
                        code: ws::CloseCode::Other(CLOSE_HEARTBEAT_TIMEOUT),
                        description: Some("heartbeat timeout".into()),
                    }));
                    ctx.stop();
                } else {
                    ctx.ping(b"");
                }
            },
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.state.metrics.ws_sockets.dec();
        self.state
            .metrics
            .ws_channels
            .sub(self.channels.len() as i64);
        self.channels.clear();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        match msg {
            Ok(ws::Message::Text(text)) => self.on_client_text(&text, ctx),
            Ok(ws::Message::Ping(bytes)) => ctx.pong(&bytes),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(ws::Message::Binary(_)) => {
                self.close(ctx, ws::CloseCode::Unsupported, "frames are JSON text")
            }
            Ok(ws::Message::Continuation(item)) => self.on_fragment(item, ctx),
            Ok(ws::Message::Pong(_) | ws::Message::Nop) => {}
            Err(err) => self.on_protocol_error(err, ctx),
        }
    }
}

impl StreamHandler<ChannelItem> for WsSession {
    fn handle(&mut self, item: ChannelItem, ctx: &mut Self::Context) {
        match item {
            ChannelItem::Frame(frame) => self.send(ctx, frame),
            ChannelItem::Lagged { channel, last_seq } => {
                self.state.metrics.ws_lagged.inc();
                let frame =
                    json!({"channel": channel, "event": "lagged", "data": {"last_seq": last_seq}});
                self.send(ctx, frame.to_string());
            }
            ChannelItem::Ended(channel) => {
                if self.channels.remove(&channel).is_some() {
                    self.state.metrics.ws_channels.dec();
                }
            }
        }
    }

    /// A channel's stream ending must not end the connection.
    fn finished(&mut self, _: &mut Self::Context) {}
}
