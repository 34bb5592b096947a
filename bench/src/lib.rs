//! `tether-bench`: a load harness for MQTT 3.1.1/5.0 brokers that checks
//! what it measures.
//!
//! Code map:
//! - [`cli`]: the scenarios and their options.
//! - [`scenario`]: a validated [`scenario::Plan`]; who client `i` is.
//! - [`worker`]: one process's cores, phases and progress line.
//! - [`client`]: one simulated MQTT client (the hot path).
//! - [`payload`]: the 16-byte header every message carries.
//! - [`track`]: loss, duplicate and order checks per publisher.
//! - [`report`]: figures, histograms, merging and the summary.
//! - [`procs`]: `--procs N` worker processes and their merge.
//! - [`sample`]: `--target-pid` RSS and CPU sampling.
//! - [`wsframe`]: `--transport ws|wss` (MQTT over WebSocket, client side).
//! - [`tls`]: `--transport tls|wss` (client TLS) and the client [`tls::Stream`].
//! - [`kafka`]: `tether-bench kafka produce|tail|flood`, a plain Kafka client.
//! - [`visibility`]: `tether-bench visibility`, how soon a SUBSCRIBE takes
//!   effect for a publisher on another core.

pub mod cli;
pub mod client;
pub mod core_ctx;
pub mod html;
pub mod kafka;
pub mod payload;
pub mod procs;
pub mod report;
pub mod sample;
pub mod scenario;
pub mod tls;
pub mod track;
pub mod visibility;
pub mod worker;
pub mod wsframe;

use std::sync::Arc;

pub use report::Report;
pub use scenario::Plan;

/// Runs one scenario in this process (or, with `--procs`, in workers) and
/// returns the finished report.
pub fn run(plan: Plan) -> Result<Report, String> {
    if plan.opts.procs > 1 && plan.opts.worker.is_none() {
        return procs::run_parent(&plan);
    }
    let mode = if plan.opts.worker.is_some() {
        worker::Mode::Child
    } else {
        worker::Mode::Standalone
    };
    worker::run(Arc::new(plan), mode)
}
