//! systemd's notify protocol (sd_notify(3)), written directly: each message
//! is one datagram of `KEY=value` lines to the unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). It is a
//! dozen lines; a crate would add a dependency for nothing.
//!
//! What `tether` tells systemd (`Type=notify` in `systemd/tether.service`):
//! - `READY=1` once [`crate::gateway::Gateway::start`] returned: every core serves
//!   and every listener is bound;
//! - `STATUS=` every [`STATUS_INTERVAL`]: connections, and any core that
//!   is behind;
//! - `RELOADING=1` (with `MONOTONIC_USEC`) and `READY=1` around a SIGHUP
//!   reload;
//! - `STOPPING=1` when SIGTERM or SIGINT starts the shutdown, or a drain
//!   starts (then `STATUS=` counts the connections left);
//! - `WATCHDOG=1` every half `WatchdogSec=` (`WATCHDOG_USEC`), but only
//!   while every core answered its last heartbeat within
//!   [`STALL_AFTER`]: a core whose loop is stuck stops the pings, and
//!   systemd restarts the process.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often `STATUS=` is refreshed (and the cores' heartbeats checked
/// when there is no watchdog).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// A core that has not answered a heartbeat for this long is stuck: the
/// watchdog is not pinged. Well above a busy core's worst loop lag (tens
/// of ms under load, bench/RESULTS.md), well below a useful `WatchdogSec=`.
pub const STALL_AFTER: Duration = Duration::from_secs(2);

/// How often the thread wakes: heartbeats go out, a shutdown is noticed.
const POLL: Duration = Duration::from_millis(250);

/// The socket systemd listens on.
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// `STOPPING=1` went out (it is sent once).
    stopping: AtomicBool,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names, if set (and usable).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_str()?;
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes()).ok()?
            }
            None => SocketAddr::from_pathname(name).ok()?,
        };
        let sock = UnixDatagram::unbound().ok()?;
        Some(Notifier {
            sock,
            addr,
            stopping: AtomicBool::new(false),
        })
    }

    /// Sends one message (`KEY=value` lines).
    pub fn send(&self, msg: &str) -> io::Result<()> {
        self.sock
            .send_to_addr(msg.as_bytes(), &self.addr)
            .map(|_| ())
    }

    /// `STOPPING=1` (with a `STATUS=`), once: at the signal, or at the
    /// latest when the gateway has stopped (a process that exits fast
    /// must not leave before saying it).
    pub fn stopping(&self, status: &str) {
        if !self.stopping.swap(true, Relaxed) {
            let _ = self.send(&format!("STOPPING=1\nSTATUS={status}"));
        }
    }

    /// `RELOADING=1` with the monotonic time systemd asks for.
    pub fn reloading(&self) -> io::Result<()> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"))
    }
}

/// Half the `WatchdogSec=` systemd asked for (`WATCHDOG_USEC`, when
/// `WATCHDOG_PID` is unset or ours): how often to ping.
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Whether every core answered a heartbeat within [`STALL_AFTER`]: the
/// cores that did not, by index.
pub fn stalled(ages_ms: &[u64]) -> Vec<usize> {
    let limit = STALL_AFTER.as_millis() as u64;
    (0..ages_ms.len()).filter(|&i| ages_ms[i] > limit).collect()
}

/// Tells systemd the gateway is ready, then keeps `STATUS=` and the
/// watchdog going on the `tether-systemd` thread until the shutdown starts,
/// which SIGTERM or SIGINT report at once with `STOPPING=1` (they also reach
/// the cores, through their doorbells).
pub fn serve(notifier: Arc<Notifier>, gateway: crate::gateway::Monitor) -> io::Result<()> {
    let stopping = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let (n, flag) = (notifier.clone(), stopping.clone());
    std::thread::Builder::new()
        .name("tether-systemd-stop".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                flag.store(true, Relaxed);
                n.stopping("stopping");
            }
        })?;
    let status = |gw: &crate::gateway::Monitor, stuck: &[usize]| {
        let mut s = if gw.draining() {
            format!("STATUS=draining: {} connections left", gw.connections())
        } else {
            format!("STATUS={} connections", gw.connections())
        };
        if !stuck.is_empty() {
            s.push_str(&format!(", cores not answering: {stuck:?}"));
        }
        s
    };
    // The cores answered no heartbeat yet: ask, and report ready (start
    // returned, so they serve).
    gateway.heartbeat();
    notifier.send(&format!("READY=1\n{}", status(&gateway, &[])))?;
    let watchdog = watchdog_interval();
    std::thread::Builder::new()
        .name("tether-systemd".into())
        .spawn(move || {
            let mut last_ping = Instant::now();
            let mut last_status = Instant::now();
            let mut warned = false;
            let mut drain_told = false;
            loop {
                std::thread::sleep(POLL);
                if stopping.load(Relaxed) {
                    return;
                }
                if gateway.draining() && !drain_told {
                    notifier.stopping(&format!("draining: {} connections left", gateway.connections()));
                    drain_told = true;
                }
                let stuck = stalled(&gateway.heartbeat());
                if watchdog.is_some_and(|w| last_ping.elapsed() >= w) {
                    if stuck.is_empty() {
                        let _ = notifier.send("WATCHDOG=1");
                        last_ping = Instant::now();
                        warned = false;
                    } else if !warned {
                        tracing::error!(cores = ?stuck, "cores are not answering heartbeats: withholding the systemd watchdog ping (systemd restarts the process at WatchdogSec)");
                        warned = true;
                    }
                }
                if last_status.elapsed() >= STATUS_INTERVAL {
                    let _ = notifier.send(&status(&gateway, &stuck));
                    last_status = Instant::now();
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cores_behind_the_stall_limit_are_stuck() {
        let limit = STALL_AFTER.as_millis() as u64;
        assert!(stalled(&[0, 250, limit]).is_empty());
        assert_eq!(stalled(&[0, limit + 1, 5, 60_000]), vec![1, 3]);
    }
}
