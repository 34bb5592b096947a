#!/usr/bin/env python3
"""CONNECT rate per core with and without authentication (issue 13), run by
bench/auth.sh.

One broker core pinned to CPU 0, the harness on CPU 1 (`tether-bench conn
-R 0`: as fast as the broker accepts, at most 512 handshakes pending). Each
mode starts a fresh broker on a free port:

- tether, no auth;
- tether, users file, one user for every client (after the first CONNECT,
  every check is a cache hit on the core);
- tether, users file, a user per client (every CONNECT is an argon2id
  verification on the tether-auth thread, which shares CPU 0: the cold
  case; fewer clients, it is slow by design);
- tether, JWT (HS256, one token for every client, verified on the core);
- tether, `[auth.http]` with a warm cache (the cache key includes the
  client id, so only a reconnecting client is a hit);
- tether, `[auth.http]` cold, the service answering after 5 ms: every
  CONNECT is a call (`auth.http.max_concurrent` 64 at once). The service
  (bench/scripts/auth_service.py, asyncio with keep-alive) shares CPU 1
  with the harness;
- mosquitto with a password file (mosquitto_passwd: PBKDF2-SHA512), one
  user for every client: the reference.

Every mode but the two cold ones is measured as the fleet reconnecting:
the same client ids connect twice and the second pass is measured (the
first fills the caches). Medians of --rounds; figures in bench/RESULTS.md (section "CONNECT rate
with authentication").
"""
import argparse, base64, datetime, hashlib, hmac, json, os, platform, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import free_port, wait_port, splice_results  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "target/release/tether-bench")
TETHER = os.path.join(ROOT, "target/release/tether")
OUT = os.path.join(ROOT, "bench/results/auth")
BEGIN, END = "<!-- auth:begin -->", "<!-- auth:end -->"
PASSWORD = "bench"
JWT_SECRET = "bench-secret"


def jwt(sub):
    """An HS256 token for `sub`, valid for an hour (no library needed)."""
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "exp": int(time.time()) + 3600}).encode())
    sig = b64(hmac.new(JWT_SECRET.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def users_file(path, names):
    """Hashes PASSWORD once and writes it for every name (same hash)."""
    first = names[0]
    subprocess.run([TETHER, "passwd", path, first], input=PASSWORD + "\n", text=True,
                   check=True, stdout=subprocess.DEVNULL)
    with open(path) as f:
        line = f.read().strip()
    hashed = line.split(":", 1)[1]
    with open(path, "w") as f:
        for n in names:
            f.write(f"{n}:{hashed}\n")


def start(mode, tmp, count):
    port = free_port()
    if mode == "mosquitto":
        pw = os.path.join(tmp, "mosquitto.pw")
        subprocess.run(["mosquitto_passwd", "-c", "-b", pw, "team", PASSWORD], check=True)
        # Started as root, mosquitto drops to its own user before reading
        # the password file.
        os.chmod(tmp, 0o755)
        os.chmod(pw, 0o644)
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n"
                    "persistence false\nmax_connections -1\nsys_interval 0\nlog_dest none\n")
        cmd, env = ["taskset", "-c", "0", "mosquitto", "-c", conf], None
    else:
        env = dict(os.environ, TETHER_NODE__CORES="1", TETHER_LISTENERS__TCP=f"127.0.0.1:{port}",
                   TETHER_HTTP__ENABLED="false", TETHER_WEBSOCKET__ENABLED="false",
                   TETHER_SYS__INTERVAL_SECS="0", TETHER_LOG__LEVEL="warn")
        if mode in ("file-warm", "file-cold"):
            path = os.path.join(tmp, "users")
            names = ["team"] if mode == "file-warm" else [f"u{i}" for i in range(count)]
            users_file(path, names)
            env["TETHER_AUTH__USERS_FILE"] = f'"{path}"'
        if mode == "jwt":
            env["TETHER_AUTH__JWT"] = f'{{secret = "{JWT_SECRET}"}}'
        if mode.startswith("http"):
            env["TETHER_AUTH__HTTP"] = f'{{url = "http://127.0.0.1:{service_port(mode)}/auth"}}'
        cmd = ["taskset", "-c", "0", TETHER]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


SERVICES = {}
# Measured on the first pass: every CONNECT is a verification or a call.
COLD = ("file-cold", "http-cold")


def service_port(mode):
    """Starts the auth service of an http mode (on CPU 1, with the
    harness) and returns its port."""
    latency = "5" if mode == "http-cold" else "0"
    proc = subprocess.Popen(["taskset", "-c", "1", sys.executable,
                             os.path.join(os.path.dirname(os.path.abspath(__file__)), "auth_service.py"),
                             "--latency-ms", latency], stdout=subprocess.PIPE, text=True)
    SERVICES[mode] = proc
    return int(proc.stdout.readline())


def stop_service(mode):
    """Stops the mode's auth service (by its PID): how many calls it took."""
    proc = SERVICES.pop(mode, None)
    if proc is None:
        return None
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    return int(out.split()[-1]) if out.strip() else None


def run(mode, count, rnd):
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(mode, tmp, count)
        path = os.path.join(OUT, f"{mode}.{rnd}.json")
        args = [BENCH, "conn", "-p", str(port), "-c", str(count), "-R", "0", "-d", "0",
                "--json", path, "--quiet", "--cores", "1", "--cpus", "1",
                "--client-prefix", f"auth-{mode}-{rnd}"]
        if mode in ("file-warm", "mosquitto") or mode.startswith("http"):
            args += ["--username", "team", "--password", PASSWORD]
        elif mode == "file-cold":
            args += ["--username", "u%i", "--password", PASSWORD]
        elif mode == "jwt":
            args += ["--username", "team", "--password", jwt("team")]
        calls = None
        try:
            if mode not in COLD:
                # Every warm mode is measured as the fleet reconnecting: a
                # first pass fills the caches (and warms the broker alike).
                subprocess.run(args, check=False)
            subprocess.run(args, check=False)
        finally:
            proc.terminate()
            proc.wait()
            calls = stop_service(mode)
        with open(path) as f:
            c = json.load(f)["connect"]
        return {"rate": c["rate_per_sec"], "connected": c["connected"], "failed": c["failed"],
                "p99_ms": c["latency_us"]["p99"] / 1000, "calls": calls}


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


LABELS = {
    "none": "Tether, no authentication",
    "file-warm": "Tether, users file, warm cache (one user)",
    "jwt": "Tether, JWT (HS256)",
    "http-warm": "Tether, auth.http, warm cache (the fleet reconnects)",
    "http-cold": "Tether, auth.http, cold, 5 ms service latency",
    "file-cold": "Tether, users file, cold (a user per client: argon2id each)",
    "mosquitto": "Mosquitto, password file (one user)",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=10000, help="clients per run (cold: --cold-count)")
    ap.add_argument("--cold-count", type=int, default=300)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    started = time.time()
    rows = {m: [] for m in LABELS}
    for rnd in range(a.rounds):
        for mode in LABELS:
            n = a.cold_count if mode == "file-cold" else a.count
            r = run(mode, n, rnd)
            rows[mode].append(r)
            calls = "" if r["calls"] is None else f", {r['calls']} service calls"
            print(f"[{mode} round {rnd + 1}/{a.rounds}] {r['rate']:.0f} CONNECTs/s, "
                  f"{r['connected']}/{n} connected, p99 {r['p99_ms']:.1f} ms{calls}", flush=True)
    base = median([r["rate"] for r in rows["none"]])
    lines = [
        f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {platform.node()}, "
        f"Linux {platform.release()}, {os.cpu_count()} CPUs; took {(time.time() - started) / 60:.1f} min.",
        f"Command: `bench/auth.sh --rounds {a.rounds}`. One broker core (CPU 0), the harness on CPU 1, "
        f"`tether-bench conn -R 0` ({a.count:,} clients; {a.cold_count} for the cold users file), "
        "the second of two passes (the fleet reconnects) except in the cold modes. "
        "argon2id at the argon2 crate's defaults (19 MiB, 2 passes, 1 lane). The auth.http service "
        "(bench/scripts/auth_service.py) shares CPU 1 with the harness. Medians of rounds.",
        "",
        "| mode | CONNECTs/s | of no auth | connected | CONNACK p99 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mode, label in LABELS.items():
        t = rows[mode]
        rate = median([r["rate"] for r in t])
        lines.append(f"| {label} | {rate:,.0f} | {rate / base:.2f} | "
                     f"{min(r['connected'] for r in t)} | {median([r['p99_ms'] for r in t]):.1f} ms |")
    block = "\n".join(lines) + "\n"
    print()
    print(block)
    if not a.no_write:
        splice_results(BEGIN, END, f"{BEGIN}\n{block}{END}",
                       "## CONNECT rate with authentication (issue 13)\n\nGenerated by `bench/auth.sh`.")


if __name__ == "__main__":
    main()
