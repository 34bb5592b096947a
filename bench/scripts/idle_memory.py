#!/usr/bin/env python3
"""Preliminary idle-connection cost: RSS per idle MQTT connection and idle CPU,
Tether and Mosquitto side by side in one run (until `tether-bench conn` lands).

usage: bench/scripts/idle_memory.py [CONNECTIONS]   (default 10000)
Needs: target/release/tether (cargo build --release) and Debian's mosquitto.
"""
import os, socket, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime

def connect_packet(i):
    cid = f"idle-{i}".encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x3c"  # 3.1.1, clean session, keep-alive 60 s
    body = var + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body

def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")

def measure(name, cmd, port, env=None):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        time.sleep(0.5)
        base = rss_kib(proc.pid)
        socks = []
        t0 = time.time()
        for i in range(N):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(connect_packet(i))
            socks.append(s)
            if i % 2000 == 1999:
                print(f"  {name}: {i + 1}/{N} connected", file=sys.stderr)
        for s in socks:
            assert s.recv(4)[:2] == b"\x20\x02", "CONNACK"
        rate = N / (time.time() - t0)
        time.sleep(1.0)
        loaded = rss_kib(proc.pid)
        c0 = cpu_ticks(proc.pid); time.sleep(10); c1 = cpu_ticks(proc.pid)
        idle_cpu = (c1 - c0) / os.sysconf("SC_CLK_TCK") / 10 * 100
        for s in socks:
            s.close()
        return {"name": name, "base_kib": base, "loaded_kib": loaded,
                "bytes_per_conn": (loaded - base) * 1024 / N, "idle_cpu_pct": idle_cpu, "connect_rate": rate}
    finally:
        proc.terminate(); proc.wait()

def main():
    tport, mport = free_port(), free_port()
    env = dict(os.environ, TETHER_LISTENERS__TCP=f"127.0.0.1:{tport}", TETHER_LOG__LEVEL="warn")
    conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
    conf.write(f"listener {mport} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\n")
    conf.close()
    results = [
        measure("tether", [os.path.join(ROOT, "target/release/tether")], tport, env),
        measure("mosquitto", ["mosquitto", "-c", conf.name], mport),
    ]
    print(f"\n{N} idle MQTT 3.1.1 connections (keep-alive 60 s), one client process, loopback")
    print(f"{'broker':<10} {'RSS before':>11} {'RSS after':>10} {'bytes/conn':>11} {'idle CPU':>9} {'conn/s':>8}")
    for r in results:
        print(f"{r['name']:<10} {r['base_kib']:>8} KiB {r['loaded_kib']:>7} KiB {r['bytes_per_conn']:>11.0f} "
              f"{r['idle_cpu_pct']:>8.2f}% {r['connect_rate']:>8.0f}")
    t, m = results
    print(f"tether/mosquitto bytes per connection: {t['bytes_per_conn'] / m['bytes_per_conn']:.2f}")

main()
