//! `[auth.http]` against a real HTTP service started here on a free port
//! (its own threads, real sockets), with a call counter, a latency knob and
//! an outage switch: the cache and single flight keep a reconnect storm
//! from reaching it, the fail policy decides while it is down, and a slow
//! service delays only the CONNECTs waiting for it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tether::codec::{Packet, Version};

/// The business's auth service: admits `user` with password `pw-user`.
struct Service {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    latency_ms: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
}

impl Service {
    fn start() -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let latency_ms = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (c, l, d) = (calls.clone(), latency_ms.clone(), down.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (c, l, d) = (c.clone(), l.clone(), d.clone());
                std::thread::spawn(move || answer(stream, &c, &l, &d));
            }
        });
        Service {
            addr,
            calls,
            latency_ms,
            down,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/auth", self.addr)
    }
}

/// One request: counted, delayed, answered (or, while down, dropped).
fn answer(
    stream: std::net::TcpStream,
    calls: &AtomicUsize,
    latency: &AtomicU64,
    down: &AtomicBool,
) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(&stream);
    let mut len = 0;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    calls.fetch_add(1, SeqCst);
    if down.load(SeqCst) {
        return; // the connection closes unanswered
    }
    std::thread::sleep(Duration::from_millis(latency.load(SeqCst)));
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let user = req["username"].as_str().unwrap_or("");
    let allowed = !user.is_empty() && req["password"].as_str() == Some(&format!("pw-{user}"));
    let out = format!(
        r#"{{"result": "{}"}}"#,
        if allowed { "allow" } else { "deny" }
    );
    let _ = write!(
        &stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{out}",
        out.len()
    );
}

fn gateway_for(
    service: &Service,
    tweak: impl FnOnce(&mut tether::Config) + Send + 'static,
) -> tether::Gateway {
    let url = service.url();
    gateway(2, move |c| {
        c.auth.http.url = url;
        c.auth.ban_after_failures = 0;
        tweak(c);
    })
}

/// CONNECT as `user` with `password`; the CONNACK code.
fn connack(addr: SocketAddr, version: Version, id: &str, user: &str, password: &str) -> u8 {
    connack_or_closed(addr, version, id, user, password).expect("a CONNACK")
}

/// [`connack`], or `None` when the server closed without one (a newer
/// CONNECT of the same client id superseded this one while it waited).
fn connack_or_closed(
    addr: SocketAddr,
    version: Version,
    id: &str,
    user: &str,
    password: &str,
) -> Option<u8> {
    let mut r = Raw::open(addr);
    r.version = version;
    let mut c = connect_packet(id, version);
    c.username = Some(user.into());
    c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    r.send(&Packet::Connect(Box::new(c)));
    match r.recv() {
        Some(Packet::ConnAck(a)) => Some(a.code),
        None => None,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn metric(gw: &tether::Gateway, name: &str) -> f64 {
    common::web::http(gw.http_addr.unwrap(), "GET", "/metrics", &[], "")
        .body
        .lines()
        .filter(|l| l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn a_bad_password_storm_costs_the_service_almost_nothing() {
    let service = Service::start();
    let gw = gateway_for(&service, |_| {});
    for _ in 0..2000 {
        assert_eq!(
            connack(gw.tcp_addr, Version::V311, "dev", "ann", "guess"),
            4
        );
    }
    let calls = service.calls.load(SeqCst);
    assert!(
        calls <= 3,
        "{calls} calls for 2,000 CONNECTs with one bad password"
    );
    assert_eq!(connack(gw.tcp_addr, Version::V5, "dev", "ann", "pw-ann"), 0);
    for _ in 0..100 {
        assert_eq!(connack(gw.tcp_addr, Version::V5, "dev", "ann", "pw-ann"), 0);
    }
    assert_eq!(
        service.calls.load(SeqCst),
        calls + 1,
        "the right password: one call, then cached"
    );

    // Single flight: one device reconnecting 40 times at once with new
    // credentials while the service takes 300 ms makes one call. (Each
    // CONNECT supersedes the one before it, which may then close without
    // its CONNACK; none is refused.)
    service.latency_ms.store(300, SeqCst);
    let before = service.calls.load(SeqCst);
    let addr = gw.tcp_addr;
    let threads: Vec<_> = (0..40)
        .map(|_| {
            std::thread::spawn(move || {
                connack_or_closed(addr, Version::V5, "dev-c", "carl", "pw-carl")
            })
        })
        .collect();
    let codes: Vec<Option<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        codes.iter().all(|c| matches!(c, None | Some(0))),
        "{codes:?}"
    );
    assert!(codes.contains(&Some(0)));
    assert_eq!(service.calls.load(SeqCst), before + 1);
    assert!(metric(&gw, "tether_auth_http_joined_total") >= 1.0);
}

#[test]
fn while_the_service_is_down_the_fail_policy_decides() {
    let service = Service::start();
    let closed = gateway_for(&service, |c| c.auth.http.timeout_ms = 500);
    let open = gateway_for(&service, |c| {
        c.auth.http.timeout_ms = 500;
        c.auth.http.fail = tether::config::FailPolicy::Open;
    });
    assert_eq!(
        connack(closed.tcp_addr, Version::V5, "d", "ann", "pw-ann"),
        0,
        "cached from now"
    );
    service.down.store(true, SeqCst);
    assert_eq!(
        connack(closed.tcp_addr, Version::V5, "d", "bob", "pw-bob"),
        0x88,
        "closed: server unavailable"
    );
    assert_eq!(
        connack(closed.tcp_addr, Version::V311, "d", "bob", "pw-bob"),
        3,
        "3.1.1: server unavailable"
    );
    assert_eq!(
        connack(closed.tcp_addr, Version::V5, "d", "ann", "pw-ann"),
        0,
        "the cache carries on"
    );
    assert_eq!(
        connack(open.tcp_addr, Version::V5, "d", "eve", "anything"),
        0,
        "open: admitted"
    );
    // A slow service is a failure too.
    service.down.store(false, SeqCst);
    service.latency_ms.store(1500, SeqCst);
    assert_eq!(
        connack(closed.tcp_addr, Version::V5, "d", "dan", "pw-dan"),
        0x88,
        "past timeout_ms"
    );
    assert!(metric(&closed, "tether_auth_http_failures_total") >= 3.0);
    // Failures are not remembered: back up, the same client gets in.
    service.latency_ms.store(0, SeqCst);
    assert_eq!(
        connack(closed.tcp_addr, Version::V5, "d", "bob", "pw-bob"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_delays_only_the_connects_waiting_for_it() {
    let service = Service::start();
    let gw = gateway_for(&service, |c| c.auth.http.timeout_ms = 10_000);
    // ann's two devices are known (cached: the key includes the client id)
    // before the service slows down.
    for core in 0..2 {
        let id = format!("ann-{core}");
        assert_eq!(connack(gw.tcp_addr, Version::V5, &id, "ann", "pw-ann"), 0);
    }
    service.latency_ms.store(3000, SeqCst);
    let addr = gw.tcp_addr;
    let slow_done = Arc::new(AtomicBool::new(false));
    let flag = slow_done.clone();
    let slow = std::thread::spawn(move || {
        let code = connack(addr, Version::V5, "bob-1", "bob", "pw-bob");
        flag.store(true, SeqCst);
        code
    });
    // Meanwhile, on the same gateway: ann connects and gets her own QoS 1
    // message back, on every core, while bob's CONNECT still waits.
    for core in 0..2 {
        let mut o = v5_options(&gw, &format!("ann-{core}"));
        o.set_credentials("ann", "pw-ann");
        let mut ann = v5(&gw, o, Some(core)).await;
        ann.subscribe("user/ann", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await;
        ann.client
            .publish(
                "user/ann",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                "hi",
            )
            .await
            .unwrap();
        assert_eq!(&ann.publish().await.payload[..], b"hi");
    }
    assert!(!slow_done.load(SeqCst), "bob still waits for the service");
    assert_eq!(
        tokio::task::spawn_blocking(move || slow.join().unwrap())
            .await
            .unwrap(),
        0
    );
    // And the cores never stalled meanwhile: every tick of the timer wheel
    // ran within 100 ms of its time (the loop-lag histogram).
    let body = common::web::http(gw.http_addr.unwrap(), "GET", "/metrics", &[], "").body;
    let sample = |prefix: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let ticks = sample("tether_loop_lag_seconds_count");
    let on_time = body
        .lines()
        .filter(|l| l.starts_with("tether_loop_lag_seconds_bucket") && l.contains("le=\"0.1\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum::<f64>();
    assert!(ticks > 0.0, "ticks were measured");
    assert_eq!(on_time, ticks, "a tick more than 100 ms late");
}
