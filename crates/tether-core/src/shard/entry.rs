//! One slab entry: a connection and/or a session, and the phases it goes
//! through.
//!
//! ```text
//!   Connecting ──CONNECT──▶ AwaitingVerdict ──Allow──┐     (authenticator said Ask)
//!       │                                            ▼
//!       └─────────CONNECT (verdict at once)──▶ AwaitingHandover ──handover──▶ Active
//!                                                    │                         │ │
//!                      superseded by a newer claim ◀─┘          socket lost ───┘ │
//!                                                                    ▼           │ taken over
//!                                                                 Offline        ▼
//!                                                                 TakenOver (same core)
//!                                                                 Moved (other core: a tombstone)
//! ```
//! An entry is removed when its socket is gone and its session ended
//! (expired, clean, taken over, or its tombstone timed out).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;

use super::acks::HeldAcks;
use crate::codec::{ConnAck, Connect, Packet, Publish, Subscribe, Version, Will};
use crate::id::{ConnId, Location};
use crate::session::alias::OutAliases;
use crate::session::{Durable, Frame, Session, Thin};

/// One slab entry: a connection and/or a session.
pub struct Entry {
    /// Generation of this slot's occupant (see [`crate::id::ConnKey`]).
    pub gen: u32,
    /// The connection id in logs.
    pub id: ConnId,
    /// Set once a CONNECT named (or was given) a client id.
    pub client_id: Option<Arc<str>>,
    /// Where the entry is in its lifecycle.
    pub phase: Phase,
    /// What survives the connection.
    pub session: Session,
    /// The live connection, while there is one.
    pub link: Option<Link>,
}

impl Entry {
    /// Reports `outcome` of this session's delivery of `msg` to the
    /// message's receipt sink, with the session's client id and, while it
    /// is connected, its user name. Cold: only messages that asked for
    /// receipts come here.
    #[cold]
    pub fn report(&self, msg: &Arc<crate::session::Message>, outcome: crate::session::Outcome) {
        let user = self.link.as_ref().and_then(|l| l.username.as_ref());
        crate::session::report(msg, self.client_id.as_ref(), user, outcome);
    }
}

/// Lifecycle of a slab entry (see the module documentation).
pub enum Phase {
    /// Socket accepted, no CONNECT yet (CONNECT deadline armed).
    Connecting,
    /// CONNECT received; its authentication verdict is being decided off
    /// the core. The connection reads nothing else meanwhile.
    AwaitingVerdict {
        /// The CONNECT, resumed when the verdict arrives.
        connect: Box<Connect>,
        /// The step of the listener's chain that was asked: a "not mine"
        /// answer continues from the next.
        step: crate::auth::Step,
    },
    /// CONNECT accepted; the client id is being claimed and the previous
    /// owner's session fetched. `superseded` is set if an even newer
    /// connection claimed the id meanwhile.
    AwaitingHandover {
        /// What the CONNECT asked for.
        info: Box<ConnectInfo>,
        /// The newer claimant, which gets the session instead (boxed, like
        /// `Moved`'s place: rare, and the phase is in every entry).
        superseded: Option<Box<Location>>,
    },
    /// CONNACK sent; the session is live.
    Active,
    /// No connection; the session waits for its client until `expires_at`,
    /// holding the will of the lost connection while its delay runs.
    Offline {
        /// Tick at which the session ends.
        expires_at: u64,
        /// A will waiting out its delay (boxed: the phase is in every entry).
        will: Option<Box<PendingWill>>,
    },
    /// The session moved to a newer connection on this core; this socket is
    /// closing.
    TakenOver,
    /// The session moved to another core. Until `until` the entry keeps its
    /// subscriptions indexed and forwards what matches to `to`, so messages
    /// already on their way here are not lost; its socket (if any) is closing.
    Moved {
        /// The session's new place.
        to: Box<Location>,
        /// Tick at which the tombstone ends.
        until: u64,
    },
}

impl Phase {
    /// Whether the connection must not read: it waits for a verdict or a
    /// handover, and what it sent after its CONNECT stays unparsed.
    pub fn parks_reading(&self) -> bool {
        matches!(
            self,
            Phase::AwaitingVerdict { .. } | Phase::AwaitingHandover { .. }
        )
    }
}

/// A will waiting out its MQTT 5 Will Delay Interval after an abnormal close.
pub struct PendingWill {
    /// The will.
    pub will: Box<Will>,
    /// Tick at which it is published (unless the client is back first).
    pub at: u64,
    /// The connection that set it (for No Local).
    pub origin: ConnId,
}

/// What a CONNECT asked for, kept while the session is being located.
#[derive(Debug)]
pub struct ConnectInfo {
    /// Clean Start (3.1.1: clean session).
    pub clean_start: bool,
    /// Granted session expiry.
    pub expiry_secs: u32,
    /// The CONNACK that will accept it, built by `mqtt::connack`;
    /// activation sets only its Session Present.
    pub connack: ConnAck,
    /// The durable store's address for the session (set by the claim, for
    /// a persistent session with a durable store).
    pub durable: Option<Box<Durable>>,
    /// The session handed over on this node turned out stale
    /// (`Claimed::stale_previous`): it is dropped, and [`Self::from_store`]
    /// installed instead.
    pub stale_handover: bool,
    /// What the store holds of the session, when `stale_handover`.
    pub from_store: Option<Box<crate::session::Session>>,
}

impl ConnectInfo {
    /// What a claim without a CONNECT of its own asks (an adoption, a
    /// test): no properties granted, a plain CONNACK prepared.
    pub fn bare(clean_start: bool, expiry_secs: u32) -> ConnectInfo {
        ConnectInfo {
            clean_start,
            expiry_secs,
            connack: ConnAck {
                session_present: false,
                code: crate::codec::reason::SUCCESS,
                properties: Default::default(),
            },
            durable: None,
            stale_handover: false,
            from_store: None,
        }
    }
}

/// An enhanced-authentication exchange waiting for the client's next AUTH.
pub struct AuthInProgress {
    /// The Authentication Method.
    pub method: String,
    /// The authenticator's side of the exchange.
    pub exchange: Box<dyn crate::auth::AuthExchange>,
    /// The CONNECT it belongs to (client id, what it asked for); `None` for
    /// a re-authentication of a live connection.
    pub connect: Option<(Arc<str>, ConnectInfo)>,
}

/// A client packet waiting for the authorizer's slow path. The connection
/// reads nothing until it is resumed, so the client's packets keep their
/// order.
pub enum Parked {
    /// A PUBLISH (topic alias already resolved into its topic).
    Publish(Publish),
    /// A SUBSCRIBE, with the answers already known for each filter.
    Subscribe {
        /// The packet.
        subscribe: Subscribe,
        /// Per filter: the authorizer's answer once known.
        permits: Vec<Option<bool>>,
    },
}

/// Why the core asks a connection to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// DISCONNECT reason code to send first (v5 only); `None` closes silently.
    pub reason: Option<u8>,
    /// Drop unsent frames (a slow consumer) instead of flushing them first.
    pub discard_outbox: bool,
    /// Human-readable cause, sent as the DISCONNECT's Reason String.
    pub why: Option<Box<str>>,
    /// Before the final flush, read what the client already sent and
    /// apply its acknowledgements (a drain, a shutdown: the session goes
    /// on elsewhere, and must not resend what the client acknowledged
    /// here).
    pub settle: bool,
}

/// The live half of a session: present while a socket is attached.
pub struct Link {
    /// Protocol version (3.1.1 until the CONNECT says otherwise).
    pub version: Version,
    /// The client's address.
    pub peer: super::Peer,
    /// When the socket was accepted, in milliseconds since the Unix epoch
    /// (not a `SystemTime`: 8 bytes instead of 16, in every connection).
    pub since_ms: u64,
    /// 1.5 x keep-alive in ticks; 0 disables the check (at most 65,535 s
    /// x 1.5 at 1 ms ticks: 32 bits hold it).
    pub keep_alive_ticks: u32,
    /// Tick of the last packet received.
    pub last_seen: u64,
    /// Frames waiting to be written (unallocated while empty: see
    /// [`Thin`]).
    pub outbox: Thin<VecDeque<Frame>>,
    /// Weight of `outbox` (see [`Frame::weight`]); `session.max_outbox_bytes`
    /// bounds it far below 4 GiB.
    pub outbox_bytes: u32,
    /// The connection task, woken when the outbox or phase changes.
    pub waker: Option<Waker>,
    /// Set when the core wants the connection closed (boxed: rare, and
    /// this struct is per connection).
    pub close: Option<Box<CloseRequest>>,
    /// Outbound in-flight window (client's Receive Maximum, capped).
    pub window: u16,
    /// Client's Maximum Packet Size (the protocol's limit fits 32 bits).
    pub max_packet: u32,
    /// Inbound topic aliases (index = alias - 1). Empty and unallocated
    /// until the client's first alias; then `mqtt.topic_alias_maximum`
    /// long (MQTT 5 only).
    pub aliases: Thin<Vec<Option<Arc<str>>>>,
    /// Outbound topic aliases, when the client accepts them (MQTT 5).
    pub out_aliases: Option<Box<OutAliases>>,
    /// Boxed: most clients set no will, and this struct is per connection.
    pub will: Option<Box<Will>>,
    /// CONNECT's User Name (presence queries group connections by user).
    pub username: Option<Arc<str>>,
    /// What few connections need, behind one pointer (see [`Rare`]).
    pub rare: Option<Box<Rare>>,
    /// The client sent DISCONNECT (without 0x04): no will.
    pub graceful: bool,
    /// The listener it came in on ([`crate::id::TRANSPORT_NAMES`] index).
    pub transport: u8,
    /// Counted among the core's handshakes in progress: from accept until
    /// the session is active or the socket closes (`Core::handshake_over`).
    pub handshaking: bool,
}

/// Per-connection state most connections never need: one box, allocated on
/// first use, so an idle connection pays a pointer for all of it.
#[derive(Default)]
pub struct Rare {
    /// An enhanced-authentication exchange in progress.
    pub auth: Option<Box<AuthInProgress>>,
    /// The Authentication Method this connection used (for re-authentication).
    pub auth_method: Option<Box<str>>,
    /// A packet waiting for the authorizer; the connection reads nothing
    /// meanwhile.
    pub parked: Option<Parked>,
    /// Publish acknowledgements held for the outbound bridge, in order.
    pub held_acks: HeldAcks,
    /// Closing to hand the session to a claim on this node: told once the
    /// close's writes are journaled.
    pub handoff_to: Option<u16>,
    /// What the authenticator granted this connection (its own ACL rules,
    /// superuser, a connection limit), for as long as it lives.
    pub grants: Option<Arc<crate::auth::Grants>>,
    /// The lease term this connection was admitted under its user's
    /// connection limit in (`store::Claimed::counted_in`): it is served
    /// only while the node's lease holds in that term, as a persistent
    /// session is, for a node cut off from Redis cannot count it (other
    /// nodes admit the user's next connections once its entry expired).
    pub counted_in: Option<u64>,
    /// The subject CN of the client's verified TLS certificate, set before
    /// CONNECT is handled (authenticators may see it).
    pub certificate_cn: Option<Box<str>>,
}

impl Link {
    /// A link for a socket just accepted.
    pub fn new(peer: SocketAddr, now_tick: u64, window: u16, transport: u8) -> Link {
        Link {
            version: Version::V311,
            peer: peer.into(),
            since_ms: crate::wallclock::now_ms(),
            keep_alive_ticks: 0,
            last_seen: now_tick,
            outbox: Thin::new(),
            outbox_bytes: 0,
            waker: None,
            close: None,
            window,
            max_packet: u32::MAX,
            aliases: Thin::new(),
            out_aliases: None,
            will: None,
            username: None,
            rare: None,
            graceful: false,
            transport,
            handshaking: true,
        }
    }

    /// The rarely used state, allocated on first use.
    pub fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    /// What the authenticator granted this connection.
    pub fn grants(&self) -> Option<&crate::auth::Grants> {
        self.rare.as_ref()?.grants.as_deref()
    }

    /// See [`Rare::counted_in`].
    pub fn counted_in(&self) -> Option<u64> {
        self.rare.as_ref()?.counted_in
    }

    /// The authorization question of this connection's client for
    /// `action` on `topic`.
    pub fn acl_request<'a>(
        &'a self,
        client_id: Option<&'a str>,
        action: crate::auth::Action,
        topic: &'a str,
        qos: crate::codec::QoS,
        retain: bool,
    ) -> crate::auth::AclRequest<'a> {
        crate::auth::AclRequest {
            action,
            topic,
            qos,
            retain,
            source: crate::auth::Source::Client,
            client_id,
            username: self.username.as_deref(),
            peer: Some(self.peer.ip()),
            grants: self.grants(),
        }
    }

    /// Whether a packet waits for the authorizer.
    pub fn is_parked(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.parked.is_some())
    }

    /// Queues a frame and wakes the connection task.
    pub fn push(&mut self, frame: Frame) {
        self.outbox_bytes += frame.weight() as u32;
        self.outbox.push_back(frame);
        self.wake();
    }

    /// Queues a control packet.
    pub fn control(&mut self, packet: Packet) {
        self.push(Frame::control(packet));
    }

    /// Wakes the connection task.
    pub fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Whether the connection was asked to close.
    pub fn closing(&self) -> bool {
        self.close.is_some()
    }

    /// Asks the connection to close (the first request wins).
    pub fn request_close(&mut self, reason: Option<u8>, discard_outbox: bool) {
        self.request_close_why(reason, discard_outbox, None);
    }

    /// [`Link::request_close`] with a Reason String for MQTT 5 clients.
    pub fn request_close_why(
        &mut self,
        reason: Option<u8>,
        discard_outbox: bool,
        why: Option<&str>,
    ) {
        if self.close.is_none() {
            self.close = Some(Box::new(CloseRequest {
                reason,
                discard_outbox,
                why: why.map(Into::into),
                settle: false,
            }));
        }
        self.wake();
    }

    /// Asks the connection to close for a drain or a shutdown: its queued
    /// frames go out, and the acknowledgements the client already sent are
    /// applied first ([`CloseRequest::settle`]).
    pub fn request_settled_close(&mut self, reason: Option<u8>) {
        self.request_close(reason, false);
        if let Some(req) = self.close.as_mut() {
            req.settle = true;
        }
    }
}

/// What a wheel timer is for.
#[derive(Debug, Clone, Copy)]
pub enum Timer {
    /// The CONNECT (and its verdict, and its handover) must be done by now.
    ConnectDeadline,
    /// Check the keep-alive.
    KeepAlive,
    /// An offline session ends.
    SessionExpiry,
    /// A tombstone stops forwarding.
    Tombstone,
    /// A delayed will is due.
    WillDelay,
    /// Fallback end of a moved-in session's move window.
    MoveWindow,
}
