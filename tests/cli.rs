//! The `tether` binary with independent clients: the README tour with
//! `mosquitto_sub`/`mosquitto_pub`, `check-config`, SIGTERM shutdown, and
//! TLS with `mosquitto_sub --cafile` across a SIGHUP certificate reload,
//! and TLS session resumption across nodes with shared ticket keys.

#[path = "common/pki.rs"]
#[allow(dead_code)] // the CLI tests use the server side only
mod pki;

#[path = "common/curl.rs"]
mod curl;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// The HTTP API's address, from the banner's `http api` line.
fn http_api(banner: &mpsc::Receiver<String>) -> String {
    loop {
        let line = banner
            .recv_timeout(WAIT)
            .expect("the banner's http api line");
        if let Some(rest) = line.split("http api    http://").nth(1) {
            return rest.split_whitespace().next().unwrap().to_string();
        }
    }
}

/// The gateway binary on a free port; returns the process and its port.
fn start_tether(cores: &str) -> (Reap, u16, mpsc::Receiver<String>) {
    start_tether_with(cores, &[])
}

/// [`start_tether`] with more `TETHER_*` settings.
fn start_tether_with(cores: &str, env: &[(&str, &str)]) -> (Reap, u16, mpsc::Receiver<String>) {
    start_tether_args(cores, env, &[])
}

/// [`start_tether_with`] with command-line arguments.
fn start_tether_args(
    cores: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Reap, u16, mpsc::Receiver<String>) {
    let mut child = Reap(
        Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(args)
            .env("TETHER_LISTENERS__TCP", "127.0.0.1:0")
            .env("TETHER_HTTP__LISTEN", "127.0.0.1:0")
            .env("TETHER_WEBSOCKET__LISTEN", "127.0.0.1:0")
            .env("TETHER_NODE__CORES", cores)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tether starts"),
    );
    let lines = lines_of(child.0.stdout.take().unwrap());
    loop {
        let line = lines.recv_timeout(WAIT).expect("startup banner in time");
        if let Some(addr) = line.split("listening on ").nth(1) {
            let port = addr.trim().rsplit(':').next().unwrap().parse().unwrap();
            return (child, port, lines);
        }
    }
}

fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// A mosquitto client, line-buffered (it block-buffers into pipes) so each
/// event can be awaited as it happens.
fn mosquitto(tool: &str) -> Command {
    assert!(
        Command::new(tool).arg("--help").output().is_ok(),
        "{tool} is missing: install Debian's mosquitto-clients (.ci/run does)"
    );
    let mut c = Command::new("stdbuf");
    c.args(["-oL", tool]);
    c
}

/// `mosquitto_sub` with `args` plus `-d` (protocol events on stdout),
/// returned once its SUBACK arrived, with its output lines.
fn subscribed(args: &[&str]) -> (Reap, mpsc::Receiver<String>) {
    let mut sub = mosquitto("mosquitto_sub")
        .args(args)
        .arg("-d")
        .stdout(Stdio::piped())
        .spawn()
        .map(Reap)
        .unwrap();
    let out = lines_of(sub.0.stdout.take().unwrap());
    while !out
        .recv_timeout(WAIT)
        .expect("mosquitto_sub subscribes in time")
        .contains("SUBACK")
    {}
    (sub, out)
}

/// Kills the child if the test fails before it exits.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `sig` to a process this test spawned.
fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) with the pid of a child we spawned and still hold.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process did not exit in time"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn readme_tour_with_mosquitto_clients_then_sigterm() {
    let (mut tether, port, _banner) = start_tether("2");
    let tether = &mut tether.0;
    let port_s = port.to_string();
    let (mut sub, out) = subscribed(&[
        "-p", &port_s, "-t", "demo/#", "-v", "-q", "1", "-C", "3", "-W", "10", "-V", "mqttv5",
    ]);
    for (topic, msg, extra) in [
        ("demo/a", "hello", vec!["-q", "0"]),
        ("demo/b", "qos1", vec!["-q", "1"]),
        ("demo/c", "qos2 v5", vec!["-q", "2", "-V", "mqttv5"]),
    ] {
        let status = mosquitto("mosquitto_pub")
            .args(["-p", &port_s, "-t", topic, "-m", msg])
            .args(extra)
            .status()
            .unwrap();
        assert!(status.success(), "mosquitto_pub to {topic}");
    }
    let mut received = Vec::new();
    while received.len() < 3 {
        let line = out.recv_timeout(WAIT).expect("message in time");
        if line.starts_with("demo/") {
            received.push(line);
        }
    }
    assert_eq!(received, ["demo/a hello", "demo/b qos1", "demo/c qos2 v5"]);
    assert!(wait_exit(&mut sub.0).success());

    // SIGTERM: clean shutdown, exit code 0.
    signal(tether, libc::SIGTERM);
    assert!(wait_exit(tether).success());
}

#[test]
fn sigterm_sends_v5_clients_disconnect_0x8b() {
    let (mut tether, port, _banner) = start_tether("1");
    let tether = &mut tether.0;
    let (_sub, out) = subscribed(&["-p", &port.to_string(), "-t", "x", "-V", "mqttv5"]);
    signal(tether, libc::SIGTERM);
    let disconnect = loop {
        let line = out.recv_timeout(WAIT).expect("DISCONNECT in time");
        if line.contains("DISCONNECT") {
            break line;
        }
    };
    assert!(
        disconnect.contains("(139)"),
        "reason 0x8B expected: {disconnect}"
    );
    assert!(wait_exit(tether).success());
}

#[test]
fn check_config_explains_errors_with_the_key() {
    let dir = std::env::temp_dir().join(format!("tether-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::File::create(&bad)
        .unwrap()
        .write_all(b"[mqtt]\nmax_qos = 7\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mqtt.max_qos") && err.contains("0, 1 or 2"),
        "{err}"
    );

    let good = concat!(env!("CARGO_MANIFEST_DIR"), "/tether.example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check-config", good])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

/// The README's HTTP step: `curl` pushes, `mosquitto_sub` receives, and
/// `/metrics` counts it.
#[test]
fn http_push_with_curl_reaches_mosquitto_sub() {
    let (_tether, port, banner) = start_tether("2");
    let http = http_api(&banner);
    let (_sub, out) = subscribed(&[
        "-p",
        &port.to_string(),
        "-t",
        "inbox/#",
        "-v",
        "-q",
        "1",
        "-C",
        "1",
        "-W",
        "10",
    ]);
    let curl = |args: &[&str]| curl::curl(&[], args);
    let reply = curl(&[
        "-X",
        "POST",
        &format!("http://{http}/v1/publish"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"topic":"inbox/alice","payload":"hello from curl","qos":1}"#,
    ]);
    assert!(reply.contains("\"id\""), "{reply}");
    loop {
        let line = out.recv_timeout(WAIT).expect("the pushed message in time");
        // -d also prints protocol events ("Client ... received PUBLISH",
        // "Subscribed (mid: 1)"); the message line is topic and payload.
        if line.starts_with("inbox/") {
            assert_eq!(line, "inbox/alice hello from curl");
            break;
        }
    }
    let metrics = curl(&[&format!("http://{http}/metrics")]);
    let published: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("tether_publishes_in_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(published, 1, "{metrics}");
}

/// mqtts with `mosquitto_sub --cafile`; SIGHUP swaps the certificate while
/// that subscriber stays connected, and new clients see the new one.
#[test]
fn tls_with_mosquitto_clients_and_sighup_reload() {
    let dir = pki::dir("sighup");
    let (ca1, ca2) = (pki::Ca::new("CA one"), pki::Ca::new("CA two"));
    let first = ca1.server();
    let cert = pki::write(&dir, "server.pem", &first.cert);
    let key = pki::write(&dir, "server.key", &first.key);
    let ca1_file = pki::write(&dir, "ca1.pem", &ca1.pem());
    let ca2_file = pki::write(&dir, "ca2.pem", &ca2.pem());
    let (tether, port, lines) = start_tether_with(
        "2",
        &[
            ("TETHER_TLS__ENABLED", "true"),
            ("TETHER_TLS__LISTEN", "127.0.0.1:0"),
            ("TETHER_TLS__WSS_LISTEN", "127.0.0.1:0"),
            ("TETHER_TLS__CERT_FILE", cert.to_str().unwrap()),
            ("TETHER_TLS__KEY_FILE", key.to_str().unwrap()),
        ],
    );
    let tls_port = loop {
        let line = lines.recv_timeout(WAIT).expect("the mqtt/tls banner line");
        if line.contains("mqtt/tls") {
            break line.rsplit(':').next().unwrap().trim().to_string();
        }
    };
    let sub_args = |ca: &std::path::Path| {
        let ca = ca.to_str().unwrap().to_string();
        [
            "-h",
            "localhost",
            "-p",
            &tls_port,
            "--cafile",
            &ca,
            "-t",
            "tls/#",
            "-v",
        ]
        .map(String::from)
    };
    let publish = |msg: &str| {
        let status = mosquitto("mosquitto_pub")
            .args(["-p", &port.to_string(), "-t", "tls/news", "-m", msg])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let next_message = |out: &mpsc::Receiver<String>| loop {
        let line = out.recv_timeout(WAIT).expect("a message in time");
        if line.starts_with("tls/") {
            return line;
        }
    };
    let a1 = sub_args(&ca1_file);
    let (_kept, kept_out) = subscribed(&a1.each_ref().map(String::as_str));
    publish("one");
    assert_eq!(next_message(&kept_out), "tls/news one");

    let second = ca2.server();
    pki::write(&dir, "server.pem", &second.cert);
    pki::write(&dir, "server.key", &second.key);
    signal(&tether.0, libc::SIGHUP);
    while !lines
        .recv_timeout(WAIT)
        .expect("the reload log line")
        .contains("TLS reloaded")
    {}

    let stale = mosquitto("mosquitto_sub")
        .args(a1.each_ref().map(String::as_str))
        .args(["-C", "1", "-W", "5"])
        .output()
        .unwrap();
    assert!(
        !stale.status.success(),
        "the old CA no longer verifies the served certificate"
    );
    let a2 = sub_args(&ca2_file);
    let (_fresh, fresh_out) = subscribed(&a2.each_ref().map(String::as_str));
    publish("two");
    assert_eq!(next_message(&fresh_out), "tls/news two");
    assert_eq!(
        next_message(&kept_out),
        "tls/news two",
        "the subscriber from before the reload is still connected"
    );
}

/// Two processes on one address would split its clients between them
/// (SO_REUSEPORT): the second refuses to start and names the address and
/// the key to change.
#[test]
fn a_second_process_on_the_same_address_refuses_to_start() {
    let (_first, port, _lines) = start_tether("1");
    // Reaped (by its PID) if it wrongly starts and keeps running.
    let mut second = Reap(
        Command::new(env!("CARGO_BIN_EXE_tether"))
            .env("TETHER_LISTENERS__TCP", format!("127.0.0.1:{port}"))
            .env("TETHER_HTTP__LISTEN", "127.0.0.1:0")
            .env("TETHER_WEBSOCKET__LISTEN", "127.0.0.1:0")
            .env("TETHER_NODE__CORES", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = wait_exit(&mut second.0);
    assert!(!status.success(), "the second process started");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("listeners.tcp"),
        "{err}"
    );
}

/// systemd's notify protocol against a fake `NOTIFY_SOCKET`: READY=1 with a
/// STATUS once serving, watchdog pings at half WATCHDOG_USEC while the cores
/// answer, RELOADING=1 then READY=1 around SIGHUP, STOPPING=1 on SIGTERM.
#[test]
fn systemd_hears_ready_watchdog_reload_and_stopping() {
    let dir = std::env::temp_dir().join(format!("tether-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let (mut tether, _port, _lines) = start_tether_with(
        "2",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let next = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Every message until one containing `what` (watchdog pings and status
    // updates may come in between).
    let until = |what: &str| loop {
        let m = next();
        if m.contains(what) {
            return m;
        }
    };
    let ready = until("READY=1");
    assert!(ready.contains("STATUS=0 connections"), "{ready}");
    until("WATCHDOG=1");
    until("WATCHDOG=1");
    signal(&tether.0, libc::SIGHUP);
    assert!(until("RELOADING=1").contains("MONOTONIC_USEC="));
    until("READY=1");
    signal(&tether.0, libc::SIGTERM);
    until("STOPPING=1");
    assert!(wait_exit(&mut tether.0).success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The unit in systemd/ passes `systemd-analyze verify` (with ExecStart
/// pointed at the binary just built).
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/tether.service"
    ))
    .unwrap()
    .replace("/usr/local/bin/tether", env!("CARGO_BIN_EXE_tether"));
    let dir = std::env::temp_dir().join(format!("tether-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tether.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd; tests/run.sh installs it)");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tether doctor --json` reads this host: every check is there, the
/// open-file cap is this process's limit, and the exit status follows the
/// blockers.
#[test]
fn doctor_reports_the_host_limits_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for want in [
        "nofile",
        "memlock",
        "nr_open",
        "file_max",
        "somaxconn",
        "tcp_rmem",
        "tcp_wmem",
        "tcp_mem",
        "port_range",
        "io_uring",
        "thp",
        "cores",
        "cgroup_memory",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // The child inherits this process's hard limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert_eq!(
        report["connections_by_files"].as_u64().unwrap(),
        lim.rlim_max - 100
    );
    let blocked = checks.iter().any(|c| c["verdict"] == "blocker");
    assert_eq!(out.status.success(), !blocked);
    // The gateway runs here, so io_uring works.
    let io_uring = checks.iter().find(|c| c["name"] == "io_uring").unwrap();
    assert_eq!(io_uring["verdict"], "ok");
}

/// `PUT /v1/admin/log-level` (with curl) changes the filter of the running
/// process: debug lines appear from then on, and nonsense is refused.
#[test]
fn the_log_level_changes_while_running() {
    let (_tether, port, lines) = start_tether("1");
    let mut seen = Vec::new();
    let api = http_api(&lines);
    let curl = |method: &str, body: Option<&str>| {
        let mut c = Command::new("curl");
        c.args(["-s", "-w", "\n%{http_code}", "-X", method]);
        if let Some(b) = body {
            c.args(["--data-binary", b]);
        }
        let out = c
            .arg(format!("http://{api}/v1/admin/log-level"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    let (code, body) = curl("GET", None);
    assert_eq!(code, "200");
    assert!(body.contains(r#""level":"info""#), "{body}");
    let (code, body) = curl("PUT", Some("tether=nonsense=x"));
    assert_eq!(code, "400", "{body}");
    // Until the change (at info) no debug line was printed.
    while let Ok(line) = lines.try_recv() {
        seen.push(line);
    }
    assert!(
        !seen.iter().any(|l| l.contains(" DEBUG ")),
        "debug lines before the change: {seen:?}"
    );
    let (code, body) = curl("PUT", Some("debug"));
    assert_eq!(code, "200", "{body}");
    assert!(body.contains(r#""previous":"info""#), "{body}");
    // A connection that comes and goes is logged at debug level now.
    drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    loop {
        let line = lines.recv_timeout(WAIT).expect("a debug line in time");
        if line.contains(" DEBUG ") {
            break;
        }
    }
}

/// SIGHUP re-reads the configuration file: `log.level` takes effect, and
/// other changed sections are named as waiting for a restart.
#[test]
fn sighup_applies_the_log_level_and_names_what_needs_a_restart() {
    let dir = std::env::temp_dir().join(format!("tether-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tether.toml");
    std::fs::write(&file, "[log]\nlevel = \"info\"\n").unwrap();
    let (tether, _port, lines) = start_tether_args("1", &[], &["--config", file.to_str().unwrap()]);
    std::fs::write(&file, "[log]\nlevel = \"debug\"\n[mqtt]\nmax_qos = 1\n").unwrap();
    signal(&tether.0, libc::SIGHUP);
    let (mut level, mut restart) = (false, false);
    while !(level && restart) {
        let line = lines
            .recv_timeout(WAIT)
            .expect("the reload's log lines in time");
        level |= line.contains("log.level reloaded") && line.contains("level=\"debug\"");
        restart |= line.contains("configuration changed in [mqtt]");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A raw rustls client's handshake with one node: what it negotiated.
struct Handshake {
    resumed: bool,
    alpn: Option<Vec<u8>>,
}

/// TLS to `localhost:port` with `client` (whose resumption store carries
/// tickets from one call to the next), then an MQTT 3.1.1 CONNECT and its
/// CONNACK, so the tickets the node sends after the handshake are read.
/// `Err`: the handshake failed.
fn mqtts_connect(
    client: &std::sync::Arc<rustls::ClientConfig>,
    port: u16,
    id: &str,
) -> Result<Handshake, std::io::Error> {
    use std::io::Read;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client.clone(), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(WAIT))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut connect = vec![0x10, (12 + id.len()) as u8, 0, 4];
    connect.extend_from_slice(b"MQTT\x04\x02\x00\x3c");
    connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
    connect.extend_from_slice(id.as_bytes());
    tls.write_all(&connect)?;
    let mut connack = [0; 4];
    tls.read_exact(&mut connack)?;
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    let kind = tls.conn.handshake_kind();
    Ok(Handshake {
        resumed: kind == Some(rustls::HandshakeKind::Resumed),
        alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
    })
}

/// A node with mqtts on, sealing tickets with `keys`; returns it and its
/// mqtts port.
fn tls_node(cert: &std::path::Path, key: &std::path::Path, keys: &std::path::Path) -> (Reap, u16) {
    let (node, _port, lines) = start_tether_with(
        "1",
        &[
            ("TETHER_TLS__ENABLED", "true"),
            ("TETHER_TLS__LISTEN", "127.0.0.1:0"),
            ("TETHER_TLS__WSS", "false"),
            ("TETHER_TLS__CERT_FILE", cert.to_str().unwrap()),
            ("TETHER_TLS__KEY_FILE", key.to_str().unwrap()),
            ("TETHER_TLS__TICKET_KEY_FILE", keys.to_str().unwrap()),
        ],
    );
    let port = loop {
        let line = lines.recv_timeout(WAIT).expect("the mqtt/tls banner line");
        if line.contains("mqtt/tls") {
            break line.rsplit(':').next().unwrap().trim().parse().unwrap();
        }
    };
    (node, port)
}

/// A client that resumes on another node after the first stopped (the
/// drain case), through a key rotation, and not on a node with other keys;
/// ALPN answers `mqtt`, serves a client that offers none, and refuses one
/// that offers only other names.
#[test]
fn tls_sessions_resume_on_any_node_that_shares_the_ticket_keys() {
    const A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    let dir = pki::dir("tickets");
    let ca = pki::Ca::new("fleet CA");
    let server = ca.server();
    let cert = pki::write(&dir, "server.pem", &server.cert);
    let key = pki::write(&dir, "server.key", &server.key);
    let shared = pki::write(&dir, "shared.keys", &format!("{A}\n"));
    let rotated = pki::write(&dir, "rotated.keys", &format!("# B seals now\n{B}\n{A}\n"));
    let foreign = pki::write(&dir, "foreign.keys", &format!("{B}\n"));

    let roots = ca.roots();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client_with = |alpn: &[&str]| {
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        std::sync::Arc::new(c)
    };
    let client = client_with(&["mqtt"]);

    let (mut one, port) = tls_node(&cert, &key, &shared);
    let first = mqtts_connect(&client, port, "dev-1").expect("full handshake");
    assert!(!first.resumed, "the first handshake is full");
    assert_eq!(first.alpn.as_deref(), Some(b"mqtt".as_slice()));
    one.0.kill().unwrap();
    one.0.wait().unwrap();

    let (_two, port) = tls_node(&cert, &key, &shared);
    let again = mqtts_connect(&client, port, "dev-1").expect("resumed handshake");
    assert!(again.resumed, "a node with the same key opens the ticket");

    // The ticket node two issued (sealed with A) opens after the rotation
    // that puts B first, and the ticket issued then (B) on a node with B only.
    let (_three, port) = tls_node(&cert, &key, &rotated);
    assert!(
        mqtts_connect(&client, port, "dev-1").unwrap().resumed,
        "A still opens"
    );
    let (_four, port) = tls_node(&cert, &key, &foreign);
    assert!(
        mqtts_connect(&client, port, "dev-1").unwrap().resumed,
        "B sealed the last one"
    );
    let stranger = client_with(&["mqtt"]);
    let (_five, port) = tls_node(&cert, &key, &shared);
    assert!(!mqtts_connect(&stranger, port, "dev-2").unwrap().resumed);
    assert!(
        !mqtts_connect(&client, port, "dev-1").unwrap().resumed,
        "a ticket sealed with B is not opened by a node with A only: full handshake"
    );

    let plain = mqtts_connect(&client_with(&[]), port, "no-alpn").expect("no ALPN is served");
    assert_eq!(plain.alpn, None);
    let other = mqtts_connect(&client_with(&["x-other"]), port, "other");
    assert!(
        other.is_err(),
        "only foreign ALPN names: no_application_protocol"
    );
}

/// A hand-written MQTT 3.1.1 client: CONNECT with a user name; the socket
/// and the CONNACK return code.
fn raw_connect(port: u16, id: &str, user: &str) -> (std::net::TcpStream, u8) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut body = b"\x00\x04MQTT\x04\x82\x00\x3c".to_vec();
    for field in [id, user] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    s.write_all(&packet).unwrap();
    let mut connack = [0; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack[0], 0x20, "a CONNACK");
    (s, connack[3])
}

/// SUBSCRIBE to `filter` at QoS 0 on a raw connection: the SUBACK's code.
fn raw_subscribe(s: &mut std::net::TcpStream, filter: &str) -> u8 {
    use std::io::Read;
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(0);
    let mut packet = vec![0x82, body.len() as u8];
    packet.extend_from_slice(&body);
    s.write_all(&packet).unwrap();
    let mut suback = [0; 5];
    s.read_exact(&mut suback).unwrap();
    assert_eq!(&suback[..4], &[0x90, 3, 0, 1], "the SUBACK of packet 1");
    suback[4]
}

/// Waits for a log line containing each of `wanted`.
fn expect_lines(lines: &mpsc::Receiver<String>, wanted: &[&str]) {
    let mut missing: Vec<&str> = wanted.to_vec();
    while !missing.is_empty() {
        let line = lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no log line with {missing:?}"));
        missing.retain(|w| !line.contains(w));
    }
}

/// SIGHUP puts new deny lists, per-user limits and admission limits in
/// force for a running node; what it cannot change live is named.
#[test]
fn sighup_applies_deny_lists_and_limits_to_a_running_node() {
    let dir = std::env::temp_dir().join(format!("tether-hup-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tether.toml");
    let write = |deny: &str, max: u32, extra: &str| {
        let text = format!(
            "[mqtt]\ndeny_subscribe = [{deny}]\n{extra}\n[limits]\nmax_connections_per_user = {max}\n\
             per_user_policy = \"refuse\"\n[listeners]\noverload_lag_ms = 5000\n"
        );
        std::fs::write(&file, text).unwrap();
    };
    write("", 2, "");
    let (tether, port, lines) = start_tether_args("1", &[], &["--config", file.to_str().unwrap()]);
    let (mut ann1, code) = raw_connect(port, "ann-1", "ann");
    assert_eq!(code, 0);
    let (_ann2, code) = raw_connect(port, "ann-2", "ann");
    assert_eq!(code, 0);
    assert_ne!(raw_connect(port, "ann-3", "ann").1, 0, "the third of two");
    assert_eq!(raw_subscribe(&mut ann1, "secret/a"), 0, "no deny list yet");

    write("\"secret/#\"", 3, "max_qos = 1");
    signal(&tether.0, libc::SIGHUP);
    expect_lines(
        &lines,
        &[
            "reloaded: mqtt.deny_subscribe (1 filters)",
            "reloaded: limits.max_connections_per_user = 3",
            "configuration changed in [mqtt]",
        ],
    );
    assert_eq!(
        raw_subscribe(&mut ann1, "secret/b"),
        0x80,
        "denied after the reload"
    );
    let (_ann3, code) = raw_connect(port, "ann-3", "ann");
    assert_eq!(code, 0, "the limit is three now");
    assert_ne!(
        raw_connect(port, "ann-4", "ann").1,
        0,
        "the fourth of three"
    );

    write("\"secret/#\"", 0, "max_qos = 1");
    signal(&tether.0, libc::SIGHUP);
    expect_lines(
        &lines,
        &["not reloaded: limits.max_connections_per_user: with the memory store, turning the limit on or off needs a restart"],
    );
    assert_ne!(raw_connect(port, "ann-4", "ann").1, 0, "still three");
    std::fs::remove_dir_all(&dir).unwrap();
}
