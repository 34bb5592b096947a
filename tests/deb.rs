//! The Debian package, installed for real: `systemd/deb.sh` packages the
//! binary under test, `dpkg -i` installs it on this machine, and the test
//! checks the files and their owners, verifies the installed unit, runs the
//! installed binary as the `tether` user with the installed config (a
//! message round trip with mosquitto_pub/sub), installs a second build over
//! an edited config (the edit survives), and removes the package.
//!
//! It needs root and dpkg; without them, or on a host where a `tether`
//! package is already installed (an operator's, not ours to touch), it says
//! so and passes without checking.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::cluster::{banner_ports, lines_of, Proc};

const CONFIG: &str = "/etc/tether/tether.toml";

/// Runs `cmd`; its stdout, or a panic with its stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why this host cannot run the test, if it cannot.
fn unsuitable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Some("installing a package needs root".into());
    }
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        return Some("no dpkg-deb: not a Debian host".into());
    }
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "tether"])
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"));
    installed.then(|| "a tether package is installed on this host already".into())
}

/// Builds the package of the binary under test into `dir`.
fn build(dir: &Path) -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/deb.sh");
    let out = run(Command::new(script)
        .args(["--binary", env!("CARGO_BIN_EXE_tether"), "--out"])
        .arg(dir));
    PathBuf::from(out.trim())
}

fn owner(path: &str) -> (String, String, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let name = |db: &str, id: u32| {
        run(Command::new("getent").args([db, &id.to_string()]))
            .split(':')
            .next()
            .unwrap()
            .to_string()
    };
    (
        name("passwd", m.uid()),
        name("group", m.gid()),
        m.mode() & 0o7777,
    )
}

/// Removes the package, whatever the test did, when dropped.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "tether"]).output();
    }
}

#[test]
fn the_package_installs_runs_as_its_user_keeps_edits_and_removes() {
    if let Some(why) = unsuitable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tether-deb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let deb = build(&dir);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.ends_with(format!(
            "tether_{version}_{}.deb",
            run(Command::new("dpkg").arg("--print-architecture")).trim()
        )),
        "{deb:?}"
    );

    let installed = Installed;
    let log = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(
        log.contains("tether doctor"),
        "postinst checks the host: {log}"
    );
    assert!(
        !Path::new("/run/systemd/system").exists() || log.contains("installed, not started"),
        "the service is not started where nobody enabled it: {log}"
    );

    // The files and their owners.
    run(Command::new("getent").args(["passwd", "tether"]));
    assert_eq!(
        owner("/usr/bin/tether"),
        ("root".into(), "root".into(), 0o755)
    );
    assert_eq!(owner(CONFIG), ("root".into(), "tether".into(), 0o640));
    for file in [
        "/lib/systemd/system/tether.service",
        "/usr/lib/sysctl.d/60-tether.conf",
        "/usr/share/doc/tether/README.md",
        "/usr/share/doc/tether/tether.example.toml",
        "/usr/share/doc/tether/grafana/tether.json",
        "/usr/share/doc/tether/copyright",
    ] {
        assert_eq!(owner(file), ("root".into(), "root".into(), 0o644), "{file}");
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "tether"]));
    assert!(conffiles.contains(CONFIG), "a conffile: {conffiles}");
    assert_eq!(
        run(Command::new("/usr/bin/tether").arg("--version")).trim(),
        format!("tether {version}"),
        "the binary names the package's version"
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/tether.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/tether --config /etc/tether/tether.toml"));
    assert!(unit.contains("User=tether") && !unit.contains("DynamicUser"));
    let verify = Command::new("systemd-analyze")
        .args(["verify", "/lib/systemd/system/tether.service"])
        .output()
        .expect("systemd-analyze (Debian's systemd; tests/run.sh installs it)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    round_trip_as_the_tether_user();

    // An edit survives an upgrade: dpkg keeps a changed conffile.
    let edited = format!(
        "{}\n# edited by the operator\n",
        std::fs::read_to_string(CONFIG).unwrap()
    );
    std::fs::write(CONFIG, &edited).unwrap();
    let second = build(&dir.join("second"));
    run(Command::new("dpkg").arg("-i").arg(&second));
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), edited);

    run(Command::new("dpkg").args(["-r", "tether"]));
    assert!(!Path::new("/usr/bin/tether").exists(), "removed");
    assert!(Path::new(CONFIG).exists(), "a conffile stays until purge");
    drop(installed);
    assert!(!Path::new(CONFIG).exists(), "purged");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts the installed binary as `tether` with the installed config (on
/// free ports, so it shares the machine with other tests), and sends one
/// message through it with mosquitto_pub and mosquitto_sub.
fn round_trip_as_the_tether_user() {
    let child = Command::new("setpriv")
        .args([
            "--reuid=tether",
            "--regid=tether",
            "--init-groups",
            "--",
            "/usr/bin/tether",
            "--config",
            CONFIG,
        ])
        .env("TETHER_LISTENERS__TCP", "127.0.0.1:0")
        .env("TETHER_HTTP__LISTEN", "127.0.0.1:0")
        .env("TETHER_WEBSOCKET__ENABLED", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("setpriv (util-linux)");
    // setpriv execs: the PID is tether's.
    let mut node = Proc(child);
    let lines = lines_of(node.0.stdout.take().unwrap());
    let port = banner_ports(&lines).0.to_string();
    let user = run(Command::new("ps").args(["-o", "user=", "-p", &node.0.id().to_string()]));
    assert_eq!(user.trim(), "tether", "runs as the package's user");

    // Retained, so the subscriber that connects after it gets it: no race
    // between its SUBSCRIBE and the publish.
    run(Command::new("mosquitto_pub").args([
        "-p",
        &port,
        "-t",
        "deb/check",
        "-q",
        "1",
        "-r",
        "-m",
        "from the package",
    ]));
    let got = run(Command::new("mosquitto_sub").args([
        "-p",
        &port,
        "-t",
        "deb/check",
        "-q",
        "1",
        "-C",
        "1",
        "-W",
        "10",
    ]));
    assert_eq!(got.trim(), "from the package");
    node.kill9();
}
