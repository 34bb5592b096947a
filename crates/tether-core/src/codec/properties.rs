//! MQTT 5 properties (MQTT 5.0 section 2.2.2).
//!
//! One struct holds every property; the decoder checks which properties each
//! packet may carry and that single-valued ones appear at most once.

use bytes::Bytes;

use super::encode::{put_binary, put_str, put_varint, varint_len};
use super::reader::{DecodeError, Reader};

/// Where a property block appears; selects the allowed property ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctx {
    Connect,
    ConnAck,
    Publish,
    Will,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Ctx {
    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// All MQTT 5 properties. `None`/empty means absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// Payload format indicator.
    pub payload_format_indicator: Option<u8>,
    /// Message expiry interval.
    pub message_expiry_interval: Option<u32>,
    /// Content type.
    pub content_type: Option<String>,
    /// Response topic.
    pub response_topic: Option<String>,
    /// Correlation data.
    pub correlation_data: Option<Bytes>,
    /// Subscription Identifiers (a PUBLISH to a subscriber may carry several).
    pub subscription_identifiers: Vec<u32>,
    /// Session expiry interval.
    pub session_expiry_interval: Option<u32>,
    /// Assigned client identifier.
    pub assigned_client_identifier: Option<String>,
    /// Server keep alive.
    pub server_keep_alive: Option<u16>,
    /// Authentication method.
    pub authentication_method: Option<String>,
    /// Authentication data.
    pub authentication_data: Option<Bytes>,
    /// Request problem information.
    pub request_problem_information: Option<u8>,
    /// Will delay interval.
    pub will_delay_interval: Option<u32>,
    /// Request response information.
    pub request_response_information: Option<u8>,
    /// Response information.
    pub response_information: Option<String>,
    /// Server reference.
    pub server_reference: Option<String>,
    /// Reason string.
    pub reason_string: Option<String>,
    /// Receive maximum.
    pub receive_maximum: Option<u16>,
    /// Topic alias maximum.
    pub topic_alias_maximum: Option<u16>,
    /// Topic alias.
    pub topic_alias: Option<u16>,
    /// Maximum qos.
    pub maximum_qos: Option<u8>,
    /// Retain available.
    pub retain_available: Option<u8>,
    /// User Property pairs, in order.
    pub user_properties: Vec<(String, String)>,
    /// Maximum packet size.
    pub maximum_packet_size: Option<u32>,
    /// Wildcard subscription available.
    pub wildcard_subscription_available: Option<u8>,
    /// Subscription identifier available.
    pub subscription_identifier_available: Option<u8>,
    /// Shared subscription available.
    pub shared_subscription_available: Option<u8>,
}

macro_rules! ctxs {
    ($($c:ident),*) => { 0 $(| Ctx::$c.bit())* };
}

const MSG: u16 = ctxs!(Publish, Will);
const ALL: u16 = ctxs!(
    Connect,
    ConnAck,
    Publish,
    Will,
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth
);
const REASON: u16 = ctxs!(ConnAck, PubResp, SubAck, UnsubAck, Disconnect, Auth);

/// Property ids and the contexts that allow them (MQTT 5.0 table 2-4).
fn allowed(id: u8) -> Option<u16> {
    Some(match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => MSG,
        0x0B => ctxs!(Publish, Subscribe),
        0x11 => ctxs!(Connect, ConnAck, Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => ctxs!(ConnAck),
        0x15 | 0x16 => ctxs!(Connect, ConnAck, Auth),
        0x17 | 0x19 => ctxs!(Connect),
        0x18 => ctxs!(Will),
        0x1C => ctxs!(ConnAck, Disconnect),
        0x1F => REASON,
        0x21 | 0x22 | 0x27 => ctxs!(Connect, ConnAck),
        0x23 => ctxs!(Publish),
        0x26 => ALL,
        _ => return None,
    })
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property appears twice"));
    }
    *slot = Some(v);
    Ok(())
}

fn flag(v: u8) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::Protocol("boolean property not 0 or 1"));
    }
    Ok(v)
}

impl Properties {
    /// True when no property is set (the common case on the hot path).
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    pub(crate) fn decode(r: &mut Reader<'_>, ctx: Ctx) -> Result<Properties, DecodeError> {
        let len = r.varint()? as usize;
        let mut r = r.sub(len)?;
        let mut p = Properties::default();
        while !r.is_empty() {
            let id = r.varint()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::Malformed("unknown property"))?;
            let mask = allowed(id).ok_or(DecodeError::Malformed("unknown property"))?;
            if mask & ctx.bit() == 0 {
                return Err(DecodeError::Protocol("property not allowed in this packet"));
            }
            match id {
                0x01 => set_once(&mut p.payload_format_indicator, flag(r.u8()?)?)?,
                0x02 => set_once(&mut p.message_expiry_interval, r.u32()?)?,
                0x03 => set_once(&mut p.content_type, r.string()?)?,
                0x08 => set_once(&mut p.response_topic, r.string()?)?,
                0x09 => set_once(&mut p.correlation_data, r.binary()?)?,
                0x0B => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    if ctx == Ctx::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::Protocol("property appears twice"));
                    }
                    p.subscription_identifiers.push(v);
                }
                0x11 => set_once(&mut p.session_expiry_interval, r.u32()?)?,
                0x12 => set_once(&mut p.assigned_client_identifier, r.string()?)?,
                0x13 => set_once(&mut p.server_keep_alive, r.u16()?)?,
                0x15 => set_once(&mut p.authentication_method, r.string()?)?,
                0x16 => set_once(&mut p.authentication_data, r.binary()?)?,
                0x17 => set_once(&mut p.request_problem_information, flag(r.u8()?)?)?,
                0x18 => set_once(&mut p.will_delay_interval, r.u32()?)?,
                0x19 => set_once(&mut p.request_response_information, flag(r.u8()?)?)?,
                0x1A => set_once(&mut p.response_information, r.string()?)?,
                0x1C => set_once(&mut p.server_reference, r.string()?)?,
                0x1F => set_once(&mut p.reason_string, r.string()?)?,
                0x21 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    set_once(&mut p.receive_maximum, v)?
                }
                0x22 => set_once(&mut p.topic_alias_maximum, r.u16()?)?,
                0x23 => set_once(&mut p.topic_alias, r.u16()?)?,
                0x24 => set_once(&mut p.maximum_qos, flag(r.u8()?)?)?,
                0x25 => set_once(&mut p.retain_available, flag(r.u8()?)?)?,
                0x26 => {
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user_properties.push((k, v));
                }
                0x27 => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    set_once(&mut p.maximum_packet_size, v)?
                }
                0x28 => set_once(&mut p.wildcard_subscription_available, flag(r.u8()?)?)?,
                0x29 => set_once(&mut p.subscription_identifier_available, flag(r.u8()?)?)?,
                0x2A => set_once(&mut p.shared_subscription_available, flag(r.u8()?)?)?,
                _ => unreachable!("allowed() only admits known ids"),
            }
        }
        Ok(p)
    }

    /// Appends the property block (length prefix included).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let len = self.body_len();
        put_varint(out, len);
        self.encode_body(out);
    }

    /// Encoded size including the length prefix.
    pub(crate) fn encoded_len(&self) -> usize {
        let len = self.body_len();
        varint_len(len) + len
    }

    fn body_len(&self) -> usize {
        let s = |o: &Option<String>| o.as_ref().map_or(0, |v| 3 + v.len());
        let b = |o: &Option<Bytes>| o.as_ref().map_or(0, |v| 3 + v.len());
        let n1 = |o: Option<u8>| o.map_or(0, |_| 2);
        let n2 = |o: Option<u16>| o.map_or(0, |_| 3);
        let n4 = |o: Option<u32>| o.map_or(0, |_| 5);
        n1(self.payload_format_indicator)
            + n4(self.message_expiry_interval)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|v| 1 + varint_len(*v as usize))
                .sum::<usize>()
            + n4(self.session_expiry_interval)
            + s(&self.assigned_client_identifier)
            + n2(self.server_keep_alive)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n1(self.request_problem_information)
            + n4(self.will_delay_interval)
            + n1(self.request_response_information)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n2(self.receive_maximum)
            + n2(self.topic_alias_maximum)
            + n2(self.topic_alias)
            + n1(self.maximum_qos)
            + n1(self.retain_available)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>()
            + n4(self.maximum_packet_size)
            + n1(self.wildcard_subscription_available)
            + n1(self.subscription_identifier_available)
            + n1(self.shared_subscription_available)
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        fn u1(out: &mut Vec<u8>, id: u8, v: Option<u8>) {
            if let Some(v) = v {
                out.extend_from_slice(&[id, v]);
            }
        }
        fn u2(out: &mut Vec<u8>, id: u8, v: Option<u16>) {
            if let Some(v) = v {
                out.push(id);
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        fn u4(out: &mut Vec<u8>, id: u8, v: Option<u32>) {
            if let Some(v) = v {
                out.push(id);
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        fn s(out: &mut Vec<u8>, id: u8, v: &Option<String>) {
            if let Some(v) = v {
                out.push(id);
                put_str(out, v);
            }
        }
        fn b(out: &mut Vec<u8>, id: u8, v: &Option<Bytes>) {
            if let Some(v) = v {
                out.push(id);
                put_binary(out, v);
            }
        }
        u1(out, 0x01, self.payload_format_indicator);
        u4(out, 0x02, self.message_expiry_interval);
        s(out, 0x03, &self.content_type);
        s(out, 0x08, &self.response_topic);
        b(out, 0x09, &self.correlation_data);
        for id in &self.subscription_identifiers {
            out.push(0x0B);
            put_varint(out, *id as usize);
        }
        u4(out, 0x11, self.session_expiry_interval);
        s(out, 0x12, &self.assigned_client_identifier);
        u2(out, 0x13, self.server_keep_alive);
        s(out, 0x15, &self.authentication_method);
        b(out, 0x16, &self.authentication_data);
        u1(out, 0x17, self.request_problem_information);
        u4(out, 0x18, self.will_delay_interval);
        u1(out, 0x19, self.request_response_information);
        s(out, 0x1A, &self.response_information);
        s(out, 0x1C, &self.server_reference);
        s(out, 0x1F, &self.reason_string);
        u2(out, 0x21, self.receive_maximum);
        u2(out, 0x22, self.topic_alias_maximum);
        u2(out, 0x23, self.topic_alias);
        u1(out, 0x24, self.maximum_qos);
        u1(out, 0x25, self.retain_available);
        for (k, v) in &self.user_properties {
            out.push(0x26);
            put_str(out, k);
            put_str(out, v);
        }
        u4(out, 0x27, self.maximum_packet_size);
        u1(out, 0x28, self.wildcard_subscription_available);
        u1(out, 0x29, self.subscription_identifier_available);
        u1(out, 0x2A, self.shared_subscription_available);
    }
}
