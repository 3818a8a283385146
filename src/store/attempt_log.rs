//! The per-attempt debug record behind `GET /v1/executions/{id}/log`: what was sent upstream
//! (secrets redacted), what came back, each raw chunk with its arrival time, and errors.
//! Keys: `execution id ‖ 0 ‖ attempt (u32 BE) ‖ entry (u32 BE)`, so one execution's record is
//! contiguous and ordered. Entries ride on the same group commit as events.

use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::Store;
use crate::domain::now_ms;

/// One thing that happened during an attempt.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEntry<'a> {
    Request {
        url: &'a str,
        headers: Vec<(String, String)>,
        body: &'a Value,
    },
    Response {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// The provider event's raw payload, as received.
    Chunk {
        data: &'a str,
    },
    /// An event that could not be understood and was skipped.
    Skipped {
        data: &'a str,
        reason: &'a str,
    },
    Error {
        code: &'a str,
        message: &'a str,
    },
}

/// Writes one attempt's entries; cheap to clone into the task that drives the attempt.
#[derive(Clone)]
pub struct AttemptLog {
    inner: Arc<Inner>,
}

struct Inner {
    store: Option<Store>,
    execution_id: String,
    attempt: u32,
    started: Instant,
    next: AtomicU32,
}

#[derive(Serialize)]
struct Stamped<'a> {
    at_ms: u64,
    elapsed_ms: f64,
    #[serde(flatten)]
    entry: LogEntry<'a>,
}

/// Header names whose values never reach the log.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
];

/// Header pairs with secret values replaced.
pub fn redacted_headers<'h>(
    headers: impl Iterator<Item = (&'h str, &'h [u8])>,
) -> Vec<(String, String)> {
    headers
        .map(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            let value = if SECRET_HEADERS.contains(&lower.as_str()) {
                "[redacted]".to_string()
            } else {
                String::from_utf8_lossy(value).into_owned()
            };
            (lower, value)
        })
        .collect()
}

impl AttemptLog {
    pub fn new(store: Store, execution_id: &str, attempt: u32) -> AttemptLog {
        AttemptLog {
            inner: Arc::new(Inner {
                store: Some(store),
                execution_id: execution_id.to_string(),
                attempt,
                started: Instant::now(),
                next: AtomicU32::new(0),
            }),
        }
    }

    /// A log that records nothing (benchmarks and unit tests of providers).
    pub fn disabled() -> AttemptLog {
        AttemptLog {
            inner: Arc::new(Inner {
                store: None,
                execution_id: String::new(),
                attempt: 0,
                started: Instant::now(),
                next: AtomicU32::new(0),
            }),
        }
    }

    pub fn record(&self, entry: LogEntry<'_>) {
        let Some(store) = &self.inner.store else {
            return;
        };
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let stamped = Stamped {
            at_ms: now_ms(),
            elapsed_ms: (self.inner.started.elapsed().as_micros() as f64) / 1000.0,
            entry,
        };
        let value = serde_json::to_vec(&stamped).expect("log entries serialize");
        let key = Store::attempt_log_key(&self.inner.execution_id, self.inner.attempt, n);
        if let Err(err) = store.attempt_log.insert(key, value) {
            tracing::warn!(execution_id = %self.inner.execution_id, error = %err, "debug log write failed");
        }
    }
}

impl Store {
    fn attempt_log_key(id: &str, attempt: u32, entry: u32) -> Vec<u8> {
        let mut rest = attempt.to_be_bytes().to_vec();
        rest.extend_from_slice(&entry.to_be_bytes());
        super::joined(id, &rest)
    }

    /// Every entry of the execution's debug record as (attempt index, entry JSON), in order.
    pub fn attempt_log(&self, id: &str) -> sled::Result<Vec<(u32, Value)>> {
        let prefix = super::joined(id, &[]);
        let mut out = Vec::new();
        for item in self.attempt_log.scan_prefix(&prefix) {
            let (key, value) = item?;
            let rest = &key[prefix.len()..];
            if rest.len() != 8 {
                continue;
            }
            let attempt = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
            if let Ok(v) = serde_json::from_slice(&value) {
                out.push((attempt, v));
            }
        }
        Ok(out)
    }
}
