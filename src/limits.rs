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

/// Human form of a limit value.
pub fn show(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}
