"""The daemon's composition root: the one module that knows every part and wires them.

Watcher -> ScanLoop -> Fanout -> connections, each given the collaborators it works with
and nothing more: the watcher the scan loop's two request methods, the scan loop a name
reader, the connections a `ConnectionContext` and the requests a `RequestContext`, the
metrics a function returning a `DaemonSnapshot`. A backend with a feed of changed domids
has it wired into the scan loop's targeted scans.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from mux.daemon.connection import ClientConnection, ConnectionContext
from mux.daemon.fanout import Fanout
from mux.daemon.listener import Listener
from mux.daemon.metrics import MetricsServer, start_metrics
from mux.daemon.requests import RequestContext, handle_line
from mux.daemon.scanloop import ScanLoop
from mux.daemon.stats import DaemonSnapshot, Stats
from mux.daemon.watcher import Watcher
from mux.hypervisor.base import Backend

log = logging.getLogger("xenmux")


@dataclass
class Config:
    socket_path: str
    xenstore_path: str
    shutdown_poll: float = 0.25
    full_scan: float = 30.0
    socket_gid: int | None = None
    allow_rescan_gid: int | None = None
    max_clients: int = 4096
    max_subscriptions: int = 32768
    high_water: int = 4 * 1024 * 1024  # unsent bytes before a subscriber is cut off
    metrics_addr: str = ""
    use_depth: bool = True


def _new_table(suspend_window: float):
    from mux._fast import DomainTable

    return DomainTable(suspend_window=suspend_window)


class Daemon:
    def __init__(self, config: Config, backend: Backend, table=None) -> None:
        self.config = config
        self.backend = backend
        self.instance = secrets.token_hex(8)
        self.stats = Stats()
        # How recent a suspend must be for a vanished record to keep it: one poll (none: 0).
        window = max(config.shutdown_poll, 0.0)
        self.table = table if table is not None else _new_table(window)
        self.fanout = Fanout()
        self.clients: set[ClientConnection] = set()
        self.scanloop = ScanLoop(
            self.table,
            backend,
            self.fanout,
            self.stats,
            shutdown_poll=config.shutdown_poll,
            full_scan=config.full_scan,
            name_reader=self._read_name,
        )
        self.watcher = Watcher(
            config.xenstore_path,
            self.stats,
            request_full=self.scanloop.request_full,
            request_domid=self.scanloop.request_domid,
            use_depth=config.use_depth,
        )
        requests = RequestContext(
            instance=self.instance,
            backend_name=backend.name,
            table=self.table,
            scanloop=self.scanloop,
            fanout=self.fanout,
            stats=self.stats,
            features=lambda: self.watcher.feature_dict,
            snapshot=self.snapshot,
            max_subscriptions=config.max_subscriptions,
        )
        self.connections = ConnectionContext(
            stats=self.stats,
            fanout=self.fanout,
            clients=self.clients,
            handle_line=functools.partial(handle_line, requests),
            max_clients=config.max_clients,
            high_water=config.high_water,
            allow_rescan_gid=config.allow_rescan_gid,
        )
        self.listener = Listener(config.socket_path, config.socket_gid)
        self.metrics: MetricsServer | None = None

    async def _read_name(self, domid: int) -> str | None:
        # The watcher holds the xenstore connection but is built after the scan loop, whose
        # request methods it takes: the scan loop's name reader looks it up when called.
        return await self.watcher.read_name(domid)

    def _domids_changed(self, domids: Iterable[int]) -> None:
        for domid in domids:
            self.scanloop.request_domid(domid, None)

    def snapshot(self) -> DaemonSnapshot:
        """Everything `stats` and /metrics report, copied now (any thread)."""
        return DaemonSnapshot(
            counters=self.stats.read(),
            events=self.fanout.events_by_kind(),
            frames_sent=self.fanout.frames_sent,
            subscribers=self.fanout.subscriber_count,
            clients=len(self.clients),
            domains=self.table.counts(),
            backend=self.backend.name,
            xenstore_path=self.config.xenstore_path,
            xenstore_connected=self.watcher.connected.is_set(),
            watch_depth=self.watcher.depth,
            server_features=self.watcher.features,
            instance=self.instance,
            seq=self.table.seq,
            metrics_port=self.metrics.port if self.metrics is not None else None,
        )

    async def start(self, *, xenstore_wait: float = 5.0) -> None:
        """Watch first (so no firing is missed), scan, then open the socket: its existence
        means the table is complete (and that is the systemd readiness point)."""
        self.watcher.start()
        if self.backend.capabilities.changed_feed:
            self.backend.watch_changed(self._domids_changed)
        try:
            await asyncio.wait_for(self.watcher.connected.wait(), xenstore_wait)
        except TimeoutError:
            log.warning(
                "xenstored at %s is not answering; serving from the hypervisor alone "
                "(polls and safety scans) until it does",
                self.config.xenstore_path,
            )
        self.scanloop.prime()
        await self._load_names()
        if self.config.metrics_addr:
            self.metrics = start_metrics(self.config.metrics_addr, self.snapshot)
        self.scanloop.start()
        await self.listener.open(lambda: ClientConnection(self.connections))
        log.info(
            "serving %d domains on %s (backend %s, instance %s)",
            len(self.table),
            self.config.socket_path,
            self.backend.name,
            self.instance,
        )
        sd_notify("READY=1")

    async def _load_names(self) -> None:
        if not self.watcher.connected.is_set():
            return
        domids = [row["domid"] for row in self.table.snapshot(None)]
        try:
            names = await asyncio.wait_for(self.watcher.read_all_names(domids), 10.0)
        except TimeoutError:
            log.warning("gave up reading domain names from xenstored")
            return
        for domid, name in names.items():
            self.table.set_name(domid, name)

    async def stop(self) -> None:
        self.listener.close()
        for c in list(self.clients):
            c.close()
        await self.scanloop.stop()
        await self.watcher.stop()
        if self.metrics is not None:
            self.metrics.close()
        self.backend.close()


def sd_notify(message: str) -> None:
    """systemd's readiness protocol, without a dependency on libsystemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
