//! Publishing from threads that are not cores (the seam the HTTP API and the
//! Kafka/Redis bridges use): receipts, refusals, retained messages, order,
//! and shutdown.

use futures_lite::future::block_on;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use rumqttc::QoS as RQoS;
use tether::bridge::{PublishRequest, Refusal};
use tether::codec::QoS;

fn request(topic: &str, payload: &str, qos: QoS, retain: bool) -> PublishRequest {
    PublishRequest {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: None,
        receipts: false,
        receipt_id: None,
        receipts_to: None,
    }
}

/// Publishes through the bridge and waits for the receipt.
async fn publish(gw: &tether::Gateway, req: PublishRequest) -> Result<u64, Refusal> {
    let outcome = gw.bridge().publish(req)?;
    tokio::time::timeout(WAIT, outcome)
        .await
        .expect("a receipt in time")
        .expect("the core answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_publishes_reach_subscribers_on_every_core_with_receipts() {
    let gw = gateway(2, |_| {});
    let mut subs = Vec::new();
    for core in 0..2 {
        let mut s = v4(&gw, v4_options(&gw, &format!("bs{core}"), true), Some(core)).await;
        s.subscribe("push/#", RQoS::AtLeastOnce).await;
        subs.push(s);
    }
    let mut ids = Vec::new();
    for i in 0..20 {
        let topic = format!("push/{}", i % 4);
        let id = publish(
            &gw,
            request(&topic, &format!("m{i}"), QoS::AtLeastOnce, false),
        )
        .await
        .expect("accepted");
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20, "every message gets its own id");
    for s in &mut subs {
        let mut got = Vec::new();
        for _ in 0..20 {
            let p = s.publish().await;
            assert_eq!(p.qos, RQoS::AtLeastOnce);
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        got.sort();
        let mut want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        want.sort();
        assert_eq!(got, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_topic_through_the_bridge_keeps_its_order() {
    let gw = gateway(2, |c| c.session.max_queued_messages = 10_000);
    let mut s = v4(&gw, v4_options(&gw, "ordered", true), Some(1)).await;
    s.subscribe("feed/x", RQoS::AtLeastOnce).await;
    let bridge = gw.bridge();
    let sender = std::thread::spawn(move || {
        let mut last = None;
        for i in 0..2000u32 {
            let req = PublishRequest {
                topic: "feed/x".into(),
                payload: Bytes::copy_from_slice(&i.to_be_bytes()),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
                receipts: false,
                receipt_id: None,
                receipts_to: None,
            };
            // Busy is backpressure: wait for the previous receipt, retry.
            loop {
                match bridge.publish(req.clone()) {
                    Ok(rx) => {
                        last = Some(rx);
                        break;
                    }
                    Err(Refusal::Busy) => {
                        if let Some(rx) = last.take() {
                            let _ = block_on(rx);
                        }
                    }
                    Err(e) => panic!("refused: {e}"),
                }
            }
        }
        block_on(last.unwrap()).unwrap().unwrap();
    });
    for want in 0..2000u32 {
        let p = s.publish().await;
        assert_eq!(u32::from_be_bytes(p.payload[..4].try_into().unwrap()), want);
    }
    sender.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_reason_and_retained_messages_stay() {
    let gw = gateway(2, |c| {
        c.mqtt.deny_publish = vec!["secret/#".into()];
        c.mqtt.max_qos = 1;
    });
    let refused = |topic: &'static str, qos| publish(&gw, request(topic, "x", qos, false));
    assert_eq!(
        refused("a/+/b", QoS::AtMostOnce).await,
        Err(Refusal::TopicInvalid("wildcard in topic name"))
    );
    assert_eq!(
        refused("", QoS::AtMostOnce).await,
        Err(Refusal::TopicInvalid("empty topic name"))
    );
    assert_eq!(
        refused("secret/plans", QoS::AtMostOnce).await,
        Err(Refusal::Denied)
    );
    assert_eq!(
        refused("ok/topic", QoS::ExactlyOnce).await,
        Err(Refusal::QosNotSupported)
    );

    publish(&gw, request("status/door", "open", QoS::AtLeastOnce, true))
        .await
        .expect("retained accepted");
    // The receipt means routed; every core's replica gets the message from
    // the topic's owner core a moment later.
    until("every core holds the retained message", || {
        crate::common::web::http(gw.http_addr.unwrap(), "GET", "/metrics", &[], "")
            .body
            .lines()
            .filter(|l| l.starts_with("tether_retained_messages{"))
            .all(|l| l.ends_with(" 1"))
    })
    .await;
    let mut late = v4(&gw, v4_options(&gw, "late", true), Some(1)).await;
    late.subscribe("status/#", RQoS::AtLeastOnce).await;
    let p = late.publish().await;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"open");
}

#[test]
fn a_stopped_gateway_refuses_bridge_publishes() {
    let gw = gateway(1, |_| {});
    let bridge = gw.bridge();
    gw.shutdown();
    assert!(gw.join_timeout(Duration::from_secs(10)));
    let r = bridge.publish(request("t", "x", QoS::AtMostOnce, false));
    assert_eq!(r.err(), Some(Refusal::ShuttingDown));
}
