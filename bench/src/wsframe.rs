//! The client side of MQTT over WebSocket (`--transport ws`): the upgrade
//! request, masked client frames out, unmasked server frames in.

use bytes::{Buf, BytesMut};

/// The upgrade request for `path` on `host`, offering the `mqtt` subprotocol.
pub fn upgrade_request(host: &str, path: &str, key_seed: u32) -> String {
    // The key only has to be 16 random-looking bytes, base64: derive it from
    // the client index (no RNG needed, stable across runs).
    let key: String = {
        use base64_lite as b64;
        b64::encode(
            &[
                key_seed.to_be_bytes(),
                [0x54, 0x65, 0x74, 0x68],
                key_seed.to_le_bytes(),
                [0x65, 0x72, 0x21, 0x21],
            ]
            .concat(),
        )
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
}

/// Checks the upgrade response at the front of `raw`; returns the bytes
/// it took, `None` while incomplete.
pub fn upgrade_response(raw: &[u8]) -> Result<Option<usize>, String> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if raw.len() > 8192 {
            Err("websocket: upgrade response too large".into())
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    if !head.starts_with("HTTP/1.1 101") {
        let status = head.lines().next().unwrap_or("").to_string();
        return Err(format!("websocket upgrade refused: {status}"));
    }
    Ok(Some(end + 4))
}

/// Appends `payload` as one masked binary frame.
pub fn frame(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x82);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Moves the payloads of complete server frames from `raw` to `mqtt`;
/// returns a close code if the server closed.
pub fn unframe(raw: &mut BytesMut, mqtt: &mut BytesMut) -> Result<(), String> {
    loop {
        if raw.len() < 2 {
            return Ok(());
        }
        let (b0, b1) = (raw[0], raw[1]);
        let (len, at) = match b1 & 0x7F {
            126 if raw.len() >= 4 => (u16::from_be_bytes([raw[2], raw[3]]) as usize, 4),
            127 if raw.len() >= 10 => (
                u64::from_be_bytes(raw[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            126 | 127 => return Ok(()),
            n => (n as usize, 2),
        };
        if raw.len() < at + len {
            return Ok(());
        }
        match b0 & 0x0F {
            0x0 | 0x2 => mqtt.extend_from_slice(&raw[at..at + len]),
            0x8 => {
                let code = (len >= 2).then(|| u16::from_be_bytes([raw[at], raw[at + 1]]));
                return Err(format!("websocket closed by broker ({code:?})"));
            }
            // Server pings go unanswered: the brokers under test do not
            // send them, and MQTT's own PINGREQ keeps the link alive.
            _ => {}
        }
        raw.advance(at + len);
    }
}

/// Base64 for the 16-byte key, without a dependency.
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_keys_are_base64() {
        assert_eq!(
            base64_lite::encode(b"the sample nonce"),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        let mut out = Vec::new();
        frame(&[1, 2, 3], [9, 9, 9, 9], &mut out);
        assert_eq!(out, [0x82, 0x83, 9, 9, 9, 9, 1 ^ 9, 2 ^ 9, 3 ^ 9]);
        let mut raw = BytesMut::from(&[0x82, 0x02, 0xAA, 0xBB, 0x80, 0x01][..]);
        let mut mqtt = BytesMut::new();
        unframe(&mut raw, &mut mqtt).unwrap();
        assert_eq!(
            (&mqtt[..], raw.len()),
            (&[0xAA, 0xBB][..], 2),
            "a partial frame stays"
        );
        let mut closed = BytesMut::from(&[0x88, 0x02, 0x03, 0xF1][..]);
        assert!(unframe(&mut closed, &mut mqtt)
            .unwrap_err()
            .contains("1009"));
        assert_eq!(
            upgrade_response(b"HTTP/1.1 101 Switching\r\nA: b\r\n\r\nX"),
            Ok(Some(32))
        );
        assert!(upgrade_response(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
    }
}
