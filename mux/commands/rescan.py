"""`xenmux rescan`: make the daemon scan every domain now, and return once it has.

A resume fires nothing in Xen: a toolstack that has just resumed a domain runs this so
that subscribers hear `resumed` at once rather than at the next shutdown poll. The events
the scan found have been sent to every subscriber when it returns. Needs root or a group
allowed by `xenmux serve --allow-rescan-group`.
"""

from __future__ import annotations

import argparse
import sys

from mux.cli import add_socket_argument
from mux.commands.output import JSON, TABLE, Column, add_output_arguments, emit, table
from mux.commands.reach import add_request_timeout, ask_once


def configure(p: argparse.ArgumentParser) -> None:
    add_output_arguments(p, TABLE)
    add_request_timeout(p)
    add_socket_argument(p)
    p.epilog = "exit status: 0 done, 1 not allowed, unreachable or timed out, 2 usage"


def run(args: argparse.Namespace) -> int:
    reply = ask_once(args.socket, args.timeout, lambda c: c.rescan())
    result = {"events": reply["events"], "seq": reply["seq"]}
    if args.output == JSON:
        emit(result)
    else:
        columns = (Column("EVENTS", right=True), Column("SEQ", right=True))
        table(columns, [(result["events"], result["seq"])], out=sys.stdout)
    return 0
