"""`xenmux serve`: the daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys

from mux.daemon.watcher import XenstoreTimeouts
from mux.hypervisor import backend_names
from mux.protocol import DEFAULT_SOCKET


def _seconds(*, positive: bool):
    """An argparse type: a finite number of seconds, > 0 (positive) or >= 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "more than 0" if positive else "0 or more"
            raise argparse.ArgumentTypeError(f"{text!r}: give {bound} seconds")
        return value

    return parse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=("auto", *backend_names()),
        default="auto",
        help="where domain records come from (default: auto)",
    )
    p.add_argument("--sim-dir", help="the simulated host's directory (backend sim)")
    p.add_argument(
        "--xenctrl-lib", help="path of libxenctrl.so (default: found as the system does)"
    )
    p.add_argument(
        "--xenstore",
        help="xenstored socket or device (default: the backend's own, as a simulated host has; "
        "else $XENSTORED_PATH, else /var/run/xenstored/socket, else /dev/xen/xenbus)",
    )
    p.add_argument("--socket", default=DEFAULT_SOCKET, help="where to serve (default: %(default)s)")
    p.add_argument("--socket-group", help="group owning the socket (mode 0660)")
    p.add_argument("--allow-rescan-group", help="a group whose members may also ask for rescans")
    p.add_argument(
        "--metrics-addr",
        default="127.0.0.1:9877",
        help="Prometheus endpoint HOST:PORT; '' turns it off (default: %(default)s)",
    )
    p.add_argument(
        "--shutdown-poll",
        type=float,
        default=0.25,
        metavar="S",
        help="poll period while a domain sits shut down (resumes fire nothing)",
    )
    p.add_argument(
        "--full-scan",
        type=float,
        default=30.0,
        metavar="S",
        help="period of the safety full scan (silent suspends, unintroduced domains)",
    )
    p.add_argument("--max-clients", type=int, default=4096)
    p.add_argument(
        "--max-subscriptions", type=int, default=32768, help="domids one connection may watch"
    )
    p.add_argument(
        "--high-water",
        type=int,
        default=4 * 1024 * 1024,
        metavar="BYTES",
        help="unsent bytes after which a subscriber that stopped reading is cut off with an "
        "overflow frame (default: 4 MiB)",
    )
    p.add_argument(
        "--no-watch-depth",
        action="store_true",
        help="use full scans even where xenstored offers watch depth (Xen 4.22)",
    )
    p.add_argument(
        "--xenstore-timeout",
        type=_seconds(positive=True),
        default=XenstoreTimeouts.request,
        metavar="S",
        help="deadline of every xenstored request; one missed gives the connection up and "
        "makes a new one (default: %(default)s)",
    )
    p.add_argument(
        "--xenstore-idle",
        type=_seconds(positive=False),
        default=XenstoreTimeouts.idle,
        metavar="S",
        help="probe xenstored when it has sent nothing for S seconds, so that a hung one is "
        "noticed; 0 turns the probe off (default: %(default)s)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    from mux.daemon.listener import resolve_group
    from mux.daemon.service import Config, Daemon
    from mux.hypervisor import HypervisorError, NotADom0Error, open_backend
    from mux.xenstore.client import default_xenstore_path

    try:
        backend = open_backend(args.backend, sim_dir=args.sim_dir, xenctrl_lib=args.xenctrl_lib)
        config = Config(
            socket_path=args.socket,
            xenstore_path=args.xenstore or backend.xenstore_path or default_xenstore_path(),
            shutdown_poll=args.shutdown_poll,
            full_scan=args.full_scan,
            socket_gid=resolve_group(args.socket_group),
            allow_rescan_gid=resolve_group(args.allow_rescan_group),
            max_clients=args.max_clients,
            max_subscriptions=args.max_subscriptions,
            high_water=args.high_water,
            metrics_addr=args.metrics_addr,
            use_depth=not args.no_watch_depth,
        )
        daemon = Daemon(config, backend)
        # Until Config carries them (service.py), the watcher is told before it starts.
        daemon.watcher.timeouts = XenstoreTimeouts(
            request=args.xenstore_timeout, idle=args.xenstore_idle
        )
    except (NotADom0Error, HypervisorError, ValueError) as exc:
        print(f"xenmux serve: {exc}", file=sys.stderr)
        return 1
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        return runner(_serve(daemon))
    except OSError as exc:
        print(f"xenmux serve: {exc}", file=sys.stderr)
        return 1


async def _serve(daemon) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start()
        await stop.wait()
    finally:
        await daemon.stop()
    return 0
