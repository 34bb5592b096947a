//! The engine's door for the layers above it: what the `tether` crate's
//! gateway, HTTP plane and reload hold of the engine, and nothing else.
//!
//! - [`NodeState`]: what every core of the node shares (the seams, the
//!   cores' visible counters and gauges, admission, bans, retained totals).
//! - [`mesh`], [`CoreStart`] and [`spawn`]: building the cores' channels
//!   and starting one executor per core.
//!
//! A core's own state (`shard::Core`), the cross-core messages
//! (`mesh::CoreMsg`) and the packet semantics (`mqtt`) stay private to
//! this crate.

pub use crate::runtime::{mesh, spawn, CoreStart, Mesh};
pub use crate::shard::{Admission, CoreVisible, NodeState};
