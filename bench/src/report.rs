//! What a run measured: the [`Report`] (printed, written with `--json`, and
//! passed from worker processes to their parent) and its merging.
//!
//! Histograms travel as their recorded `(value, count)` pairs so that the
//! parent of `--procs N` merges exact distributions, not percentiles.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::track::Integrity;

/// Histograms record microseconds from 1 µs to this bound, 3 significant
/// digits (0.1 % error), which costs ~30 KiB each.
pub const HIST_MAX_US: u64 = 60_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// A histogram as recorded `(value, count)` pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistDump(pub Vec<(u64, u64)>);

impl HistDump {
    pub fn of(h: &Histogram<u64>) -> HistDump {
        HistDump(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &(v, c) in &self.0 {
            // Values come from a histogram with the same bounds.
            let _ = h.record_n(v.clamp(1, HIST_MAX_US), c);
        }
    }

    pub fn merge(&mut self, other: &HistDump) {
        let mut h = self.histogram();
        other.add_to(&mut h);
        *self = HistDump::of(&h);
    }

    pub fn histogram(&self) -> Histogram<u64> {
        let mut h = new_hist();
        self.add_to(&mut h);
        h
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Connection establishment figures (first connects only; reconnects of a
/// storm are counted in [`Report::reconnects`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectReport {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    /// Failures by reason ("tcp: connection refused", "CONNACK 0x87", ...).
    pub failures: BTreeMap<String, u64>,
    /// Connections per second, from the first attempt to the last CONNACK.
    pub rate_per_sec: f64,
    pub latency_us: Percentiles,
    pub first_attempt_ns: u64,
    pub last_connack_ns: u64,
    pub latency_hist: HistDump,
}

/// The broker process, sampled from /proc with `--target-pid`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetReport {
    pub pid: u32,
    /// RSS before the first connection.
    pub rss_before_bytes: u64,
    /// RSS at the end of the hold/traffic phase.
    pub rss_held_bytes: u64,
    pub rss_peak_bytes: u64,
    /// `(rss_held - rss_before) / connected`.
    pub rss_per_connection_bytes: f64,
    /// CPU use over the connect phase, in percent of one core.
    pub cpu_percent_connect: f64,
    /// CPU use over the traffic (or hold) phase, in percent of one core.
    pub cpu_percent: f64,
}

/// One second of a run, for the timeline of `--report`: the counters are
/// cumulative (rates are the differences between points), the broker
/// figures come from `--target-pid`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TimePoint {
    /// Seconds since the run started (connect phase included).
    pub t: f64,
    /// "connecting", "running" or "draining".
    pub phase: String,
    pub connected: u64,
    pub published: u64,
    pub acked: u64,
    pub received: u64,
    /// The broker's RSS at this point.
    pub rss_bytes: Option<u64>,
    /// The broker's CPU since the previous point, in percent of one core.
    pub cpu_percent: Option<f64>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub broker: String,
    /// The settings the run used (`tether-bench` arguments).
    pub settings: serde_json::Value,
    pub clients: u64,
    pub connect: ConnectReport,
    /// Length of the traffic (or hold) phase in seconds.
    pub traffic_secs: f64,
    /// Distinct messages the publishers sent (end markers excluded).
    pub published: u64,
    /// QoS 1/2 publishes the broker acknowledged.
    pub acked: u64,
    /// Messages the subscribers received, duplicates included.
    pub received: u64,
    pub integrity: Integrity,
    /// Counts at the end of the traffic phase: the rates below divide these
    /// by `traffic_secs`, so a broker that delivers late is not flattered
    /// by the drain.
    pub published_in_window: u64,
    pub received_in_window: u64,
    pub acked_in_window: u64,
    pub published_per_sec: f64,
    pub received_per_sec: f64,
    pub acked_per_sec: f64,
    /// End-to-end latency (publisher send to subscriber receipt).
    pub latency_us: Percentiles,
    pub latency_hist: HistDump,
    /// QoS 1/2 publish to its PUBACK/PUBCOMP, as the publisher sees it.
    #[serde(default)]
    pub ack_latency_us: Percentiles,
    #[serde(default)]
    pub ack_latency_hist: HistDump,
    pub reconnects: u64,
    /// Connections lost after they were established, by reason.
    pub errors: BTreeMap<String, u64>,
    pub target: Option<TargetReport>,
    /// Broken promises of the QoS in use (empty on a clean run).
    pub violations: Vec<String>,
    /// Notes on figures that are not violations (QoS 0 loss, allowed
    /// QoS 1 duplicates).
    pub notes: Vec<String>,
    /// Messages/s the publishers were asked to send (rate x publishers;
    /// 0 when they send flat out).
    #[serde(default)]
    pub offered_per_sec: f64,
    /// One point a second, taken by the process that prints the progress
    /// (the parent of `--procs`).
    #[serde(default)]
    pub timeline: Vec<TimePoint>,
    /// End-to-end latency by second since the run started (workers of
    /// `--procs` start within milliseconds of each other; merged by key).
    #[serde(default)]
    pub latency_by_sec: BTreeMap<u32, HistDump>,
}

impl Report {
    /// Folds a worker process's report into this one.
    pub fn merge(&mut self, o: &Report) {
        self.clients += o.clients;
        let c = &mut self.connect;
        c.attempted += o.connect.attempted;
        c.connected += o.connect.connected;
        c.failed += o.connect.failed;
        for (k, v) in &o.connect.failures {
            *c.failures.entry(k.clone()).or_default() += v;
        }
        c.first_attempt_ns = match (c.first_attempt_ns, o.connect.first_attempt_ns) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        c.last_connack_ns = c.last_connack_ns.max(o.connect.last_connack_ns);
        c.latency_hist.merge(&o.connect.latency_hist);
        self.traffic_secs = self.traffic_secs.max(o.traffic_secs);
        self.published += o.published;
        self.acked += o.acked;
        self.received += o.received;
        self.published_in_window += o.published_in_window;
        self.received_in_window += o.received_in_window;
        self.acked_in_window += o.acked_in_window;
        self.integrity.add(&o.integrity);
        self.latency_hist.merge(&o.latency_hist);
        self.ack_latency_hist.merge(&o.ack_latency_hist);
        for (sec, h) in &o.latency_by_sec {
            self.latency_by_sec.entry(*sec).or_default().merge(h);
        }
        self.reconnects += o.reconnects;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    /// Computes the derived figures (rates, percentiles, violations) once
    /// the counts are final. `qos` is the QoS every message travelled at.
    pub fn finish(&mut self, qos: u8) {
        let c = &mut self.connect;
        c.latency_us = Percentiles::of(&c.latency_hist.histogram());
        let span = c.last_connack_ns.saturating_sub(c.first_attempt_ns) as f64 / 1e9;
        c.rate_per_sec = if span > 0.0 {
            c.connected as f64 / span
        } else {
            0.0
        };
        self.latency_us = Percentiles::of(&self.latency_hist.histogram());
        self.ack_latency_us = Percentiles::of(&self.ack_latency_hist.histogram());
        if self.traffic_secs > 0.0 {
            self.published_per_sec = self.published_in_window as f64 / self.traffic_secs;
            self.received_per_sec = self.received_in_window as f64 / self.traffic_secs;
            self.acked_per_sec = self.acked_in_window as f64 / self.traffic_secs;
        }
        self.violations.clear();
        self.notes.clear();
        let i = self.integrity;
        let lost = format!("{} of {} expected messages lost", i.lost, i.expected);
        let dups = format!("{} duplicate deliveries", i.duplicates);
        let reord = format!("{} messages out of order", i.reordered);
        if i.reordered > 0 {
            self.violations.push(reord);
        }
        match qos {
            0 => {
                if i.lost > 0 {
                    self.notes.push(format!("{lost} (allowed at QoS 0)"));
                }
                if i.duplicates > 0 {
                    self.violations.push(dups);
                }
            }
            1 => {
                if i.lost > 0 {
                    self.violations.push(lost);
                }
                if i.duplicates > 0 {
                    self.notes
                        .push(format!("{dups} (allowed at QoS 1 after a reconnect)"));
                }
            }
            _ => {
                if i.lost > 0 {
                    self.violations.push(lost);
                }
                if i.duplicates > 0 {
                    self.violations.push(dups);
                }
            }
        }
    }

    /// The human summary printed at the end of a run.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let c = &self.connect;
        let _ = writeln!(s, "== {} against {}", self.scenario, self.broker);
        let _ = writeln!(
            s,
            "connections  {} of {} connected, {} failed, {:.0}/s; connect latency {}",
            c.connected,
            c.attempted,
            c.failed,
            c.rate_per_sec,
            fmt_pct(&c.latency_us)
        );
        for (reason, n) in &c.failures {
            let _ = writeln!(s, "  failed: {n} x {reason}");
        }
        if self.published + self.received > 0 {
            let _ = writeln!(
                s,
                "messages     {} published ({:.0}/s), {} acked ({:.0}/s), {} received ({:.0}/s); rates over the {:.1} s traffic window",
                self.published,
                self.published_per_sec,
                self.acked,
                self.acked_per_sec,
                self.received,
                self.received_per_sec,
                self.traffic_secs
            );
            let i = &self.integrity;
            let _ = writeln!(
                s,
                "integrity    expected {}, distinct {}, lost {}, duplicates {}, reordered {}",
                i.expected, i.distinct, i.lost, i.duplicates, i.reordered
            );
            let _ = writeln!(s, "latency      {}", fmt_pct(&self.latency_us));
            if self.ack_latency_us.count > 0 {
                let _ = writeln!(s, "ack latency  {}", fmt_pct(&self.ack_latency_us));
            }
        }
        if self.reconnects > 0 || !self.errors.is_empty() {
            let _ = writeln!(s, "reconnects   {}", self.reconnects);
            for (reason, n) in &self.errors {
                let _ = writeln!(s, "  dropped: {n} x {reason}");
            }
        }
        if let Some(t) = &self.target {
            let _ = writeln!(
                s,
                "broker pid {} RSS {:.1} MiB -> {:.1} MiB (peak {:.1} MiB): {:.0} B per connection; CPU {:.1} % connecting, {:.1} % after",
                t.pid,
                t.rss_before_bytes as f64 / 1048576.0,
                t.rss_held_bytes as f64 / 1048576.0,
                t.rss_peak_bytes as f64 / 1048576.0,
                t.rss_per_connection_bytes,
                t.cpu_percent_connect,
                t.cpu_percent
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        for v in &self.violations {
            let _ = writeln!(s, "VIOLATION: {v}");
        }
        s
    }
}

fn fmt_pct(p: &Percentiles) -> String {
    if p.count == 0 {
        return "n/a".into();
    }
    format!(
        "p50 {} p90 {} p99 {} p99.9 {} max {}",
        fmt_us(p.p50),
        fmt_us(p.p90),
        fmt_us(p.p99),
        fmt_us(p.p999),
        fmt_us(p.max)
    )
}

/// `850us`, `1.25ms`, `3.2s`.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}us"),
        1_000..=999_999 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_dumps_merge_exactly() {
        let mut a = new_hist();
        let mut b = new_hist();
        for v in 1..=1000 {
            a.record(v).unwrap();
        }
        for v in 1001..=2000 {
            b.record(v).unwrap();
        }
        let mut d = HistDump::of(&a);
        d.merge(&HistDump::of(&b));
        let m = d.histogram();
        assert_eq!(m.len(), 2000);
        let mut both = a.clone();
        both.add(&b).unwrap();
        assert_eq!(Percentiles::of(&m), Percentiles::of(&both));
        assert_eq!(m.value_at_quantile(0.5), both.value_at_quantile(0.5));
    }

    #[test]
    fn merge_sums_counts_and_spans_connect_times() {
        let mut a = Report::default();
        a.connect.connected = 10;
        a.connect.first_attempt_ns = 2_000_000_000;
        a.connect.last_connack_ns = 3_000_000_000;
        a.integrity.distinct = 5;
        let mut b = a.clone();
        b.connect.first_attempt_ns = 1_000_000_000;
        a.merge(&b);
        a.finish(1);
        assert_eq!(a.connect.connected, 20);
        assert_eq!(a.connect.rate_per_sec, 10.0);
        assert_eq!(a.integrity.distinct, 10);
    }

    #[test]
    fn violations_follow_the_qos() {
        let mut r = Report {
            integrity: Integrity {
                expected: 10,
                distinct: 9,
                duplicates: 1,
                reordered: 0,
                lost: 1,
            },
            ..Report::default()
        };
        r.finish(0);
        assert_eq!(r.violations.len(), 1, "QoS 0: loss allowed, duplicates not");
        r.finish(1);
        assert_eq!(r.violations.len(), 1, "QoS 1: duplicates allowed, loss not");
        r.finish(2);
        assert_eq!(r.violations.len(), 2);
        r.integrity.reordered = 1;
        r.finish(1);
        assert_eq!(r.violations.len(), 2, "order is promised at every QoS");
    }
}
