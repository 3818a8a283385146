//! The registry: execution id → its live actor and event fan-out. It starts executions,
//! hands out live subscriptions, forwards cancels, and forgets an execution when it stops.

use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

use super::execution::{Cancel, Execution, ExecutionDeps};
use super::live::{LiveFeed, Subscription};
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
    pub fn new(deps: Arc<ExecutionDeps>) -> Registry {
        Registry {
            deps,
            live: HashMap::new(),
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

/// Runs an accepted (pending) or recovered (processing) execution, with its request and its
/// place among its key's executions in flight (given back when it reaches a terminal status).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartExecution(
    pub ExecutionRecord,
    pub Arc<ChatRequest>,
    pub Option<crate::limits::Permit>,
);

/// A live subscription, or `None` when the execution is not running (its log is complete).
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

impl Handler<StartExecution> for Registry {
    type Result = ();

    fn handle(&mut self, msg: StartExecution, ctx: &mut Context<Self>) {
        let id = msg.0.id.clone();
        if self.live.contains_key(&id) {
            return;
        }
        // A new execution's first event may not be durable yet (see `accept`): readers wait
        // for its publication. A recovered one's log is durable as far as it goes.
        let durable = match msg.0.status {
            Status::Pending => 0,
            _ => self.deps.store.last_seq(&id).unwrap_or(0),
        };
        let feed = LiveFeed::new(durable);
        let addr = Execution::new(msg.0, msg.1, self.deps.clone(), feed.clone(), ctx.address())
            .holding(msg.2)
            .start();
        self.live.insert(id, Live { addr, feed });
        self.deps
            .metrics
            .active_executions
            .set(self.live.len() as i64);
    }
}

impl Handler<Subscribe> for Registry {
    type Result = Option<Subscription>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        self.live.get(&msg.0).map(|l| l.feed.subscribe())
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
