//! One short end-to-end run of every scenario against an in-process
//! gateway, asserting the counts the harness reports (not its speed).

use std::process::Command;

use clap::Parser;

#[path = "../../tests/common/pki.rs"]
#[allow(dead_code)] // the server side is enough here
mod pki;
use tether::{Config, Gateway};
use tether_bench::cli::Cli;
use tether_bench::{Plan, Report};

fn gateway() -> Gateway {
    let mut cfg = Config::default();
    cfg.sys.interval_secs = 0;
    cfg.node.cores = 2;
    cfg.listeners.tcp = "127.0.0.1:0".parse().unwrap();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.websocket.listen = "127.0.0.1:0".parse().unwrap();
    Gateway::start(cfg).expect("gateway starts")
}

/// Runs `args` (a scenario and its options) in this process against `gw`.
fn bench(gw: &Gateway, args: &str) -> Report {
    bench_at(gw.tcp_addr.port(), args)
}

/// Runs `args` against the listener on `port`.
fn bench_at(port: u16, args: &str) -> Report {
    let port = port.to_string();
    let argv = ["tether-bench"]
        .into_iter()
        .chain(args.split_whitespace())
        .chain(["-p", &port, "--quiet", "--cores", "2", "-R", "0"]);
    let cli = Cli::try_parse_from(argv).expect("valid arguments");
    let (name, opts) = cli.scenario.parts().expect("an MQTT scenario");
    let plan = Plan::new(name, opts).expect("valid plan");
    tether_bench::run(plan).expect("run completes")
}

/// Runs the `tether-bench` binary with `args` and asserts it succeeded.
fn bench_bin<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_tether-bench"))
        .args(args)
        .output()
        .expect("tether-bench runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits (bounded) for a condition the gateway reaches asynchronously.
fn until(cond: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn assert_clean(r: &Report) {
    assert_eq!(r.connect.failed, 0, "{}", r.summary());
    assert!(r.published > 0, "{}", r.summary());
    assert!(r.violations.is_empty(), "{}", r.summary());
    let i = r.integrity;
    assert_eq!((i.lost, i.reordered), (0, 0), "{}", r.summary());
    assert_eq!(i.distinct, i.expected, "{}", r.summary());
    assert_eq!(
        r.latency_us.count, i.distinct,
        "one latency sample per fresh message"
    );
}

#[test]
fn conn_opens_and_holds_every_connection() {
    let gw = gateway();
    let r = bench(&gw, "conn -c 300 -d 0.2");
    assert_eq!((r.connect.connected, r.connect.failed), (300, 0));
    assert_eq!(r.connect.latency_us.count, 300);
    assert!(r.connect.rate_per_sec > 0.0);
    until(
        || gw.stats().connections == 0,
        "every client disconnected at the end",
    );
}

#[test]
fn fanout_delivers_every_message_to_every_subscriber() {
    let gw = gateway();
    let r = bench(&gw, "fanout -c 20 -P 2 -q 1 -r 200 -d 0.5");
    assert_clean(&r);
    assert_eq!(r.integrity.expected, r.published * 20);
    assert_eq!(r.integrity.duplicates, 0);
    assert_eq!(r.acked, r.published, "every QoS 1 publish acknowledged");
}

#[test]
fn p2p_pairs_at_qos_0_and_fanin_at_qos_2() {
    let gw = gateway();
    let r = bench(&gw, "p2p -c 50 -r 100 -d 0.5");
    assert_clean(&r);
    assert_eq!(r.integrity.expected, r.published);
    let r = bench(&gw, "fanin -c 20 -q 2 -r 100 -d 0.5 -V 5");
    assert_clean(&r);
    assert_eq!(r.integrity.duplicates, 0, "exactly once");
}

#[test]
fn websocket_clients_fan_out_and_ride_a_storm() {
    let gw = gateway();
    let ws = gw.ws_addr.expect("websocket listener").port();
    let r = bench_at(ws, "fanout -c 20 -P 2 -q 1 -r 200 -d 0.5 --transport ws");
    assert_clean(&r);
    assert_eq!(r.integrity.expected, r.published * 20);
    assert_eq!(r.acked, r.published, "every QoS 1 publish acknowledged");
    let r = bench_at(
        ws,
        "storm -c 10 -q 1 -r 100 -d 1 --storm-pct 50 -V 5 --transport ws",
    );
    assert_clean(&r);
    assert!(
        r.reconnects > 2,
        "the storm dropped clients: {}",
        r.summary()
    );
}

#[test]
fn tls_and_wss_clients_verify_the_broker_and_lose_nothing() {
    let ca = pki::Ca::new("bench CA");
    let dir = pki::dir("bench-tls");
    let leaf = ca.server();
    let mut cfg = tether::Config::default();
    cfg.sys.interval_secs = 0;
    cfg.node.cores = 2;
    cfg.listeners.tcp = "127.0.0.1:0".parse().unwrap();
    cfg.http.enabled = false;
    cfg.websocket.enabled = false;
    cfg.tls.enabled = true;
    cfg.tls.listen = "127.0.0.1:0".parse().unwrap();
    cfg.tls.wss_listen = "127.0.0.1:0".parse().unwrap();
    cfg.tls.cert_file = pki::write(&dir, "server.pem", &leaf.cert);
    cfg.tls.key_file = pki::write(&dir, "server.key", &leaf.key);
    let gw = Gateway::start(cfg).expect("gateway starts");
    let cafile = pki::write(&dir, "ca.pem", &ca.pem());
    let trust = format!("--cafile {} --server-name localhost", cafile.display());
    let tls = gw.tls_addr.unwrap().port();
    let r = bench_at(
        tls,
        &format!("p2p -c 20 -q 1 -r 100 -d 0.5 --transport tls {trust}"),
    );
    assert_clean(&r);
    assert_eq!(r.acked, r.published);
    let wss = gw.wss_addr.unwrap().port();
    let r = bench_at(
        wss,
        &format!("fanout -c 10 -P 2 -q 1 -r 100 -d 0.5 --transport wss {trust}"),
    );
    assert_clean(&r);
    assert_eq!(r.integrity.expected, r.published * 10);

    // A CA that did not sign the broker's certificate: every client fails,
    // with the reason.
    let other = pki::write(&dir, "other.pem", &pki::Ca::new("other").pem());
    let r = bench_at(
        tls,
        &format!(
            "conn -c 3 -d 0 --transport tls --cafile {} --server-name localhost",
            other.display()
        ),
    );
    assert_eq!(r.connect.failed, 3, "{}", r.summary());
}

#[test]
fn shared_group_sees_each_message_once() {
    let gw = gateway();
    let r = bench(&gw, "sharedsub -c 4 -P 2 -q 1 -r 300 -d 0.5");
    assert_clean(&r);
    assert_eq!(r.integrity.distinct, r.published);
    assert_eq!(r.integrity.duplicates, 0);
}

#[test]
fn storm_reconnects_without_losing_qos1_messages() {
    // Two cores: reconnects land on either, so sessions move between cores,
    // often several times within the move window. This scenario found a
    // reordering there (see qos1_order_is_kept_while_a_session_hops_between_cores
    // in tests/it/sessions.rs).
    let gw = gateway();
    let r = bench(&gw, "storm -c 20 -q 1 -r 100 -d 2 --storm-pct 50 -V 5");
    assert_clean(&r);
    assert!(
        r.reconnects > 5,
        "the storm dropped clients: {}",
        r.summary()
    );
}

#[test]
fn separate_pub_and_sub_fleets_learn_counts_from_end_markers() {
    let gw = gateway();
    let sub = std::thread::scope(|s| {
        let sub = s.spawn(|| bench(&gw, "sub -c 10 -q 1 -d 1.5 --client-prefix s"));
        // The subscribers subscribe within their connect phase; publishing
        // starts after the publishers' own connect phase, so give the
        // subscribers a head start by waiting for their sessions.
        until(|| gw.stats().connections >= 10, "subscribers connect");
        let p = bench(&gw, "pub -c 10 -q 1 -r 100 -d 0.5 --client-prefix p");
        assert_eq!(
            p.integrity.expected, 0,
            "a publisher fleet receives nothing"
        );
        (sub.join().unwrap(), p.published)
    });
    let (r, published) = sub;
    assert_eq!(r.integrity.expected, published, "{}", r.summary());
    assert_eq!(r.integrity.lost, 0);
}

#[test]
fn worker_processes_merge_and_refused_connections_are_reported() {
    let gw = gateway();
    let dir = std::env::temp_dir().join(format!("tether-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("p2p.json");
    let port = gw.tcp_addr.port().to_string();
    bench_bin(
        [
            "p2p", "-c", "40", "-q", "1", "-r", "50", "-d", "0.5", "--procs", "2",
        ]
        .into_iter()
        .chain(["--quiet", "-R", "0", "-p", &port, "--json"])
        .map(std::ffi::OsStr::new)
        .chain([json.as_os_str()]),
    );
    let r: Report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r.connect.connected, 80);
    assert_clean(&r);

    // A port nobody listens on: every client fails, with the reason, and the
    // exit status says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    let out = Command::new(env!("CARGO_BIN_EXE_tether-bench"))
        .args(["conn", "-c", "5", "-d", "0", "--quiet", "-p", &port])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("5 x tcp: connection refused"), "{text}");
}

/// `--report` over worker processes: one self-contained page carrying every
/// series (counts from the parent's timeline, latency merged from the
/// workers' per-second histograms, the broker's RSS and CPU), which
/// headless Chromium draws (`examples/test/report.mjs`); `render` puts two
/// runs on the same charts.
#[test]
fn html_reports_carry_every_series_and_draw() {
    let gw = gateway();
    let dir = std::env::temp_dir().join(format!("tether-bench-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (html, json) = (dir.join("p2p.html"), dir.join("p2p.json"));
    let (port, pid) = (
        gw.tcp_addr.port().to_string(),
        std::process::id().to_string(),
    );
    bench_bin(
        [
            "p2p", "-c", "20", "-q", "1", "-r", "20", "-d", "2.5", "--procs", "2",
        ]
        .into_iter()
        .chain(["--quiet", "-R", "0", "-p", &port, "--target-pid", &pid])
        .map(std::ffi::OsStr::new)
        .chain([
            std::ffi::OsStr::new("--report"),
            html.as_os_str(),
            std::ffi::OsStr::new("--json"),
            json.as_os_str(),
        ]),
    );
    let r: Report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_clean(&r);
    assert!(
        r.timeline.len() >= 3,
        "a point a second: {:?}",
        r.timeline.len()
    );
    assert!(r
        .timeline
        .iter()
        .any(|p| p.phase == "running" && p.rss_bytes.is_some()));
    let per_sec: u64 = r.latency_by_sec.values().map(|h| h.histogram().len()).sum();
    assert_eq!(
        per_sec, r.latency_us.count,
        "every latency sample is in a second"
    );
    assert_eq!(r.offered_per_sec, 400.0, "20 publishers at 20 msg/s");

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
    for tag in ["svg", "figure", "section", "table", "script"] {
        assert_eq!(
            page.matches(&format!("<{tag}")).count(),
            page.matches(&format!("</{tag}>")).count(),
            "<{tag}> is balanced"
        );
    }
    let series = [
        "offered",
        "sent",
        "delivered",
        "acked",
        "connections",
        "p50",
        "p99",
        "p99.9",
        "latency",
        "ack latency",
        "broker RSS",
        "broker CPU",
    ];
    for s in series {
        let tag = format!("data-series=\"{s}\" data-points=\"");
        let at = page
            .find(&tag)
            .unwrap_or_else(|| panic!("series {s} is on the page"));
        let n: usize = page[at + tag.len()..]
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(n >= 2, "series {s} has points ({n})");
    }
    let data = page
        .split("<script id=\"series\" type=\"application/json\">")
        .nth(1)
        .and_then(|s| s.split("</script>").next())
        .expect("the embedded data");
    let data: serde_json::Value = serde_json::from_str(data).expect("the embedded data is JSON");
    assert!(data["messages"]["delivered"].as_array().unwrap().len() >= 2);

    let cmp = dir.join("compare.html");
    bench_bin([
        "render".to_string(),
        format!("one={}", json.display()),
        format!("two={}", json.display()),
        "-o".to_string(),
        cmp.display().to_string(),
    ]);
    let page = std::fs::read_to_string(&cmp).unwrap();
    for s in [
        "delivered:one",
        "delivered:two",
        "p99:two",
        "broker CPU:one",
    ] {
        assert!(
            page.contains(&format!("data-series=\"{s}\"")),
            "{s} on the comparison"
        );
    }

    // Drawn by a browser engine: every series a path with a box, the
    // screenshot not blank.
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    assert!(
        std::path::Path::new(examples)
            .join("node_modules/playwright-core")
            .is_dir(),
        "examples/node_modules is missing: run `npm ci` in examples/ (tests/run.sh does)"
    );
    let out = Command::new("node")
        .arg("test/report.mjs")
        .arg(&html)
        .arg(series.join(","))
        .arg(dir.join("p2p.png"))
        .current_dir(examples)
        .output()
        .expect("node is missing: install Node.js 18+ (tests/run.sh does)");
    assert!(
        out.status.success(),
        "report.mjs failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
