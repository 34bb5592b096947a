#!/usr/bin/env python3
"""Drain against kill (issue 14), run by bench/drain.sh: --count clients
leave node A for node B, either because A is drained (`POST
/v1/admin/drain`, `drain.rate_per_sec`) or because A dies (SIGKILL); how
hard does their arrival hit B?

Two Tether processes on loopback, one core each: B pinned to CPU 1 alone,
A and the clients on CPU 0. The clients are an independent asyncio MQTT 5
implementation (this file): each connects to A, and when A disconnects it
(DISCONNECT 0x9C carrying A's `drain.server_reference`, or a dead socket)
it connects to the server the reference names, else to B. Reported:
- the time from the drain (or kill) until every client is on B;
- B's loop lag during the move, p99 and max, from the delta of B's
  `tether_loop_lag_seconds` histogram (how late B's timers ran: what
  its connected clients felt);
- B's CONNACK latency p99 as the clients saw it;
- how many clients got 0x9C with a server reference.
Medians of --rounds; the table goes to bench/RESULTS.md ("Drain").
Mosquitto has no drain (and no loop-lag figure), so the reference here is
the alternative an operator has without one: stopping the node.
"""
import argparse, asyncio, datetime, json, os, platform, signal, struct, subprocess, sys, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import free_port, wait_port, splice_results  # noqa: E402
from storm_bench import lag_buckets, median, p99  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TETHER = os.path.join(ROOT, "target/release/tether")
BEGIN, END = "<!-- drain:begin -->", "<!-- drain:end -->"
# Clients connecting to A at once while the fleet is built.
RAMP_CONCURRENCY = 200
# Longest window for B's idle floor after the move.
IDLE_WINDOW_MAX = 5.0


def worst(before, after):
    """The bound of the highest bucket the delta reached, in ms (buckets
    are cumulative: the first whose delta holds every sample)."""
    delta = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = delta.get("+Inf", 0)
    for le in sorted((k for k in delta if k != "+Inf"), key=float):
        if delta[le] >= total:
            return float(le) * 1000
    return float("inf")


def start(node_id, cpu, rate, reference=""):
    port, http = free_port(), free_port()
    env = dict(os.environ, TETHER_NODE__ID=str(node_id), TETHER_NODE__CORES="1",
               TETHER_LISTENERS__TCP=f"127.0.0.1:{port}", TETHER_HTTP__LISTEN=f"127.0.0.1:{http}",
               TETHER_WEBSOCKET__ENABLED="false", TETHER_SYS__INTERVAL_SECS="0", TETHER_LOG__LEVEL="warn",
               TETHER_DRAIN__RATE_PER_SEC=str(rate), TETHER_DRAIN__SERVER_REFERENCE=reference,
               TETHER_MQTT__CONNECT_TIMEOUT_MS="60000")
    proc = subprocess.Popen(["taskset", "-c", str(cpu), TETHER], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port, http


def connect_packet(client_id):
    cid = client_id.encode()
    # MQTT 5, clean start, keep-alive 300 s, no properties.
    var = b"\x00\x04MQTT\x05\x02" + struct.pack(">H", 300) + b"\x00"
    payload = struct.pack(">H", len(cid)) + cid
    body = var + payload
    return bytes([0x10, len(body)]) + body


async def read_packet(reader):
    """(type byte, body) of the next packet."""
    head = await reader.readexactly(1)
    length, shift = 0, 0
    while True:
        b = (await reader.readexactly(1))[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    return head[0], await reader.readexactly(length)


def server_reference(body):
    """The Server Reference (0x1C) of a DISCONNECT body, if any."""
    if len(body) < 2:
        return None
    i, props_len, shift = 1, 0, 0
    while True:
        b = body[i]
        i += 1
        props_len |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    end = i + props_len
    while i < end:
        pid = body[i]
        i += 1
        if pid in (0x1C, 0x1F):  # Server Reference, Reason String: UTF-8 strings
            n = struct.unpack(">H", body[i:i + 2])[0]
            value = body[i + 2:i + 2 + n].decode()
            i += 2 + n
            if pid == 0x1C:
                return value
        elif pid == 0x11:  # Session Expiry Interval
            i += 4
        elif pid == 0x26:  # User Property
            for _ in range(2):
                n = struct.unpack(">H", body[i:i + 2])[0]
                i += 2 + n
        else:
            return None
    return None


class Client:
    def __init__(self, i, b_port, stats):
        self.id, self.b_port, self.stats = f"drain-{i}", b_port, stats

    async def session(self, port):
        """Connects to `port`; returns (reader, writer, CONNACK seconds)."""
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(connect_packet(self.id))
        kind, body = await read_packet(reader)
        if kind != 0x20 or body[1] != 0:
            raise ConnectionError(f"CONNACK {body!r}")
        return reader, writer, time.perf_counter() - t0

    async def run(self, a_port, connected, moved):
        reader, writer, _ = await self.session(a_port)
        connected()
        target = self.b_port
        try:
            kind, body = await read_packet(reader)
            if kind == 0xE0:
                self.stats["disconnect_codes"][body[0] if body else 0] = \
                    self.stats["disconnect_codes"].get(body[0] if body else 0, 0) + 1
                ref = server_reference(body)
                if ref:
                    self.stats["with_reference"] += 1
                    target = int(ref.rsplit(":", 1)[1])
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        writer.close()
        left = time.perf_counter()
        for attempt in range(50):
            try:
                reader, writer, took = await self.session(target)
                break
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.05 * (attempt + 1))
        else:
            self.stats["lost"] += 1
            return
        self.stats["connack"].append(took)
        self.stats["offline"].append(time.perf_counter() - left)
        moved(writer)


async def scenario(mode, count, rate):
    b, b_port, b_http = start(2, 1, rate)
    a, a_port, a_http = start(1, 0, rate, reference=f"127.0.0.1:{b_port}")
    stats = {"connack": [], "offline": [], "with_reference": 0, "lost": 0, "disconnect_codes": {}}
    up, on_b, writers = [0], [0], []
    all_up, all_moved = asyncio.Event(), asyncio.Event()

    def connected():
        up[0] += 1
        if up[0] == count:
            all_up.set()

    def moved(w):
        writers.append(w)
        on_b[0] += 1
        if on_b[0] + stats["lost"] >= count:
            all_moved.set()

    clients = [Client(i, b_port, stats) for i in range(count)]
    gate = asyncio.Semaphore(RAMP_CONCURRENCY)

    async def one(c):
        async with gate:
            pass
        await c.run(a_port, connected, moved)

    tasks = []
    for c in clients:
        await gate.acquire()
        tasks.append(asyncio.ensure_future(one(c)))
        gate.release()
        if len(tasks) % RAMP_CONCURRENCY == 0:
            await asyncio.sleep(0)
    await asyncio.wait_for(all_up.wait(), 120)
    before = lag_buckets(b_http)
    t0 = time.perf_counter()
    if mode == "drain":
        req = urllib.request.Request(f"http://127.0.0.1:{a_http}/v1/admin/drain", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=5).read()
    else:
        a.send_signal(signal.SIGKILL)
    await asyncio.wait_for(all_moved.wait(), 600)
    took = time.perf_counter() - t0
    after = lag_buckets(b_http)
    # The same window length with every client settled on B: B's own floor.
    await asyncio.sleep(min(took, IDLE_WINDOW_MAX))
    idle = lag_buckets(b_http)
    for w in writers:
        w.close()
    for t in tasks:
        t.cancel()
    a_exit = None
    if mode == "drain":
        try:
            a_exit = a.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    for p in (a, b):
        if p.poll() is None:
            p.terminate()
            p.wait()
    connack = sorted(stats["connack"])
    return {
        "moved": on_b[0], "lost": stats["lost"], "secs": took,
        "lag_p99_ms": p99(before, after), "lag_max_ms": worst(before, after),
        "idle_p99_ms": p99(after, idle),
        "connack_p99_ms": connack[int(len(connack) * 0.99) - 1] * 1000 if connack else None,
        "with_reference": stats["with_reference"], "a_exit": a_exit,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--rate", type=int, default=1000, help="drain.rate_per_sec")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    # The clients share CPU 0 with node A: B has CPU 1 to itself.
    os.sched_setaffinity(0, {0})
    started = time.time()
    rows = {"drain": [], "kill": []}
    for rnd in range(a.rounds):
        for mode in rows:
            r = asyncio.run(scenario(mode, a.count, a.rate))
            rows[mode].append(r)
            print(f"[{mode} round {rnd + 1}/{a.rounds}] {r['moved']} on B in {r['secs']:.2f} s (lost {r['lost']}); "
                  f"B loop lag p99 {r['lag_p99_ms']} ms (idle {r['idle_p99_ms']}), max {r['lag_max_ms']:.0f} ms; CONNACK p99 "
                  f"{r['connack_p99_ms']:.1f} ms; 0x9C with reference: {r['with_reference']}; A exit {r['a_exit']}",
                  flush=True)
    m = lambda mode, k: median([r[k] for r in rows[mode]])
    lines = [
        f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {platform.node()}, "
        f"Linux {platform.release()}, {os.cpu_count()} CPUs; took {(time.time() - started) / 60:.1f} min.",
        f"Command: `bench/drain.sh --rounds {a.rounds}`. {a.count:,} MQTT 5 clients (asyncio, this repository's "
        f"bench/scripts/drain_bench.py) move from node A to node B (two processes, one core each; B alone on "
        f"CPU 1). *drain*: `POST /v1/admin/drain` on A with `drain.rate_per_sec = {a.rate}` and "
        "`drain.server_reference` naming B; *kill*: SIGKILL to A, every client reconnects at once. "
        "B's loop lag is the delta of its `tether_loop_lag_seconds` histogram over the move (bucket bounds); "
        "*idle after* is the same figure over an equal window (at most 5 s) once every client is on B. "
        "Medians of rounds.",
        "",
        "| how A leaves | all on B after | B loop lag p99 | B loop lag max | B idle after, p99 | CONNACK p99 on B | told where to go (0x9C + reference) | lost |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in rows:
        lines.append(
            f"| {mode} | {m(mode, 'secs'):.2f} s | {m(mode, 'lag_p99_ms'):g} ms | {m(mode, 'lag_max_ms'):g} ms | "
            f"{m(mode, 'idle_p99_ms'):g} ms | "
            f"{m(mode, 'connack_p99_ms'):.1f} ms | {m(mode, 'with_reference'):,} | {m(mode, 'lost')} |")
    block = "\n".join(lines) + "\n"
    print()
    print(block)
    if not a.no_write:
        splice_results(BEGIN, END, f"{BEGIN}\n{block}{END}",
                       "## Drain against kill (issue 14)\n\nGenerated by `bench/drain.sh`.")


if __name__ == "__main__":
    main()
