//! The event log on JetStream: one message per batch the owner made durable (its group
//! commit's unit), on the execution's own subject. Every append names the stream sequence of
//! the subject's last message (`Nats-Expected-Last-Subject-Sequence`): JetStream refuses it
//! if anything else was appended since, so a node that lost its lease can never append after
//! the one that took over, and `seq` stays 1, 2, 3 … with no gap and no repeat.
//!
//! Batch encoding: per event, its seq (u64 BE), the stored form's length (u32 BE), the stored
//! form (`Event::encode`): the bytes sled holds, copied once into the message.

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;

use super::{Cluster, NODE_HEADER};
use crate::domain::{Event, SharedEvent};

/// Where an execution's shared log ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogPosition {
    /// The last event's seq (0: empty).
    pub seq: u64,
    /// The stream sequence of the subject's last message (0: none), the next append's fence.
    pub stream_seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Someone else appended: this node no longer drives the execution.
    #[error("another node appended to the log")]
    Fenced,
    #[error("the shared log is unavailable: {0}")]
    Unavailable(String),
}

impl Cluster {
    /// Appends `events` (consecutive seqs) after the message at `after` (a stream sequence);
    /// answers the new message's stream sequence once JetStream has stored it.
    pub async fn append(
        &self,
        id: &str,
        events: &[SharedEvent],
        after: u64,
    ) -> Result<u64, AppendError> {
        let Some(last) = events.last() else {
            return Ok(after);
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            after.to_string().as_str(),
        );
        headers.insert(NODE_HEADER, self.node.as_str());
        let unavailable = |e: &dyn std::fmt::Display| AppendError::Unavailable(e.to_string());
        let ack = self
            .js
            .publish_with_headers(Self::subject(id), headers, encode_batch(events))
            .await
            .map_err(|e| unavailable(&e))?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                // An append whose acknowledgement was lost and that was retried is refused
                // too: if the log ends with exactly this batch from this node, it is ours.
                match self.position_and_node(id).await {
                    Ok((pos, node)) if pos.seq == last.seq && node == self.node => {
                        Ok(pos.stream_seq)
                    }
                    Ok(_) => Err(AppendError::Fenced),
                    Err(e) => Err(unavailable(&e)),
                }
            }
            Err(err) => Err(unavailable(&err)),
        }
    }

    /// Where the execution's shared log ends now.
    pub async fn position(&self, id: &str) -> anyhow::Result<LogPosition> {
        Ok(self.position_and_node(id).await?.0)
    }

    async fn position_and_node(&self, id: &str) -> anyhow::Result<(LogPosition, String)> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self
            .events
            .get_last_raw_message_by_subject(&Self::subject(id))
            .await
        {
            Ok(message) => {
                let node = message
                    .headers
                    .get(NODE_HEADER)
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default();
                let seq = decode_batch(&message.payload).last().map_or(0, |e| e.seq);
                Ok((
                    LogPosition {
                        seq,
                        stream_seq: message.sequence,
                    },
                    node,
                ))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                Ok((LogPosition::default(), String::new()))
            }
            Err(e) => Err(anyhow::anyhow!("reading the shared log of {id}: {e}")),
        }
    }

    /// Every event of the execution's shared log up to `until` (a position read before).
    pub async fn read_log(&self, id: &str, until: LogPosition) -> anyhow::Result<Vec<Event>> {
        let mut out = Vec::new();
        if until.stream_seq == 0 {
            return Ok(out);
        }
        let mut messages = super::follow(&self.events, Self::subject(id), 0).await?;
        while let Some(message) = messages.next().await {
            let message = message?;
            let stream_seq = super::stream_seq(&message)?;
            out.extend(decode_batch(&message.payload));
            if stream_seq >= until.stream_seq {
                break;
            }
        }
        Ok(out)
    }
}

pub fn encode_batch(events: &[SharedEvent]) -> Bytes {
    let size = events.iter().map(|e| 12 + e.encode().len()).sum();
    let mut out = BytesMut::with_capacity(size);
    for event in events {
        let stored = event.encode();
        out.put_u64(event.seq);
        out.put_u32(stored.len() as u32);
        out.put_slice(stored);
    }
    out.freeze()
}

/// The events of one message; a malformed message (not ours) yields what parsed before it.
pub fn decode_batch(mut bytes: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    while bytes.len() >= 12 {
        let seq = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        let Some(stored) = bytes.get(12..12 + len) else {
            break;
        };
        match Event::decode(seq, stored) {
            Some(event) => out.push(event),
            None => break,
        }
        bytes = &bytes[12 + len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;
    use std::sync::Arc;

    #[test]
    fn a_batch_decodes_to_the_events_it_was_made_of() {
        let events: Vec<SharedEvent> = vec![
            Arc::new(Event::status(1, Status::Pending)),
            Arc::new(Event::status(2, Status::Processing)),
        ];
        let decoded = decode_batch(&encode_batch(&events));
        assert_eq!(decoded.len(), 2);
        for (a, b) in decoded.iter().zip(&events) {
            assert_eq!((a.seq, a.kind, &a.data), (b.seq, b.kind, &b.data));
        }
        // Truncated: what parsed before the cut.
        let bytes = encode_batch(&events);
        assert_eq!(decode_batch(&bytes[..bytes.len() - 1]).len(), 1);
        assert!(decode_batch(b"garbage").is_empty());
    }
}
