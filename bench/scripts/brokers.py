"""Starting the brokers the benchmarks compare: Tether and the reference
brokers, each on a free port, configured alike (anonymous, no persistence,
no $SYS, plain TCP on 127.0.0.1).

- tether: a path to a Tether binary (one core unless told otherwise);
- mosquitto: Debian's `mosquitto`;
- flashmq: the binary `FLASHMQ` names (built from halfgaar/FlashMQ v1.26.2,
  DEVELOPERS.md says how), with `thread_count` 1 for a one-core run;
- rumqttd: `rumqttd` on PATH, or the binary `RUMQTTD` names
  (`cargo install rumqttd --version 0.20.0`).

A reference broker that is not installed is skipped by the callers
(`available`), never an error. One-core runs pin the broker to CPU 0; the
harness runs on CPU 1.
"""
import os, shutil, socket, subprocess, time

REFERENCES = ("mosquitto", "flashmq", "rumqttd")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc):
    for _ in range(400):
        if proc.poll() is not None:
            raise SystemExit(f"broker exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.025)
    raise SystemExit(f"nothing listening on {port}")


def binary(name):
    """The reference broker's binary, or None when it is not installed."""
    if name == "mosquitto":
        return shutil.which("mosquitto")
    if name == "flashmq":
        path = os.environ.get("FLASHMQ")
        return path if path and os.access(path, os.X_OK) else None
    if name == "rumqttd":
        path = os.environ.get("RUMQTTD") or shutil.which("rumqttd")
        return path if path and os.access(path, os.X_OK) else None
    raise ValueError(name)


def available(name):
    """Whether `name` (a reference broker, or a Tether binary path) can run."""
    if name in REFERENCES:
        return binary(name) is not None
    return os.access(name, os.X_OK)


def label(name):
    return {"mosquitto": "Mosquitto", "flashmq": "FlashMQ", "rumqttd": "rumqttd"}.get(
        name, "Tether" if "tether" in os.path.basename(name) else os.path.basename(name))


def start(name, port, tmp, pinned=True):
    """Starts broker `name` (a reference broker, or a Tether binary path) on
    127.0.0.1:`port`; `pinned`: one core, on CPU 0. Returns the process."""
    pin = ["taskset", "-c", "0"] if pinned else []
    env = dict(os.environ)
    if name == "mosquitto":
        conf = os.path.join(tmp, f"mosquitto-{port}.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_connections -1\nmax_queued_messages 1000\nsys_interval 0\nlog_dest none\n")
        cmd = pin + [binary(name), "-c", conf]
    elif name == "flashmq":
        conf = os.path.join(tmp, f"flashmq-{port}.conf")
        with open(conf, "w") as f:
            f.write(f"thread_count {1 if pinned else os.cpu_count()}\nallow_anonymous true\n"
                    "log_level error\n"
                    # tcp_nodelay: off by default, FlashMQ then holds small
                    # writes for Nagle's algorithm (a 40 ms p99 at low load).
                    f"listen {{\n  protocol mqtt\n  inet_protocol ip4\n"
                    f"  inet4_bind_address 127.0.0.1\n  port {port}\n  tcp_nodelay true\n}}\n")
        cmd = pin + [binary(name), "--config-file", conf]
    elif name == "rumqttd":
        # rumqttd's sample configuration, but for the port, room for 20,000
        # connections and no delay between accepts (the sample's 1 ms would
        # take 4 s to connect a 4,000-client test).
        conf = os.path.join(tmp, f"rumqttd-{port}.toml")
        with open(conf, "w") as f:
            f.write("id = 0\n[router]\nid = 0\nmax_connections = 20010\n"
                    "max_outgoing_packet_count = 200\nmax_segment_size = 104857600\n"
                    "max_segment_count = 10\n\n"
                    f"[v4.1]\nname = \"v4-1\"\nlisten = \"127.0.0.1:{port}\"\n"
                    "next_connection_delay_ms = 0\n[v4.1.connections]\n"
                    "connection_timeout_ms = 60000\nmax_payload_size = 20480\n"
                    "max_inflight_count = 100\ndynamic_filters = true\n")
        cmd = pin + [binary(name), "-q", "-c", conf]
    else:
        env.update(
            TETHER_NODE__CORES="1" if pinned else "0",
            TETHER_LISTENERS__TCP=f"127.0.0.1:{port}",
            TETHER_SYS__INTERVAL_SECS="0",
            TETHER_HTTP__ENABLED="false",
            TETHER_WEBSOCKET__ENABLED="false",
            TETHER_LOG__LEVEL="warn",
        )
        cmd = pin + [name]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


def stop(proc):
    """Stops a broker this module started (by its PID)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
