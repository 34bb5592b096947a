//! The takeover state machine without sockets or executors: cores of one
//! node built by hand, a manual clock, and the mesh pumped by the test, so
//! every interleaving is chosen, not hoped for.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::*;
use crate::auth::{AllowAll, AuthChain, DenyLists};
use crate::bridge::outbound::NoOutbound;
use crate::bridge::{Bell, ReplyTo};
use crate::codec::{reason, ConnAck, Packet, QoS, SubOptions, Version};
use crate::id::Location;
use crate::session::{Frame, Publication};
use crate::store::{Claim, ClaimResult, MemoryStore, SessionStore, StoreError};

/// A store that answers every claim later, through the test.
#[derive(Default)]
struct Deferred {
    directory: MemoryStore,
    asked: Mutex<Vec<(Claim, ReplyTo<ClaimResult>)>>,
}

impl SessionStore for Deferred {
    fn claim(&self, _: &Claim) -> Option<ClaimResult> {
        None
    }

    fn claim_later(&self, claim: Claim, reply: ReplyTo<ClaimResult>) {
        self.asked.lock().unwrap().push((claim, reply));
    }

    fn release(&self, client_id: &str, loc: Location) {
        self.directory.release(client_id, loc)
    }

    fn locate(&self, client_id: &str) -> Option<Location> {
        self.directory.locate(client_id)
    }
}

impl Deferred {
    /// Answers the oldest claim as the directory would.
    fn answer_next(&self) {
        let (claim, reply) = self.asked.lock().unwrap().remove(0);
        let result = self.directory.claim(&claim).expect("memory answers");
        reply.send(result);
    }
}

struct Node {
    cores: Vec<Core>,
    replies: Vec<ReplyReceivers>,
    _bells: Vec<StdUnixStream>,
}

fn node(cores: usize, store: Arc<dyn SessionStore>) -> Node {
    let cfg = Arc::new(Config::default());
    let state = Arc::new(NodeState {
        node_id: 1,
        cores: (0..cores).map(|_| CoreVisible::default()).collect(),
        store,
        auth: Arc::new(AuthChain::single(Arc::new(AllowAll), false)),
        authz: Arc::new(DenyLists::default()),
        outbound: Arc::new(NoOutbound),
        started: Instant::now(),
        retained: Default::default(),
        bans: crate::auth::bans::Bans::new(0, 60, 300),
        draining: Default::default(),
        admission: crate::shard::Admission::new(&cfg.listeners),
        departures: Default::default(),
    });
    let mut node = Node {
        cores: Vec::new(),
        replies: Vec::new(),
        _bells: Vec::new(),
    };
    for id in 0..cores {
        let (tx, rx) = StdUnixStream::pair().unwrap();
        rx.set_nonblocking(true).unwrap();
        let (returns, replies) = Returns::new(Arc::new(Bell::new(tx).unwrap()));
        node.cores.push(Core::new(
            id,
            cfg.clone(),
            state.clone(),
            returns,
            Clock::manual(),
        ));
        node.replies.push(replies);
        node._bells.push(rx);
    }
    node
}

impl Node {
    /// Delivers every routed message until the mesh is quiet (FIFO per
    /// pair of cores, as the channels are).
    fn pump(&self) {
        loop {
            let mut moved = false;
            for from in 0..self.cores.len() {
                for to in (0..self.cores.len()).filter(|&t| t != from) {
                    while let Some(msg) = self.cores[from].routes.next(to) {
                        let bytes = msg.bytes();
                        self.cores[from].routed(msg.messages(), bytes);
                        self.cores[to].on_core_msg(msg);
                        self.cores[from].node.cores[from]
                            .mesh_bytes
                            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
                        moved = true;
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Hands every answered claim back to its core (what the inbox task
    /// and `mqtt::on_claim` do).
    fn answers(&self) -> Vec<Result<(), takeover::ClaimRefused>> {
        let mut out = Vec::new();
        for (core, replies) in self.cores.iter().zip(&self.replies) {
            while let Ok((token, result)) = replies.claims.try_recv() {
                let mut st = core.st.borrow_mut();
                let Some(Waiting::Claim { key, .. }) = st.pending.take(token) else {
                    panic!("a claim answer for something else");
                };
                out.push(core.claimed(&mut st, key, result));
            }
        }
        out
    }

    /// A new MQTT 5 connection on `core` claiming `client_id`.
    fn connect(&self, core: usize, client_id: &str, clean: bool) -> ConnKey {
        let c = &self.cores[core];
        let (key, _) = c.register("127.0.0.1:1".parse().unwrap(), 0);
        let mut st = c.st.borrow_mut();
        st.link(key).unwrap().version = Version::V5;
        let info = ConnectInfo {
            clean_start: clean,
            expiry_secs: 300,
            connack: ConnAck {
                session_present: false,
                code: reason::SUCCESS,
                properties: Default::default(),
            },
            durable: None,
            stale_handover: false,
            from_store: None,
        };
        c.claim(&mut st, key, client_id.into(), info)
            .expect("claimed");
        key
    }

    fn subscribe(&self, core: usize, key: ConnKey, filter: &str) {
        let c = &self.cores[core];
        let mut st = c.st.borrow_mut();
        let opts = SubOptions::qos(QoS::AtLeastOnce);
        st.entry(key)
            .unwrap()
            .session
            .subs
            .push((filter.into(), opts, 0));
        c.index_sub(&mut st, filter, key, opts, 0, None);
    }

    fn publish(&self, core: usize, topic: &str, payload: &'static [u8]) {
        let c = &self.cores[core];
        let msg = c.message(Publication {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            origin: None,
        });
        c.publish(&mut c.st.borrow_mut(), msg);
    }

    /// Takes the frames queued for `key`.
    fn frames(&self, core: usize, key: ConnKey) -> Vec<Frame> {
        let mut st = self.cores[core].st.borrow_mut();
        let Some(link) = st.link(key) else {
            return Vec::new();
        };
        link.outbox_bytes = 0;
        link.outbox.drain(..).collect()
    }

    fn phase<T>(&self, core: usize, key: ConnKey, f: impl FnOnce(Option<&Phase>) -> T) -> T {
        let mut st = self.cores[core].st.borrow_mut();
        f(st.entry(key).map(|e| &e.phase))
    }

    fn close_reason(&self, core: usize, key: ConnKey) -> Option<Option<u8>> {
        let mut st = self.cores[core].st.borrow_mut();
        st.link(key)
            .and_then(|l| l.close.as_ref().map(|c| c.reason))
    }
}

fn connack(frames: &[Frame]) -> Option<bool> {
    frames.iter().find_map(|f| match f {
        Frame::Control(p) => match &**p {
            Packet::ConnAck(a) => Some(a.session_present),
            _ => None,
        },
        _ => None,
    })
}

fn payloads(frames: &[Frame]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Publish { d, .. } => Some(d.msg.payload.to_vec()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_takeover_on_the_same_core_moves_the_session_and_closes_the_old_link() {
    let n = node(2, Arc::new(MemoryStore::default()));
    let a = n.connect(0, "c", false);
    assert_eq!(connack(&n.frames(0, a)), Some(false));
    n.subscribe(0, a, "t");
    let b = n.connect(0, "c", false);
    assert_eq!(n.close_reason(0, a), Some(Some(reason::SESSION_TAKEN_OVER)));
    assert_eq!(connack(&n.frames(0, b)), Some(true), "session present");
    assert!(n.phase(0, a, |p| matches!(p, Some(Phase::TakenOver))));
    assert_eq!(n.cores[0].st.borrow().subs.len(), 1, "indexed once, for b");
    n.publish(0, "t", b"x");
    assert_eq!(payloads(&n.frames(0, b)), vec![b"x".to_vec()]);
}

#[test]
fn a_takeover_across_cores_leaves_a_tombstone_that_forwards_then_ends() {
    let n = node(2, Arc::new(MemoryStore::default()));
    let a = n.connect(0, "c", false);
    n.subscribe(0, a, "t");
    let b = n.connect(1, "c", false);
    assert!(
        n.phase(1, b, |p| matches!(p, Some(Phase::AwaitingHandover { .. }))),
        "waits for core 0"
    );
    n.pump();
    assert_eq!(n.close_reason(0, a), Some(Some(reason::SESSION_TAKEN_OVER)));
    assert_eq!(connack(&n.frames(1, b)), Some(true));
    assert!(n.phase(0, a, |p| matches!(p, Some(Phase::Moved { .. }))));
    // A message routed to the old core (its interest bit still says "here")
    // reaches the session through the tombstone, then direct ones too.
    n.publish(0, "t", b"via tombstone");
    n.pump();
    n.publish(1, "t", b"direct");
    assert!(
        payloads(&n.frames(1, b)).contains(&b"via tombstone".to_vec()),
        "forwarded"
    );
    n.cores[0].clock().advance(MOVE_GRACE_MS_FOR_TESTS);
    n.cores[0].on_tick(&mut Vec::new());
    n.pump();
    assert_eq!(
        n.cores[0].st.borrow().subs.len(),
        0,
        "the tombstone unindexed"
    );
    assert_eq!(
        payloads(&n.frames(1, b)),
        vec![b"direct".to_vec()],
        "held until the old core's end marker"
    );
}

const MOVE_GRACE_MS_FOR_TESTS: u64 = takeover::MOVE_GRACE_MS + 200;

#[test]
fn a_newer_claim_supersedes_a_connection_still_waiting_for_its_handover() {
    let n = node(2, Arc::new(MemoryStore::default()));
    let a = n.connect(0, "c", false);
    n.subscribe(0, a, "t");
    let b = n.connect(1, "c", false);
    let c = n.connect(1, "c", false);
    assert!(n.phase(1, b, |p| matches!(
        p,
        Some(Phase::AwaitingHandover {
            superseded: Some(_),
            ..
        })
    )));
    n.pump();
    assert_eq!(n.close_reason(1, b), Some(None), "closed without a CONNACK");
    assert_eq!(connack(&n.frames(1, b)), None);
    assert_eq!(connack(&n.frames(1, c)), Some(true), "c got a's session");
    n.publish(1, "t", b"m");
    assert!(
        payloads(&n.frames(1, c)).is_empty(),
        "held: moved in from core 0"
    );
    n.cores[0].clock().advance(MOVE_GRACE_MS_FOR_TESTS);
    n.cores[0].on_tick(&mut Vec::new());
    n.pump();
    assert_eq!(payloads(&n.frames(1, c)), vec![b"m".to_vec()]);
}

#[test]
fn a_deferred_claim_keeps_the_connection_waiting_and_nothing_is_sent_meanwhile() {
    let store = Arc::new(Deferred::default());
    let n = node(2, store.clone());
    let a = n.connect(0, "c", false);
    assert!(n.phase(0, a, |p| matches!(p, Some(Phase::AwaitingHandover { .. }))));
    assert_eq!(
        connack(&n.frames(0, a)),
        None,
        "no CONNACK before the claim"
    );
    assert_eq!(n.cores[0].st.borrow().pending.count(PendingKind::Claim), 1);
    store.answer_next();
    assert_eq!(n.answers(), vec![Ok(())]);
    assert_eq!(connack(&n.frames(0, a)), Some(false));
    assert_eq!(n.cores[0].st.borrow().pending.count(PendingKind::Claim), 0);
    // A second connection elsewhere: its claim names a as the previous owner.
    n.subscribe(0, a, "t");
    let b = n.connect(1, "c", false);
    store.answer_next();
    assert_eq!(n.answers(), vec![Ok(())]);
    n.pump();
    assert_eq!(connack(&n.frames(1, b)), Some(true));
    assert_eq!(n.close_reason(0, a), Some(Some(reason::SESSION_TAKEN_OVER)));
}

#[test]
fn a_failed_claim_refuses_its_connect_and_hands_over_to_the_one_that_superseded_it() {
    let store = Arc::new(Deferred::default());
    let n = node(1, store.clone());
    let e = n.connect(0, "c", false);
    let f = n.connect(0, "c", false);
    // e's claim reached the directory but its answer was lost (a timeout):
    // f's claim then names e, which is still waiting.
    let (claim_e, reply_e) = store.asked.lock().unwrap().remove(0);
    assert_eq!(claim_e.loc.key, e);
    store.directory.claim(&claim_e);
    store.answer_next();
    assert_eq!(n.answers(), vec![Ok(())]);
    assert!(
        n.phase(0, e, |p| matches!(
            p,
            Some(Phase::AwaitingHandover {
                superseded: Some(_),
                ..
            })
        )),
        "e is superseded by f"
    );
    assert!(n.phase(0, f, |p| matches!(p, Some(Phase::AwaitingHandover { .. }))));
    reply_e.send(Err(StoreError::Unavailable("timed out".into())));
    let answers = n.answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(
        answers[0].as_ref().unwrap_err().code,
        reason::SERVER_UNAVAILABLE,
        "e is refused"
    );
    assert!(
        n.phase(0, f, |p| matches!(p, Some(Phase::Active))),
        "f does not hang"
    );
    assert_eq!(
        connack(&n.frames(0, f)),
        Some(false),
        "no session to present"
    );
    assert_eq!(n.cores[0].st.borrow().pending.count(PendingKind::Claim), 0);
}

#[test]
fn a_core_is_overloaded_while_its_last_tick_ran_over_the_limit() {
    let n = node(1, Arc::new(MemoryStore::default()));
    let c = &n.cores[0];
    let limit = c.cfg.listeners.overload_lag_ms;
    assert!(limit > 0, "on by default");
    c.lag_ms.set(limit + 1);
    assert!(c.overloaded());
    c.lag_ms.set(limit);
    assert!(!c.overloaded(), "at the limit is not over it");
    let mut reloaded = c.cfg.listeners.clone();
    reloaded.overload_lag_ms = limit * 2;
    c.node.admission.set(&reloaded);
    c.lag_ms.set(limit + 1);
    assert!(!c.overloaded(), "a reload raised the limit");
    reloaded.overload_lag_ms = 0;
    c.node.admission.set(&reloaded);
    c.lag_ms.set(u64::MAX);
    assert!(!c.overloaded(), "0: never");
}

#[test]
fn the_handshake_cap_counts_from_accept_to_an_active_session_or_a_close() {
    let n = node(1, Arc::new(MemoryStore::default()));
    let c = &n.cores[0];
    let mut l = c.cfg.listeners.clone();
    l.max_handshakes_per_core = 2;
    c.node.admission.set(&l);
    let (first, _) = c.register("127.0.0.1:1".parse().unwrap(), 0);
    assert!(!c.handshakes_full());
    let active = n.connect(0, "a", true);
    assert!(
        !c.handshakes_full(),
        "an active session is past its handshake"
    );
    let (_second, _) = c.register("127.0.0.1:2".parse().unwrap(), 0);
    assert!(c.handshakes_full(), "two in progress");
    c.unregister(first);
    assert!(!c.handshakes_full(), "a close ends a handshake");
    c.unregister(active);
    c.unregister(first);
    assert!(
        !c.handshakes_full(),
        "closing an active one, or twice, counts nothing"
    );
    let (_third, _) = c.register("127.0.0.1:3".parse().unwrap(), 0);
    assert!(c.handshakes_full());
    l.max_handshakes_per_core = 0;
    c.node.admission.set(&l);
    assert!(!c.handshakes_full(), "0: no cap");
}

#[test]
fn a_drain_step_closes_at_most_its_share_and_then_reports_none_left() {
    let n = node(1, Arc::new(MemoryStore::default()));
    let keys: Vec<ConnKey> = (0..5)
        .map(|i| n.connect(0, &format!("d{i}"), true))
        .collect();
    assert_eq!(n.cores[0].drain_step(2), Some(2));
    let closing = keys
        .iter()
        .filter(|k| n.close_reason(0, **k).is_some())
        .count();
    assert_eq!(closing, 2, "two asked to close");
    assert_eq!(
        n.cores[0].drain_step(10),
        Some(3),
        "the rest, not the two again"
    );
    assert!(keys
        .iter()
        .all(|k| n.close_reason(0, *k) == Some(Some(reason::SERVER_SHUTTING_DOWN))));
    for k in keys {
        n.cores[0].unregister(k);
    }
    assert_eq!(n.cores[0].drain_step(10), None);
}

/// An idle connection keeps none of its queues' memory: the outbox is freed
/// once written, the in-flight window once acknowledged (bench/RESULTS.md:
/// the outbox buffer a CONNACK left behind was 219 B of every connection).
#[test]
fn an_idle_connection_holds_no_queue_memory() {
    let n = node(1, Arc::new(MemoryStore::default()));
    let c = &n.cores[0];
    let key = n.connect(0, "idle", false);
    n.subscribe(0, key, "t");
    n.publish(0, "t", b"x");
    let held = || {
        let mut st = c.st.borrow_mut();
        let e = st.entry(key).unwrap();
        let s = &e.session;
        (
            e.link.as_ref().unwrap().outbox.is_allocated(),
            s.inflight.is_allocated(),
            s.queued.is_allocated(),
        )
    };
    let (outbox, inflight, _) = held();
    assert!(
        outbox && inflight,
        "CONNACK and PUBLISH queued, one in flight"
    );
    let mut out = Vec::new();
    c.write_frames(key, &mut out, usize::MAX);
    assert!(!out.is_empty());
    assert_eq!(held(), (false, true, false), "written: the outbox is freed");
    let mut st = c.st.borrow_mut();
    let e = st.entry(key).unwrap();
    let pkid = e.session.inflight[0].pkid;
    assert!(e.session.take_inflight(pkid, |_| true).is_some());
    drop(st);
    assert_eq!(
        held(),
        (false, false, false),
        "acknowledged: the window is freed"
    );
}

#[test]
fn a_publisher_lags_only_behind_subscribers_that_wait_on_the_core() {
    use std::task::Waker;
    let n = node(1, Arc::new(MemoryStore::default()));
    let c = &n.cores[0];
    let sub = n.connect(0, "sub", true);
    n.subscribe(0, sub, "t");
    let window = usize::from(c.st.borrow_mut().link(sub).unwrap().window);
    // The driver's answer, as the runtime wires it: here "not queued".
    c.set_queued_probe(|_| false);
    for _ in 0..window {
        n.publish(0, "t", b"in the window");
    }
    assert!(!c.take_lagging(), "copies that went into the window: sent");
    // The connection was polled since (its waker is back) and the driver
    // has nothing for it: the client has not acknowledged. Its copies
    // queue at its own pace, and the publisher goes on.
    let idle = |c: &Core| c.st.borrow_mut().link(sub).unwrap().waker = Some(Waker::noop().clone());
    idle(c);
    n.publish(0, "t", b"queued behind a slow client");
    assert!(
        !c.take_lagging(),
        "a slow or stalled client never slows a publisher"
    );
    // Now its acknowledgements wait, unread, in the driver: the copy waits
    // on the core, and the publisher yields until the core caught up.
    c.set_queued_probe(|_| true);
    idle(c);
    n.publish(0, "t", b"queued behind the core");
    assert!(c.take_lagging(), "the publisher must yield");
    assert!(!c.take_lagging(), "taken once");
    // A connection the core woke and the driver has not polled since (its
    // waker taken) is queued too.
    c.set_queued_probe(|_| false);
    c.st.borrow_mut().link(sub).unwrap().waker = None;
    n.publish(0, "t", b"woken, not polled");
    assert!(c.take_lagging(), "no waker: the driver has it queued");
}

#[test]
fn a_publish_routed_to_a_lagging_core_makes_its_publisher_wait() {
    use std::sync::atomic::Ordering::Relaxed;
    let n = node(2, Arc::new(MemoryStore::default()));
    let far = n.connect(1, "far", true);
    n.subscribe(1, far, "t");
    n.publish(0, "t", b"one");
    assert!(!n.cores[0].take_lagging(), "core 1 keeps up: no wait");
    // Core 1's mesh receiver waits for it to serve what it was sent.
    n.cores[1].visible().lagging.fetch_add(1, Relaxed);
    n.publish(0, "t", b"two");
    assert!(n.cores[0].take_lagging(), "routed to a lagging core: wait");
    n.publish(0, "other", b"not for core 1");
    assert!(!n.cores[0].take_lagging(), "a topic core 1 does not want");
    n.cores[1].visible().lagging.fetch_sub(1, Relaxed);
    n.pump();
    assert_eq!(
        payloads(&n.frames(1, far)),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
}
