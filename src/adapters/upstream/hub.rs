//! The hub's state: which backend streams hold which filters, what each
//! was sent and has not acknowledged, and which publisher waits for what.
//! Plain data driven by the hub thread (`mod.rs`); no I/O, so its rules
//! are tested here without gRPC.
//!
//! A **route** is one `(filter, group)`: streams that subscribe with the
//! same filter and group name share its messages, each message going to
//! one of them; a stream without a group is a route of its own and gets
//! every message on its filter. A client message goes to every route whose
//! filter matches it, one **copy** each, and its publisher is answered
//! once every copy is acknowledged (or at once, with `ack = "at_once"`).
//!
//! Each stream has a window: at most that many copies sent and not
//! acknowledged. A copy that finds every member of its route at the window
//! waits in the route's backlog, in arrival order. A stream that ends
//! gives its unacknowledged copies back to its route, first in line, for
//! the other members (marked redelivered); a route whose last member left
//! answers its copies by the fallback: `refuse` fails the publisher (MQTT 5
//! gets 0x80; 3.1.1 is disconnected and sends again), `accept` counts the
//! copy as done.
//!
//! A **receipts route** is the streams that subscribed to one receipts
//! stream name: each delivery receipt addressed to that name goes to one
//! of them, with the same window, acks and redelivery; nobody waits for
//! it, and one that finds no stream (or whose route empties, or whose
//! backlog is full: [`RECEIPTS_BACKLOG_MAX`]) is counted and dropped, as a
//! receipt is at most once everywhere.
//!
//! Neither the backlog nor the pending table has a bound of its own: every
//! copy belongs to a publish a core holds in its bounded outbound table
//! (`runtime.max_outbound_inflight`), so a stalled backend pauses the
//! publishers' reads instead of growing memory here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::bridge::outbound::{OutboundError, Outgoing, Produced};
use crate::config::{UpstreamAck, UpstreamFallback};
use crate::session::ReceiptRecord;

/// Most receipts one receipts route holds waiting for a stream with room;
/// more are dropped (and counted), as receipts are at most once. Client
/// messages need no such bound (their publishers wait, see the module
/// docs), but nobody waits for a receipt: without it, a backend that
/// acknowledges slower than its messages are delivered would grow the hub
/// without end. A hundred thousand receipts are some 30 MB (about 300
/// bytes each: the record, its pending entry and its place in line).
pub(crate) const RECEIPTS_BACKLOG_MAX: usize = 100_000;

/// Called once with the publisher's answer.
pub(crate) type Done = Box<dyn FnOnce(Produced) + Send>;

/// A stream's number in the hub.
pub type StreamId = u64;

/// One copy handed to a stream: what the gRPC side sends.
#[derive(Debug, Clone)]
pub struct Handed {
    /// The stream's number for it, which its ack names.
    pub seq: u64,
    /// What it is.
    pub item: Item,
    /// A stream before this one was sent it and ended without an ack.
    pub redelivered: bool,
}

/// What a stream is sent.
#[derive(Debug, Clone)]
pub enum Item {
    /// A client's message and who published it.
    Message(Arc<Outgoing>),
    /// A delivery receipt for the receipts stream name it subscribed.
    Receipt(Arc<ReceiptRecord>),
}

/// What a stream subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Takes {
    /// Client messages on `filter`, shared with `group`'s members.
    Messages {
        /// An MQTT topic filter.
        filter: Arc<str>,
        /// The shared group; `None`: a route of its own.
        group: Option<Arc<str>>,
    },
    /// The receipts addressed to this name, shared with every stream
    /// that took it.
    Receipts(Arc<str>),
}

/// Where the hub sends a stream's copies (the gRPC side drains it; the
/// window bounds it).
pub(crate) type Sink = tokio::sync::mpsc::UnboundedSender<Handed>;

/// What the hub counts; read into `/metrics` by `mod.rs`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Copies sent to a stream (redeliveries included).
    pub sent: u64,
    /// Copies acknowledged by a backend.
    pub acked: u64,
    /// Copies sent again after their stream ended without an ack.
    pub redelivered: u64,
    /// Messages or copies no backend held, refused to their publisher.
    pub refused: u64,
    /// Messages or copies no backend held, acknowledged anyway
    /// (`fallback = "accept"`): they reached no backend.
    pub unrouted: u64,
    /// Receipts taken for a receipts stream name.
    pub receipts: u64,
    /// Receipts dropped: for a name no stream held, whose streams all
    /// ended before acknowledging them, or past [`RECEIPTS_BACKLOG_MAX`].
    pub receipts_dropped: u64,
}

struct Stream {
    route: usize,
    window: usize,
    sink: Sink,
    next_seq: u64,
    /// seq → (message key, sent at).
    unacked: HashMap<u64, (u64, Instant)>,
}

struct Route {
    takes: Takes,
    members: Vec<StreamId>,
    /// Round-robin position among `members`.
    next: usize,
    /// Copies waiting for a member with room: (message key, redelivered).
    backlog: VecDeque<(u64, bool)>,
}

struct Pending {
    item: Item,
    /// Copies not yet acknowledged.
    copies: usize,
    /// The publisher's answer, once known: every copy acknowledged, or
    /// the first failure.
    answer: Option<Produced>,
    /// Whom to give it, until given.
    done: Option<Done>,
}

/// Whose answers `item` waits in line with: its publisher's client id (a
/// client message always has one; a receipt waits for nobody).
fn publisher(item: &Item) -> Arc<str> {
    match item {
        Item::Message(out) => out.client_id.clone().unwrap_or_else(|| "".into()),
        Item::Receipt(_) => "".into(),
    }
}

/// The hub's state.
pub(crate) struct Hub {
    ack: UpstreamAck,
    fallback: UpstreamFallback,
    streams: HashMap<StreamId, Stream>,
    routes: slab::Slab<Route>,
    pending: HashMap<u64, Pending>,
    /// Each publisher's messages whose answer was not yet given, in the
    /// order they came: answers are given in that order, so what follows
    /// the hub (the Kafka bridge) takes a publisher's messages in publish
    /// order even when backends acknowledge them out of it.
    order: HashMap<Arc<str>, VecDeque<u64>>,
    next_key: u64,
    /// What the hub counted.
    pub counts: Counts,
}

impl Hub {
    pub fn new(ack: UpstreamAck, fallback: UpstreamFallback) -> Hub {
        Hub {
            ack,
            fallback,
            streams: HashMap::new(),
            routes: slab::Slab::new(),
            pending: HashMap::new(),
            order: HashMap::new(),
            next_key: 0,
            counts: Counts::default(),
        }
    }

    /// The filters some stream holds, for the cores' policy.
    pub fn filters(&self) -> Vec<Arc<str>> {
        let mut f: Vec<_> = self
            .routes
            .iter()
            .filter_map(|(_, r)| match &r.takes {
                Takes::Messages { filter, .. } => Some(filter.clone()),
                Takes::Receipts(_) => None,
            })
            .collect();
        f.sort();
        f.dedup();
        f
    }

    /// Every attached stream's id.
    pub fn stream_ids(&self) -> Vec<StreamId> {
        self.streams.keys().copied().collect()
    }

    /// Streams attached.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Copies sent and not acknowledged, over every stream.
    pub fn unacked(&self) -> usize {
        self.streams.values().map(|s| s.unacked.len()).sum()
    }

    /// Copies waiting for a stream with room (the upstream lag).
    pub fn backlog(&self) -> usize {
        self.routes.iter().map(|(_, r)| r.backlog.len()).sum()
    }

    /// Publishers' messages not yet answered.
    pub fn waiting(&self) -> usize {
        self.pending.values().filter(|p| p.done.is_some()).count()
    }

    /// A client message: one copy to every route that matches it.
    pub fn send(&mut self, out: Outgoing, done: Done) {
        let topic = out.msg.topic.clone();
        let matched: Vec<usize> = self
            .routes
            .iter()
            .filter(|(_, r)| match &r.takes {
                Takes::Messages { filter, .. } => crate::codec::topic::matches(filter, &topic),
                Takes::Receipts(_) => false,
            })
            .map(|(i, _)| i)
            .collect();
        let key = self.next_key;
        self.next_key += 1;
        let out = Item::Message(Arc::new(out));
        let client = publisher(&out);
        let answer = if matched.is_empty() {
            // No backend holds it (a grpc.upstream.topics filter).
            Some(self.fallback_answer("no backend holds an Upstream stream for this topic"))
        } else if self.ack == UpstreamAck::AtOnce {
            Some(Produced::Done)
        } else {
            None
        };
        self.pending.insert(
            key,
            Pending {
                item: out,
                copies: matched.len(),
                answer,
                done: Some(done),
            },
        );
        self.order.entry(client.clone()).or_default().push_back(key);
        for r in matched {
            self.routes[r].backlog.push_back((key, false));
            self.pump(r);
        }
        self.release(&client);
    }

    /// A delivery receipt for the streams that took the name `to`: to one
    /// of them, or counted and dropped when none did.
    pub fn receipt(&mut self, to: &Arc<str>, r: ReceiptRecord) {
        let found = self
            .routes
            .iter()
            .find(|(_, r)| matches!(&r.takes, Takes::Receipts(n) if n == to));
        let Some((route, _)) = found else {
            self.counts.receipts_dropped += 1;
            return;
        };
        if self.routes[route].backlog.len() >= RECEIPTS_BACKLOG_MAX {
            self.counts.receipts_dropped += 1;
            return;
        }
        self.counts.receipts += 1;
        let key = self.next_key;
        self.next_key += 1;
        self.pending.insert(
            key,
            Pending {
                item: Item::Receipt(Arc::new(r)),
                copies: 1,
                answer: None,
                done: None,
            },
        );
        self.routes[route].backlog.push_back((key, false));
        self.pump(route);
    }

    /// The fallback's answer for a message or copy no backend will take,
    /// counted.
    fn fallback_answer(&mut self, why: &str) -> Produced {
        match self.fallback {
            UpstreamFallback::Refuse => {
                self.counts.refused += 1;
                Produced::Failed(OutboundError::Refused(why.into()))
            }
            UpstreamFallback::Accept => {
                self.counts.unrouted += 1;
                Produced::Done
            }
        }
    }

    /// Gives `client`'s answers that are known, oldest first, up to the
    /// first one that is not.
    fn release(&mut self, client: &Arc<str>) {
        let Some(queue) = self.order.get_mut(client) else {
            return;
        };
        while let Some(&key) = queue.front() {
            let Some(p) = self.pending.get_mut(&key) else {
                queue.pop_front();
                continue;
            };
            let Some(answer) = p.answer.clone() else {
                break;
            };
            queue.pop_front();
            if let Some(done) = p.done.take() {
                done(answer);
            }
            if p.copies == 0 {
                self.pending.remove(&key);
            }
        }
        if queue.is_empty() {
            self.order.remove(client);
        }
    }

    /// A new stream taking `takes`, with `window`.
    pub fn attach(&mut self, id: StreamId, takes: Takes, window: usize, sink: Sink) {
        // A stream without a group is a route of its own.
        let shared = !matches!(takes, Takes::Messages { group: None, .. });
        let found = self.routes.iter().find(|(_, r)| shared && r.takes == takes);
        let route = match found {
            Some((i, _)) => i,
            None => self.routes.insert(Route {
                takes,
                members: Vec::new(),
                next: 0,
                backlog: VecDeque::new(),
            }),
        };
        self.routes[route].members.push(id);
        self.streams.insert(
            id,
            Stream {
                route,
                window: window.max(1),
                sink,
                next_seq: 1,
                unacked: HashMap::new(),
            },
        );
        self.pump(route);
    }

    /// A stream acknowledged `seqs`; unknown ones are ignored (a stream
    /// may ack twice, or a seq it never had).
    pub fn ack(&mut self, id: StreamId, seqs: &[u64]) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let route = s.route;
        let mut keys = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some((key, _)) = s.unacked.remove(seq) {
                keys.push(key);
            }
        }
        self.counts.acked += keys.len() as u64;
        for key in keys {
            self.copy_done(key, Produced::Done);
        }
        self.pump(route);
    }

    /// One copy of `key` ended: acknowledged, or answered by the fallback.
    fn copy_done(&mut self, key: u64, outcome: Produced) {
        let Some(p) = self.pending.get_mut(&key) else {
            return;
        };
        p.copies -= 1;
        if outcome != Produced::Done && p.answer.is_none() {
            p.answer = Some(outcome);
        } else if p.copies == 0 && p.answer.is_none() {
            p.answer = Some(Produced::Done);
        }
        if p.done.is_some() {
            let client = publisher(&p.item);
            self.release(&client);
        } else if p.copies == 0 {
            self.pending.remove(&key);
        }
    }

    /// A stream ended: its unacknowledged copies go back to its route,
    /// first in line; a route left without members answers its backlog
    /// by the fallback.
    pub fn detach(&mut self, id: StreamId) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        let route = s.route;
        let mut back: Vec<(u64, u64)> = s
            .unacked
            .into_iter()
            .map(|(seq, (k, _))| (seq, k))
            .collect();
        // Oldest first, so publish order holds within the route.
        back.sort_unstable();
        let r = &mut self.routes[route];
        r.members.retain(|m| *m != id);
        for (_, key) in back.into_iter().rev() {
            r.backlog.push_front((key, true));
        }
        if !r.members.is_empty() {
            return self.pump(route);
        }
        let r = self.routes.remove(route);
        for (key, _) in r.backlog {
            if matches!(r.takes, Takes::Receipts(_)) {
                self.counts.receipts_dropped += 1;
                self.pending.remove(&key);
                continue;
            }
            let outcome = self.fallback_answer(
                "the backend's Upstream stream ended before it acknowledged the message",
            );
            self.copy_done(key, outcome);
        }
    }

    /// Streams whose oldest unacknowledged copy was sent before `before`.
    pub fn overdue(&self, before: Instant) -> Vec<StreamId> {
        self.streams
            .iter()
            .filter(|(_, s)| s.unacked.values().any(|(_, at)| *at < before))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Sends what `route`'s backlog holds to members with room, round
    /// robin.
    fn pump(&mut self, route: usize) {
        let now = Instant::now();
        loop {
            let r = &mut self.routes[route];
            let Some(&(key, redelivered)) = r.backlog.front() else {
                return;
            };
            let n = r.members.len();
            let Some(member) = (0..n).map(|i| r.members[(r.next + i) % n]).find(|m| {
                self.streams
                    .get(m)
                    .is_some_and(|s| s.unacked.len() < s.window)
            }) else {
                return;
            };
            r.next = (r.members.iter().position(|m| *m == member).unwrap_or(0) + 1) % n;
            r.backlog.pop_front();
            let Some(p) = self.pending.get(&key) else {
                continue;
            };
            let item = p.item.clone();
            let Some(s) = self.streams.get_mut(&member) else {
                continue;
            };
            let seq = s.next_seq;
            s.next_seq += 1;
            s.unacked.insert(seq, (key, now));
            self.counts.sent += 1;
            if redelivered {
                self.counts.redelivered += 1;
            }
            // A closed sink is a stream whose end the hub hears of next
            // (the gRPC side detaches it); the copy comes back then.
            let _ = s.sink.send(Handed {
                seq,
                item,
                redelivered,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Message, Publication};
    use std::sync::Mutex;

    fn out(topic: &str) -> Outgoing {
        let p = Publication {
            topic: topic.into(),
            payload: bytes::Bytes::new(),
            qos: crate::codec::QoS::AtLeastOnce,
            retain: false,
            properties: None,
            origin: None,
        };
        Outgoing {
            msg: Arc::new(Message::new(1, p, Instant::now())),
            client_id: Some("dev".into()),
            username: None,
        }
    }

    type Answers = Arc<Mutex<Vec<Produced>>>;

    fn done(a: &Answers) -> Done {
        let a = a.clone();
        Box::new(move |p| a.lock().unwrap().push(p))
    }

    fn stream(
        hub: &mut Hub,
        id: StreamId,
        filter: &str,
        group: Option<&str>,
        window: usize,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Handed> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let takes = Takes::Messages {
            filter: filter.into(),
            group: group.map(Into::into),
        };
        hub.attach(id, takes, window, tx);
        rx
    }

    fn seqs(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Handed>) -> Vec<u64> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|h| h.seq)
            .collect()
    }

    #[test]
    fn a_group_splits_and_the_publisher_waits_for_the_ack() {
        let mut hub = Hub::new(UpstreamAck::Backend, UpstreamFallback::Refuse);
        let mut a = stream(&mut hub, 1, "up/#", Some("g"), 10);
        let mut b = stream(&mut hub, 2, "up/#", Some("g"), 10);
        let answers = Answers::default();
        for _ in 0..4 {
            hub.send(out("up/x"), done(&answers));
        }
        let (sa, sb) = (seqs(&mut a), seqs(&mut b));
        assert_eq!((sa.len(), sb.len()), (2, 2), "round robin within the group");
        assert!(
            answers.lock().unwrap().is_empty(),
            "no answer before the acks"
        );
        hub.ack(1, &sa);
        hub.ack(2, &sb);
        assert_eq!(*answers.lock().unwrap(), vec![Produced::Done; 4]);
        assert_eq!(hub.unacked(), 0);
    }

    #[test]
    fn two_routes_each_get_a_copy_and_both_must_ack() {
        let mut hub = Hub::new(UpstreamAck::Backend, UpstreamFallback::Refuse);
        let mut a = stream(&mut hub, 1, "up/#", Some("g"), 10);
        let mut b = stream(&mut hub, 2, "up/+", None, 10);
        let answers = Answers::default();
        hub.send(out("up/x"), done(&answers));
        hub.ack(1, &seqs(&mut a));
        assert!(answers.lock().unwrap().is_empty());
        hub.ack(2, &seqs(&mut b));
        assert_eq!(*answers.lock().unwrap(), vec![Produced::Done]);
    }

    #[test]
    fn a_stream_that_ends_hands_its_copies_to_the_rest_of_its_group() {
        let mut hub = Hub::new(UpstreamAck::Backend, UpstreamFallback::Refuse);
        let mut a = stream(&mut hub, 1, "up/#", Some("g"), 10);
        let mut b = stream(&mut hub, 2, "up/#", Some("g"), 10);
        let answers = Answers::default();
        for _ in 0..4 {
            hub.send(out("up/x"), done(&answers));
        }
        seqs(&mut a);
        let sb = seqs(&mut b);
        hub.detach(1);
        let again: Vec<Handed> = std::iter::from_fn(|| b.try_recv().ok()).collect();
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|h| h.redelivered));
        hub.ack(2, &sb);
        hub.ack(2, &again.iter().map(|h| h.seq).collect::<Vec<_>>());
        assert_eq!(*answers.lock().unwrap(), vec![Produced::Done; 4]);
        assert_eq!(hub.counts.redelivered, 2);
    }

    #[test]
    fn the_window_holds_copies_back_in_order() {
        let mut hub = Hub::new(UpstreamAck::Backend, UpstreamFallback::Refuse);
        let mut a = stream(&mut hub, 1, "up/#", None, 2);
        let answers = Answers::default();
        for _ in 0..5 {
            hub.send(out("up/x"), done(&answers));
        }
        assert_eq!(seqs(&mut a), vec![1, 2]);
        assert_eq!(hub.backlog(), 3);
        hub.ack(1, &[1]);
        assert_eq!(seqs(&mut a), vec![3]);
        hub.ack(1, &[2, 3, 99]);
        assert_eq!(seqs(&mut a), vec![4, 5]);
    }

    #[test]
    fn without_a_backend_the_fallback_answers() {
        let mut hub = Hub::new(UpstreamAck::Backend, UpstreamFallback::Refuse);
        let answers = Answers::default();
        hub.send(out("up/x"), done(&answers));
        assert!(matches!(answers.lock().unwrap()[0], Produced::Failed(_)));
        let mut hub = Hub::new(UpstreamAck::Backend, UpstreamFallback::Accept);
        let mut a = stream(&mut hub, 1, "up/#", None, 2);
        hub.send(out("up/x"), done(&answers));
        seqs(&mut a);
        hub.detach(1);
        assert_eq!(answers.lock().unwrap()[1], Produced::Done);
        assert_eq!(hub.counts.unrouted, 1);
        assert!(
            hub.filters().is_empty(),
            "the route left with its last member"
        );
    }

    #[test]
    fn a_publisher_is_answered_in_publish_order() {
        let mut hub = Hub::new(UpstreamAck::Backend, UpstreamFallback::Refuse);
        let mut a = stream(&mut hub, 1, "up/#", Some("g"), 10);
        let mut b = stream(&mut hub, 2, "up/#", Some("g"), 10);
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..2 {
            let order = order.clone();
            hub.send(
                out("up/x"),
                Box::new(move |_| order.lock().unwrap().push(i)),
            );
        }
        hub.ack(2, &seqs(&mut b));
        assert!(
            order.lock().unwrap().is_empty(),
            "the second waits for the first"
        );
        hub.ack(1, &seqs(&mut a));
        assert_eq!(*order.lock().unwrap(), vec![0, 1]);
    }

    #[test]
    fn at_once_answers_before_the_backend_acks() {
        let mut hub = Hub::new(UpstreamAck::AtOnce, UpstreamFallback::Refuse);
        let mut a = stream(&mut hub, 1, "up/#", None, 2);
        let answers = Answers::default();
        hub.send(out("up/x"), done(&answers));
        assert_eq!(*answers.lock().unwrap(), vec![Produced::Done]);
        hub.ack(1, &seqs(&mut a));
        assert_eq!(answers.lock().unwrap().len(), 1, "answered once");
    }

    fn receipt(id: u64) -> ReceiptRecord {
        ReceiptRecord {
            id,
            client_id: "phone".into(),
            username: None,
            node: 1,
            topic: "up/x".into(),
            outcome: "acked".into(),
            limit: None,
            published_ms: 1,
            at_ms: 2,
        }
    }

    #[test]
    fn receipts_go_to_one_stream_of_their_name_and_come_back_if_it_ends() {
        let mut hub = Hub::new(UpstreamAck::Backend, UpstreamFallback::Refuse);
        let name: Arc<str> = "billing".into();
        hub.receipt(&name, receipt(1));
        assert_eq!(
            hub.counts.receipts_dropped, 1,
            "no stream took the name yet"
        );
        let (ta, mut a) = tokio::sync::mpsc::unbounded_channel();
        let (tb, mut b) = tokio::sync::mpsc::unbounded_channel();
        hub.attach(1, Takes::Receipts(name.clone()), 10, ta);
        hub.attach(2, Takes::Receipts(name.clone()), 10, tb);
        assert!(hub.filters().is_empty(), "a receipts stream holds no topic");
        hub.receipt(&name, receipt(2));
        hub.receipt(&name, receipt(3));
        let got: Vec<Handed> = std::iter::from_fn(|| a.try_recv().ok()).collect();
        assert_eq!(got.len(), 1, "one each, round robin");
        assert!(matches!(&got[0].item, Item::Receipt(r) if r.id == 2));
        hub.detach(2);
        let again: Vec<Handed> = std::iter::from_fn(|| a.try_recv().ok()).collect();
        assert!(
            matches!(&again[..], [h] if h.redelivered && matches!(&h.item, Item::Receipt(r) if r.id == 3))
        );
        hub.ack(1, &[got[0].seq, again[0].seq]);
        assert_eq!((hub.unacked(), hub.counts.receipts), (0, 2));
        assert!(b.try_recv().is_ok(), "the ended stream had been sent one");
        hub.receipt(&name, receipt(4));
        hub.detach(1);
        assert_eq!(
            hub.counts.receipts_dropped, 2,
            "its last stream ended without an ack"
        );
    }

    #[test]
    fn a_receipts_backlog_past_its_bound_drops_and_counts() {
        let mut hub = Hub::new(UpstreamAck::Backend, UpstreamFallback::Refuse);
        let name: Arc<str> = "slow".into();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        hub.attach(1, Takes::Receipts(name.clone()), 1, tx);
        for id in 0..(RECEIPTS_BACKLOG_MAX as u64 + 3) {
            hub.receipt(&name, receipt(id));
        }
        // One sent (the window), the bound waiting, two dropped.
        assert_eq!(hub.backlog(), RECEIPTS_BACKLOG_MAX);
        assert_eq!(hub.counts.receipts_dropped, 2);
        let first = rx.try_recv().unwrap();
        hub.ack(1, &[first.seq]);
        assert!(matches!(rx.try_recv().unwrap().item, Item::Receipt(r) if r.id == 1));
    }
}
