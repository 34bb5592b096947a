//! TLS for the mqtts and wss listeners.
//!
//! rustls is used sans-IO, through its unbuffered API: a connection's
//! [`TlsSession`] decrypts the ciphertext the connection task read, in place in
//! the core's scratch buffer, and encrypts the plaintext the task encoded
//! straight into its write buffer. rustls's buffered API would keep a read
//! buffer of at least 4 KiB per connection for its whole life (measured at
//! 19,000 idle TLS connections: 10,656 B each with the buffered API, 6,453 B
//! with this one; see bench/RESULTS.md). So a TLS connection is the same state machine as a
//! plain one with one more layer (below WebSocket framing, if any), on the
//! same core, slab, wheel and subscriptions; no second task, no extra
//! wake-ups.
//!
//! The [`Acceptor`] holds the server configuration shared by every core.
//! [`Acceptor::reload`] (SIGHUP) reads certificate and key again and swaps
//! the configuration that new handshakes use; established sessions keep
//! theirs. A reload that fails leaves the old configuration in place.
//!
//! A session can move to another core with its socket
//! ([`TlsSession::carry`], [`TlsSession::resume`]): an HTTP fallback request on
//! the wss listener goes to the core of its session like a plain one.
//!
//! Two configurations share the certificate and the ticket keys
//! ([`super::tickets`]) and differ only in ALPN: mqtts answers `tls.alpn`
//! (`mqtt`), wss answers `tls.wss_alpn` (`http/1.1`), since a browser offers
//! HTTP names and an MQTT client the MQTT one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, UnbufferedServerConnection, WebPkiClientVerifier};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus,
};
use rustls::RootCertStore;

use super::tickets::{TicketKeyError, TicketKeys};
use crate::config::TlsConfig;
use crate::error::{Classify, Origin};
use crate::mesh::CarriedTls;

/// Why TLS could not be set up from the configured files. Each names the
/// configuration key to fix.
#[derive(Debug)]
pub enum TlsError {
    /// A certificate file could not be read or parsed.
    Certificates {
        /// `tls.cert_file` or `tls.client_ca_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no PEM certificate.
    NoCertificate {
        /// `tls.cert_file` or `tls.client_ca_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// `tls.key_file` holds no usable private key.
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: rustls::pki_types::pem::Error,
    },
    /// A client CA certificate is not usable as a trust anchor.
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built.
    Verifier(rustls::server::VerifierBuilderError),
    /// The key does not fit the certificate (or rustls refused the pair).
    KeyMismatch(rustls::Error),
    /// The protocol versions could not be set up.
    Setup(rustls::Error),
    /// `tls.ticket_key_file` is unusable.
    Tickets(TicketKeyError),
    /// Reload asked while TLS is off.
    Disabled,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Certificates { key, path, source } => {
                write!(f, "{key} {}: {source}", path.display())
            }
            TlsError::NoCertificate { key, path } => write!(
                f,
                "{key} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
                path.display()
            ),
            TlsError::Key { path, source } => write!(
                f,
                "tls.key_file {}: no usable private key ({source}); expected a PEM \
                 PKCS#8, PKCS#1 or SEC1 key",
                path.display()
            ),
            TlsError::ClientCa { path, source } => write!(
                f,
                "tls.client_ca_file {}: not a usable CA certificate: {source}",
                path.display()
            ),
            TlsError::Verifier(e) => write!(f, "tls.client_ca_file: {e}"),
            TlsError::KeyMismatch(e) => write!(
                f,
                "tls.cert_file / tls.key_file: the key does not fit the certificate ({e})"
            ),
            TlsError::Setup(e) => write!(f, "TLS setup: {e}"),
            TlsError::Tickets(e) => e.fmt(f),
            TlsError::Disabled => f.write_str("TLS is not enabled (tls.enabled = false)"),
        }
    }
}

impl std::error::Error for TlsError {}

impl Classify for TlsError {
    fn origin(&self) -> Origin {
        Origin::Config
    }
}

/// TLS 1.3 tickets sent after each handshake. A device holds one
/// connection and resumes once per reconnect, and a resumption brings it a
/// fresh ticket, so one is enough; rustls's default (2) would seal and send
/// a second that is never used.
const TLS13_TICKETS: usize = 1;

/// The server configurations of the two TLS listeners.
struct Configs {
    mqtts: Arc<ServerConfig>,
    wss: Arc<ServerConfig>,
}

/// The server side of TLS for every core: the current configuration.
pub struct Acceptor {
    settings: TlsConfig,
    /// Replaced whole on reload; each handshake clones one `Arc` once.
    current: RwLock<Configs>,
}

/// What was loaded: the served certificate, for the banner and the log.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Subject of the served certificate.
    pub subject: String,
    /// Its expiry, for humans.
    pub not_after: String,
    /// Whether client certificates are asked for.
    pub client_auth: ClientAuth,
    /// Where the ticket keys came from.
    pub tickets: String,
}

/// Whether client certificates are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Not asked for.
    Off,
    /// Verified when presented.
    Optional,
    /// Required.
    Required,
}

impl fmt::Display for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match self.client_auth {
            ClientAuth::Off => "no client certificates",
            ClientAuth::Optional => "client certificates verified when presented",
            ClientAuth::Required => "client certificates required",
        };
        write!(
            f,
            "certificate \"{}\", valid until {}; {auth}; {}",
            self.subject, self.not_after, self.tickets
        )
    }
}

impl Acceptor {
    /// Loads certificate, key and (optionally) the client CA named in
    /// `settings`; the error says which file is wrong and how.
    pub fn new(settings: &TlsConfig) -> Result<(Acceptor, Loaded), TlsError> {
        let (config, loaded) = load(settings)?;
        let acceptor = Acceptor {
            settings: settings.clone(),
            current: RwLock::new(config),
        };
        Ok((acceptor, loaded))
    }

    /// Reads the files again; new handshakes use them from now on.
    pub fn reload(&self) -> Result<Loaded, TlsError> {
        let (config, loaded) = load(&self.settings)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(loaded)
    }

    /// A server session for one accepted connection of the mqtts
    /// (`websocket` false) or the wss listener.
    pub fn session(&self, websocket: bool) -> Result<TlsSession, rustls::Error> {
        let config = {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if websocket {
                current.wss.clone()
            } else {
                current.mqtts.clone()
            }
        };
        let conn = UnbufferedServerConnection::new(config)?;
        Ok(TlsSession::new(conn, self.settings.cn_as_username))
    }
}

fn load(s: &TlsConfig) -> Result<(Configs, Loaded), TlsError> {
    let tickets =
        TicketKeys::load(&s.ticket_key_file, s.ticket_lifetime_secs).map_err(TlsError::Tickets)?;
    let certs = read_certs(&s.cert_file, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&s.key_file).map_err(|source| TlsError::Key {
        path: s.key_file.clone(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?;
    let (builder, client_auth) = if s.client_ca_file.as_os_str().is_empty() {
        (builder.with_no_client_auth(), ClientAuth::Off)
    } else {
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&s.client_ca_file, "tls.client_ca_file")? {
            roots.add(ca).map_err(|source| TlsError::ClientCa {
                path: s.client_ca_file.clone(),
                source,
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let (verifier, auth) = if s.require_client_cert {
            (verifier, ClientAuth::Required)
        } else {
            (verifier.allow_unauthenticated(), ClientAuth::Optional)
        };
        let verifier = verifier.build().map_err(TlsError::Verifier)?;
        (builder.with_client_cert_verifier(verifier), auth)
    };
    let (subject, not_after) = describe(&certs[0]);
    let mut mqtts = builder
        .with_single_cert(certs, key)
        .map_err(TlsError::KeyMismatch)?;
    let described = tickets.describe();
    mqtts.ticketer = Arc::new(tickets);
    mqtts.send_tls13_tickets = TLS13_TICKETS;
    let mut wss = mqtts.clone();
    mqtts.alpn_protocols = s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    wss.alpn_protocols = s.wss_alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok((
        Configs {
            mqtts: Arc::new(mqtts),
            wss: Arc::new(wss),
        },
        Loaded {
            subject,
            not_after,
            client_auth,
            tickets: described,
        },
    ))
}

fn read_certs(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificates {
            key,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Subject and expiry of a certificate, for humans.
fn describe(cert: &CertificateDer<'_>) -> (String, String) {
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, c)) => (
            c.subject().to_string(),
            c.validity()
                .not_after
                .to_rfc2822()
                .unwrap_or_else(|_| c.validity().not_after.to_string()),
        ),
        Err(_) => ("(unparsable)".into(), "(unknown)".into()),
    }
}

/// The subject common name of a DER certificate.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = c.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Why a TLS session failed: the peer broke the protocol or failed
/// verification. An alert for it is queued (see [`TlsSession::encrypt`]).
#[derive(Debug)]
pub struct Failure(rustls::Error);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS: {}", self.0)
    }
}

/// What decrypting a read gave, besides plaintext.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// The session goes on.
    Open,
    /// The peer sent close_notify: no more data will come.
    Closed,
}

/// Room for a TLS record's header, tag and padding beyond its plaintext
/// (TLS 1.3: 5 + 16 + 1; TLS 1.2 GCM: 5 + 8 + 16), with margin. Only a first
/// guess: a short buffer is grown to the size rustls asks for.
const RECORD_OVERHEAD: usize = 64;
/// Plaintext per TLS record.
const RECORD_PLAINTEXT: usize = 16 * 1024;

/// The TLS layer of one connection: rustls's unbuffered API, so records
/// are decrypted where they were read (the core's scratch buffer) and
/// encrypted straight into the connection's write buffer. What a session
/// keeps between polls is rustls's state plus, rarely, a partial record
/// or handshake records not yet written.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    cn_as_username: bool,
    /// A record that arrived in part; empty (and unallocated) otherwise.
    partial: Vec<u8>,
    /// Handshake records and alerts produced while reading, written out by
    /// the next [`TlsSession::encrypt`]; empty (and unallocated) otherwise.
    pending: Vec<u8>,
    /// close_notify was requested.
    closing: bool,
    /// close_notify was written.
    close_sent: bool,
}

impl TlsSession {
    fn new(conn: UnbufferedServerConnection, cn_as_username: bool) -> TlsSession {
        TlsSession {
            conn,
            cn_as_username,
            partial: Vec::new(),
            pending: Vec::new(),
            closing: false,
            close_sent: false,
        }
    }

    /// The session as plain data, to move with its socket to another core
    /// (an HTTP fallback request on the wss listener). Only an open
    /// session moves: nothing asked it to close.
    pub fn carry(self) -> CarriedTls {
        debug_assert!(!self.closing, "a closing session stays where it is");
        CarriedTls {
            conn: self.conn,
            partial: self.partial,
            pending: self.pending,
            cn_as_username: self.cn_as_username,
        }
    }

    /// A session carried from another core ([`TlsSession::carry`]).
    pub fn resume(carried: CarriedTls) -> TlsSession {
        TlsSession {
            partial: carried.partial,
            pending: carried.pending,
            ..TlsSession::new(carried.conn, carried.cn_as_username)
        }
    }

    /// Takes ciphertext just read (decrypted in place, so mutable) and
    /// appends the plaintext it carried.
    pub fn decrypt(&mut self, cipher: &mut [u8], plain: &mut Vec<u8>) -> Result<Inbound, Failure> {
        if self.partial.is_empty() {
            let (used, result) = self.process(cipher, plain);
            if used < cipher.len() {
                self.partial.extend_from_slice(&cipher[used..]);
            }
            result
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(cipher);
            let (used, result) = self.process(&mut buf, plain);
            buf.drain(..used);
            if !buf.is_empty() {
                self.partial = buf;
            }
            result
        }
    }

    /// Runs rustls over `buf` until it needs more bytes; returns how many
    /// bytes of `buf` it consumed.
    fn process(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> (usize, Result<Inbound, Failure>) {
        let mut used = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut buf[used..]);
            let outcome = match state {
                Err(e) => Some(Err(e)),
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    let mut failed = None;
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(rec) => {
                                discard += rec.discard;
                                plain.extend_from_slice(rec.payload);
                            }
                            Err(e) => {
                                failed = Some(Err(e));
                                break;
                            }
                        }
                    }
                    failed
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode_record(&mut self.pending, &mut e);
                    None
                }
                // The records are in `pending`, ahead of anything written
                // later: as good as sent.
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    None
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                    Some(Ok(Inbound::Closed))
                }
                // Needs more bytes (early data is never enabled).
                Ok(_) => Some(Ok(Inbound::Open)),
            };
            used += discard;
            match outcome {
                None => {}
                Some(Ok(inbound)) => return (used, Ok(inbound)),
                Some(Err(e)) => {
                    // The alert rustls queued for the peer goes out with
                    // the next write.
                    self.drain_records();
                    return (buf.len(), Err(Failure(e)));
                }
            }
        }
    }

    /// Moves handshake records and alerts rustls has queued to `pending`.
    fn drain_records(&mut self) {
        loop {
            match self.conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode_record(&mut self.pending, &mut e)
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return,
            }
        }
    }

    /// Appends to `out` what is pending (handshake records, alerts), then
    /// `plain` as application-data records, then close_notify if
    /// [`TlsSession::close`] was called.
    pub fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            out.extend_from_slice(&self.pending);
            self.pending = Vec::new();
        }
        let close_due = self.closing && !self.close_sent;
        if plain.is_empty() && !close_due {
            // Reading left nothing queued inside rustls (`process` drains
            // it), so an idle flush costs no call into rustls.
            return;
        }
        loop {
            match self.conn.process_tls_records(&mut []).state {
                // E.g. a key update due before more data.
                Ok(ConnectionState::EncodeTlsData(mut e)) => encode_record(out, &mut e),
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    if !plain.is_empty() {
                        let records = plain.len().div_ceil(RECORD_PLAINTEXT);
                        let guess = plain.len() + records * RECORD_OVERHEAD;
                        encrypt_into(out, guess, |buf| w.encrypt(plain, buf));
                    }
                    if close_due {
                        self.close_sent = true;
                        encrypt_into(out, RECORD_OVERHEAD, |buf| w.queue_close_notify(buf));
                    }
                    return;
                }
                // Not established (MQTT writes nothing before the
                // handshake) or failed (its alert was the last word).
                _ => return,
            }
        }
    }

    /// Asks for close_notify after the data of the next
    /// [`TlsSession::encrypt`] calls (once).
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// Whether the completed handshake resumed an earlier session (a
    /// ticket opened) rather than running in full.
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The subject CN of the client's verified certificate, and whether
    /// it replaces the CONNECT username (`tls.cn_as_username`).
    pub fn certificate_cn(&self) -> Option<(String, bool)> {
        // Only certificates the verifier accepted are recorded by rustls.
        let cn = self
            .conn
            .peer_certificates()?
            .first()
            .and_then(common_name)?;
        Some((cn, self.cn_as_username))
    }
}

/// Appends one handshake record (or alert) to `out`.
fn encode_record<Data>(out: &mut Vec<u8>, e: &mut EncodeTlsData<'_, Data>) {
    let at = out.len();
    let mut room = RECORD_PLAINTEXT + RECORD_OVERHEAD;
    loop {
        out.resize(at + room, 0);
        match e.encode(&mut out[at..]) {
            Ok(n) => return out.truncate(at + n),
            Err(EncodeError::InsufficientSize(s)) if s.required_size > room => {
                room = s.required_size
            }
            Err(_) => return out.truncate(at),
        }
    }
}

/// Appends encrypted records to `out`, starting from a `guess` of their
/// size and growing to what rustls asks for.
fn encrypt_into(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) {
    let at = out.len();
    let mut room = guess;
    loop {
        out.resize(at + room, 0);
        match write(&mut out[at..]) {
            Ok(n) => return out.truncate(at + n),
            Err(EncryptError::InsufficientSize(s)) if s.required_size > room => {
                room = s.required_size
            }
            Err(_) => return out.truncate(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use rustls::ClientConnection;

    use super::*;

    /// A server session and a rustls client that trusts it.
    fn pair() -> (TlsSession, ClientConnection) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let session = TlsSession::new(
            UnbufferedServerConnection::new(Arc::new(server)).unwrap(),
            false,
        );
        let client =
            ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
        (session, client)
    }

    /// Client to server, one byte per read: every record arrives in parts.
    fn to_server(client: &mut ClientConnection, session: &mut TlsSession) -> Vec<u8> {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut plain = Vec::new();
        for b in wire {
            assert_eq!(
                session.decrypt(&mut [b], &mut plain).unwrap(),
                Inbound::Open
            );
        }
        plain
    }

    /// Server to client: what the session writes, and the plaintext of it.
    fn to_client(session: &mut TlsSession, data: &[u8], client: &mut ClientConnection) -> Vec<u8> {
        let mut wire = Vec::new();
        session.encrypt(data, &mut wire);
        let mut rd = &wire[..];
        let mut plain = Vec::new();
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
            // Drained as it comes: the client buffers little plaintext.
            let _ = client.reader().read_to_end(&mut plain);
        }
        plain
    }

    #[test]
    fn records_split_into_single_bytes_reassemble_both_ways() {
        let (mut session, mut client) = pair();
        while client.is_handshaking() || session.is_handshaking() {
            to_server(&mut client, &mut session);
            to_client(&mut session, &[], &mut client);
        }
        // 40 kB: three records, each fed a byte at a time.
        client.writer().write_all(&[7; 40_000]).unwrap();
        let got = to_server(&mut client, &mut session);
        assert_eq!((got.len(), got.iter().all(|&b| b == 7)), (40_000, true));
        assert!(session.partial.capacity() == 0, "no buffer kept once whole");
        let big = vec![9; 70_000];
        assert_eq!(to_client(&mut session, &big, &mut client), big);
        // close_notify goes after the last data, once.
        session.close();
        assert_eq!(to_client(&mut session, b"bye", &mut client), b"bye");
        assert!(client.process_new_packets().unwrap().peer_has_closed());
        let mut after = Vec::new();
        session.encrypt(&[], &mut after);
        assert!(after.is_empty());
        // And the peer's close_notify ends the inbound side.
        client.send_close_notify();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        assert_eq!(
            session.decrypt(&mut wire, &mut Vec::new()).unwrap(),
            Inbound::Closed
        );
    }

    #[test]
    fn garbage_fails_with_an_alert_for_the_peer() {
        let (mut session, _) = pair();
        let mut junk = *b"GET / HTTP/1.1\r\n\r\n";
        assert!(session.decrypt(&mut junk, &mut Vec::new()).is_err());
        let mut out = Vec::new();
        session.encrypt(&[], &mut out);
        assert_eq!(out.first(), Some(&0x15), "an alert record: {out:?}");
    }
}
