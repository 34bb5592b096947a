#!/usr/bin/env python3
"""Instructions per QoS 1 round trip of two Tether builds, under callgrind.

    python3 bench/scripts/ab_instructions.py BEFORE_BINARY AFTER_BINARY

Timings on a shared VM swing by a third between runs and `perf stat` has no
hardware counters here; callgrind's instruction count does not depend on
what else the machine is doing. Each build serves the same low-rate p2p
load twice, for SHORT and LONG seconds, under `valgrind --tool=callgrind`;
the difference of the two totals divided by the difference in round trips
is the user-space cost of one round trip (a PUBLISH in, its PUBACK out, the
delivery out and its PUBACK in), with start-up, shutdown and idle timers
cancelled out.
"""
import os, re, signal, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import BENCH, free_port, wait_port  # noqa: E402

PAIRS = 100
RATE = 2  # messages/s per publisher: a sparse load, as in the low-load A/B
SHORT, LONG = 5, 15


def instructions(binary, seconds, tmp):
    port = free_port()
    out = os.path.join(tmp, f"cg.{port}")
    env = dict(os.environ)
    env.update(TETHER_NODE__CORES="1", TETHER_LISTENERS__TCP=f"127.0.0.1:{port}",
               TETHER_HTTP__ENABLED="false", TETHER_WEBSOCKET__ENABLED="false",
               TETHER_SYS__INTERVAL_SECS="0", TETHER_LOG__LEVEL="warn")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_port(port, proc)
    r = subprocess.run([BENCH, "p2p", "-c", str(PAIRS), "-q", "1", "-r", str(RATE), "-d", str(seconds),
                        "-p", str(port), "--quiet"], capture_output=True, text=True, timeout=300)
    acked = int(re.search(r"(\d+) acked", r.stdout).group(1))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    total = int(re.search(r"Collected : (\d+)", err).group(1))
    return total, acked


def main():
    before, after = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        for name, binary in (("before", before), ("after", after)):
            (i1, n1), (i2, n2) = instructions(binary, SHORT, tmp), instructions(binary, LONG, tmp)
            per = (i2 - i1) / max(n2 - n1, 1)
            print(f"{name}: {per:,.0f} instructions per round trip "
                  f"({i1:,} for {n1:,} round trips, {i2:,} for {n2:,}); {binary}", flush=True)


if __name__ == "__main__":
    main()
