//! The in-memory connection between an HTTP session's MQTT state machine
//! and the HTTP requests that serve it, on the session's core.
//!
//! The session is an ordinary MQTT 5 connection ([`crate::net::conn`]) whose
//! socket is this pipe: requests write MQTT packets into [`Pipe::inbound`]
//! (the CONNECT that opens it, SUBSCRIBE, PUBLISH, PUBACK, DISCONNECT) and
//! the connection reads them as it would read a socket; what the connection
//! writes is decoded at once ([`Pipe::write`]): deliveries become rendered
//! events in the [`Log`], acknowledgements answer the request waiting for
//! them. So authentication, ACLs, windows, keep-alive, takeover and every
//! other rule are the MQTT ones, unchanged.
//!
//! Lifecycle: created by the first stream or poll of a session id on its
//! core and put in the core's table (`super::SESSIONS`); closed when the
//! MQTT connection ends (keep-alive ran out, taken over, kicked, deleted),
//! which takes it out of the table. Requests that hold an `Rc` to a closed
//! pipe see [`PipeState::Closed`] and answer accordingly.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::json;
use crate::codec::{decode, encode, Ack, Packet, Properties, Version};
use crate::id::ConnKey;

/// Where a session's MQTT connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeState {
    /// CONNECT written, no CONNACK yet.
    Opening,
    /// CONNACK 0x00.
    Open {
        /// The session existed already (its subscriptions and unacknowledged
        /// messages came back).
        present: bool,
    },
    /// Refused (the CONNACK's reason code), or ended (the DISCONNECT's, or
    /// 0x8E-style codes; 0 for a plain close).
    Closed {
        /// MQTT 5 reason code.
        code: u8,
    },
}

/// What the client presented: a request must present the same to act on a
/// session, so a session id alone is not a key to someone else's session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// User name (MQTT CONNECT user name).
    pub username: Option<String>,
    /// Password or bearer token (MQTT CONNECT password).
    pub password: Option<Vec<u8>>,
}

thread_local! {
    /// This core's key for credential fingerprints (random per process
    /// and core: a fingerprint never leaves the core that made it).
    static FINGERPRINT_KEY: ring::hmac::Key = {
        let rng = ring::rand::SystemRandom::new();
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .expect("the system's random generator")
    };
}

/// An HMAC of credentials, which is what a session keeps of them: no
/// password or token is kept on a core (the verdict cache keeps digests
/// too), and comparing two is constant-time.
#[derive(Clone, Copy)]
pub struct Fingerprint([u8; 32]);

impl Credentials {
    /// Their fingerprint under this core's key.
    pub fn fingerprint(&self) -> Fingerprint {
        FINGERPRINT_KEY.with(|key| {
            let mut ctx = ring::hmac::Context::with_key(key);
            // Lengths first, so ("ab", "c") and ("a", "bc") differ.
            for part in [
                self.username.as_deref().map(str::as_bytes),
                self.password.as_deref(),
            ] {
                match part {
                    Some(p) => {
                        ctx.update(&[1]);
                        ctx.update(&(p.len() as u64).to_le_bytes());
                        ctx.update(p);
                    }
                    None => ctx.update(&[0]),
                }
            }
            let mut out = [0u8; 32];
            out.copy_from_slice(ctx.sign().as_ref());
            Fingerprint(out)
        })
    }
}

impl PartialEq for Fingerprint {
    /// Constant-time: how much of a fingerprint matches does not show.
    fn eq(&self, other: &Fingerprint) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// An event for the client: rendered once, written to every stream or poll
/// that needs it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Position in the session's log; with the pipe's epoch, the event id
    /// (`<epoch>.<seq>`) an acknowledgement names.
    pub seq: u64,
    /// The MQTT packet id of a QoS 1 delivery, acknowledged to the session
    /// when the client acknowledges the event; 0 for events that need no
    /// acknowledgement (they leave the log once written).
    pub pkid: u16,
    /// The event as JSON.
    pub json: Rc<str>,
}

/// Events waiting for the client, oldest first. QoS 1 deliveries stay until
/// acknowledged; the others go once written.
#[derive(Default)]
pub struct Log {
    events: VecDeque<Event>,
    /// Bytes of rendered JSON held.
    bytes: usize,
    next_seq: u64,
    /// Highest sequence written to a stream or poll.
    written: u64,
}

/// A request waiting for the session's answer to one of its packets.
#[derive(Default)]
struct Reply {
    answer: Option<Vec<u8>>,
    waker: Option<Waker>,
}

/// One HTTP session's pipe (see the module doc).
pub struct Pipe {
    /// Its place in the core's table (`super::SESSIONS`), which is how
    /// the session's connection names it.
    pub id: u32,
    /// The session id: the MQTT client id.
    pub sid: Rc<str>,
    /// Random, per pipe: event ids are `<epoch>.<seq>`, so a cursor from an
    /// earlier pipe of the same session (whose sequence restarted)
    /// acknowledges nothing here. Packet ids are no cursor: the session
    /// reuses one as soon as it is acknowledged.
    pub epoch: u32,
    /// `epoch` in hex, the start of every event id (formatted once).
    epoch_hex: Box<str>,
    /// What the session was opened with (a fingerprint, not the
    /// credentials).
    pub credentials: Fingerprint,
    /// The client's address when the session was opened, for log lines.
    pub peer: std::net::SocketAddr,
    /// The session's connection on this core, once registered.
    pub key: Cell<Option<ConnKey>>,
    phase: Cell<PipeState>,
    /// MQTT bytes for the session's connection to read.
    inbound: RefCell<Vec<u8>>,
    /// The session connection's waker: inbound bytes, or room in the log.
    session_waker: RefCell<Option<Waker>>,
    log: RefCell<Log>,
    /// [`Pipe::write`] refuses more while the log holds this many bytes.
    max_log_bytes: usize,
    /// Generation of the attached stream or poll (0: none yet); a newer
    /// one supersedes it.
    attached: Cell<u64>,
    stream_waker: RefCell<Option<Waker>>,
    /// Requests waiting for the CONNACK (several may race to open it).
    openers: RefCell<Vec<Waker>>,
    /// Packet ids of the session's own packets (SUBSCRIBE, UNSUBSCRIBE,
    /// PUBLISH at QoS 1) waiting for their acknowledgement.
    /// A list, not a map: a session has a few POSTs waiting at most, and
    /// a map's hasher state alone would be 32 bytes in every session.
    replies: RefCell<Vec<(u16, Reply)>>,
    next_pkid: Cell<u16>,
}

impl Pipe {
    /// A pipe for session `sid`, with the CONNECT that opens it queued.
    pub fn new(
        id: u32,
        sid: Rc<str>,
        epoch: u32,
        credentials: Fingerprint,
        peer: std::net::SocketAddr,
        connect: &crate::codec::Connect,
        max_log_bytes: usize,
    ) -> Rc<Pipe> {
        let mut inbound = Vec::new();
        encode(
            &Packet::Connect(Box::new(connect.clone())),
            Version::V5,
            &mut inbound,
        );
        let pipe = Rc::new(Pipe {
            id,
            sid,
            epoch,
            epoch_hex: format!("{epoch:x}").into(),
            credentials,
            peer,
            key: Cell::new(None),
            phase: Cell::new(PipeState::Opening),
            inbound: RefCell::new(inbound),
            session_waker: RefCell::new(None),
            log: RefCell::new(Log::default()),
            max_log_bytes,
            attached: Cell::new(0),
            stream_waker: RefCell::new(None),
            openers: RefCell::new(Vec::new()),
            replies: RefCell::new(Vec::new()),
            next_pkid: Cell::new(0),
        });
        pipe.log.borrow_mut().next_seq = 1;
        pipe
    }

    /// The id of event `seq`: `<epoch in hex>.<seq>`.
    pub fn event_id(&self, seq: u64) -> String {
        let mut id = String::with_capacity(self.epoch_hex.len() + 12);
        id.push_str(&self.epoch_hex);
        id.push('.');
        id.push_str(&seq.to_string());
        id
    }

    /// Where the session's connection is.
    pub fn phase(&self) -> PipeState {
        self.phase.get()
    }

    // ---- the session connection's side ----

    /// Reads what requests queued for the session: `Pending` (the waker
    /// kept) when nothing is.
    pub fn read(&self, buf: &mut [u8], waker: &Waker) -> Poll<usize> {
        let mut inbound = self.inbound.borrow_mut();
        if inbound.is_empty() {
            *self.session_waker.borrow_mut() = Some(waker.clone());
            return Poll::Pending;
        }
        let n = inbound.len().min(buf.len());
        buf[..n].copy_from_slice(&inbound[..n]);
        inbound.drain(..n);
        if inbound.is_empty() && inbound.capacity() > 0 {
            *inbound = Vec::new();
        }
        Poll::Ready(n)
    }

    /// Takes what the session's connection wrote (whole packets: it writes
    /// whole encoded frames): `Pending` while the log is over its bound, so
    /// the backlog stays in the session's outbox under its rules.
    pub fn write(&self, buf: &[u8], waker: &Waker) -> Poll<io::Result<usize>> {
        if self.log.borrow().bytes >= self.max_log_bytes {
            *self.session_waker.borrow_mut() = Some(waker.clone());
            return Poll::Pending;
        }
        let mut used = 0;
        while used < buf.len() {
            match decode(&buf[used..], Some(Version::V5), usize::MAX) {
                Ok(Some((packet, n))) => {
                    used += n;
                    self.on_session_packet(packet);
                }
                // The connection writes whole packets; anything else is a
                // bug here, not the client's doing.
                Ok(None) | Err(_) => {
                    return Poll::Ready(Err(io::Error::other(
                        "the session wrote a packet the pipe cannot decode",
                    )))
                }
            }
        }
        self.wake_stream();
        Poll::Ready(Ok(buf.len()))
    }

    fn on_session_packet(&self, packet: Packet) {
        match packet {
            Packet::Publish(p) => self.push(p.pkid, |id| json::message(id, &p)),
            Packet::ConnAck(c) => {
                if c.code == 0 {
                    self.phase.set(PipeState::Open {
                        present: c.session_present,
                    });
                    let present = c.session_present;
                    self.push(0, |id| json::session(id, &self.sid, present));
                } else {
                    self.phase.set(PipeState::Closed { code: c.code });
                }
                self.wake_replies();
            }
            Packet::SubAck(a) => self.answer(a.pkid, a.codes),
            Packet::UnsubAck(a) => self.answer(a.pkid, a.codes),
            Packet::PubAck(a) => self.answer(a.pkid, vec![a.code]),
            Packet::Disconnect(d) => self.close(d.code),
            // PINGRESP, and QoS 2 steps the session never starts (the
            // fallback subscribes and publishes at QoS 0 and 1 only).
            _ => {}
        }
    }

    /// Appends an event rendered by `render` from its id.
    fn push(&self, pkid: u16, render: impl FnOnce(&str) -> String) {
        let mut log = self.log.borrow_mut();
        let seq = log.next_seq;
        log.next_seq += 1;
        let json = render(&self.event_id(seq));
        log.bytes += json.len();
        log.events.push_back(Event {
            seq,
            pkid,
            json: json.into(),
        });
    }

    /// The session's connection ended (or said why it ends): every waiter
    /// hears of it.
    pub fn close(&self, code: u8) {
        if !matches!(self.phase.get(), PipeState::Closed { .. }) {
            self.phase.set(PipeState::Closed { code });
        }
        self.wake_replies();
        self.wake_stream();
    }

    // ---- the requests' side ----

    /// Queues a packet for the session and wakes it.
    pub fn send(&self, packet: &Packet) {
        encode(packet, Version::V5, &mut self.inbound.borrow_mut());
        if let Some(w) = self.session_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// A packet id for one of the session's own packets, not in use by
    /// another waiting one, registered to wait for its answer (awaited
    /// with [`Pipe::reply`]).
    pub fn reserve_pkid(&self) -> u16 {
        let mut replies = self.replies.borrow_mut();
        loop {
            let id = self.next_pkid.get().wrapping_add(1).max(1);
            self.next_pkid.set(id);
            if !replies.iter().any(|(k, _)| *k == id) {
                replies.push((id, Reply::default()));
                return id;
            }
        }
    }

    /// The answer (reason codes) to `pkid` once it came; `Pending` with the
    /// waker kept until then.
    pub fn reply(&self, pkid: u16, waker: &Waker) -> Poll<Option<Vec<u8>>> {
        let mut replies = self.replies.borrow_mut();
        let Some(i) = replies.iter().position(|(k, _)| *k == pkid) else {
            return Poll::Ready(None);
        };
        if let Some(answer) = replies[i].1.answer.take() {
            replies.swap_remove(i);
            return Poll::Ready(Some(answer));
        }
        if matches!(self.phase.get(), PipeState::Closed { .. }) {
            replies.swap_remove(i);
            return Poll::Ready(None);
        }
        replies[i].1.waker = Some(waker.clone());
        Poll::Pending
    }

    /// Stops waiting for `pkid` (the request gave up).
    pub fn forget(&self, pkid: u16) {
        self.replies.borrow_mut().retain(|(k, _)| *k != pkid);
    }

    fn answer(&self, pkid: u16, codes: Vec<u8>) {
        if let Some((_, r)) = self
            .replies
            .borrow_mut()
            .iter_mut()
            .find(|(k, _)| *k == pkid)
        {
            r.answer = Some(codes);
            if let Some(w) = r.waker.take() {
                w.wake();
            }
        }
    }

    fn wake_replies(&self) {
        for w in self.openers.borrow_mut().drain(..) {
            w.wake();
        }
        for (_, r) in self.replies.borrow_mut().iter_mut() {
            if let Some(w) = r.waker.take() {
                w.wake();
            }
        }
        self.wake_stream();
    }

    fn wake_stream(&self) {
        if let Some(w) = self.stream_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// A stream or poll attaches: it supersedes the one before (woken, it
    /// sees it lost), and the events written to that one but not
    /// acknowledged will be written again. Returns the attachment's
    /// generation and how many events are resent.
    pub fn attach(&self) -> (u64, usize) {
        let gen = self.attached.get() + 1;
        self.attached.set(gen);
        self.wake_stream();
        let mut log = self.log.borrow_mut();
        let written = log.written;
        let resent = log.events.iter().take_while(|e| e.seq <= written).count();
        log.written = log.events.front().map_or(written, |e| e.seq - 1);
        (gen, resent)
    }

    /// Whether attachment `gen` is still the current one.
    pub fn is_attached(&self, gen: u64) -> bool {
        self.attached.get() == gen
    }

    /// The events not yet written to the current stream (at most
    /// `max_bytes` of them, at least one), marked written; events nobody
    /// acknowledges leave the log. `Pending` (waker kept) when there are
    /// none.
    pub fn take(&self, max_bytes: usize, waker: &Waker) -> Poll<Vec<Event>> {
        let mut log = self.log.borrow_mut();
        let written = log.written;
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in log.events.iter().filter(|e| e.seq > written) {
            if !out.is_empty() && bytes + e.json.len() > max_bytes {
                break;
            }
            bytes += e.json.len();
            out.push(e.clone());
        }
        let Some(last) = out.last().map(|e| e.seq) else {
            *self.stream_waker.borrow_mut() = Some(waker.clone());
            return Poll::Pending;
        };
        log.written = last;
        let before = log.bytes;
        log.events.retain(|e| e.pkid != 0 || e.seq > last);
        log.bytes = log.events.iter().map(|e| e.json.len()).sum();
        if log.events.is_empty() {
            // An idle session holds no event buffer.
            log.events = VecDeque::new();
        }
        let freed = before > log.bytes;
        drop(log);
        if freed {
            // Room in the log: the session may write what waits.
            if let Some(w) = self.session_waker.borrow_mut().take() {
                w.wake();
            }
        }
        Poll::Ready(out)
    }

    /// Keeps `waker` to be woken when the CONNACK comes (or the session
    /// closes).
    pub fn wait_open(&self, waker: &Waker) {
        self.openers.borrow_mut().push(waker.clone());
    }

    /// Acknowledges every QoS 1 delivery written up to and including event
    /// id `cursor` (`<epoch>.<seq>`: the last event the client processed).
    /// A cursor of another epoch, or malformed, acknowledges nothing.
    /// Returns how many were acknowledged.
    pub fn ack(&self, cursor: &str) -> usize {
        let Some((epoch, seq)) = cursor.split_once('.') else {
            return 0;
        };
        let (Ok(epoch), Ok(seq)) = (u32::from_str_radix(epoch, 16), seq.parse::<u64>()) else {
            return 0;
        };
        if epoch != self.epoch {
            return 0;
        }
        let mut log = self.log.borrow_mut();
        let upto = seq.min(log.written);
        let mut acked = Vec::new();
        log.events.retain(|e| {
            let hit = e.pkid != 0 && e.seq <= upto;
            if hit {
                acked.push(e.pkid);
            }
            !hit
        });
        log.bytes = log.events.iter().map(|e| e.json.len()).sum();
        if log.events.is_empty() {
            log.events = VecDeque::new();
        }
        drop(log);
        for pkid in &acked {
            self.send(&Packet::PubAck(Ack {
                pkid: *pkid,
                code: 0,
                properties: Properties::default(),
            }));
        }
        acked.len()
    }

    /// Bytes of events held, for the idle-memory figures.
    pub fn log_bytes(&self) -> usize {
        self.log.borrow().bytes
    }
}
