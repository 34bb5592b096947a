//! Shared subscriptions: each message to exactly one member of the group,
//! members on different cores, round-robin, plain subscribers unaffected,
//! and unacknowledged messages of a member that leaves go to another member.

use std::collections::HashMap;

use crate::common::*;
use rumqttc::v5::mqttbytes::QoS as Q5;

fn seq(p: &rumqttc::v5::mqttbytes::v5::Publish) -> u32 {
    u32::from_be_bytes(p.payload[..4].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_goes_to_exactly_one_member_across_cores() {
    const N: u32 = 200;
    let gw = gateway(2, |_| {});
    let mut a = v5(&gw, v5_options(&gw, "member-a"), Some(0)).await;
    let mut b = v5(&gw, v5_options(&gw, "member-b"), Some(1)).await;
    let mut plain = v5(&gw, v5_options(&gw, "plain"), None).await;
    a.subscribe("$share/workers/jobs/+", Q5::AtLeastOnce).await;
    b.subscribe("$share/workers/jobs/+", Q5::AtLeastOnce).await;
    plain.subscribe("jobs/+", Q5::AtLeastOnce).await;
    until("both members to join the group", || {
        gw.shared_members() == 2
    })
    .await;

    let publ = v5(&gw, v5_options(&gw, "producer"), None).await;
    for n in 0..N {
        publ.client
            .publish("jobs/x", Q5::AtLeastOnce, false, n.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    let mut seen: HashMap<u32, &str> = HashMap::new();
    let (mut got_a, mut got_b) = (0, 0);
    while seen.len() < N as usize {
        tokio::select! {
            p = a.publish() => { got_a += 1; assert!(seen.insert(seq(&p), "a").is_none(), "{} twice", seq(&p)); }
            p = b.publish() => { got_b += 1; assert!(seen.insert(seq(&p), "b").is_none(), "{} twice", seq(&p)); }
        }
    }
    assert_eq!(got_a + got_b, N);
    assert!(
        got_a >= N / 4 && got_b >= N / 4,
        "round-robin spreads the load: a {got_a}, b {got_b}"
    );
    for n in 0..N {
        assert_eq!(
            seq(&plain.publish().await),
            n,
            "a plain subscription still gets everything, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_of_a_leaving_member_go_to_another() {
    const N: u32 = 50;
    let gw = gateway(2, |_| {});
    let mut o = v5_options(&gw, "hoarder");
    o.set_manual_acks(true);
    let mut hoarder = v5(&gw, o, Some(0)).await;
    let mut worker = v5(&gw, v5_options(&gw, "worker"), Some(1)).await;
    hoarder.subscribe("$share/g/q", Q5::AtLeastOnce).await;
    worker.subscribe("$share/g/q", Q5::AtLeastOnce).await;
    until("both members to join the group", || {
        gw.shared_members() == 2
    })
    .await;

    let publ = v5(&gw, v5_options(&gw, "q-producer"), None).await;
    for n in 0..N {
        publ.client
            .publish("q", Q5::AtLeastOnce, false, n.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    // The hoarder takes its share and never acknowledges; then it is gone.
    let first = hoarder.publish().await;
    let _ = seq(&first);
    drop(hoarder);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < N as usize {
        let p = worker.publish().await;
        seen.insert(seq(&p));
    }
    assert!(gw.stats().share_returned >= 1, "{:?}", gw.stats());
    assert_eq!(gw.stats().dropped_no_member, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_clients_can_share_too() {
    let gw = gateway(2, |_| {});
    let mut a = v4(&gw, v4_options(&gw, "v4-a", true), Some(0)).await;
    let mut b = v4(&gw, v4_options(&gw, "v4-b", true), Some(1)).await;
    a.subscribe("$share/g4/t/#", rumqttc::QoS::AtLeastOnce)
        .await;
    b.subscribe("$share/g4/t/#", rumqttc::QoS::AtLeastOnce)
        .await;
    until("both members to join the group", || {
        gw.shared_members() == 2
    })
    .await;
    let publ = v4(&gw, v4_options(&gw, "v4-pub", true), None).await;
    for n in 0u8..10 {
        publ.client
            .publish("t/1", rumqttc::QoS::AtLeastOnce, false, vec![n])
            .await
            .unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 10 {
        tokio::select! {
            p = a.publish() => assert!(seen.insert(p.payload[0])),
            p = b.publish() => assert!(seen.insert(p.payload[0])),
        }
    }
}
