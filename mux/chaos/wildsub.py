"""A wildcard subscriber through `mux.client` for the chaos runner (docs/chaos.md).

    python -m mux.chaos.wildsub --socket SOCK --log FILE [--drop-every MIN MAX]

Logs, one JSON line each with `t` (CLOCK_MONOTONIC ns at receipt): its first snapshot
(`start`), every event the library hands it (`event`, `missed` ones included), and every
reconnect the library made (`reconnect`: the cursor it had, the hello it sent, and a hello
asked on a side connection right after, whose `oldest_seq` tells whether the journal could
have replayed). `--drop-every` shuts its connection down at random intervals, so that the
library reconnects and resumes by its cursor. The runner stalls it with SIGSTOP and ends it
with SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import sys
import time

from mux.chaos.members import ask
from mux.client import Subscription, XenmuxError


def _cursor(sub: Subscription) -> tuple[int | None, str | None]:
    """The library's cursor: `sub.cursor` ("HISTORY:SEQ") where it has one, else the seq
    its tracker last delivered."""
    cursor = getattr(sub, "cursor", None)
    if isinstance(cursor, str) and ":" in cursor:
        history, _, seq = cursor.rpartition(":")
        try:
            return int(seq), history or None
        except ValueError:
            pass
    return getattr(getattr(sub, "tracker", None), "seq", None), sub.hello.get("history")


def _drop(sub: Subscription) -> None:
    """Shut the subscription's connection down under it, as a network blip would."""
    conn = getattr(sub, "conn", None)
    if conn is None:  # between two connections (the daemon is away): nothing to drop
        return
    sock = getattr(conn, "sock", None)
    if not isinstance(sock, socket.socket):
        raise RuntimeError("cannot drop the connection: mux.client gives no conn.sock")
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def run(path: str, log_path: str, drop_every: tuple[float, float] | None, seed: int) -> int:
    rng = random.Random(seed)
    with open(log_path, "a", buffering=1, encoding="utf-8") as log:

        def write(record: dict) -> None:
            log.write(json.dumps({"t": time.monotonic_ns(), **record}) + "\n")

        try:
            sub = Subscription(None, socket_path=path)
        except XenmuxError as exc:
            write({"error": f"subscribe: {exc}"})
            return 1
        try:
            cursor = _cursor(sub)
            write({"start": {"snapshot": sub.snapshot, "hello": sub.hello, "seq": cursor[0]}})
            hello = sub.hello
            drop_at = None if drop_every is None else time.monotonic() + rng.uniform(*drop_every)
            while True:
                event = sub.next_event(timeout=0.2)
                if sub.hello is not hello:
                    seq, history = cursor
                    write(
                        {
                            "reconnect": {
                                "cursor": seq,
                                "history": history,
                                "hello": sub.hello,
                                "after": ask(path, "hello"),
                            }
                        }
                    )
                    hello = sub.hello
                if event is not None:
                    write({"event": event})
                cursor = _cursor(sub)
                if drop_at is not None and time.monotonic() >= drop_at:
                    _drop(sub)
                    drop_at = time.monotonic() + rng.uniform(*drop_every)
        except (XenmuxError, RuntimeError, ValueError) as exc:
            write({"error": str(exc)})
            return 1
        finally:
            sub.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mux.chaos.wildsub")
    p.add_argument("--socket", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--drop-every", type=float, nargs=2, metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    # SIGTERM ends it through the finally blocks (the log is line-buffered: nothing is lost).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        return run(args.socket, args.log, args.drop_every, args.seed)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
