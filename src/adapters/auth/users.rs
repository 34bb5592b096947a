//! The users file (`auth.users_file`) and [`FileAuthenticator`].
//!
//! One user per line, `name:PHC-hash` (argon2id, as `tether passwd FILE
//! USER` writes it); `#` starts a comment line. A client without a user
//! name, or with one the file does not know, is not this authenticator's:
//! it passes to the next in the listener's chain.
//!
//! Verifying an argon2id hash costs milliseconds of CPU by design, far too
//! long for a core (every connection on it would wait). So the fast path
//! on the core answers only from memory: unknown user (refused at once),
//! no user name, or a user name and password verified (or refused) within
//! `auth.cache_secs` (`auth.deny_cache_secs`). Everything else goes to the
//! `tether-auth` thread, which verifies and answers through the verdict's
//! `ReplyTo`. The cache ([`super::cache::VerdictCache`]) is keyed by a
//! digest of user name and password, never the password itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use crossbeam_channel::{unbounded, Sender};

use super::cache::VerdictCache;
use crate::adapters::thread::Worker;
use crate::auth::{Authenticator, Credentials, Identity, Verdict};
use crate::bridge::ReplyTo;
use crate::codec::reason;
use crate::config::AuthConfig;
use crate::stats::Figure;

/// The users of one users file.
#[derive(Debug, Clone, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
}

/// A line the users file cannot have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub why: &'static str,
}

impl std::fmt::Display for UsersError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: {} (a line is NAME:HASH, as `tether passwd FILE NAME` writes it)",
            self.line, self.why
        )
    }
}

impl std::error::Error for UsersError {}

impl Users {
    /// Parses the text of a users file.
    pub fn parse(text: &str) -> Result<Users, UsersError> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |why| UsersError { line: i + 1, why };
            let (name, hash) = line.split_once(':').ok_or(err("no ':'"))?;
            if name.is_empty() {
                return Err(err("an empty user name"));
            }
            PasswordHash::new(hash).map_err(|_| err("not a PHC password hash"))?;
            hashes.insert(name.to_string(), hash.to_string());
        }
        Ok(Users { hashes })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    fn knows(&self, name: &str) -> bool {
        self.hashes.contains_key(name)
    }

    /// Whether `password` is `name`'s (the slow part: argon2 by design).
    pub fn verify(&self, name: &str, password: &[u8]) -> bool {
        let Some(hash) = self.hashes.get(name) else {
            return false;
        };
        PasswordHash::new(hash)
            .is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok())
    }
}

/// An argon2id hash of `password` in PHC form, with a fresh salt and the
/// argon2 crate's defaults (19 MiB, 2 passes, 1 lane: OWASP's minimum).
pub fn hash_password(password: &[u8]) -> String {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .expect("the system's random source");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a salt");
    Argon2::default()
        .hash_password(password, &salt)
        .expect("argon2 with its default parameters")
        .to_string()
}

/// Adds `name` to the users file at `path` (or replaces its hash), keeping
/// every other line; written to a temporary file and renamed over the old
/// one, so a reader never sees half a file.
pub fn set_password(path: &std::path::Path, name: &str, password: &[u8]) -> std::io::Result<()> {
    if name.is_empty() || name.contains([':', '\n']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a user name is not empty and has no ':' or newline",
        ));
    }
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let entry = format!("{name}:{}", hash_password(password));
    let mut replaced = false;
    let mut lines: Vec<String> = old
        .lines()
        .map(|l| {
            if l.split_once(':').is_some_and(|(n, _)| n == name) {
                replaced = true;
                entry.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !replaced {
        lines.push(entry);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, lines.join("\n") + "\n")?;
    std::fs::rename(&tmp, path)
}

/// What the `tether-auth` thread is asked.
struct Job {
    who: Identity,
    reply: ReplyTo<Verdict>,
}

/// The authenticator's figures.
#[derive(Default)]
struct Counts {
    /// argon2 verifications made.
    verifications: AtomicU64,
    /// Admitted.
    allowed: AtomicU64,
    /// Refused.
    denied: AtomicU64,
}

/// State shared by the cores' fast path and the auth thread.
struct Shared {
    users: ArcSwap<Users>,
    cache: VerdictCache,
    counts: Counts,
}

impl Shared {
    /// Verifies on the auth thread and remembers the outcome. A request
    /// that queued behind one for the same user and password (a burst of
    /// reconnects: every core missed the cache at once) is answered from
    /// what that one found: one verification per burst, not one each.
    fn verify(&self, who: &Identity) -> Verdict {
        let name = who.username.as_deref().unwrap_or_default();
        let password = who.password.as_deref().unwrap_or_default();
        let key = self.cache.key_of(&[name.as_bytes(), password]);
        if let Some(allowed) = self.cache.get(&key) {
            return self.outcome(allowed);
        }
        self.counts.verifications.fetch_add(1, Relaxed);
        let allowed = self.users.load().verify(name, password);
        self.cache.put(key, allowed);
        self.outcome(allowed)
    }

    fn outcome(&self, allowed: bool) -> Verdict {
        if allowed {
            self.counts.allowed.fetch_add(1, Relaxed);
            Verdict::Allow
        } else {
            self.counts.denied.fetch_add(1, Relaxed);
            Verdict::Deny(reason::BAD_USERNAME_OR_PASSWORD)
        }
    }
}

/// Admits the users of a users file. Cheap on the core; verification on
/// its own thread.
pub struct FileAuthenticator {
    shared: Arc<Shared>,
    jobs: Sender<Job>,
}

impl FileAuthenticator {
    /// Starts the `tether-auth` thread for `users`.
    pub fn new(users: Users, cfg: &AuthConfig) -> std::io::Result<FileAuthenticator> {
        let shared = Arc::new(Shared {
            users: ArcSwap::from_pointee(users),
            cache: VerdictCache::new(
                Duration::from_secs(cfg.cache_secs),
                Duration::from_secs(cfg.deny_cache_secs),
            )?,
            counts: Counts::default(),
        });
        let (jobs, rx) = unbounded::<Job>();
        let worker = shared.clone();
        // Detached: it ends when the last handle on its queue is dropped.
        Worker::spawn("tether-auth", move || {
            for Job { who, reply } in rx {
                reply.send(worker.verify(&who));
            }
        })?;
        Ok(FileAuthenticator { shared, jobs })
    }

    /// Puts a new users file in place and forgets what was cached (a
    /// changed or removed password must not stay valid).
    pub fn replace(&self, users: Users) {
        self.shared.users.store(Arc::new(users));
        self.shared.cache.clear();
    }
}

impl Authenticator for FileAuthenticator {
    fn authenticate(&self, who: &Credentials<'_>) -> Verdict {
        let s = &self.shared;
        let Some(name) = who.username.filter(|n| s.users.load().knows(n)) else {
            return Verdict::Pass;
        };
        let password = who.password.unwrap_or_default();
        match s.cache.peek(&s.cache.key_of(&[name.as_bytes(), password])) {
            Some(allowed) => s.outcome(allowed),
            None => Verdict::Ask,
        }
    }

    fn ask(&self, who: Identity, reply: ReplyTo<Verdict>) {
        // A stopped thread drops the job; the dropped reply refuses (0x88).
        let _ = self.jobs.send(Job { who, reply });
    }

    fn figures(&self) -> Vec<Figure> {
        let c = &self.shared.counts;
        let (hits, misses) = self.shared.cache.counts();
        vec![
            (
                "auth_allowed",
                "CONNECTs the users file admitted.",
                c.allowed.load(Relaxed),
                true,
            ),
            (
                "auth_denied",
                "CONNECTs the users file refused (a known user with a wrong password).",
                c.denied.load(Relaxed),
                true,
            ),
            (
                "auth_cache_hits",
                "Password checks answered from the cache (on the core, or by the auth thread's second look).",
                hits,
                true,
            ),
            (
                "auth_cache_misses",
                "Password checks sent to the tether-auth thread.",
                misses,
                true,
            ),
            (
                "auth_verifications",
                "argon2 verifications made (the expensive part).",
                c.verifications.load(Relaxed),
                true,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_file_round_trips_through_passwd() {
        let dir = std::env::temp_dir().join(format!("tether-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users");
        set_password(&path, "ann", b"s3cret").unwrap();
        set_password(&path, "bob", b"hunter2").unwrap();
        set_password(&path, "ann", b"changed").unwrap();
        let users = Users::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(users.len(), 2, "ann replaced, not added twice");
        assert!(users.verify("ann", b"changed"));
        assert!(!users.verify("ann", b"s3cret"));
        assert!(users.verify("bob", b"hunter2"));
        assert!(!users.verify("carl", b"x"));
        assert!(set_password(&path, "a:b", b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_lines_say_where() {
        assert_eq!(Users::parse("# c\n\nann").unwrap_err().line, 3);
        assert!(Users::parse("ann:plaintext").is_err());
    }
}
