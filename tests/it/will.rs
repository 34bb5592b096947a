//! Will messages, MQTT 5 3.1.2.5: published on abnormal close, keep-alive
//! expiry, DISCONNECT 0x04 and takeover (delay 0); never after a normal
//! DISCONNECT; Will Delay Interval honoured and cancelled by a reconnect; a
//! session that ends first publishes it at once.

use std::time::{Duration, Instant};

use crate::common::*;
use tether::codec::{self, Packet, Properties, QoS, Version, Will};

fn connect_with_will(
    gw: &tether::Gateway,
    id: &str,
    v: Version,
    keep_alive: u16,
    delay: Option<u32>,
    expiry: u32,
) -> Raw {
    let mut r = Raw::open(gw.tcp_addr);
    r.version = v;
    let will = Will {
        topic: format!("will/{id}"),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: delay,
            ..Default::default()
        },
    };
    let properties = Properties {
        session_expiry_interval: v.is_v5().then_some(expiry),
        ..Default::default()
    };
    r.send(&Packet::Connect(Box::new(codec::Connect {
        clean_start: false,
        keep_alive,
        will: Some(will),
        properties,
        ..connect_packet(id, v)
    })));
    assert!(matches!(r.recv(), Some(Packet::ConnAck(a)) if a.code == 0));
    r
}

/// A subscriber to `will/#`, and a probe to prove the absence of a will:
/// publishes a sentinel and checks it is the next thing the subscriber sees.
fn watcher(gw: &tether::Gateway, id: &str) -> Raw {
    let mut s = Raw::connected(gw.tcp_addr, id, Version::V311);
    s.send(&Packet::Subscribe(codec::Subscribe {
        pkid: 1,
        filters: vec![("will/#".into(), codec::SubOptions::qos(QoS::AtMostOnce))],
        properties: Default::default(),
    }));
    assert!(matches!(s.recv(), Some(Packet::SubAck(_))));
    s
}

fn next_topic(s: &mut Raw) -> String {
    match s.recv() {
        Some(Packet::Publish(p)) => p.topic,
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

fn sentinel(gw: &tether::Gateway) {
    let mut p = Raw::connected(gw.tcp_addr, "sentinel", Version::V311);
    p.send(&Packet::Publish(codec::Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "will/sentinel".into(),
        pkid: 0,
        properties: Default::default(),
        payload: bytes::Bytes::new(),
    }));
    p.send(&Packet::Disconnect(Default::default()));
    p.until_closed();
}

#[test]
fn abnormal_close_publishes_and_normal_disconnect_does_not() {
    let gw = gateway(2, |_| {});
    let mut w = watcher(&gw, "w1");
    let polite = connect_with_will(&gw, "polite", Version::V5, 60, None, 0);
    let mut polite = polite;
    polite.send(&Packet::Disconnect(Default::default()));
    polite.until_closed();
    let rude = connect_with_will(&gw, "rude", Version::V311, 60, None, 0);
    drop(rude); // closed without DISCONNECT
    assert_eq!(
        next_topic(&mut w),
        "will/rude",
        "the polite client's will was not published"
    );
}

#[test]
fn disconnect_with_will_0x04_publishes() {
    let gw = gateway(1, |_| {});
    let mut w = watcher(&gw, "w2");
    let mut c = connect_with_will(&gw, "leaver", Version::V5, 60, None, 0);
    c.send(&Packet::Disconnect(codec::ReasonOnly {
        code: codec::reason::DISCONNECT_WITH_WILL,
        properties: Default::default(),
    }));
    c.until_closed();
    assert_eq!(next_topic(&mut w), "will/leaver");
}

#[test]
fn keep_alive_expiry_publishes() {
    let gw = gateway(2, |_| {});
    let mut w = watcher(&gw, "w3");
    let mut c = connect_with_will(&gw, "silent", Version::V5, 1, None, 0);
    assert!(
        matches!(c.until_closed().as_slice(), [Packet::Disconnect(d)] if d.code == codec::reason::KEEP_ALIVE_TIMEOUT)
    );
    assert_eq!(next_topic(&mut w), "will/silent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_across_cores_publishes_an_undelayed_will() {
    let gw = gateway(2, |_| {});
    let mut w = watcher(&gw, "w4");
    let mut o = v4_options(&gw, "twin", false);
    o.set_last_will(rumqttc::LastWill::new(
        "will/twin",
        "gone",
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let _first = v4(&gw, o.clone(), Some(0)).await;
    let second = v4(&gw, o, Some(1)).await;
    assert!(second.session_present);
    let topic = tokio::task::spawn_blocking(move || next_topic(&mut w))
        .await
        .unwrap();
    assert_eq!(topic, "will/twin");
}

#[test]
fn will_delay_is_honoured_and_a_reconnect_cancels_it() {
    let gw = gateway(2, |_| {});
    let mut w = watcher(&gw, "w5");
    // Cancelled: back within the delay.
    let first = connect_with_will(&gw, "back", Version::V5, 60, Some(2), 60);
    drop(first);
    until_blocking("the session to go offline", || gw.stats().connections == 1);
    let _again = connect_with_will(&gw, "back", Version::V5, 60, None, 60);
    // Published: gone for good, after the delay.
    let gone = connect_with_will(&gw, "late", Version::V5, 60, Some(1), 60);
    let start = Instant::now();
    drop(gone);
    assert_eq!(
        next_topic(&mut w),
        "will/late",
        "only the un-cancelled will arrives"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "published before its delay: {:?}",
        start.elapsed()
    );
    // Let the cancelled will's delay pass too, then prove it never came.
    std::thread::sleep(Duration::from_millis(1200));
    sentinel(&gw);
    assert_eq!(next_topic(&mut w), "will/sentinel");
}

#[test]
fn session_ending_before_the_delay_publishes_at_once() {
    let gw = gateway(1, |_| {});
    let mut w = watcher(&gw, "w6");
    let c = connect_with_will(&gw, "short", Version::V5, 60, Some(300), 0);
    let start = Instant::now();
    drop(c);
    assert_eq!(next_topic(&mut w), "will/short");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "waited for the 300 s delay"
    );
}
