//! The Kafka bridge against a real Kafka-protocol broker (`tansu`, started
//! by the tests, or `KAFKA_BROKERS`), read back with a plain rdkafka
//! consumer: routed messages land in their topic with their key and
//! headers, publishers are acknowledged only after Kafka's delivery report,
//! and a hung broker withholds acknowledgements instead of losing messages.

mod common;

use std::time::Duration;

use common::kafka::Kafka;
use common::web::http;
use common::*;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use tether::config::{RouteAck, RouteConfig};

/// How long the broker hangs (SIGSTOP) while publishers run.
const HANG: Duration = Duration::from_secs(30);

fn route(filter: &str, topic: &str, key: &str, ack: RouteAck) -> RouteConfig {
    RouteConfig {
        filter: filter.into(),
        topic: topic.into(),
        key: key.into(),
        ack,
    }
}

/// A figure from the gateway's `/metrics`.
fn metric(gw: &tether::Gateway, name: &str) -> f64 {
    http(gw.http_addr.unwrap(), "GET", "/metrics", &[], "")
        .body
        .lines()
        .filter(|l| l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_messages_land_in_kafka_with_key_and_headers_before_their_puback() {
    let kafka = Kafka::start();
    let telemetry = kafka.topic("telemetry", 3).await;
    let (brokers, t) = (kafka.brokers.clone(), telemetry.clone());
    let gw = gateway(2, move |c| {
        c.kafka.brokers = brokers;
        c.kafka.route = vec![route("report/+/telemetry", &t, "%c", RouteAck::Kafka)];
    });
    // A local subscriber still gets routed messages.
    let mut local = v5(&gw, v5_options(&gw, "watcher"), None).await;
    local.subscribe("report/#", QoS::AtLeastOnce).await;

    let mut opts = v5_options(&gw, "dev-7");
    opts.set_credentials("ann", "pw");
    let mut dev = v5(&gw, opts, None).await;
    const N: usize = 50;
    for n in 0..N {
        let props = PublishProperties {
            user_properties: vec![("trace".into(), format!("t{n}"))],
            ..Default::default()
        };
        dev.client
            .publish_with_properties(
                "report/dev-7/telemetry",
                QoS::AtLeastOnce,
                false,
                format!("m{n}"),
                props,
            )
            .await
            .unwrap();
    }
    // Not routed: stays local.
    dev.client
        .publish("report/dev-7/log", QoS::AtLeastOnce, false, "local only")
        .await
        .unwrap();
    for _ in 0..=N {
        match dev.incoming(|p| matches!(p, Packet::PubAck(_))).await {
            Packet::PubAck(a) => assert_eq!(a.reason as u8, 0, "PUBACK success"),
            _ => unreachable!(),
        }
    }
    for _ in 0..=N {
        local.publish().await;
    }

    let records = kafka.read(&telemetry, N).await;
    // One key, one partition: Kafka keeps the publish order.
    let payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect();
    assert_eq!(
        payloads,
        (0..N).map(|n| format!("m{n}")).collect::<Vec<_>>()
    );
    for (n, r) in records.iter().enumerate() {
        assert_eq!(r.key.as_deref(), Some("dev-7"));
        let h = &r.headers;
        assert_eq!(h["x-client"], "dev-7");
        assert_eq!(h["x-uid"], "ann");
        assert_eq!(h["x-event"], "publish");
        assert_eq!(h["x-node"], "1");
        assert_eq!(h["x-mqtt-topic"], "report/dev-7/telemetry");
        assert_eq!(h["x-qos"], "1");
        assert_eq!(h["x-id"].len(), 16, "the message id, hex: {h:?}");
        assert_eq!(
            h["trace"],
            format!("t{n}"),
            "user properties travel as headers"
        );
    }
    assert!(metric(&gw, "tether_kafka_produced_total") >= N as f64);
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_withholds_acks_and_loses_nothing_acknowledged() {
    let kafka = Kafka::start();
    if kafka.proc.is_none() {
        return eprintln!("skipped: pausing needs our own tansu, not KAFKA_BROKERS");
    }
    let topic = kafka.topic("hang", 1).await;
    let (brokers, t) = (kafka.brokers.clone(), topic.clone());
    let gw = gateway(1, move |c| {
        c.kafka.brokers = brokers;
        c.kafka.route = vec![route("up/#", &t, "%t", RouteAck::Kafka)];
        // A small bound, to see the publisher held back by it; a delivery
        // timeout longer than the hang, so every message gets through.
        c.runtime.max_outbound_inflight = 64;
        c.kafka.delivery_timeout_ms = 2 * HANG.as_millis() as u64;
    });
    let mut dev = v5(&gw, v5_options(&gw, "pauser"), None).await;
    // Warm the route (metadata, producer id) before the hang.
    dev.client
        .publish("up/warm", QoS::AtLeastOnce, false, "warm")
        .await
        .unwrap();
    dev.incoming(|p| matches!(p, Packet::PubAck(_))).await;

    kafka.pause(true);
    const N: usize = 200;
    let client = dev.client.clone();
    tokio::spawn(async move {
        for n in 0..N {
            let _ = client
                .publish("up/x", QoS::AtLeastOnce, false, format!("p{n}"))
                .await;
        }
    });
    // While the broker hangs, nothing is acknowledged, and what waits on
    // Kafka stays within the core's bound.
    let until = tokio::time::Instant::now() + HANG;
    while let Ok(ev) = tokio::time::timeout_at(until, dev.events.recv()).await {
        match ev {
            Some(Ok(rumqttc::v5::Event::Incoming(Packet::PubAck(a)))) => {
                panic!("a PUBACK while Kafka hangs: {a:?}")
            }
            Some(Ok(_)) => {}
            other => panic!("the publisher's connection ended: {other:?}"),
        }
    }
    assert!(metric(&gw, "tether_kafka_inflight") <= 64.0);
    assert!(metric(&gw, "tether_outbound_inflight") <= 64.0);
    assert!(
        metric(&gw, "tether_kafka_produced_total") <= 1.0,
        "only the warm-up went through"
    );

    kafka.pause(false);
    for _ in 0..N {
        match dev.incoming(|p| matches!(p, Packet::PubAck(_))).await {
            Packet::PubAck(a) => assert_eq!(a.reason as u8, 0, "acknowledged once Kafka has it"),
            _ => unreachable!(),
        }
    }
    let got = kafka.read(&topic, N + 1).await;
    let payloads: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .filter(|p| p != "warm")
        .collect();
    // In order, and once each: the producer is idempotent.
    assert_eq!(
        payloads,
        (0..N).map(|n| format!("p{n}")).collect::<Vec<_>>()
    );
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_delivery_timeout_mqtt5_gets_0x80_and_3_1_1_is_disconnected() {
    let kafka = Kafka::start();
    if kafka.proc.is_none() {
        return eprintln!("skipped: pausing needs our own tansu, not KAFKA_BROKERS");
    }
    let topic = kafka.topic("timeout", 1).await;
    let (brokers, t) = (kafka.brokers.clone(), topic.clone());
    let gw = gateway(1, move |c| {
        c.kafka.brokers = brokers;
        c.kafka.delivery_timeout_ms = 1500;
        c.kafka.route = vec![route("up/#", &t, "%c", RouteAck::Kafka)];
    });
    let mut v5c = v5(&gw, v5_options(&gw, "five"), None).await;
    let mut v4c = v4(&gw, v4_options(&gw, "four", true), None).await;
    v5c.client
        .publish("up/warm", QoS::AtLeastOnce, false, "warm")
        .await
        .unwrap();
    v5c.incoming(|p| matches!(p, Packet::PubAck(_))).await;

    kafka.pause(true);
    v5c.client
        .publish("up/five", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    v4c.client
        .publish("up/four", rumqttc::QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    // rumqttc reports a PUBACK with a failure reason as an error.
    loop {
        match tokio::time::timeout(WAIT, v5c.events.recv())
            .await
            .expect("the MQTT 5 publisher hears in time")
        {
            Some(Ok(rumqttc::v5::Event::Incoming(Packet::PubAck(a)))) => {
                assert_eq!(a.reason as u8, 0x80, "MQTT 5: unspecified error");
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                assert!(
                    e.contains("PubAckFail { reason: UnspecifiedError }"),
                    "PUBACK 0x80, got {e}"
                );
                break;
            }
            None => panic!("the MQTT 5 connection ended without a PUBACK"),
        }
    }
    loop {
        match tokio::time::timeout(WAIT, v4c.events.recv())
            .await
            .expect("the 3.1.1 publisher hears in time")
        {
            Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => {
                panic!("a 3.1.1 PUBACK for a message Kafka never took")
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    kafka.pause(false);
    assert!(metric(&gw, "tether_kafka_timed_out_total") >= 2.0);
    gw.stop();
}
