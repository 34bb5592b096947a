#!/usr/bin/env python3
"""A/B of two Tether builds on the measures a refactor must not regress.

    bench/ab.sh BEFORE_BINARY [AFTER_BINARY]     (AFTER defaults to target/release/tether)
    bench/ab.sh mosquitto --only lowload,lowfan  (Mosquitto as "before": the reference)
    bench/ab.sh flashmq --only fanout-max        (FlashMQ, when FLASHMQ names it; or rumqttd)

Each test runs ROUNDS times per build, the builds alternating (A, B, A, B,
...), each run against a fresh broker on a free port pinned to CPU 0 with
the harness on CPU 1 (one broker core, as in compare.sh). Reported: the
median per build, their ratio, and every round. The measures:

- idle: RSS per idle connection at 19,000 connections;
- p2p: QoS 1 round trips/s, 5,000 pairs, flat out;
- fanout: 1 publisher -> 1,000 subscribers, QoS 1, 16 B, at 50 messages/s
  (50,000 deliveries/s, well below both builds' capacity, so every run is
  lossless): broker CPU, and deliveries/s as a check;
- low load: 2,000 pairs at 2 messages/s each (4,000 round trips/s): broker
  CPU and p99;
- low fan-out: 1 publisher -> 1,000 subscribers at 10 messages/s: broker
  CPU and p99;
- lowlat: 10 pairs at 10 messages/s each (100 round trips/s): p50, p99 and
  CPU (a core that notices its sockets late shows here first);
- fanout-max: 1 publisher -> 1,000 subscribers, QoS 1, 16 B, flat out:
  deliveries/s, and the messages lost (the harness checks every copy).

Every run must be clean (no loss, no failed connection); a dirty run is
reported as such and still counted.
"""
import argparse, datetime, json, os, platform, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import brokers  # noqa: E402
from figures import fmt, take  # noqa: E402
from compare import BENCH, clean  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Runs per build and test (medians are reported); --rounds overrides.
ROUNDS = 3

# (id, what, harness arguments, figures to take: (name, path in the report, unit))
TESTS = [
    ("idle", "RSS per idle connection, 19,000 connections", "conn -c 19000 -R 0 -d 3 --procs 2",
     [("B/conn", ("target", "rss_per_connection_bytes"), "B")]),
    ("p2p", "p2p 5,000 pairs QoS 1, flat out: round trips/s", "p2p -c 5000 -q 1 -r 0 --inflight 4 -d 5",
     [("round trips/s", ("acked_per_sec",), "/s")]),
    ("fanout", "fan-out 1 -> 1,000 QoS 1, 16 B, 50,000 deliveries/s: broker CPU",
     "fanout -P 1 -c 1000 -q 1 -s 16 -r 50 -d 5 --inflight 64",
     [("CPU %", ("target", "cpu_percent"), "%"), ("deliveries/s", ("received_per_sec",), "/s")]),
    ("lowload", "p2p 2,000 pairs at 2 msg/s each (4,000/s): broker CPU and p99",
     "p2p -c 2000 -q 1 --inflight 64 -r 2 -d 10",
     [("CPU %", ("target", "cpu_percent"), "%"), ("p99 ms", ("latency_us", "p99"), "ms")]),
    ("lowfan", "fan-out 1 -> 1,000 QoS 1 at 10 msg/s (10,000 deliveries/s): broker CPU and p99",
     "fanout -P 1 -c 1000 -q 1 -s 16 -r 10 -d 10 --inflight 64",
     [("CPU %", ("target", "cpu_percent"), "%"), ("p99 ms", ("latency_us", "p99"), "ms")]),
    ("lowlat", "p2p 10 pairs at 10 msg/s each (100/s): p50, p99 and broker CPU",
     "p2p -c 10 -q 1 --inflight 64 -r 10 -d 10",
     [("p50 ms", ("latency_us", "p50"), "ms"), ("p99 ms", ("latency_us", "p99"), "ms"),
      ("CPU %", ("target", "cpu_percent"), "%")]),
    ("fanout-max", "fan-out 1 -> 1,000 QoS 1, 16 B, flat out: deliveries/s and messages lost",
     "fanout -P 1 -c 1000 -q 1 -s 16 -r 0 -d 6 --inflight 64",
     [("deliveries/s", ("received_per_sec",), "/s"), ("lost", ("integrity", "lost"), "n")]),
]


def run(binary, args, tmp):
    port = brokers.free_port()
    proc = brokers.start(binary, port, tmp)
    out_json = os.path.join(tmp, "r.json")
    cmd = [BENCH] + args.split() + ["-p", str(port), "--target-pid", str(proc.pid), "--json", out_json,
                                    "--quiet", "--cores", "1", "--cpus", "1"]
    try:
        subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    finally:
        brokers.stop(proc)
    with open(out_json) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("before")
    ap.add_argument("after", nargs="?", default=os.path.join(ROOT, "target/release/tether"))
    ap.add_argument("--only", default="", help="comma-separated test ids")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="runs per build and test")
    a = ap.parse_args()
    builds = [("before", a.before), ("after", a.after)]
    only = set(filter(None, a.only.split(",")))
    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for test, what, args, figures in TESTS:
            if only and test not in only:
                continue
            got = {name: {f[0]: [] for f in figures} for name, _ in builds}
            dirty = {name: 0 for name, _ in builds}
            for rnd in range(a.rounds):
                for name, binary in builds:
                    r = run(binary, args, tmp)
                    if not clean(r):
                        dirty[name] += 1
                    for fig, path, unit in figures:
                        got[name][fig].append(take(r, path, unit))
                    shown = ", ".join(f"{fig} {fmt(got[name][fig][-1], unit)}" for fig, _, unit in figures)
                    print(f"[{test}] round {rnd + 1} {name}: {shown}" + ("" if clean(r) else " (NOT CLEAN)"),
                          flush=True)
            for fig, _, unit in figures:
                med = {name: statistics.median(got[name][fig]) for name, _ in builds}
                ratio = med["after"] / med["before"] if med["before"] else float("nan")
                rounds = " / ".join(
                    f"{name}: " + ", ".join(fmt(v, unit) for v in got[name][fig]) for name, _ in builds)
                rows.append((what if fig == figures[0][0] else "", fig, fmt(med["before"], unit),
                             fmt(med["after"], unit), f"{ratio:.2f}", rounds,
                             sum(dirty.values())))
    took = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() / 60
    print()
    print(f"A/B on {platform.node()}, kernel {platform.release()}, {started:%Y-%m-%d %H:%M} UTC "
          f"({took:.1f} min), medians of {a.rounds}, builds alternating, one broker core (CPU 0), "
          f"harness on CPU 1")
    print(f"before: {a.before}\nafter:  {a.after}\n")
    print("| test | figure | before | after | after/before | rounds | unclean runs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
