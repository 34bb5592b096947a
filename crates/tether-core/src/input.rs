//! The one door into a core: every piece of work a core does arrives as an
//! [`Input`] through [`handle`]. The tasks of `runtime.rs` (the inbox and
//! its reply queues, the mesh receivers, the timer wheel) and the
//! connection tasks of `net/conn` are pumps: they bring inputs in, and pace
//! themselves by what comes back ([`Flow`], `Core::take_lagging`); none of
//! them applies anything to a core's state itself.
//!
//! The enum is closed: a new kind of work is a new variant, and the match
//! in [`handle`] is where it meets the core.

use std::sync::Arc;

use crate::auth::{Permit, Verdict};
use crate::bridge::outbound::Produced;
use crate::bridge::BridgeMsg;
use crate::codec::Packet;
use crate::id::ConnKey;
use crate::mesh::CoreMsg;
use crate::mqtt::{self, Flow, Violation};
use crate::session::Message;
use crate::shard::{Core, Timer};
use crate::store::ClaimResult;

/// One piece of work for a core.
///
/// As large as a [`Packet`] (about 400 bytes): an input lives on the
/// pump's stack from its making to [`handle`], which is inlined, so the
/// size costs no copy; boxing the packet would cost an allocation per
/// packet on the hottest path.
#[allow(clippy::large_enum_variant)]
pub enum Input<'a> {
    /// A packet a client sent on connection `key`.
    Packet { key: ConnKey, packet: Packet },
    /// A plain PUBACK (no reason code, no properties) on connection `key`,
    /// decoded without building a [`Packet`] (`mqtt::receive_puback` says
    /// why).
    PubAck { key: ConnKey, pkid: u16 },
    /// One message another core routed here (a `CoreMsg::Publish` batch
    /// comes one message at a time, so its pump can pace between them).
    Routed(&'a Arc<Message>),
    /// Any other message from another core.
    Peer(CoreMsg),
    /// A request from a thread that is not a core (the HTTP API, Kafka,
    /// the Redis store's writer).
    Bridge(BridgeMsg),
    /// A seam's answer to a request this core made.
    Answer(Answer),
    /// The timer wheel's tick; `fired` is scratch space the pump keeps
    /// between ticks.
    Tick {
        fired: &'a mut Vec<(ConnKey, Timer)>,
    },
}

/// A seam's answer, with the token of the request it answers.
pub enum Answer {
    /// An authentication verdict (a CONNECT waits for it).
    Verdict(u32, Verdict),
    /// A session claim in the store (a CONNECT waits for it).
    Claim(u32, ClaimResult),
    /// An authorization permit (a PUBLISH or SUBSCRIBE waits for it).
    Permit(u32, Permit),
    /// The outbound bridge's acknowledgement (a publisher's ack waits).
    Produced(u32, Produced),
}

/// Applies `input` to `core`. For a packet: what its connection does
/// next, or the violation that closes it; every other input answers
/// `Flow::Continue`.
#[inline]
pub fn handle(core: &Core, input: Input<'_>) -> Result<Flow, Violation> {
    match input {
        Input::Packet { key, packet } => return mqtt::receive(core, key, packet),
        Input::PubAck { key, pkid } => return mqtt::receive_puback(core, key, pkid),
        Input::Routed(m) => core.deliver_routed(m),
        Input::Peer(msg) => core.on_core_msg(msg),
        Input::Bridge(msg) => bridge(core, msg),
        Input::Answer(Answer::Verdict(token, v)) => mqtt::on_verdict(core, token, v),
        Input::Answer(Answer::Claim(token, c)) => mqtt::on_claim(core, token, c),
        Input::Answer(Answer::Permit(token, p)) => mqtt::on_permit(core, token, p),
        Input::Answer(Answer::Produced(token, p)) => core.on_produced(token, p),
        Input::Tick { fired } => core.on_tick(fired),
    }
    Ok(Flow::Continue)
}

/// One request from a bridge thread. A caller that gave up waiting
/// dropped its receiver; answering it is then a no-op.
fn bridge(core: &Core, msg: BridgeMsg) {
    match msg {
        BridgeMsg::Publish {
            req,
            source,
            scope,
            numbered,
            done,
        } => mqtt::on_bridge_publish(core, req, source, scope, numbered, done),
        BridgeMsg::Inspect { key, reply } => {
            let _ = reply.send(core.inspect(key));
        }
        BridgeMsg::Kick { key, reply } => {
            let _ = reply.send(core.kick(key));
        }
        BridgeMsg::List { user, reply } => {
            let _ = reply.send(core.list(user.as_deref()));
        }
        BridgeMsg::Gauges { reply } => {
            let _ = reply.send(core.gauges());
        }
        BridgeMsg::Drain => core.drain_requested.notify(),
        BridgeMsg::Heartbeat => core
            .visible()
            .alive_ms
            .store(core.node.elapsed_ms(), std::sync::atomic::Ordering::Relaxed),
        BridgeMsg::Fenced { client_id, epoch } => core.on_fenced(&client_id, epoch),
        BridgeMsg::ClaimUnanswered { key, conn } => mqtt::on_claim_unanswered(core, key, conn),
        BridgeMsg::Adopt { client_id, ticket } => {
            core.adopt(&mut core.st.borrow_mut(), client_id, ticket)
        }
        BridgeMsg::KickClient { client_id, kick } => {
            core.kick_client(&client_id, &kick);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The pumps' sources name no handler: they go through [`super::handle`].
    #[test]
    fn the_pumps_apply_nothing_themselves() {
        const HANDLERS: [&str; 11] = [
            "mqtt::receive",
            "on_claim_unanswered",
            "on_verdict",
            "on_claim",
            "on_permit",
            "on_produced",
            "on_core_msg",
            "on_bridge_publish",
            "deliver_routed",
            "on_tick",
            "on_fenced",
        ];
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut files = vec![format!("{root}/runtime.rs")];
        let conn = format!("{root}/net/conn");
        for e in std::fs::read_dir(&conn).unwrap() {
            files.push(e.unwrap().path().to_string_lossy().into_owned());
        }
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for h in HANDLERS {
                assert!(!text.contains(h), "{f} calls {h}: hand it to input::handle");
            }
        }
    }
}
