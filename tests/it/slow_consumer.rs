//! Slow consumers: QoS 0 is dropped (and counted) above the outbox limit, a
//! client over the hard queue limit is disconnected with 0x97, and the
//! gateway's memory stays bounded while a reader stalls.

use crate::common::*;
use rumqttc::QoS;
use tether::codec::{self, reason, Packet, Version};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn stalled_subscriber(
    gw: &tether::Gateway,
    id: &str,
    qos: codec::QoS,
    receive_max: Option<u16>,
) -> Raw {
    let mut s = Raw::open(gw.tcp_addr);
    s.version = Version::V5;
    // A small receive buffer so the kernel does not absorb the flood.
    socket2::SockRef::from(&s.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    let properties = codec::Properties {
        receive_maximum: receive_max,
        ..Default::default()
    };
    s.send(&Packet::Connect(Box::new(codec::Connect {
        properties,
        ..connect_packet(id, Version::V5)
    })));
    assert!(matches!(s.recv(), Some(Packet::ConnAck(a)) if a.code == 0));
    s.send(&Packet::Subscribe(codec::Subscribe {
        pkid: 1,
        filters: vec![("flood".into(), codec::SubOptions::qos(qos))],
        properties: Default::default(),
    }));
    assert!(matches!(s.recv(), Some(Packet::SubAck(_))));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_qos0_reader_costs_bounded_memory_and_drops_are_counted() {
    const PAYLOAD: usize = 16 * 1024;
    const COUNT: usize = 4096; // 64 MiB offered to a reader that never reads
    let gw = gateway(2, |c| c.session.max_outbox_bytes = 256 * 1024);
    let _stalled = stalled_subscriber(&gw, "stalled", codec::QoS::AtMostOnce, None);
    let mut o = v4_options(&gw, "flooder", true);
    o.set_max_packet_size(1 << 20, 1 << 20); // rumqttc's default is 10 KiB
    let publ = v4(&gw, o, None).await;
    let before = rss_bytes();
    for _ in 0..COUNT {
        publ.client
            .publish("flood", QoS::AtMostOnce, false, vec![7u8; PAYLOAD])
            .await
            .unwrap();
    }
    // A QoS 1 publish after the flood: once it is acknowledged, the gateway
    // has processed everything before it on this connection.
    publ.client
        .publish("fence", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let mut publ = publ;
    publ.incoming(|p| matches!(p, rumqttc::Packet::PubAck(_)))
        .await;
    let s = gw.stats();
    let growth = rss_bytes().saturating_sub(before);
    assert!(s.dropped_slow_qos0 > 0, "{s:?}");
    assert!(
        growth < 32 * 1024 * 1024,
        "RSS grew by {growth} bytes while {} MiB went to a stalled reader",
        (PAYLOAD * COUNT) >> 20
    );
}

#[test]
fn qos1_reader_over_the_hard_limit_is_disconnected_with_0x97() {
    let gw = gateway(2, |c| c.session.max_queued_messages = 50);
    let mut slow = stalled_subscriber(&gw, "slow1", codec::QoS::AtLeastOnce, Some(5));
    // A healthy subscriber on the same topic: the stalled one must not slow
    // the topic for it (publishers are paced by what waits on the core,
    // never by a client that does not read).
    let mut healthy = Raw::connected(gw.tcp_addr, "healthy1", Version::V311);
    healthy.send(&Packet::Subscribe(codec::Subscribe {
        pkid: 1,
        filters: vec![(
            "flood".into(),
            codec::SubOptions::qos(codec::QoS::AtLeastOnce),
        )],
        properties: Default::default(),
    }));
    assert!(matches!(healthy.recv(), Some(Packet::SubAck(_))));
    let mut publ = Raw::connected(gw.tcp_addr, "pub1", Version::V311);
    for id in 1u16..=100 {
        publ.send(&Packet::Publish(codec::Publish {
            dup: false,
            qos: codec::QoS::AtLeastOnce,
            retain: false,
            topic: "flood".into(),
            pkid: id,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(&[1; 512]),
        }));
        assert!(matches!(publ.recv(), Some(Packet::PubAck(a)) if a.pkid == id));
    }
    let got = slow.until_closed();
    let publishes = got
        .iter()
        .filter(|p| matches!(p, Packet::Publish(_)))
        .count();
    // Never more than the Receive Maximum in flight. Fewer when the
    // connection task had not written them yet: a slow consumer's close
    // discards its outbox (it is stalled; flushing could wait forever), so
    // under load the client may see only the DISCONNECT.
    assert!(
        publishes <= 5,
        "{publishes} in flight, over the Receive Maximum of 5"
    );
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.code == reason::QUOTA_EXCEEDED),
        "last packet: {:?}",
        got.last()
    );
    let s = gw.stats();
    assert_eq!(s.disconnected_slow, 1);
    assert!(s.dropped_queue_full >= 1, "{s:?}");
    for id in 1u16..=100 {
        match healthy.recv() {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.topic, "flood", "message {id}");
                healthy.send(&Packet::PubAck(codec::Ack::new(p.pkid)));
            }
            other => panic!("the healthy subscriber's message {id}: {other:?}"),
        }
    }
}

#[test]
fn publisher_that_never_reads_its_acks_stops_being_read() {
    use std::io::Write;
    const OFFERED: u64 = 200_000;
    let gw = gateway(1, |c| {
        c.session.max_outbox_bytes = 16 * 1024;
        c.listeners.send_buffer_bytes = 4096;
    });
    let mut flooder = Raw::connected(gw.tcp_addr, "no-reader", Version::V311);
    socket2::SockRef::from(&flooder.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    flooder
        .stream
        .set_write_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut frame = Vec::new();
    let mut sent = 0u64;
    for id in 0..OFFERED {
        frame.clear();
        let p = Packet::Publish(codec::Publish {
            dup: false,
            qos: codec::QoS::AtLeastOnce,
            retain: false,
            topic: "sink".into(),
            pkid: (id % 60_000 + 1) as u16,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(&[0; 64]),
        });
        codec::encode(&p, Version::V311, &mut frame);
        if flooder.stream.write_all(&frame).is_err() {
            break; // the gateway stopped reading: our write timed out
        }
        sent += 1;
    }
    assert!(
        sent < OFFERED,
        "the gateway kept reading a client that never reads"
    );
    let read = gw.stats().publishes_in;
    assert!(read < OFFERED, "{read}");
    // Everyone else is unaffected.
    let mut other = Raw::connected(gw.tcp_addr, "other", Version::V5);
    other.send(&Packet::PingReq);
    assert_eq!(other.recv(), Some(Packet::PingResp));
}
