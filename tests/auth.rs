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
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.websocket.listen = "127.0.0.1:0".parse().unwrap();
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

/// Enhanced authentication with a toy challenge/response method:
/// client says "hello", server challenges "2+2?", client must answer "4".
struct Arithmetic;

struct Exchange {
    challenged: bool,
}

impl tether::auth::AuthExchange for Exchange {
    fn step(&mut self, data: Option<&[u8]>) -> tether::auth::AuthStep {
        use tether::auth::AuthStep;
        match (self.challenged, data) {
            (false, Some(b"hello")) => {
                self.challenged = true;
                AuthStep::Continue(bytes::Bytes::from_static(b"2+2?"))
            }
            (true, Some(b"4")) => AuthStep::Success(Some(bytes::Bytes::from_static(b"welcome"))),
            _ => AuthStep::Fail(reason::NOT_AUTHORIZED),
        }
    }
}

impl Authenticator for Arithmetic {
    fn authenticate(&self, _: &Credentials<'_>) -> Verdict {
        Verdict::Allow
    }

    fn enhanced(
        &self,
        method: &str,
        _: &Credentials<'_>,
    ) -> Option<Box<dyn tether::auth::AuthExchange>> {
        (method == "arith").then(|| {
            Box::new(Exchange { challenged: false }) as Box<dyn tether::auth::AuthExchange>
        })
    }
}

fn auth_packet(code: u8, data: &'static [u8]) -> Packet {
    Packet::Auth(codec::ReasonOnly {
        code,
        properties: codec::Properties {
            authentication_method: Some("arith".into()),
            authentication_data: Some(bytes::Bytes::from_static(data)),
            ..Default::default()
        },
    })
}

fn connect_with(gw: &tether::Gateway, id: &str, method: &str, data: &'static [u8]) -> Raw {
    let mut c = Raw::open(gw.tcp_addr);
    let properties = codec::Properties {
        authentication_method: Some(method.into()),
        authentication_data: Some(bytes::Bytes::from_static(data)),
        ..Default::default()
    };
    c.send(&Packet::Connect(Box::new(codec::Connect {
        properties,
        ..connect_packet(id, Version::V5)
    })));
    c
}

#[test]
fn enhanced_authentication_exchange_and_reauthentication() {
    let mut cfg = tether::Config::default();
    cfg.node.cores = 2;
    cfg.sys.interval_secs = 0;
    cfg.listeners.tcp = "127.0.0.1:0".parse().unwrap();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.websocket.listen = "127.0.0.1:0".parse().unwrap();
    let gw = tether::Gateway::start_with(cfg, Arc::new(Arithmetic)).unwrap();

    // CONNECT → AUTH 0x18 challenge → AUTH 0x18 answer → CONNACK with the final data.
    let mut c = connect_with(&gw, "solver", "arith", b"hello");
    match c.recv() {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.code, reason::CONTINUE_AUTHENTICATION);
            assert_eq!(
                a.properties.authentication_data.as_deref(),
                Some(&b"2+2?"[..])
            );
        }
        other => panic!("expected the challenge, got {other:?}"),
    }
    c.send(&auth_packet(reason::CONTINUE_AUTHENTICATION, b"4"));
    match c.recv() {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.code, 0);
            assert_eq!(a.properties.authentication_method.as_deref(), Some("arith"));
            assert_eq!(
                a.properties.authentication_data.as_deref(),
                Some(&b"welcome"[..])
            );
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // Re-authentication on the live connection: AUTH 0x19 ... AUTH 0x00.
    c.send(&auth_packet(reason::RE_AUTHENTICATE, b"hello"));
    assert!(matches!(c.recv(), Some(Packet::Auth(a)) if a.code == reason::CONTINUE_AUTHENTICATION));
    c.send(&auth_packet(reason::CONTINUE_AUTHENTICATION, b"4"));
    assert!(matches!(c.recv(), Some(Packet::Auth(a)) if a.code == reason::SUCCESS));
    c.send(&Packet::PingReq);
    assert_eq!(c.recv(), Some(Packet::PingResp), "still connected");

    // A wrong answer: CONNACK 0x87.
    let mut w = connect_with(&gw, "guesser", "arith", b"hello");
    assert!(matches!(w.recv(), Some(Packet::Auth(_))));
    w.send(&auth_packet(reason::CONTINUE_AUTHENTICATION, b"5"));
    assert_eq!(connack_code(&w.until_closed()), reason::NOT_AUTHORIZED);

    // Nothing but AUTH before CONNACK, and the refusal is a CONNACK (MQTT 5
    // 3.14.0-1: no DISCONNECT before a successful CONNACK).
    let mut p = connect_with(&gw, "pusher", "arith", b"hello");
    assert!(matches!(p.recv(), Some(Packet::Auth(_))));
    p.send(&Packet::PingReq);
    assert_eq!(connack_code(&p.until_closed()), reason::PROTOCOL_ERROR);

    // An unknown method: CONNACK 0x8C.
    let mut u = connect_with(&gw, "stranger", "kerberos", b"x");
    assert_eq!(
        connack_code(&u.until_closed()),
        reason::BAD_AUTHENTICATION_METHOD
    );
    assert_eq!(gw.stats().connects, 1);
}
