//! The connection's state machine: socket I/O for one client, hand-written
//! (one `poll`), polled by the core's connection driver ([`super::driver`])
//! when its socket is ready or the core wakes it. An idle connection holds
//! its slot there and its slab entry: no task, no read or write buffer.
//!
//! Each poll: flush the outbox, honour a close request, then read what the
//! socket has into the core's shared scratch buffer and handle every
//! complete packet. Only a partial trailing packet is copied into the
//! connection's own buffer.
//!
//! Layers, outermost first, each optional and boxed (a plain TCP connection
//! pays a pointer for each): TLS ([`super::tls`]), WebSocket framing
//! ([`super::ws`]), then the MQTT codec; `layers.rs` runs the first two,
//! `close.rs` how a connection ends (settle, final DISCONNECT, linger).
//! Decoded packets go through the core's door (`crate::input::handle`); whether to read, what to
//! write and when to close are asked of the core (`Core::poll_link` and its
//! neighbours).
//!
//! What the driver polls is a [`ConnTask`]: an MQTT connection (over a
//! socket, or over an HTTP fallback session's pipe: [`Io`]), or an HTTP
//! fallback exchange, which a WebSocket-listener connection becomes when
//! its first request is one.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use std::io::{Read, Write};
use std::net::TcpStream;

use glommio::timer::Timer;
use tracing::{debug, warn};

mod close;
mod layers;

use close::LINGER_TIMEOUT;
use layers::Ws;

use super::fallback::{Exchange, Outcome, Pipe};
use super::listener::Transport;
use super::tls::Acceptor;
use crate::codec::{self, decode, DecodeError, Packet, Version};
use crate::id::{ConnId, ConnKey};
use crate::input::{self, Input};
use crate::mqtt::{self, Flow};
use crate::session::Thin;
use crate::shard::{Core, Pace};
use crate::stats::bump;

/// Bytes encoded into the write buffer before it is handed to the socket.
const WRITE_CHUNK: usize = 64 * 1024;
/// The core's shared write buffer is kept up to this size when handed
/// back (a fill adds up to [`WRITE_CHUNK`] past what was there); a larger
/// one, grown by a burst, is freed.
const KEEP_WRITE_SCRATCH: usize = 2 * WRITE_CHUNK;
/// Reads per poll before yielding, so one busy client cannot starve others.
const READ_BUDGET: usize = 16;

struct Conn {
    core: Rc<Core>,
    /// The socket, or an HTTP session's pipe.
    io: Io,
    key: ConnKey,
    /// The sequence part of the connection's [`ConnId`] (node and core are
    /// the core's: 8 bytes here instead of 16, in every connection).
    seq: u64,
    /// Protocol version, known once CONNECT was decoded.
    version: Option<Version>,
    /// Partial packet carried over between reads (empty, and unallocated,
    /// most of the time: a [`Thin`] is one pointer then).
    inbuf: Thin<Vec<u8>>,
    /// Bytes being written: the core's `write_scratch` while this
    /// connection writes, unallocated once everything was written.
    wbuf: Thin<Vec<u8>>,
    /// Written so far of `wbuf` (u32: a fill stops at [`WRITE_CHUNK`]
    /// past what was there, and every byte here is a byte per connection).
    wpos: u32,
    /// Set once the close sequence started; bounds the final flush, then
    /// the linger.
    closing: Option<Timer>,
    /// Bytes read and discarded since the write side was shut; `None`
    /// until then.
    lingered: Option<u32>,
    /// The listener the connection came in on.
    transport: Transport,
    /// TLS, for connections from the mqtts and wss listeners.
    tls: Option<Box<super::tls::TlsSession>>,
    /// WebSocket framing, for connections from the ws and wss listeners.
    ws: Option<Box<Ws>>,
}

/// What one read step did.
enum ReadStep {
    /// Handled a packet, or what one read brought.
    Handled,
    /// Nothing more to read now.
    Drained,
    /// The connection is over (the peer closed, an error, or it turned
    /// into an HTTP fallback exchange).
    Over,
}

/// What a connection reads and writes.
enum Io {
    /// A client socket. Non-blocking; readiness comes from the core's
    /// driver (see [`read_now`] and [`write_now`]).
    Tcp(TcpStream),
    /// An HTTP fallback session: its requests write MQTT packets into the
    /// pipe, and what the connection writes becomes their events
    /// ([`super::fallback`]). The pipe's id in the core's table rather
    /// than an `Rc`: 8 bytes here instead of 16, in every connection.
    Pipe(u32),
}

/// The state machine serving one accepted socket until it closes, polled by
/// the core's [`super::driver::Driver`].
///
/// A named future rather than an `async fn`: an `async fn` keeps its
/// arguments (the stream) beside the state built from them, which made the
/// task 616 bytes instead of the size of `Conn` (measured with
/// `size_of`). Every idle connection pays for that.
pub struct ConnTask {
    inner: Task,
}

/// What a [`ConnTask`] runs.
enum Task {
    /// An MQTT connection (over a socket, or an HTTP session's pipe).
    Mqtt(Conn),
    /// An HTTP connection of the fallback (boxed: rare next to MQTT ones,
    /// and every slot pays for the largest variant).
    Http(Box<Exchange>),
    /// Ended (its socket went to another core).
    Gone,
}

impl ConnTask {
    /// The socket, for the driver's readiness polls (`None`: a pipe, which
    /// wakes the connection itself).
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        match &self.inner {
            Task::Mqtt(c) => match &c.io {
                Io::Tcp(s) => Some(s.as_raw_fd()),
                Io::Pipe(_) => None,
            },
            Task::Http(x) => Some(x.fd()),
            Task::Gone => None,
        }
    }

    /// An HTTP connection of the fallback handed over by another core with
    /// the bytes it read and its TLS session (`CoreMsg::Adopt`).
    pub fn adopt(core: Rc<Core>, handoff: crate::mesh::Handoff) -> ConnTask {
        ConnTask {
            inner: Task::Http(Box::new(Exchange::adopt(core, handoff))),
        }
    }
}

impl Future for ConnTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let task = &mut self.inner;
        loop {
            match task {
                Task::Mqtt(conn) => {
                    if conn.poll_task(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if !conn.ws.as_ref().is_some_and(|w| w.fallback) {
                        return Poll::Ready(());
                    }
                    // An HTTP fallback request on the WebSocket listener:
                    // the socket becomes an exchange with what was read.
                    let Task::Mqtt(mut conn) = std::mem::replace(task, Task::Gone) else {
                        unreachable!("matched above")
                    };
                    conn.core.unregister(conn.key);
                    conn.core.visible().open_by_transport[conn.transport.index()]
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    let raw = conn.ws.take().map(|w| w.raw).unwrap_or_default();
                    let Io::Tcp(stream) = conn.io else {
                        unreachable!("a pipe has no WebSocket layer")
                    };
                    let x = match conn.tls {
                        None => Exchange::new(conn.core, stream, raw),
                        // Records the connection sealed and did not write
                        // (the handshake's last ones) go out first.
                        Some(session) => {
                            let unwritten = conn.wbuf[conn.wpos as usize..].to_vec();
                            Exchange::over_tls(conn.core, stream, raw, session, unwritten)
                        }
                    };
                    *task = Task::Http(Box::new(x));
                }
                Task::Http(x) => match x.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Outcome::Close) => return Poll::Ready(()),
                    Poll::Ready(Outcome::Handoff { core, bytes }) => {
                        let Task::Http(x) = std::mem::replace(task, Task::Gone) else {
                            unreachable!("matched above")
                        };
                        let from = x.core().clone();
                        from.route(
                            core,
                            crate::mesh::CoreMsg::Adopt(Box::new(x.into_handoff(bytes))),
                        );
                        return Poll::Ready(());
                    }
                },
                Task::Gone => return Poll::Ready(()),
            }
        }
    }
}

/// A read that does not block: `Pending` when the socket has nothing, after
/// asking the driver to arm a readable poll for this connection (it is
/// queued again when data arrives). Only valid inside the driver's poll.
/// No system call when the driver knows the socket is empty; a short read
/// (the socket drained) arms the poll at once.
pub(crate) fn read_now(stream: &mut TcpStream, buf: &mut [u8]) -> Poll<io::Result<usize>> {
    if super::driver::drained() {
        return Poll::Pending;
    }
    match stream.read(buf) {
        Ok(n) if n > 0 && n < buf.len() => {
            super::driver::read_drained();
            Poll::Ready(Ok(n))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            super::driver::read_drained();
            Poll::Pending
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => read_now(stream, buf),
        other => Poll::Ready(other),
    }
}

/// A write that does not block: `Pending` when the socket buffer is full,
/// after asking the driver to arm a writable poll for this connection.
pub(crate) fn write_now(stream: &mut TcpStream, buf: &[u8]) -> Poll<io::Result<usize>> {
    match stream.write(buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            super::driver::arm_writable();
            Poll::Pending
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => write_now(stream, buf),
        other => Poll::Ready(other),
    }
}

/// Sets up one accepted socket; the returned state machine serves it once
/// handed to the core's driver. TLS
/// connections start with the handshake, WebSocket connections with the
/// HTTP upgrade. `None`: the socket was closed at once (TLS could not start).
pub fn serve(
    core: Rc<Core>,
    stream: TcpStream,
    transport: Transport,
    acceptor: Option<&Acceptor>,
) -> Option<ConnTask> {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let tls = match (transport.tls(), acceptor) {
        (false, _) => None,
        (true, Some(acceptor)) => match acceptor.session(transport.websocket()) {
            Ok(session) => Some(Box::new(session)),
            Err(e) => {
                warn!(%peer, "cannot start a TLS session: {e}");
                bump(&core.stats().tls_handshake_errors, 1);
                return None;
            }
        },
        (true, None) => unreachable!("TLS listeners are bound only with an acceptor"),
    };
    // Interactive protocol: small packets must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream.set_nonblocking(true) {
        warn!(%peer, "cannot make the socket non-blocking: {e}");
        return None;
    }
    let l = &core.cfg.listeners;
    // SAFETY: the fd belongs to `stream`, which outlives this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let sock = socket2::SockRef::from(&fd);
    if l.send_buffer_bytes > 0 {
        let _ = sock.set_send_buffer_size(l.send_buffer_bytes);
    }
    if l.recv_buffer_bytes > 0 {
        let _ = sock.set_recv_buffer_size(l.recv_buffer_bytes);
    }
    let (key, id) = core.register(peer, transport.index() as u8);
    core.visible().open_by_transport[transport.index()]
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    debug!(conn = %id, %peer, transport = transport.name(), "accepted");
    let ws = transport.websocket().then(Box::default);
    Some(Conn::task(
        core,
        Io::Tcp(stream),
        key,
        id,
        transport,
        tls,
        ws,
    ))
}

/// The MQTT connection of an HTTP fallback session: it reads the packets
/// its requests write into `pipe` (the CONNECT first) and writes into it
/// what they turn into events ([`super::fallback`]).
pub fn serve_pipe(core: Rc<Core>, pipe: &Pipe, peer: SocketAddr) -> ConnTask {
    let transport = Transport::Http;
    let (key, id) = core.register(peer, transport.index() as u8);
    pipe.key.set(Some(key));
    core.visible().open_by_transport[transport.index()]
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    debug!(conn = %id, %peer, sid = %pipe.sid, "HTTP session opening");
    Conn::task(core, Io::Pipe(pipe.id), key, id, transport, None, None)
}

impl Conn {
    /// The connection's id, for logs.
    fn id(&self) -> ConnId {
        ConnId {
            node: self.core.node.node_id,
            core: self.core.id as u16,
            seq: self.seq,
        }
    }

    /// A registered connection's state machine, before its first read.
    fn task(
        core: Rc<Core>,
        io: Io,
        key: ConnKey,
        id: ConnId,
        transport: Transport,
        tls: Option<Box<super::tls::TlsSession>>,
        ws: Option<Box<Ws>>,
    ) -> ConnTask {
        ConnTask {
            inner: Task::Mqtt(Conn {
                core,
                io,
                key,
                seq: id.seq,
                version: None,
                inbuf: Thin::new(),
                wbuf: Thin::new(),
                wpos: 0,
                closing: None,
                lingered: None,
                transport,
                tls,
                ws,
            }),
        }
    }

    /// The connection's whole life: its state machine, then (for a socket)
    /// the half-close and linger; `Ready` once it is over.
    fn poll_task(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.lingered.is_none() {
            if self.poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.ws.as_ref().is_some_and(|w| w.fallback) {
                // Not over: it becomes an exchange (see `ConnTask::poll`).
                return Poll::Ready(());
            }
            self.core.unregister(self.key);
            self.core.visible().open_by_transport[self.transport.index()]
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let stream = match &self.io {
                Io::Tcp(s) => s,
                Io::Pipe(id) => {
                    // No socket to close: the requests hear of the end.
                    if let Some(pipe) = super::fallback::release(*id) {
                        debug!(conn = %self.id(), sid = %pipe.sid, "HTTP session's connection closed");
                    }
                    return Poll::Ready(());
                }
            };
            // Half-close first so the peer reads our final frames before
            // the FIN. shutdown(2) on a socket does not block.
            // SAFETY: the fd belongs to `stream`, alive for this borrow.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
            let _ = socket2::SockRef::from(&fd).shutdown(Shutdown::Write);
            self.lingered = Some(0);
            self.closing = Some(Timer::new(LINGER_TIMEOUT));
        }
        if self.poll_linger(cx).is_pending() {
            return Poll::Pending;
        }
        debug!(conn = %self.id(), peer = %self.peer(), "closed");
        Poll::Ready(())
    }

    /// Reads what the socket (or pipe) has into `buf`.
    fn read_io(&mut self, buf: &mut [u8], cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Tcp(s) => read_now(s, buf),
            Io::Pipe(id) => match super::fallback::pipe(*id) {
                Some(p) => p.read(buf, cx.waker()).map(Ok),
                None => Poll::Ready(Ok(0)),
            },
        }
    }

    /// One poll: read and handle what the client sent (within
    /// [`READ_BUDGET`]), then write everything that produced, or the core
    /// queued, in one go. Reading first means the frames that acks release
    /// (a subscriber's next messages) leave in the same write as the rest:
    /// one `send` per poll, not one before the reads and one after.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let wakes = super::driver::wakes();
        for _ in 0..READ_BUDGET {
            let Some(status) = self.core.poll_link(self.key, cx.waker()) else {
                return Poll::Ready(());
            };
            // Before flushing: a close may discard what is queued.
            if let Some(req) = status.close {
                return self.poll_close(cx, req);
            }
            if status.parked || self.core.must_pause(cx.waker()) {
                // Waiting for a verdict, a handover or a permit, or for the
                // core's bounds: the core wakes us.
                return self.flush_then_wait(cx);
            }
            if self.core.outbox_full(self.key) {
                // A client that does not read stops being read: its acks
                // (and anything else) cannot pile up. Writable wakes us.
                match self.poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => {
                        debug!(conn = %self.id(), "write failed: {e}");
                        return Poll::Ready(());
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            match self.read_once(cx) {
                ReadStep::Handled => {}
                // Drained: write what the reads produced, unless they
                // delivered to other connections: those write first (the
                // messages), this one after them (its acknowledgements),
                // when the driver polls it again behind them. Mosquitto's
                // order too; the other way round, every delivery waited a
                // socket write (50 µs on loopback here) for its PUBACK.
                ReadStep::Drained if super::driver::wakes() != wakes => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                ReadStep::Drained => return self.flush_then_wait(cx),
                ReadStep::Over => return Poll::Ready(()),
            }
            match self.core.take_pace() {
                None => {}
                Some(Pace::Yield) => {
                    // Its last PUBLISH's copies wait on the core behind the
                    // connections it woke: they go first, then this one
                    // reads on (the driver polls it again after them).
                    cx.waker().wake_by_ref();
                    return self.flush_then_wait(cx);
                }
                Some(Pace::UntilResumed) => {
                    // Its copies went to a core that is behind: read on
                    // once it caught up.
                    self.core.park_reading(cx.waker());
                    return self.flush_then_wait(cx);
                }
            }
        }
        // One busy client cannot starve the others: it goes on after them.
        cx.waker().wake_by_ref();
        self.flush_then_wait(cx)
    }

    /// Handles one complete packet already buffered, or reads the socket
    /// once and handles what came.
    fn read_once(&mut self, cx: &mut Context<'_>) -> ReadStep {
        if self.version.is_some() && !self.inbuf.is_empty() && self.has_complete_packet() {
            self.ingest(&[]);
            return ReadStep::Handled;
        }
        let core = self.core.clone();
        let mut scratch = core.scratch.borrow_mut();
        match self.read_io(&mut scratch, cx) {
            Poll::Ready(Ok(0)) => {
                debug!(conn = %self.id(), "peer closed the connection");
                ReadStep::Over
            }
            Poll::Ready(Ok(n)) => {
                bump(&core.stats().bytes_in, n as u64);
                if self.tls.is_some() {
                    if self.tls_ingest(&mut scratch[..n]) == super::tls::Inbound::Closed {
                        debug!(conn = %self.id(), "peer closed the TLS session");
                        return ReadStep::Over;
                    }
                } else {
                    self.layer_ingest(&scratch[..n]);
                }
                if self.ws.as_ref().is_some_and(|w| w.fallback) {
                    return ReadStep::Over;
                }
                ReadStep::Handled
            }
            Poll::Ready(Err(e)) => {
                debug!(conn = %self.id(), "read failed: {e}");
                ReadStep::Over
            }
            Poll::Pending => ReadStep::Drained,
        }
    }

    /// Writes what is queued, then waits for whatever woke the poll to
    /// happen again (`Pending`), unless the write failed (`Ready`: over).
    fn flush_then_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.poll_flush(cx) {
            Poll::Ready(Err(e)) => {
                debug!(conn = %self.id(), "write failed: {e}");
                Poll::Ready(())
            }
            _ => Poll::Pending,
        }
    }

    fn has_complete_packet(&self) -> bool {
        let max = self.core.cfg.mqtt.max_packet_size as usize;
        // A decode error counts as "complete": processing it closes the connection.
        match codec::frame_len(&self.inbuf, max) {
            Ok(Some(n)) => n <= self.inbuf.len(),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Handles the bytes just read (plus any carried-over partial packet).
    fn ingest(&mut self, data: &[u8]) {
        self.core.touch(self.key);
        if self.inbuf.is_empty() {
            let used = self.process(data);
            self.inbuf.extend_from_slice(&data[used..]);
        } else {
            self.inbuf.extend_from_slice(data);
            let buf = std::mem::take(&mut self.inbuf);
            let used = self.process(&buf);
            self.inbuf = buf;
            self.inbuf.drain(..used);
        }
        self.inbuf.release();
    }

    /// Asks the connection to close after flushing what is queued.
    fn close_link(&self) {
        self.core.close_link(self.key);
    }

    /// Decodes and handles packets from `buf`; returns the bytes consumed.
    /// Stops early when the connection is closing or waits for an answer
    /// (the rest stays unparsed until then).
    fn process(&mut self, buf: &[u8]) -> usize {
        let max = self.core.cfg.mqtt.max_packet_size as usize;
        let mut used = 0;
        let core = self.core.clone();
        let settling = core.settling.get();
        loop {
            if self.version.is_some() {
                if let Some(pkid) = codec::plain_puback(&buf[used..]) {
                    if settling {
                        // The connection is closing: the ack counts, the
                        // flow does not.
                        let _ = input::handle(
                            &core,
                            Input::PubAck {
                                key: self.key,
                                pkid,
                            },
                        );
                        used += 4;
                        continue;
                    }
                    match input::handle(
                        &core,
                        Input::PubAck {
                            key: self.key,
                            pkid,
                        },
                    ) {
                        Ok(Flow::Continue) => used += 4,
                        Ok(Flow::Park | Flow::Yield | Flow::Wait) => return used + 4,
                        Ok(Flow::Retry) => return used,
                        Ok(Flow::Stop) => return buf.len(),
                        Err(v) => {
                            mqtt::reject(&core, self.key, self.version, v.code, v.why);
                            return buf.len();
                        }
                    }
                    continue;
                }
            }
            let (mut packet, n) = match decode(&buf[used..], self.version, max) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => return used,
                Err(e) => {
                    self.reject_decode(e);
                    return buf.len();
                }
            };
            if settling {
                if matches!(
                    packet,
                    Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_)
                ) {
                    let _ = input::handle(
                        &core,
                        Input::Packet {
                            key: self.key,
                            packet,
                        },
                    );
                }
                used += n;
                continue;
            }
            if let Packet::Connect(c) = &mut packet {
                self.version = Some(c.version);
                if let Some((cn, as_username)) = self.tls.as_ref().and_then(|t| t.certificate_cn())
                {
                    if let Some(link) = core.st.borrow_mut().link(self.key) {
                        link.rare().certificate_cn = Some(cn.as_str().into());
                    }
                    if as_username {
                        // The verified identity, not the claimed one.
                        c.username = Some(cn);
                    }
                }
            }
            match input::handle(
                &core,
                Input::Packet {
                    key: self.key,
                    packet,
                },
            ) {
                Ok(Flow::Continue) => used += n,
                Ok(Flow::Park) => return used + n,
                // Not taken: decoded again once the core has room.
                Ok(Flow::Retry) => return used,
                Ok(Flow::Yield) => {
                    core.pace_reading(Pace::Yield);
                    return used + n;
                }
                Ok(Flow::Wait) => {
                    core.pace_reading(Pace::UntilResumed);
                    return used + n;
                }
                Ok(Flow::Stop) => return buf.len(),
                Err(v) => {
                    mqtt::reject(&core, self.key, self.version, v.code, v.why);
                    return buf.len();
                }
            }
        }
    }

    fn reject_decode(&mut self, e: DecodeError) {
        if self.version.is_none() {
            if let DecodeError::UnsupportedVersion(_) = e {
                // [MQTT-3.1.2-2]: CONNACK 0x01 (3.1.1 form), then close.
                mqtt::reject_version(&self.core, self.key, &e.to_string());
                return;
            }
        }
        mqtt::reject(
            &self.core,
            self.key,
            self.version,
            e.reason_code(),
            &e.to_string(),
        );
    }

    fn fill_mqtt(&mut self) {
        self.core
            .write_frames(self.key, &mut self.wbuf, WRITE_CHUNK);
    }

    /// Hands the (empty) write buffer back to the core, unless the core
    /// has one already (then it is freed; one that grew past
    /// [`KEEP_WRITE_SCRATCH`] is freed either way).
    fn give_back_wbuf(&mut self) {
        let buf = std::mem::take(&mut self.wbuf);
        let mut shared = self.core.write_scratch.borrow_mut();
        if !shared.is_allocated() && buf.capacity() <= KEEP_WRITE_SCRATCH {
            *shared = buf;
        }
    }

    /// The client's address, for log lines (asked of the socket: rare, and
    /// the link keeps it for everything else).
    fn peer(&self) -> String {
        match &self.io {
            Io::Tcp(s) => s
                .peer_addr()
                .map_or_else(|_| "-".to_string(), |a| a.to_string()),
            Io::Pipe(id) => {
                super::fallback::pipe(*id).map_or_else(|| "-".into(), |p| p.peer.to_string())
            }
        }
    }

    /// Writes until the outbox is empty (Ready) or the socket is full (Pending).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let wpos = self.wpos as usize;
            if wpos == self.wbuf.len() {
                self.wpos = 0;
                if self.wbuf.is_allocated() {
                    self.wbuf.clear();
                } else {
                    self.wbuf = std::mem::take(&mut *self.core.write_scratch.borrow_mut());
                }
                self.fill_wbuf();
                if self.wbuf.is_empty() {
                    self.give_back_wbuf();
                    return Poll::Ready(Ok(()));
                }
            }
            let written = match &mut self.io {
                Io::Tcp(s) => write_now(s, &self.wbuf[self.wpos as usize..]),
                Io::Pipe(id) => match super::fallback::pipe(*id) {
                    Some(p) => p.write(&self.wbuf[self.wpos as usize..], cx.waker()),
                    None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
                },
            };
            match written {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.wpos += n as u32;
                    bump(&self.core.stats().bytes_out, n as u64);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
