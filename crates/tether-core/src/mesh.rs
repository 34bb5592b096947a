//! Messages between cores, and the policy of the channels that carry them.
//!
//! Cores are connected by a full mesh of bounded glommio SPSC channels
//! (`runtime.mesh_channel_capacity` batches each). A core never writes to
//! a channel from its message path: it appends to its outgoing queue for
//! that peer ([`Routes`]) and one router task per peer drains the queue
//! into the channel. Consecutive publishes share one [`CoreMsg::Publish`]
//! batch (up to `runtime.route_batch_max`).
//!
//! When a channel is full the router task waits and the messages stay in
//! the queue. Once the queues hold `runtime.router_backlog_limit` messages,
//! the core's connections stop reading until they drain below it: TCP
//! pushes back on publishers, and nothing is dropped. Receivers never
//! block (delivery only appends to outboxes and queues), so the mesh
//! cannot deadlock. Every channel is FIFO, which several protocols rely on
//! (handover before forwards, leave before returns, a retained topic's
//! updates in one order).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;

use crate::codec::SubOptions;
use crate::id::{ConnKey, GroupKey, Location};
use crate::notify::Notify;
use crate::session::{Delivery, Message, Session};

/// Messages between cores (over the bounded glommio channel mesh). A
/// closed set: every cross-core protocol is one of these.
#[derive(Debug)]
pub enum CoreMsg {
    /// Messages published on the sending core that may match here.
    Publish(Vec<Arc<Message>>),
    /// A newer connection claimed `client_id`; hand its session over.
    Takeover {
        /// The entry holding the session now.
        target: ConnKey,
        /// The client id, checked against the entry's.
        client_id: Arc<str>,
        /// The new connection.
        requester: Location,
    },
    /// The session (if any) of the client `target` is taking over.
    Handover {
        /// The new connection's entry.
        target: ConnKey,
        /// The session; `None` when there was none to hand over.
        session: Option<Box<Session>>,
    },
    /// A retained message for the topic's owner core to sequence.
    RetainSet(Arc<Message>),
    /// A sequenced retained update for this core's replica.
    RetainApply(Arc<Message>),
    /// A member joins a shared subscription group owned by this core.
    ShareJoin {
        /// The group.
        key: GroupKey,
        /// The member's session.
        loc: Location,
        /// Its subscription options.
        opts: SubOptions,
        /// Its subscription identifier (0: none).
        id: u32,
        /// Its SUBACK waits for a new group to be announced to the cluster.
        confirm: Option<Arc<crate::session::Confirm>>,
    },
    /// A member leaves a group owned by this core.
    ShareLeave {
        /// The group.
        key: GroupKey,
        /// The member leaving.
        loc: Location,
    },
    /// A shared-subscription message for the member `target` on this core.
    ShareDeliver {
        /// The member.
        target: ConnKey,
        /// The message, tagged with its group.
        d: Delivery,
        /// How often it bounced already (see `MAX_SHARE_ATTEMPTS`).
        attempts: u8,
    },
    /// A shared-subscription message a member could not take; pick another.
    ShareReturn {
        /// The message, tagged with its group.
        d: Delivery,
        /// How often it bounced already.
        attempts: u8,
    },
    /// A message that matched a session's tombstone on the sending core;
    /// the session now lives at `target` on this core.
    Forward {
        /// The session's entry here.
        target: ConnKey,
        /// The message for it.
        d: Delivery,
    },
    /// The sending core's tombstone for the session now at `target` has
    /// ended; it travels behind the last `Forward`, so every forward has
    /// arrived and the messages held meanwhile can go out.
    ForwardEnd {
        /// The session's entry here.
        target: ConnKey,
    },
    /// An HTTP fallback connection whose request belongs to a session of
    /// this core (`net::fallback`): its socket, what was read from it so
    /// far, and its TLS session on the wss listener.
    Adopt(Box<Handoff>),
    /// The sending core caught up with the fan-out of messages this core
    /// routed to it (it had paused taking them, see
    /// `CoreVisible::lagging`): publishers that paused for it read on.
    CaughtUp,
    /// A connection of `user` opened (+1) or closed (-1) on the sending
    /// core; this core owns the user's count.
    UserCount {
        /// The user name.
        user: Arc<str>,
        /// +1 or -1.
        delta: i32,
    },
}

/// An HTTP fallback connection on its way to the core that owns its
/// session ([`CoreMsg::Adopt`]).
pub struct Handoff {
    /// The client's socket (non-blocking).
    pub stream: std::net::TcpStream,
    /// Plaintext read and not yet handled: the request, and whatever
    /// followed it.
    pub bytes: Vec<u8>,
    /// A connection on the wss listener keeps its TLS session: it moves
    /// with the socket.
    pub tls: Option<CarriedTls>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("stream", &self.stream)
            .field("bytes", &self.bytes.len())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A TLS session between cores: rustls's state and what the connection's
/// TLS layer (`net::tls::TlsSession`) held besides. Plain data here because
/// this layer sits below `net/`, which converts it back.
pub struct CarriedTls {
    /// rustls's connection (keys, sequence numbers).
    pub conn: rustls::server::UnbufferedServerConnection,
    /// A record that arrived in part.
    pub partial: Vec<u8>,
    /// Records rustls produced that are not written yet (e.g. session
    /// tickets sent after the handshake).
    pub pending: Vec<u8>,
    /// `tls.cn_as_username` as the listener had it.
    pub cn_as_username: bool,
}

impl CoreMsg {
    /// Messages it carries, for the router backlog.
    pub fn messages(&self) -> usize {
        match self {
            CoreMsg::Publish(v) => v.len(),
            _ => 0,
        }
    }

    /// Bytes of the messages it carries (`Message::weight`), for the
    /// router backlog's byte bound.
    pub fn bytes(&self) -> usize {
        match self {
            CoreMsg::Publish(v) => v.iter().map(|m| m.weight()).sum(),
            _ => 0,
        }
    }
}

/// Outgoing queue towards one peer core, drained by its router task.
#[derive(Default)]
struct Route {
    queue: RefCell<VecDeque<CoreMsg>>,
    /// Wakes the router task.
    notify: Notify,
}

/// One core's outgoing queues, one per peer (its own slot unused).
pub struct Routes {
    routes: Vec<Route>,
    /// Messages queued and not yet accepted by a channel.
    backlog: Cell<usize>,
    /// Their bytes (`Message::weight`).
    backlog_bytes: Cell<usize>,
    batch_max: usize,
    backlog_limit: usize,
}

impl Routes {
    /// Queues towards `cores` cores, batching up to `batch_max` messages
    /// and pausing readers at `backlog_limit`.
    pub fn new(cores: usize, batch_max: usize, backlog_limit: usize) -> Routes {
        Routes {
            routes: (0..cores).map(|_| Route::default()).collect(),
            backlog: Cell::new(0),
            backlog_bytes: Cell::new(0),
            batch_max,
            backlog_limit,
        }
    }

    /// Number of cores (peers plus this one).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there is no core at all (never, once started).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Queues a published message for `core`, joining the batch at the back
    /// of the queue when there is one with room.
    pub fn publish(&self, core: usize, msg: Arc<Message>) {
        let route = &self.routes[core];
        let msg_weight = msg.weight();
        {
            let mut q = route.queue.borrow_mut();
            match q.back_mut() {
                Some(CoreMsg::Publish(batch)) if batch.len() < self.batch_max => batch.push(msg),
                _ => q.push_back(CoreMsg::Publish(vec![msg])),
            }
        }
        self.backlog.set(self.backlog.get() + 1);
        self.backlog_bytes
            .set(self.backlog_bytes.get() + msg_weight);
        route.notify.notify();
    }

    /// Queues any other message for `core`.
    pub fn send(&self, core: usize, msg: CoreMsg) {
        self.routes[core].queue.borrow_mut().push_back(msg);
        self.routes[core].notify.notify();
    }

    /// Next message for `core`'s channel (router task).
    pub fn next(&self, core: usize) -> Option<CoreMsg> {
        self.routes[core].queue.borrow_mut().pop_front()
    }

    /// Waits until something is queued for `core` (router task).
    pub async fn queued(&self, core: usize) {
        self.routes[core].notify.wait().await
    }

    /// A channel accepted `messages` of `bytes`; true when the backlog is
    /// now below the limit (paused readers may go on).
    pub fn accepted(&self, messages: usize, bytes: usize) -> bool {
        let left = self.backlog.get() - messages;
        self.backlog.set(left);
        self.backlog_bytes
            .set(self.backlog_bytes.get().saturating_sub(bytes));
        left < self.backlog_limit
    }

    /// Bytes queued and not yet accepted by a channel.
    pub fn queued_bytes(&self) -> usize {
        self.backlog_bytes.get()
    }

    /// Whether readers must pause for the routers to drain.
    pub fn over_limit(&self) -> bool {
        self.backlog.get() >= self.backlog_limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::session::Publication;

    fn msg(id: u64) -> Arc<Message> {
        let p = Publication {
            topic: "t".into(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            origin: None,
        };
        Arc::new(Message::new(id, p, std::time::Instant::now()))
    }

    #[test]
    fn publishes_batch_in_order_and_the_backlog_pauses_at_its_limit() {
        let r = Routes::new(2, 2, 3);
        for id in 1..=3 {
            r.publish(1, msg(id));
        }
        r.send(
            1,
            CoreMsg::ForwardEnd {
                target: ConnKey { index: 0, gen: 0 },
            },
        );
        r.publish(1, msg(4));
        assert!(r.over_limit(), "4 queued, limit 3");
        let ids = |m: &CoreMsg| match m {
            CoreMsg::Publish(b) => b.iter().map(|m| m.id).collect::<Vec<_>>(),
            _ => vec![],
        };
        let first = r.next(1).unwrap();
        assert_eq!(ids(&first), vec![1, 2], "a batch holds at most 2");
        assert!(
            r.accepted(first.messages(), first.bytes()),
            "2 left: below the limit of 3"
        );
        assert!(!r.over_limit());
        assert_eq!(ids(&r.next(1).unwrap()), vec![3]);
        assert!(matches!(r.next(1), Some(CoreMsg::ForwardEnd { .. })));
        assert_eq!(
            ids(&r.next(1).unwrap()),
            vec![4],
            "no batching across other messages"
        );
        assert!(r.next(1).is_none());
    }
}
