//! A stored message: what one session gets, as bytes in Redis.
//!
//! The body is the MQTT 5 PUBLISH the session would receive (topic,
//! payload, QoS and retain flag as delivered, properties including its
//! subscription identifiers), encoded by the gateway's own codec, so every
//! property survives without a second format to keep in step. In front of
//! it: a format byte and the Message Expiry deadline as Unix milliseconds
//! (the interval in the properties would restart on every restore).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::codec::{decode, encode_publish, Packet, Version};
use crate::session::{sub_ids, Delivery, Message, Publication};

/// Format of the bytes that follow.
const FORMAT: u8 = 1;
/// Format byte and deadline.
const HEADER: usize = 1 + 8;

/// Encodes what `d` sends its session.
pub fn encode(d: &Delivery) -> Vec<u8> {
    let m = &d.msg;
    let deadline_ms = m.expires_at.map_or(0, |at| {
        let left = at.saturating_duration_since(Instant::now());
        unix_ms(SystemTime::now() + left).max(1)
    });
    let props = d.properties();
    let mut out = Vec::with_capacity(HEADER + m.topic.len() + m.payload.len() + 16);
    out.push(FORMAT);
    out.extend_from_slice(&deadline_ms.to_be_bytes());
    encode_publish(
        &mut out,
        &m.topic,
        &m.payload,
        d.qos,
        // Packet ids are the connection's business; any valid one will do.
        1,
        false,
        d.retain,
        props.as_deref(),
        Version::V5,
    );
    out
}

/// Why stored bytes could not be read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobError {
    /// Unknown format byte, or too short.
    Format,
    /// The PUBLISH inside does not decode.
    Packet(String),
}

/// Decodes a stored message; `id` becomes the message's id (see
/// `RedisStore`). `None` when its Message Expiry has passed.
pub fn decode_delivery(bytes: &[u8], id: u64, seq: u64) -> Result<Option<Delivery>, BlobError> {
    if bytes.len() < HEADER || bytes[0] != FORMAT {
        return Err(BlobError::Format);
    }
    let deadline_ms = u64::from_be_bytes(bytes[1..HEADER].try_into().expect("8 bytes"));
    let p = match decode(&bytes[HEADER..], Some(Version::V5), usize::MAX) {
        Ok(Some((Packet::Publish(p), _))) => p,
        Ok(_) => return Err(BlobError::Packet("not a complete PUBLISH".into())),
        Err(e) => return Err(BlobError::Packet(e.to_string())),
    };
    let now = Instant::now();
    let mut props = p.properties;
    let ids = std::mem::take(&mut props.subscription_identifiers);
    props.message_expiry_interval = None;
    let expires_at = if deadline_ms == 0 {
        None
    } else {
        let now_ms = unix_ms(SystemTime::now());
        if deadline_ms <= now_ms {
            return Ok(None);
        }
        Some(now + Duration::from_millis(deadline_ms - now_ms))
    };
    let mut msg = Message::new(
        id,
        Publication {
            topic: p.topic.into(),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: Some(Box::new(props)),
            origin: None,
        },
        now,
    );
    msg.expires_at = expires_at;
    let mut d = Delivery::new(Arc::new(msg), p.qos, p.retain, sub_ids(ids));
    d.seq = seq;
    Ok(Some(d))
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Properties, QoS};

    fn delivery(expiry: Option<u32>) -> Delivery {
        let props = Properties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            message_expiry_interval: expiry,
            ..Default::default()
        };
        let m = Message::new(
            9,
            Publication {
                topic: "a/b".into(),
                payload: bytes::Bytes::from_static(b"payload"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: Some(Box::new(props)),
                origin: None,
            },
            Instant::now(),
        );
        Delivery::new(Arc::new(m), QoS::AtLeastOnce, true, sub_ids([3, 4]))
    }

    #[test]
    fn a_delivery_survives_the_round_trip() {
        let d = delivery(Some(60));
        let back = decode_delivery(&encode(&d), 77, 5).unwrap().unwrap();
        assert_eq!((back.msg.id, back.seq), (77, 5));
        assert_eq!(&*back.msg.topic, "a/b");
        assert_eq!(&back.msg.payload[..], b"payload");
        assert_eq!((back.qos, back.retain), (QoS::AtLeastOnce, true));
        assert_eq!(back.sub_ids.as_deref(), Some(&[3, 4][..]));
        let p = back.msg.properties.as_deref().unwrap();
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.user_properties, vec![("k".into(), "v".into())]);
        let left = back.msg.expires_at.unwrap() - Instant::now();
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60));
    }

    #[test]
    fn an_expired_message_is_not_restored_and_garbage_is_refused() {
        let mut bytes = encode(&delivery(Some(60)));
        bytes[1..9].copy_from_slice(&1u64.to_be_bytes());
        assert!(matches!(decode_delivery(&bytes, 1, 1), Ok(None)), "expired");
        assert!(matches!(
            decode_delivery(b"\x02xxxxxxxx", 1, 1),
            Err(BlobError::Format)
        ));
        assert!(matches!(
            decode_delivery(b"\x01\0\0\0\0\0\0\0\0\x30", 1, 1),
            Err(BlobError::Packet(_))
        ));
        let plain = encode(&delivery(None));
        assert!(decode_delivery(&plain, 1, 1)
            .unwrap()
            .unwrap()
            .msg
            .expires_at
            .is_none());
    }
}
