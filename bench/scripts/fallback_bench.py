#!/usr/bin/env python3
"""The HTTP fallback against MQTT over WebSocket, in one run: N clients of
each transport (SSE streams, long-polls, MQTT 3.1.1 over WebSocket), each
its own session subscribed to one topic, receive a broadcast published at
R messages/s (QoS 0, so the figure is the gateway's delivery cost, not
acknowledgement traffic); and the memory each idle session costs.

    python3 bench/scripts/fallback_bench.py                   # 10,000 clients, 1 and 2 msg/s
    python3 bench/scripts/fallback_bench.py -n 2000 --rates 5,10 --transports sse,ws
    python3 bench/scripts/fallback_bench.py --tls            # HTTPS and wss (the wss listener)

Tether runs with one core, pinned to CPU 0; this client on CPU 1. Its own
HTTP, SSE and MQTT code (asyncio protocols), shared with nothing in the
gateway or tether-bench. Per transport and rate: deliveries/s received
against offered, the gateway's CPU, and the latency of every 100th
client's deliveries (publish to receipt). Memory: the gateway's RSS growth
per session with its stream open (SSE), with its poll held (long-poll),
between polls (long-poll sessions with no request: the session and its
pipe only), and per WebSocket connection. With --tls every client talks
to the wss listener through Python's ssl (a throwaway CA and an EC P-256
localhost certificate made with openssl): SSE and long-polling over
HTTPS against MQTT over wss.
"""
import argparse, asyncio, base64, json, os, resource, shutil, ssl, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (free ports, the binary's path)
from idle_probe import rss  # noqa: E402  (the broker's RSS from /proc)
from transports import make_pki  # noqa: E402  (a CA and a localhost certificate)

# Sessions opened at once; the rest wait.
CONCURRENT = 400
# Seconds of flow before counting, and after the sessions opened before RSS
# is read.
WARMUP = 2.0
SETTLE = 2.0
# One client in this many records latencies.
SAMPLE_EVERY = 100
TOPIC = "fb/all"
# With --tls: the directory of the PEM files, and the clients' context.
PKI = None
TLS = None


def dial(port, factory=None):
    """A connection to the gateway's (w)s listener, over TLS with --tls."""
    loop = asyncio.get_running_loop()
    extra = dict(ssl=TLS, server_hostname="localhost") if TLS else {}
    if factory is None:
        return asyncio.open_connection("127.0.0.1", port, **extra)
    return loop.create_connection(factory, "127.0.0.1", port, **extra)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stats:
    def __init__(self):
        self.delivered = 0
        self.latencies = []
        self.counting = False

    def got(self, n, stamp, sampled):
        if not self.counting:
            return
        self.delivered += n
        if sampled and stamp:
            self.latencies.append(time.time_ns() - stamp)


def last_stamp(data, key):
    """The publish time in the last event of a chunk (payload "ns:<time>")."""
    i = data.rfind(key)
    if i < 0:
        return 0
    j = i + len(key)
    k = j
    while k < len(data) and 48 <= data[k] <= 57:
        k += 1
    return int(data[j:k]) if k > j else 0


async def http(port, method, path, body=b""):
    """One request on its own connection; (status, body)."""
    r, w = await dial(port)
    w.write(f"{method} {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    data = await r.read()
    w.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), rest


class Sse(asyncio.Protocol):
    """An SSE stream: counts `data:` lines."""

    def __init__(self, sid, stats, sampled, opened):
        self.sid, self.stats, self.sampled, self.opened = sid, stats, sampled, opened
        self.head = b""

    def connection_made(self, t):
        self.t = t
        t.write(f"GET /push/sse?sid={self.sid} HTTP/1.1\r\nHost: b\r\n\r\n".encode())

    def data_received(self, data):
        if not self.opened.done():
            self.head += data
            if b'"type":"session"' in self.head:
                self.opened.set_result(True)
            return
        n = data.count(b"\ndata: ") + data.startswith(b"data: ")
        if n:
            self.stats.got(n, last_stamp(data, b'"payload":"ns:') if self.sampled else 0, self.sampled)


class Poll(asyncio.Protocol):
    """A long-poll loop on one keep-alive connection: polls again as soon
    as a response is complete, with the last event id as its cursor."""

    def __init__(self, sid, stats, sampled, opened):
        self.sid, self.stats, self.sampled, self.opened = sid, stats, sampled, opened
        self.buf = b""
        self.cursor = ""
        self.stopped = False

    def connection_made(self, t):
        self.t = t
        self.poll()

    def poll(self):
        if self.t.is_closing():
            return
        ack = f"&ack={self.cursor}" if self.cursor else ""
        self.t.write(f"GET /push/poll?sid={self.sid}{ack} HTTP/1.1\r\nHost: b\r\n\r\n".encode())

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            i = self.buf.find(b"Content-Length: ", 0, end)
            length = int(self.buf[i + 16:self.buf.index(b"\r\n", i)])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            j = body.rfind(b'"id":"')
            if j >= 0:
                self.cursor = body[j + 6:body.index(b'"', j + 6)].decode()
            n = body.count(b'"type":"message"')
            if n:
                self.stats.got(n, last_stamp(body, b'"payload":"ns:') if self.sampled else 0, self.sampled)
            if not self.opened.done():
                self.opened.set_result(True)
            if not self.stopped:
                self.poll()


class Ws(asyncio.Protocol):
    """MQTT 3.1.1 over WebSocket: upgrade, CONNECT, SUBSCRIBE, then counts
    PUBLISH packets in the frames' payload stream."""

    def __init__(self, cid, stats, sampled, opened):
        self.cid, self.stats, self.sampled, self.opened = cid.encode(), stats, sampled, opened
        self.buf = b""
        self.mqtt = b""
        self.upgraded = False

    def connection_made(self, t):
        self.t = t
        key = base64.b64encode(os.urandom(16)).decode()
        t.write((f"GET /mqtt HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Protocol: mqtt\r\n\r\n").encode())

    def send(self, packet):
        mask = b"\x00\x00\x00\x00"  # a zero mask: masked as the RFC asks, bytes unchanged
        n = len(packet)
        head = bytes([0x82, 0x80 | n]) if n < 126 else bytes([0x82, 0xFE]) + n.to_bytes(2, "big")
        self.t.write(head + mask + packet)

    def data_received(self, data):
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.buf = self.buf[end + 4:]
            self.upgraded = True
            var = b"\x00\x04MQTT\x04\x02\x02\x58"
            body = var + len(self.cid).to_bytes(2, "big") + self.cid
            self.send(bytes([0x10, len(body)]) + body)
            topic = TOPIC.encode()
            sub = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x00"
            self.send(bytes([0x82, len(sub)]) + sub)
        while len(self.buf) >= 2:
            n = self.buf[1] & 0x7F
            off = 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, off = int.from_bytes(self.buf[2:4], "big"), 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, off = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < off + n:
                return
            self.mqtt += self.buf[off:off + n]
            self.buf = self.buf[off + n:]
        self.packets()

    def packets(self):
        count, stamp, i = 0, 0, 0
        m = self.mqtt
        while i + 2 <= len(m):
            length, mult, j = 0, 1, i + 1
            while True:
                if j >= len(m):
                    self.mqtt = m[i:]
                    return self.tally(count, stamp)
                b = m[j]
                length += (b & 0x7F) * mult
                mult *= 128
                j += 1
                if not b & 0x80:
                    break
            if j + length > len(m):
                break
            kind = m[i] >> 4
            if kind == 9 and not self.opened.done():
                self.opened.set_result(True)
            elif kind == 3:
                count += 1
                if self.sampled:
                    stamp = last_stamp(m[j:j + length], b"ns:")
            i = j + length
        self.mqtt = m[i:]
        self.tally(count, stamp)

    def tally(self, count, stamp):
        if count:
            self.stats.got(count, stamp, self.sampled)


async def publisher(port, rate, stop):
    """MQTT 3.1.1 over TCP, QoS 0 to TOPIC at `rate` per second."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    cid = b"fb-pub"
    body = b"\x00\x04MQTT\x04\x02\x02\x58" + len(cid).to_bytes(2, "big") + cid
    w.write(bytes([0x10, len(body)]) + body)
    await r.readexactly(4)
    topic = TOPIC.encode()
    sent, start = 0, time.monotonic()
    while not stop.is_set():
        due = start + sent / rate
        await asyncio.sleep(max(0, due - time.monotonic()))
        payload = f"ns:{time.time_ns()}".encode()
        body = len(topic).to_bytes(2, "big") + topic + payload
        w.write(bytes([0x30, len(body)]) + body)
        sent += 1
    w.close()


async def open_sessions(kind, n, port, stats, tag):
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONCURRENT)
    transports, protos = [], []

    async def one(i):
        async with gate:
            sid = f"{tag}-{i}"
            opened = loop.create_future()
            cls = {"sse": Sse, "poll": Poll, "ws": Ws}[kind]
            t, p = await dial(port, lambda: cls(sid, stats, i % SAMPLE_EVERY == 0, opened))
            await asyncio.wait_for(opened, 20)
            if kind != "ws":
                body = json.dumps({"topic": TOPIC, "qos": 0}).encode()
                status, rest = await http(port, "POST", f"/push/subscribe?sid={sid}", body)
                if status != 200:
                    raise RuntimeError(f"subscribe: {status} {rest[:80]!r}")
            transports.append(t)
            protos.append(p)

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    return transports, protos, failed


async def between_polls(n, port, pid):
    """RSS growth per long-poll session with no request outstanding."""
    gate = asyncio.Semaphore(CONCURRENT)
    before = rss(pid)

    async def one(i):
        async with gate:
            status, _ = await http(port, "GET", f"/push/poll?sid=idle-{i}")
            if status != 200:
                raise RuntimeError(f"poll: {status}")

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    ok = sum(1 for r in results if not isinstance(r, BaseException))
    await asyncio.sleep(SETTLE)
    return (rss(pid) - before) / max(ok, 1), ok


async def run_transport(kind, n, rates, duration, port, tcp, pid):
    stats = Stats()
    before = rss(pid)
    started = time.monotonic()
    transports, protos, failed = await open_sessions(kind, n, port, stats, f"{kind}-{os.getpid()}")
    opened_in = time.monotonic() - started
    await asyncio.sleep(SETTLE)
    per = (rss(pid) - before) / max(len(transports), 1)
    rows = []
    for rate in rates:
        stop = asyncio.Event()
        pub = asyncio.create_task(publisher(tcp, rate, stop))
        await asyncio.sleep(WARMUP)
        stats.delivered, stats.latencies, stats.counting = 0, [], True
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(duration)
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        stats.counting = False
        stop.set()
        await pub
        lat = sorted(stats.latencies)
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6 if lat else float("nan")
        rows.append(dict(transport=kind, clients=len(transports), rate=rate,
                         offered=rate * len(transports), delivered=stats.delivered / (t1 - t0),
                         cpu=100 * (cpu1 - cpu0) / (t1 - t0), p50=q(0.5), p99=q(0.99)))
        await asyncio.sleep(1.0)  # what is in flight drains before the next rate
    for p in protos:
        if isinstance(p, Poll):
            p.stopped = True
    for t in transports:
        t.abort()
    return dict(transport=kind, per=per, opened=len(transports), failed=len(failed),
                opened_in=opened_in, first_error=repr(failed[0])[:120] if failed else ""), rows


def start_gateway():
    port = compare.free_port()
    env = dict(os.environ,
               TETHER_NODE__CORES="1",
               TETHER_LISTENERS__TCP=f"127.0.0.1:{port}",
               TETHER_WEBSOCKET__LISTEN=f"127.0.0.1:{compare.free_port()}",
               TETHER_HTTP__LISTEN=f"127.0.0.1:{compare.free_port()}",
               TETHER_SYS__INTERVAL_SECS="0",
               TETHER_WEBSOCKET__FALLBACK__MAX_SESSIONS_PER_CORE="100000",
               RUST_LOG="warn")
    if PKI:
        env.update(TETHER_TLS__ENABLED="true",
                   TETHER_TLS__LISTEN=f"127.0.0.1:{compare.free_port()}",
                   TETHER_TLS__WSS_LISTEN=f"127.0.0.1:{compare.free_port()}",
                   TETHER_TLS__CERT_FILE=os.path.join(PKI, "server.pem"),
                   TETHER_TLS__KEY_FILE=os.path.join(PKI, "server.key"))
    proc = subprocess.Popen(["taskset", "-c", "0", compare.TETHER], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ws_port = None
    for line in proc.stdout:
        scheme = "wss://" if PKI else "ws://"
        if ("mqtt/wss" if PKI else "mqtt/ws ") in line:
            ws_port = int(line.split(scheme)[1].split("/")[0].rsplit(":", 1)[1])
        if "ready" in line:
            break
    if ws_port is None:
        proc.kill()
        raise SystemExit("the gateway did not start (cargo build --release)")
    return proc, port, ws_port


async def main_async(a):
    os.sched_setaffinity(0, {1})
    rates = [float(r) for r in a.rates.split(",")]
    summaries, rows = [], []
    for kind in a.transports.split(","):
        proc, tcp, ws = start_gateway()
        try:
            await asyncio.sleep(0.5)
            s, r = await run_transport(kind, a.clients, rates, a.duration, ws, tcp, proc.pid)
            summaries.append(s)
            rows += r
            print(f"{kind}: {s['opened']:,} sessions in {s['opened_in']:.1f} s ({s['failed']} failed "
                  f"{s['first_error']}), {s['per']:,.0f} B each", flush=True)
            for x in r:
                print(f"  {x['rate']:g} msg/s: {x['delivered']:,.0f} of {x['offered']:,.0f} deliveries/s, "
                      f"gateway CPU {x['cpu']:.1f} %, p50 {x['p50']:.2f} ms, p99 {x['p99']:.2f} ms", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    if "poll" in a.transports.split(","):
        # Its own gateway: the sessions of the runs above would go away
        # while this one measures.
        proc, tcp, ws = start_gateway()
        try:
            await asyncio.sleep(0.5)
            per, ok = await between_polls(a.clients, ws, proc.pid)
            print(f"poll, between polls: {per:,.0f} B per session ({ok:,} sessions)", flush=True)
            summaries.append(dict(transport="between", per=per))
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"\n{a.clients:,} clients per transport{' over TLS' if a.tls else ''}, QoS 0 broadcast, "
          f"gateway on one core "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}):")
    print("| transport | rate | offered/s | delivered/s | gateway CPU | CPU µs per delivery | p50 | p99 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for x in rows:
        per = 1e4 * x["cpu"] / x["delivered"] if x["delivered"] else float("nan")
        print(f"| {x['transport']} | {x['rate']:g}/s | {x['offered']:,.0f} | {x['delivered']:,.0f} | "
              f"{x['cpu']:.1f} % | {per:.2f} | {x['p50']:.2f} ms | {x['p99']:.2f} ms |")
    print("\n| transport | RSS per idle session |")
    print("| --- | ---: |")
    for s in summaries:
        label = {"sse": "SSE, stream open", "poll": "long-poll, poll held", "ws": "MQTT over WebSocket",
                 "between": "long-poll, between polls (session only)"}[s["transport"]]
        print(f"| {label} | {s['per']:,.0f} B |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--clients", type=int, default=10_000)
    ap.add_argument("--rates", default="1,2", help="broadcast messages/s, comma-separated")
    ap.add_argument("-d", "--duration", type=float, default=8.0)
    ap.add_argument("--transports", default="ws,sse,poll")
    ap.add_argument("--tls", action="store_true",
                    help="HTTPS and wss on the wss listener instead of HTTP and ws")
    a = ap.parse_args()
    if a.tls:
        global PKI, TLS
        PKI = tempfile.mkdtemp(prefix="fallback-bench-pki-")
        make_pki(PKI)
        TLS = ssl.create_default_context(cafile=os.path.join(PKI, "ca.pem"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.clients + CONCURRENT + 100
    if hard < need:
        raise SystemExit(f"open-file limit {hard} < {need}: lower -n")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        asyncio.run(main_async(a))
    finally:
        if PKI:
            shutil.rmtree(PKI)


if __name__ == "__main__":
    main()
