//! Retained messages: stored, replaced, deleted, replicated to every core,
//! delivered on subscribe with the retain flag, Retain Handling, Retain As
//! Published, the store cap, and retained wills.

use crate::common::*;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet as P5, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_reaches_later_subscribers_on_every_core() {
    let gw = gateway(2, |_| {});
    let publ = v4(&gw, v4_options(&gw, "r-pub", true), Some(0)).await;
    publ.client
        .publish("r/a", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    until("every core's replica to hold it", || {
        gw.retained_per_core() == vec![1, 1]
    })
    .await;
    for core in [0, 1] {
        let mut sub = v4(
            &gw,
            v4_options(&gw, &format!("r-sub{core}"), true),
            Some(core),
        )
        .await;
        sub.subscribe("r/#", QoS::AtLeastOnce).await;
        let p = sub.publish().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.retain),
            ("r/a", &b"kept"[..], true)
        );
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_and_delete() {
    let gw = gateway(1, |_| {});
    let mut publ = v4(&gw, v4_options(&gw, "rd-pub", true), None).await;
    let acked = |p: &rumqttc::Packet| matches!(p, rumqttc::Packet::PubAck(_));
    publ.client
        .publish("rd/x", QoS::AtLeastOnce, true, "old")
        .await
        .unwrap();
    publ.incoming(acked).await;
    publ.client
        .publish("rd/x", QoS::AtLeastOnce, true, "new")
        .await
        .unwrap();
    publ.incoming(acked).await;
    publ.client
        .publish("rd/gone", QoS::AtLeastOnce, true, "x")
        .await
        .unwrap();
    publ.incoming(acked).await;
    publ.client
        .publish("rd/gone", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    publ.incoming(acked).await;
    assert_eq!(gw.retained_per_core(), vec![1]);

    let mut sub = v4(&gw, v4_options(&gw, "rd-sub", true), None).await;
    sub.subscribe("rd/#", QoS::AtMostOnce).await;
    let p = sub.publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("rd/x", &b"new"[..], true)
    );
    assert_eq!(p.qos, QoS::AtMostOnce, "capped by the subscription");
    // Nothing else is retained: the next message is a live one, retain 0.
    publ.client
        .publish("rd/live", QoS::AtMostOnce, false, "live")
        .await
        .unwrap();
    let p = sub.publish().await;
    assert_eq!((p.topic.as_str(), p.retain), ("rd/live", false));
}

fn filter(path: &str, rule: RetainForwardRule, rap: bool) -> Filter {
    let mut f = Filter::new(path, Q5::AtLeastOnce);
    f.retain_forward_rule = rule;
    f.preserve_retain = rap;
    f
}

async fn subscribe5(c: &mut V5, f: Filter) {
    c.client.subscribe_many([f]).await.unwrap();
    c.incoming(|p| matches!(p, P5::SubAck(_))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_handling_and_retain_as_published() {
    let gw = gateway(1, |_| {});
    let mut publ = v5(&gw, v5_options(&gw, "rh-pub"), None).await;
    assert_ne!(
        publ.connack
            .properties
            .as_ref()
            .and_then(|p| p.retain_available),
        Some(0)
    );
    publ.client
        .publish("rh/t", Q5::AtLeastOnce, true, "r")
        .await
        .unwrap();
    publ.incoming(|p| matches!(p, P5::PubAck(_))).await;

    let mut s = v5(&gw, v5_options(&gw, "rh-sub"), None).await;
    // Retain Handling 2: never.
    subscribe5(&mut s, filter("rh/+", RetainForwardRule::Never, false)).await;
    // Retain Handling 1: only for a new subscription.
    subscribe5(
        &mut s,
        filter("rh/#", RetainForwardRule::OnNewSubscribe, false),
    )
    .await;
    let p = s.publish().await;
    assert_eq!((&p.topic[..], p.retain), (&b"rh/t"[..], true));
    subscribe5(
        &mut s,
        filter("rh/#", RetainForwardRule::OnNewSubscribe, false),
    )
    .await;
    // Retain Handling 0: every time.
    subscribe5(
        &mut s,
        filter("rh/t", RetainForwardRule::OnEverySubscribe, true),
    )
    .await;
    let p = s.publish().await;
    assert_eq!(
        (&p.topic[..], p.retain),
        (&b"rh/t"[..], true),
        "RH 0 sends it again"
    );

    // A live retained publish: retain flag kept only with Retain As Published
    // ("rh/t" has RAP, the wildcard ones do not; one copy at the best options).
    let mut plain = v5(&gw, v5_options(&gw, "rh-plain"), None).await;
    subscribe5(&mut plain, filter("rh/#", RetainForwardRule::Never, false)).await;
    publ.client
        .publish("rh/t", Q5::AtLeastOnce, true, "live")
        .await
        .unwrap();
    let p = plain.publish().await;
    assert_eq!(
        (&p.payload[..], p.retain),
        (&b"live"[..], false),
        "no RAP: retain cleared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_store_refuses_new_topics_with_0x97() {
    let gw = gateway(1, |c| c.retained.max_messages = 2);
    let mut sub = v5(&gw, v5_options(&gw, "cap-sub"), None).await;
    subscribe5(&mut sub, filter("cap/#", RetainForwardRule::Never, false)).await;
    // Raw client: rumqttc ends its connection on any failure PUBACK.
    let mut publ = Raw::connected(gw.tcp_addr, "cap-pub", tether::codec::Version::V5);
    for (pkid, topic, expect) in [
        (1, "cap/1", 0x00),
        (2, "cap/2", 0x00),
        (3, "cap/3", tether::codec::reason::QUOTA_EXCEEDED),
        (4, "cap/1", 0x00), // replacing an existing topic is fine
    ] {
        publ.send(&tether::codec::Packet::Publish(tether::codec::Publish {
            dup: false,
            qos: tether::codec::QoS::AtLeastOnce,
            retain: true,
            topic: topic.into(),
            pkid,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"v"),
        }));
        match publ.recv() {
            Some(tether::codec::Packet::PubAck(a)) => {
                assert_eq!((a.pkid, a.code), (pkid, expect), "{topic}")
            }
            other => panic!("{other:?}"),
        }
        if expect == 0 {
            let p = sub.publish().await;
            assert_eq!(&p.topic[..], topic.as_bytes());
        }
    }
    // The refused cap/3 went nowhere: the delivery after cap/2 was cap/1.
    assert_eq!(gw.retained_per_core(), vec![2]);
    assert_eq!(gw.stats().retained_refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_will_is_stored_on_abnormal_close() {
    let gw = gateway(2, |_| {});
    let mut o = v4_options(&gw, "dying", true);
    o.set_last_will(rumqttc::LastWill::new(
        "wills/dying",
        "gone",
        QoS::AtLeastOnce,
        true,
    ));
    let dying = v4(&gw, o, None).await;
    drop(dying); // socket closed without DISCONNECT
    until("the will to be retained on every core", || {
        gw.retained_per_core() == vec![1, 1]
    })
    .await;
    let mut sub = v4(&gw, v4_options(&gw, "will-reader", true), None).await;
    sub.subscribe("wills/+", QoS::AtLeastOnce).await;
    let p = sub.publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("wills/dying", &b"gone"[..], true)
    );
}

#[test]
fn deny_lists_refuse_subscriptions_and_publishes() {
    use tether::codec::{self, reason, Packet, Version};
    let gw = gateway(1, |c| {
        c.mqtt.deny_subscribe = vec!["test/nosubscribe".into(), "secret/#".into()];
        c.mqtt.deny_publish = vec!["secret/#".into()];
    });
    let sub_of = |filters: &[&str]| {
        Packet::Subscribe(codec::Subscribe {
            pkid: 1,
            filters: filters
                .iter()
                .map(|f| {
                    (
                        f.to_string(),
                        codec::SubOptions::qos(codec::QoS::AtLeastOnce),
                    )
                })
                .collect(),
            properties: Default::default(),
        })
    };
    for (version, refused) in [(Version::V311, 0x80), (Version::V5, reason::NOT_AUTHORIZED)] {
        let mut c = Raw::connected(gw.tcp_addr, "deny", version);
        c.send(&sub_of(&["test/nosubscribe", "secret/plans", "test/ok"]));
        match c.recv() {
            Some(Packet::SubAck(a)) => {
                assert_eq!(a.codes, vec![refused, refused, 1], "{version:?}")
            }
            other => panic!("{other:?}"),
        }
        for (pkid, qos) in [(2, codec::QoS::AtLeastOnce), (3, codec::QoS::ExactlyOnce)] {
            c.send(&Packet::Publish(codec::Publish {
                dup: false,
                qos,
                retain: false,
                topic: "secret/plans".into(),
                pkid,
                properties: Default::default(),
                payload: bytes::Bytes::from_static(b"x"),
            }));
            let expect = if version.is_v5() {
                reason::NOT_AUTHORIZED
            } else {
                0
            };
            match c.recv() {
                Some(Packet::PubAck(a) | Packet::PubRec(a)) => {
                    assert_eq!((a.pkid, a.code), (pkid, expect))
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(gw.stats().denied_publishes, 4);
}

#[test]
fn retain_and_wildcards_can_be_switched_off() {
    use tether::codec::{self, reason, Packet, Version};
    let gw = gateway(1, |c| {
        c.mqtt.retain_available = false;
        c.mqtt.wildcard_subscription_available = false;
    });
    let mut v5 = Raw::open(gw.tcp_addr);
    v5.send(&Packet::Connect(Box::new(connect_packet(
        "avail5",
        Version::V5,
    ))));
    match v5.recv() {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.properties.retain_available, Some(0));
            assert_eq!(a.properties.wildcard_subscription_available, Some(0));
        }
        other => panic!("{other:?}"),
    }
    let subscribe = |f: &str| {
        Packet::Subscribe(codec::Subscribe {
            pkid: 1,
            filters: vec![(f.into(), codec::SubOptions::qos(codec::QoS::AtMostOnce))],
            properties: Default::default(),
        })
    };
    v5.send(&subscribe("a/+"));
    assert!(
        matches!(v5.recv(), Some(Packet::SubAck(a)) if a.codes == vec![reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED])
    );

    let mut v3 = Raw::connected(gw.tcp_addr, "avail3", Version::V311);
    v3.send(&subscribe("a/#"));
    assert!(matches!(v3.recv(), Some(Packet::SubAck(a)) if a.codes == vec![0x80]));
    v3.send(&subscribe("a/b"));
    assert!(matches!(v3.recv(), Some(Packet::SubAck(a)) if a.codes == vec![0]));
    // 3.1.1 retained publish: delivered (retain flag cleared), not stored.
    let retained = |retain| {
        Packet::Publish(codec::Publish {
            dup: false,
            qos: codec::QoS::AtMostOnce,
            retain,
            topic: "a/b".into(),
            pkid: 0,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"r"),
        })
    };
    let mut p3 = Raw::connected(gw.tcp_addr, "avail3-pub", Version::V311);
    p3.send(&retained(true));
    assert!(matches!(v3.recv(), Some(Packet::Publish(p)) if !p.retain));
    assert_eq!(gw.retained_per_core(), vec![0]);
    // MQTT 5 retained publish: DISCONNECT 0x9A.
    v5.send(&retained(true));
    let got = v5.until_closed();
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.code == reason::RETAIN_NOT_SUPPORTED),
        "{got:?}"
    );
}
