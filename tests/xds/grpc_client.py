#!/usr/bin/env python3
"""A proxyless gRPC client for the xDS tests: resolves TARGET (an `xds:///` URI) through the
control plane named in GRPC_XDS_BOOTSTRAP and calls /meridian.test.Echo/Who in a loop.

For each line read from stdin (a comma-separated set of server names), it calls until the last
WINDOW answers came from exactly that set, then prints `converged NAMES`; if that does not
happen within DEADLINE seconds it prints what it saw and exits with status 1."""

import collections
import sys
import time

import grpc

WINDOW = 12
DEADLINE = 30.0


def main(target):
    channel = grpc.insecure_channel(target)
    who = channel.unary_unary("/meridian.test.Echo/Who")
    recent = collections.deque(maxlen=WINDOW)
    for line in sys.stdin:
        want = set(filter(None, line.strip().split(",")))
        recent.clear()
        end = time.time() + DEADLINE
        last_error = None
        while True:
            try:
                recent.append(who(b"", timeout=5).decode())
            except grpc.RpcError as e:
                last_error = f"{e.code()}: {e.details()}"
                recent.clear()
                time.sleep(0.05)
            if len(recent) == WINDOW and set(recent) == want:
                print("converged " + ",".join(sorted(want)), flush=True)
                break
            if time.time() > end:
                print(f"timeout: wanted {sorted(want)}, last answers {list(recent)}, "
                      f"last error {last_error}", flush=True)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
