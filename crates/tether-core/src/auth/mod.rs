//! Who may connect ([`Authenticator`]) and what they may do
//! ([`Authorizer`]).
//!
//! Both are consulted on the connection's core, so both have a fast path
//! that must answer from memory (rules, caches) and may instead answer
//! "ask": the core then parks what waits (the CONNECT, or the PUBLISH or
//! SUBSCRIBE and everything the client sent after it) and calls the slow
//! path with a [`ReplyTo`] that an HTTP callback or a Redis lookup on a
//! bridge thread answers later. The core keeps serving everyone else
//! meanwhile; pending requests per core are bounded (`runtime.max_pending_*`).
//!
//! Authenticators form a chain per listener ([`AuthChain`]): each answers
//! allow, deny or "not mine" ([`Verdict::Pass`]), and the next one is asked
//! after a pass. An allow may carry [`Grants`] for that connection alone
//! (ACL rules, superuser, a connection limit) from a JWT claim or an HTTP
//! answer; the authorizer (`adapters::auth::Policy`) applies them before the
//! node's rules.
//!
//! This module is the port: the traits, their data, the ACL rules and the
//! defaults. An empty chain admits every client (the embedded single-node
//! setup); [`DenyLists`] applies `mqtt.deny_subscribe` and
//! `mqtt.deny_publish`. The adapters that `[auth]` configures (the users
//! file, JWT, the HTTP callback, the policy and its caches) live beside the
//! engine in `adapters::auth`. MQTT 5 enhanced authentication runs
//! through [`Authenticator::enhanced`] and [`AuthExchange`]; a method no
//! authenticator supports gets CONNACK 0x8C.

pub mod acl;
mod authorizer;
pub mod bans;
mod chain;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::bridge::{ReplyTo, Unanswered};
use crate::codec::reason;

pub use crate::id::Source;
pub use authorizer::{AclRequest, Action, Authorizer, DenyLists, OwnedAclRequest, Permit};
pub use chain::{AuthChain, Step};

/// What an authenticator sees of a CONNECT.
#[derive(Debug)]
pub struct Credentials<'a> {
    /// The client id as sent (empty when the client asked for one).
    pub client_id: &'a str,
    /// User Name, or the CN of a verified client certificate
    /// (`tls.cn_as_username`).
    pub username: Option<&'a str>,
    /// Password, as sent.
    pub password: Option<&'a [u8]>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener it came in on: `mqtt`, `ws`, `mqtts` or `wss`.
    pub listener: &'static str,
    /// The CONNECT's protocol level: 3 (3.1), 4 (3.1.1) or 5.
    pub protocol: u8,
    /// The subject CN of the client's verified TLS certificate.
    pub certificate_cn: Option<&'a str>,
}

/// [`Credentials`] that can travel to another thread, for
/// [`Authenticator::ask`].
#[derive(Debug, Clone)]
pub struct Identity {
    /// The client id as sent.
    pub client_id: String,
    /// User Name (or certificate CN).
    pub username: Option<String>,
    /// Password, as sent.
    pub password: Option<Bytes>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener it came in on.
    pub listener: &'static str,
    /// The protocol level.
    pub protocol: u8,
    /// The verified certificate's CN.
    pub certificate_cn: Option<String>,
}

impl Credentials<'_> {
    /// An owned copy, for the slow path.
    pub fn to_identity(&self) -> Identity {
        Identity {
            client_id: self.client_id.to_owned(),
            username: self.username.map(str::to_owned),
            password: self.password.map(Bytes::copy_from_slice),
            peer: self.peer,
            listener: self.listener,
            protocol: self.protocol,
            certificate_cn: self.certificate_cn.map(str::to_owned),
        }
    }
}

/// What an authenticator grants one connection beyond admission, from a
/// JWT claim or an HTTP answer. Kept on the connection (behind its rarely
/// used state) for as long as it lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Rules for this connection, tried before the ACL file: the first that
    /// applies decides, and when none does the node's rules do.
    pub rules: Option<acl::AclRules>,
    /// Allowed everything the ACL file and HTTP authorizer would decide
    /// (the `mqtt.deny_*` lists still apply).
    pub superuser: bool,
    /// This user's connection limit, instead of
    /// `limits.max_connections_per_user`.
    pub max_connections: Option<u32>,
    /// The user name the authenticator established for a client that sent
    /// none (a JWT's user name claim): ACL templates, presence and limits
    /// see it as the connection's user.
    pub username: Option<String>,
}

impl Grants {
    /// The allow verdict carrying these grants: a plain [`Verdict::Allow`]
    /// when nothing is granted (the common case costs no allocation).
    pub fn into_verdict(self) -> Verdict {
        if self == Grants::default() {
            Verdict::Allow
        } else {
            Verdict::AllowWith(Arc::new(self))
        }
    }
}

/// An authenticator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admit the client.
    Allow,
    /// Admit the client, with [`Grants`] for this connection.
    AllowWith(Arc<Grants>),
    /// Refuse with this MQTT 5 CONNACK reason code (mapped to the closest
    /// 3.1.1 return code for 3.1.1 clients), e.g. 0x86 bad credentials,
    /// 0x87 not authorized, 0x8A banned.
    Deny(u8),
    /// Not this authenticator's client (no user it knows, no token): the
    /// next one in the chain decides, and after the last the anonymous
    /// policy.
    Pass,
    /// From [`Authenticator::authenticate`] only: the answer needs work off
    /// the core; call [`Authenticator::ask`]. As an answer sent through
    /// [`ReplyTo`] it is not a decision and refuses the client (0x80).
    Ask,
}

impl Unanswered for Verdict {
    /// Nobody decided (the bridge thread dropped the request): the service
    /// behind the authenticator is unavailable.
    fn unanswered() -> Self {
        Verdict::Deny(reason::SERVER_UNAVAILABLE)
    }
}

/// Decides whether a client may connect.
pub trait Authenticator: Send + Sync + 'static {
    /// Fast path, on the connection's core for every CONNECT: must answer
    /// without blocking; [`Verdict::Ask`] defers to [`Authenticator::ask`].
    fn authenticate(&self, who: &Credentials<'_>) -> Verdict;

    /// Slow path, called after [`Verdict::Ask`] when the core has room for
    /// one more pending verdict (otherwise the client gets CONNACK 0x89):
    /// decide on another thread and send the verdict to `reply`. Must not
    /// block. The client waits, reading nothing else, until the verdict
    /// arrives or `mqtt.connect_timeout_ms` passes. The default refuses
    /// (an authenticator that answers `Ask` must implement this).
    fn ask(&self, who: Identity, reply: ReplyTo<Verdict>) {
        let _ = who;
        reply.send(Verdict::Deny(reason::IMPLEMENTATION_SPECIFIC));
    }

    /// Starts an enhanced-authentication exchange for `method`, or `None`
    /// when the method is not supported (CONNACK 0x8C).
    fn enhanced(&self, _method: &str, _who: &Credentials<'_>) -> Option<Box<dyn AuthExchange>> {
        None
    }

    /// The authenticator's own figures for `/metrics` (outcomes, cache).
    fn figures(&self) -> Vec<crate::stats::Figure> {
        Vec::new()
    }

    /// Round trip of calls to a service behind the authenticator.
    fn latency(&self) -> Option<&crate::stats::Histogram> {
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

impl Verdict {
    /// The grants of an allow, if any.
    pub fn grants(&self) -> Option<&Arc<Grants>> {
        match self {
            Verdict::AllowWith(g) => Some(g),
            _ => None,
        }
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
