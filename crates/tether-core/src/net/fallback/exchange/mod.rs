//! One HTTP connection of the fallback: its requests, one after another
//! (keep-alive), each served on the core that owns its session.
//!
//! A state machine polled by the core's connection driver like an MQTT
//! connection (it is a [`crate::net::conn::ConnTask`] variant), holding no
//! slab entry of its own: it acts on the session's pipe ([`Pipe`]). States:
//! reading the next request; waiting for the session's CONNACK; a held
//! long-poll; an SSE stream; a POST waiting for the session's answer.
//! While it waits it keeps reading the socket, so a client that goes away
//! is noticed at once. On the wss listener it runs over the connection's
//! TLS session ([`secure`]), which moves with the socket on a handoff.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use glommio::timer::Timer;
use tracing::{debug, info};

mod actions;
mod secure;

use super::json;
use super::pipe::{Pipe, PipeState};
use super::request::{self, Parsed, Request};
use crate::codec::{reason, Packet, Properties, ReasonOnly};
use crate::mesh::Handoff;
use crate::net::conn::{read_now, write_now};
use crate::net::tls::{self, Inbound};
use crate::shard::Core;
use crate::stats::bump;
use secure::Secure;

/// Largest request head accepted (431 beyond), as for the upgrade.
const MAX_HEAD: usize = crate::net::ws::MAX_HANDSHAKE_BYTES;
/// How long a keep-alive connection may sit between requests before it is
/// closed (a polling client sends its next poll at once; one that stopped
/// should not pin a socket).
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a POST waits for the session's acknowledgement (SUBACK,
/// UNSUBACK, PUBACK) before it is answered 504; a held acknowledgement
/// (sync durability, a Kafka route) waits at most its own timeout, below
/// this by default.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Events written per poll response or SSE round, bytes (at least one
/// event): bounds a response, not the session's backlog.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// What an SSE client is told to wait before it reconnects, ms.
const SSE_RETRY_MS: u64 = 1000;
/// Session ids are at most this long (they are MQTT client ids, and go in
/// URLs).
const MAX_SID_LEN: usize = 128;

/// How an exchange ends.
pub enum Outcome {
    /// Close the socket.
    Close,
    /// The request in `bytes` belongs to a session of core `core`: the
    /// socket (and its TLS session) goes there with them.
    Handoff {
        /// The session's core.
        core: usize,
        /// Bytes read and not handled (the request, and whatever followed).
        bytes: Vec<u8>,
    },
}

/// What a request waits for.
enum State {
    /// Reading the next request.
    Idle,
    /// A stream or poll that opened its session, waiting for the CONNACK.
    Opening {
        pipe: Rc<Pipe>,
        sse: bool,
        /// An acknowledgement cursor the request carried.
        cursor: Option<String>,
    },
    /// A held long-poll, attachment `gen` of the session.
    Poll { pipe: Rc<Pipe>, gen: u64 },
    /// An SSE stream, attachment `gen`.
    Sse { pipe: Rc<Pipe>, gen: u64 },
    /// A POST waiting for the acknowledgement of its packet.
    Reply {
        pipe: Rc<Pipe>,
        pkid: u16,
        action: Action,
    },
}

/// The POST actions that wait for an acknowledgement.
#[derive(Clone, Copy)]
enum Action {
    Subscribe,
    Unsubscribe,
    Publish,
}

/// One step of the state machine.
enum Step {
    /// Something changed: go round again.
    Again,
    /// Waiting (wakers and timers set): watch the socket meanwhile.
    Wait,
    /// Hand the connection to another core.
    Handoff(usize),
}

/// One HTTP connection of the fallback (see the module doc).
pub struct Exchange {
    core: Rc<Core>,
    stream: TcpStream,
    /// The TLS layer, on the wss listener.
    tls: Option<Secure>,
    /// Bytes read (plaintext) and not yet handled.
    raw: Vec<u8>,
    /// Response bytes not yet written (plaintext: sealed when flushed).
    out: Vec<u8>,
    opos: usize,
    state: State,
    /// The current wait's deadline: idle keep-alive, a poll's hold, the
    /// next SSE heartbeat, a POST's reply.
    timer: Option<Deadline>,
    /// Close once `out` is written.
    close_after: bool,
    /// The request being served asked to close after its response.
    close_requested: bool,
    /// `100 Continue` was sent for the request being read.
    continued: bool,
}

impl Exchange {
    /// Serves `stream`, whose first bytes (read already) are `raw`.
    pub fn new(core: Rc<Core>, stream: TcpStream, raw: Vec<u8>) -> Exchange {
        Exchange::with_tls(core, stream, raw, None)
    }

    /// Serves `stream` on the wss listener: its TLS `session`, the records
    /// the connection had not written yet, and the plaintext it read.
    pub fn over_tls(
        core: Rc<Core>,
        stream: TcpStream,
        raw: Vec<u8>,
        session: Box<tls::TlsSession>,
        unwritten: Vec<u8>,
    ) -> Exchange {
        let tls = Secure::new(session, unwritten);
        Exchange::with_tls(core, stream, raw, Some(tls))
    }

    /// Serves a connection another core handed over.
    pub fn adopt(core: Rc<Core>, handoff: Handoff) -> Exchange {
        let tls = handoff.tls.map(Secure::resume);
        Exchange::with_tls(core, handoff.stream, handoff.bytes, tls)
    }

    fn with_tls(core: Rc<Core>, stream: TcpStream, raw: Vec<u8>, tls: Option<Secure>) -> Exchange {
        Exchange {
            core,
            stream,
            tls,
            raw,
            out: Vec::new(),
            opos: 0,
            state: State::Idle,
            timer: None,
            close_after: false,
            close_requested: false,
            continued: false,
        }
    }

    /// The socket, for the driver's readiness polls.
    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.stream)
    }

    /// The client's address (asked of the socket: for log lines and a new
    /// session's link, so not kept in every exchange).
    fn peer(&self) -> SocketAddr {
        self.stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The core it runs on.
    pub fn core(&self) -> &Rc<Core> {
        &self.core
    }

    /// Gives up the socket and its TLS session, with the plaintext read
    /// and not handled (`bytes`), for another core.
    pub fn into_handoff(self, bytes: Vec<u8>) -> Handoff {
        Handoff {
            stream: self.stream,
            bytes,
            tls: self.tls.map(|t| t.carry()),
        }
    }

    /// Runs the exchange until it must wait, ends, or moves.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        loop {
            match self.flush() {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    debug!(peer = %self.peer(), "fallback write failed: {e}");
                    return Poll::Ready(Outcome::Close);
                }
                Poll::Ready(Ok(())) => {}
            }
            if self.close_after {
                if self.tls.as_mut().is_some_and(|t| t.close()) {
                    // close_notify was sealed: write it first.
                    continue;
                }
                return Poll::Ready(Outcome::Close);
            }
            let step = match self.state {
                State::Idle => self.next_request(cx),
                _ => self.progress(cx),
            };
            match step {
                Step::Again => continue,
                Step::Handoff(core) => {
                    return Poll::Ready(Outcome::Handoff {
                        core,
                        bytes: std::mem::take(&mut self.raw),
                    })
                }
                Step::Wait => match self.read_more() {
                    Poll::Ready(true) => continue,
                    Poll::Ready(false) => return Poll::Ready(Outcome::Close),
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }

    /// Writes `out` (sealed first, over TLS) until it is written (Ready)
    /// or the socket is full.
    fn flush(&mut self) -> Poll<io::Result<()>> {
        let (buf, pos) = match &mut self.tls {
            None => (&mut self.out, &mut self.opos),
            Some(tls) => {
                if self.opos < self.out.len() {
                    tls.seal(&self.out[self.opos..]);
                    self.out = Vec::new();
                    self.opos = 0;
                }
                tls.unwritten()
            }
        };
        while *pos < buf.len() {
            match write_now(&mut self.stream, &buf[*pos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *pos += n;
                    bump(&self.core.stats().bytes_out, n as u64);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        *buf = Vec::new();
        *pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads what the client sent into `raw`: `Ready(true)` when bytes
    /// came, `Ready(false)` when the client closed (or sent more than a
    /// request head while it should wait), `Pending` when there is nothing.
    fn read_more(&mut self) -> Poll<bool> {
        let core = self.core.clone();
        let mut scratch = core.scratch.borrow_mut();
        let n = match read_now(&mut self.stream, &mut scratch) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
            Poll::Ready(Ok(n)) => n,
            Poll::Pending => return Poll::Pending,
        };
        bump(&core.stats().bytes_in, n as u64);
        let mut plain = core.plaintext.borrow_mut();
        let data = match &mut self.tls {
            None => &scratch[..n],
            Some(tls) => {
                plain.clear();
                match tls.open(&mut scratch[..n], &mut plain) {
                    Ok(Inbound::Open) => &plain[..],
                    Ok(Inbound::Closed) => return Poll::Ready(false),
                    Err(e) => {
                        info!(peer = %self.peer(), "fallback connection closed: {e}");
                        bump(&core.stats().protocol_errors, 1);
                        return Poll::Ready(false);
                    }
                }
            }
        };
        let max = MAX_HEAD + core.cfg.websocket.fallback.max_body_bytes;
        if self.raw.len() + data.len() > max {
            return Poll::Ready(false);
        }
        self.raw.extend_from_slice(data);
        Poll::Ready(true)
    }

    /// Parses and starts the next request, or reads on.
    fn next_request(&mut self, cx: &mut Context<'_>) -> Step {
        let f = &self.core.cfg.websocket.fallback;
        match request::parse(&self.raw, MAX_HEAD, f.max_body_bytes) {
            Parsed::Complete(req, used) => {
                self.timer = None;
                self.continued = false;
                let step = self.handle(*req, cx);
                if !matches!(step, Step::Handoff(_)) {
                    self.raw.drain(..used);
                    if self.raw.is_empty() {
                        // A stream or a held poll holds no request buffer.
                        self.raw = Vec::new();
                    }
                }
                step
            }
            Parsed::Bad { status, why } => {
                info!(peer = %self.peer(), "fallback request refused: {why}");
                self.refuse(status, &why);
                self.close_after = true;
                Step::Again
            }
            Parsed::Incomplete { expects_continue } => {
                if expects_continue && !self.continued {
                    // curl and others wait for this before they send a
                    // body over 1 KiB.
                    self.continued = true;
                    self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    return Step::Again;
                }
                if self.timer.is_none() {
                    // A partial request gets the CONNECT deadline, an idle
                    // keep-alive connection the idle timeout.
                    let wait = if self.raw.is_empty() {
                        IDLE_TIMEOUT
                    } else {
                        Duration::from_millis(self.core.cfg.mqtt.connect_timeout_ms)
                    };
                    self.timer = Some(Deadline::new(wait));
                }
                if self.timer_fired(cx) {
                    debug!(peer = %self.peer(), "fallback connection idle: closed");
                    self.close_after = true;
                    return Step::Again;
                }
                Step::Wait
            }
        }
    }

    /// Whether the current deadline passed.
    fn timer_fired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer.as_mut().is_some_and(|t| t.passed(cx))
    }

    /// Answers the request with an error (counted).
    fn refuse(&mut self, status: u16, why: &str) {
        bump(&self.core.stats().fallback_refused, 1);
        self.ok(status, &json::error(why));
    }

    /// Answers the request; the connection closes after it if the request
    /// asked.
    fn ok(&mut self, status: u16, body: &str) {
        request::json(&mut self.out, status, body, self.close_requested);
        if self.close_requested {
            self.close_after = true;
        }
    }

    /// Starts serving a request.
    fn handle(&mut self, req: Request, cx: &mut Context<'_>) -> Step {
        self.close_requested = req.close;
        let core = self.core.clone();
        let prefix = core.cfg.websocket.fallback.path.as_str();
        let action = req.path.strip_prefix(prefix).unwrap_or("").to_string();
        let action = action.as_str();
        if req.method == "OPTIONS" {
            request::preflight(&mut self.out);
            return Step::Again;
        }
        let known = [
            "/sse",
            "/poll",
            "/subscribe",
            "/unsubscribe",
            "/publish",
            "/ack",
            "/session",
        ];
        if !known.contains(&action) {
            self.refuse(404, &format!("no fallback endpoint at {:?}", req.path));
            return Step::Again;
        }
        let stream = matches!(action, "/sse" | "/poll");
        let allowed = match action {
            "/sse" | "/poll" => "GET",
            "/session" => "DELETE",
            _ => "POST",
        };
        if req.method != allowed {
            self.refuse(405, &format!("{} takes {allowed}", req.path));
            return Step::Again;
        }
        let sid = match req.param("sid") {
            Some(s) if valid_sid(s) => s.to_string(),
            Some(_) => {
                self.refuse(
                    400,
                    &format!("sid must be 1 to {MAX_SID_LEN} printable ASCII characters"),
                );
                return Step::Again;
            }
            // A new session: an id this core owns, so it stays here.
            None if stream => super::new_sid(core.id, core.node.cores.len()),
            None => {
                self.refuse(400, "sid is missing");
                return Step::Again;
            }
        };
        let home = crate::id::owner_core(&sid, core.node.cores.len());
        if home != core.id {
            bump(&core.stats().fallback_handoffs, 1);
            return Step::Handoff(home);
        }
        if stream {
            return self.open_stream(req, sid, action == "/sse", cx);
        }
        let Some(pipe) = super::session(&sid) else {
            self.refuse(
                404,
                &format!("no open session {sid:?} on this node: open {prefix}/sse or {prefix}/poll first"),
            );
            return Step::Again;
        };
        if pipe.credentials != req.credentials.fingerprint() {
            self.refuse(401, "credentials differ from the session's");
            return Step::Again;
        }
        if !matches!(pipe.phase(), PipeState::Open { .. }) {
            self.refuse(409, "the session is not open yet");
            return Step::Again;
        }
        if let Some(key) = pipe.key.get() {
            core.touch(key);
        }
        bump(&core.stats().fallback_actions, 1);
        match action {
            "/ack" => self.ack(&pipe, &req),
            "/session" => {
                // Ends the session (expiry 0), not just this connection.
                pipe.send(&Packet::Disconnect(ReasonOnly {
                    code: reason::SUCCESS,
                    properties: Properties {
                        session_expiry_interval: Some(0),
                        ..Default::default()
                    },
                }));
                request::respond(&mut self.out, 204, "application/json", b"", req.close);
                self.close_after = req.close;
                Step::Again
            }
            "/subscribe" => self.subscribe(pipe, &req.body),
            "/unsubscribe" => self.unsubscribe(pipe, &req.body),
            _ => self.publish(pipe, &req.body),
        }
    }

    /// `GET …/sse` and `GET …/poll`: attach to the session, opening it
    /// (a CONNECT) unless it is open here with the same credentials.
    fn open_stream(&mut self, req: Request, sid: String, sse: bool, cx: &mut Context<'_>) -> Step {
        let core = self.core.clone();
        let cursor = req
            .param("ack")
            .map(str::to_string)
            .or(req.last_event_id.clone());
        let pipe = match super::session(&sid) {
            Some(p) if p.credentials == req.credentials.fingerprint() => p,
            // None open, or opened with other credentials (a refreshed
            // token): a new CONNECT, which is authenticated and takes the
            // session over.
            _ => {
                if super::sessions_open() >= core.cfg.websocket.fallback.max_sessions_per_core {
                    self.refuse(
                        503,
                        "too many HTTP sessions on this core (websocket.fallback.max_sessions_per_core)",
                    );
                    return Step::Again;
                }
                let clean = req.param("clean").is_some_and(|v| v == "1" || v == "true");
                super::open(&core, &sid, req.credentials, self.peer(), clean)
            }
        };
        if let Some(key) = pipe.key.get() {
            core.touch(key);
        }
        self.state = State::Opening { pipe, sse, cursor };
        self.progress(cx)
    }

    /// Moves a waiting request on.
    fn progress(&mut self, cx: &mut Context<'_>) -> Step {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => Step::Again,
            State::Opening { pipe, sse, cursor } => match pipe.phase() {
                PipeState::Opening => {
                    pipe.wait_open(cx.waker());
                    self.state = State::Opening { pipe, sse, cursor };
                    Step::Wait
                }
                PipeState::Closed { code } => {
                    super::forget(&pipe);
                    let (status, why) = refusal(code);
                    info!(peer = %self.peer(), sid = %pipe.sid, code, "fallback session refused: {why}");
                    self.refuse(status, why);
                    Step::Again
                }
                PipeState::Open { .. } => {
                    if let Some(c) = cursor {
                        pipe.ack(&c);
                    }
                    let (gen, resent) = pipe.attach();
                    let stats = self.core.stats();
                    bump(&stats.fallback_resends, resent as u64);
                    let f = &self.core.cfg.websocket.fallback;
                    if sse {
                        bump(&stats.fallback_streams, 1);
                        request::sse_head(&mut self.out, &pipe.sid, SSE_RETRY_MS);
                        self.timer = Some(Deadline::new(Duration::from_millis(f.heartbeat_ms)));
                        self.state = State::Sse { pipe, gen };
                    } else {
                        self.timer = Some(Deadline::new(Duration::from_millis(f.poll_timeout_ms)));
                        self.state = State::Poll { pipe, gen };
                    }
                    Step::Again
                }
            },
            State::Poll { pipe, gen } => self.poll_events(cx, pipe, gen),
            State::Sse { pipe, gen } => self.stream_events(cx, pipe, gen),
            State::Reply { pipe, pkid, action } => match pipe.reply(pkid, cx.waker()) {
                Poll::Ready(Some(codes)) => {
                    self.timer = None;
                    self.answer(action, &codes);
                    Step::Again
                }
                Poll::Ready(None) => {
                    self.timer = None;
                    self.refuse(410, "the session closed before it answered");
                    Step::Again
                }
                Poll::Pending if self.timer_fired(cx) => {
                    pipe.forget(pkid);
                    self.timer = None;
                    self.refuse(504, "the session did not answer in time");
                    Step::Again
                }
                Poll::Pending => {
                    self.state = State::Reply { pipe, pkid, action };
                    Step::Wait
                }
            },
        }
    }

    /// A held long-poll: answers with the events as soon as there are any,
    /// or empty when its time is up.
    fn poll_events(&mut self, cx: &mut Context<'_>, pipe: Rc<Pipe>, gen: u64) -> Step {
        let mut body = format!("{{\"sid\":{},\"events\":[", json::string(&pipe.sid));
        let superseded = !pipe.is_attached(gen);
        let events = if superseded {
            Poll::Ready(Vec::new())
        } else {
            pipe.take(MAX_BATCH_BYTES, cx.waker())
        };
        let closed = matches!(pipe.phase(), PipeState::Closed { .. });
        match events {
            Poll::Pending if !closed && !self.timer_fired(cx) => {
                self.state = State::Poll { pipe, gen };
                return Step::Wait;
            }
            Poll::Ready(events) => {
                for (i, e) in events.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&e.json);
                }
            }
            Poll::Pending => {}
        }
        let tail = if superseded {
            Some(json::closed(
                0,
                "replaced by a newer request of this session",
            ))
        } else if let PipeState::Closed { code } = pipe.phase() {
            Some(json::closed(code, "the session's connection ended"))
        } else {
            None
        };
        if let Some(t) = tail {
            if !body.ends_with('[') {
                body.push(',');
            }
            body.push_str(&t);
        }
        body.push_str("]}");
        self.timer = None;
        bump(&self.core.stats().fallback_polls, 1);
        request::poll_answer(&mut self.out, &pipe.sid, &body, self.close_requested);
        if self.close_requested {
            self.close_after = true;
        }
        Step::Again
    }

    /// An SSE stream: writes events as they come, a heartbeat comment
    /// when the stream was quiet, and a `closed` event last.
    fn stream_events(&mut self, cx: &mut Context<'_>, pipe: Rc<Pipe>, gen: u64) -> Step {
        if !pipe.is_attached(gen) {
            let ev = json::closed(0, "replaced by a newer request of this session");
            request::sse_event(&mut self.out, None, &ev);
            self.close_after = true;
            return Step::Again;
        }
        if let Poll::Ready(events) = pipe.take(MAX_BATCH_BYTES, cx.waker()) {
            for e in &events {
                request::sse_event(&mut self.out, Some(&pipe.event_id(e.seq)), &e.json);
            }
            self.state = State::Sse { pipe, gen };
            return Step::Again;
        }
        if let PipeState::Closed { code } = pipe.phase() {
            let ev = json::closed(code, "the session's connection ended");
            request::sse_event(&mut self.out, None, &ev);
            self.close_after = true;
            return Step::Again;
        }
        if self.timer_fired(cx) {
            self.out.extend_from_slice(b": heartbeat\n\n");
            if let Some(key) = pipe.key.get() {
                self.core.touch(key);
            }
            let every = self.core.cfg.websocket.fallback.heartbeat_ms;
            self.timer = Some(Deadline::new(Duration::from_millis(every)));
            self.state = State::Sse { pipe, gen };
            return Step::Again;
        }
        self.state = State::Sse { pipe, gen };
        Step::Wait
    }
}

/// A deadline that wakes the exchange once. glommio's `Timer` registers
/// the waker again (a `BTreeMap` insert) every time it is polled, and an
/// SSE stream polls its heartbeat timer on every event it writes: 3 % of
/// the core in a profile of 50,000 deliveries/s. An exchange's waker never
/// changes (it names its driver slot), so the timer is polled once, to
/// register it, and the deadline is checked against the clock after that.
struct Deadline {
    timer: Timer,
    at: Instant,
    registered: bool,
}

impl Deadline {
    fn new(after: Duration) -> Deadline {
        Deadline {
            timer: Timer::new(after),
            at: Instant::now() + after,
            registered: false,
        }
    }

    /// Whether it passed; the first call that finds it has not registers
    /// the waker.
    fn passed(&mut self, cx: &mut Context<'_>) -> bool {
        if Instant::now() >= self.at {
            return true;
        }
        if !self.registered {
            self.registered = true;
            return Pin::new(&mut self.timer).poll(cx).is_ready();
        }
        false
    }
}

/// HTTP status and text for a CONNACK refusal.
fn refusal(code: u8) -> (u16, &'static str) {
    match code {
        reason::BAD_USERNAME_OR_PASSWORD => (401, "bad user name or password"),
        reason::NOT_AUTHORIZED | reason::BANNED => (403, "not authorized"),
        reason::CLIENT_ID_NOT_VALID => (400, "session id not accepted as a client id"),
        reason::QUOTA_EXCEEDED => (429, "connection limit reached"),
        reason::SERVER_BUSY | reason::SERVER_UNAVAILABLE => (503, "server busy or unavailable"),
        reason::SESSION_TAKEN_OVER => (409, "the session was taken over while it opened"),
        _ => (502, "the session could not open"),
    }
}

/// Session ids: printable ASCII without spaces, at most [`MAX_SID_LEN`].
fn valid_sid(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SID_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}
