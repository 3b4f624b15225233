"""`xenmux chaos`: the daemon on a simulated host under churn and faults, checked by an
oracle against the host's ground truth (docs/chaos.md). Exit 0 only with 0 violations."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

from mux.chaos import runner
from mux.chaos.faults import FAULT_KINDS, parse_faults
from mux.chaos.report import example_lines, summary_line


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seconds", type=float, default=300.0, help="length of churn and faults (default 300)"
    )
    p.add_argument(
        "--domains", type=int, default=1000, help="guests of the simulated host (default 1000)"
    )
    p.add_argument(
        "--seed", type=int, default=1, help="seed of churn, faults and UUIDs (default 1)"
    )
    p.add_argument("--rate", type=float, default=20.0, help="lifecycles per second (default 20)")
    p.add_argument(
        "--faults",
        type=_faults,
        default=FAULT_KINDS,
        metavar="KIND,...",
        help=f"the faults to inject: some of {','.join(FAULT_KINDS)}, or all, or none "
        "(default all)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument(
        "--keep", metavar="DIR", help="make the run in DIR (new or empty) and keep its files"
    )
    p.add_argument("--check", metavar="DIR", help="check the files of a run kept with --keep")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _faults(text: str) -> tuple[str, ...]:
    try:
        return parse_faults(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _workdir(keep: str | None) -> str:
    if keep is None:
        return tempfile.mkdtemp(prefix="xenmux-chaos-")
    os.makedirs(keep, exist_ok=True)
    if os.listdir(keep):
        raise runner.RunError(f"--keep {keep}: the directory is not empty")
    return os.path.abspath(keep)


def figures(args: argparse.Namespace) -> dict:
    if args.check:
        return runner.check_dir(args.check)
    if args.seconds <= 0 or args.domains < 1 or args.rate <= 0:
        raise runner.RunError("--seconds, --domains and --rate must be positive")
    settings = runner.Settings(
        seconds=args.seconds,
        domains=args.domains,
        seed=args.seed,
        rate=args.rate,
        faults=args.faults,
    )
    workdir = _workdir(args.keep)

    def say(text: str) -> None:
        if not args.quiet:
            print(f"xenmux chaos: {text}", file=sys.stderr, flush=True)

    try:
        result = runner.run(settings, workdir, say)
    except runner.RunError:
        # The error names files of the run (members.err, daemon.err): they stay for it.
        if args.keep is None:
            say(f"the run's files are kept in {workdir}")
        raise
    except BaseException:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    if args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def run(args: argparse.Namespace) -> int:
    try:
        result = figures(args)
    except runner.RunError as exc:
        print(f"xenmux chaos: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(summary_line(result))
        for line in example_lines(result):
            print(line, file=sys.stderr)
    return 0 if result["violations"] == 0 else 1
