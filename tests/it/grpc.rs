//! The gRPC API (`[grpc]`): pushes to a user on two nodes, idempotent
//! retries, Upstream streams shared by backend replicas (one killed with
//! SIGKILL mid-stream), the fallback without a backend, and bad input.
//! Clients: the tonic client generated from `src/grpc/tether.proto`, and
//! Python grpcio (Debian's, stubs generated at test time) for the
//! replicas and raw calls.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tether::grpc::proto::{self, tether_client::TetherClient};
use tonic::transport::Channel;
use tonic::Code;

use crate::common::cluster::{lines_of, Proc, TempDir};
use crate::common::web::metric;
use crate::common::*;

const TOKEN: &str = "grpc-test-token-0123456789";

async fn client(addr: std::net::SocketAddr) -> TetherClient<Channel> {
    TetherClient::connect(format!("http://{addr}"))
        .await
        .expect("gRPC connects")
}

/// `msg` with the test's bearer token.
fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

fn message(topic: &str, payload: &str, qos: u32) -> proto::Message {
    proto::Message {
        topic: topic.into(),
        payload: payload.to_owned().into_bytes().into(),
        qos,
        ..Default::default()
    }
}

/// Debian's python3 with grpcio (tests/run.sh installs python3-grpcio and
/// python3-grpc-tools), and the stubs generated into `dir`.
fn python_stubs(dir: &TempDir) -> String {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/grpc");
    let out = dir.0.to_str().unwrap().to_owned();
    let st = Command::new("/usr/bin/python3")
        .args(["-m", "grpc_tools.protoc", "-I", proto_dir])
        .arg(format!("--python_out={out}"))
        .arg(format!("--grpc_python_out={out}"))
        .arg(format!("{proto_dir}/tether.proto"))
        .status()
        .expect("python3 with grpc_tools: apt-get install python3-grpcio python3-grpc-tools");
    assert!(st.success(), "grpc_tools.protoc compiles tether.proto");
    out
}

fn script(name: &str) -> String {
    format!("{}/tests/grpc/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A backend replica process (`tests/grpc/replica.py`) and its lines.
struct Replica {
    proc: Proc,
    lines: mpsc::Receiver<String>,
    /// (seq, payload, redelivered) of every message it printed.
    got: Vec<(u64, String, bool)>,
}

impl Replica {
    fn start(
        stubs: &str,
        addr: std::net::SocketAddr,
        filter: &str,
        group: &str,
        hold_after: i64,
    ) -> Replica {
        let mut child = Command::new("/usr/bin/python3")
            .arg(script("replica.py"))
            .args([
                stubs,
                &addr.to_string(),
                filter,
                group,
                &hold_after.to_string(),
                TOKEN,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the replica");
        let lines = lines_of(child.stdout.take().unwrap());
        let r = Replica {
            proc: Proc(child),
            lines,
            got: Vec::new(),
        };
        let first = r
            .lines
            .recv_timeout(WAIT)
            .expect("the replica attaches in time");
        assert_eq!(first, "attached");
        r
    }

    /// Reads what the replica printed so far.
    fn drain(&mut self) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f[0], "got", "{line}");
            self.got
                .push((f[1].parse().unwrap(), f[2].to_owned(), f[3] == "1"));
        }
        self.got.len()
    }
}

/// The status of a `Publish` of `m` that must be refused.
async fn refused(c: &mut TetherClient<Channel>, m: proto::Message) -> tonic::Status {
    let req = proto::PublishRequest {
        message: Some(m),
        idempotency_key: String::new(),
    };
    c.publish(authed(req)).await.unwrap_err()
}

fn grpc_gateway(tweak: impl FnOnce(&mut tether::Config)) -> tether::Gateway {
    gateway(2, |c| {
        c.grpc.listen = Some("127.0.0.1:0".parse().unwrap());
        c.http.tokens = vec![TOKEN.into()];
        tweak(c);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_a_group_and_a_killed_one_hands_its_messages_on() {
    const N: usize = 1000;
    const WINDOW: u32 = 50;
    const HOLD_AFTER: usize = 150;
    let gw = grpc_gateway(|c| {
        c.grpc.upstream.topics = vec!["up/#".into()];
        c.grpc.upstream.window = WINDOW;
    });
    let addr = gw.grpc_addr.expect("gRPC on");
    let dir = TempDir::new("grpc-stubs");
    let stubs = python_stubs(&dir);
    // A acknowledges its first 150 and holds the rest; B acknowledges all.
    let mut a = Replica::start(&stubs, addr, "up/#", "workers", HOLD_AFTER as i64);
    let mut b = Replica::start(&stubs, addr, "up/#", "workers", -1);

    // Room for A's held window and more in flight: the publisher stalls
    // on acks, not on its own window.
    let mut o = v4_options(&gw, "device-1", true);
    o.set_inflight(N as u16);
    let mut publisher = v4(&gw, o, None).await;
    let client = publisher.client.clone();
    tokio::spawn(async move {
        for i in 0..N {
            client
                .publish("up/data", rumqttc::QoS::AtLeastOnce, false, format!("m{i}"))
                .await
                .unwrap();
        }
    });
    // Every message reaches a replica; the publisher's acks wait behind
    // those A holds (acks go out in publish order).
    until("every message at a replica", || a.drain() + b.drain() == N).await;
    let held = a.got.len() - HOLD_AFTER;
    assert!(held > 0 && held <= WINDOW as usize, "A holds {held}");
    until_within(
        "every ack but A's held ones processed",
        Duration::from_secs(15),
        || metric(&gw, "tether_upstream_unacked") == held as f64,
    )
    .await;
    a.proc.kill9();
    a.drain();

    let mut acked = 0;
    while acked < N {
        publisher
            .incoming(|p| matches!(p, rumqttc::Packet::PubAck(_)))
            .await;
        acked += 1;
    }
    until("B has every message A did not acknowledge", || {
        b.drain() == N - HOLD_AFTER
    })
    .await;

    let a_acked: std::collections::HashSet<&str> =
        a.got[..HOLD_AFTER].iter().map(|g| g.1.as_str()).collect();
    let a_held: std::collections::HashSet<&str> =
        a.got[HOLD_AFTER..].iter().map(|g| g.1.as_str()).collect();
    let mut seen = std::collections::HashSet::new();
    for (_, payload, redelivered) in &b.got {
        assert!(seen.insert(payload.as_str()), "{payload} doubled at B");
        assert!(
            !a_acked.contains(payload.as_str()),
            "{payload} went to both"
        );
        assert_eq!(
            *redelivered,
            a_held.contains(payload.as_str()),
            "{payload}: redelivered exactly when A held it"
        );
    }
    seen.extend(a_acked.iter().copied());
    assert_eq!(seen.len(), N, "every message reached a replica");
    assert!(b.got.len() > a_held.len(), "B shared the load too");
    assert_eq!(
        metric(&gw, "tether_upstream_redelivered_total"),
        held as f64
    );
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_backend_the_fallback_answers_and_a_backend_gets_the_identity() {
    use rumqttc::v5::mqttbytes::QoS;
    let gw = grpc_gateway(|c| c.grpc.upstream.topics = vec!["up/#".into()]);
    let addr = gw.grpc_addr.unwrap();
    // No backend: refused, and an MQTT 5 publisher hears why (0x80). A raw
    // client: rumqttc ends its connection on a failed PUBACK.
    let mut raw = Raw::connected(gw.tcp_addr, "dev-8", tether::codec::Version::V5);
    assert_eq!(puback(&mut raw, 1, "up/x"), 0x80);
    assert_eq!(metric(&gw, "tether_upstream_refused_total"), 1.0);
    let mut dev = v5(&gw, v5_options(&gw, "dev-9"), None).await;

    // A backend in the test: the message comes with who sent it.
    let mut c = client(addr).await;
    let (mut stream, acks) = upstream_stream(&mut c, "up/+", "").await;
    dev.client
        .publish("up/x", QoS::AtLeastOnce, false, "hello backend")
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("upstream message in time")
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            m.client_id.as_str(),
            m.topic.as_str(),
            m.qos,
            &m.payload[..],
            m.redelivered
        ),
        ("dev-9", "up/x", 1, &b"hello backend"[..], false)
    );
    assert_eq!(m.id.len(), 16, "the message id in hex: {}", m.id);
    // The publisher's ack waits for the backend's.
    let early = tokio::time::timeout(
        Duration::from_millis(300),
        dev.incoming(|p| matches!(p, rumqttc::v5::mqttbytes::v5::Packet::PubAck(_))),
    )
    .await;
    assert!(early.is_err(), "no PUBACK before the backend acknowledged");
    acks.send(proto::UpstreamRequest {
        request: Some(proto::upstream_request::Request::Ack(proto::Ack {
            seq: vec![m.seq],
        })),
    })
    .unwrap();
    let p = dev
        .incoming(|p| matches!(p, rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)))
        .await;
    let rumqttc::v5::mqttbytes::v5::Packet::PubAck(ack) = p else {
        unreachable!()
    };
    assert_eq!(ack.reason as u8, 0, "acknowledged once the backend did");
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_push_retried_five_times_is_delivered_once() {
    let gw = grpc_gateway(|_| {});
    let mut c = client(gw.grpc_addr.unwrap()).await;
    let mut phone = v4(&gw, v4_options(&gw, "bob-phone", true), None).await;
    phone
        .subscribe("user/bob/inbox", rumqttc::QoS::AtLeastOnce)
        .await;
    let push = |key: &str, text: &str| proto::PushRequest {
        to: "bob".into(),
        message: Some(message("", text, 1)),
        idempotency_key: key.into(),
    };
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = c
            .push_user(authed(push("order-17", "once")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.topic, "user/bob/inbox");
        ids.push(r.id);
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "one answer: {ids:?}");
    let r = c
        .push_user(authed(push("order-18", "again")))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(r.id, ids[0]);
    assert_eq!(&phone.publish().await.payload[..], b"once");
    assert_eq!(
        &phone.publish().await.payload[..],
        b"again",
        "not a second \"once\""
    );
    // The same key with another body: refused, as over HTTP (422).
    let e = c
        .push_user(authed(push("order-17", "changed")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().starts_with("idempotency_key_reused"), "{e:?}");
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_get_the_status_a_client_expects_and_the_node_carries_on() {
    let gw = grpc_gateway(|c| c.http.max_body_bytes = 64 * 1024);
    let addr = gw.grpc_addr.unwrap();
    let mut c = client(addr).await;
    let publish = || proto::PublishRequest {
        message: Some(message("news", "x", 0)),
        idempotency_key: String::new(),
    };
    // Tokens: none, then a wrong one.
    let e = c.publish(publish()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut wrong = tonic::Request::new(publish());
    wrong.metadata_mut().insert(
        "authorization",
        "Bearer not-the-token-at-all".parse().unwrap(),
    );
    assert_eq!(
        c.publish(wrong).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Fields the API refuses, named.
    let e = refused(&mut c, message("news/#", "x", 0)).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("field message.topic"), "{e:?}");
    let e = refused(&mut c, message("news", "x", 3)).await;
    assert!(e.message().contains("field message.qos"), "{e:?}");
    // An oversize batch, by count and by bytes.
    let e = c
        .publish_batch(authed(proto::PublishBatchRequest {
            messages: vec![message("news", "x", 0); 1001],
            idempotency_key: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("at most 1000"), "{e:?}");
    let e = refused(&mut c, message("news", &"x".repeat(100_000), 0)).await;
    // gRPC's status for a message above the limit (tonic's own would be
    // OUT_OF_RANGE).
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("too large"), "{e:?}");
    // A kick of nobody, and an Upstream stream that does not subscribe.
    let e = c
        .kick(authed(proto::ClientRequest {
            client_id: "nobody".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let ack_first = futures_util::stream::iter([proto::UpstreamRequest {
        request: Some(proto::upstream_request::Request::Ack(proto::Ack {
            seq: vec![1],
        })),
    }]);
    let e = c.upstream(authed(ack_first)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // An unknown method and a body that is not protobuf, from Python.
    let dir = TempDir::new("grpc-raw");
    let _ = python_stubs(&dir);
    let raw = |method: &str, hex: &str| {
        let out = Command::new("/usr/bin/python3")
            .args([&script("raw.py"), &addr.to_string(), method, hex])
            .output()
            .expect("python3 runs raw.py");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(raw("/tether.v1.Tether/Nope", ""), "UNIMPLEMENTED");
    // gRPC's status codes table: a request that does not parse is
    // INTERNAL, as grpc-go and grpc-java answer too.
    assert_eq!(
        raw("/tether.v1.Tether/Publish", "0aff"),
        "INTERNAL",
        "a truncated message is refused"
    );

    // The node carries on.
    let mut sub = v4(&gw, v4_options(&gw, "reader", true), None).await;
    sub.subscribe("news", rumqttc::QoS::AtMostOnce).await;
    let r = c.publish(authed(publish())).await.unwrap().into_inner();
    assert_eq!(r.id.len(), 16);
    assert_eq!(&sub.publish().await.payload[..], b"x");
    // Seven reached the service (tonic refuses the oversize, unknown and
    // undecodable calls before it).
    assert_eq!(metric(&gw, "tether_grpc_call_errors_total"), 7.0);
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_a_user_on_two_nodes_and_presence_and_kick_span_them() {
    use crate::common::cluster::{Node, Redis};
    use crate::common::kafka::Kafka;
    let redis = Redis::start();
    let kafka = Kafka::start();
    let push = kafka.topic("grpc-push", 2).await;
    let env = [
        ("TETHER_KAFKA__BROKERS", format!("\"{}\"", kafka.brokers)),
        ("TETHER_KAFKA__PUSH_TOPIC", format!("\"{push}\"")),
        (
            "TETHER_KAFKA__CONSUMER",
            "{\"auto.offset.reset\" = \"earliest\"}".into(),
        ),
        ("TETHER_GRPC__LISTEN", "\"127.0.0.1:0\"".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let one = Node::start(1, &redis.url(), &env);
    let two = Node::start(2, &redis.url(), &env);
    let addr = one.grpc_addr();
    let mut devices = Vec::new();
    for (id, node) in [("alice-phone", &one), ("alice-laptop", &two)] {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", node.mqtt);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_credentials("alice", "pw");
        let (c, mut events, task) = crate::common::pump(o);
        c.subscribe("user/alice/inbox", rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        while !matches!(next_packet(&mut events).await, rumqttc::Packet::SubAck(_)) {}
        devices.push((c, events, task));
    }
    let mut c = client(addr).await;
    let r = c
        .push_user(tonic::Request::new(proto::PushRequest {
            to: "alice".into(),
            message: Some(message("", "to every device", 1)),
            idempotency_key: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.id.starts_with("ff"), "a push through Kafka: {}", r.id);
    for (_, events, _) in &mut devices {
        loop {
            if let rumqttc::Packet::Publish(p) = next_packet(events).await {
                assert_eq!(&p.payload[..], b"to every device");
                break;
            }
        }
    }
    // Presence from node 1 names both devices, node 2's through Redis.
    let u = c
        .get_user(tonic::Request::new(proto::UserRequest {
            user: "alice".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let mut on: Vec<_> = u
        .connections
        .iter()
        .map(|c| (c.client_id.as_str(), c.node))
        .collect();
    on.sort();
    assert_eq!(on, [("alice-laptop", 2), ("alice-phone", 1)]);
    let info = c
        .get_client(tonic::Request::new(proto::ClientRequest {
            client_id: "alice-laptop".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(info.online && info.node == 2, "{info:?}");
    // A kick from node 1 ends the laptop's connection on node 2.
    c.kick(tonic::Request::new(proto::ClientRequest {
        client_id: "alice-laptop".into(),
    }))
    .await
    .unwrap();
    let (_, events, _) = &mut devices[1];
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("the kick in time")
        {
            Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
}

/// README's tour, `examples/grpc_tour.py`, as a newcomer runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_tour_pushes_reads_presence_and_serves_upstream() {
    let gw = grpc_gateway(|c| c.grpc.upstream.topics = vec!["report/#".into()]);
    let addr = gw.grpc_addr.unwrap().to_string();
    let tour = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/grpc_tour.py");
    let run = |args: &[&str]| {
        let out = Command::new("/usr/bin/python3")
            .args([tour, "--addr", &addr, "--token", TOKEN])
            .args(args)
            .output()
            .expect("python3 runs the tour");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut phone = v4(
        &gw,
        {
            let mut o = v4_options(&gw, "alice-phone", true);
            o.set_credentials("alice", "pw");
            o
        },
        None,
    )
    .await;
    phone
        .subscribe("user/alice/inbox", rumqttc::QoS::AtLeastOnce)
        .await;
    assert!(run(&["push", "alice", "hello over gRPC"]).contains("topic=user/alice/inbox"));
    assert_eq!(&phone.publish().await.payload[..], b"hello over gRPC");
    assert!(run(&["user", "alice"]).starts_with("alice: 1 online"));

    let mut backend = Command::new("/usr/bin/python3")
        .args([
            tour, "--addr", &addr, "--token", TOKEN, "upstream", "report/#", "--count", "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the tour");
    let lines = lines_of(backend.stdout.take().unwrap());
    let mut backend = Proc(backend);
    assert!(lines
        .recv_timeout(WAIT)
        .unwrap()
        .starts_with("listening on report/#"));
    let mut dev = v4(&gw, v4_options(&gw, "dev1", true), None).await;
    dev.client
        .publish("report/dev1", rumqttc::QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    dev.incoming(|p| matches!(p, rumqttc::Packet::PubAck(_)))
        .await;
    let line = lines.recv_timeout(WAIT).unwrap();
    assert!(
        line.starts_with("report/dev1 from dev1") && line.ends_with(": 21.5"),
        "{line}"
    );
    let status = backend.0.wait().unwrap();
    assert!(
        status.success(),
        "the tour's backend ends cleanly after --count"
    );
    gw.stop();
}

/// An Upstream stream and the sender of its acks.
type Stream = (
    tonic::Streaming<proto::UpstreamMessage>,
    tokio::sync::mpsc::UnboundedSender<proto::UpstreamRequest>,
);

/// Opens an Upstream stream on `filter` in `group`.
async fn upstream_stream(c: &mut TetherClient<Channel>, filter: &str, group: &str) -> Stream {
    let sub = proto::Subscribe {
        filter: filter.into(),
        group: group.into(),
        ..Default::default()
    };
    subscribed(c, sub).await.unwrap()
}

/// Opens an Upstream stream that takes the receipts named `name`.
async fn receipts_stream(c: &mut TetherClient<Channel>, name: &str) -> Stream {
    let sub = proto::Subscribe {
        receipts: name.into(),
        ..Default::default()
    };
    subscribed(c, sub).await.unwrap()
}

/// Opens an Upstream stream with `sub`, or the status it is refused with.
async fn subscribed(
    c: &mut TetherClient<Channel>,
    sub: proto::Subscribe,
) -> Result<Stream, tonic::Status> {
    let (acks, rx) = tokio::sync::mpsc::unbounded_channel();
    acks.send(proto::UpstreamRequest {
        request: Some(proto::upstream_request::Request::Subscribe(sub)),
    })
    .unwrap();
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let stream = c.upstream(authed(requests)).await?.into_inner();
    Ok((stream, acks))
}

/// The next `n` receipts on `stream`, acknowledged, sorted by client id
/// and outcome.
async fn receipts(stream: &mut Stream, n: usize) -> Vec<proto::Receipt> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(WAIT, stream.0.message())
            .await
            .expect("a receipt in time")
            .unwrap()
            .expect("the stream goes on");
        stream
            .1
            .send(proto::UpstreamRequest {
                request: Some(proto::upstream_request::Request::Ack(proto::Ack {
                    seq: vec![m.seq],
                })),
            })
            .unwrap();
        assert!(m.client_id.is_empty() && m.payload.is_empty(), "{m:?}");
        got.push(m.receipt.expect("a receipts stream carries receipts"));
    }
    got.sort_by(|a, b| (&a.client_id, &a.outcome).cmp(&(&b.client_id, &b.outcome)));
    got
}

/// Publishes a QoS 1 message on `topic` whose receipts go to the
/// receipts streams named `to`: its id.
async fn publish_with_receipts_to(c: &mut TetherClient<Channel>, topic: &str, to: &str) -> String {
    let req = proto::PublishRequest {
        message: Some(proto::Message {
            receipts_to: to.into(),
            ..message(topic, "with receipts", 1)
        }),
        idempotency_key: String::new(),
    };
    c.publish(authed(req)).await.unwrap().into_inner().id
}

/// Receipts to the publisher's own stream, without Kafka: a device that
/// acks, one offline (queued, then acked when it comes back); none to a
/// name no stream took (counted); and a receipts stream that also asks
/// for a filter is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_reach_the_stream_the_publisher_named() {
    let gw = grpc_gateway(|_| {});
    let mut c = client(gw.grpc_addr.unwrap()).await;
    let mut billing = receipts_stream(&mut c, "billing").await;
    let mut online = v4(&gw, v4_options(&gw, "till-online", true), None).await;
    online
        .client
        .subscribe("orders/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    while !matches!(
        next_packet(&mut online.events).await,
        rumqttc::Packet::SubAck(_)
    ) {}
    let away = v4(&gw, v4_options(&gw, "till-away", false), None).await;
    away.client
        .subscribe("orders/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut away = away;
    while !matches!(
        next_packet(&mut away.events).await,
        rumqttc::Packet::SubAck(_)
    ) {}
    away.client.disconnect().await.unwrap();
    until("the away till's session is offline", || {
        metric(&gw, "tether_connections") == 1.0
    })
    .await;

    let id = publish_with_receipts_to(&mut c, "orders/1", "billing").await;
    let got = receipts(&mut billing, 2).await;
    let seen: Vec<_> = got
        .iter()
        .map(|r| {
            (
                r.client_id.as_str(),
                r.outcome.as_str(),
                r.id.as_str(),
                r.topic.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("till-away", "offline-queued", id.as_str(), "orders/1"),
            ("till-online", "acked", id.as_str(), "orders/1"),
        ]
    );
    assert!(got
        .iter()
        .all(|r| r.at_ms >= r.published_ms && r.published_ms > 0));

    // The away till comes back, takes its message, and the stream hears.
    let mut back = v4(&gw, v4_options(&gw, "till-away", false), None).await;
    assert!(back.session_present);
    loop {
        if let rumqttc::Packet::Publish(p) = next_packet(&mut back.events).await {
            assert_eq!(&p.payload[..], b"with receipts");
            break;
        }
    }
    let got = receipts(&mut billing, 1).await;
    assert_eq!(
        (got[0].client_id.as_str(), got[0].outcome.as_str()),
        ("till-away", "acked")
    );
    assert_eq!(metric(&gw, "tether_upstream_receipts_total"), 3.0);

    // A name nobody took: the deliveries happen, their receipts are
    // counted and dropped.
    publish_with_receipts_to(&mut c, "orders/2", "nobody").await;
    until("two receipts for nobody, counted", || {
        metric(&gw, "tether_upstream_receipts_dropped_total") == 2.0
    })
    .await;
    let sub = proto::Subscribe {
        filter: "orders/#".into(),
        receipts: "billing".into(),
        ..Default::default()
    };
    let refused = subscribed(&mut c, sub).await.expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("subscribe.receipts"),
        "{}",
        refused.message()
    );
    gw.stop();
}

/// Receipts of deliveries on another node come over the cluster bus to
/// the node whose stream the publisher named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_from_another_node_come_over_the_cluster_bus() {
    use crate::common::cluster::{Node, Redis};
    use crate::common::kafka::Kafka;
    let redis = Redis::start();
    let kafka = Kafka::start();
    let prefix = Kafka::unique("receipts");
    kafka.create(&format!("{prefix}.interest"), 1).await;
    for n in 1..=2 {
        kafka.create(&format!("{prefix}.node.{n}"), 2).await;
    }
    let env = [
        ("TETHER_KAFKA__BROKERS", format!("\"{}\"", kafka.brokers)),
        (
            "TETHER_KAFKA__CLUSTER",
            format!(
                "{{node_topic = \"{prefix}.node.%n\", interest_topic = \"{prefix}.interest\"}}"
            ),
        ),
        ("TETHER_GRPC__LISTEN", "\"127.0.0.1:0\"".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let one = Node::start(1, &redis.url(), &env);
    let two = Node::start(2, &redis.url(), &env);
    let addr = one.grpc_addr();
    let mut c = client(addr).await;
    let mut billing = receipts_stream(&mut c, "billing").await;
    let mut devices = Vec::new();
    for (id, node) in [("till-1", &one), ("till-2", &two)] {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", node.mqtt);
        o.set_keep_alive(Duration::from_secs(30));
        let (dev, mut events, task) = crate::common::pump(o);
        dev.subscribe("orders/#", rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        while !matches!(next_packet(&mut events).await, rumqttc::Packet::SubAck(_)) {}
        devices.push((dev, events, task));
    }
    // Node 1 routes to node 2 once its view holds node 2's interest.
    until("node 1 sees node 2's interest", || {
        one.metric("tether_kafka_cluster_interest_entries") >= 2.0
    })
    .await;
    let id = publish_with_receipts_to(&mut c, "orders/1", "billing").await;
    let got = receipts(&mut billing, 2).await;
    let seen: Vec<_> = got
        .iter()
        .map(|r| {
            (
                r.client_id.as_str(),
                r.node,
                r.outcome.as_str(),
                r.id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("till-1", 1, "acked", id.as_str()),
            ("till-2", 2, "acked", id.as_str())
        ]
    );
    assert_eq!(two.metric("tether_kafka_receipts_forwarded_total"), 1.0);
    assert_eq!(two.metric("tether_upstream_receipts_total"), 0.0);
}

/// A backend that hangs (its connection up, no ack) holds its messages no
/// longer than `grpc.upstream.ack_timeout_ms`: its stream is ended with
/// ABORTED and the message goes to the rest of its group, so the
/// publisher is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_holds_a_message_too_long_loses_it_to_its_group() {
    let gw = grpc_gateway(|c| {
        c.grpc.upstream.topics = vec!["jobs/#".into()];
        c.grpc.upstream.ack_timeout_ms = 500;
    });
    let mut c = client(gw.grpc_addr.unwrap()).await;
    // The hanging one first: round robin gives it the first message.
    let (mut hung, _hung_acks) = upstream_stream(&mut c, "jobs/#", "workers").await;
    let (mut live, live_acks) = upstream_stream(&mut c, "jobs/#", "workers").await;
    let mut dev = v4(&gw, v4_options(&gw, "worker-feed", true), None).await;
    dev.client
        .publish("jobs/1", rumqttc::QoS::AtLeastOnce, false, "job 1")
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, hung.message())
        .await
        .expect("the first message in time")
        .unwrap()
        .unwrap();
    assert_eq!(&first.payload[..], b"job 1");
    // Not acknowledged: past the timeout the stream ends, ABORTED.
    let end = tokio::time::timeout(WAIT, hung.message())
        .await
        .expect("the hung stream ends in time");
    assert_eq!(end.unwrap_err().code(), Code::Aborted);
    let again = tokio::time::timeout(WAIT, live.message())
        .await
        .expect("the message goes to the rest of the group")
        .unwrap()
        .unwrap();
    assert_eq!(
        (&again.payload[..], again.redelivered),
        (&b"job 1"[..], true)
    );
    live_acks
        .send(proto::UpstreamRequest {
            request: Some(proto::upstream_request::Request::Ack(proto::Ack {
                seq: vec![again.seq],
            })),
        })
        .unwrap();
    dev.incoming(|p| matches!(p, rumqttc::Packet::PubAck(_)))
        .await;
    assert_eq!(metric(&gw, "tether_upstream_timed_out_total"), 1.0);
    gw.stop();
}
