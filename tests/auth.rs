//! The authentication hook: a custom `Authenticator` decides every CONNECT,
//! and refusals reach both protocol versions with the right code.

mod common;

use std::sync::Arc;

use common::*;
use tether::auth::{Authenticator, Credentials, Verdict};
use tether::codec::{self, reason, Packet, Version};

struct OnlyAlice;

impl Authenticator for OnlyAlice {
    fn authenticate(&self, who: &Credentials<'_>) -> Verdict {
        if who.client_id == "banned" {
            return Verdict::Deny(reason::BANNED);
        }
        match (who.username, who.password) {
            (Some("alice"), Some(b"secret")) => Verdict::Allow,
            _ => Verdict::Deny(reason::BAD_USERNAME_OR_PASSWORD),
        }
    }
}

fn attempt(
    gw: &tether::Gateway,
    id: &str,
    v: Version,
    user: Option<&str>,
    pass: Option<&'static [u8]>,
) -> Vec<Packet> {
    let mut c = Raw::open(gw.tcp_addr);
    c.version = v;
    c.send(&Packet::Connect(Box::new(codec::Connect {
        username: user.map(Into::into),
        password: pass.map(bytes::Bytes::from_static),
        ..connect_packet(id, v)
    })));
    let first = c.recv().into_iter().collect::<Vec<_>>();
    if matches!(first.as_slice(), [Packet::ConnAck(a)] if a.code == 0) {
        return first; // admitted: stays connected
    }
    first.into_iter().chain(c.until_closed()).collect()
}

fn connack_code(got: &[Packet]) -> u8 {
    match got {
        [Packet::ConnAck(a)] => a.code,
        other => panic!("expected a lone CONNACK, got {other:?}"),
    }
}

#[test]
fn authenticator_decides_every_connect() {
    let mut cfg = tether::Config::default();
    cfg.node.cores = 2;
    cfg.sys.interval_secs = 0;
    cfg.listeners.tcp = "127.0.0.1:0".parse().unwrap();
    let gw = tether::Gateway::start_with(cfg, Arc::new(OnlyAlice)).unwrap();

    assert_eq!(
        connack_code(&attempt(
            &gw,
            "a1",
            Version::V5,
            Some("alice"),
            Some(b"secret")
        )),
        0
    );
    assert_eq!(
        connack_code(&attempt(
            &gw,
            "a2",
            Version::V311,
            Some("alice"),
            Some(b"secret")
        )),
        0
    );
    assert_eq!(
        connack_code(&attempt(
            &gw,
            "m1",
            Version::V5,
            Some("mallory"),
            Some(b"guess")
        )),
        reason::BAD_USERNAME_OR_PASSWORD
    );
    // 3.1.1 return code 4: bad user name or password.
    assert_eq!(
        connack_code(&attempt(&gw, "m2", Version::V311, Some("mallory"), None)),
        4
    );
    assert_eq!(
        connack_code(&attempt(
            &gw,
            "banned",
            Version::V5,
            Some("alice"),
            Some(b"secret")
        )),
        reason::BANNED
    );
    // 3.1.1 has no "banned": return code 5, not authorized.
    assert_eq!(
        connack_code(&attempt(
            &gw,
            "banned",
            Version::V311,
            Some("alice"),
            Some(b"secret")
        )),
        5
    );
    assert_eq!(
        gw.stats().connects,
        2,
        "only the admitted clients got a session"
    );
}
