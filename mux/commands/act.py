"""`xenmux act`: carry out each domain's on_poweroff / on_reboot / on_watchdog / on_crash /
on_soft_reset action when it shuts down, for the whole host, in place of xl's per-domain
monitors (docs/act.md). The work is in mux/act; this module reads the options."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from mux.cli import add_socket_argument
from mux.commands.failure import EXIT_USAGE, CommandError

# serve's option checks, so that both commands refuse the same bad values in the same words
from mux.logsetup import setup_logging
from mux.options import count, metrics_addr, seconds

DEFAULT_STATE_DIR = "/var/lib/xenmux/act"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="the policy (TOML); none: each domain's own settings and xl's defaults",
    )
    p.add_argument(
        "--toolstack",
        choices=("xl", "sim"),
        default="xl",
        help="who carries the actions out (default: %(default)s)",
    )
    p.add_argument(
        "--sim-dir",
        default=os.environ.get("XENMUX_SIM_DIR"),
        metavar="DIR",
        help="with --toolstack sim: the simulated host (default $XENMUX_SIM_DIR)",
    )
    add_socket_argument(p)
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"cursor and action journal (default {DEFAULT_STATE_DIR}; "
        "with --toolstack sim: inside the sim's dir)",
    )
    p.add_argument(
        "--max-parallel",
        type=count(1),
        default=16,
        metavar="N",
        help="actions at once (default %(default)s)",
    )
    p.add_argument(
        "--hook-timeout",
        type=seconds(positive=True),
        default=30.0,
        metavar="S",
        help="seconds a hook or policy command may run (default %(default)s)",
    )
    p.add_argument(
        "--metrics-addr",
        type=metrics_addr,
        default="",
        metavar="HOST:PORT",
        help="Prometheus endpoint; '' (the default) turns it off",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be done; do nothing, keep no state"
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        help="logging level on stderr (default INFO: one line per action)",
    )


def run(args: argparse.Namespace) -> int:
    from mux.act.record import StateError
    from mux.act.service import Options, PolicyError, ToolstackError, prepare, run_act

    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        raise CommandError(f"--log-level: no level {args.log_level!r}", EXIT_USAGE)
    setup_logging(level, fmt="xenmux act: %(message)s")
    opts = Options(
        policy=args.policy,
        toolstack=args.toolstack,
        sim_dir=args.sim_dir,
        socket=args.socket,
        state_dir=args.state_dir,
        max_parallel=args.max_parallel,
        hook_timeout=args.hook_timeout,
        metrics_addr=args.metrics_addr,
        dry_run=args.dry_run,
    )
    try:
        toolstack, policy = prepare(opts)
    except PolicyError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    except ToolstackError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if opts.state_dir is None:
        opts.state_dir = getattr(toolstack, "default_state_dir", None) or DEFAULT_STATE_DIR
    try:
        return asyncio.run(run_act(opts, toolstack, policy))
    except StateError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:  # the metrics address taken, and the like
        raise CommandError(str(exc)) from None
