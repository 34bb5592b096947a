//! Sessions in Redis, with a real `redis-server` and `tether` nodes as
//! separate processes: persistent sessions survive their node, a client
//! resumes on any node, fencing keeps stale nodes out, presence and the
//! per-user limit hold across the cluster.

mod common;

use std::time::Duration;

use common::cluster::{Node, Redis};
use common::WAIT;
use rumqttc::{Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

fn options(node: &Node, id: &str, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", node.mqtt);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o
}

/// A rumqttc v3.1.1 client whose events are pumped into a channel.
struct Client {
    client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    task: tokio::task::JoinHandle<()>,
    session_present: bool,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(opts: MqttOptions) -> Client {
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 1000);
    let (tx, mut events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let ev = el.poll().await;
            let stop = ev.is_err();
            if tx.send(ev.map_err(|e| e.to_string())).is_err() || stop {
                return;
            }
        }
    });
    let session_present = loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("CONNACK in time")
        {
            Some(Ok(Event::Incoming(Packet::ConnAck(a)))) => {
                assert_eq!(a.code, rumqttc::ConnectReturnCode::Success, "connected");
                break a.session_present;
            }
            Some(Ok(_)) => {}
            other => panic!("connect failed: {other:?}"),
        }
    };
    Client {
        client,
        events,
        task,
        session_present,
    }
}

impl Client {
    /// The next incoming packet matching `pred`.
    async fn next(&mut self, what: &str, pred: impl Fn(&Packet) -> bool) -> Packet {
        loop {
            let ev = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("{what} in time"));
            match ev {
                Some(Ok(Event::Incoming(p))) if pred(&p) => return p,
                Some(Ok(_)) => {}
                other => panic!("connection ended waiting for {what}: {other:?}"),
            }
        }
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        self.next("SUBACK", |p| matches!(p, Packet::SubAck(_)))
            .await;
    }

    async fn publish(&mut self) -> rumqttc::Publish {
        match self
            .next("PUBLISH", |p| matches!(p, Packet::Publish(_)))
            .await
        {
            Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_outlives_a_killed_node_and_resumes_on_another() {
    let redis = Redis::start();
    let mut a = Node::start(1, &redis.url(), &[]);
    let b = Node::start(2, &redis.url(), &[]);

    let mut sub = connect(options(&a, "survivor", false)).await;
    assert!(!sub.session_present, "a new session");
    sub.subscribe("orders/#").await;
    drop(sub);

    let mut publ = connect(options(&a, "orders-pub", true)).await;
    for n in 0u8..20 {
        publ.client
            .publish("orders/1", QoS::AtLeastOnce, false, vec![n])
            .await
            .unwrap();
    }
    // Every PUBACK means the message is in Redis (durability sync).
    for _ in 0..20 {
        publ.next("PUBACK", |p| matches!(p, Packet::PubAck(_)))
            .await;
    }
    drop(publ);
    a.proc.kill9();

    // On the other node: the subscription and the 20 queued messages.
    let mut back = connect(options(&b, "survivor", false)).await;
    assert!(back.session_present, "the session survived its node");
    for n in 0u8..20 {
        let p = back.publish().await;
        assert_eq!((p.topic.as_str(), &p.payload[..]), ("orders/1", &[n][..]));
    }
    // And it is live again on its new node.
    let publ = connect(options(&b, "orders-pub-2", true)).await;
    publ.client
        .publish("orders/2", QoS::AtLeastOnce, false, "live")
        .await
        .unwrap();
    assert_eq!(&back.publish().await.payload[..], b"live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_the_subscribers_node_is_killed_mid_flow() {
    let redis = Redis::start();
    let mut a = Node::start(1, &redis.url(), &[]);
    let c = Node::start(3, &redis.url(), &[]);

    let mut sub = connect(options(&a, "flow-sub", false)).await;
    sub.subscribe("flow/#").await;
    let mut publ = connect(options(&a, "flow-pub", true)).await;
    const N: u32 = 3000;
    let client = publ.client.clone();
    tokio::spawn(async move {
        for n in 0..N {
            if client
                .publish("flow/x", QoS::AtLeastOnce, false, n.to_be_bytes().to_vec())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // What the subscriber sees first, in order; what the publisher got a
    // PUBACK for.
    let mut seen = Vec::new();
    let mut acked = 0u32;
    while acked < N / 3 {
        tokio::select! {
            p = publ.next("PUBACK", |p| matches!(p, Packet::PubAck(_))) => {
                let _ = p;
                acked += 1;
            }
            p = sub.publish() => seen.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap())),
        }
    }
    a.proc.kill9();
    // PUBACKs already on their way in the socket buffer still count.
    while let Ok(Some(Ok(ev))) =
        tokio::time::timeout(Duration::from_millis(50), publ.events.recv()).await
    {
        if let Event::Incoming(Packet::PubAck(_)) = ev {
            acked += 1;
        }
    }
    // PUBACKs arrive in publish order: the first `acked` messages are the
    // acknowledged ones.
    drop(publ);
    drop(sub);
    let mut back = connect(options(&c, "flow-sub", false)).await;
    assert!(back.session_present);
    let mut first = std::collections::BTreeSet::from_iter(seen.iter().copied());
    let mut order = seen.clone();
    while (0..acked).any(|n| !first.contains(&n)) {
        let p = back.publish().await;
        let n = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
        if first.insert(n) {
            order.push(n);
        }
    }
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted, "each message first seen in publish order");
    assert!(acked >= N / 3, "{acked} acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_on_another_node_closes_the_old_connection_and_fences_it() {
    let redis = Redis::start();
    let a = Node::start(1, &redis.url(), &[]);
    let b = Node::start(2, &redis.url(), &[]);
    let mut conn = redis.conn().unwrap();
    let epoch = |conn: &mut redis::Connection| -> u64 {
        redis::cmd("HGET")
            .arg("tt:{c:roamer}:s")
            .arg("epoch")
            .query(conn)
            .unwrap()
    };
    let mut first = connect(options(&a, "roamer", false)).await;
    first.subscribe("roam/#").await;
    let e1 = epoch(&mut conn);
    let second = connect(options(&b, "roamer", false)).await;
    assert!(second.session_present, "the session came over from node 1");
    assert!(epoch(&mut conn) > e1, "the claim took a newer epoch");
    // Node 1 was told over its control channel: the old connection closes.
    loop {
        let ev = tokio::time::timeout(WAIT, first.events.recv())
            .await
            .expect("the old connection closes in time");
        if matches!(ev, Some(Err(_)) | None) {
            break;
        }
    }
    let owner: Vec<String> = redis::cmd("HMGET")
        .arg("tt:{c:roamer}:s")
        .arg("node")
        .arg("up")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        owner,
        vec!["2".to_string(), "1".to_string()],
        "node 2 owns it, online"
    );
}
