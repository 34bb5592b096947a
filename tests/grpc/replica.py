"""A backend replica of the Upstream stream, for tests/it/grpc.rs: an
independent gRPC client (Python grpcio, stubs generated from
src/grpc/tether.proto by grpc_tools at test time).

    replica.py STUBS ADDR FILTER GROUP HOLD_AFTER TOKEN

Subscribes on FILTER in GROUP, prints `attached` once the node took the
stream, then `got <seq> <payload> <redelivered 0|1>` per message, and
acknowledges the first HOLD_AFTER messages it gets (every one when
HOLD_AFTER is -1), holding the rest unacknowledged.
"""
import queue
import sys

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
import tether_pb2 as pb  # noqa: E402
import tether_pb2_grpc as pbg  # noqa: E402

addr, filt, group, hold_after, token = sys.argv[2:7]
hold_after = int(hold_after)
acks = queue.Queue()


def requests():
    yield pb.UpstreamRequest(subscribe=pb.Subscribe(filter=filt, group=group))
    while True:
        seq = acks.get()
        yield pb.UpstreamRequest(ack=pb.Ack(seq=[seq]))


stub = pbg.TetherStub(grpc.insecure_channel(addr))
stream = stub.Upstream(requests(), metadata=[("authorization", f"Bearer {token}")])
stream.initial_metadata()
if stream.done():
    # Refused before it began: the status says why.
    print(f"refused {stream.code().name} {stream.details()}", flush=True)
    sys.exit(1)
print("attached", flush=True)
acked = 0
for m in stream:
    print(f"got {m.seq} {m.payload.decode()} {int(m.redelivered)}", flush=True)
    if hold_after < 0 or acked < hold_after:
        acked += 1
        acks.put(m.seq)
