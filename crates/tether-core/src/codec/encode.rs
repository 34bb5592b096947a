//! Packet encoding into a caller-owned `Vec<u8>`.

use super::packet::*;
use super::Properties;

pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if v == 0 {
            break;
        }
    }
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_binary(out, s.as_bytes());
}

pub(crate) fn put_binary(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// Size of a PUBLISH as [`encode_publish`] writes it, for byte accounting and
/// Maximum Packet Size checks without encoding.
pub fn encoded_len_publish(
    topic: &str,
    payload_len: usize,
    qos: QoS,
    props: Option<&Properties>,
    v: Version,
) -> usize {
    let remaining = remaining_publish(topic, payload_len, qos, props, v);
    1 + varint_len(remaining) + remaining
}

fn remaining_publish(
    topic: &str,
    payload_len: usize,
    qos: QoS,
    props: Option<&Properties>,
    v: Version,
) -> usize {
    let pkid = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let props = if v.is_v5() {
        props.map_or(1, |p| p.encoded_len())
    } else {
        0
    };
    2 + topic.len() + pkid + props + payload_len
}

/// Encodes a PUBLISH straight from its parts (the fan-out hot path: no
/// intermediate [`Publish`] value is built per subscriber).
#[allow(clippy::too_many_arguments)]
pub fn encode_publish(
    out: &mut Vec<u8>,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    pkid: u16,
    dup: bool,
    retain: bool,
    props: Option<&Properties>,
    v: Version,
) {
    let remaining = remaining_publish(topic, payload.len(), qos, props, v);
    out.reserve(1 + varint_len(remaining) + remaining);
    out.push(0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain));
    put_varint(out, remaining);
    put_str(out, topic);
    if qos != QoS::AtMostOnce {
        out.extend_from_slice(&pkid.to_be_bytes());
    }
    if v.is_v5() {
        match props {
            Some(p) => p.encode(out),
            None => out.push(0),
        }
    }
    out.extend_from_slice(payload);
}

/// Appends `packet` encoded for protocol `v`.
pub fn encode(packet: &Packet, v: Version, out: &mut Vec<u8>) {
    let v5 = v.is_v5();
    let (first, body) = {
        let mut b = Vec::with_capacity(32);
        let first = match packet {
            Packet::Connect(c) => {
                encode_connect(c, &mut b);
                0x10
            }
            Packet::ConnAck(a) => {
                b.push(u8::from(a.session_present));
                if v5 {
                    b.push(a.code);
                    a.properties.encode(&mut b);
                } else {
                    b.push(reason::connack_v3(a.code));
                }
                0x20
            }
            Packet::Publish(p) => {
                let props = if v5 { Some(&p.properties) } else { None };
                encode_publish(
                    out, &p.topic, &p.payload, p.qos, p.pkid, p.dup, p.retain, props, v,
                );
                return;
            }
            Packet::PubAck(a) => ack(&mut b, a, v5, 0x40),
            Packet::PubRec(a) => ack(&mut b, a, v5, 0x50),
            Packet::PubRel(a) => ack(&mut b, a, v5, 0x62),
            Packet::PubComp(a) => ack(&mut b, a, v5, 0x70),
            Packet::Subscribe(s) => {
                b.extend_from_slice(&s.pkid.to_be_bytes());
                if v5 {
                    s.properties.encode(&mut b);
                }
                for (f, o) in &s.filters {
                    put_str(&mut b, f);
                    let mut opts = o.qos as u8;
                    if v5 {
                        opts |= u8::from(o.no_local) << 2
                            | u8::from(o.retain_as_published) << 3
                            | (o.retain_handling & 3) << 4;
                    }
                    b.push(opts);
                }
                0x82
            }
            Packet::SubAck(s) => {
                b.extend_from_slice(&s.pkid.to_be_bytes());
                if v5 {
                    s.properties.encode(&mut b);
                }
                b.extend_from_slice(&s.codes);
                0x90
            }
            Packet::Unsubscribe(u) => {
                b.extend_from_slice(&u.pkid.to_be_bytes());
                if v5 {
                    u.properties.encode(&mut b);
                }
                for f in &u.filters {
                    put_str(&mut b, f);
                }
                0xA2
            }
            Packet::UnsubAck(u) => {
                b.extend_from_slice(&u.pkid.to_be_bytes());
                if v5 {
                    u.properties.encode(&mut b);
                    b.extend_from_slice(&u.codes);
                }
                0xB0
            }
            Packet::PingReq => 0xC0,
            Packet::PingResp => 0xD0,
            Packet::Disconnect(d) => {
                reason_only(&mut b, d, v5);
                0xE0
            }
            Packet::Auth(a) => {
                reason_only(&mut b, a, v5);
                0xF0
            }
        };
        (first, b)
    };
    out.push(first);
    put_varint(out, body.len());
    out.extend_from_slice(&body);
}

/// Acks omit reason code and properties when the code is success and there
/// are no properties (MQTT 5 section 3.4.2.1). When a reason code is present
/// the property length is always written, even if zero: the spec allows
/// omitting it, but some client libraries fail to parse that shorter form.
fn ack(b: &mut Vec<u8>, a: &Ack, v5: bool, first: u8) -> u8 {
    b.extend_from_slice(&a.pkid.to_be_bytes());
    if v5 && (a.code != 0 || !a.properties.is_empty()) {
        b.push(a.code);
        a.properties.encode(b);
    }
    first
}

/// Same rule as [`ack`] for DISCONNECT and AUTH.
fn reason_only(b: &mut Vec<u8>, r: &ReasonOnly, v5: bool) {
    if v5 && (r.code != 0 || !r.properties.is_empty()) {
        b.push(r.code);
        r.properties.encode(b);
    }
}

fn encode_connect(c: &Connect, b: &mut Vec<u8>) {
    let (name, level) = match c.version {
        Version::V31 => ("MQIsdp", 3),
        Version::V311 => ("MQTT", 4),
        Version::V5 => ("MQTT", 5),
    };
    put_str(b, name);
    b.push(level);
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
    b.push(flags);
    b.extend_from_slice(&c.keep_alive.to_be_bytes());
    let v5 = c.version.is_v5();
    if v5 {
        c.properties.encode(b);
    }
    put_str(b, &c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            w.properties.encode(b);
        }
        put_str(b, &w.topic);
        put_binary(b, &w.payload);
    }
    if let Some(u) = &c.username {
        put_str(b, u);
    }
    if let Some(p) = &c.password {
        put_binary(b, p);
    }
}
