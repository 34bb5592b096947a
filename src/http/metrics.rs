//! `GET /metrics`: every core's counters in the Prometheus text format
//! (version 0.0.4), labelled by core.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::core::Shared;

pub(crate) fn render(shared: &Shared) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let cores = &shared.cores;
    let _ = writeln!(
        out,
        "# HELP tether_up 1 while the gateway serves.\n# TYPE tether_up gauge\ntether_up 1"
    );
    let _ = writeln!(
        out,
        "# HELP tether_cores Executors (one per core).\n# TYPE tether_cores gauge\ntether_cores {}",
        cores.len()
    );
    let _ = writeln!(
        out,
        "# HELP tether_uptime_seconds Seconds since start.\n# TYPE tether_uptime_seconds gauge\ntether_uptime_seconds {}",
        shared.started.elapsed().as_secs()
    );
    gauge(
        &mut out,
        "connections",
        "Open MQTT connections.",
        cores.iter().map(|c| c.stats.connections.load(Relaxed)),
    );
    gauge(
        &mut out,
        "subscriptions",
        "Subscriptions indexed on the core.",
        cores.iter().map(|c| c.subscriptions.load(Relaxed) as i64),
    );
    gauge(
        &mut out,
        "retained_messages",
        "Retained messages in the core's replica.",
        cores.iter().map(|c| c.retained.load(Relaxed) as i64),
    );
    // Counters: one family per name, one sample per core.
    let mut families: Vec<(&'static str, Vec<u64>)> = Vec::new();
    for c in cores {
        let mut i = 0;
        c.stats.for_each_counter(|name, v| {
            if families.len() <= i {
                families.push((name, Vec::with_capacity(cores.len())));
            }
            families[i].1.push(v);
            i += 1;
        });
    }
    for (name, values) in families {
        let _ = writeln!(out, "# TYPE tether_{name}_total counter");
        for (core, v) in values.iter().enumerate() {
            let _ = writeln!(out, "tether_{name}_total{{core=\"{core}\"}} {v}");
        }
    }
    out
}

fn gauge(out: &mut String, name: &str, help: &str, values: impl Iterator<Item = i64>) {
    let _ = writeln!(
        out,
        "# HELP tether_{name} {help}\n# TYPE tether_{name} gauge"
    );
    for (core, v) in values.enumerate() {
        let _ = writeln!(out, "tether_{name}{{core=\"{core}\"}} {v}");
    }
}
