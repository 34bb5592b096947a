//! `[auth]`: a users file (argon2id) and an ACL file with `%u`/`%c`
//! templates, against Tether's own byte-exact client, rumqttc and
//! Mosquitto's command-line clients.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::web::metric;
use crate::common::*;
use bytes::Bytes;
use tether::codec::{self, Packet, QoS, Version, Will};

const ACL: &str = "\
allow both      user/%u/#
allow subscribe broadcast
allow publish   devices/%c/state
allow subscribe lan/#  peer 127.0.0.0/8
allow subscribe wan/#  peer 192.0.2.0/24
deny  both      #
";

/// A temporary directory with a users file (ann: `pw-ann`, bob: `pw-bob`)
/// and the ACL file; removed on drop.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(tag: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("tether-auth-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let users = dir.join("users");
        tether::adapters::auth::users::set_password(&users, "ann", b"pw-ann").unwrap();
        tether::adapters::auth::users::set_password(&users, "bob", b"pw-bob").unwrap();
        std::fs::write(dir.join("acl"), ACL).unwrap();
        Files { dir }
    }

    fn users(&self) -> String {
        self.dir.join("users").display().to_string()
    }

    fn acl(&self) -> String {
        self.dir.join("acl").display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn secured(files: &Files) -> tether::Gateway {
    let (users, acl) = (files.users(), files.acl());
    gateway(2, move |c| {
        c.auth.users_file = users;
        c.auth.acl_file = acl;
    })
}

/// CONNECT as `user` with `password` (none: anonymous); the CONNACK code.
fn connack(
    gw: &tether::Gateway,
    version: Version,
    user: Option<&str>,
    password: &str,
) -> (Raw, u8) {
    let mut r = Raw::open(gw.tcp_addr);
    r.version = version;
    let mut c = connect_packet(&format!("c-{}", user.unwrap_or("anon")), version);
    c.username = user.map(str::to_string);
    c.password = user.map(|_| Bytes::copy_from_slice(password.as_bytes()));
    r.send(&Packet::Connect(Box::new(c)));
    match r.recv() {
        Some(Packet::ConnAck(a)) => (r, a.code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn users_connect_with_their_password_and_stay_in_their_own_tree() {
    let files = Files::new("tree");
    let gw = secured(&files);
    // Refusals, with the code each version has for them.
    assert_eq!(connack(&gw, Version::V5, Some("ann"), "wrong").1, 0x86);
    assert_eq!(
        connack(&gw, Version::V311, Some("ann"), "wrong").1,
        4,
        "3.1.1: bad user name or password"
    );
    assert_eq!(
        connack(&gw, Version::V5, Some("carl"), "pw").1,
        0x86,
        "unknown user"
    );
    assert_eq!(
        connack(&gw, Version::V5, None, "").1,
        0x87,
        "anonymous not allowed"
    );

    let (mut ann, code) = connack(&gw, Version::V5, Some("ann"), "pw-ann");
    assert_eq!(code, 0);
    assert_eq!(suback(&mut ann, 1, "user/ann/#"), 1, "granted QoS 1");
    assert_eq!(suback(&mut ann, 2, "user/bob/#"), 0x87);
    assert_eq!(
        suback(&mut ann, 3, "user/+/inbox"),
        0x87,
        "a wildcard over other users' trees"
    );
    assert_eq!(suback(&mut ann, 4, "#"), 0x87);
    assert_eq!(suback(&mut ann, 5, "broadcast"), 1);
    assert_eq!(suback(&mut ann, 50, "lan/printers"), 1, "from 127.0.0.1");
    assert_eq!(suback(&mut ann, 51, "wan/x"), 0x87, "not from 192.0.2.0/24");
    assert_eq!(puback(&mut ann, 6, "user/bob/inbox"), 0x87);
    let mut early = Vec::new();
    assert_eq!(puback_seeing(&mut ann, 7, "user/ann/notes", &mut early), 0);
    let p = next_publish(&mut ann, &mut early);
    assert_eq!(p.topic, "user/ann/notes", "her own, back");
    ann.send(&Packet::PubAck(codec::Ack::new(p.pkid)));

    // bob on 3.1.1: a refused SUBSCRIBE is 0x80, a refused PUBLISH is
    // dropped (3.1.1 has no negative PUBACK) and reaches nobody.
    let (mut bob, code) = connack(&gw, Version::V311, Some("bob"), "pw-bob");
    assert_eq!(code, 0);
    assert_eq!(suback(&mut bob, 1, "user/ann/#"), 0x80);
    bob.send(&Packet::Publish(codec::Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "user/ann/inbox".into(),
        pkid: 0,
        properties: Default::default(),
        payload: Bytes::from_static(b"from bob"),
    }));
    // ann then publishes to herself: the next thing she receives is that,
    // not bob's.
    assert_eq!(puback_seeing(&mut ann, 8, "user/ann/inbox", &mut early), 0);
    let p = next_publish(&mut ann, &mut early);
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        ("user/ann/inbox", &b"x"[..])
    );
    assert!(metric(&gw, "tether_denied_publishes_total") >= 2.0);

    // A will the client may not publish is refused at CONNECT.
    let mut r = Raw::open(gw.tcp_addr);
    let mut c = connect_packet("c-will", Version::V5);
    c.username = Some("ann".into());
    c.password = Some(Bytes::from_static(b"pw-ann"));
    c.will = Some(Will {
        topic: "user/bob/alarm".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    r.send(&Packet::Connect(Box::new(c)));
    match r.recv() {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, 0x87),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_storm_of_bad_passwords_costs_one_verification() {
    let files = Files::new("storm");
    let (users, acl) = (files.users(), files.acl());
    // No bans here: this is about what the checks cost.
    let gw = gateway(2, move |c| {
        c.auth.users_file = users;
        c.auth.acl_file = acl;
        c.auth.ban_after_failures = 0;
    });
    for _ in 0..300 {
        assert_eq!(connack(&gw, Version::V311, Some("ann"), "guess").1, 4);
    }
    let verified = metric(&gw, "tether_auth_verifications_total");
    assert!(
        verified <= 2.0,
        "{verified} argon2 verifications for one bad password"
    );
    assert!(metric(&gw, "tether_auth_cache_hits_total") >= 298.0);
    // The right password is not shadowed by the cached refusal.
    assert_eq!(connack(&gw, Version::V311, Some("ann"), "pw-ann").1, 0);
    // And it is remembered too.
    for _ in 0..50 {
        assert_eq!(connack(&gw, Version::V5, Some("ann"), "pw-ann").1, 0);
    }
    assert!(metric(&gw, "tether_auth_verifications_total") <= verified + 2.0);
}

#[test]
fn a_reload_changes_rules_and_passwords_without_dropping_anyone() {
    let files = Files::new("reload");
    let gw = secured(&files);
    let (mut ann, _) = connack(&gw, Version::V5, Some("ann"), "pw-ann");
    assert_eq!(suback(&mut ann, 1, "news/#"), 0x87);
    std::fs::write(
        files.dir.join("acl"),
        format!("allow subscribe news/#\n{ACL}"),
    )
    .unwrap();
    // Verified once: remembered for auth.cache_secs, until the reload.
    assert_eq!(connack(&gw, Version::V5, Some("bob"), "pw-bob").1, 0);
    tether::adapters::auth::users::set_password(
        files.dir.join("users").as_ref(),
        "bob",
        b"new-bob",
    )
    .unwrap();
    for r in gw.auth_files().reload() {
        r.expect("both files reload");
    }
    assert_eq!(
        suback(&mut ann, 2, "news/#"),
        1,
        "the new rule, same connection"
    );
    assert_eq!(
        connack(&gw, Version::V5, Some("bob"), "pw-bob").1,
        0x86,
        "old password gone"
    );
    assert_eq!(connack(&gw, Version::V5, Some("bob"), "new-bob").1, 0);
    // A broken file keeps the rules in force.
    std::fs::write(files.dir.join("acl"), "permit everything\n").unwrap();
    let errors: Vec<String> = gw
        .auth_files()
        .reload()
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("line 1"), "{errors:?}");
    assert_eq!(suback(&mut ann, 3, "news/#"), 1);
}

#[test]
fn mosquitto_clients_log_in_and_are_kept_to_their_topics() {
    let files = Files::new("mosquitto");
    let gw = secured(&files);
    let port = gw.tcp_addr.port().to_string();
    let sub = Command::new("mosquitto_sub")
        .args([
            "-p",
            &port,
            "-u",
            "ann",
            "-P",
            "pw-ann",
            "-q",
            "1",
            "-t",
            "user/ann/inbox",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    let subscribed = || metric(&gw, "tether_subscriptions") >= 1.0;
    let deadline = std::time::Instant::now() + WAIT;
    while !subscribed() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto_sub subscribed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let publish = |user: &str, pw: &str, msg: &str| {
        Command::new("mosquitto_pub")
            .args([
                "-p",
                &port,
                "-u",
                user,
                "-P",
                pw,
                "-q",
                "1",
                "-t",
                "user/ann/inbox",
                "-m",
                msg,
            ])
            .status()
            .expect("mosquitto_pub")
    };
    // bob may not write to ann's inbox (3.1.1: dropped); a wrong password
    // does not get in at all.
    publish("bob", "pw-bob", "from bob");
    assert!(!publish("ann", "nope", "bad login").success());
    assert!(publish("ann", "pw-ann", "from ann").success());
    let out = sub.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from ann");
}

/// `openssl` with `args`, in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (apt-get install openssl)")
        .success();
    assert!(ok, "openssl {args:?}");
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `sub`, signed with `key` by `alg`, `exp`/`nbf` relative to
/// now and an audience.
fn token(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    kid: Option<&str>,
    sub: &str,
    exp: i64,
    nbf: i64,
    aud: &str,
) -> String {
    let mut h = jsonwebtoken::Header::new(alg);
    h.kid = kid.map(str::to_string);
    let t = now() as i64;
    let claims = serde_json::json!({
        "sub": sub, "iss": "tether-tests", "aud": aud, "exp": t + exp, "nbf": t + nbf,
    });
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

/// CONNECT with `password` (and `user`); the CONNACK code.
fn with_token(gw: &tether::Gateway, user: Option<&str>, password: &str) -> u8 {
    let mut r = Raw::open(gw.tcp_addr);
    let mut c = connect_packet("jwt-client", Version::V5);
    c.username = user.map(str::to_string);
    c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    r.send(&Packet::Connect(Box::new(c)));
    match r.recv() {
        Some(Packet::ConnAck(a)) => a.code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn jwts_of_each_algorithm_admit_and_bad_ones_are_refused() {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let files = Files::new("jwt");
    let d = files.dir.clone();
    openssl(
        &d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ],
    );
    openssl(
        &d,
        &["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub"],
    );
    openssl(
        &d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.pem",
        ],
    );
    openssl(&d, &["pkey", "-in", "ec.pem", "-pubout", "-out", "ec.pub"]);
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(d.join("rsa.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(d.join("ec.pem")).unwrap()).unwrap();
    let hs = EncodingKey::from_secret(b"shared-secret");
    // One gateway per public key, both with the shared secret and the
    // users file behind them (a non-JWT password still goes there).
    let start = |public: &str| {
        let (users, public) = (files.users(), d.join(public).display().to_string());
        gateway(1, move |c| {
            c.auth.users_file = users;
            c.auth.jwt.secret = "shared-secret".into();
            c.auth.jwt.public_key_file = public;
            c.auth.jwt.issuer = "tether-tests".into();
            c.auth.jwt.audience = "mqtt".into();
        })
    };
    let (gw_rsa, gw_ec) = (start("rsa.pub"), start("ec.pub"));
    let ok = |alg, key| token(alg, key, None, "ann", 600, -10, "mqtt");
    assert_eq!(
        with_token(&gw_rsa, Some("ann"), &ok(Algorithm::HS256, &hs)),
        0,
        "HS256"
    );
    assert_eq!(
        with_token(&gw_rsa, None, &ok(Algorithm::RS256, &rsa)),
        0,
        "RS256, no user name"
    );
    assert_eq!(
        with_token(&gw_ec, Some("ann"), &ok(Algorithm::ES256, &ec)),
        0,
        "ES256"
    );
    assert_eq!(
        with_token(&gw_rsa, Some("ann"), "pw-ann"),
        0,
        "not a JWT: the users file"
    );
    let refused = |gw: &tether::Gateway, user, t: &str, why: &str| {
        assert_eq!(with_token(gw, user, t), 0x86, "{why}");
    };
    refused(
        &gw_rsa,
        None,
        &token(Algorithm::HS256, &hs, None, "ann", -120, -600, "mqtt"),
        "expired",
    );
    refused(
        &gw_rsa,
        None,
        &token(Algorithm::HS256, &hs, None, "ann", 600, 300, "mqtt"),
        "not yet valid",
    );
    refused(
        &gw_rsa,
        None,
        &token(Algorithm::HS256, &hs, None, "ann", 600, -10, "other"),
        "wrong audience",
    );
    let forged = EncodingKey::from_secret(b"guessed");
    refused(
        &gw_rsa,
        None,
        &token(Algorithm::HS256, &forged, None, "ann", 600, -10, "mqtt"),
        "bad signature",
    );
    refused(
        &gw_rsa,
        Some("bob"),
        &ok(Algorithm::HS256, &hs),
        "a user name other than the token's",
    );
    refused(
        &gw_rsa,
        None,
        &ok(Algorithm::ES256, &ec),
        "an ES256 token with only an RSA key",
    );

    // A JWKS: the RSA key by its kid, read from the modulus openssl prints.
    let out = Command::new("openssl")
        .args(["rsa", "-pubin", "-in", "rsa.pub", "-modulus", "-noout"])
        .current_dir(&d)
        .output()
        .unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    let hex = hex.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig",
        "n": b64(&n), "e": b64(&[1, 0, 1])}]});
    std::fs::write(d.join("jwks.json"), jwks.to_string()).unwrap();
    let jwks_path = d.join("jwks.json").display().to_string();
    let gw_jwks = gateway(1, move |c| {
        c.auth.jwt.jwks_file = jwks_path;
        c.auth.jwt.audience = "mqtt".into();
    });
    let t = token(Algorithm::RS256, &rsa, Some("k1"), "ann", 600, -10, "mqtt");
    assert_eq!(with_token(&gw_jwks, None, &t), 0, "RS256 through the JWKS");
    assert_eq!(
        with_token(&gw_jwks, Some("ann"), "pw-ann"),
        0x86,
        "no users file: a password is refused"
    );
    assert!(metric(&gw_rsa, "tether_auth_jwt_denied_total") >= 6.0);
}

#[test]
fn an_address_with_repeated_failed_logins_is_banned_before_any_check() {
    let files = Files::new("ban");
    let users = files.users();
    let gw = gateway(1, move |c| {
        c.auth.users_file = users;
        c.auth.ban_after_failures = 3;
        c.auth.ban_window_secs = 60;
        c.auth.ban_secs = 600;
    });
    for _ in 0..3 {
        assert_eq!(connack(&gw, Version::V5, Some("ann"), "guess").1, 0x86);
    }
    let checked = metric(&gw, "tether_auth_denied_total");
    // Banned now, even with the right password, and the users file is not
    // asked (a storm costs the checks nothing).
    assert_eq!(connack(&gw, Version::V5, Some("ann"), "pw-ann").1, 0x8A);
    assert_eq!(
        connack(&gw, Version::V311, Some("ann"), "pw-ann").1,
        5,
        "3.1.1: not authorized"
    );
    assert_eq!(metric(&gw, "tether_auth_denied_total"), checked);
    assert_eq!(metric(&gw, "tether_bans_total"), 1.0);
    assert_eq!(metric(&gw, "tether_banned_connects_total"), 2.0);
}

#[test]
fn a_jwt_acl_claim_binds_its_connection() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let gw = gateway(1, |c| {
        c.auth.jwt.secret = "shared-secret".into();
    });
    let key = EncodingKey::from_secret(b"shared-secret");
    let mint =
        |claims: serde_json::Value| encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
    let exp = now() + 600;
    let confined = mint(serde_json::json!({
        "sub": "ann", "exp": exp, "acl": ["allow both room/%u/#", "deny both #"],
    }));
    let free = mint(serde_json::json!({"sub": "bob", "exp": exp}));
    let login = |token: &str| {
        let mut r = Raw::open(gw.tcp_addr);
        r.version = Version::V5;
        let mut c = connect_packet("", Version::V5);
        c.password = Some(Bytes::copy_from_slice(token.as_bytes()));
        r.send(&Packet::Connect(Box::new(c)));
        match r.recv() {
            Some(Packet::ConnAck(a)) => assert_eq!(a.code, 0),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        r
    };
    let mut ann = login(&confined);
    assert_eq!(suback(&mut ann, 1, "room/ann/#"), 1);
    assert_eq!(
        suback(&mut ann, 2, "room/+/chat"),
        0x87,
        "a wildcard over others"
    );
    assert_eq!(puback(&mut ann, 3, "lobby"), 0x87);
    // Without rules in the token (and no ACL file) nothing confines bob.
    let mut bob = login(&free);
    assert_eq!(suback(&mut bob, 1, "room/+/chat"), 1);
    // A claim that is not rules refuses the token.
    let garbled = mint(serde_json::json!({"sub": "eve", "exp": exp, "acl": "allow both #"}));
    assert_eq!(with_token(&gw, None, &garbled), 0x86);
    let bad_rule = mint(serde_json::json!({"sub": "eve", "exp": exp, "acl": ["permit #"]}));
    assert_eq!(with_token(&gw, None, &bad_rule), 0x86);
}
