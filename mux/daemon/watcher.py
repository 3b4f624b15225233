"""The Watcher: owns the xenstore connection, its two special watches, and its health.

Each firing becomes a scan request (coalesced by the scan loop), through the two callables
given at construction: a full scan, or in Xen 4.22 depth mode a targeted scan of the domid
the firing names. A firing that can tell something travels with its request as a `Firing`,
so that the scan loop can count those that found nothing and, when one names a domid, ask
xenstore what it still holds of that domain (`read_identity`).

The connection is not trusted to stay healthy (docs/operations.md, "xenstored"):
- every request has a deadline (`XenstoreTimeouts.request`); one that misses it means a hung
  xenstored or a lost request (a WATCH whose reply never came), and the connection is given
  up and made again;
- a connection silent for `XenstoreTimeouts.idle` seconds is probed; no answer within the
  deadline is a hung xenstored, given up the same way;
- watch depth is found by trying it: the special watches are set with depth 1 first (C
  xenstored 4.22 advertises XENSTORE_SERVER_FEATURE_WATCHDEPTH, but xapi-project's oxenstored
  takes depth-1 special watches since v25.2.0 without advertising any feature), and a refusal
  (EINVAL from every older server) gets plain watches on the same connection (full scans
  per firing) instead of being retried for ever;
- the server's flavour (`c` or `oxenstored`, `hello`'s `xenstored_flavour`) is told from how it
  answers: a server that answers XS_GET_FEATURE is C xenstored (oxenstored has no such
  request); otherwise XS_GET_PERMS of `@releaseDomain` is EINVAL on C xenstored and a
  permission list on oxenstored (docs/real-xen.md, the conformance record).
Every connection made is followed by a full scan (trigger `reconnect`): firings were missed
while there was none. The one made before the initial scan costs nothing, since that scan
serves every request made before it (ScanLoop.prime).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid as _uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from mux.daemon.aio import cancel_and_wait
from mux.daemon.stats import (
    CAUSE_LIVENESS,
    CAUSE_LOST,
    CAUSE_PROTOCOL,
    CAUSE_REFUSED,
    CAUSE_TIMEOUT,
    PROBE_REQUEST,
    WATCH_PATHS,
    Stats,
)
from mux.protocol import DEATH, RELEASED, RESUMED, TRIGGER_RECONNECT, TRIGGER_WATCH
from mux.xenstore import wire
from mux.xenstore.client import (
    XenstoreClient,
    XenstoreDeadlineError,
    XenstoreProtocolError,
)

log = logging.getLogger("xenmux.watch")

RELEASE = wire.SPECIAL_RELEASE
INTRODUCE = wire.SPECIAL_INTRODUCE
TOKEN = "xenmux"
# Name reads kept in flight at start-up: deep enough to keep xenstored's pipe full, few
# enough that 32,000 domains do not mean 32,000 tasks, futures and pending replies at once
# (that was most of the daemon's peak memory, and the pymalloc arenas it touched stayed).
NAMES_IN_FLIGHT = 64
# hello's `xenstored_flavour`: the server flavour, told from its answers (see above).
FLAVOUR_C = "c"
FLAVOUR_OXENSTORED = "oxenstored"

IdentityReader = Callable[[int], Awaitable["Identity | None"]]


@dataclass(frozen=True, slots=True)
class Identity:
    """What xenstore holds of a domain: its name and the UUID its `vm` node names."""

    name: str
    uuid: str


@dataclass(frozen=True, slots=True)
class Firing:
    """One firing of a special watch, for the scan loop's accounting (not the watches' first
    firings on registration: nothing happened for those)."""

    path: str  # one of WATCH_PATHS
    domid: int | None  # named by the firing (watch depth), else None
    lookup: IdentityReader  # what xenstore still holds of a domid


# request_full(trigger, fired_at, firing) and request_domid(domid, fired_at, firing): ScanLoop's.
RequestFull = Callable[[str, float | None, Firing | None], None]
RequestDomid = Callable[[int, float | None, Firing | None], None]


class FiringBatch(Protocol):
    """The scan loop's side of one xenstore read's firings (ScanLoop's two methods): the
    requests between the two calls coalesce, and end_firings scans them at once where it
    can, with no trip through the event loop between the firing and its scan."""

    def begin_firings(self) -> None: ...

    def end_firings(self) -> None: ...


@dataclass(frozen=True)
class XenstoreTimeouts:
    """Seconds. `request`: the deadline of every request (`serve --xenstore-timeout`);
    `idle`: probe a connection silent this long, 0 never (`--xenstore-idle`); `feature`: how
    long XS_GET_FEATURE may take at connection before the server is taken to have none."""

    request: float = 30.0
    idle: float = 10.0
    feature: float = 1.0


def uuid_of_vm_path(value: bytes) -> str | None:
    """The UUID in a domain's `vm` node (`/vm/<uuid>`, as libxl and xenopsd write it), in
    the canonical form of event frames; None for anything else."""
    text = value.rstrip(b"\0").decode("ascii", "replace")
    if not text.startswith("/vm/"):
        return None
    tail = text[4:]
    if len(tail) != 36:
        return None
    try:
        return str(_uuid.UUID(tail))
    except ValueError:
        return None


class Watcher:
    BACKOFF_MIN = 0.05
    BACKOFF_MAX = 2.0

    def __init__(
        self,
        path: str,
        stats: Stats,
        *,
        request_full: RequestFull,
        request_domid: RequestDomid,
        use_depth: bool = True,
        timeouts: XenstoreTimeouts | None = None,
        firing_batch: FiringBatch | None = None,
    ) -> None:
        self.path = path
        self.stats = stats
        self.request_full = request_full
        self.request_domid = request_domid
        # None: each request wakes the scan loop's task (requests then coalesce per turn).
        self.firing_batch = firing_batch
        self._batching = False
        self.use_depth = use_depth
        self.timeouts = timeouts or XenstoreTimeouts()
        self.client: XenstoreClient | None = None
        self.features: int | None = None
        self.depth = False
        self.flavour: str | None = None  # FLAVOUR_C or FLAVOUR_OXENSTORED, once connected
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._connections = 0
        # Per watch path: first firings still due from XS_WATCHes of this connection.
        self._initial_due: dict[str, int] = dict.fromkeys(WATCH_PATHS, 0)
        self._last_failure: str | None = None

    @property
    def feature_dict(self) -> dict:
        return {
            "watch_depth": self.depth,
            "server_features": self.features,
            "xenstored_flavour": self.flavour,
        }

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="watcher")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self.client is not None:
            await self.client.close()

    # -- the connection ------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.BACKOFF_MIN
        while True:
            try:
                client = await XenstoreClient.connect(
                    self.path,
                    on_watch=self._on_watch,
                    on_read_end=self._on_read_end,
                    request_timeout=self.timeouts.request,
                    abort_on_timeout=True,
                )
            except (OSError, ConnectionError) as exc:
                self._failed(f"cannot reach xenstored at {self.path} ({exc})", "unreachable")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.BACKOFF_MAX)
                continue
            try:
                await self._set_watches(client)
            except (OSError, ConnectionError) as exc:
                cause = self._dropped(client, exc)
                await client.close()
                self._failed(f"no watches on xenstored at {self.path} ({exc})", cause)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.BACKOFF_MAX)
                continue
            except BaseException:
                await client.close()
                raise
            delay = self.BACKOFF_MIN
            self._last_failure = None
            self.client = client
            self._connections += 1
            log.info(
                "watching %s and %s on %s (%s)",
                RELEASE,
                INTRODUCE,
                self.path,
                "watch depth 1: firings name the domid" if self.depth else "full scans per firing",
            )
            self.request_full(TRIGGER_RECONNECT, None, None)
            self.connected.set()
            await self._hold(client)
            self.connected.clear()
            cause = self._dropped(client, None)
            self.stats.xenstore_reconnects += 1
            log.warning("lost xenstored at %s: %s; reconnecting", self.path, client.error)
            self._last_failure = cause

    def _failed(self, message: str, kind: str) -> None:
        """One warning per kind of failure in a row; the retries after it only at debug."""
        if kind != self._last_failure:
            log.warning("%s; retrying", message)
            self._last_failure = kind
        else:
            log.debug("%s; retrying", message)

    def _dropped(self, client: XenstoreClient, exc: BaseException | None) -> str:
        """Count a connection given up or lost (by its cause) and return the cause."""
        err = client.error
        if isinstance(err, XenstoreDeadlineError):
            timeouts = self.stats.xenstore_request_timeouts
            timeouts[err.request] = timeouts.get(err.request, 0) + 1
            cause = CAUSE_LIVENESS if err.request == PROBE_REQUEST else CAUSE_TIMEOUT
        elif isinstance(err, XenstoreProtocolError):
            cause = CAUSE_PROTOCOL
        elif err is None and isinstance(exc, wire.XenstoreError):
            cause = CAUSE_REFUSED
        else:
            cause = CAUSE_LOST
        self.stats.xenstore_disconnects[cause] += 1
        return cause

    async def _hold(self, client: XenstoreClient) -> None:
        """Until the connection is down; probes it whenever it has been silent too long."""
        idle = self.timeouts.idle
        while not client.closed:
            if idle <= 0:
                await client.wait_closed()
                return
            left = idle - client.idle_for
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await client.wait_closed()
                continue
            self.stats.xenstore_liveness_probes += 1
            # No answer within the deadline gives the connection up (abort_on_timeout).
            with contextlib.suppress(OSError, ConnectionError):
                await client.probe()

    async def _set_watches(self, client: XenstoreClient) -> None:
        self._initial_due = dict.fromkeys(WATCH_PATHS, 0)
        self.features = await client.get_feature(timeout=self.timeouts.feature)
        self.flavour = await self._flavour(client)
        claims = bool(
            self.features is not None and self.features & wire.XENSTORE_SERVER_FEATURE_WATCHDEPTH
        )
        self.depth = self.use_depth
        if self.depth:
            try:
                await self._watch_both(client, depth=1)
                return
            except wire.XenstoreError as exc:
                self.depth = False
                if claims:
                    # It says it can, then refuses: take it at its deed, on this connection.
                    self.stats.xenstore_depth_fallbacks += 1
                    log.warning(
                        "xenstored at %s claims watch depth (features %#x) but refused a "
                        "depth watch (%s); using full scans per firing",
                        self.path,
                        self.features,
                        exc,
                    )
        await self._watch_both(client, depth=None)

    async def _flavour(self, client: XenstoreClient) -> str:
        if self.features is not None:
            return FLAVOUR_C
        try:
            await client.get_perms(RELEASE)
        except wire.XenstoreError:
            return FLAVOUR_C
        return FLAVOUR_OXENSTORED

    async def _watch_both(self, client: XenstoreClient, depth: int | None) -> None:
        """Both special watches, or (on an XS_ERROR) neither: one set alone is taken back."""
        done: list[str] = []
        try:
            for path in WATCH_PATHS:
                self._initial_due[path] += 1  # its first firing may come before the reply
                try:
                    await client.watch(path, TOKEN, depth=depth)
                except BaseException:
                    self._initial_due[path] -= 1
                    raise
                done.append(path)
        except wire.XenstoreError:
            for path in done:
                with contextlib.suppress(wire.XenstoreError):
                    await client.unwatch(path, TOKEN)
            raise

    # -- firings -------------------------------------------------------------------------

    def _on_watch(self, path: str, token: str) -> None:
        now = time.monotonic()
        if token != TOKEN:
            return
        base, _, rest = path.partition("/")
        if base not in WATCH_PATHS:
            return
        if not self._batching and self.firing_batch is not None:
            self._batching = True
            self.firing_batch.begin_firings()
        self.stats.firings[base] += 1
        if not rest:
            if self._initial_due[base]:
                # xenstored fires every new watch once: that firing tells nothing.
                self._initial_due[base] -= 1
                self.request_full(TRIGGER_WATCH, now, None)
            else:
                self.request_full(TRIGGER_WATCH, now, Firing(base, None, self.read_identity))
            return
        try:
            domid = int(rest)
        except ValueError:
            self.request_full(TRIGGER_WATCH, now, Firing(base, None, self.read_identity))
            return
        self.request_domid(domid, now, Firing(base, domid, self.read_identity))

    def _on_read_end(self) -> None:
        """The read that brought firings is decoded: their scan, now."""
        if self._batching:
            self._batching = False
            self.firing_batch.end_firings()  # type: ignore[union-attr]

    # -- reading the store ---------------------------------------------------------------

    async def read_name(self, domid: int) -> str | None:
        client = self.client
        if client is None or client.closed:
            return None
        try:
            return (await client.read(f"/local/domain/{domid}/name")).decode(errors="replace")
        except (OSError, ConnectionError, wire.WireError):
            return None

    async def read_all_names(self, domids: list[int]) -> dict[int, str]:
        names: dict[int, str] = {}
        todo = iter(domids)  # shared: each reader takes the next domid when its reply is in

        async def reader() -> None:
            for d in todo:
                name = await self.read_name(d)
                if name is not None:
                    names[d] = name

        await asyncio.gather(*(reader() for _ in range(min(NAMES_IN_FLIGHT, len(domids)))))
        return names

    async def read_identity(self, domid: int) -> Identity | None:
        """The name and UUID xenstore still holds for `domid` (/local/domain/D/name and
        /local/domain/D/vm); None when either is gone or xenstored does not answer."""
        client = self.client
        if client is None or client.closed:
            return None
        home = f"/local/domain/{domid}"
        name, vm = await asyncio.gather(
            client.read(f"{home}/name"), client.read(f"{home}/vm"), return_exceptions=True
        )
        for got in (name, vm):
            if isinstance(got, BaseException):
                if not isinstance(got, OSError | ConnectionError | wire.WireError):
                    raise got
                return None
        uuid = uuid_of_vm_path(vm)  # type: ignore[arg-type]
        if uuid is None:
            return None
        return Identity(name.decode(errors="replace"), uuid)  # type: ignore[union-attr]


# `serve --resumed-poll`'s default window, in seconds: twice the default safety full scan
# (`--full-scan`, 30 s), which bounds how late such a shutdown is seen after the window.
DEFAULT_RESUMED_POLL = 60.0


class ResumedPoll:
    """After a `resumed`, keep polling for `window` seconds, every `interval`.

    A resume fires nothing on either xenstored, and the scan loop's shutdown poll ends once
    no domain is shut down. That is enough for the resume itself, but not for what follows
    it on C xenstored: its shutdown latch is cleared only by XS_RESUME, so a domain resumed
    without it (a fast resume done outside libxl) fires nothing at its *next* shutdown
    either, and only the safety full scan would see it. Polling while some domain was
    resumed less than `window` seconds ago (`--resumed-poll`, 0 for never) closes that gap.
    Each poll is what the shutdown poll asks for (`request_poll`: a scan with trigger
    `poll`), one per interval however many domains are in their window. oxenstored, which
    has no latch, fires for that shutdown anyway; the poll then finds nothing new.

    It is a tap on the events going out (`publish`, the fan-out's shape), so it needs no
    other part's state.
    """

    def __init__(
        self,
        request_poll: Callable[[], None],
        *,
        window: float,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 0 or interval <= 0:
            raise ValueError("the resumed poll needs window >= 0 and interval > 0")
        self.request_poll = request_poll
        self.window = window
        self.interval = interval
        self.clock = clock
        self.until: dict[int, float] = {}  # domid -> when its polling ends
        self.polls = 0  # polls asked for
        self._handle: asyncio.TimerHandle | None = None

    def publish(self, events) -> None:
        """Note the domains of `resumed` events; forget those that died."""
        if self.window <= 0:
            return
        for event in events:
            if event.kind == RESUMED:
                self.until[event.domid] = self.clock() + self.window
            elif event.kind in (DEATH, RELEASED):
                self.until.pop(event.domid, None)
        self._arm()

    def _arm(self) -> None:
        if self._handle is None and self.until:
            self._handle = asyncio.get_running_loop().call_later(self.interval, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self.clock()
        for domid, end in list(self.until.items()):
            if now >= end:
                del self.until[domid]
        if self.until:
            self.polls += 1
            self.request_poll()
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
