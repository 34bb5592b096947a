//! The core's clock: wheel ticks and instants, real or driven by a test.
//!
//! Every time-based rule of the core (keep-alive, CONNECT deadline, session
//! expiry, tombstones, the move window, message expiry) reads this clock,
//! so unit tests can run those rules without sleeping.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Milliseconds since the core started, real or manual.
pub struct Clock {
    origin: Instant,
    /// `Some` for a manual clock: the milliseconds it has been advanced.
    manual: Option<Cell<u64>>,
}

/// One reading of the clock, for a batch of decisions.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Wheel tick.
    pub tick: u64,
    /// The instant (message expiry).
    pub at: Instant,
}

impl Clock {
    /// The monotonic clock.
    pub fn real() -> Clock {
        Clock {
            origin: Instant::now(),
            manual: None,
        }
    }

    /// A clock that moves only when [`Clock::advance`] is called.
    pub fn manual() -> Clock {
        Clock {
            origin: Instant::now(),
            manual: Some(Cell::new(0)),
        }
    }

    /// Moves a manual clock forward (no effect on the real one).
    pub fn advance(&self, ms: u64) {
        if let Some(m) = &self.manual {
            m.set(m.get() + ms);
        }
    }

    /// Milliseconds since the origin.
    pub fn elapsed_ms(&self) -> u64 {
        match &self.manual {
            Some(m) => m.get(),
            None => self.origin.elapsed().as_millis() as u64,
        }
    }

    /// The current instant.
    pub fn instant(&self) -> Instant {
        match &self.manual {
            Some(m) => self.origin + Duration::from_millis(m.get()),
            None => Instant::now(),
        }
    }
}
