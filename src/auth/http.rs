//! `[auth.http]`: the business decides who connects. Each CONNECT the
//! cache cannot answer is POSTed as JSON to `auth.http.url` from the
//! `tether-auth-http` thread (tokio + hyper), never from a core:
//!
//! ```text
//! POST {url}   {"client_id": "...", "username": "...", "password": "...", "peer": "1.2.3.4:5678"}
//! 200          {"result": "allow"}   or   {"result": "deny"}
//! ```
//!
//! What keeps the service alive through a reconnect storm:
//! - **A cache on the core**, keyed by a keyed digest of user name,
//!   password and client id, with separate lifetimes for allow and deny
//!   (`allow_cache_secs`, `deny_cache_secs`); the core only `try_lock`s it.
//! - **Single flight:** requests for the same key while one is out wait for
//!   its answer instead of making their own.
//! - **A concurrency limit** (`max_concurrent`): more wait their turn.
//! - **A fail policy** while the service is down, slow (`timeout_ms`) or
//!   answers nonsense: `closed` refuses (CONNACK 0x88, server unavailable),
//!   `open` admits. Failures are not cached: the next CONNECT asks again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, Semaphore};

use super::cache::{Key, VerdictCache};
use super::{Authenticator, Credentials, Identity, Verdict};
use crate::bridge::ReplyTo;
use crate::codec::reason;
use crate::config::{FailPolicy, HttpAuthConfig};
use crate::stats::{Figure, Histogram};

/// The authenticator's figures.
#[derive(Default)]
struct Counts {
    /// Requests made to the service.
    calls: AtomicU64,
    /// Requests that joined one already in flight.
    joined: AtomicU64,
    /// Calls that failed (unreachable, timeout, bad answer).
    failures: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
}

struct Shared {
    cfg: HttpAuthConfig,
    cache: VerdictCache,
    counts: Counts,
    /// Round trip of each call.
    latency: Histogram,
}

impl Shared {
    /// The cache key: the service may decide on any of these.
    fn key_of(&self, username: Option<&str>, password: Option<&[u8]>, client_id: &str) -> Key {
        let (u, p) = (username.unwrap_or_default(), password.unwrap_or_default());
        self.cache.key_of(&[u.as_bytes(), p, client_id.as_bytes()])
    }

    fn verdict(&self, allowed: bool) -> Verdict {
        if allowed {
            self.counts.allowed.fetch_add(1, Relaxed);
            Verdict::Allow
        } else {
            self.counts.denied.fetch_add(1, Relaxed);
            Verdict::Deny(reason::BAD_USERNAME_OR_PASSWORD)
        }
    }

    /// What a failed call means, per the fail policy (not cached).
    fn failed(&self) -> Verdict {
        self.counts.failures.fetch_add(1, Relaxed);
        match self.cfg.fail {
            FailPolicy::Open => Verdict::Allow,
            FailPolicy::Closed => Verdict::Deny(reason::SERVER_UNAVAILABLE),
        }
    }
}

/// What the thread is asked.
struct Job {
    who: Identity,
    reply: ReplyTo<Verdict>,
}

/// Asks the business over HTTP, through a cache.
pub struct HttpAuthenticator {
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl HttpAuthenticator {
    /// Starts the `tether-auth-http` thread.
    pub fn new(cfg: &HttpAuthConfig) -> std::io::Result<HttpAuthenticator> {
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            cache: VerdictCache::new(
                Duration::from_secs(cfg.allow_cache_secs),
                Duration::from_secs(cfg.deny_cache_secs),
            )?,
            counts: Counts::default(),
            latency: Histogram::default(),
        });
        let (jobs, rx) = mpsc::unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("tether-auth-http".into())
            .spawn(move || rt.block_on(run(worker, rx)))?;
        Ok(HttpAuthenticator { shared, jobs })
    }
}

impl Authenticator for HttpAuthenticator {
    fn authenticate(&self, who: &Credentials<'_>) -> Verdict {
        let s = &self.shared;
        let key = s.key_of(who.username, who.password, who.client_id);
        match s.cache.peek(&key) {
            Some(allowed) => s.verdict(allowed),
            None => Verdict::Ask,
        }
    }

    fn ask(&self, who: Identity, reply: ReplyTo<Verdict>) {
        // A stopped thread drops the job; the dropped reply refuses.
        let _ = self.jobs.send(Job { who, reply });
    }

    fn figures(&self) -> Vec<Figure> {
        let c = &self.shared.counts;
        let (hits, misses) = self.shared.cache.counts();
        vec![
            ("auth_http_calls", "Requests made to the auth.http service.", c.calls.load(Relaxed), true),
            ("auth_http_joined", "CONNECTs that waited for a request already in flight for the same credentials (single flight).", c.joined.load(Relaxed), true),
            ("auth_http_failures", "auth.http requests that failed (unreachable, timeout, bad answer): the fail policy decided.", c.failures.load(Relaxed), true),
            ("auth_http_cache_hits", "auth.http verdicts answered from the cache (on the core, or by the thread's second look).", hits, true),
            ("auth_http_cache_misses", "auth.http verdicts sent to the tether-auth-http thread.", misses, true),
            ("auth_http_allowed", "CONNECTs the auth.http service (or its cache) admitted.", c.allowed.load(Relaxed), true),
            ("auth_http_denied", "CONNECTs the auth.http service (or its cache) refused.", c.denied.load(Relaxed), true),
        ]
    }

    fn latency(&self) -> Option<&Histogram> {
        Some(&self.shared.latency)
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// The thread: single flight per key, at most `max_concurrent` calls.
async fn run(s: Arc<Shared>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let permits = Arc::new(Semaphore::new(s.cfg.max_concurrent.max(1)));
    // Keys with a call out, and who waits for it.
    let waiting: Arc<Mutex<HashMap<Key, Vec<ReplyTo<Verdict>>>>> = Arc::default();
    while let Some(Job { who, reply }) = jobs.recv().await {
        let key = s.key_of(
            who.username.as_deref(),
            who.password.as_deref(),
            &who.client_id,
        );
        if let Some(allowed) = s.cache.get(&key) {
            reply.send(s.verdict(allowed));
            continue;
        }
        {
            let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(queue) = w.get_mut(&key) {
                s.counts.joined.fetch_add(1, Relaxed);
                queue.push(reply);
                continue;
            }
            w.insert(key.clone(), vec![reply]);
        }
        let (s, client, permits, waiting) =
            (s.clone(), client.clone(), permits.clone(), waiting.clone());
        tokio::spawn(async move {
            let verdict = match permits.acquire().await {
                Ok(_permit) => call(&s, &client, &who, &key).await,
                Err(_) => s.failed(),
            };
            let replies = waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key)
                .unwrap_or_default();
            for r in replies {
                r.send(verdict.clone());
            }
        });
    }
}

/// One call to the service, its answer cached.
async fn call(s: &Shared, client: &Client, who: &Identity, key: &Key) -> Verdict {
    s.counts.calls.fetch_add(1, Relaxed);
    let body = serde_json::json!({
        "client_id": who.client_id,
        "username": who.username,
        "password": who.password.as_deref().map(String::from_utf8_lossy),
        "peer": who.peer.to_string(),
    })
    .to_string();
    let req = hyper::Request::post(&s.cfg.url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)));
    let Ok(req) = req else {
        return s.failed();
    };
    let started = Instant::now();
    let timeout = Duration::from_millis(s.cfg.timeout_ms);
    let answer = tokio::time::timeout(timeout, async {
        let resp = client.request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        match v.get("result")?.as_str()? {
            "allow" => Some(true),
            "deny" => Some(false),
            _ => None,
        }
    })
    .await;
    s.latency.observe(started.elapsed().as_micros() as u64);
    let Ok(Some(allowed)) = answer else {
        return s.failed();
    };
    s.cache.put(key.clone(), allowed);
    s.verdict(allowed)
}
