//! `GET /metrics`: every core's counters, gauges and histograms in the
//! Prometheus text format (version 0.0.4), labelled by core.
//!
//! Counters and the latency histograms are read straight from the cores'
//! atomics; session gauges (queues, in-flight windows) are asked of each
//! core over the bridge, so a core that cannot answer in time is left out
//! of those families (and `tether_scrape_cores_missing` says so) rather
//! than failing the scrape.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::bridge::SessionGauges;
use crate::engine::NodeState;
use crate::net::Transport;
use crate::stats::{Figure, Histogram, LATENCY_BUCKETS_US};

/// The per-core session gauges: name, help, and the figure of a core's
/// [`SessionGauges`].
type SessionGauge = (&'static str, &'static str, fn(&SessionGauges) -> u64);

const SESSION_GAUGES: [SessionGauge; 10] = [
    ("sessions_online", "Sessions with a connection.", |g| {
        g.online
    }),
    (
        "sessions_offline",
        "Persistent sessions waiting for their client.",
        |g| g.offline,
    ),
    (
        "queued_messages",
        "QoS 1/2 messages waiting for a session's in-flight window.",
        |g| g.queued,
    ),
    (
        "inflight_messages",
        "QoS 1/2 messages sent and not yet acknowledged.",
        |g| g.inflight,
    ),
    (
        "inflight_window_capacity",
        "Sum of the online sessions' in-flight windows (window use = inflight_messages / this).",
        |g| g.inflight_capacity,
    ),
    (
        "outbox_bytes",
        "Encoded bytes waiting to be written to clients.",
        |g| g.outbox_bytes,
    ),
    (
        "pending_verdicts",
        "CONNECTs waiting for the authenticator's slow path (bound: runtime.max_pending_verdicts).",
        |g| g.pending_verdicts,
    ),
    (
        "pending_claims",
        "Client-id claims waiting for the session store (bound: runtime.max_pending_claims).",
        |g| g.pending_claims,
    ),
    (
        "pending_permits",
        "PUBLISH/SUBSCRIBE waiting for the authorizer's slow path (bound: runtime.max_pending_permits).",
        |g| g.pending_permits,
    ),
    (
        "outbound_inflight",
        "Messages handed to the outbound bridge and not yet acknowledged (bound: runtime.max_outbound_inflight).",
        |g| g.outbound_inflight,
    ),
];

/// Renders the page; `gauges[core]` is `None` for a core that did not
/// answer.
pub(crate) fn render(
    node: &NodeState,
    gauges: &[Option<SessionGauges>],
    http: Vec<Figure>,
) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let cores = &node.cores;
    single(&mut out, "up", "1 while the gateway serves.", 1);
    single(
        &mut out,
        "cores",
        "Executors (one per core).",
        cores.len() as u64,
    );
    single(
        &mut out,
        "uptime_seconds",
        "Seconds since start.",
        node.started.elapsed().as_secs(),
    );
    header(
        &mut out,
        "connections",
        "Open connections by core and the listener they came in on.",
        "gauge",
    );
    for (core, c) in cores.iter().enumerate() {
        for t in Transport::ALL {
            let n = c.open_by_transport[t.index()].load(Relaxed);
            let _ = writeln!(
                out,
                "tether_connections{{core=\"{core}\",listener=\"{}\"}} {n}",
                t.name()
            );
        }
    }
    single(
        &mut out,
        "users",
        "Distinct usernames with at least one open connection.",
        cores
            .iter()
            .map(|c| c.users.load(Relaxed).max(0) as u64)
            .sum(),
    );
    per_core(
        &mut out,
        "subscriptions",
        "Subscriptions indexed on the core.",
        cores
            .iter()
            .map(|c| Some(c.subscriptions.load(Relaxed) as u64)),
    );
    per_core(
        &mut out,
        "retained_messages",
        "Retained messages in the core's replica.",
        cores.iter().map(|c| Some(c.retained.load(Relaxed) as u64)),
    );
    for (name, help, field) in SESSION_GAUGES {
        per_core(
            &mut out,
            name,
            help,
            gauges.iter().map(|g| g.as_ref().map(field)),
        );
    }
    single(
        &mut out,
        "scrape_cores_missing",
        "Cores that did not report session gauges for this scrape.",
        gauges.iter().filter(|g| g.is_none()).count() as u64,
    );
    if node.departures.is_on() {
        single(
            &mut out,
            "cluster_departures",
            "Persistent sessions that left this node for another, kept so the cluster bus hands on copies still on their way here.",
            node.departures.len() as u64,
        );
        let name = "cluster_departures_overflowed_total";
        header(
            &mut out,
            name,
            "Departures forgotten early because too many were kept: copies for them are no longer handed on.",
            "counter",
        );
        let _ = writeln!(
            out,
            "tether_{name} {}",
            node.departures.overflowed.load(Relaxed)
        );
    }
    histogram(
        &mut out,
        "fanout_latency_seconds",
        "From a message's arrival to its PUBLISH being written for a subscriber (live deliveries).",
        per_core_label(cores.iter().map(|c| &c.fanout_latency)),
    );
    histogram(
        &mut out,
        "loop_lag_seconds",
        "How late the core's timer tick ran: time its executor was stalled by other work.",
        per_core_label(cores.iter().map(|c| &c.loop_lag)),
    );
    // The bridges' own figures: the session store (Redis requests) and the
    // outbound bridge (Kafka); then the HTTP plane's.
    for (name, help, v, counter) in node
        .store
        .figures()
        .into_iter()
        .chain(node.outbound.figures())
        .chain(node.auth.figures())
        .chain(node.authz.figures())
        .chain(http)
    {
        let name = if counter {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        let kind = if counter { "counter" } else { "gauge" };
        header(&mut out, &name, help, kind);
        let _ = writeln!(out, "tether_{name} {v}");
    }
    for g in node.outbound.labelled() {
        header(&mut out, g.name, g.help, "gauge");
        for (labels, v) in &g.values {
            let _ = writeln!(out, "tether_{}{{{labels}}} {v}", g.name);
        }
    }
    if let Some(h) = node.store.latency() {
        histogram(
            &mut out,
            "store_latency_seconds",
            "Round trips of the session store's claims and write batches.",
            std::iter::once((String::new(), h)),
        );
    }
    if let Some(h) = node.auth.latency() {
        histogram(
            &mut out,
            "auth_callback_latency_seconds",
            "Round trip of the authenticator's calls to its service (auth.http).",
            std::iter::once((String::new(), h)),
        );
    }
    if let Some(h) = node.outbound.latency() {
        histogram(
            &mut out,
            "outbound_latency_seconds",
            "From hand-over to the outbound bridge to its destination's confirmation (Kafka's delivery report).",
            std::iter::once((String::new(), h)),
        );
    }
    // Counters: one family per name, one sample per core.
    let mut families: Vec<(&'static str, &'static str, Vec<u64>)> = Vec::new();
    for c in cores {
        let mut i = 0;
        c.stats.for_each_counter(|name, help, v| {
            if families.len() <= i {
                families.push((name, help, Vec::with_capacity(cores.len())));
            }
            families[i].2.push(v);
            i += 1;
        });
    }
    for (name, help, values) in families {
        let name = format!("{name}_total");
        per_core(&mut out, &name, help, values.into_iter().map(Some));
    }
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(
        out,
        "# HELP tether_{name} {help}\n# TYPE tether_{name} {kind}"
    );
}

fn single(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "tether_{name} {v}");
}

/// One sample per core that has a value. Names ending in `_total` are
/// counters, the rest gauges.
fn per_core(out: &mut String, name: &str, help: &str, values: impl Iterator<Item = Option<u64>>) {
    let kind = if name.ends_with("_total") {
        "counter"
    } else {
        "gauge"
    };
    header(out, name, help, kind);
    for (core, v) in values.enumerate() {
        if let Some(v) = v {
            let _ = writeln!(out, "tether_{name}{{core=\"{core}\"}} {v}");
        }
    }
}

/// `core="N"` labels for per-core histograms.
fn per_core_label<'a>(
    hs: impl Iterator<Item = &'a Histogram>,
) -> impl Iterator<Item = (String, &'a Histogram)> {
    hs.enumerate()
        .map(|(core, h)| (format!("core=\"{core}\""), h))
}

/// Histograms, each with its labels (`core="0"`, or none).
fn histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    labelled: impl Iterator<Item = (String, &'a Histogram)>,
) {
    header(out, name, help, "histogram");
    for (labels, h) in labelled {
        let sep = if labels.is_empty() { "" } else { "," };
        let (cumulative, sum_us) = h.cumulative();
        for (i, n) in cumulative.iter().enumerate() {
            let le = match LATENCY_BUCKETS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "tether_{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
        }
        let total = cumulative[cumulative.len() - 1];
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "tether_{name}_sum{braces} {}", sum_us as f64 / 1e6);
        let _ = writeln!(out, "tether_{name}_count{braces} {total}");
    }
}
