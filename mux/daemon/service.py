"""The daemon: wires Watcher -> ScanLoop -> Fanout -> Server together and runs them.

A backend with a feed of changed domids has it wired into the scan loop's targeted scans.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from mux.daemon.fanout import Fanout
from mux.daemon.scanloop import ScanLoop
from mux.daemon.server import ClientConnection, bind_socket
from mux.daemon.stats import Stats
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


def _new_table():
    from mux._fast import DomainTable

    return DomainTable()


class Daemon:
    def __init__(self, config: Config, backend: Backend, table=None) -> None:
        self.config = config
        self.backend = backend
        self.instance = secrets.token_hex(8)
        self.stats = Stats()
        self.table = table if table is not None else _new_table()
        self.fanout = Fanout()
        self.clients: set[ClientConnection] = set()
        self.scanloop = ScanLoop(
            self.table,
            backend,
            self.fanout,
            self.stats,
            shutdown_poll=config.shutdown_poll,
            full_scan=config.full_scan,
        )
        self.watcher = Watcher(
            config.xenstore_path, self.scanloop, self.stats, use_depth=config.use_depth
        )
        self.scanloop.name_reader = self.watcher.read_name
        self.server: asyncio.AbstractServer | None = None
        self.metrics = None
        self.metrics_port: int | None = None
        self._sock_ino: int | None = None
        self._stopped = asyncio.Event()

    def _domids_changed(self, domids: Iterable[int]) -> None:
        for domid in domids:
            self.scanloop.request_domid(domid, None)

    def stats_dict(self) -> dict:
        self.stats.frames_sent = self.fanout.frames_sent
        self.stats.events = self.fanout.events_by_kind()
        d = self.stats.as_dict(
            subscribers=self.fanout.subscriber_count, domains=self.table.counts()
        )
        d["clients"] = len(self.clients)
        d["backend"] = self.backend.name
        d["xenstored"] = self.config.xenstore_path
        d["xenstore_connected"] = self.watcher.connected.is_set()
        d["features"] = self.watcher.feature_dict
        d["instance"] = self.instance
        d["seq"] = self.table.seq
        d["metrics_port"] = self.metrics_port
        return d

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
            from mux.daemon.metrics import start_metrics

            self.metrics = start_metrics(self.config.metrics_addr, self)
        self.scanloop.start()
        loop = asyncio.get_running_loop()
        sock = bind_socket(self.config.socket_path, self.config.socket_gid)
        self._sock_ino = os.stat(self.config.socket_path).st_ino
        self.server = await loop.create_unix_server(
            lambda: ClientConnection(self), sock=sock, backlog=1024
        )
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
        if self.server is not None:
            self.server.close()
        for c in list(self.clients):
            c.close()
        await self.scanloop.stop()
        await self.watcher.stop()
        if self.metrics is not None:
            self.metrics.close()
        self._unlink_socket()
        self.backend.close()
        self._stopped.set()

    def _unlink_socket(self) -> None:
        # Only our own socket: a newer daemon may have replaced it.
        try:
            if os.stat(self.config.socket_path).st_ino == self._sock_ino:
                os.unlink(self.config.socket_path)
        except OSError:
            pass


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
