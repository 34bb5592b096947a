//! Tether: a thread-per-core MQTT 3.1.1/5.0 long-connection gateway.
//!
//! See ARCHITECTURE.md for the bird's-eye view. Entry point for embedding
//! (and for the integration tests): [`Gateway::start`].

pub mod alias;
pub mod auth;
pub mod bridge;
pub mod codec;
pub mod config;
mod conn;
pub mod core;
mod handler;
pub mod http;
pub mod id;
pub mod interest;
pub mod limits;
pub mod listener;
pub mod retained;
pub mod runtime;
pub mod session;
pub mod shared;
pub mod stats;
pub mod store;
pub mod subs;
pub mod tls;
pub mod wheel;
pub mod ws;

pub use config::Config;
pub use runtime::{Gateway, StartError};
