#!/usr/bin/env python3
"""Idle-connection memory, measured by a client that shares nothing with
tether-bench: Python asyncio opens N MQTT 3.1.1 connections (over TCP, TLS
or WebSocket), waits for every CONNACK, holds them, and reads the broker's
RSS from /proc before and after. Tether (one core) and Mosquitto (and
FlashMQ, rumqttd over TCP when asked), side by side in one run, ROUNDS
rounds each, brokers alternating.

    python3 bench/scripts/idle_probe.py                       # TCP, 15,000 connections
    python3 bench/scripts/idle_probe.py --transport ws --brokers tether-1
    python3 bench/scripts/idle_probe.py --transport tls -n 10000

Needs target/release/tether (cargo build --release) and Debian's mosquitto
(whose WebSocket listener does not start on this machine: see
transports.py). Prints one line per run and the medians.
"""
import argparse, asyncio, base64, os, resource, ssl, statistics, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (free ports and the broker runners only)
from transports import TransportBroker, make_pki  # noqa: E402

# Connections opened at once (the rest wait), so the broker's accept queue
# and this process's handshakes stay bounded.
CONCURRENT = 500
# Seconds the connections are held before RSS is read: lets the broker
# finish what a CONNECT leaves behind (handshake buffers, timers).
SETTLE = 2.0
# Keep-alive asked of the broker: long enough that no PINGREQ is needed.
KEEP_ALIVE = 600


def connect_packet(i):
    cid = f"probe-{os.getpid()}-{i}".encode()
    var = b"\x00\x04MQTT\x04\x02" + KEEP_ALIVE.to_bytes(2, "big")  # 3.1.1, clean session
    body = var + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


def ws_frame(payload):
    """One masked binary frame (clients must mask, RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x82, 0x80 | n]) if n < 126 else bytes([0x82, 0xFE]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def open_one(i, port, transport, tls_ctx, gate, held):
    async with gate:
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls_ctx, server_hostname="localhost" if tls_ctx else None)
        packet = connect_packet(i)
        if transport == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            w.write((f"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n").encode())
            head = await r.readuntil(b"\r\n\r\n")
            if b" 101 " not in head.split(b"\r\n")[0]:
                raise RuntimeError(f"upgrade refused: {head[:60]!r}")
            packet = ws_frame(packet)
        w.write(packet)
        if transport == "ws":
            frame = await r.readexactly(2)
            ack = await r.readexactly(frame[1] & 0x7F)
        else:
            ack = await r.readexactly(4)
        if ack[0] != 0x20 or ack[3] != 0:
            raise RuntimeError(f"CONNACK refused: {ack!r}")
        held.append(w)


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def probe(broker, n, transport, tmp):
    port = compare.free_port()
    proc = broker.start(port, tmp)
    held = []
    try:
        await asyncio.sleep(0.5)
        before = rss(proc.pid)
        tls_ctx = None
        if transport == "tls":
            tls_ctx = ssl.create_default_context(cafile=os.path.join(broker.tmp, "ca.pem"))
        gate = asyncio.Semaphore(CONCURRENT)
        started = time.monotonic()
        results = await asyncio.gather(
            *(open_one(i, port, transport, tls_ctx, gate, held) for i in range(n)),
            return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        took = time.monotonic() - started
        await asyncio.sleep(SETTLE)
        after = rss(proc.pid)
        return (after - before) / max(len(held), 1), len(held), len(failed), took, before
    finally:
        for w in held:
            w.transport.abort()
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:
            proc.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--connections", type=int, default=15_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--transport", choices=["tcp", "tls", "ws"], default="tcp")
    ap.add_argument("--brokers", default="tether-1,mosquitto",
                    help="comma-separated: tether-1, mosquitto, flashmq (FLASHMQ names it), rumqttd (TCP only)")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < a.connections + 100:
        raise SystemExit(f"open-file limit {hard} < {a.connections} connections: lower -n")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    names = a.brokers.split(",")
    got = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        make_pki(tmp)
        brokers = {name: TransportBroker(name if name in ("mosquitto", "flashmq", "rumqttd") else "tether",
                                         name, a.transport, tmp) for name in names}
        for rnd in range(1, a.rounds + 1):
            for name in names:
                per, ok, failed, took, before = asyncio.run(probe(brokers[name], a.connections, a.transport, tmp))
                got[name].append(per)
                print(f"round {rnd} {name} {a.transport}: {per:,.0f} B per connection "
                      f"({ok:,} held, {failed} failed, opened in {took:.1f} s; RSS before {before / 2**20:.1f} MiB)",
                      flush=True)
    print(f"\nmedians, {a.connections:,} idle {a.transport} connections, {a.rounds} rounds "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}):")
    for name in names:
        print(f"  {name}: {statistics.median(got[name]):,.0f} B per connection "
              f"(rounds: {', '.join(f'{v:,.0f}' for v in got[name])})")


if __name__ == "__main__":
    main()
