//! MQTT semantics of each packet a client sends, applied to its core's
//! state; and the same rules for messages published from outside MQTT (the
//! HTTP API, bridges).
//!
//! | file | packets |
//! | --- | --- |
//! | `connect.rs` | CONNECT, AUTH, DISCONNECT; verdicts and claims that come back later |
//! | `connack.rs` | every CONNACK, accepting or refusing |
//! | `publish.rs` | PUBLISH and its acknowledgements both ways; publishes from the API |
//! | `subscribe.rs` | SUBSCRIBE, UNSUBSCRIBE |
//!
//! Handlers never perform I/O: they update the session and push frames to
//! the connection's outbox. A protocol violation is returned as a
//! [`Violation`]; the connection task logs it and closes (with that reason
//! code for MQTT 5 clients, after a CONNACK refusal if no CONNACK was sent
//! yet, per MQTT 5 3.14.0-1).

pub mod connack;
mod connect;
mod publish;
mod subscribe;
#[cfg(test)]
mod tests;

use tracing::info;

use crate::codec::{self, reason, Packet, QoS, Version};
use crate::error::{Classify, Origin};
use crate::id::ConnKey;
use crate::shard::{CloseRequest, ConnMut, Core, CoreState, Pace, Phase};
use crate::stats::bump;

pub use connect::{on_claim, on_claim_unanswered, on_verdict};
pub use publish::{on_bridge_publish, on_permit};

/// A protocol violation: reason code (MQTT 5) and what went wrong (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The reason code of the DISCONNECT (or CONNACK) that answers it.
    pub code: u8,
    /// What the client did wrong.
    pub why: &'static str,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (reason {:#04x})", self.why, self.code)
    }
}

impl std::error::Error for Violation {}

impl Classify for Violation {
    fn origin(&self) -> Origin {
        Origin::Client
    }
}

fn violation(code: u8, why: &'static str) -> Violation {
    Violation { code, why }
}

/// What the connection task does after handing over one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next packet.
    Continue,
    /// The connection is closing (or gone): stop processing.
    Stop,
    /// The connection waits for an answer (a verdict, a handover, a
    /// permit): keep the bytes after this packet unparsed and read nothing
    /// until the core wakes it.
    Park,
    /// The core has no room for this packet's request now: keep this
    /// packet (and what follows) unparsed; the connection is paused until
    /// there is room.
    Retry,
    /// Handled, and its copies wait on the core behind connections it
    /// woke: read nothing more in this pass, so those go first (publishers
    /// are read in proportion to delivery progress).
    Yield,
    /// Handled, and its copies went to another core that is behind: read
    /// nothing more until that core caught up.
    Wait,
}

/// What a handler of the rarer packets did with its packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Done,
    /// Not handled: no room for its request (see [`Flow::Retry`]).
    NoRoom,
}

/// Applies one packet received on `key`'s connection.
///
/// The commonest packets (PUBLISH, the acknowledgements, PINGREQ) are
/// served by one handle on their connection ([`ConnMut`]) from the phase
/// check to the decision to read on; a PUBLISH that is routed takes a
/// second one after its fan-out, which may reach any connection.
pub fn receive(core: &Core, key: ConnKey, packet: Packet) -> Result<Flow, Violation> {
    bump(&core.stats().packets_in, 1);
    let mut st = core.st.borrow_mut();
    let st = &mut *st;
    st.lagging = false;
    st.peer_lagging = false;
    match packet {
        Packet::Publish(mut p) => publish::publish(core, st, key, &mut p),
        Packet::PubAck(a) => own(st, key, |c| publish::puback(core, c, a.pkid, a.code)),
        Packet::PubRec(a) => own(st, key, |c| publish::pubrec(core, c, a)),
        Packet::PubComp(a) => own(st, key, |c| publish::pubcomp(core, c, a)),
        Packet::PubRel(a) => own(st, key, |c| publish::pubrel(core, c, a)),
        Packet::PingReq => own(st, key, |c| {
            if let Some(link) = c.link() {
                link.control(Packet::PingResp);
            }
        }),
        Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
            Err(violation(
                reason::PROTOCOL_ERROR,
                "server-to-client packet sent by a client",
            ))
        }
        packet => {
            if handle(core, st, key, packet)? == Step::NoRoom {
                return Ok(Flow::Retry);
            }
            let pace = st.take_pace();
            Ok(st.conn(key).map_or(Flow::Stop, |c| after(&c, pace)))
        }
    }
}

/// Applies a plain PUBACK (no reason code, no properties) received on
/// `key`'s connection, as [`receive`] would, without building a
/// [`Packet`]: the commonest packet of a QoS 1 fan-out (one per delivery),
/// and building, moving and dropping a 400-byte `Packet` for its two bytes
/// of packet id was 8 % of a core in the flat-out fan-out profile.
pub fn receive_puback(core: &Core, key: ConnKey, pkid: u16) -> Result<Flow, Violation> {
    bump(&core.stats().packets_in, 1);
    let mut st = core.st.borrow_mut();
    st.lagging = false;
    own(&mut st, key, |c| publish::puback(core, c, pkid, 0))
}

/// Serves a packet that touches its own connection only (an
/// acknowledgement, PINGREQ) with `f`, on one handle: the phase check, the
/// handler and the decision to read on share one lookup.
#[inline(always)]
fn own(
    st: &mut CoreState,
    key: ConnKey,
    f: impl FnOnce(&mut ConnMut<'_>),
) -> Result<Flow, Violation> {
    let Some(mut c) = accepted(st, key)? else {
        return Ok(Flow::Stop);
    };
    f(&mut c);
    Ok(after(&c, None))
}

/// The handle on `key`'s connection for a packet that only an accepted
/// connection may send (a violation before the CONNACK); `None` when the
/// connection is gone.
#[inline(always)]
fn accepted(st: &mut CoreState, key: ConnKey) -> Result<Option<ConnMut<'_>>, Violation> {
    match st.conn(key) {
        Some(c) if c.connecting() => {
            Err(violation(reason::PROTOCOL_ERROR, "packet before CONNACK"))
        }
        c => Ok(c),
    }
}

/// What the connection does after a packet was handled.
fn after(c: &ConnMut<'_>, pace: Option<Pace>) -> Flow {
    let Some(link) = c.entry.link.as_ref().filter(|l| l.close.is_none()) else {
        return Flow::Stop;
    };
    if c.entry.phase.parks_reading() || link.is_parked() {
        // Keep pipelined packets until the answer is in.
        return Flow::Park;
    }
    match pace {
        None => Flow::Continue,
        Some(Pace::Yield) => Flow::Yield,
        Some(Pace::UntilResumed) => Flow::Wait,
    }
}

/// The rarer packets: CONNECT, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT, AUTH.
// Inlined into `receive`: a `Packet` is 400 bytes, and a call boundary
// copies it.
#[inline(always)]
fn handle(
    core: &Core,
    st: &mut CoreState,
    key: ConnKey,
    packet: Packet,
) -> Result<Step, Violation> {
    // Between CONNECT and CONNACK only an authentication exchange may run.
    let connecting = st.conn(key).is_some_and(|c| c.connecting());
    if connecting
        && !matches!(
            packet,
            Packet::Connect(_) | Packet::Auth(_) | Packet::Disconnect(_)
        )
    {
        return Err(violation(reason::PROTOCOL_ERROR, "packet before CONNACK"));
    }
    match packet {
        // The decoder refuses a second CONNECT already (it knows the
        // version once the first came); the rule is kept here too, where
        // the packet semantics are, so no path around the decoder can
        // connect an active session again.
        Packet::Connect(_) if !connecting => {
            Err(violation(reason::PROTOCOL_ERROR, "second CONNECT"))
        }
        Packet::Connect(c) => connect::connect(core, st, key, *c).map(|()| Step::Done),
        Packet::Subscribe(s) => subscribe::subscribe(core, st, key, s, Vec::new()),
        Packet::Unsubscribe(u) => subscribe::unsubscribe(core, st, key, u).map(|()| Step::Done),
        Packet::Disconnect(d) => connect::disconnect(core, st, key, d).map(|()| Step::Done),
        Packet::Auth(a) => connect::auth(core, st, key, a).map(|()| Step::Done),
        // Served by `receive` on the connection's handle.
        _ => Ok(Step::Done),
    }
}

/// Closes a connection for a decode error or a violation: with a CONNACK
/// refusal while no CONNACK was sent (MQTT 5 3.14.0-1: no DISCONNECT before
/// a successful CONNACK), otherwise with DISCONNECT `code` (MQTT 5) after
/// the acks already queued. `version` is what the CONNECT said, if it came.
pub fn reject(core: &Core, key: ConnKey, version: Option<Version>, code: u8, why: &str) {
    let mut st = core.st.borrow_mut();
    let Some(e) = st.entry(key) else {
        return;
    };
    let peer = e.link.as_ref().map(|l| l.peer.addr());
    info!(conn = %e.id, peer = ?peer, reason = format_args!("{code:#04x}"), "closing: {why}");
    bump(&core.stats().protocol_errors, 1);
    let before_connack = matches!(e.phase, Phase::Connecting);
    let v5 = version.is_some_and(Version::is_v5);
    let Some(link) = e.link.as_mut() else {
        return;
    };
    if before_connack && version.is_some() {
        link.control(connack::refused(code, v5, Some(why)));
        link.request_close(None, false);
        return;
    }
    link.request_close_why(v5.then_some(code), false, Some(why));
}

/// A CONNECT of a protocol version the gateway does not speak.
pub fn reject_version(core: &Core, key: ConnKey, why: &str) {
    let mut st = core.st.borrow_mut();
    let Some(e) = st.entry(key) else {
        return;
    };
    info!(conn = %e.id, "closing: {why}");
    bump(&core.stats().protocol_errors, 1);
    if let Some(link) = e.link.as_mut() {
        link.control(connack::unsupported_version());
        link.request_close(None, false);
    }
}

/// The connection starts closing as `req` asks: unsent frames dropped if
/// asked, then the final DISCONNECT (MQTT 5, with its Reason String).
pub fn closing(core: &Core, key: ConnKey, req: CloseRequest) {
    let mut st = core.st.borrow_mut();
    let Some(link) = st.link(key) else {
        return;
    };
    if req.discard_outbox {
        link.outbox.clear();
        link.outbox_bytes = 0;
    }
    if let (Some(code), true) = (req.reason, link.version.is_v5()) {
        let server_reference =
            (code == reason::USE_ANOTHER_SERVER).then(|| core.cfg.drain.server_reference.clone());
        let properties = codec::Properties {
            reason_string: req.why.map(String::from),
            server_reference,
            ..Default::default()
        };
        link.control(Packet::Disconnect(codec::ReasonOnly { code, properties }));
    }
}

/// The highest QoS the gateway grants (`mqtt.max_qos`).
fn max_qos(core: &Core) -> QoS {
    QoS::from_u8(core.cfg.mqtt.max_qos).unwrap_or(QoS::ExactlyOnce)
}
