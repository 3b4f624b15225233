"""The options of `xenmux bench --pool` (mux/bench/pool.py)."""

from __future__ import annotations

import argparse


def _host_sizes(text: str) -> list[tuple[int, int]]:
    """`8x1000,64x100`: hosts x domains."""
    out = []
    for part in text.split(","):
        hosts, sep, domains = part.strip().lower().partition("x")
        if not sep or not hosts.isdigit() or not domains.isdigit():
            raise argparse.ArgumentTypeError(f"{part!r} is not HOSTSxDOMAINS, such as 8x1000")
        out.append((int(hosts), int(domains)))
    return out


def add_pool_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pool",
        action="store_true",
        help="measure the pool stream instead (xenmux bridge to NATS JetStream): 8 hosts of "
        "1,000 domains, then 64 of 100 for throughput; results in --out DIR/pool.md",
    )
    p.add_argument(
        "--pool-sizes",
        type=_host_sizes,
        metavar="HxD,...",
        help="with --pool: hosts x domains to measure (default 8x1000,64x100; latency is "
        "measured up to 8 hosts only: on 2 cores it says nothing beyond)",
    )
    p.add_argument(
        "--pool-seconds", type=float, help="with --pool: length of each phase (default 10)"
    )
    p.add_argument(
        "--pool-rate",
        type=float,
        help="with --pool: churn lifecycles per second per host (default: 160 over the "
        "whole pool, 20 per host at 8 hosts, 2.5 at 64)",
    )
    p.add_argument(
        "--pool-outage",
        type=float,
        metavar="S",
        help="with --pool: at the first size, nats-server killed for S seconds while the "
        "hosts churn, then the time the pool takes to catch up (default 60; 0: none)",
    )
