//! `Idempotency-Key` on the API's publishes and pushes: a request sent
//! again with the same key within `http.idempotency_window_secs` gets the
//! first request's answer (with `Idempotent-Replayed: true`) and delivers
//! nothing again. So a backend may retry a push after a timeout.
//!
//! - **Where keys live.** With a store that knows the cluster (Redis), in
//!   the store ([`Lookup::IdempotencyBegin`]), so a retry that reaches
//!   another node is recognised; otherwise in this node's [`Keys`].
//! - **One key, one request.** A key sent with another request (another
//!   path or body) is refused with 422 `idempotency_key_reused`.
//! - **A retry while the first runs** gets 409 `idempotency_key_in_flight`:
//!   the first may still deliver, so the retry must not.
//! - **Which answers are kept.** Successes, and answers that leave the
//!   outcome open (504: a core may still take the message; 502: Kafka did
//!   not take what local subscribers may have had): a retry must not
//!   deliver again. Refusals that delivered nothing (4xx, 503) free the
//!   key, so a retry can try again.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use tracing::warn;

use super::error::ApiError;
use super::request::reply;
use super::wire::{json, json_text, Resp};
use super::Api;
use crate::bridge::oneshot;
use crate::stats::Figure;
use crate::store::{Idempotency, Lookup, StoreError};

/// The request header that carries the key.
pub(super) const HEADER: &str = "idempotency-key";

/// The response header of a replayed answer.
const REPLAYED: &str = "idempotent-replayed";

/// Longest key accepted: room for a UUID, a hash or a backend's own
/// composite id, and a bound on what a node keeps per key.
const MAX_KEY_BYTES: usize = 255;

/// A key reserved in a cluster-wide store holds for this many publish
/// timeouts (`http.publish_timeout_ms`), at least [`RESERVATION_MIN`], and
/// then gets its whole window once answered: a request whose node died
/// before answering blocks retries (409) that long, not a whole window.
const RESERVATION_TIMEOUTS: u32 = 4;

/// The shortest reservation (see [`RESERVATION_TIMEOUTS`]).
const RESERVATION_MIN: Duration = Duration::from_secs(10);

/// This node's keys (when the store knows only this node): each key with
/// its request's fingerprint and, once there is one, its answer, until its
/// window ends. Touched only by the HTTP thread.
pub(crate) struct Keys {
    table: Mutex<Table>,
    counts: Counts,
}

/// What the keys did, for `/metrics` (whichever store holds them).
#[derive(Default)]
struct Counts {
    replayed: AtomicU64,
    reused: AtomicU64,
    in_flight: AtomicU64,
    freed: AtomicU64,
}

/// Keys and fingerprints are kept as 128-bit digests, and answers boxed:
/// about 200 bytes per key with its answer (bench/RESULTS.md, "Idempotent
/// publishes"), whatever the key's length.
struct Table {
    held: AHashMap<u128, Held>,
    /// (expiry, key) in the order they were set: a window is the same for
    /// every key, so the front expires first. A key whose answer came later
    /// appears again with its later expiry; the stale record is skipped.
    expiries: VecDeque<(Instant, u128)>,
    max: usize,
}

struct Held {
    fingerprint: u128,
    answer: Option<Box<str>>,
    expires: Instant,
}

impl Keys {
    /// A table of at most `max` keys.
    pub(crate) fn new(max: usize) -> Keys {
        Keys {
            table: Mutex::new(Table {
                held: AHashMap::new(),
                expiries: VecDeque::new(),
                max,
            }),
            counts: Counts::default(),
        }
    }

    /// The counters for `/metrics`.
    pub(crate) fn figures(&self) -> Vec<Figure> {
        let c = &self.counts;
        vec![
            ("http_idempotent_replays", "API requests answered with the answer of an earlier request with their Idempotency-Key (nothing delivered again).", c.replayed.load(Relaxed), true),
            ("http_idempotency_key_reused", "API requests refused (422) for an Idempotency-Key sent before with another request.", c.reused.load(Relaxed), true),
            ("http_idempotency_key_in_flight", "API requests refused (409) while the first request with their Idempotency-Key still ran.", c.in_flight.load(Relaxed), true),
            ("http_idempotency_keys_freed", "Idempotency-Keys freed because their request delivered nothing (a retry runs again).", c.freed.load(Relaxed), true),
        ]
    }

    fn begin(
        &self,
        key: &str,
        fingerprint: &str,
        window: Duration,
    ) -> Result<Idempotency, StoreError> {
        let (id, fp) = (digest128(key.as_bytes()), hex128(fingerprint));
        let now = Instant::now();
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.expire(now);
        if let Some(h) = t.held.get(&id) {
            return Ok(Idempotency::Held {
                fingerprint: format!("{:032x}", h.fingerprint),
                answer: h.answer.as_deref().map(String::from),
            });
        }
        if t.held.len() >= t.max {
            return Err(StoreError::Unavailable(format!(
                "this node holds http.idempotency_max_keys ({}) keys in their window",
                t.max
            )));
        }
        let expires = now + window;
        t.held.insert(
            id,
            Held {
                fingerprint: fp,
                answer: None,
                expires,
            },
        );
        t.expiries.push_back((expires, id));
        Ok(Idempotency::Reserved)
    }

    fn end(&self, key: &str, fingerprint: &str, answer: Option<String>, window: Duration) {
        let (id, fp) = (digest128(key.as_bytes()), hex128(fingerprint));
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if t.held.get(&id).is_none_or(|h| h.fingerprint != fp) {
            return;
        }
        match answer {
            None => {
                t.held.remove(&id);
            }
            Some(a) => {
                let expires = Instant::now() + window;
                if let Some(h) = t.held.get_mut(&id) {
                    h.answer = Some(a.into_boxed_str());
                    h.expires = expires;
                }
                t.expiries.push_back((expires, id));
            }
        }
    }
}

impl Table {
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.expiries.front() {
            if *at > now {
                return;
            }
            let (_, id) = self.expiries.pop_front().expect("a front");
            if self.held.get(&id).is_some_and(|h| h.expires <= now) {
                self.held.remove(&id);
            }
        }
    }
}

/// The request's key, if it sent one; 400 for one that is empty, too
/// long or not visible ASCII.
pub(super) fn key(req: &Request<Incoming>) -> Result<Option<String>, ApiError> {
    match req.headers().get(HEADER) {
        Some(v) => checked(v.as_bytes()).map(Some),
        None => Ok(None),
    }
}

/// A key as given (a header's bytes, a gRPC field): 1 to
/// [`MAX_KEY_BYTES`] visible ASCII characters.
pub(crate) fn checked(b: &[u8]) -> Result<String, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("Idempotency-Key must be 1 to {MAX_KEY_BYTES} visible ASCII characters"),
        )
        .field("Idempotency-Key")
    };
    if b.is_empty() || b.len() > MAX_KEY_BYTES || !b.iter().all(|c| c.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(String::from_utf8_lossy(b).into_owned())
}

/// The first 128 bits of `bytes`' SHA-256: collisions among the keys one
/// window holds are out of reach, and the table keeps 16 bytes, not the key.
fn digest128(bytes: &[u8]) -> u128 {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut first = [0u8; 16];
    first.copy_from_slice(&d.as_ref()[..16]);
    u128::from_be_bytes(first)
}

/// A fingerprint as this module writes it (32 hex digits) back to bits.
fn hex128(fingerprint: &str) -> u128 {
    u128::from_str_radix(fingerprint, 16).unwrap_or_default()
}

/// What a request is, for telling a retry from another request that
/// reuses its key: 128 bits of the SHA-256 of its path and body, as 32 hex
/// digits (the form a cluster-wide store keeps).
fn fingerprint(path: &str, body: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(path.as_bytes());
    ctx.update(b"\n");
    ctx.update(body);
    let d = ctx.finish();
    let mut first = [0u8; 16];
    first.copy_from_slice(&d.as_ref()[..16]);
    format!("{:032x}", u128::from_be_bytes(first))
}

/// Runs `request` once per key: with no key, it just runs; with a key, a
/// retry gets the first answer instead (see the module's rules).
pub(super) async fn once<F, Fut>(
    api: &Api,
    key: Option<String>,
    path: &str,
    body: &[u8],
    request: F,
) -> Result<Resp, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<serde_json::Value, ApiError>>,
{
    let Some(key) = key else {
        return request().await.map(|v| json(StatusCode::OK, &v));
    };
    let answer = answered_once(api, key, path, body, request).await?;
    let mut r = json_text(answer.status, answer.body);
    if answer.replayed {
        r.headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(r)
}

/// An answer given under a key: the first request's, or this one's.
pub(crate) struct Answer {
    /// Its HTTP status (a kept error's too).
    pub status: StatusCode,
    /// Its JSON body.
    pub body: String,
    /// Sent before, to the first request with the key.
    pub replayed: bool,
}

/// [`once`] without the HTTP response: the gRPC API's publishes (`path`
/// names the call, `body` is the request without its key).
pub(crate) async fn answered_once<F, Fut>(
    api: &Api,
    key: String,
    path: &str,
    body: &[u8],
    request: F,
) -> Result<Answer, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<serde_json::Value, ApiError>>,
{
    let fp = fingerprint(path, body);
    let window = Duration::from_secs(api.cfg.idempotency_window_secs);
    match begin(api, &key, &fp, window).await? {
        Idempotency::Reserved => {}
        Idempotency::Held { fingerprint, .. } if fingerprint != fp => {
            bump(&api.keys.counts.reused);
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was sent with another request; use a new key for a new message",
            )
            .field("Idempotency-Key"));
        }
        Idempotency::Held { answer: None, .. } => {
            bump(&api.keys.counts.in_flight);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_flight",
                "the first request with this Idempotency-Key is still running; retry once it answered",
            )
            .field("Idempotency-Key"));
        }
        Idempotency::Held {
            answer: Some(a), ..
        } => {
            bump(&api.keys.counts.replayed);
            return Ok(replay(&a));
        }
    }
    // A success's body is written once, for the answer kept and the one
    // sent; an error goes on to the dispatcher as any other.
    let outcome = request().await;
    let (status, body) = match &outcome {
        Ok(v) => (StatusCode::OK, v.to_string()),
        Err(e) => (e.status, e.body().to_string()),
    };
    let keep = status.is_success()
        || status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE;
    let answer = keep.then(|| format!("{}\n{body}", status.as_u16()));
    if answer.is_none() {
        bump(&api.keys.counts.freed);
    }
    end(api, &key, &fp, answer, window).await;
    outcome.map(|_| Answer {
        status,
        body,
        replayed: false,
    })
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// A kept answer, given again.
fn replay(answer: &str) -> Answer {
    let (status, body) = answer.split_once('\n').unwrap_or(("200", answer));
    let status = status
        .parse::<u16>()
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    Answer {
        status,
        body: body.to_owned(),
        replayed: true,
    }
}

async fn begin(api: &Api, key: &str, fp: &str, window: Duration) -> Result<Idempotency, ApiError> {
    let unavailable = |e: StoreError| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "idempotency_unavailable",
            format!("the Idempotency-Key cannot be checked now ({e}); nothing was delivered, retry with the same key"),
        )
    };
    if !api.node.store.cluster() {
        return api.keys.begin(key, fp, window).map_err(unavailable);
    }
    let reserve = (Duration::from_millis(api.cfg.publish_timeout_ms) * RESERVATION_TIMEOUTS)
        .max(RESERVATION_MIN)
        .min(window);
    let (reply_to, rx) = oneshot::channel();
    api.node.store.lookup(Lookup::IdempotencyBegin {
        key: key.to_owned(),
        fingerprint: fp.to_owned(),
        reserve_ms: reserve.as_millis() as u64,
        reply: reply_to,
    });
    reply(api, rx, "").await?.map_err(unavailable)
}

async fn end(api: &Api, key: &str, fp: &str, answer: Option<String>, window: Duration) {
    if !api.node.store.cluster() {
        return api.keys.end(key, fp, answer, window);
    }
    let (reply_to, rx) = oneshot::channel();
    api.node.store.lookup(Lookup::IdempotencyEnd {
        key: key.to_owned(),
        fingerprint: fp.to_owned(),
        answer,
        window_ms: window.as_millis() as u64,
        reply: reply_to,
    });
    // The client gets its answer either way; a key whose end was not
    // recorded answers 409 to retries until its window ends.
    match reply(api, rx, "").await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("idempotency key {key:?}: its answer was not recorded ({e})"),
        Err(e) => warn!(
            "idempotency key {key:?}: its answer was not recorded ({})",
            e.message
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);
    const FP: &str = "000000000000000000000000000000f1";
    const OTHER: &str = "000000000000000000000000000000f2";

    #[test]
    fn a_key_is_reserved_once_then_holds_its_answer_or_is_freed() {
        let k = Keys::new(10);
        assert_eq!(k.begin("a", FP, W).unwrap(), Idempotency::Reserved);
        let running = Idempotency::Held {
            fingerprint: FP.into(),
            answer: None,
        };
        assert_eq!(k.begin("a", FP, W).unwrap(), running);
        k.end("a", OTHER, Some("500\n{}".into()), W);
        assert_eq!(
            k.begin("a", FP, W).unwrap(),
            running,
            "not its request's end"
        );
        k.end("a", FP, Some("200\n{}".into()), W);
        assert_eq!(
            k.begin("a", OTHER, W).unwrap(),
            Idempotency::Held {
                fingerprint: FP.into(),
                answer: Some("200\n{}".into())
            }
        );
        assert_eq!(k.begin("b", FP, W).unwrap(), Idempotency::Reserved);
        k.end("b", FP, None, W);
        assert_eq!(k.begin("b", FP, W).unwrap(), Idempotency::Reserved, "freed");
    }

    #[test]
    fn keys_expire_after_their_window_and_the_table_is_bounded() {
        let k = Keys::new(2);
        assert_eq!(
            k.begin("a", FP, Duration::ZERO).unwrap(),
            Idempotency::Reserved
        );
        assert_eq!(k.begin("b", FP, W).unwrap(), Idempotency::Reserved);
        // `a`'s window is over: it makes room, and its key is new again.
        assert_eq!(k.begin("a", FP, W).unwrap(), Idempotency::Reserved);
        assert!(k.begin("c", FP, W).is_err(), "two keys in their window");
        k.end("b", FP, None, W);
        assert_eq!(k.begin("c", FP, W).unwrap(), Idempotency::Reserved);
    }

    #[test]
    fn a_fingerprint_is_32_hex_digits_and_tells_requests_apart() {
        let a = fingerprint("/v1/publish", b"{}");
        assert_eq!(a.len(), 32);
        assert_eq!(format!("{:032x}", hex128(&a)), a);
        assert_ne!(a, fingerprint("/v1/broadcast", b"{}"));
        assert_ne!(a, fingerprint("/v1/publish", b"{ }"));
    }
}
