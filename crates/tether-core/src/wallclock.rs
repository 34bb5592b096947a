//! Wall-clock time as the outside world reads it: milliseconds since the
//! Unix epoch, for what leaves the process (presence records, connection
//! events, Kafka timestamps, incarnations, a connection's start). Timers and
//! durations use the core's monotonic clock (`shard::Clock`), never this.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 on a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
