//! The move window of a session that arrived from another core, while that
//! core's tombstone may still forward messages to it.
//!
//! Messages for the session then arrive on two paths: routed here directly,
//! and forwarded by the old core. Each path keeps its publisher's order, but
//! a forwarded message can be older than a direct one that arrived first.
//! So direct messages are *held*, and go out when their forwarded copy
//! arrives (in the old core's order) or when the old core's forwards end
//! (`CoreMsg::ForwardEnd`, sent behind its last forward). The rules that use
//! it are in `shard::delivery`.

use std::collections::VecDeque;

use super::message::Delivery;

/// Most message ids a moved-in session remembers; past this, duplicates
/// during the move window are no longer suppressed (bounded memory first).
pub const MAX_RECENT_IDS: usize = 65_536;

/// See the module documentation.
#[derive(Debug)]
pub struct MoveWindow {
    /// Ids of messages delivered through the old core.
    pub ids: ahash::AHashSet<u64>,
    /// Direct messages not yet seen through the old core, in arrival order.
    pub held: VecDeque<Delivery>,
    /// Tick at which the window closes even if the old core's end marker
    /// never comes (a fallback; the marker normally closes it).
    pub until: u64,
}

impl MoveWindow {
    /// A window that closes at tick `until` at the latest.
    pub fn new(until: u64) -> MoveWindow {
        MoveWindow {
            ids: Default::default(),
            held: VecDeque::new(),
            until,
        }
    }

    /// Records `id`; false when it was already seen (a duplicate). Once
    /// [`MAX_RECENT_IDS`] are remembered, new ids are no longer recorded.
    pub fn record(&mut self, id: u64) -> bool {
        if self.ids.len() >= MAX_RECENT_IDS {
            return !self.ids.contains(&id);
        }
        self.ids.insert(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_id_once_and_stops_growing_at_the_cap() {
        let mut w = MoveWindow::new(10);
        assert!(w.record(1));
        assert!(!w.record(1), "second sight is a duplicate");
        for id in 2..=MAX_RECENT_IDS as u64 {
            w.record(id);
        }
        assert_eq!(w.ids.len(), MAX_RECENT_IDS);
        assert!(w.record(u64::MAX), "past the cap a new id is let through");
        assert_eq!(w.ids.len(), MAX_RECENT_IDS, "but not remembered");
        assert!(!w.record(1), "remembered ids are still recognised");
    }
}
