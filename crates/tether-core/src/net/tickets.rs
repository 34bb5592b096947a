//! TLS session tickets that every node of a fleet can open.
//!
//! A client that reconnects after a drain, a restart or a lost link lands on
//! any node. With a full handshake each of those costs the node a signature
//! (and the client a round trip); with a ticket the node only decrypts. For
//! that to work across nodes and restarts, every node must seal tickets with
//! the same key, so the keys come from a file the operator distributes
//! (`tls.ticket_key_file`):
//!
//! - one key per line, 64 hex digits (32 random bytes: `openssl rand -hex 32`);
//!   blank lines and `#` comments are skipped;
//! - the **first** key seals new tickets, **every** key opens them, so a
//!   rotation never strands a ticket in flight: add the new key at the end on
//!   every node (SIGHUP), move it to the front (SIGHUP), drop the oldest.
//!
//! Without a file each process draws one random key at start (and a new one
//! on SIGHUP): resumption then works back to the same process only.
//!
//! A ticket is `key id (4) ‖ nonce (12) ‖ AES-256-GCM(state) ‖ tag (16)`.
//! The key id (the first bytes of SHA-256 over a label and the key) picks
//! the key without trial decryption, and is authenticated as the AEAD's
//! associated data. Nonces are random: with 96 bits a key may seal about
//! 2^32 tickets before a repeat becomes plausible, far more than a key lives
//! under any sane rotation. What a ticket holds is rustls's resumption state
//! (the resumption secret, the cipher suite, the client certificate if any);
//! its lifetime hint is `tls.ticket_lifetime_secs`. Forward secrecy is bounded
//! by how often the keys rotate, not by that hint, which is why rotation is
//! the operator's job and documented in README.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

use crate::error::{Classify, Origin};

/// Bytes of a ticket key.
const KEY_LEN: usize = 32;
/// Bytes of the key id at the front of a ticket.
const ID_LEN: usize = 4;
/// Bytes before the ciphertext: key id and nonce.
const HEADER: usize = ID_LEN + NONCE_LEN;
/// Bytes of the GCM tag at the end of a ticket.
const TAG_LEN: usize = 16;
/// More keys than this in the file is a mistake (a rotation that never
/// drops the oldest keeps every ticket ever issued openable).
const MAX_KEYS: usize = 16;

/// Why the ticket keys could not be read. Each names the file and the key.
#[derive(Debug)]
pub enum TicketKeyError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is not 64 hex digits.
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// No key at all, or more than [`MAX_KEYS`].
    Count {
        /// The file.
        path: PathBuf,
        /// How many keys it holds.
        keys: usize,
    },
    /// The random generator failed (no entropy).
    Random,
}

impl fmt::Display for TicketKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TicketKeyError::Read { path, source } => {
                write!(f, "tls.ticket_key_file {}: {source}", path.display())
            }
            TicketKeyError::Malformed { path, line } => write!(
                f,
                "tls.ticket_key_file {} line {line}: expected 64 hex digits \
                 (one key per line, e.g. from `openssl rand -hex 32`)",
                path.display()
            ),
            TicketKeyError::Count { path, keys } => write!(
                f,
                "tls.ticket_key_file {}: {keys} keys; expected 1 to {MAX_KEYS} \
                 (the first seals, all open: drop the oldest when you add one)",
                path.display()
            ),
            TicketKeyError::Random => f.write_str("no randomness for a TLS ticket key"),
        }
    }
}

impl std::error::Error for TicketKeyError {}

impl Classify for TicketKeyError {
    fn origin(&self) -> Origin {
        Origin::Config
    }
}

/// One key: its id and the AEAD key.
struct Key {
    id: [u8; ID_LEN],
    aead: LessSafeKey,
}

impl Key {
    fn new(bytes: &[u8; KEY_LEN]) -> Key {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"tether ticket key id\0".as_slice(), bytes].concat(),
        );
        let mut id = [0; ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..ID_LEN]);
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key");
        Key {
            id,
            aead: LessSafeKey::new(unbound),
        }
    }
}

/// The ticket keys of this process: [`ProducesTickets`] for rustls.
pub struct TicketKeys {
    /// The first seals; all open. Never empty.
    keys: Vec<Key>,
    /// Lifetime hint sent with each ticket, seconds.
    lifetime: u32,
    /// Whether the keys came from `tls.ticket_key_file` (shared) or were
    /// drawn here (this process only).
    shared: bool,
    rng: SystemRandom,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key bytes.
        f.debug_struct("TicketKeys")
            .field("keys", &self.keys.len())
            .field("lifetime", &self.lifetime)
            .field("shared", &self.shared)
            .finish()
    }
}

impl TicketKeys {
    /// The keys of `file`, or one random key when `file` is empty.
    pub fn load(file: &Path, lifetime: u32) -> Result<TicketKeys, TicketKeyError> {
        let rng = SystemRandom::new();
        let (keys, shared) = if file.as_os_str().is_empty() {
            let mut bytes = [0; KEY_LEN];
            rng.fill(&mut bytes).map_err(|_| TicketKeyError::Random)?;
            (vec![Key::new(&bytes)], false)
        } else {
            (read(file)?, true)
        };
        Ok(TicketKeys {
            keys,
            lifetime,
            shared,
            rng,
        })
    }

    /// What was loaded, for the banner and the reload log line.
    pub fn describe(&self) -> String {
        if self.shared {
            format!(
                "{} ticket key{} from tls.ticket_key_file",
                self.keys.len(),
                if self.keys.len() == 1 { "" } else { "s" }
            )
        } else {
            "tickets sealed with a key of this process (set tls.ticket_key_file to resume across nodes)"
                .into()
        }
    }
}

fn read(path: &Path) -> Result<Vec<Key>, TicketKeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| TicketKeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bytes = hex32(line).ok_or_else(|| TicketKeyError::Malformed {
            path: path.to_owned(),
            line: n + 1,
        })?;
        keys.push(Key::new(&bytes));
    }
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(TicketKeyError::Count {
            path: path.to_owned(),
            keys: keys.len(),
        });
    }
    Ok(keys)
}

/// 64 hex digits as 32 bytes.
fn hex32(s: &str) -> Option<[u8; KEY_LEN]> {
    let digits = s.as_bytes();
    if digits.len() != KEY_LEN * 2 {
        return None;
    }
    let mut out = [0; KEY_LEN];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    Some(out)
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = &self.keys[0];
        let mut nonce = [0; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(HEADER + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.id),
                &mut out[HEADER..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < HEADER + TAG_LEN {
            return None;
        }
        let (id, rest) = cipher.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = self.keys.iter().find(|k| k.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = key
            .aead
            .open_in_place(nonce, Aad::from(key.id), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    /// Loads `lines` from a file of its own (tests run in parallel).
    fn keys(lines: &str) -> Result<TicketKeys, TicketKeyError> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tether-tickets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(n.to_string());
        std::fs::write(&file, lines).unwrap();
        let out = TicketKeys::load(&file, 3600);
        let _ = std::fs::remove_file(&file);
        out
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let old = keys(&format!("{A}\n")).unwrap();
        let rotated = keys(&format!("# new first\n{B}\n\n{A}\n")).unwrap();
        let sealed_by_old = old.encrypt(b"state").unwrap();
        assert_eq!(rotated.decrypt(&sealed_by_old).unwrap(), b"state");
        let sealed_by_new = rotated.encrypt(b"state").unwrap();
        assert_eq!(old.decrypt(&sealed_by_new), None, "A alone cannot open B's");
        assert_eq!(rotated.decrypt(&sealed_by_new).unwrap(), b"state");
        assert_eq!(sealed_by_new.len(), HEADER + 5 + TAG_LEN);
    }

    #[test]
    fn tampered_short_and_foreign_tickets_do_not_open() {
        let k = keys(A).unwrap();
        let mut t = k.encrypt(b"resumption state").unwrap();
        for i in [0, ID_LEN, HEADER, t.len() - 1] {
            t[i] ^= 1;
            assert_eq!(k.decrypt(&t), None, "byte {i} flipped");
            t[i] ^= 1;
        }
        assert!(k.decrypt(&t).is_some());
        assert_eq!(k.decrypt(&t[..HEADER + TAG_LEN - 1]), None);
        assert_eq!(k.decrypt(&[]), None);
        let random = TicketKeys::load(Path::new(""), 60).unwrap();
        assert_eq!(random.decrypt(&t), None);
        assert!(!random.shared && k.shared);
    }

    #[test]
    fn bad_files_name_the_line_and_the_fix() {
        let e = keys(&format!("{A}\nnot-hex\n")).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("openssl rand -hex 32"),
            "{e}"
        );
        let e = keys(&A[..62]).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = keys("# nothing\n").unwrap_err().to_string();
        assert!(e.contains("0 keys"), "{e}");
        let many = std::iter::repeat_n(A, MAX_KEYS + 1)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(keys(&many).unwrap_err().to_string().contains("17 keys"));
        let e = TicketKeys::load(Path::new("/nonexistent/keys"), 60).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("tls.ticket_key_file /nonexistent/keys"),
            "{e}"
        );
    }
}
