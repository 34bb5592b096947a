#!/usr/bin/env python3
"""Real time at every load (issue 27): Tether against the reference brokers,
in the same run, brokers alternating within every round.

    bench/realtime.sh                         # every test, 3 rounds
    bench/realtime.sh --only lowlat,fanout-max --rounds 5
    bench/realtime.sh --tether /tmp/tether-old --syscalls

The tests (one broker core pinned to CPU 0, the harness on CPU 1):

- lowlat: p2p, 10 pairs at 10 msg/s each (100 round trips/s): p50, p99, CPU;
- lowload: p2p, 2,000 pairs at 2 msg/s (4,000/s): p50, p99, CPU;
- midload: p2p, 2,000 pairs at 10 msg/s (20,000/s): p50, p99, CPU;
- fanout-max: 1 publisher -> 1,000 subscribers, QoS 1, 16 B, flat out:
  deliveries/s and messages lost (the harness checks every copy);
- p2p-max: p2p, 1,000 pairs, QoS 1, 4 in flight each, flat out: round
  trips/s.

Brokers: the Tether binary (target/release/tether by default), Mosquitto,
FlashMQ when FLASHMQ names its binary, rumqttd when it is on PATH; a missing
reference is skipped. Every figure is the median of the rounds, with each
round listed. --syscalls also counts, with `perf stat`, the broker's socket
system calls during fanout-max and reports them per delivery.
"""
import argparse, datetime, json, os, platform, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import brokers  # noqa: E402
from figures import fmt, take  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "target/release/tether-bench")
ROUNDS = 3
# The harness's own timeout for one run, seconds (the longest test is 10 s).
RUN_TIMEOUT = 300
# --syscalls: perf stat starts this long into a flat-out run and counts for
# PERF_SECONDS, inside the run's steady part.
PERF_DELAY = 2.0
PERF_SECONDS = 3
SOCKET_CALLS = ("sendto", "recvfrom", "write", "read", "writev", "readv", "sendmsg", "recvmsg",
                "epoll_wait", "epoll_ctl", "io_uring_enter")

LATENCY = [("p50 ms", ("latency_us", "p50"), "ms"), ("p99 ms", ("latency_us", "p99"), "ms"),
           ("CPU %", ("target", "cpu_percent"), "%")]
TESTS = [
    ("lowlat", "p2p 10 pairs at 10 msg/s (100/s)", "p2p -c 10 -q 1 -r 10 -d 10 --inflight 64", LATENCY),
    ("lowload", "p2p 2,000 pairs at 2 msg/s (4,000/s)", "p2p -c 2000 -q 1 -r 2 -d 10 --inflight 64",
     LATENCY),
    ("midload", "p2p 2,000 pairs at 10 msg/s (20,000/s)", "p2p -c 2000 -q 1 -r 10 -d 10 --inflight 64",
     LATENCY),
    ("fanout-max", "fan-out 1 -> 1,000 QoS 1, 16 B, flat out",
     "fanout -P 1 -c 1000 -q 1 -s 16 -r 0 -d 6 --inflight 64",
     [("deliveries/s", ("received_per_sec",), "/s"), ("lost", ("integrity", "lost"), "n"),
      ("CPU %", ("target", "cpu_percent"), "%")]),
    ("p2p-max", "p2p 1,000 pairs QoS 1, 4 in flight, flat out",
     "p2p -c 1000 -q 1 -r 0 --inflight 4 -d 6",
     [("round trips/s", ("acked_per_sec",), "/s"), ("CPU %", ("target", "cpu_percent"), "%")]),
]


def label(name, tether, before):
    """A row's name: the Tether under test, the older build, or a reference."""
    if name == tether:
        return "Tether"
    if name == before:
        return f"Tether before ({os.path.basename(name)})"
    return brokers.label(name)


def perf_counts(pid):
    """The broker's system calls over PERF_SECONDS, by name (perf stat)."""
    events = ",".join(f"syscalls:sys_enter_{c}" for c in SOCKET_CALLS)
    out = subprocess.run(["perf", "stat", "-x", ",", "-e", events, "-p", str(pid), "--",
                          "sleep", str(PERF_SECONDS)], capture_output=True, text=True).stderr
    counts = {}
    for line in out.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_"):
            try:
                counts[parts[2].removeprefix("syscalls:sys_enter_")] = int(parts[0])
            except ValueError:
                pass
    return counts


def run(name, args, tmp, syscalls):
    port = brokers.free_port()
    proc = brokers.start(name, port, tmp)
    out_json = os.path.join(tmp, "r.json")
    cmd = [BENCH] + args.split() + ["-p", str(port), "--target-pid", str(proc.pid), "--json", out_json,
                                    "--quiet", "--cores", "1", "--cpus", "1"]
    counts = None
    try:
        harness = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if syscalls:
            time.sleep(PERF_DELAY)
            counts = perf_counts(proc.pid)
        harness.wait(RUN_TIMEOUT)
    finally:
        brokers.stop(proc)
    with open(out_json) as f:
        report = json.load(f)
    if counts is not None:
        report["syscalls"] = counts
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tether", default=os.path.join(ROOT, "target/release/tether"))
    ap.add_argument("--before", help="an older Tether binary, run as one more broker (before/after)")
    ap.add_argument("--only", default="", help="comma-separated test ids")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--brokers", default="", help="comma-separated subset: tether,mosquitto,flashmq,rumqttd")
    ap.add_argument("--syscalls", action="store_true", help="count socket system calls in fanout-max")
    ap.add_argument("--json", help="write every round's figures here")
    a = ap.parse_args()
    wanted = set(filter(None, a.brokers.split(",")))
    names = [n for n in [a.tether, *brokers.REFERENCES]
             if (not wanted or ("tether" if n == a.tether else n) in wanted) and brokers.available(n)]
    if a.before:
        names.insert(1, a.before)
    skipped = [n for n in brokers.REFERENCES if n not in names and (not wanted or n in wanted)]
    only = set(filter(None, a.only.split(",")))
    tests = [t for t in TESTS if not only or t[0] in only]
    started = datetime.datetime.now(datetime.timezone.utc)
    total = len(tests) * a.rounds * len(names)
    done = 0
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        for test, what, args, figures in tests:
            for rnd in range(a.rounds):
                for name in names:
                    done += 1
                    r = run(name, args, tmp, a.syscalls and test == "fanout-max")
                    row = {fig: take(r, path, unit) for fig, path, unit in figures}
                    if "syscalls" in r:
                        delivered = r.get("received_per_sec", 0) * PERF_SECONDS
                        writes = sum(r["syscalls"].get(c, 0) for c in ("sendto", "write", "writev", "sendmsg"))
                        calls = sum(r["syscalls"].values())
                        row["deliveries per write"] = delivered / writes if writes else 0.0
                        row["syscalls per 1,000 deliveries"] = 1000 * calls / delivered if delivered else 0.0
                        # CPU seconds per second over deliveries per second.
                        row["CPU ns per delivery"] = (
                            1e7 * take(r, ("target", "cpu_percent"), "%") / r["received_per_sec"]
                            if r.get("received_per_sec") else 0.0)
                    got.setdefault(test, {}).setdefault(name, []).append(row)
                    shown = ", ".join(f"{k} {fmt(v, 'x') if k not in ('p50 ms', 'p99 ms', 'CPU %') else fmt(v, 'ms' if 'ms' in k else '%')}"
                                      for k, v in row.items())
                    print(f"[{done}/{total}] {test} round {rnd + 1} {label(name, a.tether, a.before)}: {shown}", flush=True)
    took = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() / 60
    kernel = platform.release()
    print()
    print(f"Run on {platform.node()} ({os.cpu_count()} CPUs), kernel {kernel}, "
          f"{started:%Y-%m-%d %H:%M} UTC, {took:.1f} min; medians of {a.rounds} rounds, brokers "
          f"alternating; one broker core on CPU 0, harness on CPU 1.")
    print(f"Command: bench/realtime.sh {' '.join(sys.argv[1:])}".rstrip())
    if skipped:
        print(f"Skipped (not installed): {', '.join(skipped)}")
    print()
    tether = names[0] if names and names[0] == a.tether else None
    for test, what, args, figures in tests:
        rows = got.get(test, {})
        fig_names = list(next(iter(rows.values()))[0].keys()) if rows else []
        print(f"**{what}** (`{args}`)\n")
        print("| broker | " + " | ".join(fig_names) + " | rounds |")
        print("| --- | " + " | ".join("---:" for _ in fig_names) + " | --- |")
        for name, runs in rows.items():
            med = {f: statistics.median(r[f] for r in runs) for f in fig_names}
            cells = []
            for f in fig_names:
                unit = "ms" if "ms" in f else "%" if "%" in f else "x"
                cell = fmt(med[f], unit) if unit != "x" else (f"{med[f]:,.1f}" if med[f] < 100 else f"{med[f]:,.0f}")
                if tether and name != tether and f in ("p50 ms", "p99 ms", "CPU %", "deliveries/s", "round trips/s"):
                    t = statistics.median(r[f] for r in rows[tether])
                    if med[f]:
                        cell += f" ({t / med[f]:.2f}x)"
                cells.append(cell)
            trail = "; ".join(", ".join(f"{v:,.2f}" if v < 100 else f"{v:,.0f}" for v in r.values()) for r in runs)
            print(f"| {label(name, a.tether, a.before)} | " + " | ".join(cells) + f" | {trail} |")
        print()
    if tether:
        print("Ratios in brackets: Tether's median over that broker's (for latency and CPU, below 1 is better).")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"started": started.isoformat(), "kernel": kernel, "rounds": a.rounds,
                       "results": {t: {label(n, a.tether, a.before): v for n, v in r.items()}
                                   for t, r in got.items()}},
                      f, indent=1)


if __name__ == "__main__":
    main()
