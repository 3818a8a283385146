//! The registry: execution id → its live actor and event fan-out. It starts recovered and
//! taken-over executions, hands out live subscriptions and forwards cancels. The table itself
//! ([`LiveTable`]) is shared: the [`Launcher`] enters the fresh executions it starts where they
//! were accepted, and an execution takes itself out when it stops, both without a message to
//! the registry's thread.

use actix::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::execution::{Cancel, Execution, ExecutionDeps};
use super::live::{LiveFeed, Subscription};
use crate::cluster::takeover::Replica;
use crate::domain::{ChatRequest, ExecutionRecord, Status};
use crate::error::{ApiError, ErrorCode};

struct Live {
    addr: Addr<Execution>,
    feed: LiveFeed,
}

/// The running executions, shared by the threads that start and stop them. Entering and
/// leaving it were two messages to the registry's thread per execution (two thread wake-ups
/// of a request's cost at concurrency 1, issue 16); a lock held for a map operation is less.
#[derive(Clone)]
pub struct LiveTable {
    live: Arc<Mutex<HashMap<String, Live>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl LiveTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters `id` unless it runs already; `launch` starts it (under the lock, so two racing
    /// starts of one id cannot both run).
    fn enter(&self, id: String, launch: impl FnOnce() -> Live) -> Option<LiveFeed> {
        let mut live = self.lock();
        if live.contains_key(&id) {
            return None;
        }
        let entry = launch();
        let feed = entry.feed.clone();
        live.insert(id, entry);
        self.metrics.active_executions.set(live.len() as i64);
        Some(feed)
    }

    /// Called by the execution as it stops. Dropping the table's feed (the execution drops the
    /// other) ends every live subscription; readers finish from the log.
    pub(super) fn leave(&self, id: &str) {
        let gone = {
            let mut live = self.lock();
            let gone = live.remove(id);
            self.metrics.active_executions.set(live.len() as i64);
            gone
        };
        // Outside the lock: ending the subscriptions wakes their readers.
        drop(gone);
    }

    fn get(&self, id: &str) -> Option<(Addr<Execution>, LiveFeed)> {
        self.lock()
            .get(id)
            .map(|l| (l.addr.clone(), l.feed.clone()))
    }
}

pub struct Registry {
    deps: Arc<ExecutionDeps>,
    table: LiveTable,
}

impl Registry {
    /// Starts the registry on the current arbiter, with the launcher that starts fresh
    /// executions on whichever thread accepts them.
    pub fn start(deps: Arc<ExecutionDeps>) -> (Addr<Registry>, Launcher) {
        let table = LiveTable {
            live: Arc::default(),
            metrics: deps.metrics.clone(),
        };
        let registry = Registry {
            deps: deps.clone(),
            table: table.clone(),
        }
        .start();
        (registry, Launcher { table, deps })
    }
}

/// Starts fresh executions on the calling thread: the HTTP worker that accepted one then also
/// runs its actor, its provider stream and the submitter's reader, instead of every request
/// crossing to the registry's thread and back (issue 16: the hand-offs were the largest part
/// of what Switchyard added at concurrency 1, and one thread ran every execution).
#[derive(Clone)]
pub struct Launcher {
    table: LiveTable,
    deps: Arc<ExecutionDeps>,
}

impl Launcher {
    /// The table executions leave as they stop (for starting one by hand, as a bench does).
    pub fn table(&self) -> LiveTable {
        self.table.clone()
    }

    /// Starts a just-created execution here and returns a subscription to its feed. Only for
    /// a fresh id: its entry is in the table before the submit is answered, so before any
    /// reader's `Subscribe`.
    pub fn start_new(&self, start: StartExecution) -> Subscription {
        let id = start.record.id.clone();
        let entered = self
            .table
            .enter(id.clone(), || launch(&self.deps, start, self.table.clone()));
        // A fresh id cannot be running already; were it, its reader follows the one that runs
        // (or, had that one just stopped, gets a closed feed and reads the finished log).
        let feed = entered.or_else(|| self.table.get(&id).map(|(_, feed)| feed));
        feed.map_or_else(|| LiveFeed::new(0).subscribe(), |feed| feed.subscribe())
    }
}

/// Creates the execution's feed and starts its actor on the current arbiter.
fn launch(deps: &Arc<ExecutionDeps>, msg: StartExecution, table: LiveTable) -> Live {
    // A new execution's first event may not be durable yet (see `accept`): readers wait for
    // its publication. A recovered one's log is durable as far as it goes.
    let durable = match msg.record.status {
        Status::Pending => 0,
        _ => deps.store.last_seq(&msg.record.id).unwrap_or(0),
    };
    let feed = LiveFeed::new(durable);
    let execution = Execution::new(msg.record, msg.request, deps.clone(), feed.clone(), table);
    let addr = execution
        .holding(msg.permit)
        .replicating(msg.replica)
        .start();
    Live { addr, feed }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

/// Runs an accepted (pending) or recovered (processing) execution, with its request and its
/// place among its key's executions in flight (given back when it reaches a terminal status).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartExecution {
    record: ExecutionRecord,
    request: Arc<ChatRequest>,
    permit: Option<crate::limits::Permit>,
    /// In a cluster: the lease and where the shared log ends.
    replica: Option<Replica>,
}

impl StartExecution {
    pub fn new(record: ExecutionRecord, request: Arc<ChatRequest>) -> StartExecution {
        StartExecution {
            record,
            request,
            permit: None,
            replica: None,
        }
    }

    pub fn holding(mut self, permit: Option<crate::limits::Permit>) -> StartExecution {
        self.permit = permit;
        self
    }

    pub fn replicated(mut self, replica: Replica) -> StartExecution {
        self.replica = Some(replica);
        self
    }
}

/// A live subscription, or `None` when the execution is not running (its log is complete). In
/// a cluster, an unfinished execution another node drives is followed through the mirror.
#[derive(Message)]
#[rtype(result = "Option<Subscription>")]
pub struct Subscribe(pub String);

/// Cancels a running execution; answers the final record once its `done` event is durable.
#[derive(Message)]
#[rtype(result = "Result<ExecutionRecord, ApiError>")]
pub struct CancelExecution(pub String);

impl Handler<StartExecution> for Registry {
    type Result = ();

    /// Recovered and taken-over executions, which can race: the table refuses a second start.
    fn handle(&mut self, msg: StartExecution, _: &mut Context<Self>) {
        let id = msg.record.id.clone();
        let (deps, table) = (&self.deps, &self.table);
        table.enter(id, || launch(deps, msg, table.clone()));
    }
}

impl Handler<Subscribe> for Registry {
    type Result = Option<Subscription>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        if let Some((_, feed)) = self.table.get(&msg.0) {
            return Some(feed.subscribe());
        }
        let cluster = self.deps.cluster.as_ref()?;
        let store = &self.deps.store;
        let finished = store.is_finished_log(&msg.0).unwrap_or(true);
        (!finished).then(|| cluster.feeds.follow(store, &msg.0))
    }
}

impl Handler<CancelExecution> for Registry {
    type Result = ResponseFuture<Result<ExecutionRecord, ApiError>>;

    fn handle(&mut self, msg: CancelExecution, _: &mut Context<Self>) -> Self::Result {
        let addr = self.table.get(&msg.0).map(|(addr, _)| addr);
        Box::pin(async move {
            let finished = || ApiError::new(ErrorCode::Conflict, "execution already finished");
            match addr {
                Some(addr) => addr.send(Cancel).await.map_err(|_| finished())?,
                None => Err(finished()),
            }
        })
    }
}
