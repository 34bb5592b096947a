//! Where a message's records go: its route, the nodes whose interest the
//! cluster view holds, copies handed on for sessions that left, and the
//! client messages held until that view is whole.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use super::reports::Answer;
use super::{Ctx, Job, Rec};
use crate::adapters::kafka::cluster::{self, ClusterView};
use crate::adapters::kafka::HandTo;
use crate::bridge::outbound::{InterestChange, OutboundError, Outgoing, Produced};
use crate::bridge::ReplyTo;
use crate::codec::QoS;

/// The cluster bus as the thread sees it.
pub(crate) struct Cluster {
    /// `kafka.cluster.node_topic`, to render per node.
    pub config: crate::config::ClusterConfig,
    /// This node's id.
    pub me: u16,
    /// This process's incarnation (start time, ms): its hello.
    pub incarnation: u64,
    /// Who subscribed to what, cluster-wide.
    pub view: ClusterView,
    /// The interest topic was read to its end once (`Job::Loaded`): the
    /// view is whole. Until then a client message is held, not routed:
    /// routed by a partial view, it would reach none of the nodes not
    /// read yet, and its publisher would be acknowledged all the same (a
    /// node that just started).
    pub loaded: bool,
    /// Client messages that came before the view was whole, in order,
    /// with when they came.
    pub held: VecDeque<(Outgoing, ReplyTo<Produced>, Instant)>,
    /// The node's hello is out (it waits for the adoption of the earlier
    /// life's sessions: `say_hello`).
    pub greeted: bool,
    /// Interest changes that came before the hello, in order: announced
    /// after it.
    pub unannounced: VecDeque<InterestChange>,
    /// The view's size, for `/metrics` (written here only).
    pub figures: Arc<ClusterFigures>,
}

/// The cluster view's size and what was routed by it.
#[derive(Default)]
pub(crate) struct ClusterFigures {
    /// Nodes that are up (this one included).
    pub nodes: AtomicUsize,
    /// Interest announcements held.
    pub entries: AtomicUsize,
    /// Copies of client messages produced to other nodes.
    pub forwarded: AtomicU64,
    /// Client messages no other node wanted (not produced).
    pub local_only: AtomicU64,
    /// Client messages handed on for a persistent session that had just
    /// left this node, one per session.
    pub handed_on: AtomicU64,
}

/// The records of one message: its route's (`routed`: a client's message,
/// when a route matches) and, with the cluster bus, one per other node
/// with interest, and the copies handed on for persistent sessions that
/// just left this node ([`departed`]). None: nothing leaves, and the
/// publisher is answered at once.
pub(super) fn plan(ctx: &mut Ctx, out: Outgoing, routed: bool) -> Vec<Rec> {
    let mut recs = Vec::new();
    if let Some(c) = &mut ctx.cluster {
        if !out.msg.topic.starts_with('$') {
            let targets = c.view.targets(&out.msg.topic, out.msg.retain);
            if targets.is_empty() {
                c.figures.local_only.fetch_add(1, Relaxed);
            }
            for (node, shares) in targets {
                c.figures.forwarded.fetch_add(1, Relaxed);
                recs.push(Rec::Node {
                    out: out.clone(),
                    node,
                    shares,
                    to: None,
                });
            }
        }
    }
    if routed {
        departed(ctx, &out, &mut recs);
    }
    if routed && ctx.routes.find(&out.msg.topic).is_some() {
        recs.push(Rec::Route(out));
    }
    recs
}

/// A client message published here after a persistent session it
/// matches left this node (a takeover elsewhere, a fenced write): the
/// cores delivered it to nobody for that session, and the other nodes
/// route by a view that may not know the session's new node yet (until
/// they read its announcement). So it is handed on for that session, as
/// a copy consumed from the inbox would be (`Job::HandOn`), within
/// [`crate::session::HAND_ON_MARGIN_MS`] of the departure. A
/// view that already knew the new node makes this a duplicate (at least
/// once).
fn departed(ctx: &Ctx, out: &Outgoing, recs: &mut Vec<Rec>) {
    let (Some(c), Some(d)) = (&ctx.cluster, &ctx.departures) else {
        return;
    };
    if out.msg.qos == QoS::AtMostOnce || out.msg.topic.starts_with('$') {
        return;
    }
    for claimant in d.claimants(&out.msg.topic, crate::wallclock::now_ms(), None) {
        c.figures.handed_on.fetch_add(1, Relaxed);
        let to = HandTo::Session(claimant.client_id);
        watch(ctx, out, &to, claimant.watch);
        recs.extend(hand_on(ctx, out.clone(), to));
    }
}

/// A copy handed on for a session that went to `node`, which this node
/// had not yet seen interested in it: if the view shows it now, the
/// departure learns so (`Departures::seen`), and copies sent more than a
/// margin later are no longer handed on (the publishers route them there).
pub(super) fn watch(ctx: &Ctx, out: &Outgoing, to: &HandTo, node: Option<u16>) {
    let (Some(node), Some(c), Some(d), HandTo::Session(client_id)) =
        (node, &ctx.cluster, &ctx.departures, to)
    else {
        return;
    };
    if c.view.interested(node, &out.msg.topic) {
        tracing::debug!(%client_id, node, "the node a departed session went to is seen interested in its copies");
        d.seen(client_id, crate::wallclock::now_ms());
    }
}

/// The next client message held for the view, once the view is whole.
/// Interest changes held for the hello come first, once it is out.
pub(super) fn release_held(ctx: &mut Ctx) -> Option<Job> {
    let c = ctx.cluster.as_mut()?;
    if c.greeted {
        if let Some(change) = c.unannounced.pop_front() {
            return Some(Job::Interest(change));
        }
    }
    if !c.loaded {
        return None;
    }
    let (out, ack, _) = c.held.pop_front()?;
    Some(Job::Send { out, ack })
}

/// Fails the client messages held for the view longer than the delivery
/// timeout (the interest topic cannot be read): their publishers are told,
/// as for a message Kafka did not take in time.
pub(super) fn expire_held(ctx: &mut Ctx) {
    let timeout = ctx.delivery_timeout;
    let Some(c) = ctx.cluster.as_mut() else {
        return;
    };
    while c
        .held
        .front()
        .is_some_and(|(_, _, at)| at.elapsed() >= timeout)
    {
        if let Some((_, ack, _)) = c.held.pop_front() {
            ctx.metrics.timed_out.fetch_add(1, Relaxed);
            ack.send(Produced::Failed(OutboundError::TimedOut));
        }
    }
}

/// The records of a copy handed on (`Job::HandOn`): one per node up.
pub(super) fn hand_on(ctx: &Ctx, out: Outgoing, to: HandTo) -> Vec<Rec> {
    let Some(c) = &ctx.cluster else {
        return Vec::new();
    };
    c.view
        .all_nodes()
        .map(|node| Rec::Node {
            out: out.clone(),
            node,
            shares: Vec::new(),
            to: Some(to.clone()),
        })
        .collect()
}

/// A core's interest change, as a record of the interest topic.
pub(super) fn announce(ctx: &Ctx, change: InterestChange) -> (Vec<Rec>, Answer) {
    let ack = match change.confirm {
        Some(c) => Answer::Confirm(c),
        None => Answer::Nobody,
    };
    let Some(c) = &ctx.cluster else {
        return (Vec::new(), ack);
    };
    tracing::debug!(core = change.core, filter = %change.filter, on = change.on, "announcing interest");
    let rec = Rec::Registry {
        key: cluster::interest_key(c.me, change.core, &change.filter),
        value: change.on.then(|| "1".to_string()),
    };
    (vec![rec], ack)
}
