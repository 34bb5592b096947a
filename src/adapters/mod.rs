//! Adapters: the services beside the engine that implement its ports.
//!
//! The engine (`shard`, `mqtt`, `net`, `runtime`) knows only the ports in
//! `auth`, `store` and `bridge`: traits, their data, and answers through
//! [`ReplyTo`](crate::bridge::ReplyTo) handles. Everything here stands on
//! those ports and on the libraries the engine never sees (tokio, hyper,
//! redis, rdkafka, argon2, jsonwebtoken), runs its slow work on threads of
//! its own, and is wired to the engine by the gateway (`gateway.rs`).
//! Adapters never use each other, nor the engine (`.ci/layers` checks);
//! they share only the skeleton of their threads (`thread.rs`).
//!
//! | adapter | port | thread |
//! | --- | --- | --- |
//! | [`auth`] | `Authenticator`, `Authorizer` | `tether-auth`, `tether-auth-http` |
//! | [`redis`] | `SessionStore` | `tether-redis` |
//! | [`kafka`] | `Outbound`, the inboxes | `tether-kafka`, `tether-kafka-in` |
//! | [`upstream`] | `Outbound` (in front of the Kafka bridge) | `tether-upstream` |

pub mod auth;
pub mod kafka;
pub mod redis;
mod thread;
pub mod upstream;
