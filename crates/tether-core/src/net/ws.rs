//! MQTT over WebSocket (RFC 6455), sans-IO: the upgrade handshake and the
//! frame codec the connection task runs in front of the MQTT codec.
//!
//! Hand-written on purpose, with `httparse` for the request and `sha1_smol`
//! for the accept digest: the framing is a few dozen lines, it must run
//! inside the connection's poll state machine (read by readiness into the
//! core's scratch buffer, no task or buffer per idle socket), and the
//! stream-based crates (tungstenite) own the socket and a buffer per
//! connection. Client frames are unmasked in place; MQTT packets may span
//! frames and a frame may carry several packets, because the MQTT decoder
//! sees one byte stream.

use base64::Engine;

/// RFC 6455 1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest upgrade request accepted (the request line and headers).
pub const MAX_HANDSHAKE_BYTES: usize = 8 * 1024;
/// Headers parsed from an upgrade request.
const MAX_HEADERS: usize = 32;

/// Outcome of feeding bytes to the upgrade parser.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// More bytes needed.
    Incomplete,
    /// Upgraded: send `response`; `used` bytes of the input were the request.
    Accepted {
        /// The 101 response.
        response: Vec<u8>,
        /// Bytes of the input the request took.
        used: usize,
    },
    /// Not an acceptable upgrade: send `response` (an HTTP error) and close.
    Refused {
        /// The HTTP error response.
        response: Vec<u8>,
        /// Why, for the log.
        why: String,
    },
}

/// Parses an upgrade request for `path`, negotiating the `mqtt`
/// subprotocol (MQTT 5.0 6.0: the client offers it; we require it).
pub fn handshake(buf: &[u8], path: &str) -> Handshake {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HANDSHAKE_BYTES => {
            return Handshake::Incomplete
        }
        Ok(httparse::Status::Partial) => {
            return refuse(
                431,
                "Request Header Fields Too Large",
                "upgrade request too large",
            )
        }
        Err(e) => return refuse(400, "Bad Request", &format!("not an HTTP request: {e}")),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if req.method != Some("GET") {
        return refuse(405, "Method Not Allowed", "upgrade must be a GET");
    }
    if req.path.map(|p| p.split('?').next().unwrap_or(p)) != Some(path) {
        return refuse(
            404,
            "Not Found",
            &format!("no WebSocket endpoint at {:?}", req.path.unwrap_or("")),
        );
    }
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return refuse(400, "Bad Request", "not a WebSocket upgrade");
    }
    if header("sec-websocket-version") != Some("13") {
        return refuse(
            426,
            "Upgrade Required",
            "only WebSocket version 13 is supported",
        );
    }
    let Some(key) = header("sec-websocket-key")
        .map(str::trim)
        .filter(|k| !k.is_empty())
    else {
        return refuse(400, "Bad Request", "missing Sec-WebSocket-Key");
    };
    if !has_token("sec-websocket-protocol", "mqtt") {
        return refuse(
            400,
            "Bad Request",
            "the client must offer the mqtt subprotocol",
        );
    }
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    Handshake::Accepted {
        response: response.into_bytes(),
        used,
    }
}

fn refuse(status: u16, reason: &str, why: &str) -> Handshake {
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}",
        why.len()
    );
    Handshake::Refused {
        response: response.into_bytes(),
        why: why.to_string(),
    }
}

/// Frame opcodes (RFC 6455 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// More of a fragmented message.
    Continuation,
    /// A UTF-8 text message (refused: MQTT needs binary).
    Text,
    /// A binary message: MQTT bytes.
    Binary,
    /// Closing handshake.
    Close,
    /// Ping (answered with a pong).
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }
}

/// Close status codes sent (RFC 6455 7.4.1).
pub mod close {
    /// 1000: normal closure.
    pub const NORMAL: u16 = 1000;
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// 1003: data of a type the endpoint cannot accept (text).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// 1009: message too big.
    pub const TOO_BIG: u16 = 1009;
}

/// Why a frame could not be decoded; each maps to a close code.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Unknown opcode, reserved bits, an unmasked client frame, or a
    /// fragmented control frame.
    Protocol(&'static str),
    /// Larger than `websocket.max_frame_bytes`.
    TooBig(u64),
}

impl FrameError {
    /// The close code that answers it.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => close::PROTOCOL_ERROR,
            FrameError::TooBig(_) => close::TOO_BIG,
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Protocol(why) => write!(f, "WebSocket protocol error: {why}"),
            FrameError::TooBig(n) => write!(
                f,
                "WebSocket frame of {n} bytes exceeds websocket.max_frame_bytes"
            ),
        }
    }
}

/// One decoded frame: its opcode and where its (unmasked) payload is.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame's opcode.
    pub opcode: Opcode,
    /// Where the unmasked payload is in the input.
    pub payload: std::ops::Range<usize>,
    /// Bytes of the input the frame occupied.
    pub used: usize,
}

/// Decodes the client frame at the front of `buf`, unmasking its payload in
/// place. Check-then-parse, like the MQTT decoder: the length is checked
/// against `max` before the payload is awaited.
pub fn decode_frame(buf: &mut [u8], max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set (no extension was negotiated)",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_u8(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let control = matches!(opcode, Opcode::Close | Opcode::Ping | Opcode::Pong);
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10)
        }
        n => (u64::from(n), 2),
    };
    if control && (!fin || len > 125) {
        return Err(FrameError::Protocol(
            "control frames must be whole and at most 125 bytes",
        ));
    }
    if len > max as u64 {
        return Err(FrameError::TooBig(len));
    }
    let len = len as usize;
    let Some(mask) = buf.get(at..at + 4).map(|m| [m[0], m[1], m[2], m[3]]) else {
        return Ok(None);
    };
    at += 4;
    if buf.len() < at + len {
        return Ok(None);
    }
    for (i, b) in buf[at..at + len].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Some(Frame {
        opcode,
        payload: at..at + len,
        used: at + len,
    }))
}

/// Appends an unmasked server frame (FIN set) carrying `payload`.
pub fn encode_frame(opcode: Opcode, payload: &[u8], out: &mut Vec<u8>) {
    let code = match opcode {
        Opcode::Continuation => 0x0,
        Opcode::Text => 0x1,
        Opcode::Binary => 0x2,
        Opcode::Close => 0x8,
        Opcode::Ping => 0x9,
        Opcode::Pong => 0xA,
    };
    out.push(0x80 | code);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code`.
pub fn encode_close(code: u16, out: &mut Vec<u8>) {
    encode_frame(Opcode::Close, &code.to_be_bytes(), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqttv3.1, mqtt\r\n\r\n";

    fn masked(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    #[test]
    fn upgrade_matches_the_rfc_example_and_negotiates_mqtt() {
        let mut buf = UPGRADE.as_bytes().to_vec();
        buf.extend_from_slice(b"\x82");
        match handshake(&buf, "/mqtt") {
            Handshake::Accepted { response, used } => {
                let r = String::from_utf8(response).unwrap();
                // RFC 6455 1.3's worked example.
                assert!(
                    r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
                    "{r}"
                );
                assert!(
                    r.starts_with("HTTP/1.1 101 ")
                        && r.contains("Sec-WebSocket-Protocol: mqtt\r\n")
                );
                assert_eq!(used, UPGRADE.len(), "the first frame byte is left");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            handshake(&UPGRADE.as_bytes()[..40], "/mqtt"),
            Handshake::Incomplete
        );
    }

    #[test]
    fn bad_upgrades_get_an_http_error() {
        let cases = [
            (UPGRADE.replace("/mqtt", "/other"), "404"),
            (UPGRADE.replace("Version: 13", "Version: 8"), "426"),
            (UPGRADE.replace(", mqtt", ""), "400"),
            (UPGRADE.replace("GET", "POST"), "405"),
            ("\x16\x03\x01 not http\r\n\r\n".to_string(), "400"),
        ];
        for (req, status) in cases {
            match handshake(req.as_bytes(), "/mqtt") {
                Handshake::Refused { response, .. } => {
                    assert!(String::from_utf8_lossy(&response)
                        .starts_with(&format!("HTTP/1.1 {status}")))
                }
                other => panic!("{req:?}: {other:?}"),
            }
        }
        let huge = format!(
            "GET /mqtt HTTP/1.1\r\nX: {}",
            "a".repeat(MAX_HANDSHAKE_BYTES)
        );
        assert!(matches!(
            handshake(huge.as_bytes(), "/mqtt"),
            Handshake::Refused { .. }
        ));
    }

    #[test]
    fn frames_unmask_split_and_check_limits() {
        let mut two = masked(0x2, b"\x10\x00abc", [1, 2, 3, 4]);
        two.extend(masked(0x0, &[7u8; 300], [9, 8, 7, 6]));
        let f = decode_frame(&mut two, 1024).unwrap().unwrap();
        assert_eq!(
            (f.opcode, &two[f.payload.clone()]),
            (Opcode::Binary, &b"\x10\x00abc"[..])
        );
        let rest = &mut two[f.used..];
        let g = decode_frame(rest, 1024).unwrap().unwrap();
        assert_eq!((g.opcode, g.payload.len()), (Opcode::Continuation, 300));
        assert!(rest[g.payload].iter().all(|&b| b == 7));
        let mut partial = masked(0x2, b"abcdef", [1, 1, 1, 1]);
        partial.truncate(9);
        assert_eq!(decode_frame(&mut partial, 1024), Ok(None));
        let mut big = masked(0x2, &[0; 300], [0; 4]);
        assert_eq!(decode_frame(&mut big, 100), Err(FrameError::TooBig(300)));
        let mut unmasked = vec![0x82, 0x01, 0x00];
        assert!(matches!(
            decode_frame(&mut unmasked, 100),
            Err(FrameError::Protocol(_))
        ));
        let mut long_ping = masked(0x9, &[0; 126], [0; 4]);
        assert!(matches!(
            decode_frame(&mut long_ping, 1000),
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        for (n, header) in [(5usize, 2usize), (200, 4), (70_000, 10)] {
            let mut out = Vec::new();
            encode_frame(Opcode::Binary, &vec![1; n], &mut out);
            assert_eq!((out[0], out.len()), (0x82, header + n));
        }
        let mut out = Vec::new();
        encode_close(close::NORMAL, &mut out);
        assert_eq!(out, [0x88, 2, 0x03, 0xE8]);
    }
}
