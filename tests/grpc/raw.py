"""One unary gRPC call with a raw body, for tests/it/grpc.rs: what a
client with a stale or broken stub sends.

    raw.py ADDR METHOD HEX_BODY

Prints the status code's name (OK, UNIMPLEMENTED, INTERNAL, ...).
"""
import sys

import grpc

addr, method, body = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
call = grpc.insecure_channel(addr).unary_unary(method)
try:
    call(body, timeout=10)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name)
