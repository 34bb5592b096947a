//! Tether's engine: the MQTT codec, what a session is, the ports the
//! engine asks (who may connect, what they may do, who owns a session,
//! where messages leave), and the thread-per-core engine that serves
//! connections on them.
//!
//! The `tether` crate stands on this one: it adds the adapters behind the
//! ports (the users file, JWT and HTTP auth, the Redis session store, the
//! Kafka bridge), the HTTP control plane and the embedding API
//! (`tether::Gateway`). This crate has no tokio, hyper, redis, rdkafka,
//! argon2 or jsonwebtoken in its dependency tree (`.ci/core-deps` checks),
//! so the engine and its tests build without them.
//!
//! # Layout
//!
//! Layers, bottom to top; a module uses only those above it in this list
//! (checked by `.ci/layers`, see ARCHITECTURE.md):
//!
//! | module | what |
//! | --- | --- |
//! | [`codec`] | sans-IO MQTT 3.1.1/5.0 codec |
//! | [`config`], [`limits`], [`id`], [`stats`], [`error`], [`logging`], [`wallclock`] | configuration, rlimits, identities, counters, error origins, log setup, Unix-epoch time |
//! | [`session`] | what a client keeps and what travels to it: `Session`, `Message`, `Delivery`, `Frame` |
//! | [`bridge`] | the boundary with threads that are not cores: inboxes, reply handles, the outbound port |
//! | [`auth`], [`store`] | the ports for authentication, authorization and the session directory, with their defaults |
//! | `mesh` | messages between cores and the channel policy |
//! | `shard` | everything one core owns, and the operations on it |
//! | `mqtt` | the semantics of each client packet, applied to a core |
//! | [`net`] | listeners, the connection task, TLS, WebSocket, the HTTP fallback |
//! | `runtime` | executors and each core's service tasks |
//! | [`engine`] | what the `tether` crate holds of the engine: the node's state, starting the cores |

pub mod auth;
pub mod bridge;
pub mod codec;
pub mod config;
pub mod engine;
pub mod error;
pub mod id;
mod input;
pub mod limits;
pub mod logging;
mod mesh;
mod mqtt;
pub mod net;
mod notify;
mod runtime;
pub mod session;
mod shard;
pub mod stats;
pub mod store;
pub mod wallclock;

pub use config::Config;
