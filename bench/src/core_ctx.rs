//! What a harness core shares with its simulated clients: the run's
//! phase, the core's counters (read by the controller) and the figures its
//! clients record. `worker.rs` makes one per core and reads it when the
//! core is done; `client.rs` records into it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use hdrhistogram::Histogram;
use tokio::sync::watch;

use crate::scenario::{Kind, Plan};
use crate::track::{Integrity, Tracker};

/// Where every client is in the run; moves forward only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Clients connect and subscribe; nobody publishes.
    Connecting,
    /// Publishers publish (or, for `conn`, connections are held).
    Running,
    /// Publishers send their end marker and wait for their acks;
    /// subscribers keep receiving.
    Draining,
    /// Everyone disconnects.
    Stop,
}

/// When this process's run started: the origin of the per-second latency
/// histograms (set once, by [`run`]).
pub(crate) static RUN_START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Per-core counters, written by that core only, read by the controller.
#[derive(Debug, Default)]
pub struct Counters {
    pub attempted: AtomicU64,
    /// Currently connected (gauge).
    pub connected: AtomicU64,
    /// Clients that finished their first connect (and subscribe).
    pub ready: AtomicU64,
    pub failed: AtomicU64,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub received: AtomicU64,
    pub reconnects: AtomicU64,
    pub errors: AtomicU64,
    pub pubs_done: AtomicU64,
    pub p99_us: AtomicU64,
}

/// The state one harness core shares among its clients.
pub struct CoreCtx {
    pub plan: Arc<Plan>,
    pub counters: Arc<Counters>,
    pub phase_rx: watch::Receiver<Phase>,
    pub(crate) latency: RefCell<Histogram<u64>>,
    /// The same latencies by second since the run started, for the
    /// report's timeline (2 significant digits: ~1 % error, small enough
    /// to keep one a second).
    pub(crate) latency_by_sec: RefCell<BTreeMap<u32, Histogram<u64>>>,
    pub(crate) connect_latency: RefCell<Histogram<u64>>,
    /// Publish to its PUBACK/PUBCOMP, QoS 1/2 publishers only.
    pub(crate) ack_latency: RefCell<Histogram<u64>>,
    pub(crate) failures: RefCell<BTreeMap<String, u64>>,
    pub(crate) errors: RefCell<BTreeMap<String, u64>>,
    pub(crate) integrity: Cell<Integrity>,
    /// Shared-subscription members merge their bitmaps here, so that the
    /// group is checked as one subscriber.
    pub(crate) group: RefCell<Option<Tracker>>,
    /// Publisher index -> messages sent (end marker excluded).
    pub sent: RefCell<AHashMap<u32, u64>>,
    pub(crate) first_attempt_ns: Cell<u64>,
    pub(crate) last_connack_ns: Cell<u64>,
}

impl CoreCtx {
    pub fn phase(&self) -> Phase {
        *self.phase_rx.borrow()
    }

    pub fn note_attempt(&self) {
        self.counters.attempted.fetch_add(1, Relaxed);
        if self.first_attempt_ns.get() == 0 {
            self.first_attempt_ns.set(crate::payload::now_ns());
        }
    }

    pub fn connected(&self, took: Duration) {
        let _ = self
            .connect_latency
            .borrow_mut()
            .record((took.as_micros() as u64).clamp(1, crate::report::HIST_MAX_US));
        self.last_connack_ns.set(crate::payload::now_ns());
        self.counters.connected.fetch_add(1, Relaxed);
        self.counters.ready.fetch_add(1, Relaxed);
    }

    pub fn fail(&self, reason: String) {
        self.counters.failed.fetch_add(1, Relaxed);
        *self.failures.borrow_mut().entry(reason).or_default() += 1;
    }

    pub fn error(&self, reason: String) {
        self.counters.errors.fetch_add(1, Relaxed);
        *self.errors.borrow_mut().entry(reason).or_default() += 1;
    }

    pub fn record_latency(&self, us: u64) {
        let us = us.clamp(1, crate::report::HIST_MAX_US);
        let _ = self.latency.borrow_mut().record(us);
        let sec = RUN_START.get().map_or(0, |s| s.elapsed().as_secs() as u32);
        let _ = self
            .latency_by_sec
            .borrow_mut()
            .entry(sec)
            .or_insert_with(|| {
                Histogram::new_with_bounds(1, crate::report::HIST_MAX_US, 2)
                    .expect("valid histogram bounds")
            })
            .record(us);
    }

    /// A QoS 1/2 publish's time to its PUBACK/PUBCOMP.
    pub fn record_ack_latency(&self, us: u64) {
        let _ = self
            .ack_latency
            .borrow_mut()
            .record(us.clamp(1, crate::report::HIST_MAX_US));
    }

    /// A subscriber's final view of what it received.
    pub fn deposit(&self, tracker: Tracker) {
        if self.plan.kind == Kind::Sharedsub {
            let mut g = self.group.borrow_mut();
            match g.as_mut() {
                Some(g) => g.merge(&tracker),
                None => *g = Some(tracker),
            }
        } else {
            let mut i = self.integrity.get();
            i.add(&tracker.totals());
            self.integrity.set(i);
        }
    }
}
