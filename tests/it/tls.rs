//! MQTT over TLS and WebSocket over TLS with rumqttc's rustls transport as
//! an independent client, against a CA generated at test time: traffic to
//! and from plain TCP clients, certificate reload under connected clients,
//! client certificates (mTLS) whose CN becomes the username, and hostile
//! handshakes. The `mosquitto_sub --cafile` and SIGHUP path is in
//! tests/cli.rs.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::pki::{self, Ca, Leaf};
use crate::common::*;
use rumqttc::QoS as RQoS;
use tether::auth::{Authenticator, Credentials, Verdict};
use tether::{Config, Gateway};

/// Where a test's PEM files are.
struct Files {
    dir: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Files {
    fn new(test: &str, server: &Leaf) -> Files {
        let dir = pki::dir(test);
        let cert = pki::write(&dir, "server.pem", &server.cert);
        let key = pki::write(&dir, "server.key", &server.key);
        Files { dir, cert, key }
    }

    /// Replaces certificate and key (what an operator or certbot does
    /// before the reload).
    fn replace(&self, server: &Leaf) {
        pki::write(&self.dir, "server.pem", &server.cert);
        pki::write(&self.dir, "server.key", &server.key);
    }
}

fn tls_config(files: &Files) -> Config {
    let mut cfg = Config::default();
    cfg.sys.interval_secs = 0;
    cfg.node.cores = 2;
    cfg.listeners.tcp = "127.0.0.1:0".parse().unwrap();
    cfg.http.enabled = false;
    cfg.websocket.listen = "127.0.0.1:0".parse().unwrap();
    cfg.tls.enabled = true;
    cfg.tls.listen = "127.0.0.1:0".parse().unwrap();
    cfg.tls.wss_listen = "127.0.0.1:0".parse().unwrap();
    cfg.tls.cert_file = files.cert.clone();
    cfg.tls.key_file = files.key.clone();
    cfg
}

fn client_auth(leaf: Option<&Leaf>) -> Option<(Vec<u8>, Vec<u8>)> {
    leaf.map(|l| (l.cert.clone().into_bytes(), l.key.clone().into_bytes()))
}

/// rumqttc over TLS to `localhost` (the name in the server certificate),
/// trusting `ca`, presenting `cert` if given.
fn tls_options(gw: &Gateway, id: &str, ca: &Ca, cert: Option<&Leaf>) -> rumqttc::MqttOptions {
    let port = gw.tls_addr.expect("TLS enabled").port();
    let mut o = rumqttc::MqttOptions::new(id, "localhost", port);
    o.set_transport(rumqttc::Transport::tls(
        ca.pem().into_bytes(),
        client_auth(cert),
        None,
    ));
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

fn wss_options(gw: &Gateway, id: &str, ca: &Ca) -> rumqttc::MqttOptions {
    let port = gw.wss_addr.expect("wss enabled").port();
    let url = format!("wss://localhost:{port}/mqtt");
    let mut o = rumqttc::MqttOptions::new(id, url, port);
    o.set_transport(rumqttc::Transport::wss(ca.pem().into_bytes(), None, None));
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Connects and expects the connection to fail; returns rumqttc's error.
async fn refused(opts: rumqttc::MqttOptions) -> String {
    let (_client, mut el) = rumqttc::AsyncClient::new(opts, 10);
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("an answer in time")
        {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => {
                panic!("connected: {a:?}")
            }
            Ok(_) => {}
            Err(e) => return format!("{e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_wss_clients_talk_to_tcp_clients_on_every_core() {
    let ca = Ca::new("Tether test CA");
    let files = Files::new("talk", &ca.server());
    let gw = Gateway::start(tls_config(&files)).unwrap();
    let mut secure = Vec::new();
    for core in 0..2 {
        let id = format!("tls-{core}");
        let mut c = v4(&gw, tls_options(&gw, &id, &ca, None), Some(core)).await;
        c.subscribe("news/#", RQoS::AtLeastOnce).await;
        secure.push(c);
    }
    let mut wss = v4(&gw, wss_options(&gw, "browser", &ca), None).await;
    wss.subscribe("news/#", RQoS::AtLeastOnce).await;
    secure.push(wss);
    let mut o = v4_options(&gw, "device", true);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let mut tcp = v4(&gw, o, None).await;
    tcp.subscribe("up/#", RQoS::AtLeastOnce).await;
    // 100 kB spans several TLS records (16 KiB each) and reads.
    tcp.client
        .publish("news/big", RQoS::AtLeastOnce, false, vec![9u8; 100_000])
        .await
        .unwrap();
    for c in &mut secure {
        let p = c.publish().await;
        assert_eq!((p.payload.len(), p.qos), (100_000, RQoS::AtLeastOnce));
        assert!(p.payload.iter().all(|&b| b == 9));
    }
    for (i, c) in secure.iter().enumerate() {
        c.client
            .publish("up/report", RQoS::AtLeastOnce, false, format!("from {i}"))
            .await
            .unwrap();
        assert_eq!(tcp.publish().await.payload, format!("from {i}"));
    }
    assert_eq!(gw.stats().connections, 4);
    assert_eq!(gw.stats().tls_handshake_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_the_new_certificate_and_keeps_connected_clients() {
    let (old_ca, new_ca) = (Ca::new("Old CA"), Ca::new("New CA"));
    let files = Files::new("reload", &old_ca.server());
    let gw = Gateway::start(tls_config(&files)).unwrap();
    let mut kept = v4(&gw, tls_options(&gw, "kept", &old_ca, None), None).await;
    kept.subscribe("t", RQoS::AtLeastOnce).await;

    files.replace(&new_ca.server());
    let loaded = gw.reload_tls().expect("the new files load");
    assert!(loaded.subject.contains("localhost"), "{loaded}");

    // New handshakes get the new certificate: only the new CA verifies it.
    let err = refused(tls_options(&gw, "stale", &old_ca, None)).await;
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "{err}"
    );
    let mut fresh = v4(&gw, tls_options(&gw, "fresh", &new_ca, None), None).await;
    fresh.subscribe("t", RQoS::AtLeastOnce).await;
    // The client connected before the reload keeps its session.
    fresh
        .client
        .publish("t", RQoS::AtLeastOnce, false, "after reload")
        .await
        .unwrap();
    assert_eq!(&kept.publish().await.payload[..], b"after reload");
    assert_eq!(&fresh.publish().await.payload[..], b"after reload");

    // A broken reload says which file is wrong and keeps what works.
    pki::write(&files.dir, "server.key", "not a key\n");
    let err = gw.reload_tls().expect_err("an unusable key is refused");
    assert!(err.to_string().contains("tls.key_file"), "{err}");
    v4(&gw, tls_options(&gw, "still", &new_ca, None), None).await;
}

/// Records the usernames the auth layer is shown.
#[derive(Default)]
struct Recorder(Mutex<Vec<Option<String>>>);

impl Authenticator for Recorder {
    fn authenticate(&self, who: &Credentials<'_>) -> Verdict {
        self.0
            .lock()
            .unwrap()
            .push(who.username.map(str::to_string));
        Verdict::Allow
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_cn_is_the_username_and_unverified_clients_are_refused() {
    let ca = Ca::new("Device CA");
    let files = Files::new("mtls", &ca.server());
    let client_ca = pki::write(&files.dir, "clients.pem", &ca.pem());
    let mut cfg = tls_config(&files);
    cfg.tls.client_ca_file = client_ca;
    cfg.tls.require_client_cert = true;
    let recorder = Arc::new(Recorder::default());
    let gw = Gateway::start_with(cfg, recorder.clone()).unwrap();

    let alice = ca.client("alice");
    let mut o = tls_options(&gw, "phone", &ca, Some(&alice));
    o.set_credentials("mallory", "claimed");
    v4(&gw, o, None).await;
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [Some("alice".to_string())],
        "the certificate's CN, not the claimed username"
    );

    // No certificate, or one from another CA: the handshake fails and the
    // auth layer never sees the client.
    refused(tls_options(&gw, "anonymous", &ca, None)).await;
    let rogue = Ca::new("Rogue CA").client("alice");
    refused(tls_options(&gw, "rogue", &ca, Some(&rogue))).await;
    until("both handshakes counted", || {
        gw.stats().tls_handshake_errors >= 2
    })
    .await;
    assert_eq!(recorder.0.lock().unwrap().len(), 1);
    assert_eq!(gw.stats().connects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_plain_mqtt_on_the_tls_port_fail_the_handshake_only() {
    let ca = Ca::new("Test CA");
    let files = Files::new("garbage", &ca.server());
    let gw = Gateway::start(tls_config(&files)).unwrap();
    let mut ok = v4(&gw, tls_options(&gw, "bystander", &ca, None), None).await;
    ok.subscribe("t", RQoS::AtMostOnce).await;

    let tls_addr = gw.tls_addr.unwrap();
    let plain_connect = {
        use tether::codec::{encode, Packet, Version};
        let mut b = Vec::new();
        let connect = Packet::Connect(Box::new(connect_packet("plain", Version::V311)));
        encode(&connect, Version::V311, &mut b);
        b
    };
    for junk in [plain_connect, vec![0x16, 0x03, 0x01, 0xFF, 0xFF, 0, 0, 0]] {
        let mut s = std::net::TcpStream::connect(tls_addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&junk).unwrap();
        // The gateway answers with a TLS alert (content type 21) and closes.
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        assert_eq!(reply.first(), Some(&0x15), "an alert record: {reply:?}");
    }
    assert_eq!(gw.stats().tls_handshake_errors, 2);
    let mut o = v4_options(&gw, "pub", true);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let tcp = v4(&gw, o, None).await;
    tcp.client
        .publish("t", RQoS::AtMostOnce, false, "still here")
        .await
        .unwrap();
    assert_eq!(&ok.publish().await.payload[..], b"still here");
}

#[test]
fn unusable_files_stop_the_start_with_the_key_to_fix() {
    let ca = Ca::new("Test CA");
    let files = Files::new("start", &ca.server());
    let mut cfg = tls_config(&files);
    cfg.tls.cert_file = files.dir.join("missing.pem");
    let err = Gateway::start(cfg).err().expect("no certificate, no start");
    assert!(err.to_string().contains("tls.cert_file"), "{err}");
    pki::write(&files.dir, "server.key", &ca.client("other").key);
    let err = Gateway::start(tls_config(&files))
        .err()
        .expect("mismatched key");
    assert!(err.to_string().contains("does not fit"), "{err}");
}
