//! Channel names and the project feed.
//!
//! `ai_response:{project}:{channel_id}` carries one execution's event log; the channel id is
//! derived from the execution id (`exec_X` ↔ `ch_X`), so resolving a channel needs no index.
//! `project:{project}` carries every status change of the project's executions, live only
//! (history is `GET /v1/executions`).

use bytestring::ByteString;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::broadcast;

use crate::domain::{now_ms, rfc3339, Status};

pub fn channel_id_for(execution_id: &str) -> String {
    format!(
        "ch_{}",
        execution_id.strip_prefix("exec_").unwrap_or(execution_id)
    )
}

pub fn execution_channel(project: &str, execution_id: &str) -> String {
    format!("ai_response:{project}:{}", channel_id_for(execution_id))
}

pub fn project_channel(project: &str) -> String {
    format!("project:{project}")
}

/// What a channel name refers to.
#[derive(Debug, PartialEq, Eq)]
pub enum ChannelRef {
    Execution {
        project: String,
        execution_id: String,
    },
    Project {
        project: String,
    },
}

pub fn parse(channel: &str) -> Option<ChannelRef> {
    if let Some(rest) = channel.strip_prefix("ai_response:") {
        let (project, ch) = rest.split_once(':')?;
        let suffix = ch.strip_prefix("ch_")?;
        if project.is_empty() || suffix.is_empty() {
            return None;
        }
        return Some(ChannelRef::Execution {
            project: project.to_string(),
            execution_id: format!("exec_{suffix}"),
        });
    }
    let project = channel.strip_prefix("project:")?;
    (!project.is_empty()).then(|| ChannelRef::Project {
        project: project.to_string(),
    })
}

/// Live fan-out of status changes per project.
#[derive(Default)]
pub struct ProjectFeed {
    senders: Mutex<HashMap<String, broadcast::Sender<ByteString>>>,
}

/// Status notes a dashboard may fall behind by before it is told it lagged.
const FEED_BUFFER: usize = 256;

impl ProjectFeed {
    pub fn subscribe(&self, project: &str) -> broadcast::Receiver<ByteString> {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        senders
            .entry(project.to_string())
            .or_insert_with(|| broadcast::channel(FEED_BUFFER).0)
            .subscribe()
    }

    /// Publishes a status change; the frame is built only if someone listens.
    pub fn publish(&self, project: &str, execution_id: &str, model: &str, status: Status) {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sender) = senders.get(project) else {
            return;
        };
        if sender.receiver_count() == 0 {
            senders.remove(project);
            return;
        }
        let frame = serde_json::json!({
            "channel": project_channel(project),
            "event": "status",
            "data": {"execution_id": execution_id, "model": model, "status": status, "at": rfc3339(now_ms())},
        });
        let _ = sender.send(frame.to_string().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_channels_round_trip() {
        let name = execution_channel("acme", "exec_abc123");
        assert_eq!(name, "ai_response:acme:ch_abc123");
        assert_eq!(
            parse(&name),
            Some(ChannelRef::Execution {
                project: "acme".into(),
                execution_id: "exec_abc123".into()
            })
        );
        assert_eq!(
            parse("project:acme"),
            Some(ChannelRef::Project {
                project: "acme".into()
            })
        );
        for bad in [
            "",
            "ai_response:acme",
            "ai_response::ch_x",
            "ai_response:a:x",
            "project:",
            "other:x",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_feed_reaches_subscribers_of_the_project_only() {
        let feed = ProjectFeed::default();
        let mut acme = feed.subscribe("acme");
        let mut other = feed.subscribe("globex");
        feed.publish("acme", "exec_1", "m", Status::Processing);
        let frame: serde_json::Value = serde_json::from_str(&acme.try_recv().unwrap()).unwrap();
        assert_eq!(frame["data"]["status"], "processing");
        assert!(other.try_recv().is_err());
    }
}
