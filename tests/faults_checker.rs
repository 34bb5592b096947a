//! The fault harness's checker (`bench/scripts/faults_check.py`) judges
//! the fleet by what its clients saw; its own unit tests run here, so a
//! checker that stopped seeing a broken promise fails CI.

use std::process::Command;

#[test]
fn the_fault_checker_sees_every_broken_promise() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "bench/scripts/test_faults_check.py"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3 (Debian's python3)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
