#!/usr/bin/env python3
"""gRPC servers for the xDS tests: one per NAME given, each on its own loopback port, answering
the unary method /meridian.test.Echo/Who with its NAME. Prints `NAME PORT` for each, then
`ready`, and serves until stdin closes."""

import sys
from concurrent import futures

import grpc


def serve(names):
    servers = []
    for name in names:
        def who(request, context, name=name):
            return name.encode()

        handler = grpc.method_handlers_generic_handler(
            "meridian.test.Echo",
            {"Who": grpc.unary_unary_rpc_method_handler(who)},
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        print(f"{name} {port}", flush=True)
    print("ready", flush=True)
    sys.stdin.read()
    for server in servers:
        server.stop(None)


if __name__ == "__main__":
    serve(sys.argv[1:])
