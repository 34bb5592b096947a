//! MQTT 5 per-delivery properties: subscription identifiers (one copy per
//! session carrying every matching identifier) and message expiry (expired
//! messages never delivered, the remaining interval forwarded).

use std::time::Duration;

use crate::common::*;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, PublishProperties, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS as Q5;

async fn subscribe_with_id(c: &mut V5, filter: &str, id: usize) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    let props = SubscribeProperties {
        id: Some(id),
        user_properties: vec![],
    };
    c.client
        .subscribe_with_properties(filter, Q5::AtLeastOnce, props)
        .await
        .unwrap();
    c.incoming(|p| matches!(p, Packet::SubAck(_))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_copy_carries_every_matching_subscription_identifier() {
    let gw = gateway(2, |_| {});
    let mut sub = v5(&gw, v5_options(&gw, "ids"), Some(0)).await;
    assert_ne!(
        sub.connack
            .properties
            .as_ref()
            .and_then(|p| p.subscription_identifiers_available),
        Some(0)
    );
    subscribe_with_id(&mut sub, "s/+", 7).await;
    subscribe_with_id(&mut sub, "s/#", 9).await;
    sub.subscribe("s/b", Q5::AtMostOnce).await; // no identifier
    let publ = v5(&gw, v5_options(&gw, "ids-pub"), Some(1)).await;
    publ.client
        .publish("s/a", Q5::AtLeastOnce, false, "x")
        .await
        .unwrap();
    publ.client
        .publish("s/b", Q5::AtLeastOnce, false, "y")
        .await
        .unwrap();
    let a = sub.publish().await;
    assert_eq!(&a.topic[..], b"s/a");
    let mut ids = a.properties.expect("properties").subscription_identifiers;
    ids.sort();
    assert_eq!(ids, vec![7, 9]);
    let b = sub.publish().await;
    assert_eq!(
        &b.topic[..],
        b"s/b",
        "one copy of s/a, not one per subscription"
    );
    let mut ids = b.properties.expect("properties").subscription_identifiers;
    ids.sort();
    assert_eq!(
        ids,
        vec![7, 9],
        "the identifier-less subscription adds none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_never_delivered_and_the_rest_carry_what_is_left() {
    let gw = gateway(2, |_| {});
    let mut o = v5_options(&gw, "exp");
    o.set_clean_start(false);
    o.set_connect_properties(ConnectProperties {
        session_expiry_interval: Some(60),
        ..Default::default()
    });
    let mut sub = v5(&gw, o.clone(), None).await;
    sub.subscribe("e/#", Q5::AtLeastOnce).await;
    drop(sub);
    until("the subscriber to go offline", || {
        gw.stats().connections == 0
    })
    .await;

    let publ = v5(&gw, v5_options(&gw, "exp-pub"), None).await;
    for (topic, secs) in [("e/short", 1), ("e/long", 60)] {
        let props = PublishProperties {
            message_expiry_interval: Some(secs),
            ..Default::default()
        };
        publ.client
            .publish_with_properties(topic, Q5::AtLeastOnce, false, "m", props)
            .await
            .unwrap();
    }
    // Let the short one's interval run out while it waits in the session queue.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut sub = v5(&gw, o, None).await;
    assert!(sub.connack.session_present);
    let p = sub.publish().await;
    assert_eq!(&p.topic[..], b"e/long", "e/short expired while queued");
    let left = p
        .properties
        .and_then(|p| p.message_expiry_interval)
        .expect("remaining interval");
    assert!((1..=59).contains(&left), "remaining {left}");
    assert_eq!(gw.stats().dropped_expired, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_statistics_are_published_and_hidden_from_root_wildcards() {
    let gw = gateway(2, |c| c.sys.interval_secs = 1);
    let mut all = v4(&gw, v4_options(&gw, "everything", true), None).await;
    all.subscribe("#", rumqttc::QoS::AtMostOnce).await;
    let mut sys = v4(&gw, v4_options(&gw, "sys-reader", true), None).await;
    sys.subscribe("$SYS/broker/#", rumqttc::QoS::AtMostOnce)
        .await;
    // The retained figures arrive at once; the next update counts both clients.
    loop {
        let p = sys.publish().await;
        assert!(p.topic.starts_with("$SYS/broker/"), "{}", p.topic);
        if p.topic == "$SYS/broker/clients/connected" && &p.payload[..] == b"2" {
            break;
        }
    }
    let publ = v4(&gw, v4_options(&gw, "plain", true), None).await;
    publ.client
        .publish("plain/topic", rumqttc::QoS::AtMostOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(
        all.publish().await.topic,
        "plain/topic",
        "'#' does not match $SYS topics"
    );
}

#[test]
fn gateway_assigns_topic_aliases_with_lru_rebinding() {
    use tether::codec::{self, Packet, Properties, Version};
    let gw = gateway(2, |_| {});
    let mut sub = Raw::open(gw.tcp_addr);
    let properties = Properties {
        topic_alias_maximum: Some(2),
        ..Default::default()
    };
    sub.send(&Packet::Connect(Box::new(codec::Connect {
        properties,
        ..connect_packet("alias-sub", Version::V5)
    })));
    assert!(matches!(sub.recv(), Some(Packet::ConnAck(a)) if a.code == 0));
    sub.send(&Packet::Subscribe(codec::Subscribe {
        pkid: 1,
        filters: vec![(
            "ta/#".into(),
            codec::SubOptions::qos(codec::QoS::AtMostOnce),
        )],
        properties: Default::default(),
    }));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    let mut publ = Raw::connected(gw.tcp_addr, "alias-pub", Version::V311);
    let expected = [
        ("ta/a", "ta/a", Some(1)), // bind 1
        ("ta/a", "", Some(1)),     // reuse
        ("ta/b", "ta/b", Some(2)), // bind 2
        ("ta/c", "ta/c", Some(1)), // full: rebind the least recently used (ta/a)
        ("ta/b", "", Some(2)),
        ("ta/a", "ta/a", Some(1)), // ta/c is now the oldest
    ];
    for (topic, wire_topic, alias) in expected {
        publ.send(&Packet::Publish(codec::Publish {
            dup: false,
            qos: codec::QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            pkid: 0,
            properties: Default::default(),
            payload: bytes::Bytes::from(topic),
        }));
        match sub.recv() {
            Some(Packet::Publish(p)) => {
                assert_eq!(
                    (p.topic.as_str(), p.properties.topic_alias),
                    (wire_topic, alias),
                    "{topic}"
                );
                assert_eq!(&p.payload[..], topic.as_bytes());
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_resolves_the_gateways_aliases() {
    let gw = gateway(2, |_| {});
    let mut o = v5_options(&gw, "alias-rumqttc");
    o.set_topic_alias_max(Some(4));
    let mut sub = v5(&gw, o, None).await;
    sub.subscribe("rt/#", Q5::AtMostOnce).await;
    let publ = v5(&gw, v5_options(&gw, "alias-rumqttc-pub"), None).await;
    for t in ["rt/x", "rt/x", "rt/y", "rt/x"] {
        publ.client
            .publish(t, Q5::AtMostOnce, false, t)
            .await
            .unwrap();
        let p = sub.publish().await;
        assert_eq!(&p.payload[..], t.as_bytes());
        assert_eq!(
            &p.topic[..],
            t.as_bytes(),
            "rumqttc restored the aliased topic"
        );
    }
}

mod connect_and_limits {
    //! MQTT 5 connection features and limits, byte-exact through raw clients.

    use crate::common::*;
    use tether::codec::{self, reason, Packet, Properties, QoS, Version};

    fn connect(gw: &tether::Gateway, c: codec::Connect) -> (Raw, codec::ConnAck) {
        let mut r = Raw::open(gw.tcp_addr);
        r.version = c.version;
        r.send(&Packet::Connect(Box::new(c)));
        match r.recv() {
            Some(Packet::ConnAck(a)) => (r, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn subscribe(r: &mut Raw, filter: &str, opts: codec::SubOptions) -> Vec<u8> {
        r.send(&Packet::Subscribe(codec::Subscribe {
            pkid: 1,
            filters: vec![(filter.into(), opts)],
            properties: Default::default(),
        }));
        match r.recv() {
            Some(Packet::SubAck(a)) => a.codes,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    fn publish(r: &mut Raw, topic: &str, payload: Vec<u8>) {
        r.send(&Packet::Publish(codec::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            pkid: 0,
            properties: Default::default(),
            payload: payload.into(),
        }));
    }

    fn next_payload(r: &mut Raw) -> Vec<u8> {
        match r.recv() {
            Some(Packet::Publish(p)) => p.payload.to_vec(),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    #[test]
    fn no_local_skips_the_publishers_own_messages() {
        let gw = gateway(2, |_| {});
        let (mut me, _) = connect(&gw, connect_packet("nl-me", Version::V5));
        let opts = codec::SubOptions {
            no_local: true,
            ..codec::SubOptions::qos(QoS::AtMostOnce)
        };
        assert_eq!(subscribe(&mut me, "nl/t", opts), vec![0]);
        publish(&mut me, "nl/t", b"mine".to_vec());
        let mut other = Raw::connected(gw.tcp_addr, "nl-other", Version::V311);
        publish(&mut other, "nl/t", b"theirs".to_vec());
        assert_eq!(
            next_payload(&mut me),
            b"theirs",
            "its own message was not delivered back"
        );
    }

    #[test]
    fn empty_client_ids_follow_each_versions_rules() {
        let gw = gateway(1, |_| {});
        let (_, a) = connect(&gw, connect_packet("", Version::V5));
        assert_eq!(a.code, 0);
        let assigned = a
            .properties
            .assigned_client_identifier
            .expect("assigned client identifier");
        assert!(assigned.starts_with("tether-"), "{assigned}");
        let (_, a) = connect(&gw, connect_packet("", Version::V311));
        assert_eq!(a.code, 0, "3.1.1 empty id with clean session is accepted");
        let (_, a) = connect(
            &gw,
            codec::Connect {
                clean_start: false,
                ..connect_packet("", Version::V311)
            },
        );
        assert_eq!(
            a.code, 2,
            "3.1.1 empty id without clean session: identifier rejected"
        );
    }

    #[test]
    fn server_keep_alive_caps_what_the_client_asked() {
        let gw = gateway(1, |c| c.mqtt.max_keep_alive = 10);
        let (_, a) = connect(
            &gw,
            codec::Connect {
                keep_alive: 60,
                ..connect_packet("ka", Version::V5)
            },
        );
        assert_eq!(a.properties.server_keep_alive, Some(10));
        let (_, a) = connect(
            &gw,
            codec::Connect {
                keep_alive: 5,
                ..connect_packet("ka2", Version::V5)
            },
        );
        assert_eq!(
            a.properties.server_keep_alive, None,
            "a smaller keep-alive is granted as is"
        );
    }

    #[test]
    fn messages_over_the_clients_maximum_packet_size_are_dropped_and_counted() {
        let gw = gateway(2, |_| {});
        let properties = Properties {
            maximum_packet_size: Some(64),
            ..Default::default()
        };
        let (mut small, _) = connect(
            &gw,
            codec::Connect {
                properties,
                ..connect_packet("small", Version::V5)
            },
        );
        assert_eq!(
            subscribe(&mut small, "mp/#", codec::SubOptions::qos(QoS::AtLeastOnce)),
            vec![1]
        );
        let mut p = Raw::connected(gw.tcp_addr, "mp-pub", Version::V311);
        publish(&mut p, "mp/big", vec![0; 200]);
        publish(&mut p, "mp/ok", b"fits".to_vec());
        assert_eq!(next_payload(&mut small), b"fits");
        assert_eq!(gw.stats().dropped_too_large, 1);
    }

    #[test]
    fn session_expiry_on_disconnect() {
        let gw = gateway(1, |_| {});
        // Expiry 0 at CONNECT cannot become non-zero at DISCONNECT.
        let (mut c, _) = connect(&gw, connect_packet("se0", Version::V5));
        let properties = Properties {
            session_expiry_interval: Some(10),
            ..Default::default()
        };
        c.send(&Packet::Disconnect(codec::ReasonOnly {
            code: 0,
            properties,
        }));
        assert!(
            matches!(c.until_closed().last(), Some(Packet::Disconnect(d)) if d.code == reason::PROTOCOL_ERROR)
        );
        // Expiry 60 at CONNECT, 0 at DISCONNECT: the session ends now.
        let properties = Properties {
            session_expiry_interval: Some(60),
            ..Default::default()
        };
        let persistent = codec::Connect {
            clean_start: false,
            properties,
            ..connect_packet("se60", Version::V5)
        };
        let (mut c, _) = connect(&gw, persistent.clone());
        let properties = Properties {
            session_expiry_interval: Some(0),
            ..Default::default()
        };
        c.send(&Packet::Disconnect(codec::ReasonOnly {
            code: 0,
            properties,
        }));
        c.until_closed();
        until_blocking("the session to end", || gw.locate("se60").is_none());
        let (_, a) = connect(&gw, persistent);
        assert!(!a.session_present);
    }

    #[test]
    fn response_information_when_requested() {
        let gw = gateway(1, |c| c.mqtt.response_information = "reply/%c/".into());
        let properties = Properties {
            request_response_information: Some(1),
            ..Default::default()
        };
        let (_, a) = connect(
            &gw,
            codec::Connect {
                properties,
                ..connect_packet("rr", Version::V5)
            },
        );
        assert_eq!(
            a.properties.response_information.as_deref(),
            Some("reply/rr/")
        );
        let (_, a) = connect(&gw, connect_packet("no-rr", Version::V5));
        assert_eq!(
            a.properties.response_information, None,
            "only for clients that ask"
        );
    }

    #[test]
    fn shared_subscriptions_can_be_switched_off() {
        let gw = gateway(1, |c| c.mqtt.shared_subscription_available = false);
        let (mut c, a) = connect(&gw, connect_packet("sh-off", Version::V5));
        assert_eq!(a.properties.shared_subscription_available, Some(0));
        let codes = subscribe(
            &mut c,
            "$share/g/t",
            codec::SubOptions::qos(QoS::AtMostOnce),
        );
        assert_eq!(codes, vec![reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED]);
    }
}
