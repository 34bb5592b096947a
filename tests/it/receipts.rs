//! Delivery receipts and dead letters against a real Kafka-protocol
//! broker (tansu, or `KAFKA_BROKERS`), read back with a plain consumer:
//! what became of each QoS 1/2 delivery of a message that asked.

use std::time::Duration;

use crate::common::kafka::Kafka;
use crate::common::web::{http, metric};
use crate::common::*;
use crate::kafka::{from_the_start, source};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use tether::config::SourceTarget;

/// Receipts: one record per QoS 1 delivery and outcome of a message that
/// asked for them, read back from Kafka with a plain consumer; what will
/// not arrive is a dead letter that keeps the message and its headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_say_acked_offline_queued_dropped_and_expired_and_dead_letters_keep_the_message() {
    let kafka = Kafka::start();
    let receipts = kafka.topic("receipts", 1).await;
    let dead = kafka.topic("dead", 1).await;
    let backend = kafka.topic("rc-backend", 1).await;
    let (brokers, r, d, b) = (
        kafka.brokers.clone(),
        receipts.clone(),
        dead.clone(),
        backend.clone(),
    );
    let gw = gateway(1, move |c| {
        c.kafka.brokers = brokers;
        c.kafka.receipts_topic = r;
        c.kafka.dead_letter_topic = d;
        c.session.max_queued_messages = 1;
        // A backend's records ask for receipts by the source's setting.
        let mut s = source(&b, SourceTarget::Topic, None);
        s.receipts = true;
        c.kafka.source = vec![s];
        from_the_start(c);
    });
    let addr = gw.http_addr.unwrap();
    let publish = |topic: &str, payload: &str, extra: &str| {
        let r = http(
            addr,
            "POST",
            "/v1/publish",
            &[],
            &format!(
                r#"{{"topic":"{topic}","payload":"{payload}","qos":1,"receipts":true{extra}}}"#
            ),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["id"].as_str().unwrap().to_string()
    };
    let offline = |id: &str| {
        let r = http(addr, "GET", &format!("/v1/clients/{id}"), &[], "");
        r.status == 200 && r.json()["online"] == false
    };
    // A device that acknowledges.
    let mut acker = v4(&gw, v4_options(&gw, "rc-acker", true), None).await;
    acker.subscribe("rc/a", rumqttc::QoS::AtLeastOnce).await;
    // Two persistent sessions, offline.
    for (id, filter) in [("rc-away", "rc/b"), ("rc-late", "rc/c")] {
        let mut d = v4(&gw, v4_options(&gw, id, false), None).await;
        d.subscribe(filter, rumqttc::QoS::AtLeastOnce).await;
        d.client.disconnect().await.unwrap();
        until(&format!("{id} offline"), || offline(id)).await;
    }
    // A session that lives one second offline (MQTT 5 Session Expiry).
    let mut o = v5_options(&gw, "rc-gone");
    o.set_clean_start(false);
    o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
        session_expiry_interval: Some(1),
        ..Default::default()
    });
    let gone = v5(&gw, o, None).await;
    gone.client
        .subscribe("rc/d", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut gone = gone;
    gone.incoming(|p| matches!(p, Packet::SubAck(_))).await;
    gone.client.disconnect().await.unwrap();
    until("rc-gone offline", || offline("rc-gone")).await;
    let acked_id = publish("rc/a", "to the acker", "");
    assert_eq!(&acker.publish().await.payload[..], b"to the acker");
    kafka
        .produce(
            &backend,
            "k",
            b"from a backend",
            &[("x-mqtt-topic", "rc/a")],
        )
        .await;
    assert_eq!(&acker.publish().await.payload[..], b"from a backend");
    publish("rc/b", "queued", "");
    publish("rc/b", "over the queue limit", "");
    publish(
        "rc/c",
        "short-lived",
        r#","properties":{"message_expiry_interval":1}"#,
    );
    publish("rc/d", "for a session that ends", "");
    // The message's second runs out while its session is away; it is
    // found expired when the client is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _late = v4(&gw, v4_options(&gw, "rc-late", false), None).await;
    until("rc-gone's session ended", || {
        http(addr, "GET", "/v1/clients/rc-gone", &[], "").status == 404
    })
    .await;

    let got = kafka.read(&receipts, 8).await;
    let mut seen: Vec<(String, String, String)> = got
        .iter()
        .map(|rec| {
            let body: serde_json::Value = serde_json::from_slice(&rec.payload).unwrap();
            assert_eq!(
                rec.key.as_deref(),
                body["client_id"].as_str(),
                "keyed by client"
            );
            assert_eq!(rec.headers["x-outcome"], body["outcome"].as_str().unwrap());
            assert!(body["published_ms"].as_u64().unwrap() <= body["at_ms"].as_u64().unwrap());
            if body["topic"] == "rc/a" && body["id"].as_str() != Some(acked_id.as_str()) {
                assert_eq!(body["outcome"], "acked", "the backend's record: {body}");
            }
            (
                body["client_id"].as_str().unwrap().to_string(),
                body["outcome"].as_str().unwrap().to_string(),
                body["limit"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    let want = |c: &str, o: &str, l: &str| (c.to_string(), o.to_string(), l.to_string());
    assert_eq!(
        seen,
        vec![
            want("rc-acker", "acked", ""),
            want("rc-acker", "acked", ""),
            want("rc-away", "dropped", "session.max_queued_messages"),
            want("rc-away", "offline-queued", ""),
            want("rc-gone", "dropped", "session ended"),
            want("rc-gone", "offline-queued", ""),
            want("rc-late", "expired", ""),
            want("rc-late", "offline-queued", ""),
        ]
    );
    let letters = kafka.read(&dead, 3).await;
    let mut reasons: Vec<(String, String, String, Vec<u8>)> = letters
        .iter()
        .map(|l| {
            (
                l.headers["x-client"].clone(),
                l.headers["x-reason"].clone(),
                l.headers["x-mqtt-topic"].clone(),
                l.payload.clone(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            (
                "rc-away".into(),
                "session.max_queued_messages".into(),
                "rc/b".into(),
                b"over the queue limit".to_vec()
            ),
            (
                "rc-gone".into(),
                "session ended".into(),
                "rc/d".into(),
                b"for a session that ends".to_vec()
            ),
            (
                "rc-late".into(),
                "expired".into(),
                "rc/c".into(),
                b"short-lived".to_vec()
            ),
        ]
    );
    for l in &letters {
        assert_eq!(l.headers["x-qos"], "1", "the message's own headers stay");
        assert!(l.headers.contains_key("x-id"));
    }
    assert!(
        got.iter()
            .any(|rec| rec.headers["x-id"] == acked_id && rec.headers["x-outcome"] == "acked"),
        "the API's receipt carries the id the API answered"
    );
    assert_eq!(metric(&gw, "tether_kafka_receipts_total"), 8.0);
    assert_eq!(metric(&gw, "tether_kafka_dead_letters_total"), 3.0);
    assert_eq!(metric(&gw, "tether_dropped_session_ended_total"), 1.0);
    gw.stop();
}
