//! `curl` itself as an independent HTTP client (Debian's curl; tests/run.sh
//! installs it).

/// `curl -sS` (at most 10 s) with `common` arguments (TLS trust, name
/// resolution) before `args`: its output. Panics when curl fails.
pub fn curl(common: &[String], args: &[&str]) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(common)
        .args(args)
        .output()
        .expect("curl is installed (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
