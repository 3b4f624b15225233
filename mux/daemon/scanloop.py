"""The scan loop: turns scan requests into one batched hypercall + one diff, then fan-out.

Requests coalesce: while a scan runs (or waits for names), further requests only mark the
table dirty, and one more scan follows. In Xen 4.22 depth mode a firing names a domid and
asks for a targeted scan of it; when more targeted scans are pending than a full scan costs
(both costs measured as we go), they collapse into one full scan. A backend with a feed of
changed domids (`Capabilities.changed_feed`) asks for targeted scans the same way.

The firings of one xenstore read are scanned at its end in the reading callback
(`begin_firings`/`end_firings`), except inside a burst: a firing less than `burst_window`
after a firing's scan ended waits for one held scan at that scan's end plus the window, with
every firing meanwhile; a hold ends as soon as `burst_firings` firings wait for it, and each
hold that its timer ended makes the next one of the same burst twice as long, up to
`burst_window_max` (serve --burst-window, --burst-window-max, --burst-firings;
docs/operations.md).

The loop also owns the rule that makes a subscription consistent: `subscribe` takes its
snapshot and lets the subscriber register under the lock every scan holds, so no event
falls between the two.

Where the backend has unique ids (Xen 4.21+), the table reads the id of every domain it takes
in, and the scans that may find a domid reused behind a record that shows nothing check the
ids of every domain they see (`_checks_ids`): docs/protocol.md, "Incarnations".

And it settles the firings each scan served (`FiringAccounts`, issue 11 item 3): a firing
whose scan found nothing to show for it is counted (`firings_without_change`); one that named
a domid (watch depth) the scan found gone, never reported, while xenstore still holds the
name and UUID of that domain, is reported as a `new` + `death` pair flagged `transient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from mux.daemon.aio import ScanLock, cancel_and_wait
from mux.daemon.fanout import Fanout
from mux.daemon.stats import Stats
from mux.daemon.watcher import INTRODUCE, Firing, Identity
from mux.hypervisor.base import Backend, HypervisorError
from mux.protocol import (
    DEAD,
    NEW,
    TRIGGER_DEPTH,
    TRIGGER_FULL,
    TRIGGER_POLL,
    TRIGGER_RECONNECT,
    TRIGGER_RESCAN,
    TRIGGER_STARTUP,
    TRIGGER_SUBSCRIBE,
    TRIGGER_WATCH,
)

log = logging.getLogger("xenmux.scan")

# serve --burst-window: chosen by the mass shutdown at 5,000 changes/s (bench/README.md,
# "The daemon's path per firing").
DEFAULT_BURST_WINDOW = 0.004
# serve --burst-window-max: each hold of a burst that its timer ended doubles the window up to
# this, so that a slow burst that outlasts a few windows (C xenstored fires once per pass when
# slow, every 1-2 ms, for as long as a mass shutdown lasts) costs a scan per this many
# seconds, not per window.
DEFAULT_BURST_WINDOW_MAX = 0.032
# serve --burst-firings: a held scan runs as soon as this many firings wait for it, so that a
# fast burst (a firing every 0.2 ms) is not held for the whole grown window: a scan per this
# many firings, whatever their rate, and at most a window's wait when they come slowly.
DEFAULT_BURST_FIRINGS = 16

NameReader = Callable[[int], Awaitable[str | None]]
# Called with (snapshot rows, seq) while no scan can run: see ScanLoop.subscribe.
OnSnapshot = Callable[[list[dict], int], None]


class _Cost:
    """An exponentially weighted mean of a duration, in seconds."""

    __slots__ = ("value",)

    def __init__(self, initial: float) -> None:
        self.value = initial

    def add(self, sample: float) -> None:
        self.value += 0.2 * (sample - self.value)


class FiringAccounts:
    """Which of the firings a scan served it found something for.

    xenstored fires @introduceDomain once per XS_INTRODUCE, so each such firing should be
    matched by one `new`; an @releaseDomain (a shutdown, a death) by any other event, of the
    domid it names with watch depth. A toolstack builds a domain before it introduces it, so
    a scan (a poll, another domain's firing) often reports the `new` before the firing comes:
    news wait here for their firing, at most NEWS_KEPT seconds (a domain never introduced
    must not explain a later firing for long). What is left unexplained is what a domain
    that came and went between two scans leaves behind, or a change an earlier scan found
    first (docs/protocol.md, "Timing and what fires nothing").
    """

    NEWS_KEPT = 120.0

    def __init__(self) -> None:
        # domid -> monotonic time of its `new`, oldest first, until its introduction fired.
        self._news: OrderedDict[int, float] = OrderedDict()

    def saw(self, events: Iterable, now: float) -> None:
        for ev in events:
            if ev.kind == NEW:
                self._news[ev.domid] = now
                self._news.move_to_end(ev.domid)

    def unexplained(self, firings: list[Firing], events: list, table, now: float) -> list[Firing]:
        news = self._news
        while news:
            domid, seen = next(iter(news.items()))
            if now - seen <= self.NEWS_KEPT:
                break
            del news[domid]
        scan_news = [ev.domid for ev in events if ev.kind == NEW]
        touched = {ev.domid for ev in events}
        changed = any(ev.kind != NEW for ev in events)
        out = []
        for f in firings:
            if f.path == INTRODUCE:
                if f.domid is not None:
                    if news.pop(f.domid, None) is None and f.domid not in table:
                        out.append(f)
                    continue
                while scan_news and scan_news[0] not in news:
                    scan_news.pop(0)
                if scan_news:
                    del news[scan_news.pop(0)]
                elif news:
                    news.popitem(last=False)
                else:
                    out.append(f)
            elif not (changed if f.domid is None else f.domid in touched):
                out.append(f)
        return out


_NOTHING = object()  # _scan_locked: nothing was pending


def _answer(waiters: list[asyncio.Future], n_events: int) -> None:
    """Tell each rescan() waiting on this scan how many events it produced."""
    for w in waiters:
        if not w.done():
            w.set_result(n_events)


class ScanLoop:
    NAME_TIMEOUT = 0.5  # a slow xenstored must not hold back death events for long
    RETRY_MIN = 0.05
    RETRY_MAX = 5.0

    def __init__(
        self,
        table,
        backend: Backend,
        fanout: Fanout,
        stats: Stats,
        *,
        shutdown_poll: float = 0.25,
        full_scan: float = 30.0,
        name_reader: NameReader | None = None,
        burst_window: float = DEFAULT_BURST_WINDOW,
        burst_window_max: float = DEFAULT_BURST_WINDOW_MAX,
        burst_firings: int = DEFAULT_BURST_FIRINGS,
    ) -> None:
        if not backend.capabilities.full_scan:
            raise ValueError(
                f"backend {backend.name!r} cannot list every domain, and the daemon's scans "
                "need that (Capabilities.full_scan)"
            )
        self.table = table
        self.backend = backend
        self.fanout = fanout
        self.stats = stats
        self.shutdown_poll = shutdown_poll
        self.full_scan_interval = full_scan
        self.name_reader = name_reader
        self.burst_window = burst_window
        self.burst_window_max = max(burst_window, burst_window_max)
        self.burst_firings = burst_firings
        self._lock = ScanLock()
        self._wake = asyncio.Event()
        # Between begin_firings and end_firings requests do not wake the task: the firings
        # of one read are scanned at its end, in the reading callback (end_firings).
        self._deferred = False
        # A scan in the reading callback failed: the task handles the failure as its own
        # (`_failure`), and serves every request until one of its scans succeeds
        # (`_retrying`; a subscribe leaves a failing scan to the task's backoff too).
        self._failure: Exception | None = None
        self._retrying = False
        # The burst hold: when the last scan that served a firing ended (time.monotonic:
        # uvloop's clock counts whole milliseconds, as coarse as the window), and the timer
        # of the held scan that serves the firings of a burst at once.
        self._firing_scan_end = float("-inf")
        self._held: asyncio.TimerHandle | None = None
        # The window the next firing is held for: burst_window, doubled by each hold of a
        # burst that its timer ended (fewer than burst_firings came: a slow burst), up to
        # burst_window_max, and back to burst_window once a firing comes after it. A hold
        # that burst_firings ended leaves it as it is: a fast burst's last firings wait no
        # longer than its first.
        self._window = burst_window
        self._finisher: asyncio.Task | None = None  # the awaited rest of such a scan
        self._running = False  # between start() and stop(): scans in the callback allowed
        self._pending_full: str | None = None
        self._pending_domids: set[int] = set()
        self._fired_at: float | None = None  # monotonic time of the oldest unserved firing
        self._firings: list[Firing] = []  # what the next scan serves, for its accounting
        self.accounts = FiringAccounts()
        self._waiters: list[asyncio.Future] = []
        self._poll_handle: asyncio.TimerHandle | None = None
        self._full_handle: asyncio.TimerHandle | None = None
        self._retry_delay = self.RETRY_MIN
        self._dead_seen = 0
        self._dead_delay = shutdown_poll
        self.full_cost = _Cost(20e-6)
        self.one_cost = _Cost(2e-6)
        self._task: asyncio.Task | None = None
        self._unique_id = self._read_unique_id if backend.capabilities.unique_ids else None

    # -- requests ------------------------------------------------------------------------

    # When requests coalesce, the scan is counted under the most telling trigger.
    _PRIORITY = {
        TRIGGER_RECONNECT: 5,
        TRIGGER_RESCAN: 4,
        TRIGGER_SUBSCRIBE: 4,
        TRIGGER_WATCH: 3,
        TRIGGER_FULL: 2,
        TRIGGER_POLL: 1,
    }

    def request_full(
        self, trigger: str, fired_at: float | None = None, firing: Firing | None = None
    ) -> None:
        pending = self._pending_full
        if pending is None or self._PRIORITY.get(trigger, 0) > self._PRIORITY.get(pending, 0):
            self._pending_full = trigger
        if fired_at is not None and self._fired_at is None:
            self._fired_at = fired_at
        if firing is not None:
            self._firings.append(firing)
        if not self._deferred:
            self._wake.set()

    def request_domid(
        self, domid: int, fired_at: float | None = None, firing: Firing | None = None
    ) -> None:
        self._pending_domids.add(domid)
        if fired_at is not None and self._fired_at is None:
            self._fired_at = fired_at
        if firing is not None:
            self._firings.append(firing)
        if not self._deferred:
            self._wake.set()

    def begin_firings(self) -> None:
        """The requests until end_firings() are the firings of one xenstore read: they
        coalesce as those of one scan, and end_firings() serves them."""
        self._deferred = True

    def end_firings(self) -> None:
        """Serve the pending requests now, in the caller's (reading) callback, when no scan
        holds the lock and the task is not retrying after a failure; else wake the task.

        What a scan must wait for (names of new domains, what xenstore holds of a domain
        a firing named) goes on in a task that keeps the lock, as the task's scan would."""
        self._deferred = False
        if self._pending_full is None and not self._pending_domids:
            return
        if self._held is not None:  # the held scan serves these too
            if self.burst_firings and len(self._firings) >= self.burst_firings:
                self._held.cancel()
                self._release_held(timed=False)
            return
        if self.burst_window > 0:
            # A firing this soon after a firing's scan is part of a burst (a mass shutdown,
            # C xenstored's firing per domain): scanning each at once would scan as often as
            # it fires. Its scan waits until burst_window after the last one ended, and
            # every firing meanwhile joins it. The time is fixed now, so firings that keep
            # coming never push it later.
            wait = self._firing_scan_end + self._window - time.monotonic()
            if wait > 0:
                self._held = asyncio.get_running_loop().call_later(wait, self._release_held)
                return
            self._window = self.burst_window  # the burst, if any, is over
        self._serve_now()

    def _release_held(self, timed: bool = True) -> None:
        self._held = None
        if timed:  # a slow burst: the next hold of it is twice as long
            self._window = min(self._window * 2, self.burst_window_max)
        if self._pending_full is not None or self._pending_domids:
            self._serve_now()

    def _serve_now(self) -> None:
        """Scan what is pending here, in a callback, or hand it to the task."""
        if not self._running or self._retrying or not self._lock.try_acquire():
            self._wake.set()
            return
        rest = failure = None
        try:
            rest = self._scan_locked()  # not _NOTHING: something was pending
        except Exception as exc:
            failure = exc
        finally:
            if rest is None:
                self._lock.release()
        if failure is not None:
            self._hand_to_task(failure)
        elif rest is None:
            self._arm_poll()
        else:  # it keeps the lock until its rest is done
            self._finisher = asyncio.get_running_loop().create_task(
                self._finish_scan(rest), name="scan-finish"
            )

    async def _finish_scan(self, rest: Coroutine[Any, Any, None]) -> None:
        done = False
        try:
            await rest
            done = True
        except Exception as exc:
            self._hand_to_task(exc)
        finally:
            self._lock.release()
        if done:
            self._arm_poll()

    def _hand_to_task(self, exc: Exception) -> None:
        """The task's failure handling (count, log, back off, retry), for a scan that ran
        outside it."""
        self._failure = exc
        self._retrying = True
        self._wake.set()

    async def rescan(self, trigger: str = TRIGGER_RESCAN) -> int:
        """A full scan that starts after this call; returns how many events it produced."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.request_full(trigger)
        return await fut

    async def subscribe(self, domids: list[int] | None, on_snapshot: OnSnapshot) -> None:
        """Call `on_snapshot(rows, seq)` with the table's rows for `domids` (None: all) and
        the seq of the last event published, under the lock every scan holds: whatever
        `on_snapshot` registers and writes comes before any event after `seq`.

        Creation fires nothing, so requested domids the table lacks are first asked of the
        hypervisor (and announced if found) before the snapshot calls them absent."""
        async with self._lock:
            # After a restart every subscriber comes back at once: a firing's scan queued
            # behind them all would wait seconds. The first of them serves it.
            if not self._retrying and (self._pending_full is not None or self._pending_domids):
                try:
                    await self._scan_whole_locked()
                except HypervisorError as exc:  # still pending: the scan loop retries it
                    self._retrying = True
                    self.stats.hypercall_errors += 1
                    log.error("domain-info hypercall failed (%s); the scan loop retries", exc)
            if domids is not None:
                unknown = {d for d in domids if d not in self.table}
                if unknown:
                    events, _complete = self._targeted(unknown, TRIGGER_SUBSCRIBE)
                    await self._publish(events, None)
            on_snapshot(self.table.snapshot(domids), self.table.seq)

    # -- life cycle ----------------------------------------------------------------------

    def prime(self) -> None:
        """The initial load: the table is filled, subscribers will get it as a snapshot."""
        t0 = time.perf_counter()
        buf, n = self.backend.scan_all()
        self.table.prime(buf, n, unique_id=self._unique_id)
        # It serves every request made before it (the watches' first firings, the reconnect).
        self._take_pending()
        self.stats.scans[TRIGGER_STARTUP] += 1
        self.stats.scan_seconds.observe(time.perf_counter() - t0)
        log.info("initial scan: %d domains", n)

    async def catch_up(self) -> int:
        """The first scan after a restart, diffed against the table as the last daemon left
        it: what happened meanwhile comes out as ordinary events, each flagged late (its
        `time` this scan's), published before any subscriber can connect. Returns how many."""
        async with self._lock:
            events = self._full(TRIGGER_STARTUP, check_ids=True)
            for ev in events:
                ev.late = True
            await self._publish(events, None)
        if events:
            log.info("first scan after a restart: %d events happened meanwhile", len(events))
        return len(events)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scan-loop")
        self._running = True
        self._arm_full_scan()
        self._arm_poll()

    async def stop(self) -> None:
        # No scan after this, in the callback either: the table must not move past what the
        # journal holds once the daemon stops (its last checkpoint follows).
        self._running = False
        for h in (self._poll_handle, self._full_handle, self._held):
            if h is not None:
                h.cancel()
        self._held = None
        await cancel_and_wait(self._finisher)
        await cancel_and_wait(self._task)
        for w in self._waiters:
            if not w.done():
                w.cancel()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                failure, self._failure = self._failure, None
                if failure is not None:
                    raise failure
                await self.scan_pending()
                self._retry_delay = self.RETRY_MIN
                self._retrying = False
            except HypervisorError as exc:
                self._retrying = True
                self.stats.hypercall_errors += 1
                log.error(
                    "domain-info hypercall failed (%s); retrying in %.2f s",
                    exc,
                    self._retry_delay,
                )
                await asyncio.sleep(self._retry_delay)
                self._retry_delay = min(self._retry_delay * 2, self.RETRY_MAX)
                self._wake.set()
            except Exception:
                # A bug must not stop the daemon from watching; the safety scan will catch up.
                log.exception("scan failed")
                await asyncio.sleep(self.RETRY_MIN)
                self.request_full(TRIGGER_FULL)

    # -- the scan itself -----------------------------------------------------------------

    async def scan_pending(self) -> None:
        async with self._lock:
            if not await self._scan_whole_locked():
                return
        self._arm_poll()

    async def _scan_whole_locked(self) -> bool:
        """_scan_locked and its rest, the lock held (by scan_pending or a subscribe);
        False when nothing was pending."""
        rest = self._scan_locked()
        if rest is _NOTHING:
            return False
        if rest is not None:
            await rest
        return True

    def _scan_locked(self):
        """One scan of what is pending, under the lock: _NOTHING when nothing was; None
        when it is done; else the coroutine that finishes it (names to wait for, or what
        xenstore holds of a domain), to be awaited under the same lock."""
        trigger = self._pending_full
        domids = self._pending_domids
        fired_at = self._fired_at
        waiters = self._waiters
        firings = self._firings
        if trigger is None and not domids:
            return _NOTHING
        if trigger is None and self._cheaper_in_full(len(domids)):
            trigger = TRIGGER_DEPTH
        if trigger is not None:
            # A failing hypercall raises before the table changed, with every request
            # still pending, so the retry serves them.
            events = self._full(trigger, check_ids=self._checks_ids(trigger, firings))
            self._take_pending()
        else:
            self._take_pending()
            introduced = {f.domid for f in firings if f.path == INTRODUCE}
            events, complete = self._targeted(domids, check=introduced)
            if not complete:  # the full scan it asked for serves these firings
                self._firings[:0] = firings
                firings = []
        if fired_at is not None:
            self._firing_scan_end = time.monotonic()
        news = [ev for ev in events if ev.kind == NEW] if events else []
        if news and self.name_reader is not None:
            return self._named_rest(events, news, fired_at, firings, waiters)
        self._deliver(events, news, fired_at)
        return self._after_publish(events, firings, waiters)

    async def _named_rest(self, events, news, fired_at, firings, waiters) -> None:
        await self.fill_names(news)
        self._deliver(events, news, fired_at)
        rest = self._after_publish(events, firings, waiters)
        if rest is not None:
            await rest

    def _after_publish(self, events, firings, waiters):
        """Settle the firings and answer the rescans; a coroutine if the settling must
        ask xenstore (to be awaited under the lock), else None."""
        if firings:
            try:
                rest = self._settle(firings, events)
            except Exception:  # the accounting must not cost the scans
                log.exception("settling %d firings failed", len(firings))
                rest = None
            if rest is not None:
                return self._settled_rest(rest, len(firings), events, waiters)
        _answer(waiters, len(events))
        return None

    async def _settled_rest(self, rest, n_firings: int, events, waiters) -> None:
        try:
            await rest
        except Exception:  # the accounting must not cost the scans
            log.exception("settling %d firings failed", n_firings)
        _answer(waiters, len(events))

    def _cheaper_in_full(self, pending: int) -> bool:
        """Whether one full scan costs less than `pending` targeted scans, as measured.

        Never for one domid: a full scan reads that domain too. At a few domains both costs
        are mostly call overhead (the sim's one-domid query measures above its full copy
        of 9 records), so their noise would decide, and a firing would cost a full scan."""
        return pending > 1 and pending * self.one_cost.value > self.full_cost.value

    def _take_pending(self) -> None:
        """From here on, new requests are for the next scan."""
        self._pending_full = None
        self._pending_domids = set()
        self._fired_at = None
        self._firings = []
        self._waiters = []

    # Full scans that check every seen domain's unique id: those after firings may have been
    # missed or a stall (xenstored back, the safety scan), and those a client asked for.
    _CHECKING_TRIGGERS = frozenset({TRIGGER_RECONNECT, TRIGGER_RESCAN, TRIGGER_FULL})

    def _checks_ids(self, trigger: str, firings: list[Firing]) -> bool:
        """Whether a full scan checks the ids of the domains it holds. An @introduceDomain
        that names no domid (before watch depth) may stand for any domid reused behind a
        record that shows nothing (the same UUID, a cpu_time not behind), so it checks all."""
        if self._unique_id is None:
            return False
        return trigger in self._CHECKING_TRIGGERS or any(f.path == INTRODUCE for f in firings)

    def _read_unique_id(self, domid: int) -> int | None:
        """The backend's unique_id, for the table: a failure leaves the id unknown (the
        next checking scan reads it) rather than the scan half done."""
        try:
            return self.backend.unique_id(domid)
        except HypervisorError as exc:
            self.stats.hypercall_errors += 1
            log.error("reading the unique id of domain %d failed (%s)", domid, exc)
            return None

    def _full(self, trigger: str, check_ids: bool = False) -> list:
        t0 = time.perf_counter()
        buf, n = self.backend.scan_all()
        t1 = time.perf_counter()
        events = self.table.diff(
            buf, n, time.time(), unique_id=self._unique_id, check_ids=check_ids
        )
        t2 = time.perf_counter()
        self.full_cost.add(t2 - t0)
        st = self.stats
        st.scans[trigger] += 1
        st.scan_domains += n
        st.hypercall_seconds.observe(t1 - t0)
        st.scan_seconds.observe(t2 - t0)
        return events

    def _targeted(
        self, domids: set[int], trigger: str = TRIGGER_DEPTH, check: Iterable = ()
    ) -> tuple[list, bool]:
        """The events of one-domid scans of `domids`, and whether every one was done; the
        unique ids of those in `check` (named by @introduceDomain/<domid>) are checked."""
        events: list = []
        check = set(check)
        for domid in sorted(domids):
            try:
                events.extend(self.probe(domid, trigger, check_ids=domid in check))
            except HypervisorError as exc:
                # The events already diffed must still go out; a full scan catches up.
                self.stats.hypercall_errors += 1
                log.error("targeted domain-info query of %d failed (%s)", domid, exc)
                self.request_full(TRIGGER_DEPTH)
                return events, False
        return events, True

    def probe(self, domid: int, trigger: str = TRIGGER_DEPTH, check_ids: bool = False) -> list:
        """A targeted scan of one domid (its events are returned, not published). Without
        the backend's `one_domain` the record may be the next domid's: diff_one checks."""
        t0 = time.perf_counter()
        buf, n = self.backend.query_one(domid)
        t1 = time.perf_counter()
        events = self.table.diff_one(
            domid,
            buf,
            n,
            time.time(),
            unique_id=self._unique_id,
            check_ids=check_ids and self._unique_id is not None,
        )
        t2 = time.perf_counter()
        self.one_cost.add(t2 - t0)
        st = self.stats
        st.scans[trigger] += 1
        st.targeted_scans += 1
        st.hypercall_seconds.observe(t1 - t0)
        st.scan_seconds.observe(t2 - t0)
        return events

    async def _publish(self, events: list, fired_at: float | None) -> None:
        if not events:
            return
        news = [ev for ev in events if ev.kind == NEW]
        if news and self.name_reader is not None:
            await self.fill_names(news)
        self._deliver(events, news, fired_at)

    def _deliver(self, events: list, news: list, fired_at: float | None) -> None:
        """Hand a scan's events (names filled where they could be) to the publisher."""
        if not events:
            return
        self.accounts.saw(news, time.monotonic())
        self.fanout.publish(events)  # which counts them by kind (Fanout.events_by_kind)
        if fired_at is not None:
            self.stats.notify_seconds.observe(time.monotonic() - fired_at)

    # -- what the firings found ----------------------------------------------------------

    def _settle(self, firings: list[Firing], events: list):
        """Count the firings this scan found nothing for; report the transient domains.
        Returns the coroutine that does it when xenstore must be asked first, else None."""
        unexplained = self.accounts.unexplained(firings, events, self.table, time.monotonic())
        if not unexplained:
            return None
        # A domain named by an @introduceDomain, gone and never reported: what does
        # xenstore still hold of it? (libxl removes the nodes before it destroys the
        # domain, xenopsd after: docs/protocol.md.)
        asked = {f.domid: f for f in unexplained if f.path == INTRODUCE and f.domid is not None}
        if asked:
            return self._settle_asked(unexplained, asked, events)
        self._settle_known(unexplained, {}, events)
        return None

    async def _settle_asked(self, unexplained, asked, events) -> None:
        self._settle_known(unexplained, await self._identities(asked), events)

    def _settle_known(
        self, unexplained: list[Firing], identities: dict[int, Identity | None], events: list
    ) -> None:
        table = self.table
        reported = {(ev.domid, ev.uuid) for ev in events}
        pairs: list = []
        paired: set[int] = set()
        for domid, ident in identities.items():
            if ident is None or (domid, ident.uuid) in reported or domid in table:
                continue
            pairs.extend(table.transient(domid, ident.uuid, ident.name, time.time()))
            paired.add(domid)
            self.stats.transient_pairs += 1
            log.info(
                "domain %d (%s, %s) came and went between two scans: reported as a "
                "transient new and death",
                domid,
                ident.name,
                ident.uuid,
            )
        for f in unexplained:
            if f.domid in paired:
                continue
            self.stats.firings_without_change[f.path] += 1
            if f.path != INTRODUCE:
                continue
            if f.domid is None:
                log.warning(
                    "%s fired but its scan found no new domain: one came and went between "
                    "two scans, unseen (counted in firings_without_change)",
                    f.path,
                )
            else:
                log.warning(
                    "%s/%d fired but domain %d was gone by its scan and xenstore no longer "
                    "held its name and UUID: it came and went between two scans, unseen "
                    "(counted in firings_without_change)",
                    f.path,
                    f.domid,
                    f.domid,
                )
        if pairs:
            self.fanout.publish(pairs)  # names known; nothing for the accounts to wait for

    async def _identities(self, asked: dict[int, Firing]) -> dict[int, Identity | None]:
        """What xenstore holds of each domid, waited for at most NAME_TIMEOUT."""
        tasks = {d: asyncio.ensure_future(f.lookup(d)) for d, f in asked.items()}
        _done, pending = await asyncio.wait(tasks.values(), timeout=self.NAME_TIMEOUT)
        for t in pending:
            t.cancel()
        out: dict[int, Identity | None] = {}
        for domid, t in tasks.items():
            if t in pending:
                out[domid] = None
            elif t.exception() is not None:
                log.error("reading what xenstore holds of %d failed", domid, exc_info=t.exception())
                out[domid] = None
            else:
                out[domid] = t.result()
        return out

    async def fill_names(self, news: list) -> None:
        """Names from xenstore for `new` events, waited for at most NAME_TIMEOUT: a slow
        xenstored must not hold the other events back. A late name still reaches the table
        (and so snapshots, `list` and later events), just not the frame already sent."""

        async def one(ev) -> None:
            name = await self.name_reader(ev.domid)
            if name is None:
                return
            with contextlib.suppress(AttributeError):  # its frame went out without it
                ev.name = name
            rows = self.table.snapshot([ev.domid])
            if rows and rows[0]["uuid"] == ev.uuid:  # still that incarnation
                self.table.set_name(ev.domid, name)

        tasks = [asyncio.ensure_future(one(ev)) for ev in news]
        _done, pending = await asyncio.wait(tasks, timeout=self.NAME_TIMEOUT)
        if pending:
            log.warning("xenstored was slow to give names of %d new domains", len(pending))

    # -- timers --------------------------------------------------------------------------

    def _arm_poll(self) -> None:
        """Poll what fires nothing.

        A resume fires nothing, so while any domain sits shut down we poll every
        `shutdown_poll`. The final free of a dead domain fires nothing either (xenstored
        forgot the domain when it started dying), so while dead domains wait for `released`
        we poll too, backing off while nothing changes: a zombie may stay for hours.
        """
        if self._poll_handle is not None or self.shutdown_poll <= 0:
            return
        n_dead = self.table.counts()[DEAD]
        if self.table.n_shutdown:
            delay = self.shutdown_poll
        elif n_dead:
            if n_dead != self._dead_seen:
                self._dead_seen = n_dead
                self._dead_delay = self.shutdown_poll
            else:
                cap = self.full_scan_interval if self.full_scan_interval > 0 else 30.0
                self._dead_delay = min(self._dead_delay * 2, max(cap, self.shutdown_poll))
            delay = self._dead_delay
        else:
            self._dead_seen = 0
            return

        def fire() -> None:
            self._poll_handle = None
            if self.table.n_shutdown or self.table.counts()[DEAD]:
                self.request_full(TRIGGER_POLL)
            else:
                self._arm_poll()

        self._poll_handle = asyncio.get_running_loop().call_later(delay, fire)

    def _arm_full_scan(self) -> None:
        if self.full_scan_interval <= 0:
            return

        def fire() -> None:
            self.request_full(TRIGGER_FULL)
            self._arm_full_scan()

        self._full_handle = asyncio.get_running_loop().call_later(self.full_scan_interval, fire)
