//! A node without sockets or executors, for tests: its cores built by
//! hand on a manual clock, the mesh pumped by the test, and the seams'
//! answers handed back when the test says, so every interleaving is
//! chosen, not hoped for. `shard/tests.rs` drives the takeover state
//! machine on it; `mqtt/tests.rs` feeds it packets through `mqtt::receive`.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::takeover;
use super::*;
use crate::auth::{AllowAll, AuthChain, DenyLists};
use crate::bridge::outbound::{NoOutbound, Outbound};
use crate::bridge::{Bell, ReplyTo};
use crate::codec::{Packet, QoS, SubOptions, Version};
use crate::id::Location;
use crate::session::{Frame, Publication};
use crate::store::{Claim, ClaimResult, MemoryStore, SessionStore};

/// A store that answers every claim later, through the test (the directory
/// answers; the test says when).
#[derive(Default)]
pub(crate) struct Deferred {
    pub directory: MemoryStore,
    pub asked: Mutex<Vec<(Claim, ReplyTo<ClaimResult>)>>,
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
    pub(crate) fn answer_next(&self) {
        let (claim, reply) = self.asked.lock().unwrap().remove(0);
        let result = self.directory.claim(&claim).expect("memory answers");
        reply.send(result);
    }
}

/// The cores of one node, and where their seams' answers arrive.
pub(crate) struct Node {
    pub cores: Vec<Core>,
    pub replies: Vec<ReplyReceivers>,
    _bells: Vec<StdUnixStream>,
}

/// A node of `cores` cores on the default configuration.
pub(crate) fn node(cores: usize, store: Arc<dyn SessionStore>) -> Node {
    node_with(Config::default(), cores, store, Arc::new(NoOutbound))
}

/// A node of `cores` cores on `cfg`, with `outbound` as its outbound seam.
pub(crate) fn node_with(
    cfg: Config,
    cores: usize,
    store: Arc<dyn SessionStore>,
    outbound: Arc<dyn Outbound>,
) -> Node {
    let cfg = Arc::new(cfg);
    let state = Arc::new(NodeState {
        node_id: 1,
        cores: (0..cores).map(|_| CoreVisible::default()).collect(),
        store,
        auth: Arc::new(AuthChain::single(Arc::new(AllowAll), false)),
        authz: Arc::new(DenyLists::default()),
        outbound,
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
    pub(crate) fn pump(&self) {
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
    pub(crate) fn answers(&self) -> Vec<Result<(), takeover::ClaimRefused>> {
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

    /// Hands every outbound answer back to its core (what the inbox task
    /// does).
    pub(crate) fn produced(&self) {
        for (core, replies) in self.cores.iter().zip(&self.replies) {
            while let Ok((token, produced)) = replies.produced.try_recv() {
                core.on_produced(token, produced);
            }
        }
    }

    /// A new MQTT 5 connection on `core` claiming `client_id`.
    pub(crate) fn connect(&self, core: usize, client_id: &str, clean: bool) -> ConnKey {
        let c = &self.cores[core];
        let (key, _) = c.register("127.0.0.1:1".parse().unwrap(), 0);
        let mut st = c.st.borrow_mut();
        st.link(key).unwrap().version = Version::V5;
        let info = ConnectInfo::bare(clean, 300);
        c.claim(&mut st, key, client_id.into(), info)
            .expect("claimed");
        key
    }

    pub(crate) fn subscribe(&self, core: usize, key: ConnKey, filter: &str) {
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

    pub(crate) fn publish(&self, core: usize, topic: &str, payload: &'static [u8]) {
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
    pub(crate) fn frames(&self, core: usize, key: ConnKey) -> Vec<Frame> {
        let mut st = self.cores[core].st.borrow_mut();
        let Some(link) = st.link(key) else {
            return Vec::new();
        };
        link.outbox_bytes = 0;
        link.outbox.drain(..).collect()
    }

    pub(crate) fn phase<T>(
        &self,
        core: usize,
        key: ConnKey,
        f: impl FnOnce(Option<&Phase>) -> T,
    ) -> T {
        let mut st = self.cores[core].st.borrow_mut();
        f(st.entry(key).map(|e| &e.phase))
    }

    pub(crate) fn close_reason(&self, core: usize, key: ConnKey) -> Option<Option<u8>> {
        let mut st = self.cores[core].st.borrow_mut();
        st.link(key)
            .and_then(|l| l.close.as_ref().map(|c| c.reason))
    }
}

pub(crate) fn connack(frames: &[Frame]) -> Option<bool> {
    frames.iter().find_map(|f| match f {
        Frame::Control(p) => match &**p {
            Packet::ConnAck(a) => Some(a.session_present),
            _ => None,
        },
        _ => None,
    })
}

pub(crate) fn payloads(frames: &[Frame]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Publish { d, .. } => Some(d.msg.payload.to_vec()),
            _ => None,
        })
        .collect()
}
