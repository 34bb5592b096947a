#!/usr/bin/env python3
"""The transport matrix, run by bench/transports.sh.

The same tests over MQTT/TCP, MQTT over WebSocket, MQTT over TLS and
MQTT over WebSocket over TLS, against Tether with one core and Mosquitto
(its websockets and TLS listeners), each pinned to CPU 0 with the harness on
CPU 1, a fresh broker per run: idle RSS per connection, connection rate
(for TLS: full handshakes), and the highest lossless fan-out rate. A
throwaway CA and a localhost certificate (EC P-256) are made with openssl
for the run. Figures land in bench/results/<test>.<broker>.json and in the
`transports` section of bench/RESULTS.md, with ratios to plain TCP on the
same broker (the issue's "WebSocket within 80 % of TCP") and to Mosquitto.
"""
import argparse, datetime, json, os, platform, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import brokers  # noqa: E402
import compare  # noqa: E402  (shares the broker runner and the lossless search)

BEGIN, END = "<!-- transports:begin -->", "<!-- transports:end -->"
TRANSPORTS = ["tcp", "ws", "tls", "wss"]
# Debian's Mosquitto 2.0.11 does not start its libwebsockets listener here
# (strace: bind and listen succeed, then "Unable to start any listening
# sockets"), so its WebSocket rows are n/a and Tether's WebSocket figures
# are compared with Tether's TCP ones.
MOSQUITTO_TRANSPORTS = ["tcp", "tls"]
# Runs of the idle and connect-rate tests per broker and transport.
ROUNDS = 3


def make_pki(tmp, kind="ec"):
    """A CA and a localhost server certificate with an EC P-256 (`ec`) or
    RSA 2048 (`rsa`) key, PEM files in `tmp`."""
    def run(*args):
        subprocess.run(args, check=True, cwd=tmp, capture_output=True)
    alg = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ec"
           else ["-newkey", "rsa:2048"]) + ["-nodes"]
    run("openssl", "req", "-x509", *alg, "-days", "2", "-keyout", "ca.key", "-out", "ca.pem",
        "-subj", "/CN=bench-ca")
    run("openssl", "req", *alg, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    with open(os.path.join(tmp, "san.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.pem", "-extfile", "san.ext")
    # Mosquitto started as root reads its files as the `mosquitto` user.
    os.chmod(tmp, 0o755)
    for f in ("ca.pem", "server.pem", "server.key"):
        os.chmod(os.path.join(tmp, f), 0o644)


class TransportBroker(compare.Broker):
    """A broker serving `transport` on the port the runner hands it."""

    def __init__(self, name, label, transport, tmp):
        super().__init__(f"{name}-{transport}", label, True)
        self.base, self.transport, self.tmp = name, transport, tmp

    def harness_args(self):
        args = super().harness_args() + ["--transport", self.transport]
        if self.transport in ("tls", "wss"):
            args += ["--cafile", os.path.join(self.tmp, "ca.pem"), "--server-name", "localhost"]
        return args

    def start(self, port, tmp):
        if self.base in ("flashmq", "rumqttd"):
            # Plain TCP only: the reference brokers' TLS and WebSocket
            # listeners are not configured here.
            if self.transport != "tcp":
                raise SystemExit(f"{self.base}: only --transport tcp is set up")
            return brokers.start(self.base, port, tmp)
        pki = {k: os.path.join(self.tmp, f) for k, f in
               (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"))}
        if self.base == "mosquitto":
            conf = os.path.join(tmp, "mosquitto.conf")
            lines = [f"listener {port} 127.0.0.1"]
            if self.transport in ("ws", "wss"):
                lines.append("protocol websockets")
            if self.transport in ("tls", "wss"):
                lines += [f"certfile {pki['cert']}", f"keyfile {pki['key']}"]
            lines += ["allow_anonymous true", "persistence false", "max_connections -1",
                      "max_queued_messages 1000", "sys_interval 0", "log_dest none"]
            with open(conf, "w") as f:
                f.write("\n".join(lines) + "\n")
            cmd = ["taskset", "-c", "0", "mosquitto", "-c", conf]
            env = dict(os.environ)
        else:
            cmd = [compare.TETHER]
            env = dict(os.environ)
            env.update(
                TETHER_NODE__CORES="1",
                TETHER_LISTENERS__TCP=f"127.0.0.1:{port if self.transport == 'tcp' else compare.free_port()}",
                TETHER_WEBSOCKET__ENABLED="true" if self.transport == "ws" else "false",
                TETHER_WEBSOCKET__LISTEN=f"127.0.0.1:{port}",
                TETHER_TLS__ENABLED="true" if self.transport in ("tls", "wss") else "false",
                TETHER_TLS__LISTEN=f"127.0.0.1:{port if self.transport == 'tls' else compare.free_port()}",
                TETHER_TLS__WSS="true" if self.transport == "wss" else "false",
                TETHER_TLS__WSS_LISTEN=f"127.0.0.1:{port}",
                TETHER_TLS__CERT_FILE=pki["cert"],
                TETHER_TLS__KEY_FILE=pki["key"],
                TETHER_SYS__INTERVAL_SECS="0",
                TETHER_HTTP__ENABLED="false",
                TETHER_LOG__LEVEL="warn",
            )
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        compare.wait_port(port, proc)
        return proc


def tests(quick, d):
    n_idle = 2000 if quick else 19000
    n_conn = 1000 if quick else 5000
    subs = 200 if quick else 1000
    return [
        ("idle", f"RSS per idle connection, {n_idle:,} connections",
         f"conn -c {n_idle} -R 0 -d 3 --procs 2", "rss"),
        ("conn", f"connect rate, {n_conn:,} connections at max rate",
         f"conn -c {n_conn} -R 0 -d 0.5", "conn_rate"),
        (f"fanout-1x{subs}-q1-256B", f"fan-out 1 -> {subs:,} QoS 1, 256 B: lossless deliveries/s",
         f"fanout -P 1 -c {subs} -q 1 -s 256 -r 0 -d {d} --inflight 64", "deliveries"),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller counts, 2 s runs")
    ap.add_argument("--duration", type=float, default=None, help="seconds of traffic per run")
    a = ap.parse_args()
    d = a.duration or (2 if a.quick else 5)
    os.makedirs(compare.RESULTS, exist_ok=True)
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_pki(tmp)
        matrix = tests(a.quick, d)
        for i, (test, what, args, kind) in enumerate(matrix, 1):
            # Cheap tests run ROUNDS times, alternating brokers and
            # transports, and report the median (a single idle run can be
            # off by a third here); the fan-out search runs once.
            rounds = 1 if kind == "deliveries" else ROUNDS
            runs = {}
            for rnd in range(1, rounds + 1):
                for transport in TRANSPORTS:
                    for base in ("tether-1", "mosquitto"):
                        if base == "mosquitto" and transport not in MOSQUITTO_TRANSPORTS:
                            continue
                        b = TransportBroker(base, base, transport, tmp)
                        tid = f"transport-{test}"
                        print(f"[{time.time() - started:6.0f}s] ({i}/{len(matrix)}) {test} / {b.name}"
                              f" (round {rnd}/{rounds}) ...", end="", flush=True, file=sys.stderr)
                        if kind == "deliveries":
                            v, r, trail = compare.fanout_search(tid, b, args, tmp)
                        else:
                            r = compare.run_one(tid, b, args, tmp)
                            v, trail = compare.figure(r, kind), []
                        ok = compare.clean(r)
                        runs.setdefault((base, transport), []).append((v, ok, r))
                        print(f" {compare.fmt(kind, v)}{'' if ok else ' (not clean)'}  {'; '.join(trail)}",
                              file=sys.stderr)
            figs = {}
            for transport in TRANSPORTS:
                for base in ("tether-1", "mosquitto"):
                    got = runs.get((base, transport))
                    if not got:
                        figs[(base, transport)] = (0, True)
                        continue
                    ordered = sorted(got, key=lambda g: g[0])
                    v, _, r = ordered[len(ordered) // 2]
                    figs[(base, transport)] = (v, all(ok for _, ok, _ in got))
                    if len(got) > 1:
                        # The committed JSON is the median round's.
                        r = dict(r, rounds=[g[0] for g in got])
                        name = f"transport-{test}.{base}-{transport}.json"
                        with open(os.path.join(compare.RESULTS, name), "w") as f:
                            json.dump(r, f, indent=1)
            rows.append((test, what, args, kind, figs))
    write(rows, a, time.time() - started)


def write(rows, a, took):
    commit = subprocess.run(["git", "-C", compare.ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "bench/transports.sh" + (" --quick" if a.quick else "") + (f" --duration {a.duration}" if a.duration else "")
    out = [BEGIN, "", f"### Generated by `{cmd}` on {now} ({took / 60:.1f} min)", "",
           f"- Machine: {os.cpu_count()} CPUs, kernel {platform.release()}, commit {commit}; both brokers "
           "pinned to CPU 0, the harness on CPU 1; TLS is TLS 1.3 with an EC P-256 certificate, "
           "verified by the harness against the run's CA.", "",
           "| test | transport | Tether, 1 core | Mosquitto | Tether / Mosquitto | Tether: this / TCP | Mosquitto: this / TCP |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for test, what, args, kind, figs in rows:
        for transport in TRANSPORTS:
            t, t_ok = figs[("tether-1", transport)]
            m, m_ok = figs[("mosquitto", transport)]
            t_tcp, m_tcp = figs[("tether-1", "tcp")][0], figs[("mosquitto", "tcp")][0]
            cell = lambda v, ok: (compare.fmt(kind, v) if v else "n/a") + ("" if ok else " (not clean)")
            out.append(f"| {what} | {transport} | {cell(t, t_ok)} | {cell(m, m_ok)} | "
                       f"{compare.ratio(kind, t, m)} | {compare.ratio(kind, t, t_tcp)} | "
                       f"{compare.ratio(kind, m, m_tcp)} |")
    out += ["", f"Idle memory and connect rate are medians of {ROUNDS} runs per broker and transport, "
            "alternating; fan-out is one lossless search.", "", "Mosquitto's WebSocket rows are n/a: Debian's Mosquitto 2.0.11 does not start its "
            "websockets listener on this machine (bind and listen succeed, then it exits with "
            "\"Unable to start any listening sockets\").", "", "Commands (`--transport`, `--cafile`, `-p`, `--target-pid`, `--json` and the CPU "
            "flags are added per broker and transport; fan-out offers are searched as in compare.sh):", ""]
    for test, what, args, kind, figs in rows:
        out.append(f"- `{test}`: `tether-bench {args}`")
    out += ["", END]
    compare.splice_results(BEGIN, END, "\n".join(out), "### The transport matrix (generated)")
    print("\n".join(out[2:]))


if __name__ == "__main__":
    main()
