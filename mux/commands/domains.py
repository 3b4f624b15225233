"""`xenmux domains`: the daemon's table, with names."""

from __future__ import annotations

import argparse

from mux.cli import add_socket_argument
from mux.commands.eventview import domain_table
from mux.commands.output import JSON, TABLE, add_output_arguments, emit
from mux.commands.reach import add_request_timeout, ask_once


def configure(p: argparse.ArgumentParser) -> None:
    add_output_arguments(p, TABLE, alias="--json")
    add_request_timeout(p)
    add_socket_argument(p)


def run(args: argparse.Namespace) -> int:
    rows = ask_once(args.socket, args.timeout, lambda c: c.list())
    if args.output == JSON:
        for r in rows:
            emit(r)
    else:
        domain_table(rows)
    return 0
