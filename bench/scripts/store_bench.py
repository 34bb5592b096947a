#!/usr/bin/env python3
"""The Redis session store's benchmarks, run by bench/store.sh.

1. CONNECT rate on one core, Redis store against memory store: persistent
   sessions with a user name (CLAIM and ADMIT), and clean sessions (whose
   claim runs in the background). Redis commands per CONNECT come from
   Redis's own counters.
2. QoS 1 messages per second into persistent sessions through Redis
   (durability sync: every PUBACK waits for the message to be stored), with
   Redis commands and Redis CPU per message, against the memory store.
3. Presence at 19,000 idle connections with user names: Redis commands per
   second while nothing happens, against connections / lease x 1.1.
4. Adoption after a crash: --adopt-sessions offline persistent sessions,
   the node killed (-9) and started again: how long until it holds every
   one again (`tether_store_sessions_adopted_total`), from its start and
   from its first answer on HTTP, and Redis commands per adopted session.

Tether runs one core pinned to CPU 0; redis-server and the harness share
CPU 1 (a 2-core machine has nothing else to give). Every figure is the
median of --rounds alternating rounds, each on a fresh broker and a fresh
redis-server. The summary goes to stdout and into the generated section of
bench/RESULTS.md; every round's JSON stays in bench/results/store/ (summary.json,
with each round's figures, is kept in git).
"""
import argparse, datetime, json, os, platform, shutil, statistics, subprocess, sys, tempfile, time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "target/release/tether-bench")
TETHER = os.path.join(ROOT, "target/release/tether")
OUT = os.path.join(ROOT, "bench/results/store")
BEGIN, END = "<!-- store:begin -->", "<!-- store:end -->"
CLK = os.sysconf("SC_CLK_TCK")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import free_port, wait_port  # noqa: E402  (the same port helpers as the matrix)


def cpu_secs(pid):
    """User plus system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


class Redis:
    """A redis-server of our own on a free port, pinned to CPU 1."""

    def __init__(self, tmp):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["taskset", "-c", "1", "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)

    def info(self, section):
        out = subprocess.run(["redis-cli", "-p", str(self.port), "INFO", section],
                             capture_output=True, text=True, check=True).stdout
        return dict(l.split(":", 1) for l in out.splitlines() if ":" in l)

    def calls(self):
        """Calls per command, scripts' inner commands included."""
        out = {}
        for k, v in self.info("commandstats").items():
            if k.startswith("cmdstat_"):
                out[k[8:]] = int(v.split(",")[0].split("=")[1])
        return out

    def commands(self):
        """Commands processed so far (less the INFO calls that asked)."""
        return int(self.info("stats")["total_commands_processed"])

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Tether:
    """One node, one core pinned to CPU 0, on the given store."""

    def __init__(self, store, redis, extra=None):
        self.port = free_port()
        env = dict(os.environ)
        env.update(
            TETHER_NODE__CORES="1",
            TETHER_LISTENERS__TCP=f"127.0.0.1:{self.port}",
            TETHER_SYS__INTERVAL_SECS="0",
            TETHER_HTTP__ENABLED="false",
            TETHER_WEBSOCKET__ENABLED="false",
            TETHER_LOG__LEVEL="warn",
            TETHER_STORE__KIND=f'"{store}"',
        )
        if redis:
            env["TETHER_REDIS__URLS"] = f'["redis://127.0.0.1:{redis.port}"]'
        env.update(extra or {})
        self.proc = subprocess.Popen(["taskset", "-c", "0", TETHER], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def harness(args, port, pid, json_path):
    cmd = [BENCH] + args + ["-p", str(port), "--target-pid", str(pid), "--json", json_path,
                            "--quiet", "--cores", "1", "--cpus", "1"]
    r = subprocess.run(cmd)
    with open(json_path) as f:
        report = json.load(f)
    if r.returncode not in (0,):
        report.setdefault("notes", []).append(f"harness exit status {r.returncode}")
    return report


def presence_keys(redis):
    """Keys in Redis's db 0."""
    db = redis.info("keyspace").get("db0", "keys=0")
    return int(db.split(",")[0].split("=")[1])


def connect_round(store, kind, n, tmp, rnd):
    """CONNECT rate on one core; kind: persistent or clean. Each client has
    its own user name, so every CONNECT also enters presence."""
    redis = Redis(tmp) if store == "redis" else None
    node = Tether(store, redis)
    try:
        calls0 = redis.calls() if redis else {}
        args = ["conn", "-c", str(n), "-R", "0", "-d", "3", "-V", "5", "--username", "u%i"]
        if kind == "persistent":
            args += ["--clean", "false", "--session-expiry", "3600"]
        path = os.path.join(OUT, f"conn-{kind}.{store}.{rnd}.json")
        h = subprocess.Popen([BENCH] + args + ["-p", str(node.port), "--target-pid", str(node.proc.pid),
                                               "--json", path, "--quiet", "--cores", "1", "--cpus", "1"])
        per = {}
        if redis:
            # Every connection's claim and admission are in once there is a
            # session hash per client and a presence set per user (clean
            # sessions are claimed too, in the background); read Redis's
            # counters then, before the disconnects' writes.
            want = 2 * n
            deadline = time.time() + 60
            while presence_keys(redis) < want and time.time() < deadline and h.poll() is None:
                time.sleep(0.05)
            calls = redis.calls()
            per = {k: (v - calls0.get(k, 0)) / n for k, v in calls.items()}
        h.wait()
        with open(path) as f:
            rep = json.load(f)
        c = rep["connect"]
        return {"rate": c["rate_per_sec"], "connected": c["connected"], "failed": c["failed"],
                "scripts_per_connect": per.get("evalsha", 0.0),
                "redis_cmds_per_connect": sum(v for k, v in per.items() if k != "info"),
                "cpu_percent": rep["target"]["cpu_percent_connect"], "json": path}
    finally:
        node.stop()
        if redis:
            redis.stop()


def qos1_round(store, pairs, secs, tmp, rnd):
    """QoS 1 pairs on persistent sessions: every message goes into a
    persistent session (stored before its PUBACK, with the Redis store)."""
    redis = Redis(tmp) if store == "redis" else None
    node = Tether(store, redis)
    try:
        cmds0 = redis.commands() if redis else 0
        calls0 = redis.calls() if redis else {}
        rcpu0 = cpu_secs(redis.proc.pid) if redis else 0
        args = ["p2p", "-c", str(pairs), "-q", "1", "-r", "0", "--inflight", "64", "-d", str(secs),
                "-V", "5", "--clean", "false", "--session-expiry", "3600", "-s", "64"]
        path = os.path.join(OUT, f"qos1-persistent.{store}.{rnd}.json")
        rep = harness(args, node.port, node.proc.pid, path)
        received = rep["received"]
        out = {"msgs_per_sec": rep["received_per_sec"], "acked_per_sec": rep["acked_per_sec"],
               "lost": rep["integrity"]["lost"], "violations": len(rep["violations"]),
               "p99_ms": rep["latency_us"]["p99"] / 1000, "tether_cpu": rep["target"]["cpu_percent"],
               "json": path}
        if redis:
            cmds = redis.commands() - cmds0
            rcpu = cpu_secs(redis.proc.pid) - rcpu0
            out["redis_cmds_per_msg"] = cmds / max(received, 1)
            calls = redis.calls()
            per = {k: (v - calls0.get(k, 0)) / max(received, 1) for k, v in calls.items()}
            out["redis_calls_per_msg"] = {k: round(v, 3) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0.001}
            out["redis_scripts_per_msg"] = per.get("evalsha", 0.0)
            out["redis_cpu_us_per_msg"] = rcpu * 1e6 / max(received, 1)
            out["redis_cpu_percent"] = 100 * rcpu / max(rep["traffic_secs"] + 2, 1e-9)
        return out
    finally:
        node.stop()
        if redis:
            redis.stop()


def presence_round(n, lease, window, tmp, rnd):
    """n idle connections with user names; Redis commands/s over `window`
    seconds once every connection is in."""
    redis = Redis(tmp)
    node = Tether("redis", redis, {"TETHER_PRESENCE__LEASE_SECS": str(lease)})
    try:
        path = os.path.join(OUT, f"presence.{rnd}.json")
        hold = window + 30
        cmd = [BENCH, "conn", "-c", str(n), "-R", "0", "-d", str(hold), "--username", "u%i",
               "-p", str(node.port), "--target-pid", str(node.proc.pid), "--json", path, "--quiet",
               "--cores", "1", "--cpus", "1"]
        h = subprocess.Popen(cmd)
        # Wait until every connection is claimed and present: a session
        # hash per client and a presence set per user.
        deadline = time.time() + 120
        while presence_keys(redis) < 2 * n and time.time() < deadline:
            time.sleep(0.5)
        # Leases of the connect burst come due together once; measure over
        # whole leases after the first.
        time.sleep(2)
        c0, t0 = redis.commands(), time.time()
        time.sleep(window)
        c1, t1 = redis.commands(), time.time()
        h.wait()
        rate = (c1 - c0) / (t1 - t0)
        return {"connections": n, "lease_secs": lease, "window_secs": round(t1 - t0, 1),
                "redis_cmds_per_sec": rate, "target": n / lease * 1.1, "json": path}
    finally:
        node.stop()
        redis.stop()


def metric(port, name):
    """A counter or gauge from a node's /metrics (None while it does not answer)."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def adopt_round(n, tmp, rnd):
    """n persistent sessions left offline, the node killed and started
    again: when it holds them all again."""
    redis = Redis(tmp)
    http = free_port()
    extra = {"TETHER_HTTP__ENABLED": "true", "TETHER_HTTP__LISTEN": f"127.0.0.1:{http}"}
    node = Tether("redis", redis, extra)
    try:
        path = os.path.join(OUT, f"adopt-connect.{rnd}.json")
        # Connect, subscribe nothing, hold 1 s and leave: n offline sessions.
        harness(["conn", "-c", str(n), "-R", "0", "-d", "1", "-V", "5", "--clean", "false",
                 "--session-expiry", "3600"], node.port, node.proc.pid, path)
        deadline = time.time() + 60
        while (metric(http, "tether_sessions_offline") or 0) < n and time.time() < deadline:
            time.sleep(0.1)
        offline = metric(http, "tether_sessions_offline")
        node.proc.kill()
        node.proc.wait()
        cmds0 = redis.commands()
        started = time.time()
        node = Tether("redis", redis, extra)
        answered = None
        adopted = 0.0
        deadline = started + 120
        while time.time() < deadline:
            got = metric(http, "tether_store_sessions_adopted_total")
            if got is not None and answered is None:
                answered = time.time() - started
            if got is not None and got >= n:
                adopted = got
                break
            time.sleep(0.01)
        took = time.time() - started
        cmds = redis.commands() - cmds0
        return {"sessions": n, "offline_before": offline, "adopted": adopted,
                "secs_from_start": took, "secs_from_http": took - (answered or 0),
                "redis_cmds_per_session": cmds / max(adopted, 1),
                "rss_mb": rss_mb(node.proc.pid)}
    finally:
        node.stop()
        redis.stop()


def rss_mb(pid):
    """A process's resident memory, MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def median(rounds, key):
    return statistics.median(r[key] for r in rounds)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connects", type=int, default=10000)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--presence-conns", type=int, default=19000)
    ap.add_argument("--lease", type=int, default=30)
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--adopt-sessions", type=int, default=10000)
    ap.add_argument("--only", default="connect,qos1,presence,adopt")
    ap.add_argument("--no-write", action="store_true",
                    help="do not touch bench/RESULTS.md or the summary.json kept in git")
    a = ap.parse_args()
    for tool in ("redis-server", "redis-cli", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"store_bench: needs {tool} (apt-get install -y redis-server util-linux)")
    os.makedirs(OUT, exist_ok=True)
    only = set(a.only.split(","))
    started = time.time()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "connect" in only:
            for kind in ("persistent", "clean"):
                rows = {"memory": [], "redis": []}
                for rnd in range(a.rounds):
                    for store in ("memory", "redis"):
                        r = connect_round(store, kind, a.connects, tmp, rnd)
                        rows[store].append(r)
                        print(f"[connect {kind} {store} round {rnd + 1}/{a.rounds}] {r['rate']:.0f}/s "
                              f"scripts/CONNECT {r['scripts_per_connect']:.2f} "
                              f"commands/CONNECT {r['redis_cmds_per_connect']:.1f}", flush=True)
                res[f"connect-{kind}"] = rows
        if "qos1" in only:
            rows = {"memory": [], "redis": []}
            for rnd in range(a.rounds):
                for store in ("memory", "redis"):
                    r = qos1_round(store, a.pairs, a.secs, tmp, rnd)
                    rows[store].append(r)
                    extra = (f" redis cmds/msg {r['redis_cmds_per_msg']:.2f} redis CPU {r['redis_cpu_us_per_msg']:.1f} us/msg"
                             if store == "redis" else "")
                    print(f"[qos1 {store} round {rnd + 1}/{a.rounds}] {r['msgs_per_sec']:.0f} msg/s lost {r['lost']}{extra}",
                          flush=True)
            res["qos1"] = rows
        if "presence" in only:
            rows = []
            for rnd in range(a.rounds):
                r = presence_round(a.presence_conns, a.lease, a.window, tmp, rnd)
                rows.append(r)
                print(f"[presence round {rnd + 1}/{a.rounds}] {r['redis_cmds_per_sec']:.0f} cmds/s "
                      f"(target <= {r['target']:.0f})", flush=True)
            res["presence"] = rows
        if "adopt" in only:
            rows = []
            for rnd in range(a.rounds):
                r = adopt_round(a.adopt_sessions, tmp, rnd)
                rows.append(r)
                print(f"[adopt round {rnd + 1}/{a.rounds}] {r['adopted']:.0f} of {r['sessions']} sessions "
                      f"in {r['secs_from_start']:.2f} s from start ({r['secs_from_http']:.2f} s after HTTP answered), "
                      f"{r['redis_cmds_per_session']:.1f} Redis commands each", flush=True)
            res["adopt"] = rows
    took = time.time() - started
    block = render(res, a, took)
    print()
    print(block)
    if not a.no_write:
        with open(os.path.join(OUT, "summary.json"), "w") as f:
            json.dump(res, f, indent=1)
        splice(block)


def render(res, a, took):
    uname = platform.uname()
    lines = [
        f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {uname.node}, Linux {uname.release}, "
        f"{os.cpu_count()} CPUs; took {took / 60:.1f} min.",
        f"Command: `bench/store.sh --rounds {a.rounds}{'' if a.only == 'connect,qos1,presence,adopt' else ' --only ' + a.only}`. "
        "Tether: one core on CPU 0; redis-server (no persistence) and the harness on CPU 1. Medians of "
        f"{a.rounds} alternating rounds.",
        "",
    ]
    for kind in ("persistent", "clean"):
        rows = res.get(f"connect-{kind}")
        if not rows:
            continue
        m, r = median(rows["memory"], "rate"), median(rows["redis"], "rate")
        lines += [
            f"**CONNECT rate, {kind} sessions with a user name** ({a.connects} connections, as fast as accepted):",
            "",
            "| store | CONNECTs/s | Tether CPU while connecting | Redis scripts per CONNECT | Redis commands per CONNECT (in scripts too) |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| memory | {m:,.0f} | {median(rows['memory'], 'cpu_percent'):.0f} % | - | - |",
            f"| redis | {r:,.0f} | {median(rows['redis'], 'cpu_percent'):.0f} % | "
            f"{median(rows['redis'], 'scripts_per_connect'):.2f} | {median(rows['redis'], 'redis_cmds_per_connect'):.1f} |",
            f"| ratio | **{r / m:.2f}** (target >= 0.50) | | | |",
            "",
        ]
    rows = res.get("qos1")
    if rows:
        m, r = median(rows["memory"], "msgs_per_sec"), median(rows["redis"], "msgs_per_sec")
        lost = sum(x["lost"] for x in rows["redis"] + rows["memory"])
        lines += [
            f"**QoS 1 into persistent sessions** ({a.pairs} publisher/subscriber pairs, 64-byte payloads, "
            f"window 64, {a.secs} s; durability sync):",
            "",
            "| store | messages/s | p99 ms | Tether CPU | Redis scripts/msg | Redis commands/msg (in scripts too) | Redis CPU/msg | Redis CPU |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| memory | {m:,.0f} | {median(rows['memory'], 'p99_ms'):.1f} | {median(rows['memory'], 'tether_cpu'):.0f} % | - | - | - | - |",
            f"| redis | {r:,.0f} | {median(rows['redis'], 'p99_ms'):.1f} | {median(rows['redis'], 'tether_cpu'):.0f} % | "
            f"{median(rows['redis'], 'redis_scripts_per_msg'):.2f} | {median(rows['redis'], 'redis_cmds_per_msg'):.2f} | "
            f"{median(rows['redis'], 'redis_cpu_us_per_msg'):.1f} us | {median(rows['redis'], 'redis_cpu_percent'):.0f} % |",
            f"| ratio | **{r / m:.2f}** | | | | | | |",
            "",
            "Commands per message, one round: "
            + ", ".join(f"{k} {v}" for k, v in rows["redis"][0].get("redis_calls_per_msg", {}).items()) + ".",
            "",
            f"Target >= 20,000 messages/s through Redis: **{'met' if r >= 20000 else 'missed'}** ({r:,.0f}/s). "
            f"Messages lost over every round: {lost}.",
            "",
        ]
    rows = res.get("presence")
    if rows:
        rate = median(rows, "redis_cmds_per_sec")
        target = rows[0]["target"]
        lines += [
            f"**Presence at {a.presence_conns:,} idle connections** (a user each, lease {a.lease} s, "
            f"measured over {a.window} s):",
            "",
            f"Redis commands/s while idle: **{rate:,.0f}** (target <= {target:,.0f} = connections / lease x 1.1: "
            f"**{'met' if rate <= target else 'missed'}**). Rounds: "
            + ", ".join(f"{x['redis_cmds_per_sec']:.0f}" for x in rows) + ".",
            "",
        ]
    rows = res.get("adopt")
    if rows:
        lines += [
            f"**Adoption after a crash** ({a.adopt_sessions:,} offline persistent sessions, the node killed "
            "with -9 and started again at once):",
            "",
            "| sessions adopted | s from the process's start | s from its first HTTP answer | "
            "Redis commands per session | RSS after (MiB) |",
            "| ---: | ---: | ---: | ---: | ---: |",
            f"| {median(rows, 'adopted'):,.0f} | {median(rows, 'secs_from_start'):.2f} | "
            f"{median(rows, 'secs_from_http'):.2f} | {median(rows, 'redis_cmds_per_session'):.1f} | "
            f"{median(rows, 'rss_mb'):.0f} |",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def splice(block):
    path = os.path.join(ROOT, "bench/RESULTS.md")
    text = open(path).read()
    section = f"{BEGIN}\n{block}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n## The Redis session store (issue 11)\n\nGenerated by `bench/store.sh`.\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
