"""A member that floods the daemon with requests and never reads a reply (docs/chaos.md).

    python -m mux.chaos.flood --socket SOCK [--count N] [--op list]

It writes N requests as fast as the daemon takes them, then waits, reading nothing, until
the runner kills it: what the daemon holds for it, and how it serves everyone else
meanwhile, is what the run measures.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys

CHUNK = 100  # requests per write


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mux.chaos.flood")
    p.add_argument("--socket", required=True)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--op", default="list")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(args.socket)
        for first in range(0, args.count, CHUNK):
            lines = (
                json.dumps({"op": args.op, "id": i}) + "\n"
                for i in range(first, min(first + CHUNK, args.count))
            )
            sock.sendall("".join(lines).encode())
        signal.pause()
    except OSError as exc:
        print(f"flood: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
