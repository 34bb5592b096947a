//! `--target-pid`: the broker's RSS and CPU time, read from /proc.

use std::time::Instant;

use crate::report::TargetReport;

/// Samples one process. RSS comes from `/proc/PID/statm` (resident pages),
/// CPU from the utime + stime ticks of `/proc/PID/stat`.
pub struct Sampler {
    pid: u32,
    page: u64,
    hz: f64,
    before: u64,
    peak: u64,
    held: u64,
    start: Option<(u64, Instant)>,
    go: Option<(u64, Instant)>,
    cpu_percent_connect: f64,
    cpu_percent: f64,
    /// CPU ticks and time at the previous [`Sampler::point`].
    last_point: Option<(u64, Instant)>,
}

impl Sampler {
    /// Starts sampling; the first reading is the "before" RSS.
    pub fn new(pid: u32) -> Result<Sampler, String> {
        // SAFETY: sysconf only reads configuration values.
        let (page, hz) = unsafe {
            (
                libc::sysconf(libc::_SC_PAGESIZE),
                libc::sysconf(libc::_SC_CLK_TCK),
            )
        };
        let before = rss(pid, page as u64)
            .ok_or_else(|| format!("--target-pid {pid}: no such process (or /proc unreadable)"))?;
        Ok(Sampler {
            pid,
            page: page as u64,
            hz: hz as f64,
            before,
            peak: before,
            held: before,
            start: ticks(pid).map(|t| (t, Instant::now())),
            go: None,
            cpu_percent_connect: 0.0,
            cpu_percent: 0.0,
            last_point: ticks(pid).map(|t| (t, Instant::now())),
        })
    }

    pub fn sample(&mut self) {
        if let Some(r) = rss(self.pid, self.page) {
            self.peak = self.peak.max(r);
        }
    }

    /// The traffic (or hold) phase starts: CPU is measured from here; the
    /// CPU of the connect phase is known now.
    pub fn mark_go(&mut self) {
        self.sample();
        self.go = ticks(self.pid).map(|t| (t, Instant::now()));
        self.cpu_percent_connect = self.cpu_since(self.start);
    }

    fn cpu_since(&self, from: Option<(u64, Instant)>) -> f64 {
        match (from, ticks(self.pid)) {
            (Some((t0, at)), Some(t1)) if at.elapsed().as_secs_f64() > 0.0 => {
                t1.saturating_sub(t0) as f64 / self.hz / at.elapsed().as_secs_f64() * 100.0
            }
            _ => 0.0,
        }
    }

    /// The traffic (or hold) phase ends: RSS now is the "held" figure.
    pub fn mark_end(&mut self) {
        self.sample();
        if let Some(r) = rss(self.pid, self.page) {
            self.held = r;
        }
        self.cpu_percent = self.cpu_since(self.go);
    }

    /// For the timeline: RSS now, and CPU (percent of one core) since the
    /// previous point (or since sampling started).
    pub fn point(&mut self) -> (Option<u64>, Option<f64>) {
        self.sample();
        let cpu = self.last_point.map(|from| self.cpu_since(Some(from)));
        self.last_point = ticks(self.pid).map(|t| (t, Instant::now()));
        (rss(self.pid, self.page), cpu)
    }

    pub fn report(&self, connected: u64) -> TargetReport {
        TargetReport {
            pid: self.pid,
            rss_before_bytes: self.before,
            rss_held_bytes: self.held,
            rss_peak_bytes: self.peak,
            rss_per_connection_bytes: if connected > 0 {
                self.held.saturating_sub(self.before) as f64 / connected as f64
            } else {
                0.0
            },
            cpu_percent_connect: self.cpu_percent_connect,
            cpu_percent: self.cpu_percent,
        }
    }
}

fn rss(pid: u32, page: u64) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    Some(s.split_whitespace().nth(1)?.parse::<u64>().ok()? * page)
}

fn ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after its ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after ')'.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let mut s = Sampler::new(std::process::id()).expect("own pid");
        assert!(s.before > 0);
        let v: Vec<u8> = vec![1; 8 << 20];
        s.mark_go();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i ^ (x >> 3));
        }
        s.mark_end();
        assert!(x != 1 && v.len() == 8 << 20);
        assert!(s.held >= s.before);
        assert!(Sampler::new(u32::MAX).is_err());
    }
}
