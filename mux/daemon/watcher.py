"""The Watcher: owns the xenstore connection and its two special watches.

Each firing becomes a scan request (coalesced by the scan loop), through the two callables
given at construction: a full scan, or in Xen 4.22 depth mode a targeted scan of the domid
the firing names. A lost connection is re-opened with backoff and always followed by a full
scan, since firings were missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mux.daemon.aio import cancel_and_wait
from mux.daemon.stats import WATCH_PATHS, Stats
from mux.protocol import TRIGGER_RECONNECT, TRIGGER_WATCH
from mux.xenstore import wire
from mux.xenstore.client import XenstoreClient

log = logging.getLogger("xenmux.watch")

RELEASE = wire.SPECIAL_RELEASE
INTRODUCE = wire.SPECIAL_INTRODUCE
TOKEN = "xenmux"

# request_full(trigger, fired_at) and request_domid(domid, fired_at): ScanLoop's.
RequestFull = Callable[[str, float | None], None]
RequestDomid = Callable[[int, float | None], None]


class Watcher:
    BACKOFF_MIN = 0.05
    BACKOFF_MAX = 2.0
    FEATURE_TIMEOUT = 1.0

    def __init__(
        self,
        path: str,
        stats: Stats,
        *,
        request_full: RequestFull,
        request_domid: RequestDomid,
        use_depth: bool = True,
    ) -> None:
        self.path = path
        self.stats = stats
        self.request_full = request_full
        self.request_domid = request_domid
        self.use_depth = use_depth
        self.client: XenstoreClient | None = None
        self.features: int | None = None
        self.depth = False
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._connections = 0

    @property
    def feature_dict(self) -> dict:
        return {"watch_depth": self.depth, "server_features": self.features}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="watcher")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self.client is not None:
            await self.client.close()

    async def _run(self) -> None:
        delay = self.BACKOFF_MIN
        while True:
            try:
                await self._connect()
            except (OSError, ConnectionError, TimeoutError) as exc:
                if self._connections == 0 and delay == self.BACKOFF_MIN:
                    log.warning("cannot reach xenstored at %s (%s); retrying", self.path, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.BACKOFF_MAX)
                continue
            delay = self.BACKOFF_MIN
            assert self.client is not None
            await self.client.wait_closed()
            self.connected.clear()
            self.stats.xenstore_reconnects += 1
            log.warning("lost xenstored at %s; reconnecting", self.path)

    async def _connect(self) -> None:
        client = await XenstoreClient.connect(self.path, on_watch=self._on_watch)
        try:
            self.features = await client.get_feature(timeout=self.FEATURE_TIMEOUT)
            self.depth = bool(
                self.use_depth
                and self.features is not None
                and self.features & wire.XENSTORE_SERVER_FEATURE_WATCHDEPTH
            )
            depth = 1 if self.depth else None
            await client.watch(RELEASE, TOKEN, depth=depth)
            await client.watch(INTRODUCE, TOKEN, depth=depth)
        except BaseException:
            await client.close()
            raise
        self.client = client
        self._connections += 1
        log.info(
            "watching %s and %s on %s (%s)",
            RELEASE,
            INTRODUCE,
            self.path,
            "watch depth 1: firings name the domid" if self.depth else "full scans per firing",
        )
        if self._connections > 1:
            # Firings were lost while we were away: only a full scan can tell what changed.
            self.request_full(TRIGGER_RECONNECT, None)
        self.connected.set()

    def _on_watch(self, path: str, token: str) -> None:
        now = time.monotonic()
        if token != TOKEN:
            return
        base, _, rest = path.partition("/")
        if base not in WATCH_PATHS:
            return
        self.stats.firings[base] += 1
        if rest:
            try:
                domid = int(rest)
            except ValueError:
                self.request_full(TRIGGER_WATCH, now)
                return
            self.request_domid(domid, now)
        else:
            self.request_full(TRIGGER_WATCH, now)

    async def read_name(self, domid: int) -> str | None:
        client = self.client
        if client is None or client.closed:
            return None
        try:
            return (await client.read(f"/local/domain/{domid}/name")).decode(errors="replace")
        except (OSError, ConnectionError, wire.WireError):
            return None

    async def read_all_names(self, domids: list[int]) -> dict[int, str]:
        names = await asyncio.gather(*(self.read_name(d) for d in domids))
        return {d: n for d, n in zip(domids, names, strict=True) if n is not None}
