//! The HTTP fallback (SSE and long-polling) against a plain-socket HTTP
//! client written here (independent of the server's parser), rumqttc over
//! WebSocket and TCP, and the HTTP API: QoS 1 pushes, acknowledgement
//! cursors, a poll lost in transit, requests accepted on the wrong core, a
//! session switching transports while messages flow, authentication, bad
//! input, and the fallback over TLS on the wss listener (curl and a rustls
//! client).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::curl::curl;
use crate::common::web::{http, metric};
use crate::common::*;
use serde_json::Value;

/// One keep-alive HTTP/1.1 connection.
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// A poll's events.
    fn events(&self) -> Vec<Value> {
        assert_eq!(self.status, 200, "{}", self.body);
        self.json()["events"].as_array().unwrap().clone()
    }
}

impl Client {
    fn open(addr: SocketAddr) -> Client {
        let w = TcpStream::connect(addr).unwrap();
        w.set_read_timeout(Some(WAIT)).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Client { w, r }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[&str], body: &str) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        self.w.write_all(req.as_bytes()).unwrap();
    }

    fn head(&mut self) -> (u16, String) {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(self.r.read_line(&mut line).unwrap() > 0, "response head");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head)
    }

    fn response(&mut self) -> Reply {
        let (status, head) = self.head();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).unwrap();
        Reply {
            status,
            head,
            body: String::from_utf8(body).unwrap(),
        }
    }

    fn call(&mut self, method: &str, path: &str, headers: &[&str], body: &str) -> Reply {
        self.send(method, path, headers, body);
        self.response()
    }

    /// Opens an SSE stream; the response head.
    fn sse(addr: SocketAddr, path: &str, headers: &[&str]) -> (Client, String) {
        let mut c = Client::open(addr);
        c.send("GET", path, headers, "");
        let (status, head) = c.head();
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("text/event-stream"), "{head}");
        (c, head)
    }

    /// The next SSE event's data (comments, `retry:` and `id:` lines
    /// skipped; the id is in the JSON too).
    fn event(&mut self) -> Value {
        self.event_within(WAIT).expect("an SSE event in time")
    }

    /// The next SSE event, or `None` when none came within `wait`.
    fn event_within(&mut self, wait: Duration) -> Option<Value> {
        self.w.set_read_timeout(Some(wait)).unwrap();
        loop {
            let mut line = String::new();
            match self.r.read_line(&mut line) {
                Ok(0) => panic!("the stream ended"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) => panic!("{e}"),
            }
            if let Some(data) = line.strip_prefix("data: ") {
                return Some(serde_json::from_str(data.trim()).unwrap());
            }
        }
    }
}

fn gw_with(cores: usize, tweak: impl FnOnce(&mut tether::Config)) -> tether::Gateway {
    gateway(cores, tweak)
}

fn ws(gw: &tether::Gateway) -> SocketAddr {
    gw.ws_addr
        .expect("the WebSocket listener serves the fallback")
}

/// A QoS 1 push through the HTTP API.
fn push(gw: &tether::Gateway, topic: &str, payload: &str) {
    let body = serde_json::json!({"topic": topic, "payload": payload, "qos": 1}).to_string();
    let r = http(gw.http_addr.unwrap(), "POST", "/v1/publish", &[], &body);
    assert_eq!(r.status, 200, "{}", r.body);
}

fn subscribe(gw: &tether::Gateway, sid: &str, filter: &str) {
    let body = serde_json::json!({"topic": filter, "qos": 1}).to_string();
    let r = Client::open(ws(gw)).call("POST", &format!("/push/subscribe?sid={sid}"), &[], &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["reason_codes"], serde_json::json!([1]));
}

#[test]
fn sse_gets_qos1_pushes_and_a_reconnect_resends_what_was_not_acknowledged() {
    let gw = gw_with(2, |_| {});
    let (mut sse, head) = Client::sse(ws(&gw), "/push/sse?sid=ann-tab", &[]);
    assert!(head.contains("X-Tether-Session: ann-tab"), "{head}");
    let first = sse.event();
    assert_eq!(first["type"], "session");
    assert_eq!(first["present"], false);
    subscribe(&gw, "ann-tab", "news/#");
    push(&gw, "news/1", "one");
    let m = sse.event();
    assert_eq!(
        (m["type"].as_str(), m["topic"].as_str()),
        (Some("message"), Some("news/1"))
    );
    assert_eq!(
        (m["payload"].as_str(), m["qos"].as_u64()),
        (Some("one"), Some(1))
    );
    drop(sse);

    // Back with the session event as the last one seen: the message was
    // not acknowledged, so it comes again, with its id.
    let last = format!("Last-Event-ID: {}", first["id"].as_str().unwrap());
    let (mut sse, _) = Client::sse(ws(&gw), "/push/sse?sid=ann-tab", &[&last]);
    let again = sse.event();
    assert_eq!(again["id"], m["id"], "the unacknowledged message, again");
    assert!(metric(&gw, "tether_fallback_resends_total") >= 1.0);
    drop(sse);

    // Acknowledged through Last-Event-ID: not again; the next push is new.
    let last = format!("Last-Event-ID: {}", m["id"].as_str().unwrap());
    let (mut sse, _) = Client::sse(ws(&gw), "/push/sse?sid=ann-tab", &[&last]);
    push(&gw, "news/2", "two");
    let next = sse.event();
    assert_eq!(next["topic"], "news/2", "news/1 was acknowledged: {next}");

    // POST …/ack acknowledges on a live stream; a newer stream of the
    // session replaces this one, which ends with a closed event.
    let acked = Client::open(ws(&gw)).call(
        "POST",
        "/push/ack?sid=ann-tab",
        &[],
        &serde_json::json!({"id": next["id"]}).to_string(),
    );
    assert_eq!(acked.json()["acked"], 1);
    let (mut newer, _) = Client::sse(ws(&gw), "/push/sse?sid=ann-tab", &[]);
    let bye = sse.event();
    assert_eq!(bye["type"], "closed", "{bye}");
    push(&gw, "news/3", "three");
    assert_eq!(
        newer.event()["topic"],
        "news/3",
        "nothing acknowledged came again"
    );
}

#[test]
fn a_poll_lost_in_transit_is_answered_again_on_the_next_poll() {
    let gw = gw_with(1, |_| {});
    let mut c = Client::open(ws(&gw));
    let r = c.call("GET", "/push/poll?sid=bob-phone", &[], "");
    assert_eq!(r.events()[0]["type"], "session");
    subscribe(&gw, "bob-phone", "inbox/#");
    for i in 0..3 {
        push(&gw, &format!("inbox/{i}"), &format!("m{i}"));
    }
    // The response is cut: the client reads a few bytes and goes away.
    let mut lost = TcpStream::connect(ws(&gw)).unwrap();
    lost.set_read_timeout(Some(WAIT)).unwrap();
    lost.write_all(b"GET /push/poll?sid=bob-phone HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut some = [0u8; 20];
    lost.read_exact(&mut some).unwrap();
    drop(lost);

    // The next poll (no ack) has the same three, with the same ids.
    let again = c.call("GET", "/push/poll?sid=bob-phone", &[], "").events();
    let topics: Vec<_> = again.iter().map(|e| e["topic"].as_str().unwrap()).collect();
    assert_eq!(topics, ["inbox/0", "inbox/1", "inbox/2"]);
    // Acknowledged by cursor: the next poll waits for something new.
    let cursor = again[2]["id"].as_str().unwrap().to_string();
    push(&gw, "inbox/3", "m3");
    let next = c
        .call(
            "GET",
            &format!("/push/poll?sid=bob-phone&ack={cursor}"),
            &[],
            "",
        )
        .events();
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0]["topic"], "inbox/3");
    assert!(metric(&gw, "tether_fallback_resends_total") >= 3.0);
    assert!(metric(&gw, "tether_fallback_polls_total") >= 3.0);
}

/// README: "a stream or poll without one gets a fresh id, in its first
/// event and in the X-Tether-Session header"; polls once lacked the header.
#[test]
fn a_poll_names_its_session_in_the_x_tether_session_header() {
    let gw = gw_with(1, |c| c.websocket.fallback.poll_timeout_ms = 200);
    let mut c = Client::open(ws(&gw));
    let fresh = c.call("GET", "/push/poll", &[], "");
    let sid = fresh.json()["sid"].as_str().unwrap().to_string();
    assert_eq!(fresh.events()[0]["sid"], sid.as_str());
    assert!(
        fresh.head.contains(&format!("X-Tether-Session: {sid}\r\n")),
        "{}",
        fresh.head
    );
    let again = c.call("GET", &format!("/push/poll?sid={sid}"), &[], "");
    assert!(
        again.events().is_empty(),
        "the same session: no new session event"
    );
    assert!(again.head.contains(&format!("X-Tether-Session: {sid}\r\n")));
}

#[test]
fn a_held_poll_is_answered_by_a_push_or_empty_at_its_timeout() {
    let gw = gw_with(1, |c| c.websocket.fallback.poll_timeout_ms = 400);
    let mut c = Client::open(ws(&gw));
    c.call("GET", "/push/poll?sid=carl", &[], "");
    subscribe(&gw, "carl", "t");
    let started = Instant::now();
    let empty = c.call("GET", "/push/poll?sid=carl", &[], "").events();
    assert!(empty.is_empty(), "{empty:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "held until its timeout"
    );
    c.send("GET", "/push/poll?sid=carl", &[], "");
    push(&gw, "t", "now");
    let got = c.response().events();
    assert_eq!(got[0]["payload"], "now");
}

#[test]
fn requests_reach_the_sessions_core_wherever_the_kernel_accepted_them() {
    let gw = gw_with(2, |_| {});
    let (mut sse, _) = Client::sse(ws(&gw), "/push/sse?sid=dana", &[]);
    sse.event();
    // Each POST on a new connection: the kernel spreads them over both
    // cores' listeners, and every one reaches the session.
    subscribe(&gw, "dana", "d/#");
    for i in 0..40 {
        let body =
            serde_json::json!({"topic": format!("d/{i}"), "payload": i.to_string(), "qos": 1});
        let r =
            Client::open(ws(&gw)).call("POST", "/push/publish?sid=dana", &[], &body.to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["reason_code"], 0);
    }
    for i in 0..40 {
        assert_eq!(sse.event()["payload"], i.to_string(), "in publish order");
    }
    assert!(
        metric(&gw, "tether_fallback_handoffs_total") >= 1.0,
        "some were handed over"
    );
    assert_eq!(
        metric(&gw, "tether_fallback_sessions_total"),
        1.0,
        "one session"
    );
    assert_eq!(
        gw.locate("dana"),
        Some(tether::id::owner_core("dana", 2)),
        "the session lives on the core its id hashes to"
    );
}

/// A client that switches between MQTT over WebSocket, SSE and long-polling
/// every few messages while 300 QoS 1 messages flow: it gets every one, the
/// first copies in publish order, and duplicates only within QoS 1's
/// allowance (what was in flight at a switch). A phase ends after 25
/// messages, or when none came for [`QUIET`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_switches_transports_while_messages_flow_and_loses_nothing() {
    const TOTAL: usize = 300;
    const QUIET: Duration = Duration::from_millis(800);
    let gw = gw_with(2, |c| c.websocket.fallback.poll_timeout_ms = 800);
    let port = ws(&gw).port();
    let ws_opts = || {
        let mut o =
            rumqttc::MqttOptions::new("switcher", format!("ws://127.0.0.1:{port}/mqtt"), port);
        o.set_transport(rumqttc::Transport::Ws);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(30));
        // Acknowledged once recorded: a phase that ends with messages
        // read by rumqttc but not by the test gets them again.
        o.set_manual_acks(true);
        o
    };
    let mut first = v4(&gw, ws_opts(), None).await;
    first.subscribe("flow/#", rumqttc::QoS::AtLeastOnce).await;
    drop(first);

    let publisher = v4(&gw, v4_options(&gw, "flow-pub", true), None).await;
    let feeder = tokio::spawn(async move {
        for i in 0..TOTAL {
            publisher
                .client
                .publish("flow/x", rumqttc::QoS::AtLeastOnce, false, i.to_string())
                .await
                .unwrap();
            // Pacing, so that the switches happen mid-stream.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        publisher
    });

    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    let mut dups = 0usize;
    let mut note = |n: usize, seen: &mut BTreeSet<usize>| {
        if !seen.insert(n) {
            dups += 1;
        } else {
            order.push(n);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut switches = 0;
    while seen.len() < TOTAL {
        assert!(
            Instant::now() < deadline,
            "only {} of {TOTAL} arrived",
            seen.len()
        );
        switches += 1;
        match switches % 3 {
            // WebSocket (MQTT 3.1.1, rumqttc acknowledges as it reads).
            1 => {
                let mut c = v4(&gw, ws_opts(), None).await;
                assert!(c.session_present);
                for _ in 0..25 {
                    let Ok(p) = tokio::time::timeout(QUIET, c.publish()).await else {
                        break;
                    };
                    note(
                        std::str::from_utf8(&p.payload).unwrap().parse().unwrap(),
                        &mut seen,
                    );
                    c.client.ack(&p).await.unwrap();
                }
            }
            // SSE: acknowledge every 10th event, then leave mid-stream.
            2 => {
                let addr = ws(&gw);
                let got = tokio::task::spawn_blocking(move || {
                    let (mut sse, _) = Client::sse(addr, "/push/sse?sid=switcher", &[]);
                    let mut got = Vec::new();
                    let mut c = Client::open(addr);
                    while got.len() < 25 {
                        let Some(e) = sse.event_within(QUIET) else {
                            break;
                        };
                        if e["type"] != "message" {
                            assert_eq!(e["type"], "session", "{e}");
                            continue;
                        }
                        got.push(e["payload"].as_str().unwrap().parse::<usize>().unwrap());
                        if got.len() % 10 == 0 {
                            let body = serde_json::json!({"id": e["id"]}).to_string();
                            c.call("POST", "/push/ack?sid=switcher", &[], &body);
                        }
                    }
                    got
                })
                .await
                .unwrap();
                for n in got {
                    note(n, &mut seen);
                }
            }
            // Long-polling, acknowledging each batch with the next poll.
            _ => {
                let addr = ws(&gw);
                let got = tokio::task::spawn_blocking(move || {
                    let mut c = Client::open(addr);
                    let mut got = Vec::new();
                    let mut cursor = String::new();
                    while got.len() < 25 {
                        let r = c.call(
                            "GET",
                            &format!("/push/poll?sid=switcher&ack={cursor}"),
                            &[],
                            "",
                        );
                        let events = r.events();
                        if events.is_empty() {
                            // Held for the whole poll timeout: quiet.
                            break;
                        }
                        for e in events {
                            cursor = e["id"].as_str().unwrap().to_string();
                            if e["type"] == "message" {
                                got.push(e["payload"].as_str().unwrap().parse::<usize>().unwrap());
                            }
                        }
                    }
                    got
                })
                .await
                .unwrap();
                for n in got {
                    note(n, &mut seen);
                }
            }
        }
    }
    let _publisher = feeder.await.unwrap();
    assert_eq!(seen.len(), TOTAL);
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted, "first copies arrive in publish order");
    let window = tether::Config::default().mqtt.inflight_window as usize;
    assert!(
        dups <= switches * window,
        "{dups} duplicates over {switches} switches (window {window})"
    );
    eprintln!("{TOTAL} messages, {switches} switches, {dups} duplicates");
}

#[test]
fn credentials_open_the_session_and_bind_it() {
    let dir = std::env::temp_dir().join(format!("tether-fallback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users");
    tether::adapters::auth::users::set_password(&users, "ann", b"pw-ann").unwrap();
    tether::adapters::auth::users::set_password(&users, "bob", b"pw-bob").unwrap();
    let acl = dir.join("acl");
    std::fs::write(&acl, "allow both user/%u/#\ndeny both #\n").unwrap();
    let (u, a) = (users.display().to_string(), acl.display().to_string());
    let gw = gw_with(2, move |c| {
        c.auth.users_file = u;
        c.auth.acl_file = a;
    });
    let addr = ws(&gw);
    // No credentials, and a wrong password: refused with the reason.
    let r = Client::open(addr).call("GET", "/push/poll?sid=s1", &[], "");
    assert!(matches!(r.status, 401 | 403), "{} {}", r.status, r.body);
    let r = Client::open(addr).call(
        "GET",
        "/push/poll?sid=s1&username=ann&password=nope",
        &[],
        "",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    // Basic credentials open it; the ACL's %u applies.
    let basic = "Authorization: Basic YW5uOnB3LWFubg=="; // ann:pw-ann
    let mut c = Client::open(addr);
    let r = c.call("GET", "/push/poll?sid=s1", &[basic], "");
    assert_eq!(r.events()[0]["type"], "session");
    let ok = c.call(
        "POST",
        "/push/subscribe?sid=s1",
        &[basic],
        r#"{"topic":"user/ann/#","qos":1}"#,
    );
    assert_eq!(ok.json()["reason_codes"], serde_json::json!([1]));
    let denied = c.call(
        "POST",
        "/push/subscribe?sid=s1",
        &[basic],
        r#"{"topic":"user/bob/#","qos":1}"#,
    );
    assert_eq!(denied.status, 403, "{}", denied.body);
    let pubd = c.call(
        "POST",
        "/push/publish?sid=s1",
        &[basic],
        r#"{"topic":"user/bob/x","payload":"no","qos":1}"#,
    );
    assert_eq!(pubd.status, 403, "{}", pubd.body);
    // Someone else's credentials (or none) cannot act on ann's session.
    let bob = "Authorization: Basic Ym9iOnB3LWJvYg=="; // bob:pw-bob
    let r = c.call(
        "POST",
        "/push/publish?sid=s1",
        &[bob],
        r#"{"topic":"user/ann/x","payload":"x"}"#,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = c.call("POST", "/push/ack?sid=s1", &[], r#"{"id":"0.1"}"#);
    assert_eq!(r.status, 401, "{}", r.body);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_requests_get_an_http_error_and_the_node_carries_on() {
    let gw = gw_with(1, |c| {
        c.websocket.fallback.max_body_bytes = 1024;
        c.websocket.fallback.max_sessions_per_core = 2;
    });
    let addr = ws(&gw);
    // The status of the answer (its head only: an error on a keep-alive
    // connection leaves it open).
    let status = |req: &[u8]| {
        let mut c = Client::open(addr);
        c.w.write_all(req).unwrap();
        c.head().0.to_string()
    };
    assert_eq!(status(b"GET /push/nope HTTP/1.1\r\n\r\n"), "404");
    assert_eq!(
        status(b"POST /push/sse HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        "405"
    );
    assert_eq!(status(b"GET /push/poll?sid=a%20b HTTP/1.1\r\n\r\n"), "400");
    assert_eq!(
        status(b"POST /push/publish HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        "400"
    );
    assert_eq!(
        status(b"POST /push/publish?sid=ghost HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"),
        "404"
    );
    let big = format!(
        "POST /push/publish?sid=x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n{}",
        "x".repeat(5000)
    );
    assert_eq!(status(big.as_bytes()), "413");
    assert_eq!(
        status(b"POST /push/publish?sid=x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        "411"
    );
    assert_eq!(status(b"GET /push/poll\x00\x01 HTTP/1.1\r\n\r\n"), "400");
    assert_eq!(status(&[b'A'; 9000]), "431", "an endless head");

    let mut c = Client::open(addr);
    c.call("GET", "/push/poll?sid=one", &[], "");
    for body in [
        "not json",
        r#"{"topic":"a/+","payload":"x"}"#,
        r#"{"topic":"a","payload":"x","qos":2}"#,
        r#"{"topic":"a","payload":"x","payload_base64":"eA=="}"#,
    ] {
        let r = c.call("POST", "/push/publish?sid=one", &[], body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
    }
    let r = c.call("POST", "/push/subscribe?sid=one", &[], r#"{"filters":[]}"#);
    assert_eq!(r.status, 400);
    // The session survived all of that.
    let r = c.call(
        "POST",
        "/push/subscribe?sid=one",
        &[],
        r#"{"topic":"ok","qos":1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // Sessions per core: the third is refused.
    Client::open(addr).call("GET", "/push/poll?sid=two", &[], "");
    let r = Client::open(addr).call("GET", "/push/poll?sid=three", &[], "");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(metric(&gw, "tether_fallback_refused_total") >= 10.0);
    // A preflight is answered for browsers on other origins.
    let r = Client::open(addr).call("OPTIONS", "/push/publish?sid=one", &[], "");
    assert_eq!(r.status, 204);
    assert!(
        r.head.contains("Access-Control-Allow-Methods"),
        "{}",
        r.head
    );
    // WebSocket upgrades on the same listener still work.
    assert_eq!(
        status(b"GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        "426"
    );
}

#[test]
fn an_idle_session_is_reaped_by_keep_alive_and_resumes_with_what_came_meanwhile() {
    let gw = gw_with(1, |c| {
        c.websocket.fallback.keep_alive_secs = 1;
        c.websocket.fallback.poll_timeout_ms = 300;
        c.websocket.fallback.heartbeat_ms = 300;
    });
    let mut c = Client::open(ws(&gw));
    c.call("GET", "/push/poll?sid=erin", &[], "");
    subscribe(&gw, "erin", "e");
    // Nobody polls: 1.5 x keep-alive later the session's connection is
    // reaped and the session waits offline.
    until_blocking("the idle session's connection reaped", || {
        metric(&gw, "tether_timeouts_total") >= 1.0
    });
    push(&gw, "e", "while away");
    let r = c.call("GET", "/push/poll?sid=erin", &[], "");
    let events = r.events();
    assert_eq!(events[0]["type"], "session");
    assert_eq!(events[0]["present"], true, "the session was kept");
    let msg = if events.len() > 1 {
        events[1].clone()
    } else {
        c.call("GET", "/push/poll?sid=erin", &[], "").events()[0].clone()
    };
    assert_eq!(msg["payload"], "while away");
    assert_eq!(metric(&gw, "tether_fallback_sessions_total"), 2.0);

    // An SSE stream keeps it alive with its heartbeats.
    let (mut sse, _) = Client::sse(ws(&gw), "/push/sse?sid=erin", &[]);
    let before = metric(&gw, "tether_timeouts_total");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        metric(&gw, "tether_timeouts_total"),
        before,
        "heartbeats touch the session"
    );
    push(&gw, "e", "still here");
    loop {
        let e = sse.event();
        if e["payload"] == "still here" {
            break;
        }
    }
}

/// The README's tour, with `curl` itself: an SSE stream read by `curl -N`,
/// a subscription and an acknowledgement posted with `curl -d`, a poll.
#[test]
fn curl_drives_sse_and_long_polling_as_in_the_readme() {
    use std::process::Command;
    let gw = gw_with(1, |_| {});
    let base = format!("http://{}/push", ws(&gw));
    let curl = |args: &[&str]| curl(&[], args);
    let mut stream = CurlSse::start(&[], &format!("{base}/sse?sid=tour"));
    assert_eq!(stream.next_data()["type"], "session");
    let sub = curl(&[
        "-X",
        "POST",
        &format!("{base}/subscribe?sid=tour"),
        "-d",
        r#"{"topic":"user/alice/inbox","qos":1}"#,
    ]);
    assert_eq!(sub, r#"{"reason_codes":[1]}"#);
    push(&gw, "user/alice/inbox", "hello, SSE");
    let m = stream.next_data();
    assert_eq!(m["payload"], "hello, SSE");
    let acked = curl(&[
        "-X",
        "POST",
        &format!("{base}/ack?sid=tour"),
        "-d",
        &format!(r#"{{"id":"{}"}}"#, m["id"].as_str().unwrap()),
    ]);
    assert_eq!(acked, r#"{"acked":1}"#);
    // The stream stops (only the curl this test started), and a poll of
    // the same session gets what comes next.
    stream.stop();
    push(&gw, "user/alice/inbox", "while away");
    let polled: Value = serde_json::from_str(&curl(&[&format!("{base}/poll?sid=tour")])).unwrap();
    let events = polled["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{polled}");
    assert_eq!(events[0]["payload"], "while away");
    let gone = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            &format!("{base}/session?sid=tour"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&gone.stdout), "204");
}

/// The fallback on the wss listener, driven by `curl` over TLS against a
/// CA made here: an SSE stream, POSTs on fresh TLS connections (the kernel
/// spreads them over both cores, so the TLS session moves with its socket
/// to the session's core), two requests on one kept-alive TLS connection,
/// and a `Connection: close` that ends with close_notify (a rustls client
/// here, which tells a clean TLS close from a cut).
#[test]
fn the_fallback_runs_over_tls_and_its_session_moves_with_the_socket() {
    use crate::common::pki::{self, Ca};
    let ca = Ca::new("fallback test CA");
    let server = ca.server();
    let dir = pki::dir("fallback-tls");
    let ca_file = pki::write(&dir, "ca.pem", &ca.pem());
    let cert = pki::write(&dir, "server.pem", &server.cert);
    let key = pki::write(&dir, "server.key", &server.key);
    let gw = gw_with(2, |cfg| {
        cfg.tls.enabled = true;
        cfg.tls.listen = "127.0.0.1:0".parse().unwrap();
        cfg.tls.wss_listen = "127.0.0.1:0".parse().unwrap();
        cfg.tls.cert_file = cert;
        cfg.tls.key_file = key;
    });
    let port = gw.wss_addr.expect("wss enabled").port();
    let base = format!("https://localhost:{port}/push");
    let tls_args = [
        "--cacert".to_string(),
        ca_file.display().to_string(),
        "--resolve".to_string(),
        format!("localhost:{port}:127.0.0.1"),
    ];
    let curl = |args: &[&str]| curl(&tls_args, args);
    let mut stream = CurlSse::start(&tls_args, &format!("{base}/sse?sid=secure"));
    assert_eq!(stream.next_data()["type"], "session");
    let sub = curl(&[
        "-X",
        "POST",
        &format!("{base}/subscribe?sid=secure"),
        "-d",
        r#"{"topic":"s/#","qos":1}"#,
    ]);
    assert_eq!(sub, r#"{"reason_codes":[1]}"#);
    for i in 0..20 {
        let body =
            serde_json::json!({"topic": format!("s/{i}"), "payload": i.to_string(), "qos": 1});
        let r = curl(&[
            "-X",
            "POST",
            &format!("{base}/publish?sid=secure"),
            "-d",
            &body.to_string(),
        ]);
        assert_eq!(r, r#"{"reason_code":0}"#);
    }
    for i in 0..20 {
        assert_eq!(
            stream.next_data()["payload"],
            i.to_string(),
            "in publish order"
        );
    }
    // Two POSTs in one curl: the second reuses the TLS connection (no new
    // connect), the third asks to close it.
    let url = format!("{base}/publish?sid=secure");
    let body = r#"{"topic":"s/kept","payload":"kept","qos":1}"#;
    let kept = curl(&[
        "-X",
        "POST",
        "-d",
        body,
        "-w",
        "|%{num_connects}\n",
        &url,
        &url,
    ]);
    assert_eq!(
        kept, "{\"reason_code\":0}|1\n{\"reason_code\":0}|0\n",
        "the second request rode the first one's connection"
    );
    assert_eq!(
        close_over_tls(&ca, port, "/push/publish?sid=secure", body),
        r#"{"reason_code":0}"#
    );
    for _ in 0..3 {
        assert_eq!(stream.next_data()["payload"], "kept");
    }
    assert!(
        metric(&gw, "tether_fallback_handoffs_total") >= 1.0,
        "some TLS connections were handed to the session's core"
    );
    assert_eq!(metric(&gw, "tether_fallback_sessions_total"), 1.0);
    // The curl this test started, by its handle.
    stream.stop();
}

/// An SSE stream read by `curl -N`.
struct CurlSse {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl CurlSse {
    /// Starts curl on `url` (at most 30 s) with `common` arguments.
    fn start(common: &[String], url: &str) -> CurlSse {
        let mut child = std::process::Command::new("curl")
            .args(["-sSN", "--max-time", "30"])
            .args(common)
            .arg(url)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("curl is installed (tests/run.sh installs it)");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        CurlSse { child, lines }
    }

    /// The next event's `data:` JSON.
    fn next_data(&mut self) -> Value {
        loop {
            let line = self.lines.next().expect("the stream goes on").unwrap();
            if let Some(d) = line.strip_prefix("data: ") {
                return serde_json::from_str(d).unwrap();
            }
        }
    }

    /// Stops the curl this test started (by its handle).
    fn stop(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// One POST of `body` to `path` over TLS to `localhost:port` (a rustls
/// client trusting `ca`) with `Connection: close`; the response's body.
/// Panics unless the server ends the TLS session with close_notify:
/// rustls reports a stream that ends without it as `UnexpectedEof`.
fn close_over_tls(ca: &crate::common::pki::Ca, port: u16, path: &str, body: &str) -> String {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response)
        .expect("the response, then close_notify");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    body.to_string()
}
