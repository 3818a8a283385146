//! The event hot path, end to end: mock provider delta → `Execution` actor (seq, append to
//! sled, group commit) → one shared event → N in-process cursors, for N = 1, 100 and 1000.
//!
//! Each iteration runs one execution of `CHUNKS` chunks and measures from the actor's start
//! until the last subscriber has read `done`; throughput is persisted events per second.
//! Subscribers are cursors spread over `WORKERS` arbiters (as SSE streams are spread over the
//! HTTP workers); every one is caught up and waiting on the live feed before the execution
//! starts, and every one must read every seq exactly once, in order (asserted each iteration).
//!
//! The registry creates an execution's live feed and starts its actor in one step, so a
//! `Subscribe` always races the first events; to subscribe strictly before them the bench
//! builds the feed itself (as `StartExecution` does) and starts the real `Execution` on it.
//!
//! Run: `cargo bench --bench event_path -- --quick` (a full run takes minutes at N = 1000).
//! The temp store follows `TMPDIR`: `TMPDIR=/dev/shm` takes the disk out of the measurement.

use actix::{Actor, Arbiter, System, SystemRunner};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use switchyard::actors::execution::ExecutionDeps;
use switchyard::actors::registry::LiveTable;
use switchyard::actors::{Execution, Registry};
use switchyard::channels::{channel_id_for, ProjectFeed};
use switchyard::cursor::Cursor;
use switchyard::domain::{
    ids, now_ms, ChatRequest, Event, EventKind, ExecutionRecord, Status, SubmitBody,
};
use switchyard::metrics::Metrics;
use switchyard::providers::Providers;
use switchyard::routing::HealthBoard;
use switchyard::settings::Settings;
use switchyard::store::Store;

/// Chunks per execution; the log gets `CHUNKS + 3` events (pending, processing, chunks, done),
/// `CHUNKS + 2` of them written while the clock runs.
const CHUNKS: u64 = 20_000;
/// Threads the subscribers run on, like actix-web's default of one worker per core here.
const WORKERS: usize = 2;
const SUBSCRIBERS: [usize; 3] = [1, 100, 1000];

fn settings() -> Settings {
    let toml = format!(
        r#"listen = "127.0.0.1:0"
data_dir = "unused"

[[providers]]
name = "mock"
kind = "mock"
mock_chunks = {CHUNKS}
mock_chunk_interval_ms = 0

[[models]]
slug = "chat-default"
routes = [{{ provider = "mock", model = "mock-1" }}]
"#
    );
    Settings::parse(&toml).expect("bench settings are valid")
}

/// What one subscriber saw.
struct Seen {
    events: u64,
    last_kind: Option<EventKind>,
    /// SSE bytes the subscriber would have written (the frame is built once and shared).
    sse_bytes: usize,
    in_order: bool,
    /// Times the live feed overflowed and the subscriber read the log instead.
    lags: u32,
    done_at: Instant,
}

/// One run's result: wall time from actor start to the last `done`, group-commit flushes and
/// the time they took, and how many subscribers fell back to the log.
struct Run {
    elapsed: Duration,
    flushes: u64,
    flush_time: Duration,
    lagged_subscribers: usize,
    lags: u64,
}

/// A store, the execution dependencies and the subscriber threads, reused by every run.
struct Harness {
    system: SystemRunner,
    deps: Arc<ExecutionDeps>,
    /// Where a bench-started execution leaves the registry's table as it stops.
    table: LiveTable,
    workers: Vec<Arbiter>,
    /// Every group-commit flush (write + fsync), observed by the store itself.
    flushes: prometheus::Histogram,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let system = System::new();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = settings();
        settings.data_dir = dir.path().to_path_buf();
        let flushes = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
            "bench_store_flush_seconds",
            "Group-commit flushes during the bench.",
        ))
        .expect("valid histogram");
        let (deps, table) = system.block_on(async {
            // The group committer is a task on this system's runtime.
            let store = Store::open(&settings.data_dir).expect("store opens");
            store.commit.observe_flushes(flushes.clone());
            // Assembled as `Application::build` does.
            let providers = Arc::new(Providers::from_settings(&settings).expect("providers"));
            let deps = Arc::new(ExecutionDeps {
                ledger: Arc::new(
                    switchyard::ledger::Ledger::open(
                        store.clone(),
                        switchyard::ledger::recovery_window(600_000),
                    )
                    .expect("ledger"),
                ),
                store,
                health: Arc::new(HealthBoard::new(&settings)),
                quota: Arc::new(switchyard::routing::QuotaBoard::new(&settings)),
                settings: Arc::new(settings),
                providers,
                project_feed: Arc::new(ProjectFeed::default()),
                metrics: Arc::new(Metrics::new()),
                webhook_wake: Arc::default(),
                cluster: None,
            });
            let table = Registry::start(deps.clone()).1.table();
            (deps, table)
        });
        let workers = (0..WORKERS).map(|_| Arbiter::new()).collect();
        Harness {
            system,
            deps,
            table,
            workers,
            flushes,
            _dir: dir,
        }
    }

    /// One execution followed by `subscribers` cursors; panics unless each saw every event.
    fn run(&self, subscribers: usize) -> Run {
        self.system.block_on(self.run_async(subscribers))
    }

    async fn run_async(&self, subscribers: usize) -> Run {
        let store = &self.deps.store;
        let (record, request) = new_record();
        let id = record.id.clone();
        // What the submit handler does: the record and its first event, durable.
        store
            .create_execution(&record, &request, &Event::status(1, Status::Pending))
            .expect("execution created");
        store.commit.sync().await.expect("bench store writes");

        // What the registry does on `StartExecution`, minus starting the actor: the live
        // feed, which every subscriber joins (like `Subscribe`) before a single event flows.
        let live = switchyard::actors::live::LiveFeed::new(1);
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
        for i in 0..subscribers {
            let cursor = Cursor::new(store.event_log(), id.clone(), 0, Some(live.subscribe()));
            let (ready, seen) = (ready_tx.clone(), seen_tx.clone());
            self.workers[i % WORKERS].spawn(async move {
                let _ = seen.send(follow(cursor, ready).await);
            });
        }
        drop((ready_tx, seen_tx));
        // Each cursor has replayed seq 1 from the log and now waits on the live feed.
        for _ in 0..subscribers {
            ready_rx.recv().await.expect("subscriber ready");
        }

        let (flushes_before, flush_time_before) = (
            self.flushes.get_sample_count(),
            self.flushes.get_sample_sum(),
        );
        let started = Instant::now();
        Execution::new(
            record,
            Arc::new(request),
            self.deps.clone(),
            live,
            self.table.clone(),
        )
        .start();
        let mut last_done = started;
        let mut outcomes = Vec::with_capacity(subscribers);
        while let Some(seen) = seen_rx.recv().await {
            last_done = last_done.max(seen.done_at);
            outcomes.push(seen);
        }
        let elapsed = last_done - started;
        let flushes = self.flushes.get_sample_count() - flushes_before;
        let flush_time = Duration::from_secs_f64(self.flushes.get_sample_sum() - flush_time_before);

        let total = CHUNKS + 3;
        assert_eq!(outcomes.len(), subscribers, "every subscriber reports");
        for seen in &outcomes {
            assert!(seen.in_order, "subscriber saw a gap or a duplicate");
            assert_eq!(seen.events, total, "subscriber saw every event");
            assert_eq!(
                seen.last_kind,
                Some(EventKind::Done),
                "subscriber ended on done"
            );
            assert!(seen.sse_bytes > 0);
        }
        assert_eq!(
            store.last_seq(&id).expect("log readable"),
            total,
            "log holds every event"
        );
        Run {
            elapsed,
            flushes,
            flush_time,
            lagged_subscribers: outcomes.iter().filter(|s| s.lags > 0).count(),
            lags: outcomes.iter().map(|s| u64::from(s.lags)).sum(),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.stop();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// A pending execution record and its request, as the submit handler builds them.
fn new_record() -> (ExecutionRecord, ChatRequest) {
    let key = ids::random_token(16);
    let body: SubmitBody = serde_json::from_value(serde_json::json!({
        "model": "chat-default",
        "idempotency_key": key,
        "messages": [{"role": "user", "content": "benchmark the event path"}],
    }))
    .expect("submit body");
    body.validate().expect("valid body");
    let id = ids::execution_id();
    let record = ExecutionRecord {
        channel_id: channel_id_for(&id),
        id,
        project_id: switchyard::api::DEFAULT_PROJECT.to_string(),
        status: Status::Pending,
        model: body.model.clone(),
        idempotency_key: body.idempotency_key.clone(),
        fingerprint: body.fingerprint(),
        metadata: body.metadata.clone(),
        webhook_url: None,
        output_text: None,
        output_tool_calls: Vec::new(),
        error: None,
        finish_reason: None,
        usage: None,
        attempts: Vec::new(),
        key_id: None,
        cost: None,
        created_at_ms: now_ms(),
        started_at_ms: None,
        completed_at_ms: None,
        design: Default::default(),
    };
    (record, body.chat_request())
}

/// Reads the cursor to its end the way the SSE handler does (one shared frame per event),
/// signalling `ready` once it has replayed the log and waits for live events.
async fn follow(mut cursor: Cursor, ready: mpsc::UnboundedSender<()>) -> Seen {
    let mut seen = Seen {
        events: 0,
        last_kind: None,
        sse_bytes: 0,
        in_order: true,
        lags: 0,
        done_at: Instant::now(),
    };
    while let Some(event) = cursor.next().await {
        seen.in_order &= event.seq == seen.events + 1;
        seen.events += 1;
        seen.sse_bytes += event.sse_frame().len();
        seen.last_kind = Some(event.kind);
        seen.lags += u32::from(cursor.take_lag().is_some());
        if seen.events == 1 {
            let _ = ready.send(());
        }
    }
    seen.done_at = Instant::now();
    seen
}

fn event_path(c: &mut Criterion) {
    let harness = Harness::new();
    let mut group = c.benchmark_group("event_path");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(CHUNKS + 2));
    for n in SUBSCRIBERS {
        let checked = Cell::new(false);
        group.bench_with_input(BenchmarkId::new("subscribers", n), &n, |b, &n| {
            b.iter_custom(|iters| (0..iters).map(|_| harness.run(n).elapsed).sum());
            // After the first (warm-up) call, so the store and the threads are warm.
            if !checked.replace(true) {
                check(&harness, n);
            }
        });
    }
    group.finish();
}

/// One more run outside criterion's clock (every run asserts), reporting what criterion
/// cannot: flushes, lagging subscribers, and the CPU the whole process spent per event, which
/// on a shared machine is steadier than wall time.
fn check(harness: &Harness, subscribers: usize) {
    let before = Usage::now();
    let run = harness.run(subscribers);
    let used = Usage::now().since(&before);
    let events = CHUNKS + 2;
    eprintln!(
        "event_path/{subscribers}: check run: {events} events in {:.1} ms = {:.0} events/s; \
         {} flushes (~{:.0} events, {:.2} ms each); {} of {subscribers} subscribers lagged \
         ({} times) and read the log; CPU {:.2} µs/event ({:.0}% of one core); \
         {} involuntary context switches",
        run.elapsed.as_secs_f64() * 1e3,
        events as f64 / run.elapsed.as_secs_f64(),
        run.flushes,
        events as f64 / run.flushes.max(1) as f64,
        run.flush_time.as_secs_f64() * 1e3 / run.flushes.max(1) as f64,
        run.lagged_subscribers,
        run.lags,
        used.cpu.as_secs_f64() * 1e6 / events as f64,
        used.cpu.as_secs_f64() * 100.0 / run.elapsed.as_secs_f64(),
        used.involuntary_switches,
    );
}

/// The process's CPU time and preemptions so far (`getrusage`).
struct Usage {
    cpu: Duration,
    involuntary_switches: i64,
}

impl Usage {
    fn now() -> Usage {
        // SAFETY: getrusage only writes the struct it is given.
        let ru = unsafe {
            let mut ru = std::mem::zeroed::<libc::rusage>();
            libc::getrusage(libc::RUSAGE_SELF, &mut ru);
            ru
        };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        Usage {
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            involuntary_switches: ru.ru_nivcsw,
        }
    }

    fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            involuntary_switches: self.involuntary_switches - earlier.involuntary_switches,
        }
    }
}

criterion_group! {
    name = benches;
    // Plots of a two-sample `--quick` run make criterion's plotter panic; the numbers are
    // what matters here.
    config = Criterion::default().without_plots();
    targets = event_path
}
criterion_main!(benches);
