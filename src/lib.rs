//! Tether: a thread-per-core MQTT 3.1.1/5.0 long-connection gateway.
//!
//! See ARCHITECTURE.md for the bird's-eye view. Entry point for embedding
//! (and for the integration tests): [`Gateway::start`], or
//! [`Gateway::builder`] to inject the seams.
//!
//! # Layout
//!
//! Layers, bottom to top; a module uses only those above it in this list,
//! and the engine (`mesh` to `runtime`) and the [`adapters`] never use each
//! other (checked by `.ci/layers`, see ARCHITECTURE.md):
//!
//! | module | what |
//! | --- | --- |
//! | [`codec`] | sans-IO MQTT 3.1.1/5.0 codec |
//! | [`config`], [`limits`], [`id`], [`stats`], [`error`] | configuration, rlimits, identities, counters, error origins |
//! | [`session`] | what a client keeps and what travels to it: `Session`, `Message`, `Delivery`, `Frame` |
//! | [`bridge`] | the boundary with threads that are not cores: inboxes, reply handles, the outbound seam |
//! | [`auth`], [`store`] | the ports for authentication, authorization and the session directory, with their defaults |
//! | `mesh` | messages between cores and the channel policy |
//! | `shard` | everything one core owns, and the operations on it |
//! | `mqtt` | the semantics of each client packet, applied to a core |
//! | [`net`] | listeners, the connection task, TLS, WebSocket |
//! | `runtime` | executors and each core's service tasks |
//! | [`adapters`] | beside the engine: the users file, JWT and HTTP auth, the Redis session store, the Kafka bridge |
//! | [`reload`] | what SIGHUP changes in a running node (below the gateway, which hands it out) |
//! | [`http`] | the HTTP control plane, on its own thread |
//! | [`gateway`] | the embedding API: wires the engine, the adapters and the HTTP plane |

pub mod adapters;
pub mod auth;
pub mod bridge;
pub mod codec;
pub mod config;
pub mod doctor;
pub mod error;
pub mod gateway;
pub mod http;
pub mod id;
pub mod limits;
pub mod logging;
mod mesh;
mod mqtt;
pub mod net;
mod notify;
pub mod reload;
mod runtime;
pub mod session;
mod shard;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod wallclock;

pub use config::Config;
pub use gateway::{Gateway, GatewayBuilder, Monitor, StartError};
