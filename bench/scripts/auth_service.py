#!/usr/bin/env python3
"""A stand-in for the business's auth service in bench/auth.sh: HTTP/1.1
with keep-alive on asyncio (one thread, no per-request thread), answering
every POST with {"result": "allow"} after --latency-ms. It prints its
port, then serves until killed; on SIGTERM it prints how many requests
it answered.

    python3 bench/scripts/auth_service.py --latency-ms 5
"""
import argparse, asyncio, signal

ANSWER = b'{"result": "allow"}'
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER)


async def serve(reader, writer, latency, count):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            count[0] += 1
            if latency:
                await asyncio.sleep(latency)
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
            asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-ms", type=float, default=0)
    a = ap.parse_args()
    count = [0]
    server = await asyncio.start_server(
        lambda r, w: serve(r, w, a.latency_ms / 1000, count), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    return count[0]


if __name__ == "__main__":
    print(f"requests {asyncio.run(main())}", flush=True)
