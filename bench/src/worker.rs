//! One process's share of a run: a single-threaded runtime per harness core
//! (named `bench-core-N`, optionally pinned), each owning its clients, and
//! the controller on the calling thread that moves every client through the
//! phases and prints progress.
//!
//! Why tokio and not glommio, unlike the gateway: the harness must bind
//! each socket to a chosen source address before connecting (`--source-ips`),
//! which glommio 0.9 does not expose, and a harness that shares no I/O code
//! with the broker it measures cannot hide that broker's bugs. The shape is
//! the same: shared-nothing cores, no locks on the message path (per-core
//! counters are relaxed atomics read by the controller once a second).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use crate::client;
use crate::core_ctx::RUN_START;
use crate::core_ctx::{CoreCtx, Counters, Phase};
use crate::report::{new_hist, HistDump, Report, TimePoint};
use crate::sample::Sampler;
use crate::scenario::{Plan, Role};
use crate::track::{Integrity, Tracker};

/// Handshakes one core keeps pending when `--conn-rate 0`.
const MAX_PENDING_CONNECTS: usize = 512;
/// Drain ends once no message arrived for this long (and every publisher
/// finished), or when every expected message is in.
const QUIET: Duration = Duration::from_millis(500);
/// How often the controller checks for phase transitions.
const POLL: Duration = Duration::from_millis(20);
/// Extra time allowed for the connect phase beyond count / rate.
const CONNECT_SLACK: Duration = Duration::from_secs(5);

/// A point-in-time view of all cores (and, in the parent, all workers).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub clients: u64,
    pub connected: u64,
    pub ready: u64,
    pub failed: u64,
    pub published: u64,
    pub acked: u64,
    pub received: u64,
    pub reconnects: u64,
    pub errors: u64,
    pub pubs_done: u64,
    pub p99_us: u64,
}

impl Snapshot {
    pub fn of(counters: &[Arc<Counters>], clients: u64) -> Snapshot {
        let mut s = Snapshot {
            clients,
            ..Snapshot::default()
        };
        for c in counters {
            s.connected += c.connected.load(Relaxed);
            s.ready += c.ready.load(Relaxed);
            s.failed += c.failed.load(Relaxed);
            s.published += c.published.load(Relaxed);
            s.acked += c.acked.load(Relaxed);
            s.received += c.received.load(Relaxed);
            s.reconnects += c.reconnects.load(Relaxed);
            s.errors += c.errors.load(Relaxed);
            s.pubs_done += c.pubs_done.load(Relaxed);
            s.p99_us = s.p99_us.max(c.p99_us.load(Relaxed));
        }
        s
    }

    pub fn add(&mut self, o: &Snapshot) {
        self.clients += o.clients;
        self.connected += o.connected;
        self.ready += o.ready;
        self.failed += o.failed;
        self.published += o.published;
        self.acked += o.acked;
        self.received += o.received;
        self.reconnects += o.reconnects;
        self.errors += o.errors;
        self.pubs_done += o.pubs_done;
        self.p99_us = self.p99_us.max(o.p99_us);
    }

    /// The live progress line, rates from the previous snapshot `dt` ago.
    pub fn line(&self, prev: &Snapshot, dt: f64, elapsed: f64, phase: &str) -> String {
        let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / dt.max(1e-9);
        format!(
            "[{elapsed:6.1}s] {phase:<10} conns {}/{} failed {} | out {} in {} acked {} | p99 {} | reconnects {} errors {}",
            self.connected,
            self.clients,
            self.failed,
            si(rate(self.published, prev.published)),
            si(rate(self.received, prev.received)),
            si(rate(self.acked, prev.acked)),
            if self.p99_us == 0 { "-".into() } else { crate::report::fmt_us(self.p99_us) },
            self.reconnects,
            self.errors
        )
    }
}

/// `12.3k/s`, `1.20M/s`.
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k/s", v / 1e3)
    } else {
        format!("{v:.0}/s")
    }
}

/// What one core hands back when its clients are done.
struct CoreResult {
    latency: HistDump,
    latency_by_sec: BTreeMap<u32, HistDump>,
    connect_latency: HistDump,
    ack_latency: HistDump,
    failures: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    integrity: Integrity,
    group: Option<Tracker>,
    sent: AHashMap<u32, u64>,
    first_attempt_ns: u64,
    last_connack_ns: u64,
}

/// How this process reports: a human progress line, or JSON lines to a
/// parent (`--procs`) that sends `go` on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Standalone,
    Child,
}

/// Messages a worker process writes to its parent, one JSON object a line.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChildMsg {
    Progress(Snapshot),
    Ready,
    Report(Box<Report>),
}

fn emit(msg: &ChildMsg) {
    println!("{}", serde_json::to_string(msg).expect("serialisable"));
}

/// Runs this process's clients through every phase and returns its report.
pub fn run(plan: Arc<Plan>, mode: Mode) -> Result<Report, String> {
    let specs = plan.my_clients();
    let total = specs.len() as u64;
    let publishers = specs
        .iter()
        .filter(|s| matches!(s.role, Role::Publisher { .. }))
        .count() as u64;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = plan
        .opts
        .cores
        .unwrap_or((cpus / plan.opts.procs).max(1))
        .max(1)
        .min(specs.len().max(1));
    let mut per_core: Vec<Vec<_>> = (0..cores).map(|_| Vec::new()).collect();
    for (j, s) in specs.into_iter().enumerate() {
        per_core[j % cores].push(s);
    }
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let counters: Vec<Arc<Counters>> = (0..cores).map(|_| Arc::default()).collect();
    // Connection pacing: the global rate split over workers and cores.
    let core_rate = plan.opts.conn_rate / (plan.workers * cores) as f64;
    let mut threads = Vec::with_capacity(cores);
    for (k, clients) in per_core.into_iter().enumerate() {
        let plan = plan.clone();
        let counters = counters[k].clone();
        let phase_rx = phase_rx.clone();
        let cpu = plan.opts.cpus.get(k % plan.opts.cpus.len().max(1)).copied();
        let t = std::thread::Builder::new()
            .name(format!("bench-core-{k}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin(cpu);
                }
                core_main(plan, counters, phase_rx, clients, core_rate)
            })
            .map_err(|e| format!("spawning a harness thread: {e}"))?;
        threads.push(t);
    }

    let mut sampler = match (mode, plan.opts.target_pid) {
        (Mode::Standalone, Some(pid)) => Some(Sampler::new(pid)?),
        _ => None,
    };
    let started = Instant::now();
    let _ = RUN_START.set(started);
    let mut progress = Progress::new(mode, plan.opts.quiet, started);
    let mut timeline = Timeline::new(started);
    let snap = |c: &[Arc<Counters>]| Snapshot::of(c, total);

    // Connect phase: until every client is in (or failed), or time is up.
    let connect_budget = if plan.opts.conn_rate > 0.0 {
        Duration::from_secs_f64(total as f64 / (plan.opts.conn_rate / plan.workers as f64))
    } else {
        Duration::ZERO
    } + Duration::from_secs_f64(plan.opts.connect_timeout)
        + CONNECT_SLACK;
    loop {
        let s = snap(&counters);
        progress.tick(&s, "connecting");
        timeline.record(&s, "connecting", sampler.as_mut(), false);
        if s.ready + s.failed >= total || started.elapsed() > connect_budget {
            break;
        }
        sample(&mut sampler);
        std::thread::sleep(POLL);
    }
    if mode == Mode::Child {
        emit(&ChildMsg::Ready);
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("waiting for go: {e}"))?;
    }

    // Traffic (or hold) phase.
    let _ = phase_tx.send(Phase::Running);
    if let Some(s) = sampler.as_mut() {
        s.mark_go();
    }
    let go = Instant::now();
    let duration = Duration::from_secs_f64(plan.opts.duration);
    while go.elapsed() < duration {
        let s = snap(&counters);
        progress.tick(&s, "running");
        timeline.record(&s, "running", sampler.as_mut(), false);
        sample(&mut sampler);
        std::thread::sleep(POLL.min(duration.saturating_sub(go.elapsed())));
    }
    let in_window = snap(&counters);
    let traffic_secs = go.elapsed().as_secs_f64();
    if let Some(s) = sampler.as_mut() {
        s.mark_end();
    }

    // Drain: publishers finish; subscribers take what is still in flight.
    let _ = phase_tx.send(Phase::Draining);
    let drain_start = Instant::now();
    let mut last_received = (in_window.received, Instant::now());
    loop {
        let s = snap(&counters);
        progress.tick(&s, "draining");
        timeline.record(&s, "draining", sampler.as_mut(), false);
        if s.received != last_received.0 {
            last_received = (s.received, Instant::now());
        }
        let pubs_done = s.pubs_done >= publishers;
        let expected_in = match plan.multiplicity() {
            Some(m) if plan.workers == 1 && pubs_done => s.received >= s.published * m,
            _ => false,
        };
        let quiet = last_received.1.elapsed() >= QUIET;
        if pubs_done && (expected_in || quiet) {
            break;
        }
        if drain_start.elapsed().as_secs_f64() > plan.opts.drain {
            break;
        }
        std::thread::sleep(POLL);
    }
    let _ = phase_tx.send(Phase::Stop);
    let mut results = Vec::with_capacity(threads.len());
    for t in threads {
        results.push(
            t.join()
                .map_err(|_| "a harness thread panicked".to_string())?,
        );
    }
    let end = snap(&counters);
    progress.tick_final(&end);
    timeline.record(&end, "draining", sampler.as_mut(), true);

    let mut report = Report {
        scenario: plan.name.to_string(),
        broker: plan.addr.to_string(),
        settings: serde_json::to_value(&plan.opts).unwrap_or_default(),
        clients: total,
        traffic_secs,
        ..Report::default()
    };
    let mut group: Option<Tracker> = None;
    let mut sent = AHashMap::new();
    let mut latency = new_hist();
    let mut latency_by_sec: BTreeMap<u32, HistDump> = BTreeMap::new();
    let mut connect_latency = new_hist();
    let mut ack_latency = new_hist();
    for r in results {
        r.latency.add_to(&mut latency);
        for (sec, h) in r.latency_by_sec {
            latency_by_sec.entry(sec).or_default().merge(&h);
        }
        r.connect_latency.add_to(&mut connect_latency);
        r.ack_latency.add_to(&mut ack_latency);
        for (k, v) in r.failures {
            *report.connect.failures.entry(k).or_default() += v;
        }
        for (k, v) in r.errors {
            *report.errors.entry(k).or_default() += v;
        }
        report.integrity.add(&r.integrity);
        if let Some(g) = r.group {
            match group.as_mut() {
                Some(all) => all.merge(&g),
                None => group = Some(g),
            }
        }
        sent.extend(r.sent);
        let c = &mut report.connect;
        if r.first_attempt_ns != 0
            && (c.first_attempt_ns == 0 || r.first_attempt_ns < c.first_attempt_ns)
        {
            c.first_attempt_ns = r.first_attempt_ns;
        }
        c.last_connack_ns = c.last_connack_ns.max(r.last_connack_ns);
    }
    if let Some(g) = group {
        report.integrity.add(&g.totals());
    }
    report.latency_hist = HistDump::of(&latency);
    report.latency_by_sec = latency_by_sec;
    report.offered_per_sec = plan.offered_per_sec();
    if mode == Mode::Standalone {
        report.timeline = timeline.points;
    }
    report.connect.latency_hist = HistDump::of(&connect_latency);
    report.ack_latency_hist = HistDump::of(&ack_latency);
    report.connect.attempted = end.ready + end.failed;
    report.connect.connected = end.ready;
    report.connect.failed = end.failed;
    report.published = sent.values().sum();
    report.acked = end.acked;
    report.received = end.received;
    report.reconnects = end.reconnects;
    report.published_in_window = in_window.published;
    report.received_in_window = in_window.received;
    report.acked_in_window = in_window.acked;
    if plan.workers == 1 {
        apply_expected(&mut report, &plan);
    }
    report.target = sampler.map(|s| s.report(report.connect.connected));
    report.finish(plan.opts.qos);
    if mode == Mode::Child {
        emit(&ChildMsg::Report(Box::new(report.clone())));
    }
    Ok(report)
}

/// When this run holds both sides of every message and every client got
/// in, the exact number of deliveries is known: sent x multiplicity. That
/// also catches a lost tail that no subscriber could see.
pub fn apply_expected(report: &mut Report, plan: &Plan) {
    if let Some(m) = plan.multiplicity() {
        if report.connect.failed == 0 {
            let i = &mut report.integrity;
            i.expected = report.published * m;
            i.lost = i.expected.saturating_sub(i.distinct);
        }
    }
}

fn sample(s: &mut Option<Sampler>) {
    if let Some(s) = s.as_mut() {
        s.sample();
    }
}

/// Takes a [`TimePoint`] a second for `--report` (the process that prints
/// progress keeps it: a standalone run or the parent of `--procs`).
pub struct Timeline {
    started: Instant,
    last: Option<Instant>,
    pub points: Vec<TimePoint>,
}

impl Timeline {
    pub fn new(started: Instant) -> Timeline {
        Timeline {
            started,
            last: None,
            points: Vec::new(),
        }
    }

    /// Records a point when a second passed since the last one (or when
    /// `force`, for the final one).
    pub fn record(
        &mut self,
        s: &Snapshot,
        phase: &str,
        sampler: Option<&mut Sampler>,
        force: bool,
    ) {
        if !force
            && self
                .last
                .is_some_and(|l| l.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let (rss_bytes, cpu_percent) = sampler.map_or((None, None), |s| s.point());
        self.points.push(TimePoint {
            t: self.started.elapsed().as_secs_f64(),
            phase: phase.to_string(),
            connected: s.connected,
            published: s.published,
            acked: s.acked,
            received: s.received,
            rss_bytes,
            cpu_percent,
        });
        self.last = Some(Instant::now());
    }
}

/// Prints a progress line once a second (or a JSON snapshot to a parent).
struct Progress {
    mode: Mode,
    quiet: bool,
    started: Instant,
    last: Instant,
    prev: Snapshot,
}

impl Progress {
    fn new(mode: Mode, quiet: bool, started: Instant) -> Progress {
        Progress {
            mode,
            quiet,
            started,
            last: started,
            prev: Snapshot::default(),
        }
    }

    fn tick(&mut self, s: &Snapshot, phase: &str) {
        if self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.emit(s, phase);
    }

    fn tick_final(&mut self, s: &Snapshot) {
        if self.mode == Mode::Child {
            emit(&ChildMsg::Progress(*s));
        }
    }

    fn emit(&mut self, s: &Snapshot, phase: &str) {
        let dt = self.last.elapsed().as_secs_f64();
        match self.mode {
            Mode::Child => emit(&ChildMsg::Progress(*s)),
            Mode::Standalone if !self.quiet => eprintln!(
                "{}",
                s.line(&self.prev, dt, self.started.elapsed().as_secs_f64(), phase)
            ),
            Mode::Standalone => {}
        }
        self.prev = *s;
        self.last = Instant::now();
    }
}

/// One harness core: a current-thread runtime running its clients.
fn core_main(
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    phase_rx: watch::Receiver<Phase>,
    clients: Vec<crate::scenario::ClientSpec>,
    rate: f64,
) -> CoreResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let local = tokio::task::LocalSet::new();
    let ctx = Rc::new(CoreCtx {
        plan,
        counters,
        phase_rx,
        latency: RefCell::new(new_hist()),
        latency_by_sec: RefCell::default(),
        connect_latency: RefCell::new(new_hist()),
        ack_latency: RefCell::new(new_hist()),
        failures: RefCell::default(),
        errors: RefCell::default(),
        integrity: Cell::default(),
        group: RefCell::default(),
        sent: RefCell::default(),
        first_attempt_ns: Cell::new(0),
        last_connack_ns: Cell::new(0),
    });
    local.block_on(&rt, async {
        // p99 so far, for the progress line.
        let p99 = {
            let ctx = ctx.clone();
            tokio::task::spawn_local(async move {
                let mut every = tokio::time::interval(Duration::from_millis(500));
                while ctx.phase() != Phase::Stop {
                    every.tick().await;
                    let p = ctx.latency.borrow().value_at_quantile(0.99);
                    ctx.counters.p99_us.store(p, Relaxed);
                }
            })
        };
        let gate = Arc::new(Semaphore::new(MAX_PENDING_CONNECTS));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(clients.len());
        for (k, spec) in clients.into_iter().enumerate() {
            if ctx.phase() == Phase::Stop {
                break;
            }
            let permit = if rate > 0.0 {
                tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
                None
            } else {
                Some(gate.clone().acquire_owned().await.expect("semaphore open"))
            };
            tasks.push(tokio::task::spawn_local(client::run(
                spec,
                ctx.clone(),
                permit,
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
        p99.abort();
    });
    let latency = HistDump::of(&ctx.latency.borrow());
    let connect_latency = HistDump::of(&ctx.connect_latency.borrow());
    let ack_latency = HistDump::of(&ctx.ack_latency.borrow());
    let latency_by_sec = ctx
        .latency_by_sec
        .borrow()
        .iter()
        .map(|(sec, h)| (*sec, HistDump::of(h)))
        .collect();
    CoreResult {
        latency,
        latency_by_sec,
        connect_latency,
        ack_latency,
        failures: ctx.failures.take(),
        errors: ctx.errors.take(),
        integrity: ctx.integrity.get(),
        group: ctx.group.take(),
        sent: ctx.sent.take(),
        first_attempt_ns: ctx.first_attempt_ns.get(),
        last_connack_ns: ctx.last_connack_ns.get(),
    }
}

fn pin(cpu: usize) {
    // SAFETY: CPU_ZERO/CPU_SET write into the local, zero-initialised set;
    // sched_setaffinity reads it for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
