//! The bytes under packet decoding: a bounds-checked reader over one
//! packet, the variable byte integer, and why bytes are not a packet.
//! `decode.rs` (packets) and `properties.rs` (MQTT 5 properties) both read
//! through it, so neither depends on the other's internals.

use std::fmt;

use bytes::Bytes;

use super::packet::reason;

/// Why a byte sequence is not an acceptable packet. Each variant maps to the
/// MQTT 5 reason code the gateway sends before closing (3.1.1 peers are
/// simply disconnected, as that protocol has no such codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Violates the packet grammar (0x81).
    Malformed(&'static str),
    /// Well formed but breaks a protocol rule (0x82).
    Protocol(&'static str),
    /// Larger than the negotiated maximum packet size (0x95).
    TooLarge {
        /// Size announced by the fixed header.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// CONNECT with a protocol level the gateway does not speak (0x84).
    UnsupportedVersion(u8),
    /// A topic name with wildcards or otherwise invalid (0x90).
    TopicName(&'static str),
}

impl DecodeError {
    /// The MQTT 5 reason code for DISCONNECT (or CONNACK).
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedVersion(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::TopicName(_) => reason::TOPIC_NAME_INVALID,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed(why) => write!(f, "malformed packet: {why}"),
            DecodeError::Protocol(why) => write!(f, "protocol error: {why}"),
            DecodeError::TooLarge { size, max } => {
                write!(
                    f,
                    "packet of {size} bytes exceeds maximum packet size {max}"
                )
            }
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported protocol level {v}"),
            DecodeError::TopicName(why) => write!(f, "invalid topic name: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Bounds-checked big-endian reader over one packet's bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Malformed("packet shorter than its contents"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A reader over the next `n` bytes, consumed from this one.
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader<'a>, DecodeError> {
        Ok(Reader::new(self.take(n)?))
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match read_varint(self.buf)? {
            Some((v, n)) => {
                self.buf = &self.buf[n..];
                Ok(v as u32)
            }
            None => Err(DecodeError::Malformed("truncated variable byte integer")),
        }
    }

    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }

    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        let raw = self.take(n)?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::Malformed("invalid UTF-8"))?;
        // MQTT 1.5.4: U+0000 MUST NOT appear in a UTF-8 encoded string.
        if s.contains('\0') {
            return Err(DecodeError::Malformed("U+0000 in string"));
        }
        Ok(s.to_owned())
    }
}

/// Reads a variable byte integer; `Ok(None)` when more bytes are needed.
pub(super) fn read_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().enumerate().take(4) {
        value |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            // MQTT 1.5.5: the minimum number of bytes must be used.
            if i > 0 && byte == 0 {
                return Err(DecodeError::Malformed("non-minimal variable byte integer"));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ));
    }
    Ok(None)
}
