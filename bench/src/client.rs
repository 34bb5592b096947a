//! One simulated MQTT client: connect, subscribe, publish at its rate,
//! acknowledge, check every message it receives, and (in a storm) drop its
//! connection and come back to the same session.
//!
//! A client is a single task on its core's single-threaded runtime. Its
//! loop `select!`s between reading, its publish timer, its keep-alive
//! timer, its storm timer and phase changes, then writes whatever the step
//! queued in one `write_all`. Writes block reads only for the time the
//! kernel needs to take them; QoS 1/2 publishers are bounded by their
//! in-flight window, so the broker can never be blocked on us while we are
//! blocked on it.

use std::rc::Rc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::{Buf, BytesMut};
use tether_core::codec::{self, Connect, Packet, Properties, QoS, SubOptions, Subscribe, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::{sleep_until, timeout};

use crate::core_ctx::{CoreCtx, Phase};
use crate::payload::{self, Header, END_MARKER, HEADER_LEN};
use crate::scenario::{ClientSpec, Role};
use crate::tls::Stream;
use crate::track::{Tracker, Verdict};

/// Largest packet the harness accepts from a broker.
const MAX_PACKET: usize = 1 << 20;
/// Most publishes one wake-up of a publisher writes, so that one fast
/// publisher cannot starve its core's other clients.
const PUBLISH_BATCH: u64 = 64;
/// Read buffer reserve for clients that carry traffic; idle clients start
/// small so that 20,000 of them stay cheap.
const TRAFFIC_READ_RESERVE: usize = 16 * 1024;
const IDLE_READ_RESERVE: usize = 256;
/// Fixed header bytes of the acknowledgements the harness writes.
const PUBACK: u8 = 0x40;
const PUBREC: u8 = 0x50;
const PUBREL: u8 = 0x62;
const PUBCOMP: u8 = 0x70;
/// Pause before a client whose connection was lost tries again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(50);

/// Why a session ended.
enum End {
    /// The run is over; DISCONNECT was sent.
    Stop,
    /// The storm timer fired: the socket is dropped without DISCONNECT.
    Storm,
    /// The broker closed the connection or an I/O error happened.
    Lost(String),
}

/// Control packets the connect phase waits for.
enum Event {
    None,
    ConnAck { code: u8, session_present: bool },
    SubAck { codes: Vec<u8> },
    Disconnect(u8),
}

/// Everything a client keeps across reconnects.
struct Client {
    spec: ClientSpec,
    ctx: Rc<CoreCtx>,
    version: Version,
    qos: QoS,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// `--transport ws`: bytes read and not yet unframed, and the framed
    /// copy of `wbuf` being written.
    ws: Option<(BytesMut, Vec<u8>)>,
    /// Payload template: the header is rewritten per message.
    payload: Vec<u8>,
    tracker: Tracker,
    /// QoS 2 packet ids received and not yet released (dedupe resends).
    awaiting_rel: ahash::AHashSet<u16>,
    // Publisher state.
    seq: u32,
    next_pkid: u16,
    /// Unacknowledged publishes: packet id -> (sequence, original stamp).
    inflight: AHashMap<u16, (u32, u64)>,
    /// Packet ids of QoS 2 publishes that got PUBREC (PUBREL sent).
    released: ahash::AHashSet<u16>,
    started: Option<Instant>,
    end_sent: bool,
    done: bool,
    rng: u64,
}

pub async fn run(
    spec: ClientSpec,
    ctx: Rc<CoreCtx>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let size = ctx.plan.opts.size;
    let traffic = spec.role != Role::Idle;
    let mut c = Client {
        version: ctx.plan.version,
        qos: ctx.plan.qos,
        rbuf: BytesMut::with_capacity(if traffic {
            TRAFFIC_READ_RESERVE
        } else {
            IDLE_READ_RESERVE
        }),
        wbuf: Vec::new(),
        ws: ctx
            .plan
            .opts
            .transport
            .websocket()
            .then(|| (BytesMut::new(), Vec::new())),
        payload: vec![0xA5; size],
        tracker: Tracker::default(),
        awaiting_rel: Default::default(),
        seq: 0,
        next_pkid: 0,
        inflight: AHashMap::new(),
        released: Default::default(),
        started: None,
        end_sent: false,
        done: false,
        rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(spec.index).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1,
        spec,
        ctx,
    };
    let mut permit = permit;
    let mut first = true;
    loop {
        let t0 = Instant::now();
        if first {
            c.ctx.note_attempt();
        }
        match c.connect(first).await {
            Err(reason) => {
                if first {
                    c.ctx.fail(reason);
                    break;
                }
                c.ctx.error(reason);
                if c.ctx.phase() == Phase::Stop {
                    break;
                }
                tokio::time::sleep(RECONNECT_BACKOFF).await;
                continue;
            }
            Ok(mut stream) => {
                if first {
                    c.ctx.connected(t0.elapsed());
                    permit.take();
                    first = false;
                } else {
                    c.ctx.counters.reconnects.fetch_add(1, RELAXED);
                    c.ctx.counters.connected.fetch_add(1, RELAXED);
                }
                let end = c.session(&mut stream).await;
                c.ctx.counters.connected.fetch_sub(1, RELAXED);
                match end {
                    End::Stop => break,
                    End::Storm => {}
                    End::Lost(reason) => {
                        c.ctx.error(reason);
                        if c.ctx.phase() == Phase::Stop {
                            break;
                        }
                        tokio::time::sleep(RECONNECT_BACKOFF).await;
                    }
                }
            }
        }
    }
    if let Role::Publisher { .. } = c.spec.role {
        if !c.done {
            c.ctx.counters.pubs_done.fetch_add(1, RELAXED);
        }
        c.ctx
            .sent
            .borrow_mut()
            .insert(c.spec.index, u64::from(c.seq));
    }
    if let Role::Subscriber { .. } = c.spec.role {
        c.ctx.deposit(std::mem::take(&mut c.tracker));
    }
}

const RELAXED: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

impl Client {
    /// TCP connect, CONNECT/CONNACK and, for a subscriber without a stored
    /// session, SUBSCRIBE/SUBACK; a reconnecting publisher resends its
    /// unacknowledged messages.
    async fn connect(&mut self, first: bool) -> Result<Stream, String> {
        let limit = Duration::from_secs_f64(self.ctx.plan.opts.connect_timeout);
        let deadline = tokio::time::Instant::now() + limit;
        let addr = self.ctx.plan.addr;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = self.spec.source {
            bind_source(&socket, ip)?;
        }
        let tcp = match timeout(limit, socket.connect(addr)).await {
            Err(_) => return Err("tcp: connect timeout".into()),
            Ok(Err(e)) => return Err(format!("tcp: {}", io_reason(&e))),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let mut stream = match &self.ctx.plan.tls {
            None => Stream::Tcp(tcp),
            Some(tls) => {
                let handshake = tls.connector.connect(tls.name.clone(), tcp);
                match tokio::time::timeout_at(deadline, handshake).await {
                    Err(_) => return Err("tls: handshake timeout".into()),
                    Ok(Err(e)) => return Err(format!("tls: {e}")),
                    Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                }
            }
        };
        self.rbuf.clear();
        self.wbuf.clear();
        if let Some((raw, _)) = self.ws.as_mut() {
            raw.clear();
            let req = crate::wsframe::upgrade_request(
                &plan_host(&self.ctx),
                &self.ctx.plan.opts.ws_path,
                self.spec.index,
            );
            write_out(&mut stream, req.as_bytes()).await?;
            loop {
                let raw = &mut self.ws.as_mut().expect("ws").0;
                if let Some(n) = crate::wsframe::upgrade_response(raw)? {
                    raw.advance(n);
                    break;
                }
                raw.reserve(IDLE_READ_RESERVE);
                match tokio::time::timeout_at(deadline, stream.read_buf(raw)).await {
                    Err(_) => return Err("websocket upgrade timeout".into()),
                    Ok(Ok(0)) => return Err("closed by broker during the websocket upgrade".into()),
                    Ok(Err(e)) => return Err(format!("tcp: {}", io_reason(&e))),
                    Ok(Ok(_)) => {}
                }
            }
        }
        self.awaiting_rel.clear();
        let plan = &self.ctx.plan;
        let mut properties = Properties::default();
        if self.version.is_v5() && !plan.clean {
            properties.session_expiry_interval = Some(plan.opts.session_expiry);
        }
        let connect = Packet::Connect(Box::new(Connect {
            version: self.version,
            clean_start: plan.clean,
            keep_alive: plan.opts.keep_alive,
            client_id: self.spec.client_id.clone(),
            will: None,
            username: plan
                .opts
                .username
                .as_ref()
                .map(|u| u.replace("%i", &self.spec.index.to_string())),
            password: plan
                .opts
                .username
                .as_ref()
                .map(|_| bytes::Bytes::copy_from_slice(plan.opts.password.as_bytes())),
            properties,
        }));
        codec::encode(&connect, self.version, &mut self.wbuf);
        let session_present = loop {
            self.flush(&mut stream).await?;
            match self.await_event(&mut stream, deadline).await? {
                Event::ConnAck {
                    code: 0,
                    session_present,
                } => break session_present,
                Event::ConnAck { code, .. } => return Err(format!("CONNACK 0x{code:02x}")),
                Event::Disconnect(code) => {
                    return Err(format!("DISCONNECT 0x{code:02x} before CONNACK"))
                }
                _ => {}
            }
        };
        if let Role::Subscriber { filter } = &self.spec.role {
            if first || !session_present {
                let sub = Packet::Subscribe(Subscribe {
                    pkid: 1,
                    filters: vec![(filter.clone(), SubOptions::qos(self.qos))],
                    properties: Properties::default(),
                });
                codec::encode(&sub, self.version, &mut self.wbuf);
                loop {
                    self.flush(&mut stream).await?;
                    match self.await_event(&mut stream, deadline).await? {
                        Event::SubAck { codes } => match codes.first() {
                            Some(&c) if c < 0x80 => break,
                            other => return Err(format!("SUBACK refused {other:02x?}")),
                        },
                        Event::Disconnect(code) => {
                            return Err(format!("DISCONNECT 0x{code:02x} before SUBACK"))
                        }
                        _ => {}
                    }
                }
            }
        }
        if !first {
            self.resend_inflight();
            self.flush(&mut stream).await?;
        }
        Ok(stream)
    }

    /// Reads and handles packets until one is a connect-phase event.
    async fn await_event(
        &mut self,
        stream: &mut Stream,
        deadline: tokio::time::Instant,
    ) -> Result<Event, String> {
        loop {
            let ev = self.drain_frames()?;
            if !matches!(ev, Event::None) {
                return Ok(ev);
            }
            self.read_target().reserve(IDLE_READ_RESERVE);
            match tokio::time::timeout_at(deadline, stream.read_buf(self.read_target())).await {
                Err(_) => return Err("handshake timeout".into()),
                Ok(Ok(0)) => return Err("closed by broker during handshake".into()),
                Ok(Err(e)) => return Err(format!("tcp: {}", io_reason(&e))),
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn flush(&mut self, stream: &mut Stream) -> Result<(), String> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let out = match self.ws.as_mut() {
            Some((_, framed)) => {
                framed.clear();
                let mask = (self.rng as u32).to_be_bytes();
                crate::wsframe::frame(&self.wbuf, mask, framed);
                &framed[..]
            }
            None => &self.wbuf[..],
        };
        write_out(stream, out).await?;
        self.wbuf.clear();
        Ok(())
    }

    /// Where reads go: the MQTT buffer, or the WebSocket frame buffer.
    fn read_target(&mut self) -> &mut BytesMut {
        match self.ws.as_mut() {
            Some((raw, _)) => raw,
            None => &mut self.rbuf,
        }
    }

    /// The connected life of the client, until the run stops, the storm
    /// takes the connection, or the broker drops it.
    async fn session(&mut self, stream: &mut Stream) -> End {
        let mut phase_rx = self.ctx.phase_rx.clone();
        let keep_alive = Duration::from_secs(u64::from(self.ctx.plan.opts.keep_alive));
        // Ping well before the broker's 1.5x keep-alive deadline.
        let ping_every = keep_alive.mul_f64(0.75);
        let mut last_write = Instant::now();
        let storm = self.ctx.plan.storm();
        let mut storm_at = self.next_storm();
        let is_pub = matches!(self.spec.role, Role::Publisher { .. });
        let rate = self.ctx.plan.opts.rate;
        let reserve = if self.spec.role == Role::Idle {
            IDLE_READ_RESERVE
        } else {
            TRAFFIC_READ_RESERVE
        };
        loop {
            let phase = *phase_rx.borrow_and_update();
            if phase == Phase::Stop {
                self.wbuf.extend_from_slice(&[0xE0, 0x00]);
                let _ = self.flush(stream).await;
                return End::Stop;
            }
            if is_pub {
                self.publisher_step(phase);
            }
            let can_send = is_pub && phase == Phase::Running && self.window_open();
            let next_send = self.next_send_at();
            if !self.wbuf.is_empty() {
                if let Err(e) = self.flush(stream).await {
                    return End::Lost(e);
                }
                last_write = Instant::now();
                continue;
            }
            let target = self.read_target();
            if target.capacity() - target.len() < reserve / 4 {
                target.reserve(reserve);
            }
            tokio::select! {
                biased;
                r = stream.read_buf(self.read_target()) => match r {
                    Ok(0) => return End::Lost("closed by broker".into()),
                    Err(e) => return End::Lost(format!("tcp: {}", io_reason(&e))),
                    Ok(_) => match self.drain_frames() {
                        Ok(Event::Disconnect(code)) => return End::Lost(format!("DISCONNECT 0x{code:02x}")),
                        Ok(_) => {}
                        Err(e) => return End::Lost(e),
                    },
                },
                _ = phase_rx.changed() => {}
                _ = std::future::ready(()), if can_send && rate == 0.0 => self.publish_due(),
                _ = sleep_until(next_send.into()), if can_send && rate > 0.0 => self.publish_due(),
                _ = sleep_until((last_write + ping_every).into()), if !keep_alive.is_zero() => {
                    self.wbuf.extend_from_slice(&[0xC0, 0x00]);
                }
                _ = sleep_until(storm_at.into()), if storm => {
                    if phase == Phase::Running {
                        return End::Storm;
                    }
                    storm_at = self.next_storm();
                }
            }
        }
    }

    /// Starts the publisher's clock at go, and queues its end marker once
    /// the run drains.
    fn publisher_step(&mut self, phase: Phase) {
        if phase == Phase::Running && self.started.is_none() {
            // Spread publishers over one period so they do not all fire on
            // the same millisecond (golden-ratio offsets).
            let rate = self.ctx.plan.opts.rate;
            let offset = if rate > 0.0 {
                let frac = (f64::from(self.spec.index) * 0.618_033_988_75).fract();
                Duration::from_secs_f64(frac / rate)
            } else {
                Duration::ZERO
            };
            self.started = Some(Instant::now() + offset);
        }
        if phase == Phase::Draining && !self.end_sent && self.window_open() {
            self.end_sent = true;
            let stamp = u64::from(self.seq);
            self.send_publish(END_MARKER, stamp);
        }
        if self.end_sent && !self.done && self.inflight.is_empty() {
            self.done = true;
            self.ctx.counters.pubs_done.fetch_add(1, RELAXED);
        }
    }

    /// Room for another publish: always at QoS 0, else below `--inflight`
    /// unacknowledged ones.
    fn window_open(&self) -> bool {
        self.qos == QoS::AtMostOnce
            || self.inflight.len() < usize::from(self.ctx.plan.opts.inflight)
    }

    fn next_send_at(&self) -> Instant {
        match self.started {
            Some(t) if self.ctx.plan.opts.rate > 0.0 => {
                t + Duration::from_secs_f64(f64::from(self.seq) / self.ctx.plan.opts.rate)
            }
            _ => Instant::now(),
        }
    }

    /// Publishes every message that is due (by rate) and fits the window,
    /// at most [`PUBLISH_BATCH`] at once.
    fn publish_due(&mut self) {
        let now = Instant::now();
        let opts = &self.ctx.plan.opts;
        let due = match self.started {
            Some(t) if opts.rate > 0.0 => {
                let elapsed = now.saturating_duration_since(t).as_secs_f64();
                (elapsed * opts.rate) as u64 + 1
            }
            _ => u64::MAX,
        };
        let mut n = 0;
        while u64::from(self.seq) < due
            && n < PUBLISH_BATCH
            && self.window_open()
            && self.seq < END_MARKER - 1
        {
            let seq = self.seq;
            self.seq += 1;
            self.send_publish(seq, payload::now_ns());
            n += 1;
        }
        self.ctx.counters.published.fetch_add(n, RELAXED);
    }

    /// Queues a new publish of `seq` (allocating a packet id at QoS 1/2).
    fn send_publish(&mut self, seq: u32, stamp: u64) {
        let pkid = if self.qos == QoS::AtMostOnce {
            0
        } else {
            let pkid = loop {
                self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
                if !self.inflight.contains_key(&self.next_pkid) {
                    break self.next_pkid;
                }
            };
            self.inflight.insert(pkid, (seq, stamp));
            pkid
        };
        self.write_publish(pkid, seq, stamp, false);
    }

    /// Encodes one PUBLISH of this publisher's message `seq` into the
    /// write buffer.
    fn write_publish(&mut self, pkid: u16, seq: u32, stamp: u64, dup: bool) {
        let Role::Publisher { topic } = &self.spec.role else {
            return;
        };
        let header = Header {
            publisher: self.spec.index,
            seq,
            stamp,
        };
        payload::write(&mut self.payload[..HEADER_LEN], header);
        codec::encode_publish(
            &mut self.wbuf,
            topic,
            &self.payload,
            self.qos,
            pkid,
            dup,
            false,
            None,
            self.version,
        );
    }

    /// Queues a PUBACK, PUBREC, PUBREL or PUBCOMP (`first` is its fixed
    /// header byte) without properties: reason code 0 is implied.
    fn queue_ack(&mut self, first: u8, pkid: u16) {
        self.wbuf.extend_from_slice(&[first, 0x02]);
        self.wbuf.extend_from_slice(&pkid.to_be_bytes());
    }

    /// After a reconnect: resend every unacknowledged publish with DUP (or
    /// PUBREL where PUBREC already came), in packet-id order of sending.
    fn resend_inflight(&mut self) {
        let mut pending: Vec<(u16, u32, u64)> = self
            .inflight
            .iter()
            .map(|(p, (s, t))| (*p, *s, *t))
            .collect();
        pending.sort_by_key(|&(_, seq, _)| seq);
        for (pkid, seq, stamp) in pending {
            if self.released.contains(&pkid) {
                self.queue_ack(PUBREL, pkid);
            } else {
                self.write_publish(pkid, seq, stamp, true);
            }
        }
    }

    fn next_storm(&mut self) -> Instant {
        // Exponential inter-drop time with mean 100/pct seconds, so on
        // average pct % of the clients drop each second.
        let pct = self.ctx.plan.opts.storm_pct.max(0.001);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let u = ((self.rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        Instant::now() + Duration::from_secs_f64(-u.ln() * 100.0 / pct)
    }

    /// Handles every complete packet in the read buffer; returns the last
    /// connect-phase event seen.
    fn drain_frames(&mut self) -> Result<Event, String> {
        if let Some((raw, _)) = self.ws.as_mut() {
            crate::wsframe::unframe(raw, &mut self.rbuf)?;
        }
        let mut event = Event::None;
        let mut used = 0;
        loop {
            let buf = &self.rbuf[used..];
            let n = match codec::frame_len(buf, MAX_PACKET) {
                Ok(Some(n)) if n <= buf.len() => n,
                Ok(_) => break,
                Err(e) => return Err(format!("malformed packet from broker: {e:?}")),
            };
            let ev = self.handle(used, n)?;
            used += n;
            if !matches!(ev, Event::None) {
                event = ev;
            }
        }
        self.rbuf.advance(used);
        Ok(event)
    }

    fn handle(&mut self, at: usize, len: usize) -> Result<Event, String> {
        let first = self.rbuf[at];
        if first >> 4 == 3 {
            return self.handle_publish(at, len).map(|()| Event::None);
        }
        let frame = &self.rbuf[at..at + len];
        let packet = match codec::decode(frame, Some(self.version), MAX_PACKET) {
            Ok(Some((p, _))) => p,
            Ok(None) => return Err("truncated packet from broker".into()),
            Err(e) => return Err(format!("malformed packet from broker: {e:?}")),
        };
        Ok(match packet {
            Packet::ConnAck(a) => Event::ConnAck {
                code: a.code,
                session_present: a.session_present,
            },
            Packet::SubAck(a) => Event::SubAck { codes: a.codes },
            Packet::PubAck(a) | Packet::PubComp(a) => {
                if let Some((seq, stamp)) = self.inflight.remove(&a.pkid) {
                    self.released.remove(&a.pkid);
                    if seq == END_MARKER {
                        // Not a benchmark message: not counted as acked.
                    } else if a.code < 0x80 {
                        self.ctx.counters.acked.fetch_add(1, RELAXED);
                        let us = crate::payload::now_ns().saturating_sub(stamp) / 1000;
                        self.ctx.record_ack_latency(us);
                    } else {
                        self.ctx.error(format!("publish refused 0x{:02x}", a.code));
                    }
                }
                Event::None
            }
            Packet::PubRec(a) => {
                if a.code < 0x80 {
                    self.released.insert(a.pkid);
                    self.queue_ack(PUBREL, a.pkid);
                } else if self.inflight.remove(&a.pkid).is_some() {
                    self.ctx.error(format!("publish refused 0x{:02x}", a.code));
                }
                Event::None
            }
            Packet::PubRel(a) => {
                self.awaiting_rel.remove(&a.pkid);
                self.queue_ack(PUBCOMP, a.pkid);
                Event::None
            }
            Packet::Disconnect(d) => Event::Disconnect(d.code),
            _ => Event::None,
        })
    }

    /// The hot path: parses a PUBLISH in place (no allocation), checks and
    /// times it, and queues its acknowledgement.
    fn handle_publish(&mut self, at: usize, len: usize) -> Result<(), String> {
        let frame = &self.rbuf[at..at + len];
        let qos = (frame[0] >> 1) & 3;
        let mut i = 1;
        while frame[i] & 0x80 != 0 {
            i += 1;
        }
        i += 1;
        let bad = || "malformed PUBLISH from broker".to_string();
        let topic_len = usize::from(u16::from_be_bytes([
            *frame.get(i).ok_or_else(bad)?,
            *frame.get(i + 1).ok_or_else(bad)?,
        ]));
        i += 2 + topic_len;
        let mut pkid = 0u16;
        if qos > 0 {
            pkid = u16::from_be_bytes([
                *frame.get(i).ok_or_else(bad)?,
                *frame.get(i + 1).ok_or_else(bad)?,
            ]);
            i += 2;
        }
        if self.version.is_v5() {
            let (props_len, n) = read_varint(frame.get(i..).ok_or_else(bad)?).ok_or_else(bad)?;
            i += n + props_len;
        }
        let body = frame.get(i..).ok_or_else(bad)?;
        let header = payload::read(body);
        let fresh = qos < 2 || self.awaiting_rel.insert(pkid);
        if fresh {
            match header {
                None => self.tracker.foreign += 1,
                Some(h) if h.is_end_marker() => self.tracker.announce(h.publisher, h.stamp),
                Some(h) => {
                    self.ctx.counters.received.fetch_add(1, RELAXED);
                    if self.tracker.record(h.publisher, h.seq) != Verdict::Duplicate {
                        let now = payload::now_ns();
                        self.ctx.record_latency(now.saturating_sub(h.stamp) / 1000);
                    }
                }
            }
        }
        match qos {
            1 => self.queue_ack(PUBACK, pkid),
            2 => self.queue_ack(PUBREC, pkid),
            _ => {}
        }
        Ok(())
    }
}

fn read_varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0usize;
    for (i, byte) in b.iter().take(4).enumerate() {
        v |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Binds the socket to a local source address without reserving a port at
/// bind time (IP_BIND_ADDRESS_NO_PORT), so each source address gives the
/// whole ephemeral range per broker address.
fn bind_source(socket: &TcpSocket, ip: std::net::IpAddr) -> Result<(), String> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` (a live c_int) for the given length;
    // the fd is owned by `socket` for the duration of the call.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket
        .bind(std::net::SocketAddr::new(ip, 0))
        .map_err(|e| format!("bind {ip}: {}", io_reason(&e)))
}

/// Writes all of `data`. The flush matters for TLS: the TLS stream may keep
/// records it could not write at once until it is flushed (for TCP it is a
/// no-op).
async fn write_out(stream: &mut Stream, data: &[u8]) -> Result<(), String> {
    stream
        .write_all(data)
        .await
        .map_err(|e| format!("tcp: {}", io_reason(&e)))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("tcp: {}", io_reason(&e)))
}

/// The `Host` of a WebSocket upgrade.
fn plan_host(ctx: &CoreCtx) -> String {
    format!("{}:{}", ctx.plan.opts.host, ctx.plan.opts.port)
}

/// A short, stable failure reason for the failure tables.
fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connection refused".into(),
        Some(libc::ECONNRESET) => "connection reset".into(),
        Some(libc::ETIMEDOUT) => "timed out".into(),
        Some(libc::EADDRNOTAVAIL) => "no free local port (add --source-ips)".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "too many open files (raise ulimit -n or use --procs)".into()
        }
        Some(libc::EPIPE) => "broken pipe".into(),
        _ => e.kind().to_string(),
    }
}
