"""`xenmux watch [DOMID...]`: events as they happen."""

from __future__ import annotations

import argparse
import sys

from mux.cli import add_socket_argument
from mux.client import Subscription, Unreachable, XenmuxError
from mux.commands.output import clock, emit, fail, table
from mux.protocol import DEFAULT_KINDS, EVENT_KINDS

PRETTY = ("TIME", "SEQ", "DOMID", "NAME", "EVENT", "REASON", "UUID")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("domids", nargs="*", type=int, metavar="DOMID", help="domains (all if none)")
    p.add_argument("--snapshot", action="store_true", help="print the current state first")
    p.add_argument("--pretty", action="store_true", help="a readable table with domain names")
    p.add_argument("--events", help=f"comma-separated kinds (default: {','.join(DEFAULT_KINDS)})")
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    add_socket_argument(p)


def run(args: argparse.Namespace) -> int:
    kinds = None
    if args.events:
        kinds = [k.strip() for k in args.events.split(",") if k.strip()]
        bad = [k for k in kinds if k not in EVENT_KINDS]
        if bad:
            return fail("watch", f"unknown event kind {bad[0]!r}: use {', '.join(EVENT_KINDS)}", 2)
    try:
        sub = Subscription(
            args.domids or None, events=kinds, socket_path=args.socket, retry_timeout=args.timeout
        )
    except (Unreachable, XenmuxError) as exc:
        return fail("watch", str(exc))
    names = {row["domid"]: row.get("name") for row in sub.snapshot}
    import time

    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    with sub:
        if args.snapshot:
            if args.pretty:
                table(
                    ("DOMID", "NAME", "STATE", "REASON", "UUID"),
                    [
                        (r["domid"], r.get("name"), r["state"], r.get("reason"), r["uuid"])
                        for r in sub.snapshot
                    ],
                    out=sys.stdout,
                )
            else:
                for row in sub.snapshot:
                    emit({"snapshot": True, **row})
                for domid in sub.absent:
                    emit({"snapshot": True, "domid": domid, "state": "absent"})
        if args.pretty:
            print("  ".join(PRETTY), flush=True)
        seen = 0
        while args.count is None or seen < args.count:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                ev = sub.next_event(left)
            except (Unreachable, XenmuxError) as exc:
                return fail("watch", str(exc))
            if ev is None:
                break
            seen += 1
            if ev.get("name"):
                names[ev["domid"]] = ev["name"]
            if args.pretty:
                reason = ev.get("reason") or ""
                if ev.get("missed"):
                    reason = (reason + " (missed)").strip()
                print(
                    f"{clock(ev.get('time'))}  {ev.get('seq', '-')!s:>6}  {ev['domid']:>5}  "
                    f"{(names.get(ev['domid']) or '-')[:20]:<20}  {ev['event']:<8}  "
                    f"{reason:<18}  {ev['uuid']}",
                    flush=True,
                )
            else:
                emit(ev)
    return 0
