//! `[auth.http]`: the business decides who connects (`url`) and what they
//! may publish and subscribe to (`acl_url`). Each question the cache cannot
//! answer is POSTed as JSON from the `tether-auth-http` thread (tokio +
//! hyper), never from a core:
//!
//! ```text
//! POST {url}      {"client_id": "...", "username": "...", "password": "...",
//!                  "peer": "1.2.3.4:5678", "listener": "mqtts", "protocol": 5,
//!                  "certificate_cn": "..."}
//! 200             {"result": "allow" | "deny" | "ignore",
//!                  "superuser": false,                       (optional)
//!                  "acl": ["allow both user/%u/#", ...],     (optional)
//!                  "max_connections": 3}                     (optional)
//!
//! POST {acl_url}  {"action": "publish" | "subscribe", "topic": "...", "qos": 1,
//!                  "retain": false, "client_id": "...", "username": "...",
//!                  "peer": "1.2.3.4"}
//! 200             {"result": "allow" | "deny" | "ignore"}
//! ```
//!
//! A password that is not UTF-8 (MQTT allows any bytes) goes as
//! `"password": null, "password_base64": "..."`: never as a lossy string,
//! under which two different passwords could read the same to the service.
//!
//! `ignore` on a CONNECT passes it to the next authenticator of the
//! listener's chain; on a publish or subscribe it leaves the decision to
//! `auth.acl_default`. `acl` rules (the ACL file's syntax) and `superuser`
//! apply to that connection alone (see [`crate::auth::Grants`]);
//! `max_connections` replaces `limits.max_connections_per_user` for the
//! user.
//!
//! What keeps the service alive through a reconnect storm:
//! - **A cache on the core**, keyed by a keyed digest of what the service
//!   sees, with separate lifetimes for allow and deny (`allow_cache_secs`,
//!   `deny_cache_secs`); the core only `try_lock`s it.
//! - **Single flight:** questions with the same key while one is out wait
//!   for its answer instead of making their own.
//! - **A concurrency limit** (`max_concurrent`): more wait their turn.
//! - **A fail policy** while the service is down, slow (`timeout_ms`) or
//!   answers nonsense: `closed` refuses (CONNACK 0x88, server unavailable;
//!   a publish or subscribe is denied), `open` admits. Failures are not
//!   cached: the next question asks again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, Semaphore};

use super::cache::{Key, Outcome, VerdictCache};
use crate::adapters::thread::{runtime, Worker};
use crate::auth::acl::AclRules;
use crate::auth::{
    AclRequest, Action, Authenticator, Authorizer, Credentials, Grants, Identity, OwnedAclRequest,
    Permit, Verdict,
};
use crate::bridge::{ReplyTo, Unanswered};
use crate::codec::reason;
use crate::config::{AclDefault, FailPolicy, HttpAuthConfig};
use crate::stats::{Figure, Histogram};

impl Outcome for Verdict {
    fn allowed(&self) -> bool {
        matches!(self, Verdict::Allow | Verdict::AllowWith(_))
    }
}

impl Outcome for Permit {
    fn allowed(&self) -> bool {
        *self == Permit::Allow
    }
}

/// One kind of question's figures.
#[derive(Default)]
struct Counts {
    /// Requests made to the service.
    calls: AtomicU64,
    /// Questions that joined one already in flight.
    joined: AtomicU64,
    /// Calls that failed (unreachable, timeout, bad answer).
    failures: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
}

/// State shared by the cores' fast paths and the thread.
struct Shared {
    cfg: HttpAuthConfig,
    /// What an `ignore` on a publish or subscribe means.
    acl_default: Permit,
    connects: VerdictCache<Verdict>,
    acls: VerdictCache<Permit>,
    connect_counts: Counts,
    acl_counts: Counts,
    /// Round trip of each call.
    latency: Histogram,
}

impl Shared {
    /// The cache key of a CONNECT: the service may decide on any of it.
    fn connect_key(&self, who: &Credentials<'_>) -> Key {
        let (u, p) = (
            who.username.unwrap_or_default(),
            who.password.unwrap_or_default(),
        );
        let ip = who.peer.ip().to_string();
        self.connects.key_of(&[
            u.as_bytes(),
            p,
            who.client_id.as_bytes(),
            ip.as_bytes(),
            who.listener.as_bytes(),
            who.certificate_cn.unwrap_or_default().as_bytes(),
        ])
    }

    /// The cache key of a publish or subscribe.
    fn acl_key(&self, req: &AclRequest<'_>) -> Key {
        let ip = req.peer.map(|p| p.to_string()).unwrap_or_default();
        let flags = [req.action as u8, req.qos as u8, u8::from(req.retain)];
        self.acls.key_of(&[
            &flags,
            req.topic.as_bytes(),
            req.username.unwrap_or_default().as_bytes(),
            req.client_id.unwrap_or_default().as_bytes(),
            ip.as_bytes(),
        ])
    }

    fn counted_verdict(&self, v: Verdict) -> Verdict {
        let c = &self.connect_counts;
        match v {
            Verdict::Allow | Verdict::AllowWith(_) => c.allowed.fetch_add(1, Relaxed),
            Verdict::Deny(_) => c.denied.fetch_add(1, Relaxed),
            Verdict::Pass | Verdict::Ask => 0,
        };
        v
    }

    fn counted_permit(&self, p: Permit) -> Permit {
        let c = &self.acl_counts;
        match p {
            Permit::Allow => c.allowed.fetch_add(1, Relaxed),
            Permit::Deny => c.denied.fetch_add(1, Relaxed),
            Permit::Ask => 0,
        };
        p
    }
}

/// What the thread is asked.
enum Job {
    Connect {
        who: Identity,
        key: Key,
        reply: ReplyTo<Verdict>,
    },
    Acl {
        req: OwnedAclRequest,
        key: Key,
        reply: ReplyTo<Permit>,
    },
}

/// The `tether-auth-http` thread and what the cores share with it. Its
/// [`HttpService::authenticator`] and [`HttpService::authorizer`] are the
/// seams.
#[derive(Clone)]
pub struct HttpService {
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl HttpService {
    /// Starts the `tether-auth-http` thread.
    pub fn start(cfg: &HttpAuthConfig, acl_default: AclDefault) -> std::io::Result<HttpService> {
        let ttl = |s| Duration::from_secs(s);
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            acl_default: match acl_default {
                AclDefault::Allow => Permit::Allow,
                AclDefault::Deny => Permit::Deny,
            },
            connects: VerdictCache::new(ttl(cfg.allow_cache_secs), ttl(cfg.deny_cache_secs))?,
            acls: VerdictCache::new(ttl(cfg.allow_cache_secs), ttl(cfg.deny_cache_secs))?,
            connect_counts: Counts::default(),
            acl_counts: Counts::default(),
            latency: Histogram::default(),
        });
        let (jobs, rx) = mpsc::unbounded_channel();
        // Detached: it ends when the last handle on its queue is dropped.
        Worker::drive("tether-auth-http", runtime()?, run(shared.clone(), rx))?;
        Ok(HttpService { shared, jobs })
    }

    /// Decides CONNECTs at `auth.http.url`.
    pub fn authenticator(&self) -> HttpAuthenticator {
        HttpAuthenticator(self.clone())
    }

    /// Decides publishes and subscribes at `auth.http.acl_url`.
    pub fn authorizer(&self) -> HttpAuthorizer {
        HttpAuthorizer(self.clone())
    }
}

/// Asks the business who connects, through a cache.
pub struct HttpAuthenticator(HttpService);

impl Authenticator for HttpAuthenticator {
    fn authenticate(&self, who: &Credentials<'_>) -> Verdict {
        let s = &self.0.shared;
        match s.connects.peek(&s.connect_key(who)) {
            Some(v) => s.counted_verdict(v),
            None => Verdict::Ask,
        }
    }

    fn ask(&self, who: Identity, reply: ReplyTo<Verdict>) {
        let s = &self.0.shared;
        let key = s.connect_key(&Credentials {
            client_id: &who.client_id,
            username: who.username.as_deref(),
            password: who.password.as_deref(),
            peer: who.peer,
            listener: who.listener,
            protocol: who.protocol,
            certificate_cn: who.certificate_cn.as_deref(),
        });
        // A stopped thread drops the job; the dropped reply refuses.
        let _ = self.0.jobs.send(Job::Connect { who, key, reply });
    }

    fn figures(&self) -> Vec<Figure> {
        let s = &self.0.shared;
        let c = &s.connect_counts;
        let (hits, misses) = s.connects.counts();
        vec![
            ("auth_http_calls", "CONNECT requests made to the auth.http service.", c.calls.load(Relaxed), true),
            ("auth_http_joined", "CONNECTs that waited for a request already in flight for the same credentials (single flight).", c.joined.load(Relaxed), true),
            ("auth_http_failures", "auth.http CONNECT requests that failed (unreachable, timeout, bad answer): the fail policy decided.", c.failures.load(Relaxed), true),
            ("auth_http_cache_hits", "auth.http verdicts answered from the cache (on the core, or by the thread's second look).", hits, true),
            ("auth_http_cache_misses", "auth.http verdicts sent to the tether-auth-http thread.", misses, true),
            ("auth_http_allowed", "CONNECTs the auth.http service (or its cache) admitted.", c.allowed.load(Relaxed), true),
            ("auth_http_denied", "CONNECTs the auth.http service (or its cache) refused.", c.denied.load(Relaxed), true),
        ]
    }

    fn latency(&self) -> Option<&Histogram> {
        Some(&self.0.shared.latency)
    }
}

/// Asks the business what a client may publish and subscribe to, through
/// a cache. Only clients are asked about (see [`super::Policy`]).
pub struct HttpAuthorizer(HttpService);

impl HttpAuthorizer {
    /// The figures of the ACL questions.
    pub fn figures(&self) -> Vec<Figure> {
        let s = &self.0.shared;
        let c = &s.acl_counts;
        let (hits, misses) = s.acls.counts();
        vec![
            ("acl_http_calls", "Publish and subscribe questions sent to auth.http.acl_url.", c.calls.load(Relaxed), true),
            ("acl_http_joined", "Questions that waited for the same one already in flight (single flight).", c.joined.load(Relaxed), true),
            ("acl_http_failures", "acl_url requests that failed (unreachable, timeout, bad answer): the fail policy decided.", c.failures.load(Relaxed), true),
            ("acl_http_cache_hits", "acl_url answers found in the cache.", hits, true),
            ("acl_http_cache_misses", "acl_url questions sent to the tether-auth-http thread.", misses, true),
            ("acl_http_allowed", "Publishes and subscriptions acl_url (or its cache) allowed.", c.allowed.load(Relaxed), true),
            ("acl_http_denied", "Publishes and subscriptions acl_url (or its cache) denied.", c.denied.load(Relaxed), true),
        ]
    }
}

impl Authorizer for HttpAuthorizer {
    fn check(&self, req: &AclRequest<'_>) -> Permit {
        let s = &self.0.shared;
        match s.acls.peek(&s.acl_key(req)) {
            Some(p) => s.counted_permit(p),
            None => Permit::Ask,
        }
    }

    fn ask(&self, req: OwnedAclRequest, reply: ReplyTo<Permit>) {
        let s = &self.0.shared;
        let key = s.acl_key(&AclRequest {
            action: req.action,
            topic: &req.topic,
            qos: req.qos,
            retain: req.retain,
            source: req.source,
            client_id: req.client_id.as_deref(),
            username: req.username.as_deref(),
            peer: req.peer,
            grants: None,
        });
        let _ = self.0.jobs.send(Job::Acl { req, key, reply });
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Who waits for the call out for each key.
type Waiting<T> = Arc<Mutex<HashMap<Key, Vec<ReplyTo<T>>>>>;

/// Joins `reply` to a call already out for `key` (true), or records it
/// as the first waiter of a new call (false).
fn join<T: Unanswered>(
    waiting: &Waiting<T>,
    key: &Key,
    reply: ReplyTo<T>,
    joined: &AtomicU64,
) -> bool {
    let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(queue) = w.get_mut(key) {
        joined.fetch_add(1, Relaxed);
        queue.push(reply);
        return true;
    }
    w.insert(key.clone(), vec![reply]);
    false
}

/// Answers everyone waiting for `key`.
fn answer<T: Clone + Unanswered>(waiting: &Waiting<T>, key: &Key, v: T) {
    let replies = waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(key)
        .unwrap_or_default();
    for r in replies {
        r.send(v.clone());
    }
}

/// The thread: single flight per key, at most `max_concurrent` calls.
async fn run(s: Arc<Shared>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let permits = Arc::new(Semaphore::new(s.cfg.max_concurrent.max(1)));
    let connects: Waiting<Verdict> = Arc::default();
    let acls: Waiting<Permit> = Arc::default();
    while let Some(job) = jobs.recv().await {
        let (s, client, permits) = (s.clone(), client.clone(), permits.clone());
        match job {
            Job::Connect { who, key, reply } => {
                if let Some(v) = s.connects.get(&key) {
                    reply.send(s.counted_verdict(v));
                    continue;
                }
                if join(&connects, &key, reply, &s.connect_counts.joined) {
                    continue;
                }
                let waiting = connects.clone();
                tokio::spawn(async move {
                    let v = match permits.acquire().await {
                        Ok(_permit) => connect(&s, &client, &who, &key).await,
                        Err(_) => connect_failed(&s),
                    };
                    answer(&waiting, &key, s.counted_verdict(v));
                });
            }
            Job::Acl { req, key, reply } => {
                if let Some(p) = s.acls.get(&key) {
                    reply.send(s.counted_permit(p));
                    continue;
                }
                if join(&acls, &key, reply, &s.acl_counts.joined) {
                    continue;
                }
                let waiting = acls.clone();
                tokio::spawn(async move {
                    let p = match permits.acquire().await {
                        Ok(_permit) => acl(&s, &client, &req, &key).await,
                        Err(_) => acl_failed(&s),
                    };
                    answer(&waiting, &key, s.counted_permit(p));
                });
            }
        }
    }
}

/// POSTs `body` to `url` within the timeout: the answer's JSON, or `None`
/// for any failure.
async fn post(s: &Shared, client: &Client, url: &str, body: String) -> Option<serde_json::Value> {
    let req = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .ok()?;
    let started = Instant::now();
    let timeout = Duration::from_millis(s.cfg.timeout_ms);
    let answer = tokio::time::timeout(timeout, async {
        let resp = client.request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice(&bytes).ok()
    })
    .await;
    s.latency.observe(started.elapsed().as_micros() as u64);
    answer.ok().flatten()
}

/// What a failed CONNECT call means, per the fail policy (not cached).
fn connect_failed(s: &Shared) -> Verdict {
    s.connect_counts.failures.fetch_add(1, Relaxed);
    match s.cfg.fail {
        FailPolicy::Open => Verdict::Allow,
        FailPolicy::Closed => Verdict::Deny(reason::SERVER_UNAVAILABLE),
    }
}

/// What a failed ACL call means, per the fail policy (not cached).
fn acl_failed(s: &Shared) -> Permit {
    s.acl_counts.failures.fetch_add(1, Relaxed);
    match s.cfg.fail {
        FailPolicy::Open => Permit::Allow,
        FailPolicy::Closed => Permit::Deny,
    }
}

/// The grants of an allow answer; `Err` when they make no sense (the call
/// then counts as failed: a typo in the service must not widen access).
fn grants_of(v: &serde_json::Value) -> Result<Grants, String> {
    let rules = match v.get("acl") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(lines)) => {
            let lines: Option<Vec<&str>> = lines.iter().map(|l| l.as_str()).collect();
            let lines = lines.ok_or("acl is a list of strings")?;
            Some(AclRules::parse_lines(lines, AclDefault::Deny).map_err(|e| e.to_string())?)
        }
        Some(_) => return Err("acl is a list of strings".into()),
    };
    let superuser = match v.get("superuser") {
        None | Some(serde_json::Value::Null) => false,
        Some(b) => b.as_bool().ok_or("superuser is true or false")?,
    };
    let max_connections = match v.get("max_connections") {
        None | Some(serde_json::Value::Null) => None,
        Some(n) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or("max_connections is a whole number")?,
        ),
    };
    Ok(Grants {
        rules,
        superuser,
        max_connections,
        username: None,
    })
}

/// One CONNECT call to the service, its answer cached.
async fn connect(s: &Shared, client: &Client, who: &Identity, key: &Key) -> Verdict {
    s.connect_counts.calls.fetch_add(1, Relaxed);
    let mut body = serde_json::json!({
        "client_id": who.client_id,
        "username": who.username,
        "password": null,
        "peer": who.peer.to_string(),
        "listener": who.listener,
        "protocol": who.protocol,
        "certificate_cn": who.certificate_cn,
    });
    if let Some(pw) = who.password.as_deref() {
        match std::str::from_utf8(pw) {
            Ok(text) => body["password"] = text.into(),
            Err(_) => {
                use base64::Engine;
                let b64 = base64::engine::general_purpose::STANDARD.encode(pw);
                body["password_base64"] = b64.into();
            }
        }
    }
    let body = body.to_string();
    let Some(answer) = post(s, client, &s.cfg.url, body).await else {
        return connect_failed(s);
    };
    let verdict = match answer.get("result").and_then(|r| r.as_str()) {
        Some("allow") => match grants_of(&answer) {
            Ok(g) => g.into_verdict(),
            Err(why) => {
                tracing::warn!(url = %s.cfg.url, "auth.http answered an allow with {why}: counted as a failure");
                return connect_failed(s);
            }
        },
        Some("deny") => Verdict::Deny(reason::BAD_USERNAME_OR_PASSWORD),
        Some("ignore") => Verdict::Pass,
        _ => return connect_failed(s),
    };
    s.connects.put(key.clone(), verdict.clone());
    verdict
}

/// One ACL call to the service, its answer cached.
async fn acl(s: &Shared, client: &Client, req: &OwnedAclRequest, key: &Key) -> Permit {
    s.acl_counts.calls.fetch_add(1, Relaxed);
    let body = serde_json::json!({
        "action": match req.action {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        },
        "topic": req.topic,
        "qos": req.qos as u8,
        "retain": req.retain,
        "client_id": req.client_id,
        "username": req.username,
        "peer": req.peer.map(|p| p.to_string()),
    })
    .to_string();
    let Some(answer) = post(s, client, &s.cfg.acl_url, body).await else {
        return acl_failed(s);
    };
    let permit = match answer.get("result").and_then(|r| r.as_str()) {
        Some("allow") => Permit::Allow,
        Some("deny") => Permit::Deny,
        Some("ignore") => s.acl_default,
        _ => return acl_failed(s),
    };
    s.acls.put(key.clone(), permit);
    permit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_come_from_the_answer_and_nonsense_is_refused() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"result":"allow","acl":["allow both user/%u/#","deny both #"],"superuser":false,"max_connections":2}"#,
        )
        .unwrap();
        let g = grants_of(&v).unwrap();
        assert_eq!(g.rules.as_ref().map(AclRules::len), Some(2));
        assert_eq!(g.max_connections, Some(2));
        let plain = grants_of(&serde_json::json!({"result": "allow"})).unwrap();
        assert_eq!(
            plain.into_verdict(),
            Verdict::Allow,
            "nothing granted: no allocation"
        );
        assert!(grants_of(&serde_json::json!({"acl": ["permit all"]})).is_err());
        assert!(grants_of(&serde_json::json!({"acl": "allow both #"})).is_err());
        assert!(grants_of(&serde_json::json!({"superuser": "yes"})).is_err());
        assert!(grants_of(&serde_json::json!({"max_connections": -1})).is_err());
    }
}
