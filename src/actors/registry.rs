//! The registry: execution id → its live actor and event fan-out. It starts recovered and
//! taken-over executions, registers the fresh ones the [`Launcher`] starts where they were
//! accepted, hands out live subscriptions, forwards cancels, and forgets an execution when it
//! stops.

use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

use super::execution::{Cancel, Execution, ExecutionDeps};
use super::live::{LiveFeed, Subscription};
use crate::cluster::takeover::Replica;
use crate::domain::{ChatRequest, ExecutionRecord, Status};
use crate::error::{ApiError, ErrorCode};

struct Live {
    addr: Addr<Execution>,
    feed: LiveFeed,
}

pub struct Registry {
    deps: Arc<ExecutionDeps>,
    live: HashMap<String, Live>,
}

impl Registry {
    /// Starts the registry on the current arbiter, with the launcher that starts fresh
    /// executions on whichever thread accepts them.
    pub fn start(deps: Arc<ExecutionDeps>) -> (Addr<Registry>, Launcher) {
        let registry = Registry {
            deps: deps.clone(),
            live: HashMap::new(),
        }
        .start();
        let launcher = Launcher {
            registry: registry.clone(),
            deps,
        };
        (registry, launcher)
    }

    fn insert(&mut self, id: String, live: Live) {
        self.live.insert(id, live);
        self.deps
            .metrics
            .active_executions
            .set(self.live.len() as i64);
    }
}

/// Starts fresh executions on the calling thread: the HTTP worker that accepted one then also
/// runs its actor, its provider stream and the submitter's reader, instead of every request
/// crossing to the registry's thread and back (issue 16: the hand-offs were the largest part
/// of what Switchyard added at concurrency 1, and one thread ran every execution).
#[derive(Clone)]
pub struct Launcher {
    registry: Addr<Registry>,
    deps: Arc<ExecutionDeps>,
}

impl Launcher {
    /// Starts a just-created execution here and returns a subscription to its feed. Only for
    /// a fresh id, which nothing else can be running: recovery and takeovers, which can race,
    /// go through the registry ([`StartExecution`]), which checks.
    pub fn start_new(&self, start: StartExecution) -> Subscription {
        let id = start.record.id.clone();
        let live = launch(&self.deps, start, self.registry.clone());
        let subscription = live.feed.subscribe();
        // Sent before the actor first runs, so it reaches the registry before the actor's
        // `Deregister`; and before the submit is answered, so before any reader's `Subscribe`.
        self.registry.do_send(Register(id, live));
        subscription
    }
}

/// Creates the execution's feed and starts its actor on the current arbiter.
fn launch(deps: &Arc<ExecutionDeps>, msg: StartExecution, registry: Addr<Registry>) -> Live {
    // A new execution's first event may not be durable yet (see `accept`): readers wait for
    // its publication. A recovered one's log is durable as far as it goes.
    let durable = match msg.record.status {
        Status::Pending => 0,
        _ => deps.store.last_seq(&msg.record.id).unwrap_or(0),
    };
    let feed = LiveFeed::new(durable);
    let execution = Execution::new(
        msg.record,
        msg.request,
        deps.clone(),
        feed.clone(),
        registry,
    );
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

#[derive(Message)]
#[rtype(result = "usize")]
pub struct LiveExecutions;

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Deregister(pub String);

/// An execution the [`Launcher`] started on another thread.
#[derive(Message)]
#[rtype(result = "()")]
struct Register(String, Live);

impl Handler<StartExecution> for Registry {
    type Result = ();

    fn handle(&mut self, msg: StartExecution, ctx: &mut Context<Self>) {
        let id = msg.record.id.clone();
        if self.live.contains_key(&id) {
            return;
        }
        let live = launch(&self.deps, msg, ctx.address());
        self.insert(id, live);
    }
}

impl Handler<Register> for Registry {
    type Result = ();

    fn handle(&mut self, Register(id, live): Register, _: &mut Context<Self>) {
        self.insert(id, live);
    }
}

impl Handler<Subscribe> for Registry {
    type Result = Option<Subscription>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        if let Some(live) = self.live.get(&msg.0) {
            return Some(live.feed.subscribe());
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
        let addr = self.live.get(&msg.0).map(|l| l.addr.clone());
        Box::pin(async move {
            let finished = || ApiError::new(ErrorCode::Conflict, "execution already finished");
            match addr {
                Some(addr) => addr.send(Cancel).await.map_err(|_| finished())?,
                None => Err(finished()),
            }
        })
    }
}

impl Handler<LiveExecutions> for Registry {
    type Result = usize;

    fn handle(&mut self, _: LiveExecutions, _: &mut Context<Self>) -> usize {
        self.live.len()
    }
}

impl Handler<Deregister> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Deregister, _: &mut Context<Self>) {
        // Dropping the last sender ends every live subscription; readers finish from the log.
        self.live.remove(&msg.0);
        self.deps
            .metrics
            .active_executions
            .set(self.live.len() as i64);
    }
}
