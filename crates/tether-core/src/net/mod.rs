//! The transports: the listeners (one SO_REUSEPORT socket per core and
//! transport), the connection task that drives one socket, and its
//! optional layers, TLS and WebSocket framing. Everything about MQTT and
//! sessions is behind the connection task's calls into `crate::mqtt` and
//! `crate::shard`.

pub mod conn;
pub mod driver;
pub mod fallback;
pub mod listener;
pub mod tickets;
pub mod tls;
pub mod ws;

pub use listener::Transport;
