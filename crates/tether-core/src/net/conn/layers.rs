//! The layers a connection runs in front of the MQTT codec, outermost
//! first: TLS ([`crate::net::tls`]) and WebSocket framing
//! ([`crate::net::ws`]). Reads go through them into the codec (and, on the
//! WebSocket listener, an HTTP fallback request is recognised here and the
//! connection becomes an exchange); writes come out of the codec through
//! them.

use tracing::{debug, info};

use super::{Conn, WRITE_CHUNK};
use crate::net::ws::Opcode;
use crate::stats::bump;

/// The WebSocket layer of one connection (see [`crate::net::ws`]).
#[derive(Default)]
pub(super) struct Ws {
    /// The upgrade was accepted.
    pub(super) open: bool,
    /// Bytes read and not yet decoded: a partial request or frame.
    pub(super) raw: Vec<u8>,
    /// Bytes to write before the next MQTT data: the upgrade response,
    /// pongs.
    pub(super) control: Vec<u8>,
    /// Close code of the close frame that follows the last MQTT data.
    pub(super) close: Option<u16>,
    /// The request is the HTTP fallback's, not an upgrade: the connection
    /// becomes an [`Exchange`].
    pub(super) fallback: bool,
}

impl Conn {
    /// Plaintext (after TLS, if any) to the WebSocket layer or the codec.
    pub(super) fn layer_ingest(&mut self, data: &[u8]) {
        if self.ws.is_some() {
            self.ws_ingest(data);
        } else {
            self.ingest(data);
        }
    }

    /// TLS connections: decrypts what was read and hands the plaintext on.
    /// A failed session is closed after its alert is flushed.
    pub(super) fn tls_ingest(&mut self, cipher: &mut [u8]) -> crate::net::tls::Inbound {
        let core = self.core.clone();
        let mut plain = core.plaintext.borrow_mut();
        plain.clear();
        let tls = self.tls.as_mut().expect("TLS connection");
        let handshaking = tls.is_handshaking();
        let result = tls.decrypt(cipher, &mut plain);
        if handshaking && !tls.is_handshaking() && result.is_ok() {
            let resumed = tls.resumed();
            debug!(conn = %self.id(), resumed, "TLS handshake complete");
            let stats = core.stats();
            bump(
                if resumed {
                    &stats.tls_resumed
                } else {
                    &stats.tls_full_handshakes
                },
                1,
            );
        }
        let inbound = match result {
            Ok(inbound) => inbound,
            Err(e) => {
                info!(conn = %self.id(), peer = %self.peer(), "closing: {e}");
                let stats = core.stats();
                bump(
                    if handshaking {
                        &stats.tls_handshake_errors
                    } else {
                        &stats.protocol_errors
                    },
                    1,
                );
                self.close_link();
                crate::net::tls::Inbound::Open
            }
        };
        if !plain.is_empty() {
            self.layer_ingest(&plain);
        }
        if plain.capacity() > WRITE_CHUNK * 2 {
            *plain = Vec::new();
        }
        inbound
    }

    /// WebSocket connections: the upgrade, then frames, whose payloads are
    /// the MQTT byte stream.
    fn ws_ingest(&mut self, data: &[u8]) {
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        ws.raw.extend_from_slice(data);
        let cfg = &self.core.cfg.websocket;
        if !ws.open && cfg.fallback.enabled {
            if let Some(true) =
                crate::net::fallback::request::is_fallback(&ws.raw, &cfg.fallback.path)
            {
                ws.fallback = true;
                self.ws = Some(ws);
                return;
            }
        }
        if !ws.open {
            match crate::net::ws::handshake(&ws.raw, &cfg.path) {
                crate::net::ws::Handshake::Incomplete => {}
                crate::net::ws::Handshake::Refused { response, why } => {
                    info!(conn = %self.id(), peer = %self.peer(), "WebSocket upgrade refused: {why}");
                    bump(&self.core.stats().ws_upgrade_errors, 1);
                    ws.control.extend_from_slice(&response);
                    ws.raw = Vec::new();
                    self.close_link();
                }
                crate::net::ws::Handshake::Accepted { response, used } => {
                    ws.control.extend_from_slice(&response);
                    ws.raw.drain(..used);
                    ws.open = true;
                }
            }
        }
        let max = cfg.max_frame_bytes;
        let mut used = 0;
        while ws.open {
            match crate::net::ws::decode_frame(&mut ws.raw[used..], max) {
                Ok(None) => break,
                Ok(Some(f)) => {
                    let payload = used + f.payload.start..used + f.payload.end;
                    used += f.used;
                    match f.opcode {
                        Opcode::Binary | Opcode::Continuation => self.ingest(&ws.raw[payload]),
                        Opcode::Ping => crate::net::ws::encode_frame(
                            Opcode::Pong,
                            &ws.raw[payload],
                            &mut ws.control,
                        ),
                        Opcode::Pong => {}
                        Opcode::Close => {
                            debug!(conn = %self.id(), "WebSocket closed by the client");
                            ws.close.get_or_insert(crate::net::ws::close::NORMAL);
                            self.close_link();
                            break;
                        }
                        Opcode::Text => {
                            info!(conn = %self.id(), peer = %self.peer(), "closing: text frame (MQTT needs binary frames)");
                            bump(&self.core.stats().protocol_errors, 1);
                            ws.close = Some(crate::net::ws::close::UNSUPPORTED_DATA);
                            self.close_link();
                            break;
                        }
                    }
                }
                Err(e) => {
                    info!(conn = %self.id(), peer = %self.peer(), "closing: {e}");
                    bump(&self.core.stats().protocol_errors, 1);
                    ws.close = Some(e.close_code());
                    self.close_link();
                    used = ws.raw.len();
                    break;
                }
            }
        }
        ws.raw.drain(..used.min(ws.raw.len()));
        if ws.raw.is_empty() {
            // Idle WebSocket connections hold no buffer either.
            ws.raw = Vec::new();
        }
        self.ws = Some(ws);
    }

    /// Encodes what is due into the write buffer; for TLS connections,
    /// encrypted (with any handshake records, and close_notify once the
    /// closing connection has nothing more to say).
    pub(super) fn fill_wbuf(&mut self) {
        if self.tls.is_none() {
            return self.fill_plain();
        }
        let core = self.core.clone();
        let mut plain = core.plaintext.borrow_mut();
        // Encode into the shared plaintext buffer, then encrypt into wbuf.
        plain.clear();
        std::mem::swap(&mut *self.wbuf, &mut *plain);
        self.fill_plain();
        std::mem::swap(&mut *self.wbuf, &mut *plain);
        let tls = self.tls.as_mut().expect("TLS connection");
        if plain.is_empty() && self.closing.is_some() {
            tls.close();
        }
        tls.encrypt(&plain, &mut self.wbuf);
        plain.clear();
    }

    /// Encodes outbox frames into the write buffer (for WebSocket
    /// connections: after pending control frames, as one binary frame, and
    /// followed by the close frame once the connection is closing).
    fn fill_plain(&mut self) {
        let start = match self.ws.as_mut() {
            Some(ws) => {
                if !ws.control.is_empty() {
                    self.wbuf
                        .extend_from_slice(&std::mem::take(&mut ws.control));
                }
                Some(self.wbuf.len())
            }
            None => None,
        };
        self.fill_mqtt();
        if let (Some(start), Some(ws)) = (start, self.ws.as_mut()) {
            if self.wbuf.len() > start {
                let mqtt = self.wbuf.split_off(start);
                crate::net::ws::encode_frame(Opcode::Binary, &mqtt, &mut self.wbuf);
            } else if self.closing.is_some() {
                if let Some(code) = ws.close.take() {
                    crate::net::ws::encode_close(code, &mut self.wbuf);
                }
            }
        }
    }
}
