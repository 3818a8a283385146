//! A response's events over SSE: the log from seq 1 through the [`Translation`], the protocol
//! events numbered above `starting_after` (all without it) sent, then live until the response
//! ends.

use bytes::Bytes;
use futures_util::stream::{self, Stream};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use super::events::Translation;
use crate::cursor::Cursor;

const KEEPALIVE: Bytes = Bytes::from_static(b": keep-alive\n\n");

struct Follow {
    cursor: Cursor,
    translation: Translation,
    after: Option<u64>,
    ready: VecDeque<Bytes>,
    ended: bool,
}

/// The SSE body: protocol events numbered above `after`, then the end after the terminal one.
pub fn body(
    cursor: Cursor,
    translation: Translation,
    after: Option<u64>,
    keepalive: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let follow = Follow {
        cursor,
        translation,
        after,
        ready: VecDeque::new(),
        ended: false,
    };
    stream::unfold(follow, move |mut f| async move {
        loop {
            if let Some(frame) = f.ready.pop_front() {
                return Some((Ok(frame), f));
            }
            if f.ended || f.translation.finished() {
                return None;
            }
            match tokio::time::timeout(keepalive, f.cursor.next()).await {
                Err(_) => return Some((Ok(KEEPALIVE), f)),
                Ok(Some(event)) => {
                    let after = f.after;
                    let frames = f.translation.apply(&event);
                    f.ready.extend(
                        frames
                            .iter()
                            .filter(|p| after.is_none_or(|a| p.seq > a))
                            .map(|p| p.sse()),
                    );
                }
                Ok(None) => {
                    // The log ended without a result (a store failure suspended the execution):
                    // say so rather than end as if complete. Not part of the numbered log.
                    f.ended = true;
                    let seq = f.translation.count();
                    let data = serde_json::json!({"type": "error", "code": "server_error",
                        "message": "the response's event log ended without a result; retry later with starting_after",
                        "param": null, "sequence_number": seq});
                    return Some((
                        Ok(Bytes::from(format!("event: error\ndata: {data}\n\n"))),
                        f,
                    ));
                }
            }
        }
    })
}
