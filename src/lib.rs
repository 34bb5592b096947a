//! Tether: a thread-per-core MQTT 3.1.1/5.0 long-connection gateway.
//!
//! See ARCHITECTURE.md for the bird's-eye view. Entry point for embedding
//! (and for the integration tests): [`Gateway::start`], or
//! [`Gateway::builder`] to inject the seams.
//!
//! # Layout
//!
//! This crate stands on `tether-core` (the codec, sessions, the ports and
//! the engine; re-exported here under their own names) and adds what
//! needs tokio, hyper, redis, rdkafka, argon2 or jsonwebtoken. Layers,
//! bottom to top, over the core's; the [`adapters`] never use the engine
//! (checked by `.ci/layers`, see ARCHITECTURE.md):
//!
//! | module | what |
//! | --- | --- |
//! | [`adapters`] | beside the engine: the users file, JWT and HTTP auth, the Redis session store, the Kafka bridge |
//! | [`reload`] | what SIGHUP changes in a running node (below the gateway, which hands it out) |
//! | [`http`] | the HTTP control plane, on its own thread |
//! | [`gateway`] | the embedding API: wires the engine, the adapters and the HTTP plane |
//! | [`systemd`], [`doctor`] | the binary's helpers: systemd's notify and watchdog, `tether doctor` |

pub use tether_core::{
    auth, bridge, codec, config, engine, error, id, limits, logging, net, session, stats, store,
    wallclock,
};

pub mod adapters;
pub mod doctor;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod reload;
pub mod systemd;

pub use config::Config;
pub use gateway::{Gateway, GatewayBuilder, Monitor, StartError};
