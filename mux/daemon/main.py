"""`xenmux serve`: the daemon's command line.

Every option is checked before any work: a bad value is one line and exit status 2, as
argparse gives for a bad option (most checks are argparse types); an unsafe socket
directory is one line and exit status 1, before the hypervisor is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from mux.daemon.durable import DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_JOURNAL_MAX_BYTES
from mux.daemon.journal import MIN_MAX_BYTES
from mux.daemon.scanloop import (
    DEFAULT_BURST_FIRINGS,
    DEFAULT_BURST_WINDOW,
    DEFAULT_BURST_WINDOW_MAX,
)
from mux.daemon.statedir import BOOT_ID_PATH, DEFAULT_STATE_DIR
from mux.daemon.watcher import DEFAULT_RESUMED_POLL, XenstoreTimeouts
from mux.hypervisor import backend_names
from mux.logsetup import LEVELS, setup_logging
from mux.options import count, metrics_addr, option, seconds
from mux.protocol import DEFAULT_SOCKET

log = logging.getLogger("xenmux")


@option
def _group(text: str) -> int | None:
    from mux.daemon.listener import resolve_group

    return resolve_group(text)


@option
def _journal_bytes(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of bytes") from None
    if n < MIN_MAX_BYTES:
        raise ValueError(f"{n}: the journal needs at least {MIN_MAX_BYTES} bytes")
    return n


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
    p.add_argument(
        "--socket",
        default=DEFAULT_SOCKET,
        help="where to serve, in a directory only root or the daemon can write "
        "(default: %(default)s)",
    )
    p.add_argument("--socket-group", type=_group, help="group owning the socket (mode 0660)")
    p.add_argument(
        "--allow-rescan-group", type=_group, help="a group whose members may also ask for rescans"
    )
    p.add_argument(
        "--metrics-addr",
        type=metrics_addr,
        default="127.0.0.1:9877",
        help="Prometheus endpoint HOST:PORT, open to every local user; '' turns it off "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--shutdown-poll",
        type=seconds(positive=False),
        default=0.25,
        metavar="S",
        help="poll period while a domain sits shut down (resumes fire nothing)",
    )
    p.add_argument(
        "--burst-window",
        type=seconds(positive=False),
        default=DEFAULT_BURST_WINDOW,
        metavar="S",
        help="a firing less than S seconds after a firing's scan ended is part of a burst: "
        "its scan waits until S after that one, and every firing meanwhile joins it (more "
        "latency inside a burst, none for an isolated change); 0: every firing scanned at "
        "once (default: %(default)s)",
    )
    p.add_argument(
        "--burst-window-max",
        type=seconds(positive=False),
        default=DEFAULT_BURST_WINDOW_MAX,
        metavar="S",
        help="a hold that ends with fewer than --burst-firings firings (a slow burst) "
        "doubles the window, up to S: a change inside a burst waits at most S plus a scan "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--burst-firings",
        type=count(0),
        default=DEFAULT_BURST_FIRINGS,
        metavar="N",
        help="a held scan runs as soon as N firings wait for it, so a burst costs about a "
        "scan per N firings, however fast they come; 0: only the window ends a hold "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--resumed-poll",
        type=seconds(positive=False),
        default=None,
        metavar="S",
        help="for S seconds after a domain is resumed, poll every --shutdown-poll, so that "
        "its next shutdown is seen where xenstored fires nothing for it (C xenstored after a "
        f"resume without XS_RESUME); 0: never (default: {DEFAULT_RESUMED_POLL:g})",
    )
    p.add_argument(
        "--full-scan",
        type=seconds(positive=False),
        default=30.0,
        metavar="S",
        help="period of the safety full scan (silent suspends, unintroduced domains); 0: off",
    )
    p.add_argument(
        "--max-clients",
        type=count(1),
        default=4096,
        metavar="N",
        help="client connections open at once; more are refused (default: %(default)s)",
    )
    p.add_argument(
        "--max-clients-per-uid",
        type=count(1),
        default=1024,
        metavar="N",
        help="connections one uid may hold; root and the daemon's uid are exempt "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--root-reserve",
        type=count(0),
        default=16,
        metavar="N",
        help="of --max-clients, connections only root may take (default: %(default)s)",
    )
    p.add_argument(
        "--max-subscriptions",
        type=count(1),
        default=32768,
        metavar="N",
        help="domids one connection may watch",
    )
    p.add_argument(
        "--high-water",
        type=count(1),
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
        type=seconds(positive=True),
        default=XenstoreTimeouts.request,
        metavar="S",
        help="deadline of every xenstored request; one missed gives the connection up and "
        "makes a new one (default: %(default)s)",
    )
    p.add_argument(
        "--xenstore-idle",
        type=seconds(positive=False),
        default=XenstoreTimeouts.idle,
        metavar="S",
        help="probe xenstored when it has sent nothing for S seconds, so that a hung one is "
        "noticed; 0 turns the probe off (default: %(default)s)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the journal, the table's checkpoint and the history are kept, locked by "
        "one daemon (default: the backend's own, as a simulated host has; else "
        f"{DEFAULT_STATE_DIR})",
    )
    p.add_argument(
        "--journal-max-bytes",
        type=_journal_bytes,
        default=DEFAULT_JOURNAL_MAX_BYTES,
        metavar="N",
        help="bound of the journal on disk; the oldest events go first, and a subscriber "
        "resuming from before them gets a snapshot (default: 64 MiB)",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=seconds(positive=True),
        default=DEFAULT_CHECKPOINT_INTERVAL,
        metavar="S",
        help="how often the table is checkpointed, so that a restart replays little of the "
        "journal (default: %(default)s)",
    )
    p.add_argument(
        "--boot-id-file",
        default=BOOT_ID_PATH,
        metavar="PATH",
        help="where this boot's id is read: the state of another boot is dropped "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=LEVELS,
        help="least severe messages logged on stderr; client connections are debug "
        "(default: %(default)s)",
    )


def _bad_option(flag: str, message: str) -> int:
    """What argparse prints for a bad option, less the usage: one line, status 2."""
    print(f"xenmux serve: error: argument {flag}: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if args.root_reserve >= args.max_clients:
        return _bad_option(
            "--root-reserve",
            f"{args.root_reserve} leaves no connection of --max-clients "
            f"{args.max_clients} for anyone but root",
        )
    if args.resumed_poll and not args.shutdown_poll:
        return _bad_option(
            "--resumed-poll",
            "polls every --shutdown-poll, which is 0 (off): give --shutdown-poll a period "
            "or --resumed-poll 0",
        )
    resumed_poll = DEFAULT_RESUMED_POLL if args.resumed_poll is None else args.resumed_poll
    setup_logging(args.log_level)
    from mux.daemon.admission import Limits, fit_fd_limit
    from mux.daemon.connection import MAX_LINGERING
    from mux.daemon.listener import check_socket_path
    from mux.daemon.metrics_http import MAX_CONNECTIONS as METRICS_CONNECTIONS
    from mux.daemon.paths import UnsafePathError
    from mux.daemon.service import FD_MARGIN, Config, Daemon
    from mux.daemon.statedir import StateDirError
    from mux.hypervisor import HypervisorError, NotADom0Error, open_backend
    from mux.xenstore.client import default_xenstore_path

    try:
        check_socket_path(args.socket)
        limits, lowered = fit_fd_limit(
            Limits(args.max_clients, args.max_clients_per_uid, args.root_reserve),
            METRICS_CONNECTIONS + MAX_LINGERING + FD_MARGIN,
        )
    except (UnsafePathError, ValueError) as exc:
        print(f"xenmux serve: {exc}", file=sys.stderr)
        return 1
    if lowered:
        log.warning("%s", lowered)
    try:
        backend = open_backend(args.backend, sim_dir=args.sim_dir, xenctrl_lib=args.xenctrl_lib)
        config = Config(
            socket_path=args.socket,
            xenstore_path=args.xenstore or backend.xenstore_path or default_xenstore_path(),
            shutdown_poll=args.shutdown_poll,
            burst_window=args.burst_window,
            burst_window_max=args.burst_window_max,
            burst_firings=args.burst_firings,
            full_scan=args.full_scan,
            socket_gid=args.socket_group,
            allow_rescan_gid=args.allow_rescan_group,
            limits=limits,
            max_subscriptions=args.max_subscriptions,
            high_water=args.high_water,
            metrics_addr=args.metrics_addr,
            use_depth=not args.no_watch_depth,
            state_dir=args.state_dir or backend.state_dir or DEFAULT_STATE_DIR,
            journal_max_bytes=args.journal_max_bytes,
            checkpoint_interval=args.checkpoint_interval,
            boot_id_path=args.boot_id_file,
            xenstore_timeouts=XenstoreTimeouts(
                request=args.xenstore_timeout, idle=args.xenstore_idle
            ),
            resumed_poll=resumed_poll if args.shutdown_poll else 0.0,
        )
        daemon = Daemon(config, backend)
    except (NotADom0Error, HypervisorError, ValueError, StateDirError) as exc:
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


def _ignore_hangup() -> None:
    log.info("SIGHUP ignored: there is nothing to reload; SIGTERM stops the daemon")


async def _serve(daemon) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Nothing to reload and nothing to reopen (the logs go to stderr, the journal under
    # systemd): SIGHUP, a closed terminal's, must not kill the daemon and leave its socket.
    loop.add_signal_handler(signal.SIGHUP, _ignore_hangup)
    try:
        await daemon.start()
        await stop.wait()
    finally:
        await daemon.stop()
    return 0
