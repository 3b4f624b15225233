"""`xenmux bridge`: publish this host's domain events to NATS JetStream (docs/pool.md)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import signal
import socket

from mux.bridge import names
from mux.bridge.natsconn import NatsMissing, add_connection_arguments, options_from_args
from mux.cli import add_socket_argument
from mux.commands.output import fail
from mux.logsetup import setup_logging

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?$", re.IGNORECASE)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`1G`, `512MiB`, `1000000`: bytes (K, M, G, T are powers of 1024)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512M or 2G")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `12h`, `7d`, or plain seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 12h or 7d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2).lower()]
    return float(m.group(1)) * unit


def configure(p: argparse.ArgumentParser) -> None:
    add_connection_arguments(p)
    p.add_argument(
        "--host",
        default=socket.gethostname(),
        help="this host's name in the pool (default: the hostname, %(default)s); a name that "
        "is not a subject token is encoded (docs/pool.md)",
    )
    p.add_argument("--stream", default=names.DEFAULT_STREAM, help="JetStream stream (%(default)s)")
    p.add_argument("--bucket", default=names.DEFAULT_BUCKET, help="KV bucket (%(default)s)")
    p.add_argument(
        "--replicas",
        type=int,
        choices=(1, 2, 3, 4, 5),
        help="replicas of the stream and bucket when the bridge creates them (default: 3 when "
        "the server is in a cluster, else 1)",
    )
    p.add_argument(
        "--max-age",
        type=parse_duration,
        default=names.DEFAULT_MAX_AGE,
        metavar="DURATION",
        help="a new stream keeps messages this long (default: 7d)",
    )
    p.add_argument(
        "--max-bytes",
        type=parse_size,
        default=names.DEFAULT_MAX_BYTES,
        metavar="SIZE",
        help="a new stream keeps at most this much, dropping the oldest (default: 1G)",
    )
    p.add_argument(
        "--metrics-addr",
        default="127.0.0.1:9878",
        help="Prometheus endpoint HOST:PORT; '' turns it off (default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="least severe messages logged on stderr (default: %(default)s)",
    )
    add_socket_argument(p)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)  # journald's conventions under systemd (mux/logsetup.py)
    try:
        from mux.bridge.natsconn import require_nats

        require_nats()
        opts = options_from_args(args)
        names.encode_host(args.host)
        names.check_stream_name(args.stream)
        names.check_bucket_name(args.bucket)
    except (NatsMissing, ValueError) as exc:
        return fail("bridge", str(exc))
    from mux.bridge.service import Bridge, BridgeConfig
    from mux.bridge.stats import BridgeStats, serve_metrics
    from mux.bridge.store import StoreConfig

    cfg = BridgeConfig(
        nats=opts,
        host_name=args.host,
        socket_path=args.socket,
        store=StoreConfig(args.stream, args.bucket, 1, args.max_age, args.max_bytes),
        replicas=args.replicas,
    )
    stats = BridgeStats()
    if args.metrics_addr:
        try:
            serve_metrics(stats, args.host, args.metrics_addr)
        except (OSError, ValueError) as exc:
            return fail("bridge", f"metrics on {args.metrics_addr}: {exc}")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    # What is loaded by now (the modules, nats-py's and asyncio's among them: about 20,000
    # objects) lives as long as the process: out of the collector's reach, a full
    # collection under churn takes 1 to 2 ms of CPU instead of 11 to 14, during which
    # events wait (measured: docs/pool.md, "Performance").
    gc.collect()
    gc.freeze()
    return runner(_main(Bridge(cfg, stats)))


async def _main(bridge) -> int:
    from mux.bridge.natsconn import NatsRejected
    from mux.bridge.store import StoreError
    from mux.client import XenmuxError

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await bridge.run(stop)
    except (NatsRejected, StoreError) as exc:
        return fail("bridge", str(exc))
    except XenmuxError as exc:
        return fail("bridge", f"the daemon at {bridge.cfg.socket_path} refused: {exc}")
    return 0
