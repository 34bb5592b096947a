#!/usr/bin/env python3
"""A reconnect storm (issue 14), run by bench/storm.sh: every client of a
node drops at once and comes straight back, against Tether and Mosquitto in
the same run.

For each broker (one core, pinned to CPU 0; the harness on CPU 1):
1. pass A: `tether-bench conn` connects --count clients from 127.0.0.2 and
   holds them (the RSS at the end of its hold is the pre-storm figure);
2. pass A exits: every connection drops at once; pass B connects the same
   count from 127.0.0.3 at once (`-R 0`): the storm. Its connect phase is
   the time until all are back;
3. pass B holds: the RSS at the end of its hold is the post-storm figure,
   with the same number of clients connected as before.

RSS is sampled every 50 ms from /proc (peak over the whole run). Tether's
loop-lag p99 during the storm comes from the delta of its
`tether_loop_lag_seconds` histogram across pass B's connect phase.
Medians of --rounds; the table goes to bench/RESULTS.md ("Reconnect storm").
"""
import argparse, datetime, json, os, platform, subprocess, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import free_port, wait_port, splice_results  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "target/release/tether-bench")
TETHER = os.path.join(ROOT, "target/release/tether")
OUT = os.path.join(ROOT, "bench/results/storm")
BEGIN, END = "<!-- storm:begin -->", "<!-- storm:end -->"
HOLD_SECS = 4


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """RSS of `pid` every 50 ms, with timestamps."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], False

    def run(self):
        while not self.stop:
            try:
                self.samples.append((time.time(), rss_kib(self.pid)))
            except OSError:
                return
            time.sleep(0.05)

    def at(self, t):
        """The last sample at or before `t`."""
        before = [kib for (ts, kib) in self.samples if ts <= t]
        return before[-1] if before else 0


def lag_buckets(http_port):
    """tether_loop_lag_seconds buckets summed over cores: {le: count}."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in body.splitlines():
        if line.startswith("tether_loop_lag_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            out[le] = out.get(le, 0) + float(line.rsplit(" ", 1)[1])
    return out


def p99(before, after):
    """The 99th percentile bound of the histogram delta, in ms."""
    delta = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = delta.get("+Inf", 0)
    if total <= 0:
        return None
    for le in sorted((k for k in delta if k != "+Inf"), key=float):
        if delta[le] >= 0.99 * total:
            return float(le) * 1000
    return float("inf")


def start(broker, tmp):
    port, http = free_port(), free_port()
    if broker == "mosquitto":
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_connections -1\nsys_interval 0\nlog_dest none\n")
        cmd, env = ["taskset", "-c", "0", "mosquitto", "-c", conf], None
    else:
        env = dict(os.environ, TETHER_NODE__CORES="1", TETHER_LISTENERS__TCP=f"127.0.0.1:{port}",
                   TETHER_HTTP__LISTEN=f"127.0.0.1:{http}", TETHER_WEBSOCKET__ENABLED="false",
                   TETHER_SYS__INTERVAL_SECS="0", TETHER_LOG__LEVEL="warn")
        cmd = ["taskset", "-c", "0", TETHER]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port, http


def harness(port, count, source, path):
    return subprocess.Popen(
        [BENCH, "conn", "-p", str(port), "-c", str(count), "-R", "0", "-d", str(HOLD_SECS),
         "--source-ips", source, "--json", path, "--quiet", "--cores", "1", "--cpus", "1",
         "--client-prefix", f"storm-{source}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(broker, count, rnd):
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, http = start(broker, tmp)
        sampler = Sampler(proc.pid)
        sampler.start()
        base = rss_kib(proc.pid)
        try:
            a = harness(port, count, "127.0.0.2", os.path.join(tmp, "a.json"))
            a.wait()
            dropped = time.time()
            before = lag_buckets(http) if broker == "tether" else None
            b_path = os.path.join(OUT, f"{broker}.{rnd}.json")
            b = harness(port, count, "127.0.0.3", b_path)
            b.wait()
            back = time.time()
            time.sleep(1)  # the closes of pass B settle before the last sample
            after = lag_buckets(http) if broker == "tether" else None
        finally:
            sampler.stop = True
            proc.terminate()
            proc.wait()
        with open(os.path.join(tmp, "a.json")) as f:
            ca = json.load(f)["connect"]
        with open(b_path) as f:
            cb = json.load(f)["connect"]
        pre = sampler.at(dropped - 0.1)
        # pass B's last sample while it still held its clients
        post = sampler.at(back - 0.2)
        peak = max(kib for (_, kib) in sampler.samples)
        return {
            "connected": min(ca["connected"], cb["connected"]),
            "back_secs": cb["connected"] / cb["rate_per_sec"] if cb["rate_per_sec"] else None,
            "connect_p99_ms": cb["latency_us"]["p99"] / 1000,
            "lag_p99_ms": p99(before, after) if before is not None else None,
            "base_mib": base / 1024, "pre_mib": pre / 1024, "peak_mib": peak / 1024, "post_mib": post / 1024,
        }


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=19000)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    started = time.time()
    rows = {"tether": [], "mosquitto": []}
    for rnd in range(a.rounds):
        for broker in rows:
            r = run(broker, a.count, rnd)
            rows[broker].append(r)
            lag = "" if r["lag_p99_ms"] is None else f", loop lag p99 {r['lag_p99_ms']:.0f} ms"
            print(f"[{broker} round {rnd + 1}/{a.rounds}] {r['connected']} back in {r['back_secs']:.2f} s{lag}; "
                  f"RSS pre {r['pre_mib']:.1f} MiB, peak {r['peak_mib']:.1f}, post {r['post_mib']:.1f}", flush=True)
    m = lambda b, k: median([r[k] for r in rows[b]])
    lines = [
        f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {platform.node()}, "
        f"Linux {platform.release()}, {os.cpu_count()} CPUs; took {(time.time() - started) / 60:.1f} min.",
        f"Command: `bench/storm.sh --rounds {a.rounds}`. {a.count:,} clients drop at once (pass A's harness exits) "
        "and reconnect at once from another source address (`tether-bench conn -R 0`); one broker core (CPU 0), "
        "the harness on CPU 1. RSS sampled every 50 ms; pre = with pass A's clients, post = with pass B's (the "
        "same number connected). Medians of rounds.",
        "",
        "| broker | all back in | CONNACK p99 | loop lag p99 | RSS pre | RSS peak | RSS post | post / pre |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in rows:
        lag = m(b, "lag_p99_ms")
        lines.append(
            f"| {b} | {m(b, 'back_secs'):.2f} s | {m(b, 'connect_p99_ms'):.0f} ms | "
            f"{'n/a' if lag is None else f'{lag:.0f} ms'} | {m(b, 'pre_mib'):.1f} MiB | {m(b, 'peak_mib'):.1f} MiB | "
            f"{m(b, 'post_mib'):.1f} MiB | {m(b, 'post_mib') / m(b, 'pre_mib'):.2f} |")
    block = "\n".join(lines) + "\n"
    print()
    print(block)
    if not a.no_write:
        splice_results(BEGIN, END, f"{BEGIN}\n{block}{END}",
                       "## Reconnect storm (issue 14)\n\nGenerated by `bench/storm.sh`.")


if __name__ == "__main__":
    main()
