//! Dead-link reaping: keep-alive at 1.5x and the CONNECT deadline.

use std::time::{Duration, Instant};

use crate::common::*;
use tether::codec::{self, Packet, Version};

fn connect_with_keep_alive(
    addr: std::net::SocketAddr,
    id: &str,
    keep_alive: u16,
    version: Version,
) -> Raw {
    let mut r = Raw::open(addr);
    r.version = version;
    r.send(&Packet::Connect(Box::new(codec::Connect {
        keep_alive,
        ..connect_packet(id, version)
    })));
    assert!(matches!(r.recv(), Some(Packet::ConnAck(a)) if a.code == 0));
    r
}

#[test]
fn silent_v5_client_is_reaped_after_one_and_a_half_keep_alives() {
    let gw = gateway(2, |_| {});
    let start = Instant::now();
    let mut c = connect_with_keep_alive(gw.tcp_addr, "ka5", 1, Version::V5);
    let got = c.until_closed();
    let elapsed = start.elapsed();
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.code == codec::reason::KEEP_ALIVE_TIMEOUT),
        "expected DISCONNECT 0x8D, got {got:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1400),
        "reaped too early: {elapsed:?}"
    );
    assert_eq!(gw.stats().timeouts, 1);
}

#[test]
fn silent_v311_client_is_closed() {
    let gw = gateway(1, |_| {});
    let mut c = connect_with_keep_alive(gw.tcp_addr, "ka4", 1, Version::V311);
    assert_eq!(
        c.until_closed(),
        vec![],
        "3.1.1 has no DISCONNECT from the server"
    );
    assert_eq!(gw.stats().timeouts, 1);
}

#[test]
fn pings_keep_the_connection_alive() {
    let gw = gateway(1, |_| {});
    let mut c = connect_with_keep_alive(gw.tcp_addr, "ka-ping", 1, Version::V5);
    // Pacing the client (not synchronisation): ping at 2/3 of the keep-alive.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(600));
        c.send(&Packet::PingReq);
        assert_eq!(c.recv(), Some(Packet::PingResp));
    }
    assert_eq!(gw.stats().timeouts, 0);
}

#[test]
fn socket_without_connect_is_closed_at_the_deadline() {
    let gw = gateway(2, |c| c.mqtt.connect_timeout_ms = 300);
    let start = Instant::now();
    let mut c = Raw::open(gw.tcp_addr);
    assert_eq!(c.until_closed(), vec![]);
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(gw.stats().timeouts, 1);
}

/// A keep-alive at least as long as the CONNECT timeout gets no wheel
/// timer of its own: the CONNECT deadline's timer, firing on the active
/// connection, is its first check (one timer per idle connection). A silent
/// client is still reaped at 1.5x, and a client that pings is not.
#[test]
fn the_connect_deadline_carries_the_first_keep_alive_check() {
    let gw = gateway(1, |c| c.mqtt.connect_timeout_ms = 500);
    let start = Instant::now();
    let mut silent = connect_with_keep_alive(gw.tcp_addr, "ka-silent", 1, Version::V5);
    let mut pinging = connect_with_keep_alive(gw.tcp_addr, "ka-pinging", 1, Version::V5);
    // Pacing the client (not synchronisation): ping at 2/3 of the keep-alive,
    // past the CONNECT deadline and the first 1.5x.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(600));
        pinging.send(&Packet::PingReq);
        assert_eq!(pinging.recv(), Some(Packet::PingResp));
    }
    let got = silent.until_closed();
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.code == codec::reason::KEEP_ALIVE_TIMEOUT),
        "expected DISCONNECT 0x8D, got {got:?}"
    );
    assert!(start.elapsed() >= Duration::from_millis(1400));
    assert_eq!(gw.stats().timeouts, 1, "only the silent client timed out");
}
