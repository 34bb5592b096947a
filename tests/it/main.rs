//! The integration tests that drive gateways (in this process or as node
//! processes) with independent clients, as one test binary.
//!
//! One binary rather than one per file: each test binary links the whole
//! gateway (about 65 MB with line tables), so 21 of them made most of a
//! clean test build's disk and link time (bench/RESULTS.md, "The clean test
//! build"). Tests still run two at a time, as before, and no test here
//! relies on being alone in its process: every one starts its own
//! gateways, processes, ports and directories.
//!
//! Run one file's tests with `cargo test --test it redis::` (or
//! `tests/run.sh --test it redis::`). The tests that stay binaries of their
//! own do so for a reason: `realtime.rs` times wake-ups and must not share
//! the machine with another test's load; `deb.rs` builds and installs the
//! package; `faults.rs` needs root and network namespaces; `cli.rs`,
//! `examples.rs` and `codec_interop.rs` drive the binary, the browser
//! examples or the codec alone, and are small.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod auth_http;
mod bridge;
mod cluster_bus;
mod drain;
mod fallback;
mod grpc;
mod hostile;
mod http;
mod kafka;
mod keepalive;
mod mqtt5;
mod pubsub;
mod receipts;
mod redis;
mod retained;
mod seams;
mod sessions;
mod shared;
mod slow_consumer;
mod tls;
mod websocket;
mod will;
