//! One actor per execution: it drives provider attempts (with retries and failover), assigns
//! seq numbers, appends every event to the log, and publishes each event to live subscribers
//! once the log holds it durably. It stops when the execution is terminal.

use actix::prelude::*;
use futures_util::stream;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use super::live::LiveFeed;
use super::registry::LiveTable;
use crate::cluster::takeover::Replica;
use crate::cluster::{AppendError, LogPosition};
use crate::domain::{
    now_ms, Attempt, AttemptOutcome, ChatRequest, Event, EventKind, ExecutionRecord, Message, Role,
    SharedEvent, Status, ThinkingAssembly, ToolCall, ToolCallAssembly, Usage, Validation,
};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::ledger::pricing;
use crate::providers::{
    spawn_attempt, AttemptEvent, AttemptHandle, ProviderError, StreamItem, UpstreamRequest,
};
use crate::routing::{
    self, continuation_messages, Decision, Diverged, FailureContext, HealthBoard, Join, Outcome,
    Reconciler, Route,
};
use crate::settings::{ContinuationStrategy, Settings};
use crate::store::{AttemptLog, LogEntry, Store};
use crate::structured::{repair_instruction, OutputSpec};
use crate::workflows::{StepPlan, StepResult};

/// What every execution needs from the process.
pub struct ExecutionDeps {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub providers: Arc<crate::providers::Providers>,
    pub health: Arc<HealthBoard>,
    /// Upstream quotas: a route without headroom is not tried before its reset.
    pub quota: Arc<routing::QuotaBoard>,
    pub project_feed: Arc<crate::channels::ProjectFeed>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Wakes webhook delivery once a terminal state is durable.
    pub webhook_wake: Arc<tokio::sync::Notify>,
    pub ledger: Arc<crate::ledger::Ledger>,
    /// In cluster mode: the shared log, records and leases.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Mid-stream switches allowed per execution before it fails.
const MAX_SWITCHES: u32 = 3;

/// The try in flight.
struct Running {
    id: u64,
    /// Index of the route this try runs on.
    route: usize,
    handle: AttemptHandle,
    stream: SpawnHandle,
    strategy: Option<ContinuationStrategy>,
    started: Instant,
    /// When the last text chunk arrived (for the inter-chunk gap histogram).
    last_chunk: Option<Instant>,
    chunks: u64,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    stop_sequence: Option<String>,
    /// Tool calls are held until the provider finishes them and emitted whole: a stream that
    /// breaks halfway through a call leaves nothing half-said for a failover to undo.
    tool_calls: ToolCallAssembly,
    /// This try's debug log, for what the actor itself decides about it (reconciliation).
    log: AttemptLog,
    /// What the try was sent and has produced, for its cost when the provider reports no
    /// usage (a cut stream): prompt tokens by the admission measure, text bytes received.
    input_tokens: u64,
    text_bytes: usize,
    /// What the try was counted for against the route's upstream quota.
    charge: routing::quota::Charge,
}

/// A `failover` to a continuation, held until the continuation's head is reconciled so that
/// the event can say how the answer joined (and what, if anything, was trimmed).
struct PendingFailover {
    from: String,
    to: String,
    model: String,
    reason: ErrorCode,
    message: String,
    /// The answer starts over: every chunk since the last restart (or step start) is void.
    restart: bool,
    /// The block the failed try left half made and the next one makes anew: `thinking` or
    /// `tool_use` (a continuation never resumes inside one).
    restarted: Option<&'static str>,
}

pub struct Execution {
    deps: Arc<ExecutionDeps>,
    record: ExecutionRecord,
    /// What was submitted; stored apart from the record (see `ExecutionRecord`) and shared
    /// with each attempt's debug log, which refers to it instead of copying it.
    request: Arc<ChatRequest>,
    /// The request of the answer being produced: the submitted one, or the running step's.
    current: Arc<ChatRequest>,
    /// What the current answer must be (a JSON format or schema), compiled once per answer.
    spec: Option<OutputSpec>,
    /// A repair attempt's turns: the current request, the invalid answer, what was wrong.
    repair: Option<Vec<Message>>,
    repairs_on_route: u32,
    routes: Vec<Route>,
    live: LiveFeed,
    /// The running executions: this one leaves it as it stops.
    table: LiveTable,
    next_seq: u64,
    /// Everything emitted as chunks so far: the base of any continuation.
    emitted: String,
    /// The answer's thinking blocks as emitted so far (extended thinking).
    thinking: ThinkingAssembly,
    /// Appended in the current turn, before its ticket is taken.
    this_turn: Turn,
    /// Appended but not yet durable, with the group-commit ticket that covers each.
    unpublished: VecDeque<(u64, SharedEvent)>,
    awaiting_commit: bool,
    running: Option<Running>,
    attempt_seq: u64,
    retry_timer: Option<SpawnHandle>,
    route_index: usize,
    tries_on_route: u32,
    switches: u32,
    reconciler: Option<Reconciler>,
    pending_failover: Option<PendingFailover>,
    /// Terminal: waiting for the last events to become durable before stopping.
    finishing: bool,
    /// A write failed: the actor stopped without a terminal state; the execution resumes from
    /// its durable log when the store is reopened.
    suspended: bool,
    done_waiters: Vec<oneshot::Sender<ExecutionRecord>>,
    /// The status of the record as the store holds it (the actor is its only writer).
    stored_status: Status,
    /// False from a new execution's first attempt going out until the record says
    /// `processing` and that event is appended (see [`Execution::record_start`]).
    start_recorded: bool,
    /// The execution's place among its key's executions in flight: dropped as the terminal
    /// status is written, so a client that sees it may submit again at once.
    permit: Option<crate::limits::Permit>,
    /// In a cluster: the lease this node drives the execution under, and where the shared log
    /// ends.
    replica: Option<Replica>,
}

/// How long a batch waits before it is offered to an unreachable shared log again.
const SHARE_RETRY: Duration = Duration::from_millis(200);

/// The events one turn of the actor appended, which share one group-commit ticket.
#[derive(Default)]
struct Turn {
    events: Vec<SharedEvent>,
    /// Whether one of them asks for a flush now (otherwise the ticket is deferred).
    urgent: bool,
}

/// Cancels the execution; resolves with the final record once durable.
#[derive(Message)]
#[rtype(result = "Result<ExecutionRecord, ApiError>")]
pub struct Cancel;

impl Execution {
    pub fn new(
        record: ExecutionRecord,
        request: Arc<ChatRequest>,
        deps: Arc<ExecutionDeps>,
        live: LiveFeed,
        table: LiveTable,
    ) -> Execution {
        let routes = Execution::routes_for(&deps, &record, &record.model, &request);
        let spec = OutputSpec::of(&request.params).ok().flatten();
        let stored_status = record.status;
        Execution {
            deps,
            record,
            current: request.clone(),
            request,
            spec,
            repair: None,
            repairs_on_route: 0,
            routes,
            live,
            table,
            next_seq: 1,
            emitted: String::new(),
            thinking: ThinkingAssembly::default(),
            this_turn: Turn::default(),
            unpublished: VecDeque::new(),
            awaiting_commit: false,
            running: None,
            attempt_seq: 0,
            retry_timer: None,
            route_index: 0,
            tries_on_route: 0,
            switches: 0,
            reconciler: None,
            pending_failover: None,
            finishing: false,
            suspended: false,
            done_waiters: Vec::new(),
            stored_status,
            start_recorded: true,
            permit: None,
            replica: None,
        }
    }

    /// In a cluster: appends to the shared log under `replica`'s lease.
    pub fn replicating(mut self, replica: Option<Replica>) -> Execution {
        self.replica = replica;
        self
    }

    /// Holds a place among the key's executions in flight until the terminal status.
    pub fn holding(mut self, permit: Option<crate::limits::Permit>) -> Execution {
        self.permit = permit;
        self
    }

    fn id(&self) -> &str {
        &self.record.id
    }

    /// The running step of a workflow with steps: the first one without a result.
    fn step(&self) -> usize {
        self.record.design.steps.len()
    }

    /// The routes that can answer `request` for `slug`: the configured ones, or in testing
    /// mode the two built-in testing routes (a primary and a fallback, so a simulated fault
    /// shows a real failover).
    fn routes_for(
        deps: &ExecutionDeps,
        record: &ExecutionRecord,
        slug: &str,
        request: &ChatRequest,
    ) -> Vec<Route> {
        if !record.design.mode.is_live() {
            return routing::testing_routes(&deps.providers);
        }
        routing::plan(&deps.settings, &deps.providers, slug)
            .map(|routes| routing::capable(routes, &routing::Needs::of(request)))
            .unwrap_or_default()
    }

    // ---- the log: append, then publish once durable ----

    /// Appends an event; it is published once a group commit makes it durable.
    fn emit(&mut self, ctx: &mut Context<Self>, build: impl FnOnce(u64) -> Event) {
        self.this_turn.urgent = true;
        self.append(ctx, build);
    }

    /// Progress (a chunk, a thinking fragment): urgent while a reader follows the execution
    /// live; otherwise it rides on the next commit anyone asks for — the terminal event's, for
    /// a non-stream answer — or on the one the committer runs `DEFER_LIMIT` (5 ms) later.
    fn emit_progress(&mut self, ctx: &mut Context<Self>, build: impl FnOnce(u64) -> Event) {
        if self.live.has_followers() {
            self.emit(ctx, build)
        } else {
            self.emit_deferred(ctx, build)
        }
    }

    /// [`Self::emit`] for an event nobody waits on (`processing`): unless the same turn emits
    /// another event, it rides on the next group commit anyone asks for (usually the first
    /// chunk's) instead of costing one of its own.
    fn emit_deferred(&mut self, ctx: &mut Context<Self>, build: impl FnOnce(u64) -> Event) {
        self.append(ctx, build);
    }

    fn append(&mut self, ctx: &mut Context<Self>, build: impl FnOnce(u64) -> Event) {
        if self.suspended {
            return;
        }
        let event = Arc::new(build(self.next_seq));
        self.next_seq += 1;
        self.deps.store.stage_event(&self.record.id, &event);
        self.deps.metrics.events.inc();
        if self.this_turn.events.is_empty() {
            // Runs once the actor has handled everything that is ready (up to 16 provider
            // events): one ticket, hence one flush, for all events of the turn.
            ctx.spawn(fut::ready(()).map(|_, act: &mut Self, ctx| act.take_ticket(ctx)));
        }
        self.this_turn.events.push(event);
    }

    /// Takes the group-commit ticket covering every event appended in this turn.
    fn take_ticket(&mut self, ctx: &mut Context<Self>) {
        let commit = &self.deps.store.commit;
        let ticket = if std::mem::take(&mut self.this_turn.urgent) {
            commit.ticket()
        } else {
            commit.deferred_ticket()
        };
        let events = self.this_turn.events.drain(..);
        self.unpublished.extend(events.map(|event| (ticket, event)));
        self.await_commit(ctx);
    }

    fn await_commit(&mut self, ctx: &mut Context<Self>) {
        let Some(&(ticket, _)) = self.unpublished.back() else {
            return;
        };
        if self.awaiting_commit {
            return;
        }
        self.awaiting_commit = true;
        let wait = self.deps.store.commit.wait(ticket);
        ctx.spawn(wait.into_actor(self).map(|durable, act, ctx| {
            act.awaiting_commit = false;
            let Ok(durable) = durable else {
                return act.suspend(ctx);
            };
            let mut batch = Vec::new();
            while act.unpublished.front().is_some_and(|(t, _)| *t <= durable) {
                batch.push(act.unpublished.pop_front().expect("checked above").1);
            }
            act.share(ctx, batch);
        }));
    }

    /// In a cluster, appends a durable batch to the shared log before anyone sees it (events
    /// the shared log already has — a submit's `pending` — are not appended twice).
    fn share(&mut self, ctx: &mut Context<Self>, batch: Vec<SharedEvent>) {
        let Some(replica) = &self.replica else {
            return self.release(ctx, batch);
        };
        let shared = replica.position;
        let fresh: Vec<SharedEvent> = batch
            .iter()
            .filter(|e| e.seq > shared.seq)
            .cloned()
            .collect();
        let Some(last) = fresh.last().map(|e| e.seq) else {
            return self.release(ctx, batch);
        };
        if !replica.lease.valid() {
            return self.fenced(ctx);
        }
        self.awaiting_commit = true;
        let (cluster, id) = (replica.cluster.clone(), self.record.id.clone());
        let timer = self.deps.metrics.cluster_append.start_timer();
        let append = async move {
            let appended = cluster.append(&id, &fresh, shared.stream_seq).await;
            timer.observe_duration();
            appended
        };
        ctx.spawn(append.into_actor(self).map(move |appended, act, ctx| {
            act.awaiting_commit = false;
            match appended {
                Ok(stream_seq) => {
                    if let Some(replica) = act.replica.as_mut() {
                        replica.position = LogPosition {
                            seq: last,
                            stream_seq,
                        };
                    }
                    act.release(ctx, batch);
                }
                Err(AppendError::Fenced) => act.fenced(ctx),
                Err(AppendError::Unavailable(err)) => {
                    // Nothing is published meanwhile; the lease decides how long to insist.
                    tracing::warn!(execution_id = %act.record.id, error = %err, "shared log unavailable; retrying");
                    act.awaiting_commit = true;
                    ctx.run_later(SHARE_RETRY, move |act, ctx| {
                        act.awaiting_commit = false;
                        act.share(ctx, batch);
                    });
                }
            }
        }));
    }

    /// Publishes a batch that is durable (and shared, in a cluster), then goes on with the
    /// next one or, once the terminal event is out, stops.
    fn release(&mut self, ctx: &mut Context<Self>, batch: Vec<SharedEvent>) {
        for event in &batch {
            self.announce_status(event);
        }
        // One wake-up per subscriber per group commit, however many events it made durable.
        self.live.publish(batch);
        if !self.unpublished.is_empty() {
            self.await_commit(ctx);
        } else if self.finishing && self.this_turn.events.is_empty() {
            if self.record.webhook_url.is_some() {
                self.deps.webhook_wake.notify_one();
            }
            for waiter in self.done_waiters.drain(..) {
                let _ = waiter.send(self.record.clone());
            }
            if let Some(replica) = self.replica.take() {
                tokio::spawn(async move {
                    replica.cluster.lease_release(&replica.lease, true).await;
                });
            }
            let record = &self.record;
            tracing::info!(execution_id = %record.id, status = record.status.as_str(), duration_ms = record.duration_ms(), "execution finished");
            ctx.stop();
        }
    }

    /// Another node drives the execution now (this one lost its lease or the log moved on):
    /// stop without a terminal state, and drop from the local log what was never shared (the
    /// mirror brings the new owner's events in their place).
    fn fenced(&mut self, ctx: &mut Context<Self>) {
        let Some(mut replica) = self.replica.take() else {
            return;
        };
        if let Some(slot) = replica.slot.take() {
            slot.hand_over();
        }
        tracing::warn!(execution_id = %self.record.id, shared_seq = replica.position.seq, "fenced: another node drives this execution now");
        self.deps.metrics.cluster_fenced.inc();
        let store = &self.deps.store;
        if let Err(err) = store.truncate_log(&self.record.id, replica.position.seq) {
            tracing::error!(execution_id = %self.record.id, error = %err, "cannot drop unshared events");
        }
        let (store, id) = (self.deps.store.clone(), self.record.id.clone());
        tokio::spawn(async move {
            replica.cluster.lease_release(&replica.lease, false).await;
            replica.cluster.resync(store, id).await;
        });
        self.suspended = true;
        self.halt(ctx);
    }

    /// Tells the project feed about the status change a durable event makes, if any.
    fn announce_status(&self, event: &Event) {
        let status = match event.kind {
            EventKind::Done => self.record.status,
            EventKind::Status => self.status_of(event),
            _ => return,
        };
        // Executions are created `pending`: the first event is no change.
        if status != Status::Pending {
            let r = &self.record;
            self.deps
                .project_feed
                .publish(&r.project_id, &r.id, &r.model, status);
        }
    }

    /// The status a `status` event announces.
    fn status_of(&self, event: &Event) -> Status {
        #[derive(serde::Deserialize)]
        struct Payload {
            status: Status,
        }
        serde_json::from_slice::<Payload>(&event.data)
            .map(|p| p.status)
            .unwrap_or(self.record.status)
    }

    /// A failed write poisons the store: the next append sees it and suspends the actor. In a
    /// cluster the record goes to KV too, while this node holds the lease.
    fn persist(&mut self) {
        let store = &self.deps.store;
        // In a cluster the mirror may write the record too: read what is stored.
        let written = match self.replica {
            None => store.put_execution_over(&self.record, Some(self.stored_status)),
            Some(_) => store.put_execution(&self.record),
        };
        match written {
            Ok(()) => self.stored_status = self.record.status,
            Err(err) => store.health.fail(&err),
        }
        if let Some(replica) = self.replica.as_ref().filter(|r| r.lease.valid()) {
            replica.cluster.share_record(&self.record);
        }
    }

    // ---- attempts ----

    fn start_attempt(&mut self, ctx: &mut Context<Self>, strategy: Option<ContinuationStrategy>) {
        if self.open_attempt(ctx, strategy) {
            self.persist();
        }
    }

    /// [`Self::start_attempt`] without the record write: whether an attempt went out (none when
    /// no route admits one now: the execution waits for quota or has failed).
    fn open_attempt(
        &mut self,
        ctx: &mut Context<Self>,
        strategy: Option<ContinuationStrategy>,
    ) -> bool {
        self.retry_timer = None;
        let Some(strategy) = self.admit_route(ctx, strategy) else {
            return false;
        };
        self.claim_breaker();
        let route = self.routes[self.route_index].clone();
        let strategy = match strategy {
            None if !self.emitted.is_empty() => Some(route.provider.settings.continuation()),
            s => s,
        };
        let base = self.repair.as_deref().unwrap_or(&self.current.messages);
        let messages = match strategy {
            Some(s) => continuation_messages(base, &self.emitted, s),
            None => base.to_vec(),
        };
        let input_tokens = pricing::approx_tokens(messages.iter().map(|m| m.content.len()).sum());
        // A simulated fault is acted out by the execution's first attempt only.
        let fault = match self.record.attempts.is_empty() {
            true => self.request.simulate.clone(),
            false => None,
        };
        let request = UpstreamRequest {
            model: route.model.clone(),
            messages,
            params: self.current.params.clone(),
            fault,
            structured: route.structured,
        };
        let log = AttemptLog::new(
            self.deps.store.clone(),
            &self.record.id,
            self.record.attempts.len() as u32,
            self.request.clone(),
        );
        let chars = request.messages.iter().map(|m| m.content.len()).sum();
        let estimate = crate::limits::estimate_tokens(chars, request.params.max_tokens);
        let charge = self.deps.quota.begin(route.key(), estimate, now_ms());
        let (rx, handle) = spawn_attempt(route.provider.clone(), request, log.clone());
        self.attempt_seq += 1;
        let id = self.attempt_seq;
        let events = stream::unfold(rx, |mut rx: mpsc::Receiver<AttemptEvent>| async move {
            rx.recv().await.map(|ev| (ev, rx))
        });
        let stream = ctx.add_stream(futures_util::StreamExt::map(events, move |ev| {
            Tagged(id, ev)
        }));
        self.reconciler = strategy.map(|s| Reconciler::new(&self.emitted, s));
        self.running = Some(Running {
            id,
            route: self.route_index,
            handle,
            stream,
            strategy,
            started: Instant::now(),
            last_chunk: None,
            chunks: 0,
            finish_reason: None,
            usage: None,
            stop_sequence: None,
            tool_calls: ToolCallAssembly::default(),
            log,
            input_tokens,
            text_bytes: 0,
            charge,
        });
        self.record.attempts.push(Attempt {
            provider: route.provider.name().to_string(),
            model: route.model,
            strategy: strategy.map_or("initial", |s| s.as_str()).to_string(),
            outcome: AttemptOutcome::Running,
            chunks_delivered: 0,
            error_code: None,
            error_message: None,
            usage: None,
            cost_micros: None,
            started_at_ms: now_ms(),
            first_chunk_ms: None,
            ended_at_ms: None,
        });
        tracing::debug!(execution_id = %self.record.id, provider = %self.routes[self.route_index].provider.name(), attempt = id, "attempt started");
        true
    }

    /// A new execution's `processing` record and event, written once its first attempt is on
    /// its way: in the turn after the one that sent it, while the provider answers — or
    /// earlier, before anything else the actor does (an attempt's first event, a cancel, the
    /// deadline), so every later event still follows them in the log and the store (a
    /// `pending` record has only its `pending` event, which recovery relies on). This takes
    /// ~36 µs of the worker's time off the path to the provider at concurrency 1 (issue 16).
    fn record_start(&mut self, ctx: &mut Context<Self>) {
        if self.start_recorded {
            return;
        }
        self.start_recorded = true;
        self.persist();
        self.announce_processing(ctx);
    }

    /// The `processing` event, naming the route the attempt went to (quota or a taken probe
    /// can move it); none once the execution has failed (no route had quota in time).
    fn announce_processing(&mut self, ctx: &mut Context<Self>) {
        if self.finishing {
            return;
        }
        let route = &self.routes[self.route_index];
        let (provider, model) = (route.provider.name().to_string(), route.model.clone());
        self.emit_deferred(ctx, |seq| Event::processing(seq, &provider, &model));
    }

    /// Counts the try against its route's breaker. The route was picked a moment ago, but
    /// executions run on several threads: another one may have taken a half-open route's one
    /// probe since. A first try then goes to the next route that admits one (or, all open, to
    /// the one `pick_route` falls back to); a later try stays on the route its `failover`
    /// event already named, as a second probe.
    fn claim_breaker(&mut self) {
        let (deps, now) = (&self.deps, tokio::time::Instant::now());
        if deps
            .health
            .begin_admitted(self.routes[self.route_index].key(), now)
        {
            return;
        }
        if self.record.attempts.is_empty() {
            let (health, quota) = (&deps.health, &deps.quota);
            let from = self.route_index;
            if let Ok(i) = routing::pick_route(&self.routes, from, health, quota, now, now_ms()) {
                self.route_index = i;
            }
        }
        deps.health.begin(self.routes[self.route_index].key(), now);
    }

    /// A route out of upstream quota is never tried before its reset: the try moves to the
    /// next route with headroom, or waits for the earliest reset when that comes before the
    /// execution's deadline, or the execution fails `provider_unavailable`. `None` when no try
    /// starts now; otherwise the strategy to start it with.
    fn admit_route(
        &mut self,
        ctx: &mut Context<Self>,
        strategy: Option<ContinuationStrategy>,
    ) -> Option<Option<ContinuationStrategy>> {
        let now = now_ms();
        let quota = &self.deps.quota;
        if quota.admits(self.routes[self.route_index].key(), now) {
            return Some(strategy);
        }
        let health = &self.deps.health;
        let instant = tokio::time::Instant::now();
        match routing::pick_route(&self.routes, self.route_index, health, quota, instant, now) {
            Ok(index) => {
                let from_route = self.route_index;
                let from = self.routes[from_route].provider.name().to_string();
                self.route_index = index;
                self.tries_on_route = 1;
                if !self.record.attempts.is_empty() {
                    let err = ProviderError::new(
                        ErrorCode::RateLimited,
                        "the route is out of upstream quota",
                    );
                    self.announce_failover(ctx, &from, Some(from_route), &err, false, None);
                }
                Some(None)
            }
            Err(exhausted) => {
                let limit = self.deps.settings.limits.max_execution_ms;
                let deadline = self.record.created_at_ms.saturating_add(limit);
                let reason = exhausted.reason.as_str();
                if exhausted.until_ms >= deadline {
                    let message = format!(
                        "no route has upstream quota before the execution's deadline ({reason} until {})",
                        crate::domain::rfc3339(exhausted.until_ms)
                    );
                    let error = ErrorBody::new(ErrorCode::ProviderUnavailable, message);
                    self.terminate(ctx, Status::Failed, Some(error));
                    return None;
                }
                let wait = Duration::from_millis(exhausted.until_ms.saturating_sub(now) + 1);
                tracing::info!(execution_id = %self.record.id, reason, wait_ms = wait.as_millis() as u64, "no route has upstream quota; waiting for the earliest reset");
                self.retry_timer =
                    Some(ctx.run_later(wait, move |act, ctx| act.start_attempt(ctx, strategy)));
                None
            }
        }
    }

    /// Stops the try in flight (if any), recording how it ended.
    fn end_attempt(
        &mut self,
        ctx: &mut Context<Self>,
        outcome: AttemptOutcome,
        error: Option<&ProviderError>,
    ) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.handle.abort();
        ctx.cancel_future(running.stream);
        let health = match (outcome, error) {
            (AttemptOutcome::Succeeded, _) => Outcome::Success {
                latency: running.started.elapsed(),
                first_chunk: self
                    .record
                    .attempts
                    .last()
                    .and_then(|a| a.first_chunk_ms)
                    .map(Duration::from_millis),
            },
            (_, Some(e)) if e.counts_against_provider() => Outcome::Failure,
            _ => Outcome::Neutral,
        };
        let provider_wide = error.is_some_and(|e| e.is_provider_wide());
        let route = &self.routes[running.route];
        self.deps.health.end(
            route.key(),
            tokio::time::Instant::now(),
            health,
            provider_wide,
        );
        if let Some(e) = error {
            self.deps.quota.failed(route.key(), e, now_ms());
        }
        if let Some(u) = running.usage {
            let used = u.total_tokens.max(u.prompt_tokens + u.completion_tokens);
            self.deps.quota.settle(route.key(), running.charge, used);
        }
        let provider = route.provider.name();
        let code = error.map_or("none", |e| e.code.as_str());
        let outcome_label = match outcome {
            AttemptOutcome::Running => "running",
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Interrupted => "interrupted",
        };
        let m = &self.deps.metrics;
        m.attempts
            .with_label_values(&[provider, outcome_label, code])
            .inc();
        if outcome == AttemptOutcome::Succeeded {
            let took = running.started.elapsed().as_secs_f64();
            m.stream_duration
                .with_label_values(&[provider])
                .observe(took);
        }
        let price = route.price;
        let cost = (!price.is_free()).then(|| match running.usage {
            Some(usage) => price.usage_cost(&usage),
            None => price.cost_micros(
                running.input_tokens,
                pricing::approx_tokens(running.text_bytes),
            ),
        });
        if let Some(attempt) = self.record.attempts.last_mut() {
            attempt.outcome = outcome;
            attempt.chunks_delivered = running.chunks;
            attempt.usage = running.usage;
            attempt.cost_micros = cost;
            attempt.ended_at_ms = Some(now_ms());
            attempt.error_code = error.map(|e| e.code);
            attempt.error_message = error.map(|e| e.message.clone());
        }
        // The debug log's last batch (compressed, one insert) is written once this turn has
        // asked for its commit, while that flush runs: off the path to the answer (~30 µs at
        // concurrency 1, issue 16). It becomes durable with the next flush, within
        // `DEFER_LIMIT` (see `AttemptLog`).
        let log = running.log;
        Self::next_pass(ctx, move |_, _| drop(log));
    }

    /// Runs `then` once the runtime has run the tasks that are ready (an attempt's request,
    /// a flush this turn asked for): for work nothing waits on, off the path of what does.
    fn next_pass(
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        let yielded = fut::wrap_future(tokio::task::yield_now());
        ctx.spawn(yielded.map(move |(), act: &mut Self, ctx| then(act, ctx)));
    }

    fn on_text(&mut self, ctx: &mut Context<Self>, text: String) {
        if let Some(running) = self.running.as_mut() {
            running.text_bytes += text.len();
        }
        let text = match self.reconciler.as_mut() {
            None => Some(text),
            Some(r) => match r.push(text) {
                Ok(text) => text,
                Err(diverged) => return self.on_diverged(ctx, diverged),
            },
        };
        self.announce_join(ctx);
        if let Some(text) = text {
            self.emit_chunk(ctx, text);
        }
    }

    /// A thinking fragment goes out as it comes (a chunk with an empty text delta) and is kept
    /// for the record; a block is only whole with its signature.
    fn on_thinking(&mut self, ctx: &mut Context<Self>, fragment: crate::domain::ThinkingDelta) {
        if let Some(running) = self.running.as_mut() {
            running.chunks += 1;
        }
        self.thinking.push(&fragment);
        let event = Event::thinking(self.next_seq, &fragment);
        self.emit_progress(ctx, |_| event);
    }

    /// Once the continuation's head is settled: records how it joined (the debug log, the
    /// held `failover` event) before any of its text goes out.
    fn announce_join(&mut self, ctx: &mut Context<Self>) {
        let Some(join) = self.reconciler.as_ref().map(Reconciler::join) else {
            return;
        };
        if join == Join::Pending || self.pending_failover.is_none() {
            return;
        }
        let trimmed_bytes = match join {
            Join::Trimmed(t) => t.trimmed_bytes,
            _ => 0,
        };
        let label = if trimmed_bytes > 0 {
            "trimmed"
        } else {
            "exact"
        };
        self.record_join(label, trimmed_bytes);
        self.flush_failover(ctx, Some((label, trimmed_bytes)));
    }

    fn record_join(&self, join: &str, trimmed_bytes: usize) {
        let Some(running) = self.running.as_ref() else {
            return;
        };
        let strategy = running.strategy.map_or("initial", |s| s.as_str());
        running.log.record(LogEntry::Reconciled {
            strategy,
            join,
            emitted_bytes: self.emitted.len(),
            trimmed_bytes,
        });
        if trimmed_bytes > 0 {
            tracing::info!(execution_id = %self.record.id, strategy, trimmed_bytes, "continuation reproduced the emitted text; dropped");
        }
    }

    /// A `restart` continuation that is a different answer: this try fails rather than
    /// splicing two answers together.
    fn on_diverged(&mut self, ctx: &mut Context<Self>, diverged: Diverged) {
        self.record_join("diverged", 0);
        let mut err = ProviderError::new(
            ErrorCode::StreamInterrupted,
            format!(
                "the restarted answer diverged from the {} bytes already emitted after {} bytes",
                self.emitted.len(),
                diverged.matched_bytes
            ),
        );
        err.model_fault = true;
        self.on_failed(ctx, err);
    }

    fn emit_chunk(&mut self, ctx: &mut Context<Self>, text: String) {
        if let Some(running) = self.running.as_mut() {
            running.chunks += 1;
            let now = Instant::now();
            let provider = self.routes[running.route].provider.name();
            match running.last_chunk {
                None => {
                    let first = now - running.started;
                    let m = &self.deps.metrics.first_chunk;
                    m.with_label_values(&[provider])
                        .observe(first.as_secs_f64());
                    if let Some(a) = self.record.attempts.last_mut() {
                        a.first_chunk_ms = Some(first.as_millis() as u64);
                    }
                }
                Some(previous) => {
                    let gap = (now - previous).as_secs_f64();
                    self.deps
                        .metrics
                        .chunk_gap
                        .with_label_values(&[provider])
                        .observe(gap);
                }
            }
            running.last_chunk = Some(now);
        }
        let step = self.request.steps.get(self.step()).map(|s| s.name.as_str());
        let event = match step {
            Some(step) => Event::step_chunk(self.next_seq, &text, step),
            None => Event::chunk(self.next_seq, &text),
        };
        self.emit_progress(ctx, |_| event);
        self.emitted.push_str(&text);
    }

    fn on_finished(&mut self, ctx: &mut Context<Self>) {
        match self.reconciler.as_mut().map(Reconciler::finish) {
            Some(Err(diverged)) => return self.on_diverged(ctx, diverged),
            Some(Ok(tail)) => {
                self.announce_join(ctx);
                if let Some(tail) = tail {
                    self.emit_chunk(ctx, tail);
                }
            }
            None => {}
        }
        let calls = self
            .running
            .as_mut()
            .map(|r| std::mem::take(&mut r.tool_calls));
        if let Some(calls) = calls.filter(|c| !c.is_empty()) {
            let calls = calls.finish(self.record.id.trim_start_matches("exec_"));
            if let Some(running) = self.running.as_mut() {
                running.chunks += 1;
            }
            self.emit(ctx, |seq| Event::tool_calls(seq, &calls));
            self.record.output_tool_calls = calls;
        }
        if let (Some(spec), true) = (&self.spec, self.record.output_tool_calls.is_empty()) {
            match spec.check(&self.emitted) {
                Ok(data) => {
                    let d = &mut self.record.design;
                    let repairs = d.validation.as_ref().map_or(0, |v| v.repairs);
                    d.validation = Some(Validation {
                        valid: true,
                        repairs,
                        errors: Vec::new(),
                    });
                    d.output_data = Some(data);
                }
                Err(errors) => return self.on_invalid(ctx, errors),
            }
        }
        let usage = self.running.as_ref().and_then(|r| r.usage);
        let reported = self.running.as_ref().and_then(|r| r.finish_reason.clone());
        self.record.design.stop_sequence =
            self.running.as_ref().and_then(|r| r.stop_sequence.clone());
        let thinking = std::mem::take(&mut self.thinking);
        self.record.design.thinking.extend(thinking.done);
        // OpenAI says `stop` when a named tool_choice forced the call; every other format says
        // `tool_calls`: one answer regardless of which route gave it.
        self.record.finish_reason = match reported {
            Some(r) if r == "stop" && !self.record.output_tool_calls.is_empty() => {
                Some("tool_calls".into())
            }
            other => other,
        };
        self.end_attempt(ctx, AttemptOutcome::Succeeded, None);
        if self.request.steps.is_empty() {
            self.record.usage = usage;
            return self.terminate(ctx, Status::Completed, None);
        }
        self.finish_step(ctx, usage);
    }

    // ---- structured output ----

    /// The answer does not match the requested format: one repair attempt on the same route
    /// (the problems sent back), then the next route from scratch; with no route left, the
    /// execution fails `output_invalid` and keeps the last answer as its text. Either way the
    /// answer starts over, and a `failover` event with `restart: true` says so first.
    fn on_invalid(&mut self, ctx: &mut Context<Self>, errors: Vec<String>) {
        let mut err = ProviderError::new(
            ErrorCode::OutputInvalid,
            format!(
                "the answer does not match the requested format: {}",
                errors.join("; ")
            ),
        );
        err.model_fault = true;
        tracing::info!(execution_id = %self.record.id, errors = %err.message, "answer failed validation");
        self.end_attempt(ctx, AttemptOutcome::Failed, Some(&err));
        let validation = self.record.design.validation.get_or_insert_default();
        validation.valid = false;
        validation.errors = errors.clone();
        let from_route = self.route_index;
        let from = self.routes[from_route].provider.name().to_string();
        if self.repairs_on_route == 0 {
            self.repairs_on_route = 1;
            validation.repairs += 1;
            let mut turns = self.current.messages.clone();
            turns.push(Message::new(Role::Assistant, self.emitted.clone()));
            turns.push(Message::new(Role::User, repair_instruction(&errors)));
            self.repair = Some(turns);
        } else {
            let next = from_route + 1;
            if next >= self.routes.len() {
                self.persist();
                let message = format!(
                    "no route produced an answer valid for the requested format; last problems: {}",
                    errors.join("; ")
                );
                let error = ErrorBody::new(ErrorCode::OutputInvalid, message);
                return self.terminate(ctx, Status::Failed, Some(error));
            }
            let (now, deps) = (tokio::time::Instant::now(), &self.deps);
            self.route_index =
                routing::pick_route(&self.routes, next, &deps.health, &deps.quota, now, now_ms())
                    .unwrap_or(next);
            self.repair = None;
            self.repairs_on_route = 0;
            self.tries_on_route = 1;
        }
        self.persist();
        self.restart_answer(ctx, from, err);
        self.start_attempt(ctx, None);
    }

    /// Voids the answer so far: a `failover` event with `restart: true`, after which the
    /// answer's text starts again from nothing.
    fn restart_answer(&mut self, ctx: &mut Context<Self>, from: String, err: ProviderError) {
        self.flush_failover(ctx, None);
        let route = &self.routes[self.route_index];
        self.pending_failover = Some(PendingFailover {
            from,
            to: route.provider.name().to_string(),
            model: route.model.clone(),
            reason: err.code,
            message: err.message,
            restart: true,
            restarted: None,
        });
        self.flush_failover(ctx, None);
        self.emitted.clear();
        self.thinking = ThinkingAssembly::default();
        self.reconciler = None;
    }

    // ---- workflow steps ----

    /// Sets up the running step: its request (templates rendered over the variables and the
    /// finished steps), routes and output spec. `Err` when its templates cannot be rendered.
    fn enter_step(&mut self) -> Result<(), ErrorBody> {
        let plan: &StepPlan = &self.request.steps[self.step()];
        let messages = crate::workflows::step_messages(
            plan,
            &self.request.messages,
            &self.request.variables,
            &self.record.design.steps,
        )
        .map_err(|e| {
            ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!("step `{}`: {e}", plan.name),
            )
        })?;
        let current = ChatRequest {
            messages,
            params: plan.params.clone(),
            ..ChatRequest::default()
        };
        self.routes = Execution::routes_for(&self.deps, &self.record, &plan.model, &current);
        self.spec = OutputSpec::of(&current.params).ok().flatten();
        self.current = Arc::new(current);
        self.repair = None;
        self.repairs_on_route = 0;
        self.tries_on_route = 1;
        self.switches = 0;
        let (now, deps) = (tokio::time::Instant::now(), &self.deps);
        self.route_index =
            routing::pick_route(&self.routes, 0, &deps.health, &deps.quota, now, now_ms())
                .unwrap_or(0);
        Ok(())
    }

    /// Starts the next step, or fails the execution when it cannot start.
    fn start_step(&mut self, ctx: &mut Context<Self>) {
        if let Err(error) = self.enter_step() {
            return self.terminate(ctx, Status::Failed, Some(error));
        }
        self.begin_step(ctx);
    }

    /// Announces the entered step with its `step` event and starts its first attempt.
    fn begin_step(&mut self, ctx: &mut Context<Self>) {
        if self.routes.is_empty() {
            let plan = &self.request.steps[self.step()];
            let message = format!(
                "step `{}`: model `{}` has no usable route",
                plan.name, plan.model
            );
            let error = ErrorBody::new(ErrorCode::ProviderUnavailable, message);
            return self.terminate(ctx, Status::Failed, Some(error));
        }
        let plan = &self.request.steps[self.step()];
        let event = Event::step_started(self.next_seq, self.step(), &plan.name, &plan.model);
        self.emit(ctx, |_| event);
        self.start_attempt(ctx, None);
    }

    /// The running step answered: its result goes into the log (a `step` event that carries
    /// it whole, so a restarted process never runs it again) and the record; then the next
    /// step starts, or the execution completes with the last step's output.
    fn finish_step(&mut self, ctx: &mut Context<Self>, usage: Option<Usage>) {
        let plan = &self.request.steps[self.step()];
        let result = StepResult {
            name: plan.name.clone(),
            model: plan.model.clone(),
            text: std::mem::take(&mut self.emitted),
            data: self.record.design.output_data.take(),
            usage,
        };
        let event = Event::step_completed(self.next_seq, self.step(), &result);
        self.emit(ctx, |_| event);
        self.add_step_result(result);
        self.persist();
        if self.step() < self.request.steps.len() {
            self.record.design.validation = None;
            return self.start_step(ctx);
        }
        let last = self
            .record
            .design
            .steps
            .last()
            .expect("a step just finished");
        self.emitted = last.text.clone();
        self.record.design.output_data = last.data.clone();
        self.terminate(ctx, Status::Completed, None);
    }

    /// Counts a finished step into the record: its result, and its usage into the total.
    fn add_step_result(&mut self, result: StepResult) {
        if let Some(u) = result.usage {
            let total = self.record.usage.get_or_insert_default();
            total.prompt_tokens += u.prompt_tokens;
            total.completion_tokens += u.completion_tokens;
            total.total_tokens += u.total_tokens;
        }
        self.record.design.steps.push(result);
    }

    fn on_failed(&mut self, ctx: &mut Context<Self>, err: ProviderError) {
        // A stream that stalls or drops after its finish reason has delivered the answer.
        if self
            .running
            .as_ref()
            .is_some_and(|r| r.finish_reason.is_some())
        {
            return self.on_finished(ctx);
        }
        // The failover to this try, if its head never settled: it joined nothing.
        self.flush_failover(ctx, None);
        // A continuation never resumes inside a block: thinking before any text starts over
        // (its chunks are void), a half-made tool call is made anew.
        let half_made = match &self.running {
            _ if !self.thinking.is_empty() && self.emitted.is_empty() => Some("thinking"),
            Some(r) if !r.tool_calls.is_empty() => Some("tool_use"),
            _ => None,
        };
        let strategy = self.running.as_ref().and_then(|r| r.strategy);
        let delivered = self.running.as_ref().is_some_and(|r| r.chunks > 0);
        let from_route = self.route_index;
        let from = self.routes[from_route].provider.name().to_string();
        tracing::warn!(execution_id = %self.record.id, provider = %from, code = %err.code, error = %err.message, "attempt failed");
        self.end_attempt(ctx, AttemptOutcome::Failed, Some(&err));
        self.persist();
        let failure = FailureContext {
            route_index: self.route_index,
            route_count: self.routes.len(),
            tries_on_route: self.tries_on_route,
            max_tries_on_route: self.routes[self.route_index].provider.settings.max_attempts,
            emitted_any: !self.emitted.is_empty(),
            attempt_delivered: delivered,
            switches: self.switches,
            max_switches: MAX_SWITCHES,
            strategy,
        };
        match routing::decide(&failure, &err) {
            Decision::Fail => self.terminate(ctx, Status::Failed, Some(err.body())),
            Decision::Retry { delay, strategy } => {
                let delay = if err.retry_after.is_some() {
                    delay
                } else {
                    routing::jitter(delay)
                };
                self.tries_on_route += 1;
                self.announce_failover(ctx, &from, Some(from_route), &err, delivered, half_made);
                self.retry_timer =
                    Some(ctx.run_later(delay, move |act, ctx| act.start_attempt(ctx, strategy)));
            }
            Decision::Next { index } => {
                let (now, deps) = (tokio::time::Instant::now(), &self.deps);
                self.route_index = routing::pick_route(
                    &self.routes,
                    index,
                    &deps.health,
                    &deps.quota,
                    now,
                    now_ms(),
                )
                .unwrap_or(index);
                self.tries_on_route = 1;
                self.repair = None;
                self.repairs_on_route = 0;
                self.announce_failover(ctx, &from, Some(from_route), &err, delivered, half_made);
                self.start_attempt(ctx, None);
            }
        }
    }

    /// Tells subscribers the answer continues elsewhere: whenever the route (provider and
    /// upstream model) changes — also between two models of one provider — or when the failed
    /// try had delivered text. A quiet retry of the same route is not news.
    fn announce_failover(
        &mut self,
        ctx: &mut Context<Self>,
        from: &str,
        from_route: Option<usize>,
        err: &ProviderError,
        delivered: bool,
        half_made: Option<&'static str>,
    ) {
        let to = self.routes[self.route_index].provider.name().to_string();
        if from_route == Some(self.route_index) && !delivered {
            return;
        }
        if !self.emitted.is_empty() {
            self.switches += 1;
        }
        let reason = err.code.as_str();
        self.deps
            .metrics
            .failovers
            .with_label_values(&[from, &to, reason])
            .inc();
        let note = PendingFailover {
            from: from.to_string(),
            model: self.routes[self.route_index].model.clone(),
            to,
            reason: err.code,
            message: err.message.clone(),
            restart: half_made == Some("thinking"),
            restarted: half_made,
        };
        if half_made == Some("thinking") {
            self.thinking = ThinkingAssembly::default();
        }
        // An earlier switch whose continuation never settled is told as it was.
        self.flush_failover(ctx, None);
        self.pending_failover = Some(note);
        if self.emitted.is_empty() {
            // Nothing to join: a plain switch of route, told at once.
            self.flush_failover(ctx, None);
        }
    }

    /// Emits the held `failover` event, with how the continuation joined when it did:
    /// `(join, trimmed_bytes)`.
    fn flush_failover(&mut self, ctx: &mut Context<Self>, joined: Option<(&str, usize)>) {
        let Some(note) = self.pending_failover.take() else {
            return;
        };
        #[derive(serde::Serialize)]
        struct Continuation<'a> {
            strategy: &'a str,
            /// `exact` or `trimmed` (the continuation reproduced the emitted text first).
            join: &'a str,
            emitted_bytes: usize,
            trimmed_bytes: usize,
        }
        #[derive(serde::Serialize)]
        struct Payload<'a> {
            seq: u64,
            from: &'a str,
            to: &'a str,
            /// The upstream model that continues the answer.
            model: &'a str,
            reason: ErrorCode,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            continuation: Option<Continuation<'a>>,
            /// Every chunk of the answer so far (since the last restart or step start) is
            /// void: the answer starts over.
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            restart: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            restarted: Option<&'a str>,
        }
        let strategy = self.running.as_ref().and_then(|r| r.strategy);
        let continuation = joined
            .zip(strategy)
            .map(|((join, trimmed_bytes), s)| Continuation {
                strategy: s.as_str(),
                join,
                emitted_bytes: self.emitted.len(),
                trimmed_bytes,
            });
        let payload = Payload {
            seq: self.next_seq,
            from: &note.from,
            to: &note.to,
            model: &note.model,
            reason: note.reason,
            message: &note.message,
            continuation,
            restart: note.restart,
            restarted: note.restarted,
        };
        let event = Event::from_payload(self.next_seq, EventKind::Failover, &payload);
        self.emit(ctx, |_| event);
    }

    // ---- the end ----

    fn terminate(&mut self, ctx: &mut Context<Self>, status: Status, error: Option<ErrorBody>) {
        if self.finishing || !self.record.status.can_move_to(status) {
            return;
        }
        self.record_start(ctx);
        let outcome = if status == Status::Cancelled {
            AttemptOutcome::Cancelled
        } else {
            AttemptOutcome::Failed
        };
        self.end_attempt(ctx, outcome, None);
        if let Some(timer) = self.retry_timer.take() {
            ctx.cancel_future(timer);
        }
        self.flush_failover(ctx, None);
        if let Some(error) = &error {
            self.emit(ctx, |seq| Event::error(seq, error));
        }
        self.record.status = status;
        self.record.error = error;
        self.record.output_text = Some(std::mem::take(&mut self.emitted));
        self.record.completed_at_ms = Some(now_ms());
        // Everything derived from the terminal state is written first, the record last: a
        // reader that sees the terminal status also sees its outbox entry, analytics, metrics.
        if let Some(url) = &self.record.webhook_url {
            let job = crate::store::WebhookJob::new(
                &self.record.id,
                &self.record.project_id,
                url,
                format!("execution.{}", status.as_str()),
                now_ms(),
            );
            if let Err(err) = self.deps.store.put_webhook(&job) {
                self.deps.store.health.fail(&err);
            }
            if let Some(replica) = &self.replica {
                replica.cluster.share_webhook(&job);
            }
        }
        let (m, model) = (&self.deps.metrics, self.record.model.as_str());
        m.executions
            .with_label_values(&[model, status.as_str()])
            .inc();
        if let Some(usage) = self.record.usage {
            let tokens =
                |direction: &str, n: u64| m.tokens.with_label_values(&[model, direction]).inc_by(n);
            tokens("prompt", usage.prompt_tokens);
            tokens("completion", usage.completion_tokens);
        }
        let cost = (status == Status::Completed).then(|| self.record.attempts_cost());
        let priced = self.routes.iter().any(|r| !r.price.is_free());
        if priced || self.record.cost.is_some() {
            self.record.cost.get_or_insert_default().settled_micros = Some(cost.unwrap_or(0));
            if let Some(cost) = cost {
                m.spend.with_label_values(&[model]).inc_by(cost);
            }
        }
        self.deps.store.count_in_analytics(&self.record);
        if let Some(permit) = self.permit.take() {
            // The key's and project's token counts follow the usage providers reported.
            let reported: Vec<u64> = self
                .record
                .attempts
                .iter()
                .filter_map(|a| a.usage.map(|u| u.total_tokens))
                .collect();
            if !reported.is_empty() {
                permit.correct(reported.iter().sum());
            }
        }
        self.persist();
        // After the terminal record (see `store::ledger`): a crash between the two leaves a
        // hold that recovery settles from the record.
        if priced || self.record.cost.is_some() {
            let key_id = self.record.key_id.as_deref().unwrap_or_default();
            if let Err(err) =
                self.deps
                    .ledger
                    .settle(&self.record.id, &self.record.project_id, key_id, cost)
            {
                self.deps.store.health.fail(&err);
            }
            // In a cluster the project's balance is the shared ledger's: its hold ends there,
            // once, whichever node gets there (see `cluster::ledger`).
            if let Some(cluster) = &self.deps.cluster {
                tokio::spawn(
                    cluster
                        .clone()
                        .close_hold_eventually(self.record.id.clone(), cost),
                );
            }
        }
        // Serialized from the record it borrows, before `emit` borrows the actor.
        let done = Event::from_payload(self.next_seq, EventKind::Done, &self.record.view(None));
        self.emit(ctx, |_| done);
        self.finishing = true;
    }

    /// The store refused a write: nothing more this actor emits could be made durable, so it
    /// stops here. Events not yet durable are never published (readers only see durable
    /// ones); the record stays `processing` in the store, and the reopened engine resumes it
    /// from its log like after a crash.
    fn suspend(&mut self, ctx: &mut Context<Self>) {
        if self.suspended {
            return;
        }
        self.suspended = true;
        tracing::error!(execution_id = %self.record.id, "store refused a write; execution suspended until the store is reopened");
        self.halt(ctx);
    }

    /// Stops without a terminal state: nothing more is tried, appended or published.
    fn halt(&mut self, ctx: &mut Context<Self>) {
        self.suspended = true;
        if let Some(timer) = self.retry_timer.take() {
            ctx.cancel_future(timer);
        }
        if let Some(running) = self.running.take() {
            ctx.cancel_future(running.stream);
        }
        self.unpublished.clear();
        self.this_turn.events.clear();
        ctx.stop();
    }

    /// Picks up a record left `processing` by a previous process: rebuild the emitted text and
    /// seq from the log, then continue from it. Returns the tool calls the log's answer already
    /// ended with (then only its `done` was lost), `None` when the log cannot be read.
    fn resume_from_log(&mut self) -> Option<(Vec<ToolCall>, bool)> {
        let store = &self.deps.store;
        let (emitted, last) = match (store.emitted(self.id()), store.last_seq(self.id())) {
            (Ok(e), Ok(l)) => (e, l),
            _ => return None,
        };
        self.emitted = emitted.text;
        self.thinking = emitted.thinking;
        self.next_seq = last + 1;
        // The log says which steps finished; the record may lag it by one write.
        self.record.design.steps.clear();
        if !emitted.steps.is_empty() {
            self.record.usage = None;
        }
        for result in emitted.steps {
            self.add_step_result(result);
        }
        for attempt in &mut self.record.attempts {
            if attempt.outcome == AttemptOutcome::Running {
                attempt.outcome = AttemptOutcome::Interrupted;
                attempt.ended_at_ms = Some(now_ms());
            }
        }
        Some((emitted.tool_calls, emitted.step_open))
    }
}

/// An attempt event tagged with its attempt number, so events of an abandoned try are ignored.
struct Tagged(u64, AttemptEvent);

impl Actor for Execution {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let limit = Duration::from_millis(self.deps.settings.limits.max_execution_ms);
        let age = Duration::from_millis(now_ms().saturating_sub(self.record.created_at_ms));
        ctx.run_later(limit.saturating_sub(age), move |act, ctx| {
            let error = ErrorBody::new(
                ErrorCode::ProviderTimeout,
                format!(
                    "execution exceeded its maximum duration of {} ms",
                    limit.as_millis()
                ),
            );
            act.terminate(ctx, Status::Expired, Some(error));
        });
        if self.routes.is_empty() && self.request.steps.is_empty() {
            // After the events already logged (a restarted execution whose model lost its routes).
            self.next_seq = self.deps.store.last_seq(self.id()).unwrap_or(0) + 1;
            let error = ErrorBody::new(ErrorCode::ProviderUnavailable, "model has no usable route");
            return self.terminate(ctx, Status::Failed, Some(error));
        }
        self.tries_on_route = 1;
        let (now, deps) = (tokio::time::Instant::now(), &self.deps);
        self.route_index =
            routing::pick_route(&self.routes, 0, &deps.health, &deps.quota, now, now_ms())
                .unwrap_or(0);
        match self.record.status {
            Status::Pending => {
                // A pending record has only its `pending` event (seq 1): every later event is
                // appended after the record says `processing`, and sled makes writes durable
                // in order, so no read of the log is needed.
                self.next_seq = 2;
                // The submit wrote `pending` (seq 1) with the record and may not have waited for
                // it to be durable: it goes out with the first batch. Ticket 0, because the
                // submit's writes precede every ticket this actor takes.
                let pending = Event::status(1, Status::Pending);
                self.unpublished.push_back((0, Arc::new(pending)));
                self.record.status = Status::Processing;
                self.record.started_at_ms = Some(now_ms());
                if !self.request.steps.is_empty() {
                    if let Err(error) = self.enter_step() {
                        return self.terminate(ctx, Status::Failed, Some(error));
                    }
                    if let Some(route) = self.routes.first() {
                        let (provider, model) = (route.provider.name(), &route.model);
                        let event = Event::processing(self.next_seq, provider, model);
                        self.emit_deferred(ctx, |_| event);
                    }
                    return self.begin_step(ctx);
                }
                if self.open_attempt(ctx, None) {
                    // The request goes out first (the attempt's task runs before the actor's
                    // next turn); the record and the event follow while upstream answers.
                    self.start_recorded = false;
                    Self::next_pass(ctx, Self::record_start);
                } else {
                    // Waiting for quota (the record says `processing` once an attempt goes
                    // out) or failed.
                    self.announce_processing(ctx);
                }
            }
            Status::Processing => {
                let Some((calls, step_open)) = self.resume_from_log() else {
                    let error = ErrorBody::new(
                        ErrorCode::Internal,
                        "cannot read the execution log to resume",
                    );
                    return self.terminate(ctx, Status::Failed, Some(error));
                };
                if !calls.is_empty() {
                    // The answer had ended in tool calls; only its `done` was lost.
                    self.record.output_tool_calls = calls;
                    self.record.finish_reason = Some("tool_calls".into());
                    return self.terminate(ctx, Status::Completed, None);
                }
                tracing::info!(execution_id = %self.record.id, emitted_chars = self.emitted.len(), step = self.step(), "resuming execution after restart");
                if !self.request.steps.is_empty() {
                    if self.step() >= self.request.steps.len() {
                        // Every step finished; only the end was lost.
                        let last = self.record.design.steps.last().expect("steps finished");
                        self.emitted = last.text.clone();
                        self.record.design.output_data = last.data.clone();
                        return self.terminate(ctx, Status::Completed, None);
                    }
                    if let Err(error) = self.enter_step() {
                        return self.terminate(ctx, Status::Failed, Some(error));
                    }
                    if !step_open {
                        return self.begin_step(ctx);
                    }
                }
                // Thinking with no text after it yet starts over (a half-made block cannot be
                // continued, and a continuation thinks no more).
                let half_made =
                    (!self.thinking.is_empty() && self.emitted.is_empty()).then_some("thinking");
                if !self.emitted.is_empty() || half_made.is_some() {
                    let err = ProviderError::cut("the gateway restarted mid-stream");
                    let from = self
                        .record
                        .attempts
                        .last()
                        .map(|a| a.provider.clone())
                        .unwrap_or_default();
                    self.announce_failover(ctx, &from, None, &err, true, half_made);
                }
                self.start_attempt(ctx, None);
            }
            _ => ctx.stop(),
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(running) = self.running.take() {
            running.handle.abort();
            let key = self.routes[running.route].key();
            self.deps
                .health
                .end(key, tokio::time::Instant::now(), Outcome::Neutral, false);
        }
        self.table.leave(&self.record.id);
    }
}

impl StreamHandler<Tagged> for Execution {
    fn handle(&mut self, Tagged(attempt, event): Tagged, ctx: &mut Context<Self>) {
        if self.finishing || self.running.as_ref().is_none_or(|r| r.id != attempt) {
            return;
        }
        self.record_start(ctx);
        match event {
            AttemptEvent::Item(StreamItem::Delta(delta)) => {
                if let Some(running) = self.running.as_mut() {
                    running.finish_reason = delta.finish_reason.or(running.finish_reason.take());
                    running.usage = delta.usage.or(running.usage);
                    running.stop_sequence = delta.stop_sequence.or(running.stop_sequence.take());
                    for fragment in delta.tool_calls {
                        running.tool_calls.push(fragment);
                    }
                }
                if let Some(fragment) = delta.thinking {
                    self.on_thinking(ctx, fragment);
                }
                if let Some(text) = delta.text {
                    self.on_text(ctx, text);
                }
            }
            AttemptEvent::Item(StreamItem::Headroom(headroom)) => {
                if let Some(running) = self.running.as_ref() {
                    let key = self.routes[running.route].key();
                    self.deps.quota.observe(key, &headroom);
                }
            }
            AttemptEvent::Item(StreamItem::Skipped { reason, .. }) => {
                tracing::warn!(execution_id = %self.record.id, %reason, "skipped a provider event");
            }
            AttemptEvent::Finished => self.on_finished(ctx),
            AttemptEvent::Failed(err) => self.on_failed(ctx, err),
        }
    }

    /// An attempt's stream ending is reported by its own `Finished`/`Failed` event; the actor
    /// must not stop with it (the default would).
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<Cancel> for Execution {
    type Result = ResponseFuture<Result<ExecutionRecord, ApiError>>;

    fn handle(&mut self, _: Cancel, ctx: &mut Context<Self>) -> Self::Result {
        if self.finishing || self.record.status.is_terminal() {
            return Box::pin(async {
                Err(ApiError::new(
                    ErrorCode::Conflict,
                    "execution already finished",
                ))
            });
        }
        let (tx, rx) = oneshot::channel();
        self.done_waiters.push(tx);
        self.terminate(ctx, Status::Cancelled, None);
        let health = self.deps.store.health.clone();
        Box::pin(async move {
            rx.await.map_err(|_| match health.failure() {
                Some(err) => ApiError::storage(err),
                None => ApiError::new(ErrorCode::Internal, "execution stopped before cancelling"),
            })
        })
    }
}
