"""`xenmux sim`: run a simulated Xen host (hypervisor table, VIRQ and a xenstored)."""

from __future__ import annotations

import argparse
import logging

from mux.sim.xenstored.rules import (
    FLAVOUR_C,
    FLAVOURS,
    XEN_VERSIONS,
    XS_VERSIONS,
    xenstored_version,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, help="directory for domains.shm and the sockets")
    parser.add_argument(
        "--domains", type=int, default=0, metavar="N", help="guests 1..N besides dom0 (default 0)"
    )
    parser.add_argument(
        "--xen-version",
        choices=XEN_VERSIONS,
        default="4.17",
        help="which Xen release to model; its C xenstored's rules unless --xs-version says "
        "otherwise (default 4.17)",
    )
    parser.add_argument(
        "--xenstored",
        choices=FLAVOURS,
        default=FLAVOUR_C,
        help="the flavour of the sim's xenstored: c (the shutdown latch, XS_RESUME re-arms "
        "it) or oxenstored (no latch: fires on every VIRQ while a domain is shut down; "
        "XS_RESUME a no-op; no GET_FEATURE); an --external-xenstored has its own (default: c)",
    )
    parser.add_argument(
        "--xs-version",
        choices=XS_VERSIONS,
        default=None,
        help="override the xenstored rules alone: 4.17 (latch, no watch depth), 4.21 "
        "(GET_FEATURE, no depth) or 4.22 (watch depth); with --xenstored oxenstored, 25.2 "
        "is xapi-project's oxenstored (depth-1 special watches) and a Xen release Xen's own; "
        "default: those of --xen-version",
    )
    parser.add_argument(
        "--virq-socket",
        action="append",
        default=[],
        metavar="PATH",
        help="also send a datagram to this AF_UNIX socket on every VIRQ_DOM_EXC (repeatable)",
    )
    parser.add_argument(
        "--external-xenstored",
        metavar="PATH",
        help="serve no xenstored: send the toolstack's xenstore requests (domain nodes, "
        "XS_INTRODUCE, XS_RESUME, XS_RELEASE) to the xenstored socket at PATH, and VIRQs "
        "only to the --virq-socket paths (a real xenstored under the stand-in of mux.realxen "
        "hypervisor, reading DIR/domains.shm)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for UUIDs and CPU times")
    parser.add_argument(
        "--log-level", default="WARNING", help="logging level on stderr (default WARNING)"
    )


def run(args: argparse.Namespace) -> int:
    from mux.sim.runtime import main

    logging.basicConfig(level=args.log_level.upper(), format="xenmux sim: %(message)s")
    if args.domains < 0:
        raise SystemExit("xenmux sim: --domains must be 0 or more")
    if args.external_xenstored and not args.virq_socket:
        raise SystemExit(
            "xenmux sim: --external-xenstored needs --virq-socket PATH (the external "
            "xenstored's event channel), or it never hears of a VIRQ"
        )
    try:
        xs_version = xenstored_version(args.xen_version, args.xs_version, args.xenstored)
    except ValueError as exc:
        raise SystemExit(f"xenmux sim: {exc}") from None
    return main(
        args.dir,
        args.domains,
        xs_version=xs_version,
        virq_sockets=args.virq_socket,
        seed=args.seed,
        external_xenstored=args.external_xenstored,
        xen_version=args.xen_version,
    )
