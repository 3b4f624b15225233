"""`xenmux`: the one entry point. Each command lives in the module that owns its job.

A command module provides `configure(parser)` to declare its arguments and `run(args) -> int`
for its exit status (or raises mux.commands.failure.CommandError: one line on stderr, and its
status). Modules are imported only when their command runs, so `xenmux wait` does not pay
for the daemon's or the simulator's imports. docs/commands.md describes every command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mux import __version__
from mux.protocol import PROTOCOL_VERSION, SOCKET_ENV, default_socket

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("mux.daemon.main", "run the daemon: one watcher for the host, events to subscribers"),
    "watch": ("mux.commands.watch", "print events as they happen (JSON lines, or -o table)"),
    "wait": ("mux.commands.wait", "wait for domains to die; the exit status tells the reason"),
    "domains": ("mux.commands.domains", "list the daemon's domain table"),
    "stats": ("mux.commands.stats", "show the daemon's counters"),
    "rescan": ("mux.commands.rescan", "scan every domain now (a resume fires nothing)"),
    "act": ("mux.commands.act", "carry out each domain's on_* action at its shutdown, host-wide"),
    "sim": ("mux.sim.cli", "run a simulated Xen host (hypervisor table + xenstored)"),
    "sim-ctl": ("mux.sim.ctl", "change the simulated host: create, shutdown, destroy..."),
    "demo": ("mux.demo", "a simulated host of 1000 domains, the daemon, act and a live view"),
    "bridge": ("mux.commands.bridge", "publish this host's events to NATS JetStream (the pool)"),
    "pool": ("mux.commands.pool", "the pool's events and table from NATS: watch, domains, wait"),
    "bench": ("mux.bench.cli", "the benchmark harness: mux against per-domain monitors"),
    "chaos": ("mux.chaos.cli", "churn and faults on a simulated host, checked by an oracle"),
}


def add_socket_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        default=default_socket(),
        help=f"the daemon's socket (default: ${SOCKET_ENV}, else %(default)s)",
    )


def version_line() -> str:
    return f"xenmux {__version__} (xen-watch-mux, protocol {PROTOCOL_VERSION})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xenmux",
        description="xen-watch-mux: per-domain lifecycle events from one watcher per Xen host",
    )
    parser.add_argument("-V", "--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def _command(name: str):
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"xenmux {name}", description=COMMANDS[name][1])
    module.configure(parser)
    return module, parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The full parser of one command (its module imported): for help, man pages, completion."""
    return _command(name)[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Only the chosen command's module is imported; the top-level parser just routes.
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # help, --version, or usage and exit 2
        return 2
    name = argv[0]
    module, parser = _command(name)
    args = parser.parse_args(argv[1:])
    from mux.commands.failure import CommandError

    try:
        return int(module.run(args) or 0)
    except CommandError as exc:
        print(f"xenmux {name}: {exc}", file=sys.stderr, flush=True)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # A reader such as `head` went away: leave quietly, as Unix tools do.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
