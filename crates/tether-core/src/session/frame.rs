//! Outbox entries: what waits in a connection's outbox, encoded only when
//! the connection task writes it.

use crate::codec::{encode, encode_publish, Ack, Packet, Properties, Version};

use super::alias::{AliasUse, OutAliases};
use super::message::Delivery;

/// Something waiting in a connection's outbox, encoded when written.
/// Acknowledgements get a compact variant: one is queued per QoS>0 message.
#[derive(Debug)]
pub enum Frame {
    /// A PUBLISH to the client.
    Publish {
        /// What to send.
        d: Delivery,
        /// Packet id (0 for QoS 0).
        pkid: u16,
        /// A resend after reconnection (MQTT 4.4).
        dup: bool,
    },
    /// PUBACK/PUBREC/PUBREL/PUBCOMP without properties.
    Ack {
        /// Which acknowledgement.
        kind: AckKind,
        /// Its packet id.
        pkid: u16,
        /// Reason code (MQTT 5; 3.1.1 clients get none).
        code: u8,
    },
    /// PINGRESP.
    PingResp,
    /// Any other control packet (CONNACK, SUBACK, DISCONNECT, AUTH, ...).
    Control(Box<Packet>),
}

/// The four acknowledgements of the QoS 1/2 flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// QoS 1 acknowledgement.
    PubAck,
    /// QoS 2, first step.
    PubRec,
    /// QoS 2, second step.
    PubRel,
    /// QoS 2, last step.
    PubComp,
}

impl Frame {
    /// Whether this is a DISCONNECT (the last frame a closing connection
    /// writes).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Frame::Control(p) if matches!(**p, Packet::Disconnect(_)))
    }

    /// The outbox form of a control packet.
    pub fn control(packet: Packet) -> Frame {
        let ack = |kind, a: &Ack| {
            a.properties.is_empty().then_some(Frame::Ack {
                kind,
                pkid: a.pkid,
                code: a.code,
            })
        };
        let compact = match &packet {
            Packet::PubAck(a) => ack(AckKind::PubAck, a),
            Packet::PubRec(a) => ack(AckKind::PubRec, a),
            Packet::PubRel(a) => ack(AckKind::PubRel, a),
            Packet::PubComp(a) => ack(AckKind::PubComp, a),
            Packet::PingResp => Some(Frame::PingResp),
            _ => None,
        };
        compact.unwrap_or_else(|| Frame::Control(Box::new(packet)))
    }

    /// Memory the frame pins while queued, for the outbox byte limit.
    pub fn weight(&self) -> usize {
        match self {
            Frame::Publish { d, .. } => d.msg.weight(),
            Frame::Ack { .. } | Frame::PingResp | Frame::Control(_) => 32,
        }
    }

    /// Appends the frame's packet encoded for protocol `v`, using the
    /// connection's outbound topic aliases when it has them.
    pub fn encode(&self, v: Version, out: &mut Vec<u8>, aliases: Option<&mut OutAliases>) {
        match self {
            Frame::Publish { d, pkid, dup } => {
                let m = &d.msg;
                let alias = aliases.map_or(AliasUse::None, |a| a.alias(&m.topic));
                let mut props = if v.is_v5() { d.properties() } else { None };
                let topic = match alias {
                    AliasUse::None => &*m.topic,
                    AliasUse::Bind(a) | AliasUse::Reuse(a) => {
                        props
                            .get_or_insert_with(Default::default)
                            .to_mut()
                            .topic_alias = Some(a);
                        if matches!(alias, AliasUse::Reuse(_)) {
                            ""
                        } else {
                            &*m.topic
                        }
                    }
                };
                encode_publish(
                    out,
                    topic,
                    &m.payload,
                    d.qos,
                    *pkid,
                    *dup,
                    d.retain,
                    props.as_deref(),
                    v,
                );
            }
            Frame::Ack { kind, pkid, code } => {
                let a = Ack {
                    pkid: *pkid,
                    code: *code,
                    properties: Properties::default(),
                };
                let p = match kind {
                    AckKind::PubAck => Packet::PubAck(a),
                    AckKind::PubRec => Packet::PubRec(a),
                    AckKind::PubRel => Packet::PubRel(a),
                    AckKind::PubComp => Packet::PubComp(a),
                };
                encode(&p, v, out);
            }
            Frame::PingResp => encode(&Packet::PingResp, v, out),
            Frame::Control(p) => encode(p, v, out),
        }
    }
}
