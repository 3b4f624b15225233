"""`xenmux pool watch|domains|wait`: the pool's events and table, read from NATS.

Each subcommand lives in its own module (pool_watch, pool_domains, pool_wait); this one
routes to them and holds what they share: the connection options and the way they run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal

from mux.bridge import names
from mux.bridge.natsconn import (
    NatsMissing,
    NatsOptions,
    add_connection_arguments,
    options_from_args,
    require_nats,
)
from mux.commands.output import fail

SUBCOMMANDS = {
    "watch": ("mux.commands.pool_watch", "the pool's events as JSON lines (or a table)"),
    "domains": ("mux.commands.pool_domains", "every VM of the pool and the host it is on"),
    "wait": ("mux.commands.pool_wait", "wait until a VM is dead and not living on another host"),
}


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="pool_command", metavar="SUBCOMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_connection_arguments(sp)
        module = importlib.import_module(module_name)
        module.configure(sp)
        sp.set_defaults(pool_module=module)


def add_stream_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stream", default=names.DEFAULT_STREAM, help="JetStream stream (%(default)s)")


def add_bucket_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bucket", default=names.DEFAULT_BUCKET, help="KV bucket (%(default)s)")


def run(args: argparse.Namespace) -> int:
    command = f"pool {args.pool_command}"
    try:
        require_nats()
        opts = options_from_args(args)
        if getattr(args, "stream", None):
            names.check_stream_name(args.stream)
        if getattr(args, "bucket", None):
            names.check_bucket_name(args.bucket)
        return asyncio.run(_main(args.pool_module, args, opts))
    except (NatsMissing, ValueError) as exc:
        return fail(command, str(exc), 2 if isinstance(exc, ValueError) else 1)


async def _main(module, args: argparse.Namespace, opts: NatsOptions) -> int:
    from mux.bridge.natsconn import NatsRejected

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(module.main(args, opts))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 0 if args.pool_command == "watch" else 130
    except NatsRejected as exc:
        return fail(f"pool {args.pool_command}", str(exc))
