//! The authentication hook: every CONNECT is put to an [`Authenticator`]
//! before its session is located.
//!
//! The default, [`AllowAll`], admits every client (the embedded single-node
//! setup). The authentication and ACL issue plugs its implementations in
//! here (static users, HTTP callback, mTLS common name as username). MQTT 5
//! enhanced authentication runs through [`Authenticator::enhanced`] and
//! [`AuthExchange`]; a method no authenticator supports gets CONNACK 0x8C.

use std::net::SocketAddr;

/// What an authenticator sees of a CONNECT.
#[derive(Debug)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: SocketAddr,
}

/// An authenticator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse with this MQTT 5 CONNACK reason code (mapped to the closest
    /// 3.1.1 return code for 3.1.1 clients), e.g. 0x86 bad credentials,
    /// 0x87 not authorized, 0x8A banned.
    Deny(u8),
}

/// Decides whether a client may connect. Called on the connection's core for
/// every CONNECT, so an implementation must answer without blocking.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, who: &Credentials<'_>) -> Verdict;

    /// Starts an enhanced-authentication exchange for `method`, or `None`
    /// when the method is not supported (CONNACK 0x8C).
    fn enhanced(&self, _method: &str, _who: &Credentials<'_>) -> Option<Box<dyn AuthExchange>> {
        None
    }
}

/// Admits everyone.
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, _: &Credentials<'_>) -> Verdict {
        Verdict::Allow
    }
}

/// One MQTT 5 enhanced-authentication exchange (4.12) on one connection:
/// CONNECT (or a re-authentication AUTH 0x19) starts it, AUTH 0x18 packets
/// continue it, CONNACK (or AUTH 0x00) ends it.
pub trait AuthExchange {
    /// Takes the client's next Authentication Data.
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep;
}

/// The next move in an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send this challenge (AUTH 0x18) and wait for the client's answer.
    Continue(bytes::Bytes),
    /// Authenticated; optional final data for the CONNACK / AUTH 0x00.
    Success(Option<bytes::Bytes>),
    /// Refuse with this reason code (CONNACK, or DISCONNECT when re-authenticating).
    Fail(u8),
}
