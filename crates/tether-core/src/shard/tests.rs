//! The takeover state machine without sockets or executors, on the
//! simulated node of `shard/sim.rs`.

use std::sync::Arc;

use super::sim::{connack, node, payloads, Deferred};
use super::*;
use crate::codec::reason;
use crate::store::{MemoryStore, SessionStore, StoreError};

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
