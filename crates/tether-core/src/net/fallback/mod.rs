//! When WebSocket does not get through: Server-Sent Events and
//! long-polling, served by the cores on the WebSocket listeners (ws, and
//! wss as HTTPS), with the same sessions as MQTT. The protocol (JSON
//! events, POST actions, cursors) is specified in README.md, "HTTP
//! fallback".
//!
//! **An HTTP session is an MQTT session.** Its id is the MQTT client id.
//! The first `GET …/sse` or `GET …/poll` of a session on its core opens an
//! MQTT 5 connection whose socket is an in-memory [`pipe::Pipe`]: a CONNECT
//! with the request's credentials (so the same `Authenticator`), then
//! SUBSCRIBE, PUBLISH and PUBACK packets built from POSTs (so the same
//! `Authorizer`, windows, acks and durability). What the session writes is
//! decoded into events for whichever request is attached. Keep-alive is
//! that connection's: requests and SSE heartbeats touch it, the wheel
//! reaps it. A client that comes back over WebSocket with the same client
//! id takes the session over like any MQTT client, and the other way round.
//!
//! **Requests reach the session's core.** A session lives on the core its
//! id hashes to (`id::owner_core`). A request the kernel accepted on another
//! core is handed over with its socket (`CoreMsg::Adopt`: the descriptor
//! and the bytes read so far); new session ids are drawn so that they hash
//! to the core that drew them, so a client that lets the server pick never
//! moves. Across nodes, a load balancer must keep a session's requests on
//! one node (hash the `sid` parameter); a stream that lands elsewhere takes
//! the session over through the session store like a reconnecting client.
//!
//! **Nothing acknowledged is lost, nothing unacknowledged is dropped.** QoS
//! 1 deliveries stay in the pipe's log until the client names a later
//! event id (`?ack=`, `POST …/ack`, or an SSE client's `Last-Event-ID`);
//! every new stream or poll writes them again first. A poll whose response
//! was lost therefore gets the same events on the next poll.

pub mod exchange;
mod json;
mod pipe;
pub mod request;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use ahash::AHashMap;
use ring::rand::SecureRandom;
use slab::Slab;

pub use exchange::{Exchange, Outcome};
pub use pipe::Pipe;
use pipe::{Credentials, PipeState};

use crate::codec::{Connect, Properties, Version};
use crate::shard::Core;
use crate::stats::bump;

/// One core's HTTP sessions.
#[derive(Default)]
struct Sessions {
    /// Every pipe whose MQTT connection runs, by [`Pipe::id`]: a pipe
    /// leaves when its connection ends ([`release`]).
    pipes: Slab<Rc<Pipe>>,
    /// The current pipe of each session id (a session reopened with other
    /// credentials has a newer one while the old connection closes).
    by_sid: AHashMap<Rc<str>, u32>,
}

thread_local! {
    /// This core's HTTP sessions (one executor per thread, so one table
    /// per core; only this core's requests reach them).
    static SESSIONS: RefCell<Sessions> = RefCell::new(Sessions::default());
}

/// The open (or opening) session `sid` on this core.
pub fn session(sid: &str) -> Option<Rc<Pipe>> {
    SESSIONS.with(|s| {
        let s = s.borrow();
        s.by_sid
            .get(sid)
            .and_then(|&id| s.pipes.get(id as usize))
            .filter(|p| !matches!(p.phase(), PipeState::Closed { .. }))
            .cloned()
    })
}

/// The pipe with id `id`, while its connection runs.
pub fn pipe(id: u32) -> Option<Rc<Pipe>> {
    SESSIONS.with(|s| s.borrow().pipes.get(id as usize).cloned())
}

/// HTTP sessions on this core.
pub fn sessions_open() -> usize {
    SESSIONS.with(|s| s.borrow().pipes.len())
}

/// Stops naming `pipe` as its session's (a request found it refused).
pub fn forget(pipe: &Pipe) {
    SESSIONS.with(|s| {
        let mut s = s.borrow_mut();
        if s.by_sid.get(&pipe.sid) == Some(&pipe.id) {
            s.by_sid.remove(&pipe.sid);
        }
    });
}

/// The session's connection ended: the pipe is closed (its requests hear
/// of it) and leaves the table.
pub fn release(id: u32) -> Option<Rc<Pipe>> {
    let pipe = SESSIONS.with(|s| {
        let mut s = s.borrow_mut();
        let pipe = s.pipes.try_remove(id as usize)?;
        if s.by_sid.get(&pipe.sid) == Some(&id) {
            s.by_sid.remove(&pipe.sid);
        }
        Some(pipe)
    })?;
    pipe.close(0);
    Some(pipe)
}

/// Random bytes from the system's generator.
fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The system generator fails only without getrandom(2) or
    // /dev/urandom, which a host running io_uring has.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random generator");
    b
}

/// A fresh session id that hashes to core `core` of `cores`: 16 random
/// bytes in hex, drawn again until it does (on average `cores` draws).
pub fn new_sid(core: usize, cores: usize) -> String {
    loop {
        let sid: String = random::<16>().iter().map(|b| format!("{b:02x}")).collect();
        if crate::id::owner_core(&sid, cores) == core {
            return sid;
        }
    }
}

/// Opens session `sid` on this core: a pipe with the CONNECT, and the MQTT
/// connection that reads it, handed to the core's driver. The session
/// resumes unless `clean`.
pub fn open(
    core: &Rc<Core>,
    sid: &str,
    credentials: Credentials,
    peer: SocketAddr,
    clean: bool,
) -> Rc<Pipe> {
    let f = &core.cfg.websocket.fallback;
    let connect = Connect {
        version: Version::V5,
        clean_start: clean,
        keep_alive: f.keep_alive_secs,
        client_id: sid.to_string(),
        will: None,
        username: credentials.username.clone(),
        password: credentials.password.clone().map(Into::into),
        properties: Properties {
            session_expiry_interval: Some(f.session_expiry_secs),
            ..Default::default()
        },
    };
    let sid: Rc<str> = sid.into();
    let epoch = u32::from_le_bytes(random::<4>());
    let pipe = SESSIONS.with(|s| {
        let mut s = s.borrow_mut();
        let entry = s.pipes.vacant_entry();
        let id = entry.key() as u32;
        let pipe = Pipe::new(
            id,
            sid.clone(),
            epoch,
            credentials.fingerprint(),
            peer,
            &connect,
            f.max_buffered_bytes,
        );
        entry.insert(pipe.clone());
        s.by_sid.insert(sid, id);
        pipe
    });
    let task = crate::net::conn::serve_pipe(core.clone(), &pipe, peer);
    crate::net::driver::spawn(task);
    bump(&core.stats().fallback_sessions, 1);
    pipe
}
