//! A restarted node's adoption of its earlier life's sessions, as the
//! bridges see it: a gate that holds the cluster bus back until the
//! sessions are installed again.
//!
//! A node killed with persistent sessions leaves them in the durable
//! store, named as its own. Copies for them keep reaching its inbox while
//! it is down (the other nodes go on routing by its announcements), and a
//! session whose client is still away when it is back was owned by
//! nobody: those copies, and the ones published while the node announced
//! nothing for it, reached no one (the fault harness's 30-minute soak: 396
//! messages for one subscriber whose node was killed while the only other
//! node it could reach was cut off). So the store finds the sessions its
//! earlier life owned and that no other node claimed since, and claims
//! them for this life; each comes back parked offline, as before the kill.
//!
//! Until that is done (or [`Adoption::begin`]'s deadline passes), the
//! cluster bus waits: the inbox is not read (a copy for an adopted session
//! must find it installed) and the node's hello is not sent (the other
//! nodes go on routing by the earlier life's announcements, which the
//! hello would void before the adopted sessions announce their filters
//! again). A node with nothing to adopt, or without a durable store,
//! never closes the gate.
//!
//! A session another node claimed while this one was down is not adopted
//! but recorded as a departure ([`super::departures`]): copies the other
//! nodes still route here by the earlier life's announcements are handed
//! on to it. Its new node may not have announced it yet (cut off from
//! Kafka when it claimed the session: the soak lost 3.6 s of a
//! subscriber's messages so, from the restarted node's hello to that
//! announcement), so the hello also waits until every such node is seen
//! announcing (`Departures::awaiting`), up to the same deadline.
//!
//! The store counts what it hands the cores with [`Ticket`]s: each
//! adoption's ticket goes with its claim and is dropped once the claim
//! was answered (or at once, if the core had no need of it), and the gate
//! opens when the last one is dropped after the store read every id.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Adoption {
    /// Set by [`Adoption::begin`], cleared when the adoption is over.
    closed: AtomicBool,
    /// The store read every id to adopt ([`Adoption::scanned`]).
    scanned: AtomicBool,
    /// Tickets not yet dropped.
    outstanding: AtomicUsize,
    /// When the gate opens whatever is outstanding, ms since the Unix
    /// epoch: a Redis that does not answer must not keep the node off the
    /// cluster bus.
    deadline_ms: AtomicU64,
}

impl Adoption {
    /// Closes the gate until the adoption is over, or until `wait_ms` from
    /// now (by the wall clock, the one the bridges share).
    pub fn begin(&self, wait_ms: u64) {
        self.deadline_ms.store(
            crate::wallclock::now_ms().saturating_add(wait_ms),
            Ordering::Relaxed,
        );
        self.closed.store(true, Ordering::Release);
    }

    /// Whether the cluster bus may go ahead: no adoption was begun, it is
    /// over, or its deadline passed.
    pub fn open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            || crate::wallclock::now_ms() >= self.deadline_ms.load(Ordering::Relaxed)
    }

    /// Whether an adoption was begun and the deadline it set has passed
    /// (whether or not it is over).
    pub fn overdue(&self) -> bool {
        let deadline = self.deadline_ms.load(Ordering::Relaxed);
        deadline > 0 && crate::wallclock::now_ms() >= deadline
    }

    /// Tickets not yet dropped: adoptions handed out and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// A ticket for one session handed to a core.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        Ticket(self.clone())
    }

    /// Every id to adopt was handed out: the gate opens once their
    /// tickets are dropped.
    pub fn scanned(&self) {
        self.scanned.store(true, Ordering::Release);
        if self.outstanding.load(Ordering::Acquire) == 0 {
            self.closed.store(false, Ordering::Release);
        }
    }
}

/// One session being adopted; dropping it says its claim was answered.
pub struct Ticket(Arc<Adoption>);

impl Drop for Ticket {
    fn drop(&mut self) {
        let a = &self.0;
        if a.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 && a.scanned.load(Ordering::Acquire) {
            a.closed.store(false, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_when_every_id_was_read_and_every_ticket_dropped() {
        let a = Arc::new(Adoption::default());
        assert!(a.open(), "nothing begun");
        a.begin(60_000);
        assert!(!a.open());
        let t1 = a.ticket();
        let t2 = a.ticket();
        drop(t1);
        assert_eq!(a.outstanding(), 1);
        assert!(!a.open(), "still reading ids");
        a.scanned();
        assert!(!a.open(), "one ticket out");
        drop(t2);
        assert!(a.open());
    }

    #[test]
    fn nothing_to_adopt_opens_at_once_and_a_deadline_opens_it_anyway() {
        let a = Arc::new(Adoption::default());
        a.begin(60_000);
        a.scanned();
        assert!(a.open());
        let b = Arc::new(Adoption::default());
        b.begin(0);
        let _held = b.ticket();
        assert!(b.open(), "the deadline passed");
        assert!(b.overdue());
        assert!(!a.overdue(), "over before its deadline");
        assert!(!Adoption::default().overdue(), "never begun");
    }
}
