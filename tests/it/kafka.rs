//! The Kafka bridge against a real Kafka-protocol broker (`tansu`, started
//! by the tests, or `KAFKA_BROKERS`), read back with a plain rdkafka
//! consumer: routed messages land in their topic with their key and
//! headers, publishers are acknowledged only after Kafka's delivery report,
//! a hung broker withholds acknowledgements instead of losing messages,
//! and a producer a broker fenced after a long hang is made again.

use std::time::Duration;

use crate::common::kafka::Kafka;
use crate::common::web::{http, metric};
use crate::common::*;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use tether::config::{RouteAck, RouteConfig, SourceConfig, SourceTarget};

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

/// Warms a route of `up/#` (metadata, producer id) with one acknowledged
/// message, `warm`, before a test pauses the broker.
async fn warm(dev: &mut V5) {
    dev.client
        .publish("up/warm", QoS::AtLeastOnce, false, "warm")
        .await
        .unwrap();
    dev.incoming(|p| matches!(p, Packet::PubAck(_))).await;
}

/// The payloads of `topic` after [`warm`]'s: `n` records besides it.
async fn after_warm(kafka: &Kafka, topic: &str, n: usize) -> Vec<String> {
    kafka
        .read(topic, n + 1)
        .await
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .filter(|p| p != "warm")
        .collect()
}

/// For the tests that pause the broker: our own tansu (`None`, and the
/// test is skipped, with `KAFKA_BROKERS`), a one-partition topic named
/// after `tag`, and a one-core gateway routing `up/#` there under `key`
/// (PUBACK after Kafka's report), with `tweak` on top.
async fn paused_setup(
    tag: &str,
    key: &'static str,
    tweak: impl FnOnce(&mut tether::Config) + Send + 'static,
) -> Option<(Kafka, String, tether::Gateway)> {
    let kafka = Kafka::start();
    if kafka.proc.is_none() {
        eprintln!("skipped: pausing needs our own tansu, not KAFKA_BROKERS");
        return None;
    }
    let topic = kafka.topic(tag, 1).await;
    let (brokers, t) = (kafka.brokers.clone(), topic.clone());
    let gw = gateway(1, move |c| {
        c.kafka.brokers = brokers;
        c.kafka.route = vec![route("up/#", &t, key, RouteAck::Kafka)];
        tweak(c);
    });
    Some((kafka, topic, gw))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_withholds_acks_and_loses_nothing_acknowledged() {
    let Some((kafka, topic, gw)) = paused_setup("hang", "%t", |c| {
        // A small bound, to see the publisher held back by it; a delivery
        // timeout longer than the hang, so every message gets through.
        c.runtime.max_outbound_inflight = 64;
        c.kafka.delivery_timeout_ms = 2 * HANG.as_millis() as u64;
    })
    .await
    else {
        return;
    };
    let mut dev = v5(&gw, v5_options(&gw, "pauser"), None).await;
    warm(&mut dev).await;

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
    // The broker's connections are up, but nothing is acknowledged: the
    // node says it is degraded, and why.
    let ready = http(gw.http_addr.unwrap(), "GET", "/readyz", &[], "");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("\"degraded\"") && ready.body.contains("no acknowledgement"),
        "{}",
        ready.body
    );
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
    let payloads = after_warm(&kafka, &topic, N).await;
    // In order, and once each: the producer is idempotent.
    assert_eq!(
        payloads,
        (0..N).map(|n| format!("p{n}")).collect::<Vec<_>>()
    );
    // Recovered without a restart.
    let ready = http(gw.http_addr.unwrap(), "GET", "/readyz", &[], "");
    assert_eq!(ready.status, 200, "{}", ready.body);
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_full_librdkafka_queue_turns_away_wait_their_turn() {
    let Some((kafka, topic, gw)) = paused_setup("full", "%c", |c| {
        // librdkafka's queue holds 5 messages: the rest meet "queue full"
        // and wait on the bridge thread, in order.
        c.kafka
            .producer
            .insert("queue.buffering.max.messages".into(), "5".into());
    })
    .await
    else {
        return;
    };
    let mut dev = v5(&gw, v5_options(&gw, "filler"), None).await;
    warm(&mut dev).await;

    kafka.pause(true);
    const N: usize = 60;
    for n in 0..N {
        dev.client
            .publish("up/x", QoS::AtLeastOnce, false, format!("q{n}"))
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    while metric(&gw, "tether_kafka_queue_full_total") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "librdkafka's queue never filled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kafka.pause(false);
    for _ in 0..N {
        match dev.incoming(|p| matches!(p, Packet::PubAck(_))).await {
            Packet::PubAck(a) => assert_eq!(a.reason as u8, 0, "acknowledged once Kafka has it"),
            _ => unreachable!(),
        }
    }
    let got = after_warm(&kafka, &topic, N).await;
    assert_eq!(got, (0..N).map(|n| format!("q{n}")).collect::<Vec<_>>());
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_delivery_timeout_mqtt5_gets_0x80_and_3_1_1_is_disconnected() {
    let Some((kafka, _topic, gw)) = paused_setup("timeout", "%c", |c| {
        c.kafka.delivery_timeout_ms = 1500;
    })
    .await
    else {
        return;
    };
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

/// How long a producer may take to take messages again after a broker
/// that hung past the delivery timeout is back (one new producer, its
/// producer id, metadata).
const RECOVERS_WITHIN: Duration = Duration::from_secs(20);

/// One MQTT 5 QoS 1 publish on a connection of its own: whether it was
/// acknowledged (`false`: PUBACK 0x80).
async fn publish_once(gw: &tether::Gateway, id: &str) -> bool {
    let mut c = v5(gw, v5_options(gw, id), None).await;
    c.client
        .publish("up/probe", QoS::AtLeastOnce, false, id.to_string())
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, c.events.recv())
            .await
            .expect("a PUBACK in time")
        {
            Some(Ok(rumqttc::v5::Event::Incoming(Packet::PubAck(a)))) => {
                return a.reason as u8 == 0
            }
            Some(Ok(_)) => {}
            Some(Err(e)) if e.contains("PubAckFail") => return false,
            other => panic!("the probe's connection ended: {other:?}"),
        }
    }
}

/// The broker hangs past `kafka.delivery_timeout_ms`; when it is back, the
/// idempotent producer's id may be fenced, and librdkafka then refuses
/// every message for good. The node makes a new producer, and `/readyz`
/// tells the truth meanwhile: not ready while messages fail, ready once
/// they go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_hang_past_the_delivery_timeout_publishes_are_acknowledged_again() {
    let Some((kafka, _topic, gw)) = paused_setup("fenced", "%c", |c| {
        c.kafka.delivery_timeout_ms = 1500;
    })
    .await
    else {
        return;
    };
    let readyz = || http(gw.http_addr.unwrap(), "GET", "/readyz", &[], "");
    assert!(publish_once(&gw, "before").await, "Kafka takes messages");
    kafka.pause(true);
    assert!(!publish_once(&gw, "during").await, "0x80 past the timeout");
    // Nothing in flight any more, the broker's connections still up: the
    // failure alone says Kafka is not taking messages.
    let r = readyz();
    assert_eq!(r.status, 503, "not ready while Kafka hangs: {}", r.body);
    kafka.pause(false);

    let deadline = tokio::time::Instant::now() + RECOVERS_WITHIN;
    let mut attempt = 0;
    loop {
        attempt += 1;
        if publish_once(&gw, &format!("after-{attempt}")).await {
            break;
        }
        let r = readyz();
        assert_eq!(
            r.status, 503,
            "a message just failed, yet ready: {}",
            r.body
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message acknowledged within {RECOVERS_WITHIN:?} after the broker came back \
             ({attempt} tries; {} new producers)",
            metric(&gw, "tether_kafka_producer_rebuilds_total")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = readyz();
        if r.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz not ready again after a message went through: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(publish_once(&gw, "later").await, "and it stays so");
    eprintln!(
        "acknowledged again after {attempt} tries; {} new producers",
        metric(&gw, "tether_kafka_producer_rebuilds_total")
    );
    gw.stop();
}

pub(crate) fn source(topic: &str, to: SourceTarget, from: Option<&str>) -> SourceConfig {
    SourceConfig {
        topic: topic.into(),
        to,
        from: from.map(str::to_string),
        qos: 1,
        skip_own: true,
        fanout: Default::default(),
        receipts: false,
    }
}

/// Consumers start at the oldest record: a test produces before the
/// node's group has joined.
pub(crate) fn from_the_start(c: &mut tether::Config) {
    c.kafka
        .consumer
        .insert("auto.offset.reset".into(), "earliest".into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_pushes_through_kafka_to_a_user_a_client_a_topic_and_everyone() {
    let kafka = Kafka::start();
    let (users, clients, topics, all) = (
        kafka.topic("push-users", 2).await,
        kafka.topic("push-clients", 2).await,
        kafka.topic("push-topics", 2).await,
        kafka.topic("push-all", 1).await,
    );
    let brokers = kafka.brokers.clone();
    let sources = vec![
        source(&users, SourceTarget::User, None),
        source(&clients, SourceTarget::Client, Some("${header.to}")),
        source(&topics, SourceTarget::Topic, None),
        source(&all, SourceTarget::Broadcast, None),
    ];
    let gw = gateway(2, move |c| {
        c.kafka.brokers = brokers;
        c.kafka.source = sources;
        from_the_start(c);
        c.kafka
            .consumer
            .insert("auto.commit.interval.ms".into(), "1000".into());
    });
    let mut ann = v5(&gw, v5_options(&gw, "ann-phone"), None).await;
    ann.subscribe("user/ann/inbox", QoS::AtLeastOnce).await;
    ann.subscribe("broadcast", QoS::AtLeastOnce).await;
    let mut dev = v5(&gw, v5_options(&gw, "dev-9"), None).await;
    dev.subscribe("client/dev-9/inbox", QoS::AtLeastOnce).await;
    dev.subscribe("quotes/#", QoS::AtLeastOnce).await;
    dev.subscribe("broadcast", QoS::AtLeastOnce).await;

    kafka
        .produce(&users, "ann", b"to ann", &[("trace", "t-1")])
        .await;
    kafka
        .produce(&clients, "ignored", b"to dev-9", &[("to", "dev-9")])
        .await;
    kafka
        .produce(&topics, "k", b"42.1", &[("x-mqtt-topic", "quotes/ACME")])
        .await;
    // A broadcast needs no key.
    kafka.produce_without_key(&all, b"to all").await;

    // Records of different topics may come in any order.
    let (a, b) = (ann.publish().await, ann.publish().await);
    let (user, all) = if &a.topic[..] == b"broadcast" {
        (b, a)
    } else {
        (a, b)
    };
    assert_eq!(
        (&user.topic[..], &user.payload[..]),
        (&b"user/ann/inbox"[..], &b"to ann"[..])
    );
    let props = user
        .properties
        .expect("the record's headers as user properties");
    assert!(props
        .user_properties
        .contains(&("trace".into(), "t-1".into())));
    assert_eq!(
        (&all.topic[..], &all.payload[..]),
        (&b"broadcast"[..], &b"to all"[..])
    );
    let mut got: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for _ in 0..3 {
        let p = dev.publish().await;
        got.push((p.topic.to_vec(), p.payload.to_vec()));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            (b"broadcast".to_vec(), b"to all".to_vec()),
            (b"client/dev-9/inbox".to_vec(), b"to dev-9".to_vec()),
            (b"quotes/ACME".to_vec(), b"42.1".to_vec()),
        ]
    );
    crate::common::until("the records are counted delivered", || {
        metric(&gw, "tether_kafka_records_delivered_total") >= 4.0
    })
    .await;
    // Lag per partition of every source (a partition that never had a
    // record has none), 0 once the offsets are committed (every second).
    let lag = format!("tether_kafka_consumer_lag{{topic=\"{users}\",partition=");
    crate::common::until("the consumer's lag, caught up", || {
        let body = http(gw.http_addr.unwrap(), "GET", "/metrics", &[], "").body;
        let lines: Vec<&str> = body.lines().filter(|l| l.starts_with(&lag)).collect();
        !lines.is_empty() && lines.iter().all(|l| l.ends_with(" 0"))
    })
    .await;
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_filters_between_two_topics() {
    // Mode 4: clients' messages go to one topic, a backend reads it and
    // writes what passes to another, which comes back to MQTT.
    let kafka = Kafka::start();
    let raw = kafka.topic("raw", 1).await;
    let clean = kafka.topic("clean", 1).await;
    let (brokers, r, c2) = (kafka.brokers.clone(), raw.clone(), clean.clone());
    let gw = gateway(1, move |c| {
        c.kafka.brokers = brokers;
        c.kafka.route = vec![route("comments/raw/+", &r, "%t", RouteAck::Kafka)];
        c.kafka.source = vec![source(&c2, SourceTarget::Topic, None)];
        from_the_start(c);
    });
    let mut reader = v5(&gw, v5_options(&gw, "reader"), None).await;
    reader.subscribe("comments/clean/#", QoS::AtLeastOnce).await;
    let mut writer = v5(&gw, v5_options(&gw, "writer"), None).await;
    for text in ["nice", "SPAM", "thanks"] {
        writer
            .client
            .publish("comments/raw/live1", QoS::AtLeastOnce, false, text)
            .await
            .unwrap();
        writer.incoming(|p| matches!(p, Packet::PubAck(_))).await;
    }
    // The backend: an independent consumer and producer.
    for r in kafka.read(&raw, 3).await {
        let text = String::from_utf8(r.payload.clone()).unwrap();
        if text != "SPAM" {
            let topic = r.headers["x-mqtt-topic"].replace("/raw/", "/clean/");
            kafka
                .produce(&clean, "k", text.as_bytes(), &[("x-mqtt-topic", &topic)])
                .await;
        }
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = reader.publish().await;
        assert_eq!(&p.topic[..], b"comments/clean/live1");
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["nice", "thanks"]);
    gw.stop();
}

/// `TETHER_*` settings that put a node on `kafka` with a route of `chat/#`
/// to `bus` and `bus` as a source (mode 2: messaging across nodes).
fn bus_env(kafka: &Kafka, bus: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TETHER_KAFKA__BROKERS", format!("\"{}\"", kafka.brokers)),
        (
            "TETHER_KAFKA__ROUTE",
            format!("[{{filter = \"chat/#\", topic = \"{bus}\", key = \"%c\"}}]"),
        ),
        ("TETHER_KAFKA__SOURCE", format!("[{{topic = \"{bus}\"}}]")),
        (
            "TETHER_KAFKA__CONSUMER",
            "{\"auto.offset.reset\" = \"earliest\"}".into(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_pub_sub_through_kafka_without_loss_or_reordering() {
    use crate::common::cluster::{Node, Redis};
    let redis = Redis::start();
    let kafka = Kafka::start();
    let bus = kafka.topic("bus", 3).await;
    let mut env = bus_env(&kafka, &bus);
    // Records from Kafka arrive in bursts of up to a window of 256; a
    // debug-built rumqttc subscriber may fall behind by more than the
    // default queue of 1000 and be disconnected as a slow consumer, which
    // is not what this test is about.
    env.push(("TETHER_SESSION__MAX_QUEUED_MESSAGES", "20000".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let nodes: Vec<Node> = (1..=3)
        .map(|id| Node::start(id, &redis.url(), &env))
        .collect();
    let opts = |node: &Node, id: &str| {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", node.mqtt);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_inflight(100);
        o
    };
    // A subscriber on every node.
    let mut subs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (client, mut events, task) = crate::common::pump(opts(node, &format!("sub-{i}")));
        client
            .subscribe("chat/#", rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(WAIT, events.recv())
                .await
                .expect("SUBACK")
            {
                Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) => break,
                Some(Ok(_)) => {}
                other => panic!("subscriber {i}: {other:?}"),
            }
        }
        subs.push((client, events, task));
    }
    // A publisher on every node: 10,000 QoS 1 messages in all.
    const PER: u32 = 3334;
    for (i, node) in nodes.iter().enumerate() {
        let (client, mut events, _task) = crate::common::pump(opts(node, &format!("pub-{i}")));
        tokio::spawn(async move {
            let _keep = _task;
            for n in 0..PER {
                client
                    .publish(
                        format!("chat/room-{i}"),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        format!("{i}:{n}"),
                    )
                    .await
                    .unwrap();
            }
            while events.recv().await.is_some() {}
        });
    }
    // Every subscriber: every message, each publisher's in order.
    for (s, (_client, events, _)) in subs.iter_mut().enumerate() {
        let mut next = [0u32; 3];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while next.iter().any(|&n| n < PER) {
            let ev = tokio::time::timeout_at(deadline, events.recv())
                .await
                .unwrap_or_else(|_| panic!("subscriber {s} stalled at {next:?}"));
            let p = match ev {
                Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => p,
                Some(Ok(_)) => continue,
                other => panic!("subscriber {s} at {next:?}: {other:?}"),
            };
            {
                let text = String::from_utf8(p.payload.to_vec()).unwrap();
                let (who, n) = text.split_once(':').unwrap();
                let (who, n): (usize, u32) = (who.parse().unwrap(), n.parse().unwrap());
                // A redelivery may repeat an earlier one; nothing is skipped.
                assert!(
                    n <= next[who],
                    "subscriber {s}: {who}:{n} after {}",
                    next[who]
                );
                if n == next[who] {
                    next[who] += 1;
                }
            }
        }
    }
}

type Events = tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>;

/// A client on `port` subscribed to `broadcast`.
async fn listen(id: u16, port: u16) -> (rumqttc::AsyncClient, Events, tokio::task::JoinHandle<()>) {
    let mut o = rumqttc::MqttOptions::new(format!("phone-{id}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events, task) = crate::common::pump(o);
    client
        .subscribe("broadcast", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("SUBACK")
        {
            Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) => break,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    (client, events, task)
}

/// The payloads of the next 20 messages.
async fn twenty(events: &mut Events, who: &str) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < 20 {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{who}: records in time, {} so far", got.len()))
        {
            Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                got.push(String::from_utf8(p.payload.to_vec()).unwrap())
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_a_killed_consumer_are_delivered_again() {
    use crate::common::cluster::{Node, Redis};
    let redis = Redis::start();
    let kafka = Kafka::start();
    let push = kafka.topic("push", 1).await;
    let env = [
        ("TETHER_KAFKA__BROKERS", format!("\"{}\"", kafka.brokers)),
        (
            "TETHER_KAFKA__SOURCE",
            format!("[{{topic = \"{push}\", to = \"broadcast\"}}]"),
        ),
        // One group for both nodes, and no commit before the kill.
        ("TETHER_KAFKA__GROUP", "\"push-workers\"".into()),
        (
            "TETHER_KAFKA__CONSUMER",
            concat!(
                "{\"auto.offset.reset\" = \"earliest\", \"auto.commit.interval.ms\" = \"600000\", ",
                // The dead member's partitions move once the broker
                // notices it is gone: within a session timeout.
                "\"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"1000\"}"
            )
            .into(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut first = Node::start(1, &redis.url(), &env);
    let (_c1, mut ev1, _t1) = listen(first.id, first.mqtt).await;
    for n in 0..20 {
        kafka
            .produce(&push, "k", format!("r{n}").as_bytes(), &[])
            .await;
    }
    let want: Vec<String> = (0..20).map(|n| format!("r{n}")).collect();
    assert_eq!(twenty(&mut ev1, "first node").await, want);
    first.proc.kill9();
    // The group's next member starts from the last committed offset:
    // nothing was committed, so everything comes again.
    let second = Node::start(2, &redis.url(), &env);
    let (_c2, mut ev2, _t2) = listen(second.id, second.mqtt).await;
    assert_eq!(twenty(&mut ev2, "second node").await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_broker_up_the_node_is_degraded_not_ready() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = gateway(1, move |c| {
        c.kafka.brokers = format!("127.0.0.1:{port}");
        c.kafka.route = vec![route("up/#", "nowhere", "%c", RouteAck::Kafka)];
    });
    crate::common::until("/readyz says no broker is up", || {
        let r = http(gw.http_addr.unwrap(), "GET", "/readyz", &[], "");
        r.status == 503 && r.body.contains("no broker is up")
    })
    .await;
    // MQTT still serves what does not need Kafka.
    let mut c = v5(&gw, v5_options(&gw, "local"), None).await;
    c.subscribe("here/#", QoS::AtLeastOnce).await;
    c.client
        .publish("here/now", QoS::AtLeastOnce, false, "local")
        .await
        .unwrap();
    assert_eq!(&c.publish().await.payload[..], b"local");
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_pushes_reach_every_node_through_the_push_topic() {
    use crate::common::cluster::{Node, Redis};
    let redis = Redis::start();
    let kafka = Kafka::start();
    let push = kafka.topic("api-push", 2).await;
    let receipts = kafka.topic("api-receipts", 1).await;
    let env = [
        ("TETHER_KAFKA__BROKERS", format!("\"{}\"", kafka.brokers)),
        ("TETHER_KAFKA__PUSH_TOPIC", format!("\"{push}\"")),
        ("TETHER_KAFKA__RECEIPTS_TOPIC", format!("\"{receipts}\"")),
        (
            "TETHER_KAFKA__CONSUMER",
            "{\"auto.offset.reset\" = \"earliest\"}".into(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let one = Node::start(1, &redis.url(), &env);
    let two = Node::start(2, &redis.url(), &env);
    let api = |node: &Node, path: &str, body: &str| {
        http(
            std::net::SocketAddr::from(([127, 0, 0, 1], node.http)),
            "POST",
            path,
            &["Content-Type: application/json"],
            body,
        )
    };
    // Alice's phone is on node 2; the backend asks node 1.
    let mut o = rumqttc::MqttOptions::new("alice-phone", "127.0.0.1", two.mqtt);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_credentials("alice", "pw");
    let (phone, mut events, _task) = crate::common::pump(o);
    phone
        .subscribe("user/alice/inbox", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    while !matches!(next_packet(&mut events).await, rumqttc::Packet::SubAck(_)) {}

    for n in 0..5 {
        let r = api(
            &one,
            "/v1/push/users/alice",
            &format!("{{\"payload\": \"p{n}\", \"qos\": 1}}"),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("\"id\":\"ff"), "a push id: {}", r.body);
    }
    // In order: one user's pushes share a key, so a partition.
    for n in 0..5 {
        match next_packet(&mut events).await {
            rumqttc::Packet::Publish(p) => {
                assert_eq!(&p.topic[..], "user/alice/inbox");
                assert_eq!(p.qos, rumqttc::QoS::AtLeastOnce);
                assert_eq!(&p.payload[..], format!("p{n}").as_bytes());
            }
            other => panic!("{other:?}"),
        }
    }
    // A push that asks for receipts: the node that delivers it (2, not
    // the one the backend asked) reports the phone's acknowledgement.
    let r = api(
        &one,
        "/v1/push/users/alice",
        r#"{"payload": "with receipt", "qos": 1, "receipts": true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    match next_packet(&mut events).await {
        rumqttc::Packet::Publish(p) => assert_eq!(&p.payload[..], b"with receipt"),
        other => panic!("{other:?}"),
    }
    let got = kafka.read(&receipts, 1).await;
    let body: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(
        (
            body["id"].as_str(),
            body["client_id"].as_str(),
            body["username"].as_str(),
            body["node"].as_u64(),
            body["outcome"].as_str()
        ),
        (
            Some(id.as_str()),
            Some("alice-phone"),
            Some("alice"),
            Some(2),
            Some("acked")
        ),
        "{body}"
    );

    // A retained publish on node 1 is retained on node 2 too.
    let r = api(
        &one,
        "/v1/publish",
        r#"{"topic": "status/fleet", "payload": "green", "qos": 1, "retain": true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Wait until node 2 has it: its subscriber hears it live.
    let mut w = rumqttc::MqttOptions::new("watcher", "127.0.0.1", two.mqtt);
    w.set_keep_alive(Duration::from_secs(30));
    let (watcher, mut wev, _wt) = crate::common::pump(w);
    watcher
        .subscribe("status/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let rumqttc::Packet::Publish(p) = next_packet(&mut wev).await {
            assert_eq!(&p.payload[..], b"green");
            break;
        }
    }
    // A new subscriber gets it as retained. Each core of node 2 holds a
    // replica that the topic's owner core updates (docs/design/engine.md,
    // "Retained messages"): a core other than the one the watcher heard it
    // on may get the update a mesh hop later, so a SUBSCRIBE that beats it
    // finds nothing and the subscriber asks again (bounded).
    let mut late = rumqttc::MqttOptions::new("late", "127.0.0.1", two.mqtt);
    late.set_keep_alive(Duration::from_secs(30));
    let (late_c, mut lev, _lt) = crate::common::pump(late);
    let mut asked = 0;
    'retained: loop {
        asked += 1;
        assert!(asked <= 20, "no retained message after {asked} SUBSCRIBEs");
        late_c
            .subscribe("status/fleet", rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        while !matches!(next_packet(&mut lev).await, rumqttc::Packet::SubAck(_)) {}
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(p) = tokio::time::timeout_at(deadline, next_packet(&mut lev)).await {
            if let rumqttc::Packet::Publish(p) = p {
                assert!(p.retain, "a retained message for a new subscriber");
                assert_eq!(&p.payload[..], b"green");
                break 'retained;
            }
        }
    }
    // Not a topic name: refused at once, nothing produced.
    let r = api(&one, "/v1/publish", r#"{"topic": "a/+/b", "payload": "x"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_and_disconnects_become_records_of_the_events_topic() {
    let kafka = Kafka::start();
    let events = kafka.topic("events", 1).await;
    let (brokers, t) = (kafka.brokers.clone(), events.clone());
    let gw = gateway(1, move |c| {
        c.kafka.brokers = brokers;
        c.kafka.events_topic = t;
    });
    let mut opts = v5_options(&gw, "ev-1");
    opts.set_credentials("eve", "pw");
    let dev = v5(&gw, opts, None).await;
    dev.client.disconnect().await.unwrap();
    let got = kafka.read(&events, 2).await;
    let kinds: Vec<&str> = got.iter().map(|r| r.headers["x-event"].as_str()).collect();
    assert_eq!(kinds, ["connect", "disconnect"]);
    for r in &got {
        assert_eq!(r.key.as_deref(), Some("ev-1"));
        assert_eq!(r.headers["x-client"], "ev-1");
        assert_eq!(r.headers["x-uid"], "eve");
        assert_eq!(r.headers["x-node"], "1");
        let body: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(body["client_id"], "ev-1");
        assert_eq!(body["username"], "eve");
        assert_eq!(body["transport"], "mqtt", "plain MQTT over TCP");
    }
    let bye: serde_json::Value = serde_json::from_slice(&got[1].payload).unwrap();
    assert_eq!(bye["graceful"], true, "the client sent DISCONNECT");
    gw.stop();
}

/// `tuning/grafana/tether.json` (the shipped dashboard) asks only for
/// metrics a node serves: every `tether_*` name in every panel's
/// expression is in the `/metrics` of a node with every bridge on (Redis
/// sessions, a Kafka route and source, the gRPC API and its Upstream
/// streams). A renamed metric fails here, not on
/// an operator's empty panel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_names_only_metrics_a_node_serves() {
    use crate::common::cluster::{Node, Redis};
    let redis = Redis::start();
    let kafka = Kafka::start();
    let out = kafka.topic("dash-out", 1).await;
    let inbound = kafka.topic("dash-in", 1).await;
    let route = format!("[{{filter = \"tel/#\", topic = \"{out}\"}}]");
    let source = format!("[{{topic = \"{inbound}\", to = \"user\", from = \"${{key}}\"}}]");
    let brokers = kafka.brokers.clone();
    let env = [
        ("TETHER_KAFKA__BROKERS", brokers.as_str()),
        ("TETHER_KAFKA__ROUTE", route.as_str()),
        ("TETHER_KAFKA__SOURCE", source.as_str()),
        ("TETHER_GRPC__LISTEN", "\"127.0.0.1:0\""),
    ];
    let node = Node::start(1, &redis.url(), &env);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], node.http));
    let scrape = tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics", &[], ""))
        .await
        .unwrap();
    assert_eq!(scrape.status, 200);
    let served: std::collections::BTreeSet<String> = scrape
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/grafana/tether.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = std::collections::BTreeSet::new();
    let mut names = std::collections::BTreeSet::new();
    let mut exprs = 0;
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        assert!(
            p["gridPos"]["w"].as_u64().unwrap() <= 24,
            "{} fits the grid",
            p["title"]
        );
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().expect("a PromQL expression");
            exprs += 1;
            assert!(
                e.contains("$instance"),
                "{e}: filtered by the node variable"
            );
            let mut rest = e;
            while let Some(i) = rest.find("tether_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                names.insert(name);
            }
        }
    }
    assert!(
        exprs >= 40,
        "the dashboard has its panels ({exprs} expressions)"
    );
    let missing: Vec<_> = names.iter().filter(|n| !served.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard asks for metrics the node does not serve: {missing:?}"
    );
    for family in [
        "tether_store_latency_seconds_bucket",
        "tether_kafka_produced_total",
        "tether_loop_lag_seconds_bucket",
    ] {
        assert!(names.contains(family), "the dashboard shows {family}");
    }
}
