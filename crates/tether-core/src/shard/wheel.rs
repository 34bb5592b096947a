//! Hierarchical timer wheel (one per core) for keep-alive, CONNECT deadlines
//! and session expiry.
//!
//! Four levels of 64 slots; level `k` covers `64^(k+1)` ticks. Inserting and
//! firing are O(1); a timer cascades down at most three times. Advancing
//! costs O(expiring timers), never O(connections). Timers are not cancelled:
//! the owner stores its real deadline and ignores (or re-arms) a timer that
//! fires early or for a key that no longer exists, which keeps the hot path
//! (a packet arriving) free of any wheel operation.

const BITS: u32 = 6;
const SLOTS: usize = 1 << BITS;
const LEVELS: usize = 4;
const MASK: u64 = SLOTS as u64 - 1;
/// Furthest a timer can be placed from `now`; later deadlines fire at the
/// horizon and are re-armed by their owner.
const HORIZON_BITS: u32 = BITS * LEVELS as u32;

pub struct Wheel<T> {
    now: u64,
    /// Timers by level and slot, each with the low 32 bits of its deadline
    /// (see [`Wheel::place`]).
    slots: Vec<Vec<(u32, T)>>,
    len: usize,
}

impl<T> Wheel<T> {
    pub fn new(now: u64) -> Self {
        Wheel {
            now,
            slots: (0..SLOTS * LEVELS).map(|_| Vec::new()).collect(),
            len: 0,
        }
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `item` to fire at tick `deadline` (at the next tick if the
    /// deadline has already passed).
    pub fn insert(&mut self, deadline: u64, item: T) {
        let horizon_end = self.now | ((1u64 << HORIZON_BITS) - 1);
        let deadline = deadline.clamp(self.now + 1, horizon_end.max(self.now + 1));
        self.place(deadline, item);
        self.len += 1;
    }

    fn place(&mut self, deadline: u64, item: T) {
        // The level is the lowest one whose higher bits agree with `now`, so
        // the slot is strictly ahead of the current position on that level.
        let mut level = 0;
        while level + 1 < LEVELS
            && (deadline >> (BITS * (level as u32 + 1)))
                != (self.now >> (BITS * (level as u32 + 1)))
        {
            level += 1;
        }
        let slot = ((deadline >> (BITS * level as u32)) & MASK) as usize;
        // A deadline is never more than the horizon (2^24 ticks) ahead of
        // `now`, and a slot is cascaded no later than its deadline, so 32
        // bits recover it (`full_deadline`). An idle connection's timer is
        // 16 bytes instead of 24.
        self.slots[level * SLOTS + slot].push((deadline as u32, item));
    }

    /// The deadline whose low 32 bits are `low`, at or after `now`.
    fn full_deadline(&self, low: u32) -> u64 {
        self.now + u64::from(low.wrapping_sub(self.now as u32))
    }

    /// Moves time forward to `to`, appending every timer that fired.
    pub fn advance(&mut self, to: u64, fired: &mut Vec<T>) {
        while self.now < to {
            self.now += 1;
            for level in (1..LEVELS).rev() {
                let shift = BITS * level as u32;
                if self.now & ((1u64 << shift) - 1) == 0 {
                    let slot = ((self.now >> shift) & MASK) as usize;
                    let items = std::mem::take(&mut self.slots[level * SLOTS + slot]);
                    for (low, item) in items {
                        let deadline = self.full_deadline(low);
                        if deadline <= self.now {
                            self.len -= 1;
                            fired.push(item);
                        } else {
                            self.place(deadline, item);
                        }
                    }
                }
            }
            let slot = (self.now & MASK) as usize;
            let items = std::mem::take(&mut self.slots[slot]);
            self.len -= items.len();
            fired.extend(items.into_iter().map(|(_, item)| item));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_until(w: &mut Wheel<u64>, to: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while w.now() < to {
            let mut fired = Vec::new();
            let t = w.now() + 1;
            w.advance(t, &mut fired);
            out.extend(fired.into_iter().map(|d| (t, d)));
        }
        out
    }

    #[test]
    fn fires_exactly_at_deadline_across_levels() {
        let mut w = Wheel::new(5);
        let deadlines = [6, 7, 63, 64, 65, 100, 4095, 4096, 4097, 70_000, 300_000];
        for d in deadlines {
            w.insert(d, d);
        }
        assert_eq!(w.len(), deadlines.len());
        let fired = run_until(&mut w, 300_001);
        assert_eq!(fired.len(), deadlines.len());
        for (at, d) in fired {
            assert_eq!(at, d, "timer for {d} fired at {at}");
        }
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadline_fires_next_tick() {
        let mut w = Wheel::new(100);
        w.insert(3, 3);
        let mut fired = Vec::new();
        w.advance(101, &mut fired);
        assert_eq!(fired, vec![3]);
    }

    #[test]
    fn beyond_horizon_fires_early_not_never() {
        let mut w = Wheel::new(0);
        w.insert(u64::MAX / 2, 1);
        let mut fired = Vec::new();
        w.advance(1 << HORIZON_BITS, &mut fired);
        assert_eq!(fired, vec![1]);
    }

    /// Timers keep 32 bits of their deadline: deadlines across a 2^32
    /// boundary of the tick count still fire on time.
    #[test]
    fn deadlines_past_a_32_bit_boundary_fire_on_time() {
        let start = (5u64 << 32) - 70_000;
        let mut w = Wheel::new(start);
        let offsets = [
            1,
            63,
            4_096,
            69_999,
            70_000,
            70_001,
            200_000,
            (1 << HORIZON_BITS) - 1,
        ];
        for o in offsets {
            w.insert(start + o, start + o);
        }
        // Deadlines past the current top-level block fire at its end (the
        // owner re-arms them: `beyond_horizon_fires_early_not_never`).
        let block_end = start | ((1 << HORIZON_BITS) - 1);
        let fired = run_until(&mut w, block_end + 1);
        assert_eq!(fired.len(), offsets.len());
        assert!(
            fired.iter().all(|&(at, d)| at == d.min(block_end)),
            "{fired:?}"
        );
        // Re-armed past the boundary, they fire on time.
        for &(_, d) in fired.iter().filter(|&&(at, d)| at < d) {
            w.insert(d, d);
        }
        let again = run_until(&mut w, start + (1 << HORIZON_BITS));
        assert_eq!(again.len(), 4);
        // (One was due at the tick the first run ended on: the next tick.)
        assert!(
            again.iter().all(|&(at, d)| at == d.max(block_end + 2)),
            "{again:?}"
        );
    }

    #[test]
    fn random_deadlines_fire_on_time() {
        let mut w = Wheel::new(0);
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let mut expected = Vec::new();
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = 1 + x % 20_000;
            w.insert(d, d);
            expected.push(d);
        }
        let fired = run_until(&mut w, 20_001);
        assert_eq!(fired.len(), expected.len());
        assert!(fired.iter().all(|(at, d)| at == d));
    }
}
