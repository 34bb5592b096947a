//! The authentication hook: every CONNECT is put to an [`Authenticator`]
//! before its session is located.
//!
//! The default, [`AllowAll`], admits every client (the embedded single-node
//! setup). The authentication and ACL issue plugs its implementations in
//! here (static users, HTTP callback, mTLS common name as username); MQTT 5
//! enhanced authentication (`Authentication Method`) is refused with
//! CONNACK 0x8C until an authenticator supports a method.

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
}

/// Admits everyone.
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, _: &Credentials<'_>) -> Verdict {
        Verdict::Allow
    }
}
