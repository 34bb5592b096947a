//! Sessions in Redis, with a real `redis-server` and `tether` nodes as
//! separate processes: persistent sessions survive their node, a client
//! resumes on any node, fencing keeps stale nodes out, a paused node that
//! lost its lease serves nothing, presence and the per-user limit hold
//! across the cluster.

use std::time::Duration;

use crate::common::cluster::{Node, Redis};
use crate::common::web::http;
use crate::common::WAIT;
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
    match try_connect(opts).await {
        Ok(c) => c,
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// Connects, or says why not (the CONNACK's code, or the error).
async fn try_connect(opts: MqttOptions) -> Result<Client, String> {
    let (client, mut events, task) = crate::common::pump(opts);
    let session_present = loop {
        match tokio::time::timeout(crate::common::CONNACK_TIMEOUT, events.recv())
            .await
            .expect("CONNACK in time")
        {
            Some(Ok(Event::Incoming(Packet::ConnAck(a)))) => {
                if a.code != rumqttc::ConnectReturnCode::Success {
                    return Err(format!("{:?}", a.code));
                }
                break a.session_present;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Err("no event".into()),
        }
    };
    Ok(Client {
        client,
        events,
        task,
        session_present,
    })
}

impl Client {
    /// Waits until the server closes the connection.
    async fn closed(&mut self, what: &str) {
        self.closed_without(what, "", |_| false).await;
    }

    /// Waits until the server closes the connection, failing with `never`
    /// if a packet `forbidden` picks arrives first.
    async fn closed_without(
        &mut self,
        what: &str,
        never: &str,
        forbidden: impl Fn(&Packet) -> bool,
    ) {
        loop {
            match tokio::time::timeout(WAIT, self.events.recv()).await {
                Ok(Some(Ok(Event::Incoming(p)))) if forbidden(&p) => panic!("{never}: {p:?}"),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return,
                Err(_) => panic!("{what}: still connected after {WAIT:?}"),
            }
        }
    }

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
    first.closed("the old connection").await;
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
    // Node 1 closed it and flushed its writes before node 2 loaded it.
    assert_eq!(
        (
            metric(&b, "tether_store_handoffs_total"),
            metric(&b, "tether_store_handoff_timeouts_total")
        ),
        (1.0, 0.0)
    );
}

fn api(node: &Node, method: &str, path: &str) -> crate::common::web::Reply {
    http(
        std::net::SocketAddr::from(([127, 0, 0, 1], node.http)),
        method,
        path,
        &[],
        "",
    )
}

/// `GET /v1/users/{user}` on `node`: how many connections it lists.
fn online(node: &Node, user: &str) -> u64 {
    let r = api(node, "GET", &format!("/v1/users/{user}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["online"].as_u64().unwrap()
}

fn as_user(node: &Node, id: &str, user: &str, clean: bool) -> MqttOptions {
    let mut o = options(node, id, clean);
    o.set_credentials(user, "pw");
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_kicks_answer_for_the_whole_cluster() {
    let redis = Redis::start();
    let a = Node::start(1, &redis.url(), &[]);
    let b = Node::start(2, &redis.url(), &[]);
    let mut phone = connect(as_user(&a, "alice-phone", "alice", false)).await;
    phone.subscribe("alice/#").await;
    let _laptop = connect(as_user(&b, "alice-laptop", "alice", true)).await;

    // Both nodes see both connections, each on its node.
    for node in [&a, &b] {
        let v = api(node, "GET", "/v1/users/alice").json();
        assert_eq!(v["online"], 2, "{v}");
        let mut seen: Vec<(String, u64, String)> = v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["client_id"].as_str().unwrap().to_string(),
                    c["node"].as_u64().unwrap(),
                    c["transport"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("alice-laptop".to_string(), 2, "mqtt".to_string()),
                ("alice-phone".to_string(), 1, "mqtt".to_string()),
            ],
            "as node {} sees it",
            node.id
        );
    }
    // Node 2 describes node 1's session from the store.
    let v = api(&b, "GET", "/v1/clients/alice-phone").json();
    assert_eq!(
        (&v["online"], &v["node"], &v["subscriptions"][0]["filter"]),
        (
            &serde_json::json!(true),
            &serde_json::json!(1),
            &serde_json::json!("alice/#")
        ),
        "{v}"
    );
    assert_eq!(api(&b, "GET", "/v1/clients/nobody").status, 404);

    // A kick sent to node 2 closes the connection on node 1.
    let r = api(&b, "DELETE", "/v1/clients/alice-phone");
    assert_eq!(r.status, 200, "{}", r.body);
    phone.closed("the kicked connection").await;
    crate::common::until("presence forgets the kicked connection", || {
        online(&b, "alice") == 1
    })
    .await;
    let v = api(&b, "GET", "/v1/clients/alice-phone").json();
    assert_eq!(v["online"], false, "its session stays, offline: {v}");
    assert_eq!(api(&b, "DELETE", "/v1/clients/alice-phone").status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_storm_across_three_nodes_leaves_one_connection() {
    let redis = Redis::start();
    let nodes = [
        Node::start(1, &redis.url(), &[]),
        Node::start(2, &redis.url(), &[]),
        Node::start(3, &redis.url(), &[]),
    ];
    let mut conn = redis.conn().unwrap();
    let epoch = |conn: &mut redis::Connection, id: &str| -> u64 {
        redis::cmd("HGET")
            .arg(format!("tt:{{c:{id}}}:s"))
            .arg("epoch")
            .query(conn)
            .unwrap()
    };

    // One after another, alternating nodes: every claim takes a higher
    // epoch and finds the session; every older connection is closed.
    const N: usize = 1000;
    let mut clients = Vec::with_capacity(N);
    let mut last = 0;
    for i in 0..N {
        let c = connect(as_user(&nodes[i % 3], "stormy", "storm", false)).await;
        assert_eq!(c.session_present, i > 0, "claim {i}: session present");
        let e = epoch(&mut conn, "stormy");
        assert!(e > last, "claim {i}: epoch {e} after {last}");
        last = e;
        clients.push(c);
    }
    let mut survivor = clients.pop().unwrap();
    for (i, mut c) in clients.into_iter().enumerate() {
        c.closed(&format!("connection {i}")).await;
    }
    survivor.subscribe("storm/#").await;
    for node in &nodes {
        crate::common::until("presence shows one connection", || {
            online(node, "storm") == 1
        })
        .await;
    }

    // All at once: whatever the order, one connection is left, and it is
    // the one the store names.
    const M: usize = 60;
    let connecting: Vec<_> = (0..M)
        .map(|i| tokio::spawn(try_connect(as_user(&nodes[i % 3], "swarm", "swarm", false))))
        .collect();
    let mut alive = Vec::new();
    for c in connecting {
        // Superseded before its CONNACK is an honest answer too.
        if let Ok(c) = c.await.unwrap() {
            alive.push(c);
        }
    }
    assert!(!alive.is_empty(), "someone connected");
    crate::common::until("one connection left", || {
        alive.iter().filter(|c| !c.task.is_finished()).count() == 1
    })
    .await;
    let mut last = alive.into_iter().find(|c| !c.task.is_finished()).unwrap();
    last.subscribe("swarm/#").await;
    for node in &nodes {
        crate::common::until("presence shows one connection", || {
            online(node, "swarm") == 1
        })
        .await;
        let v = api(node, "GET", "/v1/clients/swarm").json();
        assert_eq!(v["online"], true, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_holds_across_the_cluster() {
    let redis = Redis::start();
    let refuse = [
        ("TETHER_LIMITS__MAX_CONNECTIONS_PER_USER", "4"),
        ("TETHER_LIMITS__PER_USER_POLICY", "\"refuse\""),
    ];
    let nodes = [
        Node::start(1, &redis.url(), &refuse),
        Node::start(2, &redis.url(), &refuse),
        Node::start(3, &redis.url(), &refuse),
    ];
    // 24 CONNECTs of one user at once, over three nodes: exactly 4 in.
    let connecting: Vec<_> = (0..24)
        .map(|i| {
            let o = as_user(&nodes[i % 3], &format!("capped-{i}"), "capped", true);
            tokio::spawn(try_connect(o))
        })
        .collect();
    let (mut admitted, mut refused) = (Vec::new(), 0);
    for c in connecting {
        match c.await.unwrap() {
            Ok(c) => admitted.push(c),
            Err(code) => {
                // 3.1.1 has no quota code: "server unavailable".
                assert!(code.contains("ServiceUnavailable"), "{code}");
                refused += 1;
            }
        }
    }
    assert_eq!((admitted.len(), refused), (4, 20));
    for node in &nodes {
        assert_eq!(online(node, "capped"), 4, "node {}", node.id);
    }
    // One leaves: one more fits, and no more than that.
    drop(admitted.pop());
    crate::common::until("a place frees up", || online(&nodes[0], "capped") == 3).await;
    let _next = connect(as_user(&nodes[1], "capped-next", "capped", true)).await;
    let over = try_connect(as_user(&nodes[2], "capped-over", "capped", true)).await;
    assert!(
        over.as_ref()
            .is_err_and(|e| e.contains("ServiceUnavailable")),
        "the fifth is refused"
    );
}

/// A connection that stays up longer than its presence lease stays in
/// presence and under the per-user limit: every refresh renews the user's
/// set in Redis, not only its own entry (the set used to expire one lease
/// after its last new member, and a user whose devices just stayed
/// connected vanished from other nodes' presence and from the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_held_past_its_presence_lease_still_counts() {
    let redis = Redis::start();
    let env = [
        ("TETHER_PRESENCE__LEASE_SECS", "3"),
        ("TETHER_LIMITS__MAX_CONNECTIONS_PER_USER", "1"),
        ("TETHER_LIMITS__PER_USER_POLICY", "\"refuse\""),
    ];
    let a = Node::start(1, &redis.url(), &env);
    let b = Node::start(2, &redis.url(), &env);
    let _held = connect(as_user(&a, "held", "hana", true)).await;
    assert_eq!(online(&b, "hana"), 1);
    // Past two presence leases (2 x 3 s, the set's expiry in Redis), with
    // node 2 asked all along.
    let since = std::time::Instant::now();
    while since.elapsed() < Duration::from_secs(2 * 2 * 3) {
        assert_eq!(
            online(&b, "hana"),
            1,
            "node 2 lost the held connection after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let over = try_connect(as_user(&b, "second", "hana", true)).await;
    assert!(
        over.as_ref()
            .is_err_and(|e| e.contains("ServiceUnavailable")),
        "a second connection is over the limit of one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_per_user_limit_the_oldest_connection_is_evicted() {
    let redis = Redis::start();
    let evict = [("TETHER_LIMITS__MAX_CONNECTIONS_PER_USER", "2")];
    let a = Node::start(1, &redis.url(), &evict);
    let b = Node::start(2, &redis.url(), &evict);
    let mut first = connect(as_user(&a, "dev-1", "eve", true)).await;
    let mut second = connect(as_user(&b, "dev-2", "eve", true)).await;
    let mut third = connect(as_user(&a, "dev-3", "eve", true)).await;
    first.closed("the oldest connection").await;
    let _fourth = connect(as_user(&b, "dev-4", "eve", true)).await;
    second.closed("the next oldest").await;
    third.subscribe("eve/#").await;
    for node in [&a, &b] {
        crate::common::until("presence shows the two newest", || online(node, "eve") == 2).await;
    }
    let v = api(&a, "GET", "/v1/users/eve").json();
    let mut ids: Vec<_> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["dev-3", "dev-4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_connections_leave_presence_within_one_node_lease() {
    let redis = Redis::start();
    let lease = [("TETHER_PRESENCE__NODE_LEASE_SECS", "3")];
    let mut a = Node::start(1, &redis.url(), &lease);
    let b = Node::start(2, &redis.url(), &lease);
    let _x = connect(as_user(&a, "dn-1", "dana", false)).await;
    let _y = connect(as_user(&b, "dn-2", "dana", false)).await;
    assert_eq!(online(&b, "dana"), 2);
    let killed = std::time::Instant::now();
    a.proc.kill9();
    crate::common::until("the dead node's connection leaves presence", || {
        online(&b, "dana") == 1
    })
    .await;
    assert!(
        killed.elapsed() <= Duration::from_millis(3000 + 500),
        "gone within one node lease (+ half a second of slack): {:?}",
        killed.elapsed()
    );
    let v = api(&b, "GET", "/v1/clients/dn-1").json();
    assert_eq!(v["online"], false, "its session is offline: {v}");
}

/// A figure from a node's `/metrics` (the sum of its samples).
fn metric(node: &Node, name: &str) -> f64 {
    node.metric(name)
}

/// Connects a persistent session once the node reaches Redis again; until
/// then every attempt is refused promptly with "server unavailable".
async fn connect_when_store_is_back(opts: MqttOptions) -> Client {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let started = std::time::Instant::now();
        match try_connect(opts.clone()).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(e.contains("ServiceUnavailable"), "{e}");
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "refused promptly"
                );
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node reconnects to Redis"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_acknowledged() {
    let mut redis = Redis::start_durable();
    let timeout = [("TETHER_STORE__REQUEST_TIMEOUT_MS", "1000")];
    let a = Node::start(1, &redis.url(), &timeout);
    let mut sub = connect(options(&a, "keeper", false)).await;
    sub.subscribe("keep/#").await;
    drop(sub);
    let mut publ = connect(options(&a, "keep-pub", true)).await;
    for n in 0u8..50 {
        publ.client
            .publish("keep/x", QoS::AtLeastOnce, false, vec![n])
            .await
            .unwrap();
    }
    for _ in 0..50 {
        publ.next("PUBACK", |p| matches!(p, Packet::PubAck(_)))
            .await;
    }

    redis.stop();
    // A CONNECT that needs the store is refused at once, not left hanging;
    // a clean session still connects.
    let started = std::time::Instant::now();
    let refused = try_connect(options(&a, "newcomer", false)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("ServiceUnavailable")),
        "0x88 while Redis is down"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "promptly");
    let _clean = connect(options(&a, "clean-one", true)).await;
    // A message for the persistent session is not acknowledged: the
    // publisher (3.1.1, no PUBACK reason codes) is disconnected instead.
    publ.client
        .publish("keep/x", QoS::AtLeastOnce, false, vec![50])
        .await
        .unwrap();
    publ.closed_without("the publisher", "acknowledged while Redis is down", |p| {
        matches!(p, Packet::PubAck(_))
    })
    .await;

    redis.restart();
    let mut back = connect_when_store_is_back(options(&a, "keeper", false)).await;
    assert!(back.session_present, "the session is in Redis's AOF");
    let mut got = Vec::new();
    while got.len() < 50 {
        let n = back.publish().await.payload[0];
        if got.last() != Some(&n) && !got.contains(&n) {
            got.push(n);
        }
    }
    // The new Redis had no scripts: whichever came first, the claim
    // (redis's Script loads on NOSCRIPT by itself) or the writer's batch
    // (counted in tether_store_script_reloads_total), they were loaded, or
    // the session could not have come back.
    assert_eq!(got, (0u8..50).collect::<Vec<_>>(), "all 50, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_present_is_never_claimed_for_state_redis_lost() {
    let mut redis = Redis::start(); // no persistence: a restart keeps nothing
    let a = Node::start(1, &redis.url(), &[]);
    let b = Node::start(2, &redis.url(), &[]);
    let mut sub = connect(options(&a, "forgotten", false)).await;
    sub.subscribe("gone/#").await;
    drop(sub);
    redis.restart();
    let back = connect_when_store_is_back(options(&b, "forgotten", false)).await;
    assert!(!back.session_present, "Redis lost the session: not present");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_paho_clients_move_between_nodes() {
    let redis = Redis::start();
    let a = Node::start(1, &redis.url(), &[]);
    let b = Node::start(2, &redis.url(), &[]);
    // Debian's python3-paho-mqtt (.ci/run installs it) lives with the
    // system interpreter; a python3 earlier on PATH may lack it.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .args(["-c", "import paho.mqtt.client"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("python3 with paho-mqtt: apt-get install python3-paho-mqtt");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho/resume.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args([a.mqtt, b.mqtt, a.http].map(|p| p.to_string()))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT * 3, out)
        .await
        .expect("the paho script finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_one_lets_the_client_move_and_forgets_a_dead_nodes_connection() {
    let redis = Redis::start();
    let env = [
        ("TETHER_LIMITS__MAX_CONNECTIONS_PER_USER", "1"),
        ("TETHER_LIMITS__PER_USER_POLICY", "\"refuse\""),
        ("TETHER_PRESENCE__NODE_LEASE_SECS", "3"),
    ];
    let a = Node::start(1, &redis.url(), &env);
    let mut b = Node::start(2, &redis.url(), &env);
    let _first = connect(as_user(&a, "solo", "one", false)).await;
    // The same client on another node takes its own place over.
    let _moved = connect(as_user(&b, "solo", "one", false)).await;
    let other = try_connect(as_user(&a, "solo-tablet", "one", true)).await;
    assert!(other.is_err(), "a second client of the user is refused");
    // Its node dies: once its lease is gone, the place is free again,
    // long before the connection's own presence lease (30 s) runs out.
    b.proc.kill9();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match try_connect(as_user(&a, "solo-tablet", "one", true)).await {
            Ok(_) => break,
            Err(e) => {
                assert!(e.contains("ServiceUnavailable"), "{e}");
                assert!(tokio::time::Instant::now() < deadline, "the place frees up");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suback_means_the_subscription_survives_the_node() {
    let redis = Redis::start();
    let mut a = Node::start(1, &redis.url(), &[]);
    let b = Node::start(2, &redis.url(), &[]);
    for round in 0..20 {
        let id = format!("subber-{round}");
        let mut sub = connect(options(&a, &id, false)).await;
        sub.subscribe(&format!("round/{round}/#")).await;
        if round == 19 {
            // The node dies right after the last SUBACK.
            a.proc.kill9();
        }
        drop(sub);
    }
    for round in 0..20 {
        let id = format!("subber-{round}");
        let v = api(&b, "GET", &format!("/v1/clients/{id}")).json();
        assert_eq!(
            v["subscriptions"][0]["filter"],
            format!("round/{round}/#"),
            "{id}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_hang_up_during_connect_leave_no_presence_behind() {
    use tether::codec::{Packet as RawPacket, Version};
    let redis = Redis::start();
    let a = Node::start(1, &redis.url(), &[]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], a.mqtt));
    // Half persistent (the CONNACK waits for the claim), half clean (the
    // claim runs in the background): each hangs up right after CONNECT.
    for i in 0..200 {
        let mut raw = crate::common::Raw::open(addr);
        let mut c = crate::common::connect_packet(&format!("flash-{i}"), Version::V5);
        c.username = Some("flash".into());
        c.clean_start = i % 2 == 0;
        c.properties.session_expiry_interval = (i % 2 == 1).then_some(60);
        raw.send(&RawPacket::Connect(Box::new(c)));
        drop(raw);
    }
    // One that stays, to know the others' writes were all applied.
    let _stays = connect(as_user(&a, "flash-last", "flash", true)).await;
    let mut conn = redis.conn().unwrap();
    crate::common::until("the presence set holds only the staying connection", || {
        redis::cmd("ZCARD")
            .arg("tt:{u:flash}:c")
            .query::<usize>(&mut conn)
            .unwrap()
            == 1
    })
    .await;
    assert_eq!(online(&a, "flash"), 1);
}

/// A drain hands persistent sessions to the store: the subscriber the
/// drained node closes, and one that was already offline with a message
/// queued, both resume on another node with their subscriptions and queue;
/// the drained node exits by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_nodes_sessions_resume_on_another_node() {
    let redis = Redis::start();
    let b = Node::start(2, &redis.url(), &[]);
    let reference = format!("127.0.0.1:{}", b.mqtt);
    let mut a = Node::start(
        1,
        &redis.url(),
        &[
            ("TETHER_DRAIN__RATE_PER_SEC", "100"),
            ("TETHER_DRAIN__SERVER_REFERENCE", &reference),
        ],
    );
    let mut parked = connect(options(&a, "parked", false)).await;
    parked.subscribe("moves/#").await;
    drop(parked);
    let mut mover = connect(options(&a, "mover", false)).await;
    mover.subscribe("moves/#").await;
    let mut publ = connect(options(&a, "mover-pub", true)).await;
    publ.client
        .publish("moves/1", QoS::AtLeastOnce, false, "before")
        .await
        .unwrap();
    // The PUBACK means the message is in Redis for the offline session.
    publ.next("PUBACK", |p| matches!(p, Packet::PubAck(_)))
        .await;
    assert_eq!(&mover.publish().await.payload[..], b"before");

    let r = api(&a, "POST", "/v1/admin/drain");
    assert_eq!(r.status, 202, "{}", r.body);
    mover.closed("the drained subscriber").await;
    publ.closed("the drained publisher").await;
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = a.proc.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
    .await
    .unwrap();
    assert!(
        exited.is_some_and(|s| s.success()),
        "the drained node exits by itself: {exited:?}"
    );

    let mut mover = connect(options(&b, "mover", false)).await;
    assert!(mover.session_present, "the connected session moved");
    let mut parked = connect(options(&b, "parked", false)).await;
    assert!(parked.session_present, "the offline session moved");
    assert_eq!(
        &parked.publish().await.payload[..],
        b"before",
        "with its queue"
    );
    let publ = connect(options(&b, "mover-pub-2", true)).await;
    publ.client
        .publish("moves/2", QoS::AtLeastOnce, false, "after")
        .await
        .unwrap();
    assert_eq!(&mover.publish().await.payload[..], b"after");
    assert_eq!(&parked.publish().await.payload[..], b"after");
}

/// A node lease short enough for a test (the least allowed).
const SHORT_LEASE: (&str, &str) = ("TETHER_PRESENCE__NODE_LEASE_SECS", "3");

/// The pause of issue 28: node 1 is stopped past its lease while `dev2`
/// moves to node 2. When node 1 wakes, a publisher already connected there
/// publishes at once; the old `dev2` connection on node 1 must not get
/// that message (nor anything else): node 1's lease lapsed, so it serves
/// none of the sessions it claimed before, and closes their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_that_wakes_serves_no_session_it_lost() {
    let redis = Redis::start();
    let a = Node::start(1, &redis.url(), &[SHORT_LEASE]);
    let b = Node::start(2, &redis.url(), &[SHORT_LEASE]);
    let mut old = connect(options(&a, "dev2", false)).await;
    old.subscribe("dev2/#").await;
    let publ = connect(options(&a, "dev2-pub", true)).await;

    a.proc.signal(libc::SIGSTOP);
    let paused = std::time::Instant::now();
    let new = connect(options(&b, "dev2", false)).await;
    let took = paused.elapsed();
    assert!(
        new.session_present,
        "the session came over from the paused node"
    );
    // Not before node 1's lease (3 s) ran out: until then it may serve.
    assert!(took >= Duration::from_secs(3), "taken over after {took:?}");
    assert_eq!(metric(&b, "tether_store_lease_waits_total"), 1.0);
    eprintln!("takeover from a paused node took {took:?}");

    a.proc.signal(libc::SIGCONT);
    publ.client
        .publish("dev2/x", QoS::AtLeastOnce, false, "after the pause")
        .await
        .unwrap();
    old.closed_without(
        "the old connection",
        "the paused node served a session it lost",
        |p| matches!(p, Packet::Publish(_)),
    )
    .await;
    // Closed for its lapsed lease, or by the kick node 2 sent, whichever
    // node 1 read first on waking: either way before any delivery.
    eprintln!(
        "closed; lease closes on node 1: {}",
        metric(&a, "tether_lease_closes_total")
    );
}

/// The pause again, for presence: node 1 is stopped past its lease, and a
/// CONNECT of the same user on node 2 clears node 1's entries meanwhile
/// (node 1 is not live). Once node 1 wakes, its connection, still open,
/// is listed again within a presence lease: it used to stay missing for
/// good (a refresh only updated entries that still existed), and the
/// per-user limit then did not count it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_nodes_connections_come_back_into_presence() {
    let redis = Redis::start();
    let env = [
        SHORT_LEASE,
        ("TETHER_PRESENCE__LEASE_SECS", "3"),
        ("TETHER_LIMITS__MAX_CONNECTIONS_PER_USER", "5"),
    ];
    let a = Node::start(1, &redis.url(), &env);
    let b = Node::start(2, &redis.url(), &env);
    let _kept = connect(as_user(&a, "kept", "pat", true)).await;
    crate::common::until("node 2 lists pat's connection", || online(&b, "pat") == 1).await;

    a.proc.signal(libc::SIGSTOP);
    crate::common::until("node 1 drops out of presence", || online(&b, "pat") == 0).await;
    // Its entry's presence lease (2 x 3 s) runs out in Redis while it
    // sleeps; the next CONNECT of the user removes it.
    let mut conn = redis.conn().unwrap();
    crate::common::until("node 1's presence entry expires", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let current: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg("tt:{u:pat}:c")
            .arg(now)
            .arg("+inf")
            .query(&mut conn)
            .unwrap();
        current.is_empty()
    })
    .await;
    let _other = connect(as_user(&b, "other", "pat", true)).await;
    crate::common::until("node 2 lists pat's new connection", || {
        online(&b, "pat") == 1
    })
    .await;

    a.proc.signal(libc::SIGCONT);
    crate::common::until("node 1's connection is listed again", || {
        online(&b, "pat") == 2
    })
    .await;
}

/// A node cut off from Redis past its lease keeps its offline copy of a
/// session that another node took over meanwhile, and the kick that said
/// so is lost with the connection it was queued on (pub/sub keeps
/// nothing). When the client comes back to that node, the claim must load
/// what Redis holds, not hand the stale copy over in memory: the fault
/// harness saw such a session come back without what was queued for it
/// elsewhere. (The first CONNECTs after the heal are refused with 0x88
/// while the node renews its lease; each refused claim must leave the
/// node's directory as it found it, or the next one finds no session.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_resumes_no_session_from_its_stale_copy() {
    let redis = Redis::start();
    let relay = crate::common::relay::Relay::to_unix(redis.socket());
    let a = Node::start(1, &relay.url(), &[SHORT_LEASE]);
    let b = Node::start(2, &redis.url(), &[SHORT_LEASE]);
    let mut old = connect(options(&a, "dev3", false)).await;
    old.subscribe("dev3/#").await;

    relay.cut();
    // Offline on node 1, which cannot tell Redis.
    drop(old);
    let new = connect(options(&b, "dev3", false)).await;
    assert!(new.session_present, "taken over from the silent node");
    drop(new);
    let mut publ = connect(options(&b, "dev3-pub", true)).await;
    publ.client
        .publish("dev3/x", QoS::AtLeastOnce, false, "queued on node 2")
        .await
        .unwrap();
    publ.next("PUBACK", |p| matches!(p, Packet::PubAck(_)))
        .await;

    relay.heal();
    let mut back = connect_when_store_is_back(options(&a, "dev3", false)).await;
    assert!(back.session_present, "the session, as Redis holds it");
    let p = back.publish().await;
    assert_eq!(&p.payload[..], b"queued on node 2");
    assert_eq!(metric(&a, "tether_store_stale_copies_total"), 1.0);
}

/// A node cut off from Redis past its lease keeps an offline copy of a
/// session that another node took over meanwhile. The first message it
/// offers that copy is written with the old epoch, and Redis refuses it as
/// fenced: the node must hear so and forget its copy. It did not: Redis 7
/// answers a script's one-word `STALE` as `ERR STALE`, the refusal passed
/// for an ordinary failed write, and every later message the copy matched
/// failed to be stored too. The fault harness saw this as thousands of
/// publishes refused, Kafka records offered again and again, and
/// subscribers pushed over their queue limit by the duplicates (issue 28).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_as_fenced_ends_the_stale_copy_and_publishes_go_on() {
    let redis = Redis::start();
    let relay = crate::common::relay::Relay::to_unix(redis.socket());
    let a = Node::start(1, &relay.url(), &[SHORT_LEASE]);
    let b = Node::start(2, &redis.url(), &[SHORT_LEASE]);
    let mut old = connect(options(&a, "dev6", false)).await;
    old.subscribe("dev6/#").await;

    relay.cut();
    drop(old);
    let new = connect(options(&b, "dev6", false)).await;
    assert!(new.session_present, "taken over from the silent node");
    drop(new);
    relay.heal();

    // Publish on node 1 until a PUBACK: the first publishes meet the stale
    // copy (refused, so a 3.1.1 publisher is disconnected), later ones
    // must not.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut refused = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 still refuses publishes after {refused} tries (stale writes: {})",
            metric(&a, "tether_store_stale_writes_total")
        );
        let Ok(mut publ) = try_connect(options(&a, "dev6-pub", true)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        publ.client
            .publish("dev6/x", QoS::AtLeastOnce, false, "after the heal")
            .await
            .unwrap();
        let acked = loop {
            match tokio::time::timeout(WAIT, publ.events.recv()).await {
                Ok(Some(Ok(Event::Incoming(Packet::PubAck(_))))) => break true,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => break false,
                Err(_) => panic!("neither a PUBACK nor a disconnect in time"),
            }
        };
        if acked {
            break;
        }
        refused += 1;
    }
    assert!(
        refused <= 2,
        "refused {refused} times before the copy was forgotten"
    );
    assert!(
        metric(&a, "tether_store_stale_writes_total") >= 1.0,
        "the refusal was heard as fenced"
    );
}

/// QoS 0 ticks from `publ` to `topic` every 100 ms until aborted: a node
/// that has something to write to a subscriber checks its lease then.
fn tick(publ: Client, topic: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = publ
                .client
                .publish(topic, QoS::AtMostOnce, false, "tick")
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Redis; node 1 reaching it through a relay that can be cut, node 2
/// directly, both with a short node lease, a presence lease of 3 s, a
/// limit of one connection per user, and `more`; `first` (of `user`) on
/// node 1, subscribed to `{user}/#`, and a publisher `{user}-pub` beside
/// it (the two cut-off tests' start).
async fn limited_behind_relay(
    more: &[(&str, &str)],
    first: &str,
    user: &str,
) -> (
    Redis,
    crate::common::relay::Relay,
    Node,
    Node,
    Client,
    Client,
) {
    let redis = Redis::start();
    let relay = crate::common::relay::Relay::to_unix(redis.socket());
    let mut env = vec![
        SHORT_LEASE,
        ("TETHER_PRESENCE__LEASE_SECS", "3"),
        ("TETHER_LIMITS__MAX_CONNECTIONS_PER_USER", "1"),
    ];
    env.extend_from_slice(more);
    let a = Node::start(1, &relay.url(), &env);
    let b = Node::start(2, &redis.url(), &env);
    let mut c = connect(as_user(&a, first, user, true)).await;
    c.subscribe(&format!("{user}/#")).await;
    let publ = connect(options(&a, &format!("{user}-pub"), true)).await;
    (redis, relay, a, b, c, publ)
}

/// A node cut off from Redis cannot count a user's connections, and the
/// other nodes admit the user's next ones once its entries expired: so a
/// connection counted against the user's limit is served only while the
/// node's lease holds, like a persistent session. Past the lease, node 1
/// delivers nothing more to `cap-1` and closes it, and node 2 admits
/// `cap-2` under a limit of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_stops_serving_connections_counted_against_a_limit() {
    let refuse = [("TETHER_LIMITS__PER_USER_POLICY", "\"refuse\"")];
    let (_redis, relay, a, b, mut first, publ) =
        limited_behind_relay(&refuse, "cap-1", "lim").await;

    relay.cut();
    // Node 1 still reaches both its clients; each message it has for
    // `cap-1` asks whether its lease still holds.
    let cut = std::time::Instant::now();
    let ticking = tick(publ, "lim/x");
    // The ticks keep the connection busy: one deadline for the close.
    tokio::time::timeout(
        Duration::from_secs(3 + 2),
        first.closed("cap-1 once node 1's lease lapsed"),
    )
    .await
    .expect("closed within the node lease (3 s) and a little");
    assert!(metric(&a, "tether_lease_closes_total") >= 1.0);
    ticking.abort();
    // Node 2 admits the next one once node 1 is out of the live view.
    let second = loop {
        match try_connect(as_user(&b, "cap-2", "lim", true)).await {
            Ok(c) => break c,
            Err(e) if e.contains("ServiceUnavailable") => {
                assert!(cut.elapsed() < WAIT * 2, "cap-2 still refused: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    drop(second);
}

/// An eviction by the per-user limit that its node cannot hear (cut off
/// from Redis) holds the new connection back until that node stopped
/// serving the old one: the claim on node 2 waits for node 1's answer, and
/// without one for its lease, so `ev-1` (on node 1) has closed before
/// `ev-2` (on node 2) gets its CONNACK, and the user never holds two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_a_cut_off_node_cannot_hear_waits_for_its_lease() {
    let (_redis, relay, _a, b, mut first, publ) = limited_behind_relay(&[], "ev-1", "eve").await;

    relay.cut();
    let ticking = tick(publ, "eve/x");
    let closed = tokio::spawn(async move {
        first.closed("ev-1 once node 1's lease lapsed").await;
        std::time::Instant::now()
    });
    let second = connect(as_user(&b, "ev-2", "eve", true)).await;
    let admitted = std::time::Instant::now();
    let closed = tokio::time::timeout(WAIT, closed)
        .await
        .expect("ev-1 closes")
        .unwrap();
    assert!(
        closed < admitted,
        "ev-1 closed {:?} after ev-2 was admitted",
        closed.duration_since(admitted)
    );
    ticking.abort();
    drop(second);
}

/// The client ids `GET /v1/users/{user}` on `node` lists, sorted.
fn listed(node: &Node, user: &str) -> Vec<String> {
    let v = api(node, "GET", &format!("/v1/users/{user}")).json();
    let mut ids: Vec<String> = v["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|c| c["client_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// A request that reaches Redis after its node gave up on it changes
/// nothing. Through a partition a timed-out ADMIT waits in the node's
/// socket, and TCP delivers it once the link heals (the relay's
/// `resume`). Run then, it evicted from the user's set connections still
/// served on another node, which nobody counted from then on (the fault
/// harness's `over_cap`), and added one that had been refused. It now
/// carries its sender's deadline, by Redis's clock, and is turned away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_redis_gets_after_its_node_gave_up_changes_nothing() {
    let redis = Redis::start();
    let relay = crate::common::relay::Relay::to_unix(redis.socket());
    let env = [("TETHER_LIMITS__MAX_CONNECTIONS_PER_USER", "2")];
    let a = Node::start(1, &relay.url(), &env);
    let b = Node::start(2, &redis.url(), &env);
    let _one = connect(as_user(&b, "late-1", "late", true)).await;
    let _two = connect(as_user(&b, "late-2", "late", true)).await;

    relay.cut();
    // Refused once `store.request_timeout_ms` passed; its ADMIT waits.
    let refused = try_connect(as_user(&a, "late-3", "late", true)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("ServiceUnavailable")),
        "late-3 is refused while node 1 cannot reach Redis"
    );
    relay.resume();
    // A persistent session's claim (a clean one needs no Redis) goes down
    // the same connection, behind the held ADMIT: once it is answered,
    // Redis has seen that one too.
    let _probe = connect_when_store_is_back(options(&a, "late-probe", false)).await;
    assert_eq!(listed(&b, "late"), ["late-1", "late-2"]);
    // And the limit still counts both: a third evicts the oldest.
    let mut one = _one;
    let _three = connect(as_user(&b, "late-4", "late", true)).await;
    one.closed("late-1, evicted by late-4").await;
    assert_eq!(listed(&b, "late"), ["late-2", "late-4"]);
}

/// An admission whose claim then fails: the connection is refused, and
/// the connection ADMIT evicted for it is closed all the same, for ADMIT
/// took it out of its user's count. Left open, it was served uncounted,
/// over the limit: the fault harness's `over_cap`, where an ADMIT reached
/// Redis in time through a slow link and the CLAIM behind it did not. Here
/// the CLAIM fails because the session key holds a value of another type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_fails_after_its_admission_still_closes_what_it_evicted() {
    let redis = Redis::start();
    let env = [("TETHER_LIMITS__MAX_CONNECTIONS_PER_USER", "1")];
    let a = Node::start(1, &redis.url(), &env);
    let b = Node::start(2, &redis.url(), &env);
    let mut held = connect(as_user(&a, "held", "solo", true)).await;
    assert_eq!(listed(&a, "solo"), ["held"]);
    let mut conn = redis.conn().unwrap();
    let () = redis::cmd("SET")
        .arg("tt:{c:broken}:s")
        .arg("not a hash")
        .query(&mut conn)
        .unwrap();
    let refused = try_connect(as_user(&b, "broken", "solo", true)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("ServiceUnavailable")),
        "the claim fails: {:?}",
        refused.err()
    );
    held.closed("held, evicted by the refused connection's admission")
        .await;
    crate::common::until("the refused connection leaves presence", || {
        listed(&a, "solo").is_empty()
    })
    .await;
    assert_eq!(b.metric("tether_store_evicted_total"), 1.0);
}

/// A claim whose answer is lost though it ran in Redis. Through a slow
/// return path (the relay deafened: requests pass, answers wait), node
/// 2's CLAIM takes `dev7`'s session over from node 1, and node 2 hears
/// nothing within `store.request_timeout_ms`. It refused the client
/// (0x88) and forgot the claim: Redis went on naming a connection that did
/// not exist as the owner, and what the session's subscription matched
/// meanwhile reached nobody, gone when the client came back (the fault
/// harness, a slow link to one node). The client is still refused at
/// once, but node 2 asks Redis what its claim did until it is told, and
/// keeps the session it claimed, with what came for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_was_lost_but_that_landed_keeps_its_session() {
    let redis = Redis::start();
    let relay = crate::common::relay::Relay::to_unix(redis.socket());
    let a = Node::start(1, &redis.url(), &[]);
    let b = Node::start(
        2,
        &relay.url(),
        &[("TETHER_STORE__REQUEST_TIMEOUT_MS", "1000")],
    );
    let mut dev = connect(options(&a, "dev7", false)).await;
    dev.subscribe("dev7/#").await;
    drop(dev);
    // Node 2 has its connection to Redis (made in the background).
    drop(connect_when_store_is_back(options(&b, "dev7-probe", false)).await);

    relay.deafen();
    let started = std::time::Instant::now();
    let refused = try_connect(options(&b, "dev7", false)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("ServiceUnavailable")),
        "refused once the claim's answer is late: {:?}",
        refused.err()
    );
    assert!(started.elapsed() < Duration::from_secs(3), "promptly");
    // A clean session connects without Redis.
    let mut publ = connect(options(&b, "dev7-pub", true)).await;
    publ.client
        .publish(
            "dev7/x",
            QoS::AtLeastOnce,
            false,
            "while the answer was lost",
        )
        .await
        .unwrap();
    publ.next("PUBACK", |p| matches!(p, Packet::PubAck(_)))
        .await;
    relay.resume();

    // Its next claim on node 2 waits for the first one's outcome.
    let mut dev = connect_when_store_is_back(options(&b, "dev7", false)).await;
    assert!(dev.session_present, "the session node 2 claimed");
    let p = dev.publish().await;
    assert_eq!(&p.payload[..], b"while the answer was lost");
    assert_eq!(b.metric("tether_store_claims_settled_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_retried_on_another_node_with_its_idempotency_key_is_delivered_once() {
    let redis = Redis::start();
    let a = Node::start(1, &redis.url(), &[]);
    let b = Node::start(2, &redis.url(), &[]);
    // A device on each node (without the Kafka bus, a push reaches the
    // devices of the node it was sent to).
    let mut on_a = connect(options(&a, "idem-a", true)).await;
    on_a.subscribe("user/ida/inbox").await;
    let mut on_b = connect(options(&b, "idem-b", true)).await;
    on_b.subscribe("user/ida/inbox").await;
    let push = |node: &Node, key: &str, payload: &str| {
        http(
            std::net::SocketAddr::from(([127, 0, 0, 1], node.http)),
            "POST",
            "/v1/push/users/ida",
            &[&format!("Idempotency-Key: {key}")],
            &format!(r#"{{"payload":"{payload}","qos":1}}"#),
        )
    };
    let first = push(&a, "retry-me", "once");
    assert_eq!(first.status, 200, "{}", first.body);
    // The backend's retries reach either node: both know the key.
    for node in [&b, &a, &b] {
        let r = push(node, "retry-me", "once");
        assert_eq!(r.status, 200, "node {}: {}", node.id, r.body);
        assert_eq!(r.json()["id"], first.json()["id"], "node {}", node.id);
        assert!(
            r.head
                .to_ascii_lowercase()
                .contains("idempotent-replayed: true"),
            "node {}: {}",
            node.id,
            r.head
        );
    }
    let r = push(&b, "retry-me", "changed");
    assert_eq!(r.status, 422, "another request under the key: {}", r.body);
    for (node, key) in [(&a, "next-a"), (&b, "next-b")] {
        let r = push(node, key, "next");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(&on_a.publish().await.payload[..], b"once");
    assert_eq!(
        &on_a.publish().await.payload[..],
        b"next",
        "no second copy from the retry on node 1"
    );
    assert_eq!(
        &on_b.publish().await.payload[..],
        b"next",
        "no copy at all from the retries on node 2"
    );
}
