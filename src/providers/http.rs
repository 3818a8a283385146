//! The providers' HTTP clients: one per thread that calls providers.
//!
//! A pooled connection is driven by a task on the runtime that opened it. Executions run on
//! every HTTP worker (each an actix thread with a runtime of its own), so with one shared pool
//! an execution on one worker would often reuse a connection opened on another: every chunk
//! read there would then cross threads to reach the execution, a wake-up per chunk (measured:
//! +18 % CPU per request at concurrency 32, and 41 upstream sockets for 32 requests). Each
//! thread's own client keeps a stream's connection, its reads and its execution on one thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

#[derive(Clone)]
pub struct Http {
    inner: Arc<Inner>,
}

struct Inner {
    connect_timeout: Duration,
    clients: Mutex<HashMap<ThreadId, reqwest::Client>>,
}

impl Http {
    pub fn new(connect_timeout: Duration) -> anyhow::Result<Http> {
        let http = Http {
            inner: Arc::new(Inner {
                connect_timeout,
                clients: Mutex::default(),
            }),
        };
        // A setting reqwest refuses is reported at start, not on the first request.
        http.build()?;
        Ok(http)
    }

    /// The calling thread's client (built on its first call; a cheap handle to its pool).
    pub fn client(&self) -> reqwest::Client {
        let thread = std::thread::current().id();
        let mut clients = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(thread)
            .or_insert_with(|| self.build().expect("checked in Http::new"))
            .clone()
    }

    fn build(&self) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            // Without it a kept-alive request can wait ~40 ms on a delayed ACK.
            .tcp_nodelay(true)
            .connect_timeout(self.inner.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
    }
}
