//! Process resource limits the gateway depends on, checked at startup.

/// Open-file limit at which the banner stops warning (one fd per connection).
pub const RECOMMENDED_NOFILE: u64 = 1 << 20;
/// File descriptors kept for listeners, io_uring rings, logs and the like.
pub const RESERVED_FDS: u64 = 100;

/// `(soft, hard)` of a resource limit.
pub fn get(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    unsafe { libc::getrlimit(resource, &mut r) };
    (r.rlim_cur, r.rlim_max)
}

/// Raises the soft open-file limit to the hard limit (what a server should
/// do; the hard limit is the administrator's decision). Returns the result.
pub fn raise_nofile() -> u64 {
    let (soft, hard) = get(libc::RLIMIT_NOFILE);
    if soft < hard {
        let r = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct; raising soft up to hard is always permitted.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            return hard;
        }
    }
    soft
}

/// Whether this process's heap may use transparent huge pages
/// (`runtime.huge_pages` explains why not by default): pages faulted from
/// now on follow it, whatever the allocator advised. `main` opts out first
/// thing, before the allocator touches much, and opts back in when the
/// configuration asks. Best effort: a kernel without the call keeps THP.
pub fn set_huge_pages(allowed: bool) {
    // SAFETY: PR_SET_THP_DISABLE takes integers only and affects only this
    // process's future page faults.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, u64::from(!allowed), 0, 0, 0) };
    if r != 0 {
        tracing::debug!(
            "cannot set transparent huge pages: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Most connection slots reserved up front, over all cores.
///
/// Per-connection tables (the core's slab, the client-id directory) are
/// sized once from the open-file limit instead of growing by doubling. A
/// reservation costs address space only; pages count in RSS when slots are
/// used. A doubling table instead copies itself and keeps up to half of its
/// touched pages idle: measured at ~280 B per idle connection at 19,000
/// connections (bench/RESULTS.md). The cap bounds the address space on hosts
/// with an unlimited open-file limit.
pub const MAX_RESERVED_SLOTS: u64 = 1 << 22;

/// Connection slots worth reserving over the whole process: one per
/// usable file descriptor, at most [`MAX_RESERVED_SLOTS`].
pub fn connection_slots() -> usize {
    let (soft, _) = get(libc::RLIMIT_NOFILE);
    soft.saturating_sub(RESERVED_FDS).min(MAX_RESERVED_SLOTS) as usize
}

/// Human form of a limit value.
pub fn show(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}
