//! The delivery policy: what happens when a message is offered to one
//! session. Pure functions of the entry, the configuration and the clock
//! reading, so the rules are unit-tested without sockets (below).
//!
//! - **Expiry**: a message whose MQTT 5 Message Expiry ran out is dropped
//!   when offered and when taken from the queue (`dropped_expired`).
//! - **QoS 0** goes straight to the outbox, unless the client is offline
//!   (`dropped_offline_qos0`), its outbox is over `session.max_outbox_bytes`
//!   (`dropped_slow_qos0`) or it is larger than the client's Maximum Packet
//!   Size (`dropped_too_large`).
//! - **QoS 1/2** take a packet id and enter the in-flight window when it has
//!   room and nothing is queued ahead (order); otherwise they queue. A queue
//!   at `session.max_queued_messages` disconnects a connected client (MQTT 5
//!   0x97) and drops the message; for an offline session the newest message
//!   is dropped (`dropped_queue_full`). Acknowledgements [`pump`] the queue.
//! - **Move window**: during a moved-in session's window, directly routed
//!   messages are held until their forwarded copy or the old core's end
//!   marker arrives (see [`crate::session::MoveWindow`]).
//! - **Receipts**: for a message that asked for them
//!   (`Delivery::receipts`), the outcomes decided here (`offline-queued`,
//!   `dropped`, `expired`) are reported to its sink
//!   ([`crate::session::Receipts`]); every other delivery pays one test.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use super::{Entry, Link, Now, Phase};
use crate::codec::{reason, QoS};
use crate::config::Config;
use crate::id::Minter;
use crate::session::{report, Delivery, Frame, Inflight, Outcome, Session};
use crate::stats::{bump, Stats};

/// Outcome of offering a message to a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Written to the outbox (wake the connection).
    Sent,
    /// Queued for later (window full or client offline).
    Queued,
    /// QoS 0 dropped because the connection is slow (outbox over its limit).
    DroppedSlow,
    /// QoS 0 dropped because the client is not connected.
    DroppedOffline,
    /// QoS 1/2 dropped because the session queue is full.
    DroppedQueueFull,
    /// Second copy of a message during a cross-core move; already offered.
    Duplicate,
    /// Held during a cross-core move until the old core's copy or its end
    /// marker arrives (see [`crate::session::MoveWindow`]).
    Held,
    /// Its MQTT 5 Message Expiry Interval ran out before delivery.
    Expired,
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
}

/// Counts an offer's outcome in the core's counters (drops by reason).
pub fn count(offer: Offer, stats: &Stats) {
    match offer {
        Offer::Sent | Offer::Queued | Offer::Held => {}
        Offer::DroppedSlow => bump(&stats.dropped_slow_qos0, 1),
        Offer::DroppedOffline => bump(&stats.dropped_offline_qos0, 1),
        Offer::DroppedQueueFull => bump(&stats.dropped_queue_full, 1),
        Offer::Duplicate => bump(&stats.duplicates_suppressed, 1),
        Offer::Expired => bump(&stats.dropped_expired, 1),
        Offer::TooLarge => bump(&stats.dropped_too_large, 1),
    }
}

/// Offers one message that was routed to this core directly. During a
/// session's move window it is held unless its copy already came through
/// the old core.
pub fn offer(e: &mut Entry, d: Delivery, cfg: &Config, stats: &Stats, now: Now) -> Offer {
    if let Some(w) = e.session.move_window.as_mut() {
        let open = now.tick < w.until && w.held.len() < cfg.session.max_queued_messages;
        if open {
            if w.ids.contains(&d.msg.id) {
                return Offer::Duplicate;
            }
            w.held.push_back(d);
            return Offer::Held;
        }
        // Past the fallback deadline, or holding as much as a session may
        // queue: bounded memory before waiting longer for the old core.
        release_window(e, cfg, stats, now.at);
    }
    deliver(e, d, cfg, stats, now.at)
}

/// Offers one message forwarded by the old core's tombstone (the caller
/// checked that the window is open).
///
/// Its direct copy, if held, is dropped: this one goes out in the old
/// core's order. Held messages from the same origin core with a smaller id
/// go out first: ids grow in publish order per origin core, so those are
/// older, and they may be waiting for a forward that takes a longer path
/// (a session that moved twice carries what it held along).
pub fn offer_forwarded(
    e: &mut Entry,
    d: Delivery,
    cfg: &Config,
    stats: &Stats,
    now: Instant,
) -> Offer {
    let mut earlier = Vec::new();
    if let Some(w) = e.session.move_window.as_mut() {
        if !w.record(d.msg.id) {
            return Offer::Duplicate;
        }
        let minter = Minter::of(d.msg.id);
        let mut rest = VecDeque::with_capacity(w.held.len());
        for h in w.held.drain(..) {
            if h.msg.id == d.msg.id {
                bump(&stats.duplicates_suppressed, 1);
            } else if Minter::of(h.msg.id) == minter && h.msg.id < d.msg.id {
                earlier.push(h);
            } else {
                rest.push_back(h);
            }
        }
        w.held = rest;
        for h in &earlier {
            w.record(h.msg.id);
        }
    }
    for h in earlier {
        count(deliver(e, h, cfg, stats, now), stats);
    }
    deliver(e, d, cfg, stats, now)
}

/// Ends a session's move window: what was held goes out in arrival order,
/// except what already came through the old core.
pub fn release_window(e: &mut Entry, cfg: &Config, stats: &Stats, now: Instant) {
    let Some(w) = e.session.move_window.take() else {
        return;
    };
    for d in w.held {
        if w.ids.contains(&d.msg.id) {
            bump(&stats.duplicates_suppressed, 1);
        } else {
            count(deliver(e, d, cfg, stats, now), stats);
        }
    }
}

/// Expiry, the in-flight window and the slow-consumer policy (see the
/// module docs). Retained messages sent on subscribe come here directly:
/// they are a deliberate second copy.
#[inline]
pub fn deliver(e: &mut Entry, d: Delivery, cfg: &Config, stats: &Stats, now: Instant) -> Offer {
    if d.receipts && d.qos != QoS::AtMostOnce {
        return deliver_reporting(e, d, cfg, stats, now);
    }
    apply(e, d, cfg, stats, now)
}

/// [`deliver`] for a message that asked for receipts: the outcomes decided
/// here are reported. Out of line, so that the deliveries of every other
/// message pay only the test above.
#[cold]
#[inline(never)]
fn deliver_reporting(
    e: &mut Entry,
    d: Delivery,
    cfg: &Config,
    stats: &Stats,
    now: Instant,
) -> Offer {
    let msg = d.msg.clone();
    let offer = apply(e, d, cfg, stats, now);
    let outcome = match offer {
        Offer::Queued
            if !e
                .link
                .as_ref()
                .is_some_and(|_| matches!(e.phase, Phase::Active)) =>
        {
            Outcome::OfflineQueued
        }
        Offer::DroppedQueueFull => Outcome::Dropped("session.max_queued_messages"),
        Offer::Expired => Outcome::Expired,
        Offer::TooLarge => Outcome::Dropped("maximum packet size"),
        _ => return offer,
    };
    e.report(&msg, outcome);
    offer
}

#[inline(always)]
fn apply(e: &mut Entry, d: Delivery, cfg: &Config, stats: &Stats, now: Instant) -> Offer {
    if d.msg.expired(now) {
        return Offer::Expired;
    }
    let active = matches!(e.phase, Phase::Active);
    let link = e.link.as_mut().filter(|_| active);
    if d.qos == QoS::AtMostOnce {
        let Some(link) = link else {
            return Offer::DroppedOffline;
        };
        if link.outbox_bytes as usize >= cfg.session.max_outbox_bytes {
            return Offer::DroppedSlow;
        }
        if !fits(link, &d) {
            return Offer::TooLarge;
        }
        link.push(Frame::Publish {
            d,
            pkid: 0,
            dup: false,
        });
        return Offer::Sent;
    }
    let s = &mut e.session;
    if let Some(link) = link {
        if s.queued.is_empty() && s.inflight.len() < usize::from(link.window) {
            send_new(s, link, d, stats, e.client_id.as_ref());
            return Offer::Sent;
        }
        if s.queued.len() >= cfg.session.max_queued_messages {
            if link.close.is_none() {
                info!(conn = %e.id, queued = s.queued.len(), "slow consumer over the queue limit; disconnecting (0x97)");
                bump(&stats.disconnected_slow, 1);
            }
            let reason = link.version.is_v5().then_some(reason::QUOTA_EXCEEDED);
            link.request_close(reason, true);
            return Offer::DroppedQueueFull;
        }
    } else if s.queued.len() >= cfg.session.max_queued_messages {
        return Offer::DroppedQueueFull;
    }
    s.queued.push_back(d);
    Offer::Queued
}

/// Whether `d` fits the client's Maximum Packet Size. MQTT 5 3.1.2-24: a
/// message that does not is not sent to this client, as if delivered.
fn fits(link: &Link, d: &Delivery) -> bool {
    // A topic alias property (bound at write time) can add 3 bytes, and grow
    // the property length prefix by one.
    let alias_room = if link.out_aliases.is_some() { 4 } else { 0 };
    d.encoded_len(link.version) + alias_room <= link.max_packet as usize
}

/// Sends `d` as a new in-flight message; one larger than the client's
/// Maximum Packet Size is dropped instead (counted, and reported to the
/// message's receipts on behalf of `client`).
fn send_new(
    s: &mut Session,
    link: &mut Link,
    d: Delivery,
    stats: &Stats,
    client: Option<&Arc<str>>,
) {
    if !fits(link, &d) {
        bump(&stats.dropped_too_large, 1);
        if d.receipts && d.qos != QoS::AtMostOnce {
            let user = link.username.as_ref();
            report(
                &d.msg,
                client,
                user,
                Outcome::Dropped("maximum packet size"),
            );
        }
        return;
    }
    let pkid = s.next_pkid();
    s.push_inflight(Inflight {
        pkid,
        d: d.clone(),
        released: false,
    });
    link.push(Frame::Publish {
        d,
        pkid,
        dup: false,
    });
}

/// Moves queued messages into the window while it has room, skipping those
/// that expired while they waited. `now` is asked only for a message that
/// can expire: an acknowledgement that moves plain messages reads no clock
/// (it was 3 % of a core in the flat-out fan-out profile).
pub fn pump(e: &mut Entry, stats: &Stats, now: impl Fn() -> Instant) {
    let Some(link) = e.link.as_mut() else { return };
    let s = &mut e.session;
    let client = e.client_id.as_ref();
    while s.inflight.len() < usize::from(link.window) {
        let Some(d) = s.queued.pop_front() else { break };
        if d.msg.expires_at.is_some() && d.msg.expired(now()) {
            bump(&stats.dropped_expired, 1);
            report(&d.msg, client, link.username.as_ref(), Outcome::Expired);
            continue;
        }
        send_new(s, link, d, stats, client);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::codec::{Properties, Version};
    use crate::id::ConnId;
    use crate::session::{Message, MoveWindow, Publication};

    fn cfg(window_queue: usize, outbox: usize) -> Config {
        let mut c = Config::default();
        c.session.max_queued_messages = window_queue;
        c.session.max_outbox_bytes = outbox;
        c
    }

    fn entry(window: u16, online: bool) -> Entry {
        let mut link = Link::new("127.0.0.1:1".parse().unwrap(), 0, window, 0);
        link.version = Version::V5;
        Entry {
            gen: 1,
            id: ConnId {
                node: 1,
                core: 0,
                seq: 1,
            },
            client_id: Some("c".into()),
            phase: if online {
                Phase::Active
            } else {
                Phase::Offline {
                    expires_at: u64::MAX,
                    will: None,
                }
            },
            session: Session::default(),
            link: online.then_some(link),
        }
    }

    fn msg(id: u64, qos: QoS, expiry: Option<u32>, born: Instant) -> Delivery {
        let properties = Properties {
            message_expiry_interval: expiry,
            ..Default::default()
        };
        let p = Publication {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"0123456789"),
            qos,
            retain: false,
            properties: Some(Box::new(properties)),
            origin: None,
        };
        Delivery::new(Arc::new(Message::new(id, p, born)), qos, false, None)
    }

    fn now(at: Instant) -> Now {
        Now { tick: 0, at }
    }

    fn sent_ids(e: &Entry) -> Vec<u64> {
        let link = e.link.as_ref().unwrap();
        link.outbox
            .iter()
            .filter_map(|f| match f {
                Frame::Publish { d, .. } => Some(d.msg.id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_window_fills_then_messages_queue_in_order_and_acks_pump_them() {
        let (c, s) = (cfg(10, 1 << 20), Stats::default());
        let t = Instant::now();
        let mut e = entry(2, true);
        for id in 1..=4 {
            let got = offer(&mut e, msg(id, QoS::AtLeastOnce, None, t), &c, &s, now(t));
            let want = if id <= 2 { Offer::Sent } else { Offer::Queued };
            assert_eq!(got, want, "message {id}");
        }
        assert_eq!(sent_ids(&e), vec![1, 2]);
        let pkid = e.session.inflight[0].pkid;
        e.session.take_inflight(pkid, |_| true);
        pump(&mut e, &s, || t);
        assert_eq!(sent_ids(&e), vec![1, 2, 3], "one ack, one more in flight");
        assert_eq!(e.session.queued.len(), 1);
    }

    #[test]
    fn a_full_queue_disconnects_an_online_client_and_drops_for_an_offline_one() {
        let (c, s) = (cfg(2, 1 << 20), Stats::default());
        let t = Instant::now();
        let mut online = entry(1, true);
        for id in 1..=3 {
            offer(
                &mut online,
                msg(id, QoS::AtLeastOnce, None, t),
                &c,
                &s,
                now(t),
            );
        }
        let got = offer(
            &mut online,
            msg(4, QoS::AtLeastOnce, None, t),
            &c,
            &s,
            now(t),
        );
        assert_eq!(got, Offer::DroppedQueueFull);
        let close = online.link.as_ref().unwrap().close.clone().unwrap();
        assert_eq!(close.reason, Some(reason::QUOTA_EXCEEDED));
        assert!(close.discard_outbox);
        assert_eq!(s.disconnected_slow.load(Relaxed), 1);

        let mut offline = entry(1, false);
        for id in 1..=2 {
            let got = offer(
                &mut offline,
                msg(id, QoS::AtLeastOnce, None, t),
                &c,
                &s,
                now(t),
            );
            assert_eq!(got, Offer::Queued);
        }
        let got = offer(
            &mut offline,
            msg(3, QoS::AtLeastOnce, None, t),
            &c,
            &s,
            now(t),
        );
        assert_eq!(
            got,
            Offer::DroppedQueueFull,
            "offline: the newest is dropped"
        );
        assert_eq!(offline.session.queued.len(), 2);
        assert_eq!(
            offer(
                &mut offline,
                msg(4, QoS::AtMostOnce, None, t),
                &c,
                &s,
                now(t)
            ),
            Offer::DroppedOffline
        );
    }

    #[test]
    fn qos0_is_dropped_for_a_slow_consumer_and_when_too_large() {
        let (c, s) = (cfg(10, 50), Stats::default());
        let t = Instant::now();
        let mut e = entry(10, true);
        assert_eq!(
            offer(&mut e, msg(1, QoS::AtMostOnce, None, t), &c, &s, now(t)),
            Offer::Sent
        );
        assert_eq!(
            offer(&mut e, msg(2, QoS::AtMostOnce, None, t), &c, &s, now(t)),
            Offer::DroppedSlow,
            "the outbox (75 B for one message) is at its 50 B limit"
        );
        let mut small = entry(10, true);
        small.link.as_mut().unwrap().max_packet = 10;
        assert_eq!(
            offer(&mut small, msg(3, QoS::AtMostOnce, None, t), &c, &s, now(t)),
            Offer::TooLarge
        );
        offer(
            &mut small,
            msg(4, QoS::AtLeastOnce, None, t),
            &c,
            &s,
            now(t),
        );
        assert_eq!(s.dropped_too_large.load(Relaxed), 1, "QoS 1 too: counted");
        assert!(small.session.inflight.is_empty());
    }

    #[test]
    fn expired_messages_are_dropped_when_offered_and_when_pumped() {
        let (c, s) = (cfg(10, 1 << 20), Stats::default());
        let t = Instant::now();
        let later = t + Duration::from_secs(5);
        let mut e = entry(1, true);
        assert_eq!(
            offer(
                &mut e,
                msg(1, QoS::AtLeastOnce, Some(1), t),
                &c,
                &s,
                now(later)
            ),
            Offer::Expired
        );
        offer(&mut e, msg(2, QoS::AtLeastOnce, None, t), &c, &s, now(t));
        offer(&mut e, msg(3, QoS::AtLeastOnce, Some(2), t), &c, &s, now(t));
        offer(&mut e, msg(4, QoS::AtLeastOnce, None, t), &c, &s, now(t));
        let pkid = e.session.inflight[0].pkid;
        e.session.take_inflight(pkid, |_| true);
        pump(&mut e, &s, || later);
        assert_eq!(sent_ids(&e), vec![2, 4], "3 expired while queued");
        assert_eq!(s.dropped_expired.load(Relaxed), 1);
    }

    #[test]
    fn the_move_window_holds_direct_messages_until_their_forwarded_copies() {
        let (c, s) = (cfg(10, 1 << 20), Stats::default());
        let t = Instant::now();
        let mut e = entry(10, true);
        e.session.move_window = Some(Box::new(MoveWindow::new(100)));
        let at = |tick| Now { tick, at: t };
        // Direct copies of 2 and 3 (origin core 0) arrive before the old
        // core's forward of 1, 2, 3.
        assert_eq!(
            offer(&mut e, msg(2, QoS::AtLeastOnce, None, t), &c, &s, at(1)),
            Offer::Held
        );
        assert_eq!(
            offer(&mut e, msg(3, QoS::AtLeastOnce, None, t), &c, &s, at(1)),
            Offer::Held
        );
        assert!(sent_ids(&e).is_empty());
        offer_forwarded(&mut e, msg(1, QoS::AtLeastOnce, None, t), &c, &s, t);
        offer_forwarded(&mut e, msg(2, QoS::AtLeastOnce, None, t), &c, &s, t);
        assert_eq!(sent_ids(&e), vec![1, 2], "forwards in the old core's order");
        assert_eq!(
            offer_forwarded(&mut e, msg(2, QoS::AtLeastOnce, None, t), &c, &s, t),
            Offer::Duplicate
        );
        // Held 3 from the same origin goes out before a later forward, 4.
        offer_forwarded(&mut e, msg(4, QoS::AtLeastOnce, None, t), &c, &s, t);
        assert_eq!(sent_ids(&e), vec![1, 2, 3, 4]);
        // After the fallback deadline the window releases on the next offer.
        assert_eq!(
            offer(&mut e, msg(5, QoS::AtLeastOnce, None, t), &c, &s, at(1)),
            Offer::Held
        );
        assert_eq!(
            offer(&mut e, msg(6, QoS::AtLeastOnce, None, t), &c, &s, at(100)),
            Offer::Sent
        );
        assert_eq!(sent_ids(&e), vec![1, 2, 3, 4, 5, 6]);
        assert!(e.session.move_window.is_none());
    }

    #[test]
    fn a_direct_copy_after_its_forward_is_a_duplicate_and_release_sends_the_rest() {
        let (c, s) = (cfg(10, 1 << 20), Stats::default());
        let t = Instant::now();
        let mut e = entry(10, true);
        e.session.move_window = Some(Box::new(MoveWindow::new(100)));
        let at = Now { tick: 1, at: t };
        offer_forwarded(&mut e, msg(7, QoS::AtLeastOnce, None, t), &c, &s, t);
        assert_eq!(
            offer(&mut e, msg(7, QoS::AtLeastOnce, None, t), &c, &s, at),
            Offer::Duplicate
        );
        assert_eq!(
            offer(&mut e, msg(8, QoS::AtLeastOnce, None, t), &c, &s, at),
            Offer::Held
        );
        release_window(&mut e, &c, &s, t);
        assert_eq!(sent_ids(&e), vec![7, 8]);
        assert!(e.session.move_window.is_none());
    }
}
