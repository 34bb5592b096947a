//! MQTT over WebSocket: rumqttc's WebSocket transport (tungstenite) as an
//! independent client, across cores and to and from TCP clients, and raw
//! frames for the edges: split and packed packets, ping, text frames, size
//! limits, bad upgrades.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use rumqttc::QoS as RQoS;

fn ws_options(gw: &tether::Gateway, id: &str) -> rumqttc::MqttOptions {
    let port = gw.ws_addr.expect("WebSocket enabled").port();
    let mut o = rumqttc::MqttOptions::new(id, format!("ws://127.0.0.1:{port}/mqtt"), port);
    o.set_transport(rumqttc::Transport::Ws);
    o.set_keep_alive(Duration::from_secs(30));
    // rumqttc's default limit is 10 KiB; the test sends a 70 KB message,
    // which spans WebSocket frames on the way in.
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_talk_to_tcp_clients_on_every_core() {
    let gw = gateway(2, |_| {});
    let mut ws = Vec::new();
    for core in 0..2 {
        let mut c = v4(&gw, ws_options(&gw, &format!("browser-{core}")), Some(core)).await;
        c.subscribe("chat/#", RQoS::AtLeastOnce).await;
        ws.push(c);
    }
    let mut o = v4_options(&gw, "device", true);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let mut tcp = v4(&gw, o, None).await;
    tcp.subscribe("up/#", RQoS::AtLeastOnce).await;
    tcp.client
        .publish("chat/room", RQoS::AtLeastOnce, false, vec![7u8; 70_000])
        .await
        .unwrap();
    for c in &mut ws {
        let p = c.publish().await;
        assert_eq!((p.payload.len(), p.qos), (70_000, RQoS::AtLeastOnce));
    }
    ws[1]
        .client
        .publish("up/report", RQoS::AtLeastOnce, false, "from the browser")
        .await
        .unwrap();
    assert_eq!(&tcp.publish().await.payload[..], b"from the browser");
    assert_eq!(gw.stats().connections, 3);
}

/// A raw client: upgrade, then masked frames.
struct Raw(TcpStream);

impl Raw {
    fn upgrade(gw: &tether::Gateway, request: &str) -> (Raw, String) {
        let mut s = TcpStream::connect(gw.ws_addr.unwrap()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
        (Raw(s), String::from_utf8(head).unwrap())
    }

    fn open(gw: &tether::Gateway) -> Raw {
        let (raw, head) = Raw::upgrade(gw, &upgrade("/mqtt"));
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw
    }

    fn send(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        self.0.write_all(&f).unwrap();
    }

    /// Next server frame: (opcode, payload).
    fn frame(&mut self) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        self.0.read_exact(&mut h).unwrap();
        assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
        let len = match h[1] & 0x7F {
            126 => {
                let mut l = [0u8; 2];
                self.0.read_exact(&mut l).unwrap();
                u16::from_be_bytes(l) as usize
            }
            127 => {
                let mut l = [0u8; 8];
                self.0.read_exact(&mut l).unwrap();
                u64::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        self.0.read_exact(&mut p).unwrap();
        (h[0] & 0x0F, p)
    }
}

/// CONNECT (3.1.1, clean session) encoded by the gateway's own codec.
fn connect_bytes(id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let c = connect_packet(id, tether::codec::Version::V311);
    tether::codec::encode(
        &tether::codec::Packet::Connect(Box::new(c)),
        tether::codec::Version::V311,
        &mut out,
    );
    out
}

fn upgrade(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
}

#[test]
fn packets_split_across_frames_and_packed_in_one_frame() {
    let gw = gateway(1, |_| {});
    let mut raw = Raw::open(&gw);
    let connect = connect_bytes("raw-ws");
    // CONNECT in three frames: binary, continuation, continuation.
    raw.send(0x2, false, &connect[..3]);
    raw.send(0x0, false, &connect[3..7]);
    raw.send(0x0, true, &connect[7..]);
    let (op, connack) = raw.frame();
    assert_eq!((op, &connack[..]), (0x2, &[0x20, 0x02, 0x00, 0x00][..]));
    // SUBSCRIBE and PINGREQ packed in one frame.
    let sub = [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x00];
    let mut both = sub.to_vec();
    both.extend_from_slice(&[0xC0, 0x00]);
    raw.send(0x2, true, &both);
    let mut got = Vec::new();
    while got.len() < 7 {
        got.extend(raw.frame().1);
    }
    assert_eq!(got, [0x90, 0x03, 0x00, 0x01, 0x00, 0xD0, 0x00]);
    // A WebSocket ping is answered with its payload.
    raw.send(0x9, true, b"hi");
    assert_eq!(raw.frame(), (0xA, b"hi".to_vec()));
}

#[test]
fn text_frames_oversized_frames_and_bad_upgrades_are_refused() {
    let gw = gateway(1, |c| c.websocket.max_frame_bytes = 1000);
    let mut raw = Raw::open(&gw);
    raw.send(0x1, true, b"{\"mqtt\": \"as text\"}");
    assert_eq!(raw.frame(), (0x8, 1003u16.to_be_bytes().to_vec()));

    let mut raw = Raw::open(&gw);
    raw.send(0x2, true, &connect_bytes("big"));
    assert_eq!(raw.frame().0, 0x2, "CONNACK");
    raw.send(0x2, true, &[0u8; 2000]);
    assert_eq!(raw.frame(), (0x8, 1009u16.to_be_bytes().to_vec()));

    let (_, head) = Raw::upgrade(&gw, &upgrade("/elsewhere"));
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (_, head) = Raw::upgrade(
        &gw,
        &upgrade("/mqtt").replace("Protocol: mqtt", "Protocol: chat"),
    );
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // The gateway carries on.
    let mut raw = Raw::open(&gw);
    raw.send(0x2, true, &connect_bytes("after"));
    assert_eq!(raw.frame().1, [0x20, 0x02, 0x00, 0x00]);
}
