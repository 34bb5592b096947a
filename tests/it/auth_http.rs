//! `[auth.http]` against a real HTTP service started here on a free port
//! (its own threads, real sockets), with a call counter, a latency knob and
//! an outage switch: the cache and single flight keep a reconnect storm
//! from reaching it, the fail policy decides while it is down, and a slow
//! service delays only the CONNECTs waiting for it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::web::metric;
use crate::common::*;
use bytes::Bytes;
use tether::codec::{Packet, Version};

/// The business's auth service. At `/auth` it admits `user` with password
/// `pw-user` (with the extra answer fields set in `grants` for that user),
/// and `bin` with the binary password [`BINARY_PASSWORD`] (which is not
/// UTF-8), and answers `ignore` for users named `local-*`; at `/acl` it
/// allows topics under `acl/{username}/`.
struct Service {
    addr: SocketAddr,
    knobs: Knobs,
}

/// The password of user `bin`: not UTF-8, base64 `/wCA`.
const BINARY_PASSWORD: &[u8] = &[0xff, 0x00, 0x80];

/// What the test turns and reads, shared with the service's threads.
#[derive(Clone, Default)]
struct Knobs {
    /// Calls to `/auth`.
    calls: Arc<AtomicUsize>,
    /// Calls to `/acl`.
    acl_calls: Arc<AtomicUsize>,
    latency_ms: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    /// Extra fields of an allow, by user.
    grants: Arc<Mutex<HashMap<String, serde_json::Value>>>,
    /// The last `/auth` request body.
    last: Arc<Mutex<Option<serde_json::Value>>>,
}

impl std::ops::Deref for Service {
    type Target = Knobs;

    fn deref(&self) -> &Knobs {
        &self.knobs
    }
}

impl Service {
    fn start() -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let knobs = Knobs::default();
        let k = knobs.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let k = k.clone();
                std::thread::spawn(move || answer(stream, &k));
            }
        });
        Service { addr, knobs }
    }

    fn url(&self) -> String {
        format!("http://{}/auth", self.addr)
    }

    fn acl_url(&self) -> String {
        format!("http://{}/acl", self.addr)
    }
}

/// One request: counted, delayed, answered (or, while down, dropped).
fn answer(stream: std::net::TcpStream, k: &Knobs) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(&stream);
    let mut len = 0;
    let mut request_line = String::new();
    if r.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
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
    let acl = request_line.starts_with("POST /acl ");
    if acl { &k.acl_calls } else { &k.calls }.fetch_add(1, SeqCst);
    if k.down.load(SeqCst) {
        return; // the connection closes unanswered
    }
    std::thread::sleep(Duration::from_millis(k.latency_ms.load(SeqCst)));
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let user = req["username"].as_str().unwrap_or("").to_string();
    let out = if acl {
        let topic = req["topic"].as_str().unwrap_or("");
        let allowed = !user.is_empty() && topic.starts_with(&format!("acl/{user}/"));
        serde_json::json!({"result": if allowed { "allow" } else { "deny" }})
    } else {
        *k.last.lock().unwrap() = Some(req.clone());
        let allowed = if user == "bin" {
            req["password_base64"].as_str() == Some("/wCA")
        } else {
            !user.is_empty() && req["password"].as_str() == Some(&format!("pw-{user}"))
        };
        let mut out = serde_json::json!({"result": if allowed { "allow" } else { "deny" }});
        if user.starts_with("local-") {
            out["result"] = "ignore".into();
        } else if let (true, Some(extra)) = (allowed, k.grants.lock().unwrap().get(&user)) {
            for (key, v) in extra.as_object().unwrap() {
                out[key] = v.clone();
            }
        }
        out
    };
    let out = out.to_string();
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
    connack_or_closed(addr, version, id, user, password.as_bytes()).expect("a CONNACK")
}

/// [`connack`], or `None` when the server closed without one (a newer
/// CONNECT of the same client id superseded this one while it waited).
fn connack_or_closed(
    addr: SocketAddr,
    version: Version,
    id: &str,
    user: &str,
    password: &[u8],
) -> Option<u8> {
    let mut r = Raw::open(addr);
    r.version = version;
    let mut c = connect_packet(id, version);
    c.username = Some(user.into());
    c.password = Some(Bytes::copy_from_slice(password));
    r.send(&Packet::Connect(Box::new(c)));
    match r.recv() {
        Some(Packet::ConnAck(a)) => Some(a.code),
        None => None,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn a_bad_password_storm_costs_the_service_almost_nothing() {
    let service = Service::start();
    let gw = gateway_for(&service, |_| {});
    for _ in 0..10_000 {
        assert_eq!(
            connack(gw.tcp_addr, Version::V311, "dev", "ann", "guess"),
            4
        );
    }
    let calls = service.calls.load(SeqCst);
    assert!(
        calls <= 3,
        "{calls} calls for 10,000 CONNECTs with one bad password"
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
                connack_or_closed(addr, Version::V5, "dev-c", "carl", b"pw-carl")
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

/// A password that is not UTF-8 reaches the service byte-exact, as
/// `password_base64` (with `password` null): the right bytes are admitted,
/// bytes that differ where a lossy conversion would blur them are not.
#[test]
fn a_binary_password_reaches_the_service_byte_exact() {
    let service = Service::start();
    let gw = gateway_for(&service, |_| {});
    let addr = gw.tcp_addr;
    let code = |pw: &[u8]| connack_or_closed(addr, Version::V5, "dev-b", "bin", pw).unwrap();
    assert_eq!(code(BINARY_PASSWORD), 0, "the right bytes");
    let last = service.last.lock().unwrap().clone().unwrap();
    assert_eq!(last["password"], serde_json::Value::Null);
    assert_eq!(last["password_base64"], "/wCA");
    // 0xfe instead of 0xff: as lossy UTF-8 both read U+FFFD.
    assert_eq!(code(&[0xfe, 0x00, 0x80]), 0x86, "other bytes are refused");
    assert_eq!(
        service.last.lock().unwrap().as_ref().unwrap()["password_base64"],
        "/gCA"
    );
    // A UTF-8 password still goes as text, without the base64 field.
    assert_eq!(connack(addr, Version::V5, "dev-a", "ann", "pw-ann"), 0);
    let last = service.last.lock().unwrap().clone().unwrap();
    assert_eq!(last["password"], "pw-ann");
    assert!(last.get("password_base64").is_none());
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
    let body = crate::common::web::http(gw.http_addr.unwrap(), "GET", "/metrics", &[], "").body;
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

/// A client logged in as `user` (password `pw-user`) over MQTT 5.
fn login(addr: SocketAddr, id: &str, user: &str) -> Raw {
    let mut r = Raw::open(addr);
    r.version = Version::V5;
    let mut c = connect_packet(id, Version::V5);
    c.username = Some(user.into());
    c.password = Some(Bytes::from(format!("pw-{user}")));
    r.send(&Packet::Connect(Box::new(c)));
    match r.recv() {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, 0, "{user} refused"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    r
}

#[test]
fn grants_in_the_answer_bind_that_connection_alone() {
    let service = Service::start();
    {
        let mut g = service.grants.lock().unwrap();
        g.insert(
            "ann".into(),
            serde_json::json!({"acl": ["allow both own/%u/#", "deny both #"]}),
        );
        g.insert("root".into(), serde_json::json!({"superuser": true}));
        g.insert("solo".into(), serde_json::json!({"max_connections": 1}));
    }
    let (dir, acl) = acl_file("allow both own/%u/#\nallow both feed/#\n");
    let gw = gateway_for(&service, move |c| {
        c.auth.acl_file = acl;
        c.limits.per_user_policy = tether::config::PerUserPolicy::Refuse;
    });
    // ann's own rules come first: the file's feed/# is not hers.
    let mut ann = login(gw.tcp_addr, "ann-1", "ann");
    assert_eq!(suback(&mut ann, 1, "own/ann/#"), 1);
    assert_eq!(suback(&mut ann, 2, "own/bob/#"), 0x87);
    assert_eq!(puback(&mut ann, 3, "feed/x"), 0x87);
    // bob has no grants: the file decides.
    let mut bob = login(gw.tcp_addr, "bob-1", "bob");
    assert_eq!(suback(&mut bob, 1, "feed/#"), 1);
    assert_eq!(suback(&mut bob, 2, "own/ann/#"), 0x87);
    // root may do what the file would refuse.
    let mut root = login(gw.tcp_addr, "root-1", "root");
    assert_eq!(suback(&mut root, 1, "own/ann/#"), 1);
    assert_eq!(puback(&mut root, 2, "anything/at/all"), 0);
    // solo's limit of one connection, with no limit configured.
    let solo = login(gw.tcp_addr, "solo-1", "solo");
    assert_eq!(
        connack(gw.tcp_addr, Version::V5, "solo-2", "solo", "pw-solo"),
        0x97,
        "quota exceeded"
    );
    drop(solo);
    until_blocking("solo's first connection to be gone", || {
        connack(gw.tcp_addr, Version::V5, "solo-2", "solo", "pw-solo") == 0
    });
    // The service saw where and how the client came.
    let last = service.last.lock().unwrap().clone().unwrap();
    assert_eq!(last["listener"], "mqtt");
    assert_eq!(last["protocol"], 5);
    assert!(last["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    drop(dir);
}

/// A temporary directory holding an ACL file; its path.
fn acl_file(rules: &str) -> (TempDir, String) {
    let dir = TempDir::new("acl");
    let path = dir.0.join("acl");
    std::fs::write(&path, rules).unwrap();
    (dir, path.display().to_string())
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tether-auth-http-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_http_authorizer_decides_what_no_rule_does_and_remembers() {
    let service = Service::start();
    let (dir, acl) = acl_file("allow subscribe public/#\n");
    let acl_url = service.acl_url();
    let gw = gateway_for(&service, move |c| {
        c.auth.acl_file = acl;
        c.auth.http.acl_url = acl_url;
    });
    let mut ann = login(gw.tcp_addr, "ann-1", "ann");
    assert_eq!(suback(&mut ann, 1, "public/news"), 1, "the file's rule");
    assert_eq!(service.acl_calls.load(SeqCst), 0, "decided without a call");
    assert_eq!(suback(&mut ann, 2, "acl/ann/#"), 1);
    assert_eq!(suback(&mut ann, 3, "acl/bob/#"), 0x87);
    assert_eq!(service.acl_calls.load(SeqCst), 2);
    for pkid in 10..60 {
        assert_eq!(suback(&mut ann, pkid, "acl/ann/#"), 1);
        assert_eq!(suback(&mut ann, pkid + 100, "acl/bob/#"), 0x87);
    }
    assert_eq!(service.acl_calls.load(SeqCst), 2, "answers are cached");
    let mut early = Vec::new();
    assert_eq!(puback_seeing(&mut ann, 200, "acl/ann/t", &mut early), 0);
    assert_eq!(puback_seeing(&mut ann, 201, "elsewhere", &mut early), 0x87);
    assert_eq!(&next_publish(&mut ann, &mut early).topic, "acl/ann/t");
    assert_eq!(service.acl_calls.load(SeqCst), 4);
    // Down, fail closed: a new question is refused; a cached one is not.
    service.down.store(true, SeqCst);
    assert_eq!(suback(&mut ann, 300, "acl/ann/new"), 0x87);
    assert_eq!(suback(&mut ann, 301, "acl/ann/#"), 1);
    assert_eq!(metric(&gw, "tether_acl_http_calls_total"), 5.0);
    assert_eq!(metric(&gw, "tether_acl_http_failures_total"), 1.0);
    assert!(metric(&gw, "tether_acl_http_cache_hits_total") >= 100.0);
    drop(dir);
}

#[test]
fn each_listener_asks_its_chain_in_turn() {
    let service = Service::start();
    let dir = TempDir::new("users");
    let users = dir.0.join("users");
    tether::adapters::auth::users::set_password(&users, "local-ann", b"pw-local-ann").unwrap();
    let users = users.display().to_string();
    let gw = gateway_for(&service, {
        let users = users.clone();
        move |c| {
            c.auth.users_file = users;
            c.auth.chain = vec!["http".into(), "file".into()];
        }
    });
    // The service knows bob; it passes local-* on, and the users file
    // (verified on the tether-auth thread after the service's answer)
    // knows local-ann.
    assert_eq!(connack(gw.tcp_addr, Version::V5, "b", "bob", "pw-bob"), 0);
    assert_eq!(
        connack(gw.tcp_addr, Version::V5, "l", "local-ann", "pw-local-ann"),
        0
    );
    assert_eq!(
        connack(gw.tcp_addr, Version::V5, "l", "local-ann", "wrong"),
        0x86
    );
    assert_eq!(
        connack(gw.tcp_addr, Version::V5, "z", "local-zed", "pw-local-zed"),
        0x86,
        "nobody takes local-zed"
    );
    assert_eq!(metric(&gw, "tether_auth_unclaimed_total"), 1.0);
    // On mqtt, only the users file: bob is nobody there, and the service
    // is not asked.
    let mqtt_file_only = gateway_for(&service, move |c| {
        c.auth.users_file = users;
        c.auth
            .listener_chains
            .insert("mqtt".into(), vec!["file".into()]);
    });
    let calls = service.calls.load(SeqCst);
    assert_eq!(
        connack(mqtt_file_only.tcp_addr, Version::V5, "b", "bob", "pw-bob"),
        0x86
    );
    assert_eq!(
        connack(
            mqtt_file_only.tcp_addr,
            Version::V5,
            "l",
            "local-ann",
            "pw-local-ann"
        ),
        0
    );
    assert_eq!(service.calls.load(SeqCst), calls);
    drop(dir);
}
