//! Per-core counters. Each core writes only its own [`Stats`]; readers (the
//! metrics endpoint, tests) sum over cores. Relaxed atomics: the figures are
//! monotonic counters and gauges, not synchronisation.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters of one core.
        #[derive(Default, Debug)]
        pub struct Stats {
            /// Connections currently open on this core (gauge).
            pub connections: AtomicI64,
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`Stats`], summed over cores.
        #[derive(Default, Debug, Clone, PartialEq, Eq)]
        pub struct Snapshot {
            pub connections: i64,
            $(pub $name: u64,)*
        }

        impl Stats {
            /// Every counter by name (the gauge `connections` excluded), for
            /// the metrics endpoint.
            pub fn for_each_counter(&self, mut f: impl FnMut(&'static str, u64)) {
                $(f(stringify!($name), self.$name.load(Ordering::Relaxed));)*
            }
        }

        impl Snapshot {
            pub fn add(&mut self, s: &Stats) {
                self.connections += s.connections.load(Ordering::Relaxed);
                $(self.$name += s.$name.load(Ordering::Relaxed);)*
            }
        }
    };
}

stats! {
    /// TCP connections accepted.
    accepted,
    /// MQTT sessions activated (CONNACK 0x00 sent).
    connects,
    packets_in,
    packets_out,
    bytes_in,
    bytes_out,
    /// PUBLISH packets received from clients.
    publishes_in,
    /// PUBLISH packets written to clients.
    publishes_out,
    /// QoS 0 messages dropped because the subscriber's outbox was over its limit.
    dropped_slow_qos0,
    /// QoS 0 messages for subscribers that were not connected.
    dropped_offline_qos0,
    /// QoS 1/2 messages dropped because the session queue was full.
    dropped_queue_full,
    /// Messages whose MQTT 5 Message Expiry Interval ran out before delivery.
    dropped_expired,
    /// Messages larger than the subscriber's Maximum Packet Size.
    dropped_too_large,
    /// Clients disconnected for exceeding the queue limit (0x97).
    disconnected_slow,
    /// Connections closed for malformed input or protocol violations.
    protocol_errors,
    /// Connections reaped by keep-alive or the CONNECT deadline.
    timeouts,
    /// Sessions taken over by a newer connection with the same client id.
    takeovers,
    /// Offline sessions that expired.
    sessions_expired,
    /// Messages a tombstone forwarded to a session's new core after a move.
    forwarded_after_move,
    /// Second copies dropped by a moved-in session's duplicate filter.
    duplicates_suppressed,
    /// Messages that reached a session after it ended (forward target gone).
    dropped_session_gone,
    /// Forwards for subscriptions the session no longer has (it came back
    /// with Clean Start or unsubscribed): not a loss.
    forwards_discarded,
    /// PUBLISH packets refused by `mqtt.deny_publish`.
    denied_publishes,
    /// Shared-subscription messages with no member left to take them.
    dropped_no_member,
    /// Shared-subscription messages given back by a member that left.
    share_returned,
    /// Retained messages not stored because the store was full.
    retained_refused,
}

/// Adds `n` to a counter owned by the calling core.
pub fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
