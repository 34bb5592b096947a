#!/usr/bin/env python3
"""The standard comparison matrix, run by bench/compare.sh.

Every test runs against each broker in turn (Tether with one core, Mosquitto,
FlashMQ and rumqttd with one thread when installed, Tether with all cores),
each broker started fresh on a free port for that test and stopped after
it. FlashMQ runs when FLASHMQ names its binary, rumqttd when it is on PATH
(bench/scripts/brokers.py). With one broker core, the broker is pinned to CPU 0
and the harness to CPU 1, so Tether's per-core efficiency meets single-threaded
Mosquitto on equal terms. Figures land in bench/results/<test>.<broker>.json
and in the generated section of bench/RESULTS.md; the pictures in
bench/results/reports/ (<test>.<broker>.html, and <test>.compare.html with
the brokers' curves on one chart).
"""
import argparse, datetime, json, os, platform, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import brokers  # noqa: E402
from brokers import free_port, wait_port  # noqa: E402,F401  (ab.py imports them from here)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "target/release/tether-bench")
TETHER = os.path.join(ROOT, "target/release/tether")
RESULTS = os.path.join(ROOT, "bench/results")
# One HTML report per test and broker (the last round's), and one page per
# test with every broker's median run on the same charts.
REPORTS = os.path.join(RESULTS, "reports")
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


class Broker:
    """One broker configuration: how to start it and how to drive it."""

    def __init__(self, name, label, pinned):
        self.name, self.label, self.pinned = name, label, pinned

    def harness_args(self):
        # One broker core: broker on CPU 0, harness on CPU 1. All cores:
        # nothing to spare, the harness floats over both.
        return ["--cores", "1", "--cpus", "1"] if self.pinned else ["--cores", "2"]

    def start(self, port, tmp):
        binary = TETHER if self.name.startswith("tether") else self.name
        return brokers.start(binary, port, tmp, pinned=self.pinned)


BROKERS = [b for b in [
    Broker("tether-1", "Tether, 1 core", True),
    Broker("mosquitto", "Mosquitto 2.0", True),
    Broker("flashmq", "FlashMQ, 1 thread", True),
    Broker("rumqttd", "rumqttd, 1 CPU", True),
    Broker("tether-all", "Tether, all cores", False),
] if b.name.startswith("tether") or brokers.available(b.name)]


def matrix(quick, d):
    """(test id, what it measures, harness arguments, figure, better)."""
    n_idle = 2000 if quick else 19000
    n_conn = 2000 if quick else 10000
    subs = 200 if quick else 1000
    pairs = 500 if quick else 5000
    tests = [
        ("idle", f"RSS per idle connection, {n_idle:,} connections",
         f"conn -c {n_idle} -R 0 -d 3 --procs 2", "rss", "lower"),
        ("conn", f"connect rate, {n_conn:,} connections at max rate",
         f"conn -c {n_conn} -R 0 -d 0.5", "conn_rate", "higher"),
    ]
    for q in (0, 1):
        for p in (1, 5):
            for size in (16, 256):
                tests.append((
                    f"fanout-{p}x{subs}-q{q}-{size}B",
                    f"fan-out {p} -> {subs:,} QoS {q}, {size} B: deliveries/s",
                    f"fanout -P {p} -c {subs} -q {q} -s {size} -r 0 -d {d} --inflight 64",
                    "deliveries", "higher"))
    # Flat out, QoS 1, every copy checked: a broker that acknowledges faster
    # than it delivers shows its losses in the integrity column.
    tests.append((f"flatout-1x{subs}-q1-16B", f"fan-out 1 -> {subs:,} QoS 1, 16 B, flat out: deliveries/s",
                  f"fanout -P 1 -c {subs} -q 1 -s 16 -r 0 -d {d} --inflight 64", "deliveries", "higher"))
    tests.append(("lowlat-10x10-q1", "p2p 10 pairs at 10 msg/s each QoS 1: p99",
                  "p2p -c 10 -q 1 -r 10 --inflight 64 -d 10", "p99", "lower"))
    tests.append((f"p2p-{pairs}-q1", f"p2p {pairs:,} pairs QoS 1: round trips/s",
                  f"p2p -c {pairs} -q 1 -r 0 --inflight 4 -d {d}", "round_trips", "higher"))
    tests.append((f"latency-p2p-{pairs}-q1", f"p2p {pairs:,} pairs QoS 1 at 50 % broker CPU: p99",
                  f"p2p -c {pairs} -q 1 --inflight 64 -d {d}", "p99", "lower"))
    return tests


# Fan-out figures are the highest *lossless* delivery rate. A flat-out run
# (-r 0) gives a first estimate; a flat-out QoS 0 figure would count work
# that ends in drops, a flat-out QoS 1 figure a broker that accepts faster
# than its subscribers drain (Mosquitto then drops, Tether disconnects the
# slow consumer with 0x97, and the reconnect churn can depress the estimate
# far below capacity). So the search brackets: from 80 % of the estimate,
# a clean run raises the offer by half, a lossy or short one (< 95 % of the
# offer delivered) halves the distance to the best clean offer.
SEARCH_STEPS = 6
SEARCH_START = 0.8
SEARCH_UP = 1.5
SEARCH_MIN_SHARE = 0.95
# A run that delivers nothing gives no estimate (FlashMQ, flat out at QoS 0,
# reads its publisher and queues every copy, 1 GB of them, without writing
# one in the window): the next offer is then this share of what was offered,
# starting from what the publishers sent times the subscribers.
SEARCH_BLIND = 0.25

# Idle memory and connect rate are cheap and noisy on a shared machine (a
# single idle run can be off by a third): they run ROUNDS times, brokers
# alternating, and the median is reported with every round in the trail.
ROUNDS = 3

# Latency is taken where the broker spends half of one core: a probe run at
# a low rate, then the offered rate is scaled by 50 % / measured CPU (CPU per
# message falls as batching grows, so up to three corrections) until the
# broker's CPU is within 40-60 %; the p99 of that run is reported with the
# CPU it actually used.
LATENCY_PROBE_RATE = 2000.0
LATENCY_CPU_TARGET = 50.0
LATENCY_CPU_BAND = (40.0, 60.0)
LATENCY_STEPS = 3


def clean(r):
    return not r["violations"] and r["integrity"]["lost"] == 0 and r["connect"]["failed"] == 0


def fanout_search(test, b, args, tmp):
    """Returns (figure, report of the run the figure comes from, trail)."""
    words = args.split()
    pubs, subs = int(words[words.index("-P") + 1]), int(words[words.index("-c") + 1])
    r = run_one(test, b, args, tmp)
    trail = [f"flat out: {r['received_per_sec']:,.0f}/s" + ("" if clean(r) else " (lossy)")]
    if clean(r):
        return r["received_per_sec"], r, trail
    best, best_r, best_offer, lossy = 0.0, r, 0.0, None
    offered = SEARCH_START * r["received_per_sec"]
    if not offered:
        offered = SEARCH_BLIND * r["published_per_sec"] * subs
    for _ in range(SEARCH_STEPS):
        per_pub = offered / (pubs * subs)
        r = run_one(test, b, args.replace("-r 0", f"-r {per_pub:.3f}"), tmp)
        got = r["received_per_sec"]
        ok = clean(r) and got >= SEARCH_MIN_SHARE * offered
        trail.append(f"offered {offered:,.0f}/s: {got:,.0f}/s" + ("" if ok else " (lossy or short)"))
        if ok:
            if got > best:
                best, best_r, best_offer = got, r, offered
            offered = offered * SEARCH_UP if lossy is None else (offered + lossy) / 2
        else:
            lossy = offered if lossy is None else min(lossy, offered)
            if best_offer:
                offered = (best_offer + offered) / 2
            else:
                offered = SEARCH_START * min(offered, got) if got else SEARCH_BLIND * offered
    return best, best_r, trail


def latency_at_half_cpu(test, b, args, tmp):
    pairs = int(args.split()[2])
    rate = LATENCY_PROBE_RATE
    trail = []
    r = None
    for step in range(LATENCY_STEPS + 1):
        r = run_one(test, b, args + f" -r {rate / pairs:.3f}", tmp)
        cpu = (r.get("target") or {}).get("cpu_percent", 0.0)
        trail.append(f"{r['acked_per_sec']:,.0f}/s at {cpu:.1f} % CPU: p99 {r['latency_us']['p99'] / 1000:.2f} ms")
        if step > 0 and LATENCY_CPU_BAND[0] <= cpu <= LATENCY_CPU_BAND[1]:
            break
        rate *= LATENCY_CPU_TARGET / max(cpu, 0.5)
    return r["latency_us"]["p99"], r, trail


def figure(report, kind):
    if kind == "rss":
        return (report.get("target") or {}).get("rss_per_connection_bytes", 0.0)
    if kind == "conn_rate":
        return report["connect"]["rate_per_sec"]
    if kind == "deliveries":
        return report["received_per_sec"]
    if kind == "round_trips":
        return report["acked_per_sec"]
    if kind == "p99":
        return report["latency_us"]["p99"]
    raise ValueError(kind)


def fmt(kind, v):
    if kind == "rss":
        return f"{v:,.0f} B"
    if kind == "p99":
        return f"{v / 1000:.2f} ms"
    return f"{v:,.0f}/s"


def committed(report):
    """The copy of a report kept in bench/results/: without the raw
    histograms (the percentiles, the timeline and the HTML report stay)."""
    r = dict(report)
    r.pop("latency_hist", None)
    r.pop("ack_latency_hist", None)
    r.pop("latency_by_sec", None)
    r["connect"] = dict(r["connect"])
    r["connect"].pop("latency_hist", None)
    return r


def run_one(test, broker, args, tmp):
    port = free_port()
    proc = broker.start(port, tmp)
    full = os.path.join(tmp, f"{test}.{broker.name}.json")
    html = os.path.join(REPORTS, f"{test}.{broker.name}.html")
    cmd = [BENCH] + args.split() + ["-p", str(port), "--target-pid", str(proc.pid),
                                    "--json", full, "--report", html, "--quiet"] + broker.harness_args()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if not os.path.exists(full):
        sys.stderr.write(out.stderr + out.stdout)
        raise SystemExit(f"{test} against {broker.name} produced no report")
    with open(full) as f:
        report = json.load(f)
    report["command"] = ("tether-bench " + " ".join(cmd[1:])
                         .replace(full, f"bench/results/{test}.{broker.name}.json")
                         .replace(html, f"bench/results/reports/{test}.{broker.name}.html"))
    report["exit_status"] = out.returncode
    with open(os.path.join(RESULTS, f"{test}.{broker.name}.json"), "w") as f:
        json.dump(committed(report), f, indent=1)
    return report


def compare_page(test, what, figs, tmp):
    """One HTML page with every broker's median run of `test` on the same
    charts (`tether-bench render`)."""
    args = []
    for name, (_, r, _) in figs.items():
        path = os.path.join(tmp, f"{test}.{name}.median.json")
        with open(path, "w") as f:
            json.dump(r, f)
        args.append(f"{name}={path}")
    out = os.path.join(REPORTS, f"{test}.compare.html")
    subprocess.run([BENCH, "render", "--title", f"{test}: {what}", "-o", out] + args, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller counts, 2 s runs")
    ap.add_argument("--duration", type=float, default=None, help="seconds of traffic per run")
    ap.add_argument("--only", default="", help="comma-separated test ids")
    a = ap.parse_args()
    d = a.duration or (2 if a.quick else 5)
    os.makedirs(RESULTS, exist_ok=True)
    os.makedirs(REPORTS, exist_ok=True)
    tests = matrix(a.quick, d)
    if a.only:
        keep = set(a.only.split(","))
        tests = [t for t in tests if t[0] in keep]
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (test, what, args, kind, better) in enumerate(tests, 1):
            searched = test.startswith(("fanout-", "latency-"))
            rounds = 1 if searched else ROUNDS
            runs = {}
            for rnd in range(1, rounds + 1):
                for b in BROKERS:
                    print(f"[{time.time() - started:6.0f}s] ({i}/{len(tests)}) {test} / {b.name}"
                          + (f" (round {rnd}/{rounds})" if rounds > 1 else "") + " ...",
                          end="", flush=True, file=sys.stderr)
                    if test.startswith("fanout-"):
                        v, r, trail = fanout_search(test, b, args, tmp)
                    elif test.startswith("latency-"):
                        v, r, trail = latency_at_half_cpu(test, b, args, tmp)
                    else:
                        r = run_one(test, b, args, tmp)
                        v, trail = figure(r, kind), []
                    runs.setdefault(b.name, []).append((v, r, trail))
                    note = "" if not r["violations"] else f"  VIOLATIONS: {r['violations']}"
                    print(f" {fmt(kind, v)}{note}  {'; '.join(trail)}", file=sys.stderr)
            figs = {}
            for name, got in runs.items():
                # The median run; its report stands for the row, and every
                # round's figure goes into the trail.
                ordered = sorted(got, key=lambda g: g[0])
                v, r, trail = ordered[len(ordered) // 2]
                if len(got) > 1:
                    trail = ["rounds: " + ", ".join(fmt(kind, g[0]) for g in got)]
                    r = dict(r, violations=[x for g in got for x in g[1]["violations"]],
                             connect=dict(r["connect"],
                                          failed=sum(g[1]["connect"]["failed"] for g in got)),
                             rounds=[g[0] for g in got])
                    # The committed JSON is the median round's (run_one
                    # wrote the last round's).
                    with open(os.path.join(RESULTS, f"{test}.{name}.json"), "w") as f:
                        json.dump(committed(r), f, indent=1)
                figs[name] = (v, r, trail)
            compare_page(test, what, figs, tmp)
            rows.append((test, what, args, kind, better, figs))
    write_results(rows, a, time.time() - started)


def ratio(kind, t, m):
    if not t or not m:
        return "n/a"
    return f"{t / m:.2f}x"


def write_results(rows, a, took):
    kernel = platform.release()
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "bench/compare.sh" + (" --quick" if a.quick else "") + (f" --duration {a.duration}" if a.duration else "") + (f" --only {a.only}" if a.only else "")
    out = [BEGIN, "",
           f"### Generated by `{cmd}` on {now} ({took / 60:.1f} min)", "",
           f"- Machine: {os.cpu_count()} CPUs ({cpu}), kernel {kernel}, commit {commit}.",
           f"- Reference: {mosq[0] if mosq else 'mosquitto'} (anonymous, no persistence, no connection cap, "
           "max_queued_messages 1000, pinned to CPU 0)"
           + ("; FlashMQ (`thread_count 1`, pinned)" if any(b.name == "flashmq" for b in BROKERS) else "")
           + ("; rumqttd 0.20 (its sample configuration, pinned)" if any(b.name == "rumqttd" for b in BROKERS) else "")
           + ".",
           "- Tether: release build, `$SYS` off; `1 core` is pinned to CPU 0 with the harness on CPU 1; "
           "`all cores` shares both CPUs with the harness.",
           "- Every run is a fresh broker; JSON per run in `bench/results/` (with the exact command).", ""]
    refs = [b for b in BROKERS if not b.name.startswith("tether")]
    out.append("| test | " + " | ".join(b.label for b in BROKERS) + " | "
               + " | ".join(f"1 core / {b.label.split(',')[0].split(' ')[0]}" for b in refs)
               + " | integrity |")
    out.append("| --- " * (1 + len(BROKERS) + len(refs) + 1) + "|")
    for test, what, args, kind, better, figs in rows:
        t1 = figs.get("tether-1", (0, None, []))[0]
        issues = []
        for name, (_, r, _) in figs.items():
            i = r["integrity"]
            if r["violations"]:
                issues.append(f"{name}: " + "; ".join(r["violations"]))
            elif i["lost"]:
                qos0 = " -q 0 " in f" {args} "
                issues.append(f"{name}: {i['lost']:,} of {i['expected']:,} lost" + (" (QoS 0)" if qos0 else ""))
            if r["connect"]["failed"]:
                issues.append(f"{name}: {r['connect']['failed']} connects failed")
        values = [figs.get(b.name, (0, None, []))[0] for b in BROKERS]
        cells = [fmt(kind, v) if v else "n/a" for v in values]
        ratios = [ratio(kind, t1, figs.get(b.name, (0, None, []))[0]) for b in refs]
        out.append(f"| {what} | " + " | ".join(cells) + " | " + " | ".join(ratios)
                   + f" | {'; '.join(issues) or 'clean'} |")
    out += ["", "Ratios are Tether (1 core) / that broker: above 1 is better for rates, below 1 is better for "
            "memory and latency. Fan-out figures are the highest lossless delivery rate found by "
            "stepping the offered rate down from a flat-out run; latency is p99 at the rate that "
            "costs the broker 50 % of one core (trails below); idle memory and connect rate are "
            f"medians of {ROUNDS} alternating runs.", "", "Commands (per broker, `-p`, `--target-pid`, `--json` and the "
            "CPU flags are added):", ""]
    for test, what, args, kind, better, figs in rows:
        out.append(f"- `{test}`: `tether-bench {args}`")
        for name, (_, _, trail) in figs.items():
            if trail:
                out.append(f"  - {name}: " + "; ".join(trail))
    out += ["", END]
    splice_results(BEGIN, END, "\n".join(out), "## Latest side-by-side run")
    print("\n".join(out[2:]))


def splice_results(begin, end, block, heading):
    """Puts `block` (which starts with `begin` and ends with `end`) into
    bench/RESULTS.md in place of the previous one, or appends it under
    `heading` the first time."""
    path = os.path.join(ROOT, "bench/RESULTS.md")
    text = open(path).read() if os.path.exists(path) else "# Results\n\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n{heading}\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
