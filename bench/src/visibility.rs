//! `tether-bench visibility`: how soon a SUBSCRIBE takes effect for a
//! publisher on another core of the same node.
//!
//! Client B subscribes to a fresh topic and, without waiting for its
//! SUBACK, client A publishes to that topic `gap` microseconds after B's
//! SUBSCRIBE left B's socket; does B get the message? With A and B on
//! different cores, B's core must have read and applied the SUBSCRIBE
//! (setting its interest bit, which A's core reads) before A's core routes
//! the PUBLISH. So the miss rate at a gap measures how long a core takes to
//! notice its socket; the SUBACK's round trip bounds it from above (the
//! subscription is in place before its SUBACK is written).
//!
//! A and B are placed on different cores by asking the gateway's HTTP API
//! (`GET /v1/clients/{id}` reports the core) and reconnecting until they
//! differ. The clients are plain blocking sockets speaking the few MQTT
//! 3.1.1 packets needed, so no client library's scheduling sits between
//! the write and the clock.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;

/// `tether-bench visibility`.
#[derive(Args, Debug, Clone)]
pub struct VisibilityOpts {
    /// Broker host.
    #[arg(short = 'H', long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker MQTT port.
    #[arg(short, long, default_value_t = 1883)]
    pub port: u16,
    /// The gateway's HTTP API (host:port), to place the clients on
    /// different cores; without it they go wherever the kernel puts them.
    #[arg(long)]
    pub api: Option<String>,
    /// Bearer token for the API, if it needs one.
    #[arg(long)]
    pub token: Option<String>,
    /// Gaps between B's SUBSCRIBE and A's PUBLISH, microseconds.
    #[arg(long, value_delimiter = ',', default_value = "0,25,50,100,200")]
    pub gaps: Vec<u64>,
    /// Trials per gap.
    #[arg(long, default_value_t = 1000)]
    pub trials: u32,
    /// How long B waits for each message before counting it missed, ms.
    #[arg(long, default_value_t = 200)]
    pub wait_ms: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Attempts at getting A and B onto different cores.
const PLACEMENT_ATTEMPTS: u32 = 50;
/// Socket timeout for the setup exchanges (CONNECT, the API).
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// One MQTT 3.1.1 client on a blocking socket.
struct Client {
    id: String,
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: &str, id: &str) -> io::Result<Client> {
        let mut sock = TcpStream::connect(addr)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(SETUP_TIMEOUT))?;
        let mut body = Vec::new();
        put_str(&mut body, "MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 60]);
        put_str(&mut body, id);
        sock.write_all(&frame(0x10, &body))?;
        let mut c = Client {
            id: id.to_string(),
            sock,
            buf: Vec::new(),
        };
        match c.next(Instant::now() + SETUP_TIMEOUT)? {
            Some((0x20, body)) if body.len() >= 2 && body[1] == 0 => Ok(c),
            other => Err(io::Error::other(format!("CONNACK expected, got {other:?}"))),
        }
    }

    fn subscribe(&mut self, pkid: u16, topic: &str) -> io::Result<()> {
        let mut body = pkid.to_be_bytes().to_vec();
        put_str(&mut body, topic);
        body.push(1);
        self.sock.write_all(&frame(0x82, &body))
    }

    fn publish(&mut self, pkid: u16, topic: &str) -> io::Result<()> {
        let mut body = Vec::new();
        put_str(&mut body, topic);
        body.extend_from_slice(&pkid.to_be_bytes());
        body.extend_from_slice(b"visibility");
        self.sock.write_all(&frame(0x32, &body))
    }

    /// The next packet (type byte, body) before `deadline`; `None` at the
    /// deadline. A QoS 1 PUBLISH is acknowledged.
    fn next(&mut self, deadline: Instant) -> io::Result<Option<(u8, Vec<u8>)>> {
        loop {
            if let Some((kind, body, n)) = parse(&self.buf) {
                self.buf.drain(..n);
                if kind & 0xF0 == 0x30 && kind & 0x06 == 0x02 {
                    let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let pkid = [body[2 + tlen], body[3 + tlen]];
                    self.sock.write_all(&[0x40, 2, pkid[0], pkid[1]])?;
                }
                return Ok(Some((kind, body)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.sock.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 4096];
            match self.sock.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// (first byte, body, total length) of a complete packet at the front.
fn parse(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    loop {
        let b = *buf.get(i)?;
        len |= usize::from(b & 0x7F) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let end = i + len;
    (buf.len() >= end).then(|| (buf[0], buf[i..end].to_vec(), end))
}

/// The core the gateway's API says `client` is on.
fn core_of(api: &str, token: Option<&str>, client: &str) -> io::Result<u64> {
    let mut s = TcpStream::connect(api)?;
    s.set_read_timeout(Some(SETUP_TIMEOUT))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET /v1/clients/{client} HTTP/1.1\r\nHost: {api}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| io::Error::other(format!("API answer for {client}: {e}: {body}")))?;
    // The session's connection (online) carries the core.
    v.pointer("/connection/core")
        .or_else(|| v.get("core"))
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| io::Error::other(format!("no core in the API's answer: {body}")))
}

/// The publisher A, the subscriber B, and their cores when known.
struct Placed {
    a: Client,
    b: Client,
    cores: Option<(u64, u64)>,
}

/// Connects A and B, on different cores when an API is given.
fn place(o: &VisibilityOpts, addr: &str) -> io::Result<Placed> {
    let run = std::process::id();
    for attempt in 0..PLACEMENT_ATTEMPTS {
        let a = Client::connect(addr, &format!("vis-pub-{run}-{attempt}"))?;
        let b = Client::connect(addr, &format!("vis-sub-{run}-{attempt}"))?;
        let Some(api) = &o.api else {
            return Ok(Placed { a, b, cores: None });
        };
        let (ca, cb) = (
            core_of(api, o.token.as_deref(), &a.id)?,
            core_of(api, o.token.as_deref(), &b.id)?,
        );
        if ca != cb {
            return Ok(Placed {
                a,
                b,
                cores: Some((ca, cb)),
            });
        }
    }
    Err(io::Error::other(format!(
        "publisher and subscriber shared a core in {PLACEMENT_ATTEMPTS} attempts: does the node run more than one core?"
    )))
}

/// One gap's results.
#[derive(serde::Serialize)]
struct GapResult {
    gap_us: u64,
    trials: u32,
    delivered: u32,
    /// SUBACK round trips, µs: p50, p99, p99.9, max.
    suback_us: [u64; 4],
}

/// Runs the probe; prints a table (and writes JSON if asked).
pub fn run(o: VisibilityOpts) -> std::process::ExitCode {
    match probe(&o) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-bench visibility: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

fn probe(o: &VisibilityOpts) -> io::Result<()> {
    let addr = format!("{}:{}", o.host, o.port);
    let Placed {
        mut a,
        mut b,
        cores,
    } = place(o, &addr)?;
    match cores {
        Some((ca, cb)) => eprintln!("publisher on core {ca}, subscriber on core {cb}"),
        None => eprintln!("no --api: the clients' cores are unknown"),
    }
    let wait = Duration::from_millis(o.wait_ms);
    let mut results = Vec::new();
    let mut pkid: u16 = 0;
    for &gap in &o.gaps {
        let mut suback = Histogram::<u64>::new(3).expect("valid sigfig");
        let mut delivered = 0;
        for trial in 0..o.trials {
            pkid = pkid.wrapping_add(1).max(1);
            let topic = format!("vis/{}/{gap}/{trial}", std::process::id());
            b.subscribe(pkid, &topic)?;
            let sent = Instant::now();
            let at = sent + Duration::from_micros(gap);
            while Instant::now() < at {
                std::hint::spin_loop();
            }
            a.publish(pkid, &topic)?;
            // B: the SUBACK, then (or not) the message.
            let deadline = Instant::now() + wait;
            let (mut got_suback, mut got_msg) = (false, false);
            while !(got_suback && got_msg) {
                match b.next(deadline)? {
                    Some((0x90, _)) => {
                        got_suback = true;
                        let _ = suback.record(sent.elapsed().as_micros() as u64);
                    }
                    Some((k, body)) if k & 0xF0 == 0x30 => {
                        let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
                        got_msg |= body[2..2 + tlen] == *topic.as_bytes();
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            delivered += u32::from(got_msg);
            // A: its PUBACK, so nothing is left in flight.
            let deadline = Instant::now() + wait;
            while let Some((k, _)) = a.next(deadline)? {
                if k == 0x40 {
                    break;
                }
            }
        }
        let q = |p: f64| suback.value_at_quantile(p);
        let r = GapResult {
            gap_us: gap,
            trials: o.trials,
            delivered,
            suback_us: [q(0.5), q(0.99), q(0.999), suback.max()],
        };
        eprintln!(
            "gap {:>4} µs: {:>5} of {} delivered; SUBACK round trip p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            r.gap_us, r.delivered, r.trials, r.suback_us[0], r.suback_us[1], r.suback_us[2], r.suback_us[3]
        );
        results.push(r);
    }
    if let Some(path) = &o.json {
        let json = serde_json::to_string_pretty(&results).expect("serialisable");
        std::fs::write(path, json)?;
    }
    Ok(())
}
