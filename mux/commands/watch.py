"""`xenmux watch [DOMAIN...]`: events as they happen, from now or from a cursor.

At exit (--count, --timeout, Ctrl-C, SIGTERM, a closed pipe) the last line on stderr is
`xenmux watch: resume with --since HISTORY:SEQ`: a later `watch --since` replays whatever
happened after the last event printed, then follows.
"""

from __future__ import annotations

import argparse
import signal
import sys

from mux.cli import add_socket_argument
from mux.client import Cursor, Subscription, XenmuxError
from mux.client.wire import Deadline
from mux.commands.eventview import EventPrinter
from mux.commands.failure import EXIT_USAGE, CommandError
from mux.commands.output import JSON, add_output_arguments
from mux.commands.subscribe import start
from mux.commands.targets import add_target_arguments
from mux.protocol import DEFAULT_KINDS, EVENT_KINDS

EXIT_TERMINATED = 128 + signal.SIGTERM


def _kinds_help() -> str:
    asked_only = [k for k in EVENT_KINDS if k not in DEFAULT_KINDS]
    text = f"comma-separated kinds to show, some of {', '.join(EVENT_KINDS)} (default: "
    text += ", ".join(DEFAULT_KINDS)
    if asked_only:
        text += f"; {' and '.join(asked_only)} only when asked for"
    return text + ")"


def configure(p: argparse.ArgumentParser) -> None:
    add_target_arguments(p, "domains to watch (every domain if none)", required=False)
    p.add_argument("--events", metavar="KINDS", help=_kinds_help())
    start_at = p.add_mutually_exclusive_group()
    start_at.add_argument(
        "--snapshot", action="store_true", help="print the current state of the domains first"
    )
    start_at.add_argument(
        "--since",
        metavar="CURSOR",
        help="resume from a cursor (HISTORY:SEQ as watch prints at exit, or SEQ): replay "
        "every event after it, then follow; if the daemon no longer holds it, say so on "
        'stderr and print the current state instead (snapshot lines with "gap": true)',
    )
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="stop after S seconds; exit 1 if no subscribe reply came within them",
    )
    add_output_arguments(p, JSON, alias="--pretty", times=True)
    add_socket_argument(p)


def _kinds(text: str | None) -> list[str] | None:
    if not text:
        return None
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in EVENT_KINDS]
    if bad:
        raise CommandError(
            f"unknown event kind {bad[0]!r}: use some of {', '.join(EVENT_KINDS)}", EXIT_USAGE
        )
    return kinds


def _since(text: str | None) -> Cursor | None:
    if text is None:
        return None
    try:
        return Cursor.parse(text)
    except ValueError as exc:
        raise CommandError(f"--since: {exc}", EXIT_USAGE) from None


def _terminated(signum, frame) -> None:
    raise SystemExit(EXIT_TERMINATED)  # unwinds through the `finally` that prints the cursor


def run(args: argparse.Namespace) -> int:
    kinds = _kinds(args.events)
    since = _since(args.since)
    deadline = Deadline.after(args.timeout)
    signal.signal(signal.SIGTERM, _terminated)
    sub = start("watch", args, unknown_status=EXIT_USAGE, events=kinds, since=since)
    printer = EventPrinter.for_snapshot(args, sub.snapshot)
    with sub:
        try:
            if sub.gap:
                print(
                    f"xenmux watch: cannot resume from {since}: the daemon's journal no longer "
                    "holds it, or it belongs to another history; the current state follows",
                    file=sys.stderr,
                    flush=True,
                )
                printer.snapshot(sub.snapshot, sub.absent, gap=True)
            elif args.snapshot:
                printer.snapshot(sub.snapshot, sub.absent)
            printer.header()
            _follow(sub, printer, args.count, deadline)
        finally:
            if sub.cursor is not None:
                print(f"xenmux watch: resume with --since {sub.cursor}", file=sys.stderr)
    return 0


def _follow(sub: Subscription, printer: EventPrinter, count: int | None, deadline: Deadline):
    seen = 0
    while count is None or seen < count:
        if deadline.passed():
            return
        try:
            ev = sub.next_event(deadline.left())
        except XenmuxError as exc:
            if deadline.at is not None and deadline.passed():
                return  # the daemon went away at the end of our time: that is not an error
            raise CommandError(str(exc)) from None
        if ev is None:
            return
        seen += 1
        printer.event(ev)
