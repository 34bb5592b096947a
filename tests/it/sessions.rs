//! Persistent sessions, redelivery, exactly-once receive and takeover.

use crate::common::*;
use rumqttc::QoS;
use tether::codec::{self, Ack, Packet, Publish, Version};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_queues_while_offline_and_moves_cores() {
    let gw = gateway(2, |_| {});
    let publ = v4(&gw, v4_options(&gw, "ps-pub", true), Some(1)).await;
    let mut s = v4(&gw, v4_options(&gw, "ps", false), Some(0)).await;
    s.subscribe("ps/t", QoS::AtLeastOnce).await;
    s.client.disconnect().await.unwrap();
    until("the subscriber to go offline", || {
        gw.stats().connections == 1
    })
    .await;
    drop(s);

    for n in 0u8..5 {
        publ.client
            .publish("ps/t", QoS::AtLeastOnce, false, vec![n])
            .await
            .unwrap();
        publ.client
            .publish("ps/t", QoS::AtMostOnce, false, vec![100 + n])
            .await
            .unwrap();
    }
    until("the offline QoS 0 drops", || {
        gw.stats().dropped_offline_qos0 == 5
    })
    .await;

    // Reconnect on the other core: the session (and its queue) follows.
    // Manual acks: a landing attempt that hits the wrong core must not
    // consume the queue; what it received unacknowledged is resent.
    let mut o = v4_options(&gw, "ps", false);
    o.set_manual_acks(true);
    let mut s = v4(&gw, o, Some(1)).await;
    assert!(s.session_present);
    for n in 0u8..5 {
        let p = s.publish().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("ps/t", &[n][..]),
            "queued QoS 1 in order"
        );
        s.client.ack(&p).await.unwrap();
    }
    publ.client
        .publish("ps/t", QoS::AtLeastOnce, false, "live")
        .await
        .unwrap();
    assert_eq!(
        &s.publish().await.payload[..],
        b"live",
        "subscription survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_message_is_resent_with_dup_after_reconnect() {
    let gw = gateway(2, |_| {});
    let publ = v4(&gw, v4_options(&gw, "dup-pub", true), None).await;
    let mut o = v4_options(&gw, "dup", false);
    o.set_manual_acks(true);
    let mut s = v4(&gw, o.clone(), Some(0)).await;
    s.subscribe("dup/t", QoS::AtLeastOnce).await;
    publ.client
        .publish("dup/t", QoS::AtLeastOnce, false, "once")
        .await
        .unwrap();
    let first = s.publish().await;
    assert!(!first.dup);
    drop(s); // connection lost without PUBACK
    until("the subscriber's socket to close", || {
        gw.stats().connections == 1
    })
    .await;

    let mut s = v4(&gw, o, Some(1)).await;
    assert!(s.session_present);
    let again = s.publish().await;
    assert!(again.dup, "a resent PUBLISH carries DUP");
    assert_eq!((again.pkid, &again.payload[..]), (first.pkid, &b"once"[..]));
    s.client.ack(&again).await.unwrap();
    publ.client
        .publish("dup/t", QoS::AtLeastOnce, false, "next")
        .await
        .unwrap();
    let next = s.publish().await;
    assert_eq!((&next.payload[..], next.dup), (&b"next"[..], false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_discards_previous_state() {
    let gw = gateway(2, |_| {});
    let publ = v4(&gw, v4_options(&gw, "cs-pub", true), None).await;
    let mut s = v4(&gw, v4_options(&gw, "cs", false), None).await;
    s.subscribe("cs/old", QoS::AtLeastOnce).await;
    drop(s);
    let mut s = v4(&gw, v4_options(&gw, "cs", true), None).await;
    assert!(!s.session_present);
    s.subscribe("cs/new", QoS::AtLeastOnce).await;
    publ.client
        .publish("cs/old", QoS::AtLeastOnce, false, "stale")
        .await
        .unwrap();
    publ.client
        .publish("cs/new", QoS::AtLeastOnce, false, "fresh")
        .await
        .unwrap();
    assert_eq!(
        s.publish().await.topic,
        "cs/new",
        "the old subscription is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_across_cores_closes_old_connection_with_0x8e() {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let gw = gateway(2, |_| {});
    let publ = v4(&gw, v4_options(&gw, "tk-pub", true), None).await;
    let mut o = v5_options(&gw, "tk");
    o.set_clean_start(false);
    o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
        session_expiry_interval: Some(300),
        ..Default::default()
    });
    let mut old = v5(&gw, o.clone(), Some(0)).await;
    old.subscribe("tk/t", Q5::AtLeastOnce).await;

    let mut new = v5(&gw, o, Some(1)).await;
    assert!(
        new.connack.session_present,
        "the session moved with the client id"
    );
    // rumqttc reports a server DISCONNECT as the event loop's error.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match old.events.recv().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("old connection closed in time");
    let text = format!("{ended:?}");
    assert!(
        text.contains(&format!("{:?}", DisconnectReasonCode::SessionTakenOver)),
        "{text}"
    );
    assert_eq!(gw.locate("tk"), Some(1));
    for n in 0u8..20 {
        publ.client
            .publish("tk/t", QoS::AtLeastOnce, false, vec![n])
            .await
            .unwrap();
    }
    for n in 0u8..20 {
        assert_eq!(
            &new.publish().await.payload[..],
            &[n],
            "no loss, no reordering after takeover"
        );
    }
    assert!(gw.stats().takeovers >= 1);
}

#[test]
fn qos2_retransmission_is_delivered_once() {
    let gw = gateway(2, |_| {});
    let mut sub = Raw::connected(gw.tcp_addr, "q2-sub", Version::V311);
    sub.send(&Packet::Subscribe(codec::Subscribe {
        pkid: 1,
        filters: vec![(
            "q2/#".into(),
            codec::SubOptions::qos(codec::QoS::ExactlyOnce),
        )],
        properties: Default::default(),
    }));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(a)) if a.codes == vec![2]));

    let mut publ = Raw::connected(gw.tcp_addr, "q2-pub", Version::V5);
    let msg = |dup: bool, topic: &str, qos| Publish {
        dup,
        qos,
        retain: false,
        topic: topic.into(),
        pkid: if qos == codec::QoS::AtMostOnce { 0 } else { 7 },
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"exactly-once"),
    };
    publ.send(&Packet::Publish(msg(
        false,
        "q2/a",
        codec::QoS::ExactlyOnce,
    )));
    assert!(matches!(publ.recv(), Some(Packet::PubRec(a)) if a.pkid == 7));
    publ.send(&Packet::Publish(msg(true, "q2/a", codec::QoS::ExactlyOnce)));
    assert!(matches!(publ.recv(), Some(Packet::PubRec(a)) if a.pkid == 7));
    publ.send(&Packet::PubRel(Ack::new(7)));
    assert!(matches!(publ.recv(), Some(Packet::PubComp(a)) if a.pkid == 7 && a.code == 0));

    // Subscriber side: one QoS 2 delivery, completed, then the sentinel.
    let Some(Packet::Publish(p)) = sub.recv() else {
        panic!("expected the QoS 2 PUBLISH")
    };
    assert_eq!((p.topic.as_str(), p.qos), ("q2/a", codec::QoS::ExactlyOnce));
    sub.send(&Packet::PubRec(Ack::new(p.pkid)));
    assert!(matches!(sub.recv(), Some(Packet::PubRel(a)) if a.pkid == p.pkid));
    sub.send(&Packet::PubComp(Ack::new(p.pkid)));
    // Only now the sentinel: had the duplicate been routed, it would be ahead of it.
    publ.send(&Packet::Publish(msg(
        false,
        "q2/sentinel",
        codec::QoS::AtMostOnce,
    )));
    let Some(Packet::Publish(s)) = sub.recv() else {
        panic!("expected the sentinel")
    };
    assert_eq!(
        s.topic, "q2/sentinel",
        "the retransmitted QoS 2 PUBLISH was not delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_zero_ends_session_on_disconnect() {
    let gw = gateway(2, |_| {});
    let mut o = v5_options(&gw, "exp0");
    o.set_clean_start(false);
    let s = v5(&gw, o.clone(), None).await;
    drop(s);
    until("the connection to close", || gw.stats().connections == 0).await;
    until("the session to end", || gw.locate("exp0").is_none()).await;
    let s = v5(&gw, o, None).await;
    assert!(!s.connack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_qos1_message_is_lost_while_a_session_hops_between_cores() {
    hop_session(false).await;
}

/// Found by `tether-bench storm`: a session that moves between cores
/// several times within `core::MOVE_GRACE_MS` receives messages directly and
/// through chains of tombstone forwards of different lengths; before the
/// move window held direct messages (`session::MoveWindow`), some arrived
/// out of order in every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_order_is_kept_while_a_session_hops_between_cores() {
    hop_session(true).await;
}

/// Moves a persistent session between cores 12 times while 3,000 QoS 1
/// messages flow; asserts none is lost and, with `check_order`, that each
/// is first seen in publish order.
async fn hop_session(check_order: bool) {
    const MESSAGES: u32 = 3000;
    const HOPS: usize = 12;
    let gw = gateway(2, |c| c.session.max_queued_messages = 10_000);
    // Manual acks: whatever a discarded landing attempt received stays
    // unacknowledged in the session and must be resent, never lost.
    let opts = || {
        let mut o = v4_options(&gw, "hopper", false);
        o.set_manual_acks(true);
        o
    };
    let mut first = v4(&gw, opts(), None).await;
    first.subscribe("hop/t", QoS::AtLeastOnce).await;
    let publ = v4(&gw, v4_options(&gw, "hop-pub", true), None).await;
    let sender = tokio::spawn(async move {
        for n in 0..MESSAGES {
            publ.client
                .publish("hop/t", QoS::AtLeastOnce, false, n.to_be_bytes().to_vec())
                .await
                .unwrap();
            if n % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        publ
    });
    let mut seen = vec![false; MESSAGES as usize];
    // Ordered topic: a message seen for the first time after a later one
    // from the same publisher is a reorder.
    let mut order = Order::default();
    #[derive(Default)]
    struct Order {
        highest: Option<usize>,
        reordered: Vec<(usize, usize)>,
    }
    async fn take(c: &V4, seen: &mut [bool], order: &mut Order, ev: rumqttc::Event) {
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
            let n = u32::from_be_bytes(p.payload[..4].try_into().unwrap()) as usize;
            if !seen[n] {
                match order.highest {
                    Some(h) if n < h => order.reordered.push((n, h)),
                    _ => order.highest = Some(n),
                }
            }
            seen[n] = true;
            let _ = c.client.ack(&p).await;
        }
    }
    let mut current = first;
    for hop in 0..HOPS {
        // Let some messages flow, then take the session over on the other core.
        for _ in 0..50 {
            match tokio::time::timeout(std::time::Duration::from_millis(20), current.events.recv())
                .await
            {
                Ok(Some(Ok(ev))) => take(&current, &mut seen, &mut order, ev).await,
                _ => break,
            }
        }
        current = v4(&gw, opts(), Some(hop % 2)).await;
    }
    let _publ = sender.await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.iter().any(|s| !s) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, current.events.recv()).await {
            Ok(Some(Ok(ev))) => take(&current, &mut seen, &mut order, ev).await,
            other => {
                let missing: Vec<usize> = (0..seen.len()).filter(|&i| !seen[i]).take(20).collect();
                let count = seen.iter().filter(|s| !**s).count();
                panic!(
                    "{count} missing (first {missing:?}): {other:?}; {:?}",
                    gw.stats()
                );
            }
        }
    }
    assert!(
        !check_order || order.reordered.is_empty(),
        "first seen after a later message (message, later): {:?}",
        &order.reordered[..order.reordered.len().min(20)]
    );
}

/// A raw MQTT 5 CONNECT as `user`: the CONNACK's reason code, and the
/// connection (open when admitted).
fn connect_as(gw: &tether::Gateway, id: &str, user: &str) -> (u8, Raw) {
    let mut r = Raw::open(gw.tcp_addr);
    let mut c = connect_packet(id, Version::V5);
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::from_static(b"pw"));
    r.send(&Packet::Connect(Box::new(c)));
    match r.recv() {
        Some(Packet::ConnAck(a)) => (a.code, r),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn the_memory_store_holds_each_user_to_its_limit_on_the_node() {
    use tether::config::PerUserPolicy;
    let gw = gateway(2, |c| {
        c.limits.max_connections_per_user = 2;
        c.limits.per_user_policy = PerUserPolicy::Refuse;
    });
    let (a, _ka) = connect_as(&gw, "lim-1", "lim");
    let (b, kb) = connect_as(&gw, "lim-2", "lim");
    assert_eq!((a, b), (0, 0));
    let (c, mut refused) = connect_as(&gw, "lim-3", "lim");
    assert_eq!(c, codec::reason::QUOTA_EXCEEDED, "the third is refused");
    assert!(refused.until_closed().is_empty());
    // The same client reconnecting takes its own place over.
    let (again, _kb2) = connect_as(&gw, "lim-2", "lim");
    assert_eq!(again, 0, "a takeover is not an extra connection");
    drop(kb);
    // Another user is not affected.
    assert_eq!(connect_as(&gw, "other-1", "other").0, 0);

    let gw = gateway(2, |c| c.limits.max_connections_per_user = 2);
    let (_, mut oldest) = connect_as(&gw, "ev-1", "ev");
    let (_, _second) = connect_as(&gw, "ev-2", "ev");
    let (third, _t) = connect_as(&gw, "ev-3", "ev");
    assert_eq!(third, 0, "evict_oldest admits the newest");
    match oldest.until_closed().as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.code, codec::reason::ADMINISTRATIVE_ACTION),
        other => panic!("the oldest gets DISCONNECT 0x98, got {other:?}"),
    }
}
