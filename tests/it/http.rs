//! The HTTP control plane, spoken to over plain sockets (an independent
//! HTTP/1.1 client of a few lines): health, readiness, metrics, publish and
//! batch publish to subscribers on every core, every error path, tokens.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::common::web::{http, Reply};
use crate::common::*;
use rumqttc::QoS as RQoS;
use serde_json::Value;

fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    http(
        addr,
        "POST",
        path,
        &["Content-Type: application/json"],
        body,
    )
}

/// Sum of a metric family's samples (`name{...} v` and `name v` lines)
/// whose labels contain `with`.
fn metric(body: &str, name: &str, with: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(with))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_users_sessions_queues_and_fanout_latency() {
    let gw = gateway(2, |_| {});
    let addr = gw.http_addr.expect("HTTP enabled");
    let scrape = || http(addr, "GET", "/metrics", &[], "").body;
    let user = |id: &str, name: &str| {
        let mut o = v4_options(&gw, id, true);
        o.set_credentials(name, "pw");
        o
    };
    // One user on both cores, another on one: two distinct users.
    let ann0 = v4(&gw, user("ann-phone", "ann"), Some(0)).await;
    let ann1 = v4(&gw, user("ann-laptop", "ann"), Some(1)).await;
    let mut bob = v4(&gw, user("bob", "bob"), None).await;
    bob.subscribe("live", rumqttc::QoS::AtLeastOnce).await;
    until("two distinct users", || {
        metric(&scrape(), "tether_users", "") == 2.0
    })
    .await;
    assert_eq!(
        metric(&scrape(), "tether_connections", "listener=\"mqtt\""),
        3.0
    );

    // A persistent session gone offline collects its QoS 1 messages.
    let mut parked = v4(&gw, v4_options(&gw, "parked", false), None).await;
    parked.subscribe("park/#", rumqttc::QoS::AtLeastOnce).await;
    parked.client.disconnect().await.unwrap();
    until("the parked session is offline", || {
        metric(&scrape(), "tether_sessions_offline", "") == 1.0
    })
    .await;
    for i in 0..3 {
        ann0.client
            .publish(format!("park/{i}"), rumqttc::QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    ann1.client
        .publish("live", rumqttc::QoS::AtLeastOnce, false, "now")
        .await
        .unwrap();
    bob.publish().await;
    until("three queued messages", || {
        metric(&scrape(), "tether_queued_messages", "") == 3.0
    })
    .await;
    let body = scrape();
    assert_eq!(metric(&body, "tether_sessions_online", ""), 3.0, "{body}");
    assert!(metric(&body, "tether_inflight_window_capacity", "") >= 3.0);
    assert_eq!(metric(&body, "tether_scrape_cores_missing", ""), 0.0);
    // The live delivery to bob is one fan-out latency sample, under +Inf
    // and, on loopback, under a second.
    assert_eq!(
        metric(&body, "tether_fanout_latency_seconds_count", ""),
        1.0,
        "{body}"
    );
    assert_eq!(
        metric(&body, "tether_fanout_latency_seconds_bucket", "le=\"1\""),
        1.0
    );
    assert!(body.contains("# TYPE tether_loop_lag_seconds histogram"));

    drop((ann0, ann1));
    until("ann went offline", || {
        metric(&scrape(), "tether_users", "") == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let gw = gateway(2, |_| {});
    let addr = gw.http_addr.expect("HTTP enabled");
    let r = http(addr, "GET", "/healthz", &[], "");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = http(addr, "GET", "/readyz", &[], "");
    assert_eq!((r.status, r.json()["cores"].as_u64()), (200, Some(2)));

    let _c = v4(&gw, v4_options(&gw, "metered", true), Some(1)).await;
    let r = http(addr, "GET", "/metrics", &[], "");
    assert_eq!(r.status, 200);
    assert!(r.head.contains("text/plain; version=0.0.4"), "{}", r.head);
    assert!(
        r.body
            .contains("tether_connections{core=\"1\",listener=\"mqtt\"} 1"),
        "{}",
        r.body
    );
    assert!(r.body.contains("# TYPE tether_publishes_in_total counter"));
    assert!(r.body.contains("tether_publishes_in_total{core=\"0\"} 0"));

    assert_eq!(
        http(addr, "GET", "/nope", &[], "").json()["error"]["code"],
        "not_found"
    );
    let r = http(addr, "GET", "/v1/publish", &[], "");
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );

    gw.shutdown();
    // Readiness drops as soon as shutdown starts (the listener may already
    // be gone, which a probe reads the same way).
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 503"), "{raw}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_http_reaches_subscribers_on_every_core() {
    let gw = gateway(2, |_| {});
    let addr = gw.http_addr.unwrap();
    let mut subs = Vec::new();
    for core in 0..2 {
        let mut s = v4(&gw, v4_options(&gw, &format!("h{core}"), true), Some(core)).await;
        s.subscribe("news/#", RQoS::AtLeastOnce).await;
        subs.push(s);
    }
    let r = post(
        addr,
        "/v1/publish",
        r#"{"topic":"news/1","payload":"hello","qos":1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"].as_str().map(str::len), Some(16));
    for s in &mut subs {
        let p = s.publish().await;
        assert_eq!((&*p.topic, &p.payload[..]), ("news/1", &b"hello"[..]));
    }
    // Another topic may be sent through another core: its order against
    // news/1 is not promised, so it goes once news/1 has arrived.
    let r = post(
        addr,
        "/v1/publish",
        r#"{"topic":"news/2","payload_base64":"AAEC/w==","qos":0}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for s in &mut subs {
        let p = s.publish().await;
        assert_eq!(&p.payload[..], &[0, 1, 2, 255]);
    }

    let r = post(
        addr,
        "/v1/publish/batch",
        r#"{"messages":[{"topic":"news/3","payload":"a"},{"topic":"news/4","qos":7},{"topic":"bad/+","payload":"c"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results[0]["id"].as_str().map(str::len), Some(16));
    assert_eq!(results[1]["error"]["field"], "messages[1].qos");
    assert_eq!(results[2]["error"]["field"], "messages[2].topic");
    let p = subs[0].publish().await;
    assert_eq!(&p.payload[..], b"a", "only the valid message went out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_every_device_of_a_user_to_one_client_and_to_everyone() {
    let gw = gateway(2, |_| {});
    let addr = gw.http_addr.unwrap();
    // Alice has two devices, on different cores; Bob has one.
    let mut alice = Vec::new();
    for core in 0..2 {
        let mut d = v4(
            &gw,
            v4_options(&gw, &format!("alice-{core}"), true),
            Some(core),
        )
        .await;
        d.subscribe("user/alice/inbox", RQoS::AtLeastOnce).await;
        d.subscribe("broadcast", RQoS::AtLeastOnce).await;
        alice.push(d);
    }
    let mut bob = v4(&gw, v4_options(&gw, "bob-phone", true), Some(0)).await;
    bob.subscribe("client/bob-phone/inbox", RQoS::AtLeastOnce)
        .await;
    bob.subscribe("user/bob/inbox", RQoS::AtLeastOnce).await;

    let r = post(
        addr,
        "/v1/push/users/alice",
        r#"{"payload":"for alice","qos":1}"#,
    );
    assert_eq!(
        (r.status, r.json()["topic"].as_str()),
        (200, Some("user/alice/inbox")),
        "{}",
        r.body
    );
    for d in &mut alice {
        assert_eq!(&d.publish().await.payload[..], b"for alice");
    }
    let r = post(
        addr,
        "/v1/push/clients/bob-phone",
        r#"{"payload":"for this phone","qos":1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(&bob.publish().await.payload[..], b"for this phone");
    let r = post(addr, "/v1/broadcast", r#"{"payload":"to everyone"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    for d in &mut alice {
        assert_eq!(&d.publish().await.payload[..], b"to everyone");
    }
    // Bob did not get Alice's message nor the broadcast (not subscribed).
    let r = post(addr, "/v1/push/users/bob", r#"{"payload":"for bob"}"#);
    assert_eq!(r.status, 200);
    assert_eq!(&bob.publish().await.payload[..], b"for bob");

    let r = post(addr, "/v1/push/users/a%2Fb", r#"{"payload":"x"}"#);
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (400, Some("user"))
    );
    let r = post(
        addr,
        "/v1/push/clients/c1",
        r#"{"topic":"elsewhere","payload":"x"}"#,
    );
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (400, Some("topic"))
    );
}

#[test]
fn bad_requests_get_json_errors_that_name_the_field() {
    let gw = gateway(1, |c| {
        c.http.max_body_bytes = 1024;
        c.mqtt.deny_publish = vec!["secret/#".into()];
    });
    let addr = gw.http_addr.unwrap();
    let cases: &[(&str, u16, &str, Option<&str>)] = &[
        (
            r#"{"topic": "a", "payload": "x""#,
            400,
            "malformed_json",
            None,
        ),
        (
            r#"{"topic": "a", "qos": "one"}"#,
            400,
            "invalid_field",
            Some("qos"),
        ),
        (
            r#"{"topic": "a", "qos": 3}"#,
            400,
            "invalid_field",
            Some("qos"),
        ),
        (
            r#"{"payload": "no topic"}"#,
            400,
            "invalid_field",
            Some("topic"),
        ),
        (r#"{"topic": "a/#"}"#, 400, "invalid_field", Some("topic")),
        (
            r#"{"topic": "a", "payload": "x", "payload_base64": "eA=="}"#,
            400,
            "invalid_field",
            Some("payload"),
        ),
        (
            r#"{"topic": "a", "payload_base64": "not base64!"}"#,
            400,
            "invalid_field",
            Some("payload_base64"),
        ),
        (
            r#"{"topic": "a", "properties": {"message_expiry_interval": -1}}"#,
            400,
            "invalid_field",
            Some("properties.message_expiry_interval"),
        ),
        (
            r#"{"topic": "secret/x"}"#,
            403,
            "topic_denied",
            Some("topic"),
        ),
    ];
    for (body, status, code, field) in cases {
        let r = post(addr, "/v1/publish", body);
        assert_eq!(r.status, *status, "{body}: {}", r.body);
        let e = &r.json()["error"];
        assert_eq!(e["code"], *code, "{body}: {}", r.body);
        if let Some(f) = field {
            assert_eq!(e["field"], *f, "{body}: {}", r.body);
        }
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let big = format!(r#"{{"topic":"a","payload":"{}"}}"#, "x".repeat(2000));
    let r = post(addr, "/v1/publish", &big);
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );
}

#[test]
fn tokens_guard_the_api_but_not_the_probes() {
    let token = "s3cret-token-0123456789";
    let gw = gateway(1, |c| c.http.tokens = vec![token.into()]);
    let addr = gw.http_addr.unwrap();
    let body = r#"{"topic":"t","payload":"x"}"#;
    let r = post(addr, "/v1/publish", body);
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        r.head
    );
    let r = http(
        addr,
        "POST",
        "/v1/publish",
        &["Authorization: Bearer wrong-token-0123456789"],
        body,
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let auth = format!("Authorization: Bearer {token}");
    let r = http(addr, "POST", "/v1/publish", &[&auth], body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(http(addr, "GET", "/healthz", &[], "").status, 200);
    // The console page is open (it holds no data; its calls carry the
    // token), HTML, and may talk to nothing but this node.
    let r = http(addr, "GET", "/console", &[], "");
    assert_eq!(r.status, 200);
    let head = r.head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("connect-src 'self'"), "{head}");
    assert!(r.body.contains("<title>Tether console</title>"));
    assert!(
        !r.body.contains("http://") && !r.body.contains("https://"),
        "no foreign asset"
    );
    assert_eq!(http(addr, "POST", "/console", &[], "").status, 405);
}

#[test]
fn no_tokens_on_a_public_address_is_refused_at_config_time() {
    let e =
        tether::Config::from_toml("[http]\nlisten = \"0.0.0.0:8080\"\n", Vec::new()).unwrap_err();
    assert_eq!(e.key, "http.tokens");
    let ok = tether::Config::from_toml(
        "[http]\nlisten = \"0.0.0.0:8080\"\ntokens = [\"0123456789abcdef\"]\n",
        Vec::new(),
    );
    assert!(ok.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_presence_pagination_and_kick() {
    let gw = gateway(2, |_| {});
    let addr = gw.http_addr.unwrap();
    let mut held = Vec::new();
    for (id, user, core) in [("alice-0", "alice", 0), ("alice-1", "alice", 1)] {
        let mut o = v4_options(&gw, id, true);
        o.set_credentials(user, "pw");
        let mut c = v4(&gw, o, Some(core)).await;
        c.subscribe(&format!("user/{user}/inbox"), RQoS::AtLeastOnce)
            .await;
        held.push(c);
    }
    let mut o = v5_options(&gw, "bob");
    o.set_credentials("bob", "pw");
    o.set_clean_start(false);
    o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
        session_expiry_interval: Some(300),
        ..Default::default()
    });
    let mut bob = v5(&gw, o, Some(0)).await;

    let r = http(addr, "GET", "/v1/clients/alice-1", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let c = r.json();
    assert_eq!(
        (
            c["online"].as_bool(),
            c["username"].as_str(),
            c["core"].as_u64()
        ),
        (Some(true), Some("alice"), Some(1))
    );
    assert_eq!(c["protocol"], "3.1.1");
    assert_eq!(c["subscriptions"][0]["filter"], "user/alice/inbox");
    assert_eq!(c["subscriptions"][0]["qos"], 1);
    assert!(c["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(c["connected_since_ms"].as_u64().unwrap() > 1_700_000_000_000);

    let r = http(addr, "GET", "/v1/users/alice", &[], "");
    let u = r.json();
    assert_eq!(u["online"], 2);
    let ids: Vec<&str> = u["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice-0", "alice-1"]);

    let page = http(addr, "GET", "/v1/clients?limit=2", &[], "").json();
    assert_eq!(page["clients"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], "alice-1");
    let page = http(addr, "GET", "/v1/clients?limit=2&after=alice-1", &[], "").json();
    assert_eq!(page["clients"][0]["client_id"], "bob");
    assert!(page["next"].is_null());
    let page = http(addr, "GET", "/v1/clients?user=bob", &[], "").json();
    assert_eq!(page["clients"].as_array().unwrap().len(), 1);
    let r = http(addr, "GET", "/v1/clients?limit=0", &[], "");
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (400, Some("limit"))
    );
    let r = http(addr, "GET", "/v1/clients/nobody", &[], "");
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("unknown_client"))
    );

    // Kick: MQTT 5 clients learn why (0x98); the persistent session stays.
    let r = http(addr, "DELETE", "/v1/clients/bob", &[], "");
    assert_eq!(
        (r.status, r.json()["kicked"].as_bool()),
        (200, Some(true)),
        "{}",
        r.body
    );
    // rumqttc reports a server DISCONNECT as the end of its event loop.
    loop {
        match tokio::time::timeout(WAIT, bob.events.recv())
            .await
            .expect("DISCONNECT in time")
        {
            Some(Err(e)) => {
                assert!(
                    e.contains("ServerDisconnect { reason_code: AdministrativeAction"),
                    "{e}"
                );
                assert!(e.contains("disconnected by the administrator"), "{e}");
                break;
            }
            Some(Ok(_)) => {}
            None => panic!("the client ended without the DISCONNECT"),
        }
    }
    until("bob's connection to close", || gw.stats().connections == 2).await;
    let c = http(addr, "GET", "/v1/clients/bob", &[], "").json();
    assert_eq!(c["online"], false);
    let r = http(addr, "DELETE", "/v1/clients/bob", &[], "");
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("not_connected"))
    );
}

/// Checks `body` against `components.schemas.<schema>` of the served
/// OpenAPI document (3.1: its schemas are JSON Schema 2020-12).
fn conforms(doc: &Value, schema: &str, body: &Value) {
    let root = serde_json::json!({
        "$ref": format!("#/components/schemas/{schema}"),
        "components": doc["components"],
    });
    let v = jsonschema::validator_for(&root).expect("the document's schemas compile");
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{schema}: {errors:?}\n{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_matches_the_openapi_document() {
    let gw = gateway(2, |_| {});
    let addr = gw.http_addr.unwrap();
    let r = http(addr, "GET", "/v1/openapi.json", &[], "");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/publish",
        "/v1/push/users/{user}",
        "/v1/clients/{client_id}",
        "/v1/users/{user}",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    let mut o = v4_options(&gw, "doc-client", true);
    o.set_credentials("dora", "pw");
    let mut c = v4(&gw, o, Some(0)).await;
    c.subscribe("doc/#", RQoS::AtLeastOnce).await;

    let cases: Vec<(Reply, &str)> = vec![
        (http(addr, "GET", "/healthz", &[], ""), "Status"),
        (http(addr, "GET", "/readyz", &[], ""), "Status"),
        (
            post(
                addr,
                "/v1/publish",
                r#"{"topic":"doc/a","payload":"x","qos":1,"properties":{"content_type":"text/plain","user_properties":[["k","v"]]}}"#,
            ),
            "Accepted",
        ),
        (post(addr, "/v1/publish", r#"{"topic":"doc/+"}"#), "Error"),
        (post(addr, "/v1/publish", "{"), "Error"),
        (
            post(
                addr,
                "/v1/publish/batch",
                r#"{"messages":[{"topic":"doc/b"},{"topic":"doc/c","qos":5}]}"#,
            ),
            "BatchResult",
        ),
        (
            post(addr, "/v1/push/users/dora", r#"{"payload":"hi"}"#),
            "Accepted",
        ),
        (
            post(addr, "/v1/broadcast", r#"{"payload":"all"}"#),
            "Accepted",
        ),
        (
            http(addr, "GET", "/v1/clients/doc-client", &[], ""),
            "Client",
        ),
        (http(addr, "GET", "/v1/clients/missing", &[], ""), "Error"),
        (
            http(addr, "GET", "/v1/clients?limit=1", &[], ""),
            "ClientPage",
        ),
        (http(addr, "GET", "/v1/users/dora", &[], ""), "User"),
        (http(addr, "GET", "/nowhere", &[], ""), "Error"),
        (
            http(addr, "DELETE", "/v1/clients/doc-client", &[], ""),
            "Kicked",
        ),
    ];
    for (reply, schema) in &cases {
        conforms(&doc, schema, &reply.json());
    }
    // The document rejects what the API would never send.
    let bad = serde_json::json!({"error": {"code": "teapot", "message": "", "field": null}});
    let root =
        serde_json::json!({"$ref": "#/components/schemas/Error", "components": doc["components"]});
    assert!(!jsonschema::validator_for(&root).unwrap().is_valid(&bad));
}

/// Whether a reply is a replayed answer (`Idempotent-Replayed: true`).
fn replayed(r: &Reply) -> bool {
    r.head
        .to_ascii_lowercase()
        .contains("\r\nidempotent-replayed: true")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_retried_with_its_idempotency_key_is_delivered_once() {
    let gw = gateway(2, |_| {});
    let addr = gw.http_addr.unwrap();
    let mut phone = v4(&gw, v4_options(&gw, "ida-phone", true), Some(0)).await;
    phone.subscribe("user/ida/inbox", RQoS::AtLeastOnce).await;
    let push = |key: &str, payload: &str| {
        http(
            addr,
            "POST",
            "/v1/push/users/ida",
            &[&format!("Idempotency-Key: {key}")],
            &format!(r#"{{"payload":"{payload}","qos":1}}"#),
        )
    };
    let mut ids = Vec::new();
    for attempt in 0..5 {
        let r = push("push-1", "once");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(replayed(&r), attempt > 0, "attempt {attempt}: {}", r.head);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "the first answer each time: {ids:?}"
    );
    let scrape = || http(addr, "GET", "/metrics", &[], "").body;
    assert_eq!(
        metric(&scrape(), "tether_http_idempotent_replays_total", ""),
        4.0
    );
    let r = push("push-2", "twice");
    assert_eq!((r.status, replayed(&r)), (200, false), "{}", r.body);
    assert_ne!(
        r.json()["id"].as_str().unwrap(),
        ids[0],
        "a new key, a new message"
    );
    assert_eq!(&phone.publish().await.payload[..], b"once");
    assert_eq!(
        &phone.publish().await.payload[..],
        b"twice",
        "no second copy of the message retried with its key"
    );

    // The same key with another body is another request: refused.
    let r = push("push-1", "other");
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{}",
        r.body
    );
    assert_eq!(
        metric(&scrape(), "tether_http_idempotency_key_reused_total", ""),
        1.0
    );
    // A refusal that delivered nothing frees its key: the retry runs again.
    for _ in 0..2 {
        let r = http(
            addr,
            "POST",
            "/v1/publish",
            &["Idempotency-Key: bad-topic"],
            r#"{"topic":"a/+","payload":"x"}"#,
        );
        assert_eq!((r.status, replayed(&r)), (400, false), "{}", r.body);
    }
    // A key that is not 1 to 255 visible ASCII characters names the header.
    for key in ["", "with space", &"k".repeat(256)] {
        let r = http(
            addr,
            "POST",
            "/v1/broadcast",
            &[&format!("Idempotency-Key: {key}")],
            r#"{"payload":"x"}"#,
        );
        assert_eq!(
            (r.status, r.json()["error"]["field"].as_str()),
            (400, Some("Idempotency-Key")),
            "key {key:?}: {}",
            r.body
        );
    }
    // Receipts need a topic to go to: this node has none.
    let r = http(
        addr,
        "POST",
        "/v1/publish",
        &[],
        r#"{"topic":"t","payload":"x","qos":1,"receipts":true}"#,
    );
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (400, Some("receipts")),
        "{}",
        r.body
    );
    let r = push("push-3", "last");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        &phone.publish().await.payload[..],
        b"last",
        "nothing was delivered by the refused requests"
    );
}
