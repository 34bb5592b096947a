#!/usr/bin/env python3
"""Full against resumed TLS handshakes per broker core (issue 14), run by
bench/handshake.sh, against Tether and Mosquitto in the same run.

Each broker serves mqtts with one core (pinned to CPU 0) and the same
certificate: EC P-256, then RSA 2048 (many fleets still serve RSA, whose
signature is what a resumption skips). Client processes (Python's ssl, i.e. OpenSSL, pinned to
CPU 1) loop for --secs: TCP connect, TLS handshake, MQTT CONNECT, CONNACK,
DISCONNECT, close. In `full` mode every handshake starts afresh; in
`resumed` mode each offers the ticket its previous connection received
(TLS 1.3 tickets are single use, and every resumption brings a new one).

The clients share one CPU and may be the bottleneck, so the figure that
describes the broker is handshakes per second of *broker CPU*: handshakes
over the broker's user+system CPU time in the window, read from
/proc/PID/stat. That is what one core would do if the clients kept it busy.
Tether gets its keys from tls.ticket_key_file, as a fleet would; every
resumed handshake is checked (`session_reused`), and its share reported.
Medians of --rounds; the table goes to bench/RESULTS.md ("TLS handshakes").
"""
import argparse, datetime, multiprocessing, os, platform, socket, ssl, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import free_port, wait_port, splice_results  # noqa: E402
from storm_bench import median  # noqa: E402
from transports import make_pki  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TETHER = os.path.join(ROOT, "target/release/tether")
BEGIN, END = "<!-- handshake:begin -->", "<!-- handshake:end -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONNECT = bytes([0x10, 14, 0, 4]) + b"MQTT\x04\x02\x00\x3c" + b"\x00\x02hs"
DISCONNECT = bytes([0xE0, 0])


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start(broker, tmp, port):
    cert, key = os.path.join(tmp, "server.pem"), os.path.join(tmp, "server.key")
    if broker == "mosquitto":
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\nallow_anonymous true\n"
                    "persistence false\nmax_connections -1\nsys_interval 0\nlog_dest none\n")
        cmd, env = ["taskset", "-c", "0", "mosquitto", "-c", conf], None
    else:
        keys = os.path.join(tmp, "tickets.keys")
        with open(keys, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        env = dict(os.environ, TETHER_NODE__CORES="1", TETHER_LISTENERS__TCP=f"127.0.0.1:{free_port()}",
                   TETHER_TLS__ENABLED="true", TETHER_TLS__LISTEN=f"127.0.0.1:{port}", TETHER_TLS__WSS="false",
                   TETHER_TLS__CERT_FILE=cert, TETHER_TLS__KEY_FILE=key, TETHER_TLS__TICKET_KEY_FILE=keys,
                   TETHER_HTTP__ENABLED="false", TETHER_WEBSOCKET__ENABLED="false",
                   TETHER_SYS__INTERVAL_SECS="0", TETHER_LOG__LEVEL="warn")
        cmd = ["taskset", "-c", "0", TETHER]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


def client(args):
    """One client process: handshakes until `until`; returns (done, reused, failed)."""
    port, cafile, resume, until = args
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["mqtt"])
    session, done, reused, failed = None, 0, 0, 0
    while time.time() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost",
                                     session=session if resume else None) as s:
                    s.sendall(CONNECT)
                    connack = b""
                    while len(connack) < 4:
                        chunk = s.recv(4 - len(connack))
                        if not chunk:
                            raise ConnectionError("closed before CONNACK")
                        connack += chunk
                    if connack != b"\x20\x02\x00\x00":
                        raise ConnectionError(f"CONNACK {connack!r}")
                    done += 1
                    reused += s.session_reused
                    session = s.session
                    s.sendall(DISCONNECT)
        except (OSError, ConnectionError):
            failed += 1
    return done, reused, failed


def run(broker, mode, a, tmp):
    port = free_port()
    proc = start(broker, tmp, port)
    try:
        # Warm up (and give resumed mode its first tickets) before the window.
        warm = time.time() + 1
        pool_args = [(port, os.path.join(tmp, "ca.pem"), mode == "resumed", warm)] * a.clients
        with multiprocessing.Pool(a.clients, initializer=os.sched_setaffinity, initargs=(0, {1})) as pool:
            pool.map(client, pool_args)
            cpu0, t0 = cpu_secs(proc.pid), time.time()
            until = t0 + a.secs
            out = pool.map(client, [(p, c, r, until) for (p, c, r, _) in pool_args])
            wall, cpu = time.time() - t0, cpu_secs(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait()
    done = sum(o[0] for o in out)
    return {
        "per_sec": done / wall,
        "per_cpu_sec": done / cpu if cpu > 0 else None,
        "broker_cpu": cpu / wall,
        "reused": sum(o[1] for o in out) / done if done else 0.0,
        "failed": sum(o[2] for o in out),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=4, help="client processes (all on CPU 1)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    started = time.time()
    rows = {(k, b, m): [] for k in ("ec", "rsa") for b in ("tether", "mosquitto") for m in ("full", "resumed")}
    for kind in ("ec", "rsa"):
        with tempfile.TemporaryDirectory() as tmp:
            make_pki(tmp, kind)
            for rnd in range(a.rounds):
                for (k, b, m) in rows:
                    if k != kind:
                        continue
                    r = run(b, m, a, tmp)
                    rows[(k, b, m)].append(r)
                    print(f"[{k} {b} {m} round {rnd + 1}/{a.rounds}] {r['per_sec']:.0f}/s at "
                          f"{r['broker_cpu'] * 100:.0f} % broker CPU = {r['per_cpu_sec']:.0f} per CPU-second; "
                          f"reused {r['reused'] * 100:.0f} %, failed {r['failed']}", flush=True)
    m = lambda k, f: median([r[f] for r in rows[k]])
    lines = [
        f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {platform.node()}, "
        f"Linux {platform.release()}, {os.cpu_count()} CPUs; took {(time.time() - started) / 60:.1f} min.",
        f"Command: `bench/handshake.sh --rounds {a.rounds}`. One broker core (CPU 0), an EC P-256 or RSA 2048 "
        "certificate; "
        f"{a.clients} Python/OpenSSL client processes on CPU 1, each looping connect, handshake, MQTT CONNECT, "
        f"CONNACK, DISCONNECT for {a.secs:g} s. *Per broker CPU-second* = handshakes / the broker's user+system "
        "CPU time: what one core does when the clients keep it busy (here the clients' CPU is the limit). "
        "Tether seals tickets with a key from tls.ticket_key_file. Medians of rounds.",
        "",
        "| key | broker | handshake | per second | broker CPU | per broker CPU-second | resumed | vs full, same broker |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (k, b, mode) in rows:
        full = m((k, b, "full"), "per_cpu_sec")
        own = m((k, b, mode), "per_cpu_sec")
        lines.append(
            f"| {k} | {b} | {mode} | {m((k, b, mode), 'per_sec'):,.0f} | "
            f"{m((k, b, mode), 'broker_cpu') * 100:.0f} % | {own:,.0f} | {m((k, b, mode), 'reused') * 100:.0f} % | "
            f"{own / full:.2f}x |")
    lines.append("")
    for k in ("ec", "rsa"):
        ratio = lambda mode: m((k, "tether", mode), "per_cpu_sec") / m((k, "mosquitto", mode), "per_cpu_sec")
        lines.append(f"Tether / Mosquitto per broker CPU-second, {k}: full {ratio('full'):.2f}, "
                     f"resumed {ratio('resumed'):.2f}.")
    block = "\n".join(lines) + "\n"
    print()
    print(block)
    if not a.no_write:
        splice_results(BEGIN, END, f"{BEGIN}\n{block}{END}",
                       "## TLS handshakes, full and resumed (issue 14)\n\nGenerated by `bench/handshake.sh`.")


if __name__ == "__main__":
    main()
