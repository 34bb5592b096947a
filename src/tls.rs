//! TLS for the mqtts and wss listeners.
//!
//! rustls is used sans-IO: a connection's [`Session`] takes the ciphertext
//! the connection task read into the core's scratch buffer and gives back
//! plaintext, and turns the plaintext the task encoded into ciphertext for
//! its write buffer. So a TLS connection is the same state machine as a
//! plain one with one more layer (below WebSocket framing, if any), on the
//! same core, slab, wheel and subscriptions; no second task, no extra
//! wake-ups.
//!
//! The [`Acceptor`] holds the server configuration shared by every core.
//! [`Acceptor::reload`] (SIGHUP) reads certificate and key again and swaps
//! the configuration that new handshakes use; established sessions keep
//! theirs. A reload that fails leaves the old configuration in place.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, ServerConnection, WebPkiClientVerifier};
use rustls::RootCertStore;

use crate::config::TlsConfig;

/// The server side of TLS for every core: the current configuration.
pub struct Acceptor {
    settings: TlsConfig,
    /// Replaced whole on reload; each handshake clones the `Arc` once.
    current: RwLock<Arc<ServerConfig>>,
}

/// What was loaded: the served certificate, for the banner and the log.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub subject: String,
    pub not_after: String,
    pub client_auth: ClientAuth,
}

/// Whether client certificates are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Off,
    Optional,
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
            "certificate \"{}\", valid until {}; {auth}",
            self.subject, self.not_after
        )
    }
}

impl Acceptor {
    /// Loads certificate, key and (optionally) the client CA named in
    /// `settings`; the error says which file is wrong and how.
    pub fn new(settings: &TlsConfig) -> Result<(Acceptor, Loaded), String> {
        let (config, loaded) = load(settings)?;
        let acceptor = Acceptor {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(config)),
        };
        Ok((acceptor, loaded))
    }

    /// Reads the files again; new handshakes use them from now on.
    pub fn reload(&self) -> Result<Loaded, String> {
        let (config, loaded) = load(&self.settings)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(loaded)
    }

    /// A server session for one accepted connection.
    pub fn session(&self) -> Result<Session, rustls::Error> {
        let config = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut conn = ServerConnection::new(config)?;
        // The task drains ciphertext after every write, so rustls's own
        // buffer limit would only make writes short, never bound memory.
        conn.set_buffer_limit(None);
        Ok(Session {
            conn,
            cn_as_username: self.settings.cn_as_username,
            close_sent: false,
        })
    }
}

fn load(s: &TlsConfig) -> Result<(ServerConfig, Loaded), String> {
    let certs = read_certs(&s.cert_file, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&s.key_file).map_err(|e| {
        format!(
            "tls.key_file {}: no usable private key ({e}); expected a PEM \
             PKCS#8, PKCS#1 or SEC1 key",
            s.key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let (builder, client_auth) = if s.client_ca_file.as_os_str().is_empty() {
        (builder.with_no_client_auth(), ClientAuth::Off)
    } else {
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&s.client_ca_file, "tls.client_ca_file")? {
            roots.add(ca).map_err(|e| {
                format!(
                    "tls.client_ca_file {}: not a usable CA certificate: {e}",
                    s.client_ca_file.display()
                )
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let (verifier, auth) = if s.require_client_cert {
            (verifier, ClientAuth::Required)
        } else {
            (verifier.allow_unauthenticated(), ClientAuth::Optional)
        };
        let verifier = verifier
            .build()
            .map_err(|e| format!("tls.client_ca_file: {e}"))?;
        (builder.with_client_cert_verifier(verifier), auth)
    };
    let (subject, not_after) = describe(&certs[0]);
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!("tls.cert_file / tls.key_file: the key does not fit the certificate ({e})")
    })?;
    Ok((
        config,
        Loaded {
            subject,
            not_after,
            client_auth,
        },
    ))
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
            path.display()
        ));
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

/// Why a TLS session failed.
#[derive(Debug)]
pub enum Failure {
    /// The peer broke the protocol or failed verification; an alert is
    /// queued for it.
    Tls(rustls::Error),
    /// rustls refused the bytes (e.g. a record larger than allowed).
    Io(io::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Tls(e) => write!(f, "TLS: {e}"),
            Failure::Io(e) => write!(f, "TLS: {e}"),
        }
    }
}

/// What decrypting a read gave, besides plaintext.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Open,
    /// The peer sent close_notify: no more data will come.
    Closed,
}

/// The TLS layer of one connection.
pub struct Session {
    conn: ServerConnection,
    cn_as_username: bool,
    /// close_notify was queued (once, after the last data).
    close_sent: bool,
}

impl Session {
    /// Takes ciphertext just read; appends the plaintext it carried.
    pub fn decrypt(&mut self, mut cipher: &[u8], plain: &mut Vec<u8>) -> Result<Inbound, Failure> {
        while !cipher.is_empty() {
            // A slice reader: read_tls takes what fits in one deframing
            // step and advances the slice.
            if self.conn.read_tls(&mut cipher).map_err(Failure::Io)? == 0 {
                break;
            }
            let state = self.conn.process_new_packets().map_err(Failure::Tls)?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let at = plain.len();
                plain.resize(at + n, 0);
                self.conn
                    .reader()
                    .read_exact(&mut plain[at..])
                    .map_err(Failure::Io)?;
            }
            if state.peer_has_closed() {
                return Ok(Inbound::Closed);
            }
        }
        Ok(Inbound::Open)
    }

    /// Encrypts `plain` and appends every pending record (handshake
    /// messages, alerts, data) to `out`.
    pub fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        if !plain.is_empty() {
            // With no buffer limit rustls takes all of it (the Writer
            // never returns short or fails on an open session).
            let _ = self.conn.writer().write_all(plain);
        }
        while self.conn.wants_write() {
            // Writing to a Vec cannot fail.
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// Queues close_notify (once); [`Session::encrypt`] writes it.
    pub fn close(&mut self) {
        if !self.close_sent {
            self.close_sent = true;
            self.conn.send_close_notify();
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The username a verified client certificate gives its connection
    /// (its subject CN), when `tls.cn_as_username` is on.
    pub fn certificate_username(&self) -> Option<String> {
        if !self.cn_as_username {
            return None;
        }
        // Only certificates the verifier accepted are recorded by rustls.
        self.conn.peer_certificates()?.first().and_then(common_name)
    }
}
