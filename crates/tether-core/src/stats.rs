//! Per-core counters. Each core writes only its own [`Stats`]; readers (the
//! metrics endpoint, tests) sum over cores. Relaxed atomics: the figures are
//! monotonic counters and gauges, not synchronisation.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! stats {
    ($($name:ident => $help:literal),* $(,)?) => {
        /// Counters of one core.
        #[derive(Default, Debug)]
        pub struct Stats {
            /// Connections currently open on this core (gauge).
            pub connections: AtomicI64,
            $(#[doc = $help] pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`Stats`], summed over cores.
        #[derive(Default, Debug, Clone, PartialEq, Eq)]
        pub struct Snapshot {
            /// Connections open.
            pub connections: i64,
            $(#[doc = $help] pub $name: u64,)*
        }

        impl Stats {
            /// Every counter with its name and help text (the gauge
            /// `connections` excluded), for the metrics endpoint.
            pub fn for_each_counter(&self, mut f: impl FnMut(&'static str, &'static str, u64)) {
                $(f(stringify!($name), $help, self.$name.load(Ordering::Relaxed));)*
            }
        }

        impl Snapshot {
            /// Adds one core's counters.
            pub fn add(&mut self, s: &Stats) {
                self.connections += s.connections.load(Ordering::Relaxed);
                $(self.$name += s.$name.load(Ordering::Relaxed);)*
            }
        }
    };
}

stats! {
    accepted => "TCP connections accepted.",
    accept_errors => "accept(2) failures (e.g. EMFILE: the open-file limit is reached).",
    readiness_refused => "Connections closed at once because the core's readiness set (epoll) refused their socket (ENOSPC: raise fs.epoll.max_user_watches; tether doctor checks it).",
    tls_handshake_errors => "TLS handshakes that failed (bad client hello, unknown CA, no client certificate where one is required, ...).",
    tls_full_handshakes => "TLS handshakes completed in full (certificate and signature).",
    tls_resumed => "TLS handshakes that resumed a session from a ticket (tls.ticket_key_file lets any node open it).",
    ws_upgrade_errors => "WebSocket upgrades refused (bad request, path, version or subprotocol).",
    connects => "MQTT sessions activated (CONNACK 0x00 sent).",
    packets_in => "MQTT packets received.",
    packets_out => "MQTT packets written.",
    bytes_in => "Bytes read from client sockets (after TLS: ciphertext).",
    bytes_out => "Bytes written to client sockets.",
    publishes_in => "PUBLISH packets received from clients.",
    publishes_out => "PUBLISH packets written to clients.",
    dropped_slow_qos0 => "QoS 0 messages dropped because the subscriber's outbox was over its limit.",
    dropped_offline_qos0 => "QoS 0 messages for subscribers that were not connected.",
    dropped_queue_full => "QoS 1/2 messages dropped because the session queue was full.",
    dropped_expired => "Messages whose MQTT 5 Message Expiry Interval ran out before delivery.",
    dropped_too_large => "Messages larger than the subscriber's Maximum Packet Size.",
    disconnected_slow => "Clients disconnected for exceeding the queue limit (0x97).",
    protocol_errors => "Connections closed for malformed input or protocol violations.",
    timeouts => "Connections reaped by keep-alive or the CONNECT deadline.",
    takeovers => "Sessions taken over by a newer connection with the same client id.",
    sessions_expired => "Offline sessions that expired.",
    forwarded_after_move => "Messages a tombstone forwarded to a session's new core after a move.",
    claim_arrivals_replayed => "QoS 1/2 messages that reached a core while a persistent session was being claimed there, offered to it once installed.",
    claim_arrivals_overflowed => "Messages not held for claims in flight because the core's buffer was full: a session being claimed can miss them.",
    duplicates_suppressed => "Second copies dropped by a moved-in session's duplicate filter.",
    dropped_session_gone => "Messages that reached a session after it ended (forward target gone).",
    dropped_session_ended => "QoS 1/2 messages still queued or in flight when their session ended (it expired, or a clean session's connection closed).",
    forwards_discarded => "Forwards for subscriptions the session no longer has (it came back with Clean Start or unsubscribed): not a loss.",
    denied_publishes => "Publishes refused by the authorizer (by default `mqtt.deny_publish`), from clients and the API.",
    dropped_no_member => "Shared-subscription messages with no member left to take them.",
    share_returned => "Shared-subscription messages given back by a member that left.",
    retained_refused => "Retained messages not stored because the store was full.",
    auth_deferred => "CONNECTs whose verdict was asked of the authenticator's slow path.",
    acl_deferred => "PUBLISH/SUBSCRIBE authorizations asked of the authorizer's slow path.",
    pending_refused => "CONNECTs refused with 0x89 because too many verdicts or claims were pending on the core.",
    store_errors => "Client-id claims the session store failed (CONNACK 0x88).",
    lease_closes => "Connections of persistent sessions closed (0x88) because the node's Redis lease lapsed: another node may own their sessions.",
    user_limit_refused => "CONNECTs refused by the per-user connection limit (policy refuse: CONNACK 0x97, 3.1.1: 0x03).",
    outbound_sent => "Messages handed to the outbound bridge.",
    accepts_paced => "Accepts that waited for listeners.max_accepts_per_sec.",
    accepts_held => "Times an accept loop stopped because its core had listeners.max_handshakes_per_core connections still in their handshake.",
    overload_refused => "CONNECTs refused with 0x89 because their core's loop lag was over listeners.overload_lag_ms.",
    drained => "Clients disconnected by a drain (MQTT 5: DISCONNECT 0x9C with drain.server_reference, or 0x8B).",
    banned_connects => "CONNECTs refused with 0x8A because their source address is banned after failed logins.",
    bans => "Source addresses banned after auth.ban_after_failures failed logins.",
    outbound_failed => "Messages the outbound bridge could not hand on (MQTT 5 publisher told 0x80, 3.1.1 publisher disconnected, API answered 502).",
    fallback_sessions => "HTTP fallback sessions started (an SSE stream or poll for a session not open on its core: a CONNECT with the session id as client id).",
    fallback_streams => "SSE streams opened on HTTP fallback sessions.",
    fallback_polls => "Long-polls answered.",
    fallback_actions => "HTTP fallback POST actions handled (subscribe, unsubscribe, publish, ack).",
    fallback_resends => "Events sent again on an HTTP fallback session because its client had not acknowledged them when its next stream or poll came.",
    fallback_handoffs => "HTTP fallback requests handed to the core that owns their session (the kernel accepted them on another).",
    fallback_refused => "HTTP fallback requests answered with an error (bad request, unknown session, limits, authentication).",
}

/// Adds `n` to a counter owned by the calling core.
pub fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Upper bounds, in microseconds, of the latency histograms' buckets (the
/// Prometheus `le` labels, in seconds): 100 µs to 10 s, roughly 1-2.5-5 per
/// decade, which resolves both a healthy sub-millisecond core and a
/// stalled one.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with the fixed [`LATENCY_BUCKETS_US`] (plus +Inf),
/// written by its own core only.
#[derive(Default, Debug)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation. Single writer (the owning core), so a load
    /// and a store replace the locked read-modify-write of `fetch_add`.
    pub fn observe(&self, us: u64) {
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b < us);
        let add = |a: &AtomicU64, n: u64| a.store(a.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        add(&self.buckets[i], 1);
        add(&self.sum_us, us);
    }

    /// Cumulative counts per `le` bound (the last is +Inf, the total), and
    /// the sum in microseconds.
    pub fn cumulative(&self) -> ([u64; LATENCY_BUCKETS_US.len() + 1], u64) {
        let mut out = [0; LATENCY_BUCKETS_US.len() + 1];
        let mut total = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            total += b.load(Ordering::Relaxed);
            *o = total;
        }
        (out, self.sum_us.load(Ordering::Relaxed))
    }
}

/// One figure a bridge reports for `/metrics`: name (without the `tether_`
/// prefix), help, value, and whether it is a counter (otherwise a gauge).
pub type Figure = (&'static str, &'static str, u64, bool);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_inclusive_and_cumulative() {
        let h = Histogram::default();
        for us in [0, 100, 101, 10_000_000, 10_000_001] {
            h.observe(us);
        }
        let (cum, sum) = h.cumulative();
        assert_eq!(cum[0], 2, "0 and 100 are <= 100 us");
        assert_eq!(cum[1], 3);
        assert_eq!(cum[LATENCY_BUCKETS_US.len() - 1], 4);
        assert_eq!(cum[LATENCY_BUCKETS_US.len()], 5, "+Inf counts everything");
        assert_eq!(sum, 20_000_202);
    }
}
