//! What the connection task asks of its entry. The task owns the socket
//! and its transport layers; everything about the session (whether it may
//! read, what to write, when to close) is answered here, so the task never
//! looks at phases or session state itself.

use std::task::Waker;
use std::time::Instant;

use tracing::warn;

use super::{CloseRequest, Core};
use crate::id::ConnKey;
use crate::session::Frame;
use crate::stats::bump;
use crate::store::StoreOp;

/// What the connection task needs to know at the top of each poll.
#[derive(Debug)]
pub struct LinkPoll {
    /// Do not read: the connection waits for a verdict, a handover or a
    /// permit, and the core wakes it when that arrives.
    pub parked: bool,
    /// The core wants the connection closed.
    pub close: Option<CloseRequest>,
}

impl Core {
    /// Registers `waker` for the connection `key` and reports its state;
    /// `None` when the connection is gone (the task ends).
    #[inline]
    pub fn poll_link(&self, key: ConnKey, waker: &Waker) -> Option<LinkPoll> {
        let mut st = self.st.borrow_mut();
        let e = st.entry(key)?;
        let phase_parks = e.phase.parks_reading();
        let link = e.link.as_mut()?;
        link.waker = Some(waker.clone());
        Some(LinkPoll {
            parked: phase_parks || link.is_parked(),
            close: link.close.as_deref().cloned(),
        })
    }

    /// Whether the connection's outbox is over `session.max_outbox_bytes`:
    /// a client that does not read stops being read.
    #[inline]
    pub fn outbox_full(&self, key: ConnKey) -> bool {
        let limit = self.cfg.session.max_outbox_bytes;
        let mut st = self.st.borrow_mut();
        st.link(key)
            .is_some_and(|l| l.outbox_bytes as usize >= limit)
    }

    /// Bytes arrived on the connection: it is alive (keep-alive).
    #[inline]
    pub fn touch(&self, key: ConnKey) {
        let now = self.now_tick();
        if let Some(link) = self.st.borrow_mut().link(key) {
            link.last_seen = now;
        }
    }

    /// Asks the connection to close after flushing what is queued (a
    /// transport-level end: WebSocket close, TLS failure).
    pub fn close_link(&self, key: ConnKey) {
        if let Some(link) = self.st.borrow_mut().link(key) {
            link.request_close(None, false);
        }
    }

    /// Encodes outbox frames into `out` until it holds `limit` bytes or the
    /// outbox is empty; counts packets and observes fan-out latency.
    #[inline]
    pub fn write_frames(&self, key: ConnKey, out: &mut Vec<u8>, limit: usize) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let Some(e) = super::entry_in(&mut st.conns, key) else {
            return;
        };
        let durable = e.session.durable.as_deref();
        let stats = self.stats();
        let Some(link) = e.link.as_mut() else {
            return;
        };
        // A durable session is served only while the node's lease holds in
        // the term it was claimed in: once it lapsed, another node may own
        // it. So is a connection counted against its user's limit: other
        // nodes may admit the user's next connections in its place. Nothing
        // more is written but a DISCONNECT (no delivery, no
        // acknowledgement); the connection closes, and its client connects
        // again.
        let session_lapsed = durable.is_some_and(|d| !self.holds(d));
        let count_lapsed = link.counted_in().is_some_and(|t| !self.holds_term(t));
        let lapsed = session_lapsed || count_lapsed;
        if lapsed {
            match link.close.as_mut() {
                Some(close) => close.discard_outbox = true,
                None => {
                    bump(&stats.lease_closes, 1);
                    let what = if session_lapsed {
                        "a persistent session, which another node may own by now"
                    } else {
                        "a connection counted against its user's limit, which other nodes may fill by now"
                    };
                    warn!(
                        core = self.id,
                        client_id = %e.client_id.as_deref().unwrap_or(""),
                        "the node's Redis lease lapsed: closing the connection of {what}"
                    );
                    link.request_close_why(
                        Some(crate::codec::reason::SERVER_UNAVAILABLE),
                        true,
                        Some("this node lost its lease on the session store; connect again"),
                    );
                }
            }
        }
        let v = link.version;
        let latency = &self.visible().fanout_latency;
        // One clock read per batch, not per message.
        let mut now = None;
        let mut packets = 0;
        let mut publishes = 0;
        while out.len() < limit {
            let Some(frame) = link.outbox.pop_front() else {
                break;
            };
            link.outbox_bytes -= frame.weight() as u32;
            if lapsed && !frame.is_disconnect() {
                continue;
            }
            packets += 1;
            if let Frame::Publish { d, dup, pkid } = &frame {
                publishes += 1;
                // A mirrored message goes in flight: its packet id is
                // stored, so a resume elsewhere resends it with the same.
                if let Some(dur) = durable.filter(|_| d.seq > 0 && !dup) {
                    if st.journal.is_empty() {
                        self.journal_ready.notify();
                    }
                    st.journal.push(StoreOp::Sent {
                        session: super::durable::session_ref(dur),
                        seq: d.seq,
                        pkid: *pkid,
                        released: false,
                    });
                }
                // Live first sends only: a retained replay or a resend is
                // old by design, not slow.
                if !d.retain && !dup {
                    let now = *now.get_or_insert_with(Instant::now);
                    latency.observe(now.saturating_duration_since(d.msg.born).as_micros() as u64);
                }
            }
            frame.encode(v, out, link.out_aliases.as_deref_mut());
        }
        // A drained outbox gives its buffer back (four frames, 224 B), and
        // so do the session's drained queues: a connection spends most of
        // its life idle, and the buffer its CONNACK left behind was the
        // largest part of an idle connection (bench/RESULTS.md). A busy
        // connection pays one allocation per batch for it.
        link.outbox.release();
        e.session.settle();
        bump(&stats.packets_out, packets);
        bump(&stats.publishes_out, publishes);
    }
}
