"""`xenmux domains`: the daemon's table, with names."""

from __future__ import annotations

import argparse
import sys

from mux.cli import add_socket_argument
from mux.client import Client, Unreachable, XenmuxError
from mux.commands.output import emit, fail, table


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="JSON lines, one per domain")
    add_socket_argument(p)


def run(args: argparse.Namespace) -> int:
    try:
        with Client(args.socket) as c:
            rows = c.list()
    except (Unreachable, XenmuxError) as exc:
        return fail("domains", str(exc))
    if args.json:
        for r in rows:
            emit(r)
        return 0
    table(
        ("DOMID", "NAME", "STATE", "REASON", "UUID"),
        [
            (r["domid"], r.get("name") or "-", r["state"], r.get("reason") or "", r["uuid"])
            for r in rows
        ],
        out=sys.stdout,
    )
    return 0
