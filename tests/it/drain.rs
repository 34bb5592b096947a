//! Taking a node out of service without a reconnect storm:
//! `POST /v1/admin/drain` fails readiness, closes the clients at
//! `drain.rate_per_sec` (MQTT 5: DISCONNECT 0x9C with the configured Server
//! Reference), and the node stops once they are gone.

use std::time::{Duration, Instant};

use crate::common::web::http;
use crate::common::*;
use tether::codec::{reason, Packet, Version};

#[test]
fn a_drain_moves_clients_away_at_its_rate_then_stops_the_node() {
    let gw = gateway(2, |c| {
        c.drain.rate_per_sec = 100;
        c.drain.server_reference = "other.example:1883".into();
    });
    let mut v5s: Vec<Raw> = (0..150)
        .map(|i| Raw::connected(gw.tcp_addr, &format!("d5-{i}"), Version::V5))
        .collect();
    let mut v4s: Vec<Raw> = (0..50)
        .map(|i| Raw::connected(gw.tcp_addr, &format!("d4-{i}"), Version::V311))
        .collect();
    let api = gw.http_addr.unwrap();
    assert_eq!(http(api, "GET", "/readyz", &[], "").status, 200);
    let started = Instant::now();
    let r = http(api, "POST", "/v1/admin/drain", &[], "");
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["connections"], 200);
    let ready = http(api, "GET", "/readyz", &[], "");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "draining");
    assert_eq!(
        http(api, "POST", "/v1/admin/drain", &[], "").status,
        202,
        "asking again is harmless"
    );
    for c in &mut v5s {
        let got = c.until_closed();
        match got.last() {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.code, reason::USE_ANOTHER_SERVER);
                assert_eq!(
                    d.properties.server_reference.as_deref(),
                    Some("other.example:1883")
                );
            }
            other => panic!("expected DISCONNECT 0x9C, got {other:?}"),
        }
    }
    for c in &mut v4s {
        assert!(c.until_closed().is_empty(), "3.1.1: a plain close");
    }
    // 200 clients at 100 a second: about two seconds, not all at once.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "drained in {took:?}");
    assert_eq!(gw.stats().drained, 200);
    assert!(gw.join_timeout(WAIT), "the node stops once drained");
}
