//! `tether doctor`: every host limit that caps how many connections this
//! host can hold, checked and explained before launch, and an estimate of
//! the connections memory allows.
//!
//! Reading the host ([`Host::read`]) is kept apart from judging it
//! ([`judge`]), so the rules are unit-tested with made-up hosts. A check is
//! a blocker when the gateway cannot run as configured (no io_uring, too
//! little locked memory for its rings, fewer open files than a core needs);
//! the rest are warnings that name the cap and the setting that lifts it
//! (`tuning/60-tether.conf`, `systemd/tether.service`).

use std::path::Path;

use serde::Serialize;

use crate::config::Config;

/// What an idle connection costs in the gateway's memory: 446 B (TCP) and
/// 538 B (WebSocket) measured at 15,000 idle MQTT 3.1.1 connections
/// (bench/RESULTS.md, "Idle memory below Mosquitto's"), rounded up for
/// what a real client adds (a username, a will, subscriptions).
pub const USER_BYTES_PER_CONNECTION: u64 = 640;

/// What an idle TCP socket costs the kernel (socket, file, inode, dentry
/// and the minimum buffers `tuning/` sets): an estimate, stated as one.
pub const KERNEL_BYTES_PER_CONNECTION: u64 = 4_096;

/// Open files a process needs besides connections (listeners, rings,
/// logs, bridge sockets): `limits::RESERVED_FDS`.
const RESERVED: u64 = crate::limits::RESERVED_FDS;

/// The host as read from `/proc`, `/sys` and the process's limits.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Host {
    /// RLIMIT_NOFILE (soft, hard).
    pub nofile: (u64, u64),
    /// RLIMIT_MEMLOCK soft limit, bytes (`u64::MAX`: unlimited).
    pub memlock: u64,
    /// `fs.nr_open`.
    pub nr_open: Option<u64>,
    /// `fs.file-max`.
    pub file_max: Option<u64>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_mem`, pages (min, pressure, max).
    pub tcp_mem: Option<[u64; 3]>,
    /// `net.ipv4.tcp_rmem`, bytes (min, default, max).
    pub tcp_rmem: Option<[u64; 3]>,
    /// `net.ipv4.tcp_wmem`, bytes (min, default, max).
    pub tcp_wmem: Option<[u64; 3]>,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: Option<[u64; 2]>,
    /// `fs.epoll.max_user_watches`: sockets one user may have in epoll
    /// sets (each connection is one, in its core's readiness set).
    pub epoll_watches: Option<u64>,
    /// `kernel.io_uring_disabled` (0 allowed, 1 privileged only, 2 off).
    pub io_uring_disabled: Option<u64>,
    /// Whether an io_uring could be set up by this process.
    pub io_uring_works: bool,
    /// `/sys/kernel/mm/transparent_hugepage/enabled`, the bracketed mode.
    pub thp: Option<String>,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// MemAvailable, bytes.
    pub mem_available: Option<u64>,
    /// The cgroup's memory limit, bytes, when there is one.
    pub cgroup_memory: Option<u64>,
    /// Page size, bytes.
    pub page_size: u64,
}

fn read_u64s<const N: usize>(path: &str) -> Option<[u64; N]> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    v.try_into().ok()
}

fn read_u64(path: &str) -> Option<u64> {
    read_u64s::<1>(path).map(|[v]| v)
}

impl Host {
    /// Reads this host.
    pub fn read() -> Host {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_available = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024);
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .ok()
            .and_then(|t| {
                let start = t.find('[')?;
                let end = t[start..].find(']')?;
                Some(t[start + 1..start + end].to_string())
            });
        // cgroup v2 ("max" when unlimited), then v1.
        let cgroup_memory = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .or_else(|| read_u64("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
            .filter(|&b| b < (1 << 60));
        Host {
            nofile: crate::limits::get(libc::RLIMIT_NOFILE),
            memlock: crate::limits::get(libc::RLIMIT_MEMLOCK).0,
            nr_open: read_u64("/proc/sys/fs/nr_open"),
            file_max: read_u64("/proc/sys/fs/file-max"),
            somaxconn: read_u64("/proc/sys/net/core/somaxconn"),
            tcp_mem: read_u64s("/proc/sys/net/ipv4/tcp_mem"),
            tcp_rmem: read_u64s("/proc/sys/net/ipv4/tcp_rmem"),
            tcp_wmem: read_u64s("/proc/sys/net/ipv4/tcp_wmem"),
            port_range: read_u64s("/proc/sys/net/ipv4/ip_local_port_range"),
            epoll_watches: read_u64("/proc/sys/fs/epoll/max_user_watches"),
            io_uring_disabled: read_u64("/proc/sys/kernel/io_uring_disabled"),
            io_uring_works: io_uring_works(),
            thp,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_available,
            cgroup_memory,
            // SAFETY: sysconf has no preconditions.
            page_size: u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096),
        }
    }
}

/// Whether this process can set up an io_uring: one with a single entry,
/// closed at once.
fn io_uring_works() -> bool {
    // io_uring_params is 120 bytes; zeroed asks for the defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes `params` (120 bytes, the
    // kernel's struct io_uring_params) and returns an fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` is the ring this call just created, owned by nobody else.
    unsafe { libc::close(fd as i32) };
    true
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing to do.
    Ok,
    /// Caps capacity, or costs something; the gateway runs.
    Warn,
    /// The gateway cannot run as configured.
    Blocker,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short name (`nofile`, `io_uring`, ...).
    pub name: &'static str,
    /// The outcome.
    pub verdict: Verdict,
    /// What was found.
    pub found: String,
    /// What it means and how to change it.
    pub advice: String,
}

/// Everything `tether doctor` says.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// Connections the open-file limit allows.
    pub connections_by_files: u64,
    /// Connections memory allows (gateway and kernel), if known.
    pub connections_by_memory: Option<u64>,
    /// The smaller of the two: this host's cap as it stands.
    pub connections: u64,
}

impl Report {
    /// Whether a check is a blocker.
    pub fn blocked(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Blocker)
    }
}

/// What `tuning/60-tether.conf` sets (kept in step with that file by a
/// test).
pub mod tuned {
    /// `fs.nr_open` and `fs.file-max`, and `fs.epoll.max_user_watches`
    /// (one watch per connection).
    pub const FILES: u64 = 4_194_304;
    /// `net.core.somaxconn`.
    pub const SOMAXCONN: u64 = 65_535;
    /// `net.ipv4.tcp_rmem` and `tcp_wmem`: (min, default, max).
    pub const TCP_BUF: [u64; 3] = [4096, 4096, 4_194_304];
    /// `net.ipv4.tcp_mem`, pages.
    pub const TCP_MEM: [u64; 3] = [1_572_864, 2_097_152, 3_145_728];
    /// `net.ipv4.ip_local_port_range`.
    pub const PORTS: [u64; 2] = [1024, 65_535];
}

/// Bytes in the largest unit that keeps a whole number part.
fn bytes(b: u64) -> String {
    if b == u64::MAX {
        return "unlimited".into();
    }
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A count with thousands separators.
fn count(n: u64) -> String {
    if n == u64::MAX {
        return "unlimited".into();
    }
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn check(name: &'static str, verdict: Verdict, found: String, advice: &str) -> Check {
    Check {
        name,
        verdict,
        found,
        advice: advice.to_string(),
    }
}

/// Judges `host` for configuration `cfg`.
pub fn judge(host: &Host, cfg: &Config) -> Report {
    use Verdict::{Blocker, Ok, Warn};
    let show = count;
    let cores = cfg.cores();
    let mut checks = Vec::new();

    let (soft, hard) = host.nofile;
    // The gateway raises its soft limit to the hard one at start.
    let files = hard;
    checks.push(match files {
        f if f < RESERVED + 16 * cores as u64 => check("nofile", Blocker, format!("soft {}, hard {}", show(soft), show(hard)),
            "too few open files to run: raise LimitNOFILE= in the unit (systemd/tether.service sets 1048576) or `ulimit -Hn`"),
        f if f < crate::limits::RECOMMENDED_NOFILE => check("nofile", Warn, format!("soft {}, hard {}", show(soft), show(hard)),
            &format!("caps this process at ~{} connections: LimitNOFILE=1048576 in the unit, or `ulimit -n 1048576` (up to fs.nr_open)", show(f.saturating_sub(RESERVED)))),
        _ => check("nofile", Ok, format!("soft {}, hard {}", show(soft), show(hard)), "the gateway raises the soft limit to the hard one at start"),
    });

    let rings = (cores * cfg.runtime.io_memory_kib * 1024) as u64;
    checks.push(if host.memlock < rings {
        check("memlock", Blocker, bytes(host.memlock),
            &format!("io_uring locks runtime.io_memory_kib per core ({} for {cores} cores): LimitMEMLOCK=infinity in the unit, or lower runtime.io_memory_kib", bytes(rings)))
    } else {
        check("memlock", Ok, bytes(host.memlock), &format!("enough for the io_uring rings ({})", bytes(rings)))
    });

    for (name, value, key, whose) in [
        (
            "nr_open",
            host.nr_open,
            "fs.nr_open",
            "one process (LimitNOFILE cannot go above it)",
        ),
        ("file_max", host.file_max, "fs.file-max", "the whole host"),
    ] {
        checks.push(match value {
            Some(v) if v < tuned::FILES => check(name, Warn, show(v),
                &format!("{key} caps the open files of {whose} below tuning/'s {}: sysctl -p tuning/60-tether.conf", show(tuned::FILES))),
            Some(v) => check(name, Ok, show(v), "at or above tuning/"),
            None => check(name, Warn, "unreadable".into(), &format!("cannot read {key}")),
        });
    }

    checks.push(match host.somaxconn {
        Some(v) if v < tuned::SOMAXCONN => check("somaxconn", Warn, v.to_string(),
            "the accept backlog is capped by net.core.somaxconn: a reconnect storm overflows it and clients retry after a SYN timeout; tuning/ sets 65,535"),
        Some(v) => check("somaxconn", Ok, v.to_string(), "at or above tuning/"),
        None => check("somaxconn", Warn, "unreadable".into(), "cannot read net.core.somaxconn"),
    });

    for (name, value, key) in [
        ("tcp_rmem", host.tcp_rmem, "net.ipv4.tcp_rmem"),
        ("tcp_wmem", host.tcp_wmem, "net.ipv4.tcp_wmem"),
    ] {
        checks.push(match value {
            Some(v) if v[1] > tuned::TCP_BUF[1] * 4 => check(name, Warn, format!("{v:?}"),
                &format!("{key}'s default buffer ({}) is what an idle connection may hold in the kernel: tuning/ sets 4096 so millions of idle sockets fit", bytes(v[1]))),
            Some(v) => check(name, Ok, format!("{v:?}"), "small default buffers, as tuning/ sets"),
            None => check(name, Warn, "unreadable".into(), &format!("cannot read {key}")),
        });
    }

    checks.push(match host.tcp_mem {
        Some(v) if v[2] < tuned::TCP_MEM[2] => check(
            "tcp_mem",
            Warn,
            format!("{v:?} pages"),
            &format!(
                "past {} of socket buffers (tcp_mem max) the kernel refuses TCP memory and connections stall: tuning/ sets {} pages",
                bytes(v[2] * host.page_size),
                show(tuned::TCP_MEM[2])
            ),
        ),
        Some(v) => check("tcp_mem", Ok, format!("{v:?} pages"), "at or above tuning/"),
        None => check(
            "tcp_mem",
            Warn,
            "unreadable".into(),
            "cannot read net.ipv4.tcp_mem",
        ),
    });

    checks.push(match host.port_range {
        Some([lo, hi]) if hi.saturating_sub(lo) < tuned::PORTS[1] - tuned::PORTS[0] => check("port_range", Warn, format!("{lo}-{hi}"),
            "outgoing connections (Kafka, Redis, auth.http, the load harness on this host) get ports from net.ipv4.ip_local_port_range: tuning/ widens it to 1024-65535"),
        Some([lo, hi]) => check("port_range", Ok, format!("{lo}-{hi}"), "as wide as tuning/"),
        None => check("port_range", Warn, "unreadable".into(), "cannot read net.ipv4.ip_local_port_range"),
    });

    // Each connection's socket is one watch in its core's epoll set; the
    // kernel refuses the watch past the limit (the connection is closed
    // at once and counted in readiness_refused).
    let by_files = files.saturating_sub(RESERVED);
    checks.push(match host.epoll_watches {
        Some(w) if w < by_files => check("epoll_watches", Warn, show(w),
            &format!("fs.epoll.max_user_watches caps this user's connections at ~{}: sysctl -p tuning/60-tether.conf (sets {})", show(w), show(tuned::FILES))),
        Some(w) => check("epoll_watches", Ok, show(w), "room for a watch per connection"),
        None => check("epoll_watches", Warn, "unreadable".into(), "cannot read fs.epoll.max_user_watches"),
    });

    checks.push(match (host.io_uring_works, host.io_uring_disabled) {
        (true, _) => check("io_uring", Ok, "available".into(), "the cores run on io_uring (glommio)"),
        (false, Some(d)) if d > 0 => check("io_uring", Blocker, format!("kernel.io_uring_disabled = {d}"),
            "the cores need io_uring: sysctl kernel.io_uring_disabled=0 (1 allows only privileged processes)"),
        (false, _) => check("io_uring", Blocker, "io_uring_setup failed".into(),
            "the cores need io_uring: Linux 5.8 or later, and no seccomp profile that blocks io_uring_setup (containers often do)"),
    });

    checks.push(match (cfg.runtime.huge_pages, host.thp.as_deref()) {
        (false, Some(m)) => check("thp", Ok, m.into(),
            "the process opts out (runtime.huge_pages = false), so they do not inflate idle memory"),
        (true, Some("never")) => check("thp", Warn, "never".into(),
            "runtime.huge_pages asks for them but the host has them off: echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"),
        (true, Some(m)) => check("thp", Ok, m.into(),
            "the heap uses them (runtime.huge_pages = true): fewer TLB misses, ~20-30 MiB more resident at start"),
        (_, None) => check("thp", Ok, "not available".into(), "no transparent huge pages"),
    });

    checks.push(if cores > host.cpus {
        check("cores", Warn, format!("node.cores {cores}, {} CPUs", host.cpus),
            "more executors than CPUs: they share CPUs and each one's loop lag grows; set node.cores to the CPU count (0: all)")
    } else {
        check("cores", Ok, format!("node.cores {cores}, {} CPUs", host.cpus), "one executor per CPU at most")
    });

    let per = USER_BYTES_PER_CONNECTION + KERNEL_BYTES_PER_CONNECTION;
    let memory = match (host.mem_available, host.cgroup_memory) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    };
    let by_memory = memory.map(|m| m / per);
    checks.push(match (host.cgroup_memory, host.mem_available) {
        (Some(c), Some(a)) if c < a => check("cgroup_memory", Warn, bytes(c),
            &format!("the cgroup's memory.max is below the host's available memory ({}): it caps connections at ~{}", bytes(a), show(c / per))),
        (Some(c), _) => check("cgroup_memory", Ok, bytes(c), "above the memory available"),
        (None, _) => check("cgroup_memory", Ok, "no limit".into(), "no cgroup memory limit"),
    });

    let by_files = host.epoll_watches.map_or(by_files, |w| by_files.min(w));
    let connections = by_memory.map_or(by_files, |m| m.min(by_files));
    Report {
        checks,
        connections_by_files: by_files,
        connections_by_memory: by_memory,
        connections,
    }
}

/// The report as text for a terminal.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    for c in &r.checks {
        let mark = match c.verdict {
            Verdict::Ok => "ok     ",
            Verdict::Warn => "WARN   ",
            Verdict::Blocker => "BLOCKER",
        };
        out.push_str(&format!(
            "{mark} {:<14} {:<28} {}\n",
            c.name, c.found, c.advice
        ));
    }
    let show = count;
    out.push_str(&format!(
        "\nconnections: ~{} on this host as it stands (open files allow {}, memory {}; {} B each in the gateway, ~{} B in the kernel)\n",
        show(r.connections),
        show(r.connections_by_files),
        r.connections_by_memory.map_or("unknown".into(), show),
        USER_BYTES_PER_CONNECTION,
        KERNEL_BYTES_PER_CONNECTION,
    ));
    if r.blocked() {
        out.push_str("blocked: fix the BLOCKER lines before starting tether\n");
    }
    out
}

/// Whether `tuning/60-tether.conf` at `path` still says what [`tuned`]
/// assumes (for the test that keeps them in step).
pub fn tuning_matches(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let get = |key: &str| -> Result<Vec<u64>, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_prefix('='))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect()
            })
            .ok_or(format!("{key} is not in the file"))
    };
    let want: [(&str, Vec<u64>); 8] = [
        ("fs.file-max", vec![tuned::FILES]),
        ("fs.epoll.max_user_watches", vec![tuned::FILES]),
        ("fs.nr_open", vec![tuned::FILES]),
        ("net.core.somaxconn", vec![tuned::SOMAXCONN]),
        ("net.ipv4.tcp_rmem", tuned::TCP_BUF.to_vec()),
        ("net.ipv4.tcp_wmem", tuned::TCP_BUF.to_vec()),
        ("net.ipv4.tcp_mem", tuned::TCP_MEM.to_vec()),
        ("net.ipv4.ip_local_port_range", tuned::PORTS.to_vec()),
    ];
    for (key, v) in want {
        let got = get(key)?;
        if got != v {
            return Err(format!(
                "{key} is {got:?} in the file, {v:?} in doctor::tuned"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host tuned as `tuning/` says, with room for a million connections.
    fn tuned_host() -> Host {
        Host {
            nofile: (1 << 20, 1 << 20),
            memlock: u64::MAX,
            nr_open: Some(tuned::FILES),
            file_max: Some(tuned::FILES),
            somaxconn: Some(tuned::SOMAXCONN),
            tcp_mem: Some(tuned::TCP_MEM),
            tcp_rmem: Some(tuned::TCP_BUF),
            tcp_wmem: Some(tuned::TCP_BUF),
            port_range: Some(tuned::PORTS),
            epoll_watches: Some(tuned::FILES),
            io_uring_disabled: Some(0),
            io_uring_works: true,
            thp: Some("madvise".into()),
            cpus: 8,
            mem_available: Some(64 << 30),
            cgroup_memory: None,
            page_size: 4096,
        }
    }

    fn verdict(r: &Report, name: &str) -> Verdict {
        r.checks.iter().find(|c| c.name == name).unwrap().verdict
    }

    #[test]
    fn a_tuned_host_passes_and_limits_are_named() {
        let cfg = Config::default();
        let r = judge(&tuned_host(), &cfg);
        assert!(
            r.checks.iter().all(|c| c.verdict == Verdict::Ok),
            "{}",
            render(&r)
        );
        assert_eq!(r.connections, (1 << 20) - RESERVED, "files cap it");

        let mut h = tuned_host();
        h.nofile = (1024, 20_000);
        h.io_uring_works = false;
        h.io_uring_disabled = Some(2);
        h.thp = Some("always".into());
        h.cgroup_memory = Some(1 << 30);
        let r = judge(&h, &cfg);
        assert_eq!(verdict(&r, "nofile"), Verdict::Warn);
        assert_eq!(verdict(&r, "io_uring"), Verdict::Blocker);
        assert_eq!(
            verdict(&r, "thp"),
            Verdict::Ok,
            "the process opts out of THP"
        );
        assert_eq!(verdict(&r, "cgroup_memory"), Verdict::Warn);
        assert!(r.blocked());
        let per = USER_BYTES_PER_CONNECTION + KERNEL_BYTES_PER_CONNECTION;
        assert_eq!(
            r.connections_by_memory,
            Some((1 << 30) / per),
            "the cgroup caps memory"
        );
        assert_eq!(r.connections, 19_900, "and the open files cap it lower");
        assert!(render(&r).contains("BLOCKER io_uring"));

        h.memlock = 64 * 1024;
        assert_eq!(verdict(&judge(&h, &cfg), "memlock"), Verdict::Blocker);

        let mut h = tuned_host();
        h.epoll_watches = Some(100_000);
        let r = judge(&h, &cfg);
        assert_eq!(verdict(&r, "epoll_watches"), Verdict::Warn);
        assert_eq!(r.connections, 100_000, "the epoll watches cap it");
    }

    #[test]
    fn huge_pages_asked_for_on_a_host_without_them_warn() {
        let mut h = tuned_host();
        let mut cfg = Config::default();
        cfg.runtime.huge_pages = true;
        h.thp = Some("never".into());
        assert_eq!(verdict(&judge(&h, &cfg), "thp"), Verdict::Warn);
        h.thp = Some("madvise".into());
        assert_eq!(verdict(&judge(&h, &cfg), "thp"), Verdict::Ok);
        cfg.runtime.huge_pages = false;
        h.thp = Some("never".into());
        assert_eq!(verdict(&judge(&h, &cfg), "thp"), Verdict::Ok);
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(count(19_900), "19,900");
        assert_eq!(count(999), "999");
        assert_eq!(bytes(8 << 20), "8.0 MiB");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(u64::MAX), "unlimited");
    }

    #[test]
    fn doctor_agrees_with_tuning() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/60-tether.conf");
        tuning_matches(&path).unwrap();
    }
}
