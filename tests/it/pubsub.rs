//! Publish/subscribe through the gateway with rumqttc (v3.1.1 and v5),
//! publisher and subscriber pinned to different cores.

use crate::common::*;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_every_qos_crosses_cores_in_order() {
    // Room for the whole burst: this test is about order, not the slow-consumer policy.
    let gw = gateway(2, |c| c.session.max_queued_messages = 5000);
    let mut sub = v4(&gw, v4_options(&gw, "sub", true), Some(0)).await;
    let publ = v4(&gw, v4_options(&gw, "pub", true), Some(1)).await;
    sub.subscribe("t/#", QoS::ExactlyOnce).await;

    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publ.client
            .publish(format!("t/{i}"), qos, false, vec![i as u8; 3])
            .await
            .unwrap();
        let p = sub.publish().await;
        assert_eq!(p.topic, format!("t/{i}"));
        assert_eq!(p.qos, qos, "delivered at min(publish, subscription) QoS");
        assert_eq!(&p.payload[..], &[i as u8; 3]);
    }

    // Many QoS 1 messages: batched across cores, delivered exactly in order.
    for n in 0u32..2000 {
        publ.client
            .publish("t/seq", QoS::AtLeastOnce, false, n.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    for n in 0u32..2000 {
        let p = sub.publish().await;
        assert_eq!(u32::from_be_bytes(p.payload[..4].try_into().unwrap()), n);
    }
    let s = gw.stats();
    assert_eq!(
        s.dropped_queue_full + s.dropped_slow_qos0 + s.disconnected_slow,
        0,
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_qos_caps_delivery_qos() {
    let gw = gateway(2, |_| {});
    let mut sub = v4(&gw, v4_options(&gw, "sub0", true), Some(1)).await;
    let publ = v4(&gw, v4_options(&gw, "pub0", true), Some(0)).await;
    sub.subscribe("cap", QoS::AtMostOnce).await;
    publ.client
        .publish("cap", QoS::ExactlyOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(sub.publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_reaches_subscriber_on_other_core_with_properties() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let gw = gateway(2, |_| {});
    let mut sub = v5(&gw, v5_options(&gw, "sub5"), Some(1)).await;
    let publ = v5(&gw, v5_options(&gw, "pub5"), Some(0)).await;
    assert_eq!(
        sub.connack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    sub.subscribe("v5/+/x", Q5::ExactlyOnce).await;

    let props = PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        ..Default::default()
    };
    publ.client
        .publish_with_properties("v5/a/x", Q5::AtLeastOnce, false, "hi", props)
        .await
        .unwrap();
    let p = sub.publish().await;
    assert_eq!(&p.topic[..], b"v5/a/x");
    assert_eq!(p.qos, Q5::AtLeastOnce);
    let got = p.properties.expect("properties forwarded");
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        got.user_properties,
        vec![("k".to_string(), "v".to_string())]
    );
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr"[..]));

    publ.client
        .publish("v5/b/x", Q5::ExactlyOnce, false, "two")
        .await
        .unwrap();
    let p = sub.publish().await;
    assert_eq!(p.qos, Q5::ExactlyOnce);
    assert_eq!(&p.payload[..], b"two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_deliver_one_copy_at_highest_qos() {
    let gw = gateway(1, |_| {});
    let mut sub = v4(&gw, v4_options(&gw, "ov", true), None).await;
    let publ = v4(&gw, v4_options(&gw, "ovp", true), None).await;
    sub.subscribe("o/#", QoS::AtMostOnce).await;
    sub.subscribe("o/+", QoS::AtLeastOnce).await;
    publ.client
        .publish("o/1", QoS::AtLeastOnce, false, "a")
        .await
        .unwrap();
    publ.client
        .publish("o/2", QoS::AtLeastOnce, false, "b")
        .await
        .unwrap();
    let first = sub.publish().await;
    assert_eq!((first.topic.as_str(), first.qos), ("o/1", QoS::AtLeastOnce));
    let second = sub.publish().await;
    assert_eq!(second.topic, "o/2", "exactly one copy of o/1 was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let gw = gateway(2, |_| {});
    let mut sub = v4(&gw, v4_options(&gw, "un", true), Some(0)).await;
    let publ = v4(&gw, v4_options(&gw, "unp", true), Some(1)).await;
    sub.subscribe("u/a", QoS::AtLeastOnce).await;
    sub.subscribe("u/b", QoS::AtLeastOnce).await;
    sub.client.unsubscribe("u/a").await.unwrap();
    sub.incoming(|p| matches!(p, rumqttc::Packet::UnsubAck(_)))
        .await;
    publ.client
        .publish("u/a", QoS::AtLeastOnce, false, "gone")
        .await
        .unwrap();
    publ.client
        .publish("u/b", QoS::AtLeastOnce, false, "kept")
        .await
        .unwrap();
    let p = sub.publish().await;
    assert_eq!(
        p.topic, "u/b",
        "u/a was published first but is no longer subscribed"
    );
}
