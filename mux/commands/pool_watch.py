"""`xenmux pool watch`: every host's events from the pool stream, as they happen."""

from __future__ import annotations

import argparse
import time

from mux.bridge import names
from mux.bridge.natsconn import NatsOptions
from mux.bridge.reader import Follower, Inbox, Start, parse_since
from mux.bridge.view import PAUSED, UNPAUSED
from mux.commands.output import clock, emit
from mux.protocol import EVENT_KINDS

# (header, width, right-aligned) of each column of --pretty
COLUMNS = (
    ("TIME", 12, False),
    ("POOL_SEQ", 8, True),
    ("HOST", 16, False),
    ("DOMID", 5, True),
    ("NAME", 20, False),
    ("EVENT", 8, False),
    ("REASON", 18, False),
    ("UUID", 0, False),
)


def pretty_line(cells: list) -> str:
    out = []
    for (_header, width, right), cell in zip(COLUMNS, cells, strict=True):
        text = str(cell)[:width] if width else str(cell)
        out.append(text.rjust(width) if right else text.ljust(width))
    return "  ".join(out).rstrip()


def configure(p: argparse.ArgumentParser) -> None:
    from mux.commands.pool import add_stream_argument

    add_stream_argument(p)
    p.add_argument("--host", help="only this host's events")
    p.add_argument("--domid", type=int, help="only this domid's events (with --host: one domain)")
    p.add_argument("--uuid", help="only this VM's events, on whichever host")
    p.add_argument("--events", metavar="K,..", help="comma-separated kinds (default: all)")
    p.add_argument(
        "--since",
        metavar="TIME|SEQ",
        help="start at a stream sequence, a time (ISO 8601) or a duration ago (15m, 2h); "
        "default: what comes next",
    )
    p.add_argument(
        "--durable",
        metavar="NAME",
        help="a durable consumer: it keeps its place on the server between runs",
    )
    p.add_argument("--pretty", action="store_true", help="a readable table")
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")


def _kinds(text: str | None) -> list[str] | None:
    if not text:
        return None
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in (*EVENT_KINDS, PAUSED, UNPAUSED)]
    if bad:
        raise ValueError(f"unknown event kind {bad[0]!r}: use {', '.join(EVENT_KINDS)}")
    return kinds


async def main(args: argparse.Namespace, opts: NatsOptions) -> int:
    kinds = _kinds(args.events)
    start = parse_since(args.since) if args.since else Start("new")
    if args.durable:
        names.check_consumer_name(args.durable)
    host = names.encode_host(args.host) if args.host else None
    subject = names.filter_subject(
        host, args.domid, kinds[0] if kinds and len(kinds) == 1 else None
    )
    follower = Follower(opts, args.stream, subject, start, args.durable, "xenmux pool watch")
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    if args.pretty:
        print(pretty_line([c[0] for c in COLUMNS]), flush=True)
    seen = 0
    inbox = Inbox(follower)
    try:
        while args.count is None or seen < args.count:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            msg = await inbox.get(left)
            if msg is None:
                break
            ev = msg.event
            if (kinds is not None and ev.get("event") not in kinds) or (
                args.uuid and ev.get("uuid") != args.uuid
            ):
                await msg.done()
                continue
            seen += 1
            if args.pretty:
                reason = ev.get("reason") or ""
                if ev.get("missed"):
                    reason = (reason + " (missed)").strip()
                cells = [clock(ev.get("time")), msg.stream_seq, ev.get("host"), ev.get("domid")]
                cells += [ev.get("name") or "-", ev.get("event"), reason, ev.get("uuid")]
                print(pretty_line(cells), flush=True)
            else:
                emit({**ev, "pool_seq": msg.stream_seq})
            await msg.done()
    finally:
        await inbox.close()
    return 0
