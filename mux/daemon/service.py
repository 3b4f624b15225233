"""The daemon's composition root: the one module that knows every part and wires them.

Watcher -> ScanLoop -> Journal -> Fanout -> connections, each given the collaborators it
works with and nothing more: the watcher the scan loop's two request methods, the scan loop
a name reader and a publisher that journals each batch before the fan-out sees it, the
connections a `ConnectionContext` and the requests a `RequestContext`, the metrics a
function returning a `DaemonSnapshot`. A backend with a feed of changed domids has it wired
into the scan loop's targeted scans. The state dir (durable.py) is taken first: it gives
the table to go on from, and the journal. The resumed poll follows the events going out
(a tap after the fan-out) and asks the scan loop for polls.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mux.daemon.admission import Clients, Limits
from mux.daemon.connection import ClientConnection, ConnectionContext
from mux.daemon.durable import (
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_JOURNAL_MAX_BYTES,
    Checkpointer,
    open_state,
)
from mux.daemon.fanout import Event, Fanout
from mux.daemon.journal import Journal
from mux.daemon.listener import Listener
from mux.daemon.metrics import MetricsServer, start_metrics
from mux.daemon.requests import RequestContext, handle_line
from mux.daemon.scanloop import (
    DEFAULT_BURST_FIRINGS,
    DEFAULT_BURST_WINDOW,
    DEFAULT_BURST_WINDOW_MAX,
    ScanLoop,
)
from mux.daemon.sdnotify import StatusReporter, status_line
from mux.daemon.statedir import BOOT_ID_PATH
from mux.daemon.stats import DaemonSnapshot, JournalReading, Stats
from mux.daemon.watcher import DEFAULT_RESUMED_POLL, ResumedPoll, Watcher, XenstoreTimeouts
from mux.hypervisor.base import Backend
from mux.protocol import TRIGGER_POLL
from mux.records import DOMID_FIRST_RESERVED

log = logging.getLogger("xenmux")

# File descriptors the daemon needs besides its clients' and the metrics endpoint's:
# xenstored, the hypervisor, the journal, the listening sockets, the event loop's own.
FD_MARGIN = 64


@dataclass
class Config:
    socket_path: str
    xenstore_path: str
    shutdown_poll: float = 0.25
    burst_window: float = DEFAULT_BURST_WINDOW
    burst_window_max: float = DEFAULT_BURST_WINDOW_MAX
    burst_firings: int = DEFAULT_BURST_FIRINGS
    full_scan: float = 30.0
    socket_gid: int | None = None
    allow_rescan_gid: int | None = None
    # --max-clients, --max-clients-per-uid, --root-reserve
    limits: Limits = field(default_factory=Limits)
    max_subscriptions: int = 32768
    high_water: int = 4 * 1024 * 1024  # unsent bytes before a subscriber is cut off
    metrics_addr: str = ""
    use_depth: bool = True
    state_dir: str | None = None  # None: a private temporary one, gone at stop (embedding)
    journal_max_bytes: int = DEFAULT_JOURNAL_MAX_BYTES
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    boot_id_path: str = BOOT_ID_PATH  # a new boot id means a new history
    # --xenstore-timeout, --xenstore-idle
    xenstore_timeouts: XenstoreTimeouts = field(default_factory=XenstoreTimeouts)
    # --resumed-poll: seconds a resumed domain is asked for every shutdown_poll; 0 never
    resumed_poll: float = DEFAULT_RESUMED_POLL


def _table_class():
    from mux._fast import DomainTable

    return DomainTable


class JournaledFanout:
    """What the scan loop publishes to: each batch goes to the journal, then to the
    fan-out, so that no subscriber sees an event a restart could lose; then to `tap`, a
    part that follows the events going out (the resumed poll)."""

    def __init__(
        self,
        journal: Journal,
        fanout: Fanout,
        tap: Callable[[list[Event]], None] | None = None,
    ) -> None:
        self.journal = journal
        self.fanout = fanout
        self.tap = tap

    def publish(self, events: list[Event]) -> int:
        self.journal.append(events)
        sent = self.fanout.publish(events)
        if self.tap is not None:
            self.tap(events)
        return sent


class Daemon:
    def __init__(self, config: Config, backend: Backend, table_class=None) -> None:
        self.config = config
        self.backend = backend
        self.instance = secrets.token_hex(8)
        self.stats = Stats()
        self.state = open_state(
            config.state_dir,
            journal_max_bytes=config.journal_max_bytes,
            boot_id_path=config.boot_id_path,
        )
        try:
            self._wire(table_class or _table_class())
        except BaseException:
            self.state.close()
            raise

    def _wire(self, table_class) -> None:
        config, backend, state = self.config, self.backend, self.state
        # How recent a suspend must be for a vanished record to keep it: one poll (none: 0).
        window = max(config.shutdown_poll, 0.0)
        if state.restored is not None:
            self.table = table_class.load(state.restored, suspend_window=window)
        else:
            self.table = table_class(suspend_window=window)
        self.fanout = Fanout()
        self.clients = Clients(config.limits)
        self.checkpointer = Checkpointer(state, self.table, interval=config.checkpoint_interval)
        publisher = JournaledFanout(state.journal, self.fanout)
        self.scanloop = ScanLoop(
            self.table,
            backend,
            publisher,
            self.stats,
            shutdown_poll=config.shutdown_poll,
            burst_window=config.burst_window,
            burst_window_max=config.burst_window_max,
            burst_firings=config.burst_firings,
            full_scan=config.full_scan,
            name_reader=self._read_name,
        )
        # Polled at the shutdown poll's period; no shutdown poll, no resumed poll either.
        self.resumed_poll = ResumedPoll(
            functools.partial(self.scanloop.request_full, TRIGGER_POLL),
            window=config.resumed_poll if config.shutdown_poll > 0 else 0.0,
            interval=config.shutdown_poll if config.shutdown_poll > 0 else 1.0,
        )
        publisher.tap = self.resumed_poll.publish
        self.watcher = Watcher(
            config.xenstore_path,
            self.stats,
            request_full=self.scanloop.request_full,
            request_domid=self.scanloop.request_domid,
            use_depth=config.use_depth,
            timeouts=config.xenstore_timeouts,
            firing_batch=self.scanloop,
        )
        requests = RequestContext(
            instance=self.instance,
            backend_name=backend.name,
            table=self.table,
            scanloop=self.scanloop,
            fanout=self.fanout,
            stats=self.stats,
            features=lambda: self.watcher.feature_dict,
            backend_features=backend.capabilities.features,
            snapshot=self.snapshot,
            max_subscriptions=config.max_subscriptions,
            journal=state.journal,
        )
        self.connections = ConnectionContext(
            stats=self.stats,
            fanout=self.fanout,
            clients=self.clients,
            handle_line=functools.partial(handle_line, requests),
            high_water=config.high_water,
            allow_rescan_gid=config.allow_rescan_gid,
        )
        self.listener = Listener(config.socket_path, config.socket_gid)
        self.metrics: MetricsServer | None = None
        self.status = StatusReporter(self._status)

    async def _read_name(self, domid: int) -> str | None:
        # The watcher holds the xenstore connection but is built after the scan loop, whose
        # request methods it takes: the scan loop's name reader looks it up when called.
        return await self.watcher.read_name(domid)

    def _status(self) -> str:
        """systemd's STATUS= line (from a timer, never a firing's path: sdnotify.py)."""
        return status_line(
            self.table.counts(), self.fanout.subscriber_count, self.stats.last_scan_time
        )

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
            output_bytes=sum(c.unsent() for c in self.clients),
            domains=self.table.counts(),
            backend=self.backend.name,
            xenstore_path=self.config.xenstore_path,
            xenstore_connected=self.watcher.connected.is_set(),
            watch_depth=self.watcher.depth,
            server_features=self.watcher.features,
            instance=self.instance,
            seq=self.table.seq,
            metrics_port=self.metrics.port if self.metrics is not None else None,
            journal=self._journal_reading(),
        )

    def _journal_reading(self) -> JournalReading:
        j = self.state.journal
        return JournalReading(
            history=j.history,
            state_dir=self.state.statedir.path,
            bytes=j.bytes,
            segments=j.segment_count,
            oldest_seq=j.oldest_seq,
            appends=j.appends,
            appended_events=j.appended_events,
            replayed_events=j.replayed_events,
            write_errors=j.write_errors,
            checkpoint_age=self.checkpointer.age(),
            checkpoint_errors=self.checkpointer.errors,
            gaps=self.stats.subscribe_gaps,
        )

    async def start(self, *, xenstore_wait: float = 5.0) -> None:
        """Watch first (so no firing is missed), scan, then open the socket: its existence
        means the table is complete (and that is the systemd readiness point). The metrics
        port is bound before any of it, so that a busy one costs no scan."""
        if self.config.metrics_addr:
            self.metrics = await start_metrics(self.config.metrics_addr, self.snapshot, self.stats)
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
        if self.state.restored is not None:
            await self.scanloop.catch_up()
        else:
            self.scanloop.prime()
        await self._load_names()
        self.checkpointer.ready = True
        if self.state.restored is None:
            self.checkpointer.write_now()  # what a restart of this new history starts from
        self.scanloop.start()
        self.checkpointer.start()
        await self.listener.open(lambda: ClientConnection(self.connections))
        if self.metrics is not None:
            log.info("metrics on %s", self.metrics.url)
        log.info(
            "serving %d domains on %s (backend %s, instance %s, %s %s at seq %d)",
            len(self.table),
            self.config.socket_path,
            self.backend.name,
            self.instance,
            "history" if self.state.restored is not None else "new history",
            self.state.history.history,
            self.table.seq,
        )
        self.status.ready()

    async def _load_names(self) -> None:
        if not self.watcher.connected.is_set():
            return
        # A restored table has its names from the checkpoint: only the rows without one are
        # read (at 32,000 domains reading them all outlasts the wait below).
        # Asked domid by domid: a snapshot would build a full row for each of 32,000 domains
        # to read two fields of it (20 MB at once, at the daemon's peak).
        table = self.table
        domids = [
            d for d in range(DOMID_FIRST_RESERVED) if d in table and table.get_name(d) is None
        ]
        if not domids:
            return
        try:
            names = await asyncio.wait_for(self.watcher.read_all_names(domids), 10.0)
        except TimeoutError:
            log.warning("gave up reading domain names from xenstored")
            return
        for domid, name in names.items():
            self.table.set_name(domid, name)

    async def stop(self) -> None:
        self.status.stopping()
        self.listener.close()
        for c in list(self.clients):
            c.close()
        self.resumed_poll.stop()
        await self.scanloop.stop()
        await self.watcher.stop()
        await self.checkpointer.stop()
        if self.metrics is not None:
            self.metrics.close()
        self.backend.close()
        self.state.close()
