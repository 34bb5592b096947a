//! Packet decoding: fixed header first, then the body once it is complete.

use bytes::Bytes;

use super::packet::*;
use super::properties::{Ctx, Properties};
pub use super::reader::DecodeError;
use super::reader::{read_varint, Reader};
use super::topic;
use super::MAX_REMAINING_LENGTH;

/// Total length of the packet at the start of `buf`, once the fixed header is
/// complete. Checks the size limit before any body byte is needed.
pub fn frame_len(buf: &[u8], max_packet_size: usize) -> Result<Option<usize>, DecodeError> {
    Ok(header(buf, max_packet_size)?.map(|(_, total)| total))
}

/// The packet id of a plain PUBACK at the front of `buf`: fixed header
/// 0x40, remaining length 2, a non-zero id (3.1.1, and 5.0's success
/// without properties). Anything else, including an incomplete packet,
/// is `None` and goes through [`decode`], which reports what is wrong.
#[inline]
pub fn plain_puback(buf: &[u8]) -> Option<u16> {
    match buf {
        [0x40, 2, hi, lo, ..] => match u16::from_be_bytes([*hi, *lo]) {
            0 => None,
            id => Some(id),
        },
        _ => None,
    }
}

/// `(body offset, total length)` of the packet at the front of `buf`.
fn header(buf: &[u8], max_packet_size: usize) -> Result<Option<(usize, usize)>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let Some((remaining, n)) = read_varint(&buf[1..])? else {
        return Ok(None);
    };
    debug_assert!(remaining <= MAX_REMAINING_LENGTH);
    let total = 1 + n + remaining;
    if total > max_packet_size {
        return Err(DecodeError::TooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    Ok(Some((1 + n, total)))
}

/// Decodes one packet from the front of `buf`.
///
/// `version` is `None` until CONNECT was accepted; only CONNECT is decodable
/// then. Returns `Ok(None)` while the packet is incomplete, or the packet and
/// the number of bytes it occupied.
pub fn decode(
    buf: &[u8],
    version: Option<Version>,
    max_packet_size: usize,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some((body_start, total)) = header(buf, max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[body_start..total];
    let kind = buf[0] >> 4;
    let flags = buf[0] & 0x0F;
    let packet = match version {
        None => {
            if kind != 1 {
                return Err(DecodeError::Protocol("first packet is not CONNECT"));
            }
            check_flags(flags, 0)?;
            decode_connect(body)?
        }
        Some(v) => decode_body(kind, flags, body, v)?,
    };
    Ok(Some((packet, total)))
}

fn check_flags(flags: u8, expected: u8) -> Result<(), DecodeError> {
    if flags != expected {
        return Err(DecodeError::Malformed("reserved fixed-header flags"));
    }
    Ok(())
}

fn finish(r: &Reader<'_>) -> Result<(), DecodeError> {
    if !r.is_empty() {
        return Err(DecodeError::Malformed(
            "trailing bytes after packet contents",
        ));
    }
    Ok(())
}

fn props(r: &mut Reader<'_>, v: Version, ctx: Ctx) -> Result<Properties, DecodeError> {
    if v.is_v5() {
        Properties::decode(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

fn pkid(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::Malformed("packet identifier 0")),
        id => Ok(id),
    }
}

fn decode_body(kind: u8, flags: u8, body: &[u8], v: Version) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body);
    let p = match kind {
        1 => return Err(DecodeError::Protocol("second CONNECT")),
        2 => {
            check_flags(flags, 0)?;
            let ack_flags = r.u8()?;
            if ack_flags & 0xFE != 0 {
                return Err(DecodeError::Malformed("reserved CONNACK flags"));
            }
            let code = r.u8()?;
            let properties = props(&mut r, v, Ctx::ConnAck)?;
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
                properties,
            })
        }
        3 => decode_publish(flags, &mut r, v)?,
        4..=7 => {
            check_flags(flags, if kind == 6 { 0b0010 } else { 0 })?;
            let ack = decode_ack(&mut r, v)?;
            match kind {
                4 => Packet::PubAck(ack),
                5 => Packet::PubRec(ack),
                6 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        8 => {
            check_flags(flags, 0b0010)?;
            let pkid = pkid(&mut r)?;
            let properties = props(&mut r, v, Ctx::Subscribe)?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                let filter = r.string()?;
                let o = r.u8()?;
                let qos =
                    QoS::from_u8(o & 3).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
                let reserved = if v.is_v5() { 0xC0 } else { 0xFC };
                if o & reserved != 0 {
                    return Err(DecodeError::Malformed("reserved subscription option bits"));
                }
                let retain_handling = (o >> 4) & 3;
                if retain_handling == 3 {
                    return Err(DecodeError::Protocol("retain handling 3"));
                }
                filters.push((
                    filter,
                    SubOptions {
                        qos,
                        no_local: o & 0x04 != 0,
                        retain_as_published: o & 0x08 != 0,
                        retain_handling,
                    },
                ));
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
            }
            Packet::Subscribe(Subscribe {
                pkid,
                filters,
                properties,
            })
        }
        9 => {
            check_flags(flags, 0)?;
            let pkid = pkid(&mut r)?;
            let properties = props(&mut r, v, Ctx::SubAck)?;
            let codes = r.rest().to_vec();
            Packet::SubAck(SubAck {
                pkid,
                codes,
                properties,
            })
        }
        10 => {
            check_flags(flags, 0b0010)?;
            let pkid = pkid(&mut r)?;
            let properties = props(&mut r, v, Ctx::Unsubscribe)?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
            }
            Packet::Unsubscribe(Unsubscribe {
                pkid,
                filters,
                properties,
            })
        }
        11 => {
            check_flags(flags, 0)?;
            let pkid = pkid(&mut r)?;
            let properties = props(&mut r, v, Ctx::UnsubAck)?;
            let codes = if v.is_v5() {
                r.rest().to_vec()
            } else {
                Vec::new()
            };
            Packet::UnsubAck(UnsubAck {
                pkid,
                codes,
                properties,
            })
        }
        12 | 13 => {
            check_flags(flags, 0)?;
            if kind == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 => {
            check_flags(flags, 0)?;
            Packet::Disconnect(decode_reason_only(&mut r, v, Ctx::Disconnect)?)
        }
        15 if v.is_v5() => {
            check_flags(flags, 0)?;
            Packet::Auth(decode_reason_only(&mut r, v, Ctx::Auth)?)
        }
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    finish(&r)?;
    Ok(p)
}

fn decode_reason_only(r: &mut Reader<'_>, v: Version, ctx: Ctx) -> Result<ReasonOnly, DecodeError> {
    if !v.is_v5() || r.is_empty() {
        return Ok(ReasonOnly::default());
    }
    let code = r.u8()?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        Properties::decode(r, ctx)?
    };
    Ok(ReasonOnly { code, properties })
}

fn decode_ack(r: &mut Reader<'_>, v: Version) -> Result<Ack, DecodeError> {
    let pkid = pkid(r)?;
    if !v.is_v5() || r.is_empty() {
        return Ok(Ack::new(pkid));
    }
    let code = r.u8()?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        Properties::decode(r, Ctx::PubResp)?
    };
    Ok(Ack {
        pkid,
        code,
        properties,
    })
}

fn decode_publish(flags: u8, r: &mut Reader<'_>, v: Version) -> Result<Packet, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let qos = QoS::from_u8((flags >> 1) & 3).ok_or(DecodeError::Malformed("PUBLISH QoS 3"))?;
    let retain = flags & 1 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = r.string()?;
    if topic.is_empty() && !v.is_v5() {
        return Err(DecodeError::TopicName("empty topic name"));
    }
    topic::validate_name(&topic).map_err(DecodeError::TopicName)?;
    let pkid = if qos == QoS::AtMostOnce { 0 } else { pkid(r)? };
    let properties = props(r, v, Ctx::Publish)?;
    let payload = Bytes::copy_from_slice(r.rest());
    Ok(Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic,
        pkid,
        properties,
        payload,
    }))
}

fn decode_connect(body: &[u8]) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body);
    let name = r.string()?;
    let level = r.u8()?;
    let version = match (name.as_str(), level) {
        ("MQTT", 4) => Version::V311,
        ("MQTT", 5) => Version::V5,
        ("MQIsdp", 3) => Version::V31,
        ("MQTT" | "MQIsdp", other) => return Err(DecodeError::UnsupportedVersion(other)),
        _ => return Err(DecodeError::Protocol("unknown protocol name")),
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 3;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed("will QoS/retain without will flag"));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
    if has_password && !has_username && !version.is_v5() {
        return Err(DecodeError::Malformed("password without username"));
    }
    let keep_alive = r.u16()?;
    let properties = props(&mut r, version, Ctx::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = props(&mut r, version, Ctx::Will)?;
        let topic = r.string()?;
        if topic.is_empty() {
            return Err(DecodeError::TopicName("empty will topic"));
        }
        topic::validate_name(&topic).map_err(DecodeError::TopicName)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    finish(&r)?;
    Ok(Packet::Connect(Box::new(Connect {
        version,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })))
}
