#!/usr/bin/python3
"""The gRPC API from Python, without grpcurl: Debian's python3-grpcio and
python3-grpc-tools (`apt-get install python3-grpcio python3-grpc-tools`).
The stubs are generated from src/grpc/tether.proto on each run.

    examples/grpc_tour.py push USER TEXT         # to every device of USER
    examples/grpc_tour.py publish TOPIC TEXT     # to a topic, QoS 1
    examples/grpc_tour.py user USER              # presence, cluster-wide
    examples/grpc_tour.py upstream FILTER [GROUP] [--count N]
                                                 # client messages, acknowledged

Options (before the command): --addr HOST:PORT (127.0.0.1:8090),
--token TOKEN (http.tokens, when set), --key KEY (an idempotency key).
"""
import argparse
import os
import queue
import shutil
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "grpc")


def stubs():
    """tether_pb2 and tether_pb2_grpc, generated into a temporary directory."""
    out = tempfile.mkdtemp(prefix="tether-grpc-")
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}",
                      f"--grpc_python_out={out}", os.path.join(PROTO_DIR, "tether.proto")])
    if rc != 0:
        sys.exit("grpc_tools could not compile src/grpc/tether.proto")
    sys.path.insert(0, out)
    try:
        import tether_pb2
        import tether_pb2_grpc
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return tether_pb2, tether_pb2_grpc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", default="127.0.0.1:8090")
    ap.add_argument("--token", default="")
    ap.add_argument("--key", default="", help="idempotency key: a retry with it delivers nothing again")
    ap.add_argument("command", choices=["push", "publish", "user", "upstream"])
    ap.add_argument("args", nargs="*")
    ap.add_argument("--count", type=int, default=0, help="upstream: stop after N messages")
    a = ap.parse_args()
    pb, pbg = stubs()
    stub = pbg.TetherStub(grpc.insecure_channel(a.addr))
    md = [("authorization", f"Bearer {a.token}")] if a.token else []
    try:
        if a.command == "push":
            user, text = a.args
            r = stub.PushUser(pb.PushRequest(to=user, idempotency_key=a.key,
                                             message=pb.Message(payload=text.encode(), qos=1)), metadata=md)
            print(f"id={r.id} topic={r.topic}")
        elif a.command == "publish":
            topic, text = a.args
            r = stub.Publish(pb.PublishRequest(idempotency_key=a.key,
                                               message=pb.Message(topic=topic, payload=text.encode(), qos=1)),
                             metadata=md)
            print(f"id={r.id}")
        elif a.command == "user":
            (user,) = a.args
            r = stub.GetUser(pb.UserRequest(user=user), metadata=md)
            print(f"{r.user}: {len(r.connections)} online")
            for c in r.connections:
                print(f"  {c.client_id} node={c.node} {c.transport}")
        else:
            upstream(pb, stub, md, a)
    except grpc.RpcError as e:
        sys.exit(f"{e.code().name}: {e.details()}")


def upstream(pb, stub, md, a):
    filt = a.args[0]
    group = a.args[1] if len(a.args) > 1 else ""
    acks = queue.Queue()

    def requests():
        yield pb.UpstreamRequest(subscribe=pb.Subscribe(filter=filt, group=group))
        while True:
            seq = acks.get()
            if seq is None:
                return
            yield pb.UpstreamRequest(ack=pb.Ack(seq=[seq]))

    stream = stub.Upstream(requests(), metadata=md)
    stream.initial_metadata()
    print(f"listening on {filt}" + (f" in group {group}" if group else ""), flush=True)
    n = 0
    for m in stream:
        # Do the backend's work here; the publisher's PUBACK waits for the ack.
        print(f"{m.topic} from {m.client_id} (user {m.username or '-'}, node {m.node}, "
              f"id {m.id}): {m.payload.decode(errors='replace')}", flush=True)
        acks.put(m.seq)
        n += 1
        if a.count and n >= a.count:
            # Closing our side after the acks: the node ends the stream
            # once it has them, and what it sent since goes to the other
            # backends (or the fallback).
            acks.put(None)
            for _ in stream:
                pass
            return


if __name__ == "__main__":
    main()
