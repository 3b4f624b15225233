"""A firing is scanned in the xenstore reading callback (issue 15, item 4), and only where
that is safe: the firings of one read make one scan, done before the read's callback
returns; while another scan or a subscribe holds the lock, or the task is backing off after
a failure, the scan loop's task does it, as before; what a scan must wait for (names) goes
on under the lock. The watcher, the scan loop and the xenstore client are the daemon's own,
fed frames as xenstored sends them.

A firing that comes within the burst window of a firing's scan is held instead (serve
--burst-window): its scan runs once the window after that scan is over, for every firing
meanwhile. The tests of the callback itself turn the window off."""

from __future__ import annotations

import asyncio
import time

import pytest

from mux import _fast
from mux.daemon import scanloop
from mux.daemon.aio import ScanLock
from mux.daemon.scanloop import ScanLoop
from mux.daemon.stats import Stats
from mux.daemon.watcher import TOKEN, Watcher
from mux.hypervisor.base import Capabilities, HypervisorError
from mux.protocol import NEW, SHUTDOWN, TRIGGER_WATCH
from mux.records import SHUTDOWN_POWEROFF, DomainRecord, make_flags, pack_all
from mux.xenstore import wire
from mux.xenstore.client import XenstoreProtocol


def _host(shut: set[int], domids=(0, 1, 2, 3)) -> bytes:
    return pack_all(
        [
            DomainRecord(
                d,
                make_flags(shutdown_reason=SHUTDOWN_POWEROFF if d in shut else None),
                d.to_bytes(2, "little") * 8,
                10**9 + d,
            )
            for d in domids
        ]
    )


class _Host:
    name = "test"
    capabilities = Capabilities(full_scan=True)
    xenstore_path = None
    state_dir = None

    def __init__(self) -> None:
        self.records = _host(set())
        self.fail = 0  # the next `fail` scans raise
        self.scans = 0

    def scan_all(self):
        self.scans += 1
        if self.fail:
            self.fail -= 1
            raise HypervisorError(5, "injected")
        return self.records, len(self.records) // 112

    def query_one(self, domid: int):
        raise AssertionError("no targeted scan here")


class _Published:
    def __init__(self) -> None:
        self.batches: list[list] = []

    def publish(self, events) -> None:
        self.batches.append(list(events))


def _firing(path: str = wire.SPECIAL_RELEASE) -> bytes:
    return wire.encode(wire.XS_WATCH_EVENT, 0, 0, wire.encode_watch_event(path, TOKEN))


class _Rig:
    def __init__(
        self,
        name_reader=None,
        burst_window: float = 0.0,
        burst_window_max: float = 0.0,
        burst_firings: int = 0,
    ) -> None:
        self.host = _Host()
        self.stats = Stats()
        self.published = _Published()
        self.loop = ScanLoop(
            _fast.DomainTable(),
            self.host,
            self.published,
            self.stats,
            shutdown_poll=0,
            full_scan=0,
            name_reader=name_reader,
            burst_window=burst_window,
            burst_window_max=burst_window_max,
            burst_firings=burst_firings,
        )
        self.watcher = Watcher(
            "test",
            self.stats,
            request_full=self.loop.request_full,
            request_domid=self.loop.request_domid,
            firing_batch=self.loop,
        )
        self.proto = XenstoreProtocol(
            "test",
            asyncio.get_running_loop(),
            self.watcher._on_watch,
            None,
            self.watcher._on_read_end,
        )
        self.loop.prime()
        self.loop.start()

    def kinds(self) -> list[list[tuple[str, int]]]:
        return [[(e.kind, e.domid) for e in b] for b in self.published.batches]


def test_the_firings_of_one_read_are_one_scan_before_the_callback_returns():
    async def main():
        rig = _Rig()
        rig.host.records = _host({2})
        rig.proto.data_received(_firing() * 3 + _firing(wire.SPECIAL_INTRODUCE))
        # No turn of the event loop yet: the scan ran inside data_received.
        assert rig.kinds() == [[(SHUTDOWN, 2)]]
        assert rig.stats.scans[TRIGGER_WATCH] == 1 and rig.host.scans == 2  # prime + one
        assert rig.stats.notify_seconds.count == 1
        rig.host.records = _host({2, 3})
        rig.proto.data_received(_firing()[:7])  # half a frame: nothing yet
        assert len(rig.published.batches) == 1
        rig.proto.data_received(_firing()[7:])
        assert rig.kinds()[1:] == [[(SHUTDOWN, 3)]]
        await asyncio.sleep(0.01)  # and the task has nothing left to do
        assert rig.host.scans == 3
        await rig.loop.stop()

    asyncio.run(main())


def test_while_the_lock_is_held_the_task_scans_once_it_is_free():
    async def main():
        rig = _Rig()
        held = asyncio.Event()
        go = asyncio.Event()

        def on_snapshot(rows, seq):
            held.set()

        async def subscribe():  # holds the lock as a subscribe's snapshot does, longer
            async with rig.loop._lock:
                on_snapshot(None, None)
                await go.wait()

        sub = asyncio.ensure_future(subscribe())
        await held.wait()
        rig.host.records = _host({1})
        rig.proto.data_received(_firing())
        rig.proto.data_received(_firing())
        assert rig.published.batches == []  # not in the callback: the lock is taken
        go.set()
        await sub
        for _ in range(20):
            await asyncio.sleep(0)
        assert rig.kinds() == [[(SHUTDOWN, 1)]]
        assert rig.stats.scans[TRIGGER_WATCH] == 1  # the two firings coalesced
        await rig.loop.stop()

    asyncio.run(main())


def test_a_failing_hypercall_in_the_callback_is_the_tasks_retry():
    async def main():
        rig = _Rig()
        rig.loop._retry_delay = 0.5  # the task's back-off after this failure
        rig.host.fail = 1
        rig.host.records = _host({3})
        rig.proto.data_received(_firing())
        assert rig.published.batches == []
        await asyncio.sleep(0.01)
        assert rig.stats.hypercall_errors == 1  # counted once, as the task counts it
        rig.proto.data_received(_firing())  # during the back-off: left to the task
        assert rig.published.batches == [] and rig.host.scans == 2
        for _ in range(100):
            if rig.published.batches:
                break
            await asyncio.sleep(0.01)
        assert rig.kinds() == [[(SHUTDOWN, 3)]]
        assert rig.stats.hypercall_errors == 1 and rig.host.scans == 3
        # Its scan succeeded: the next firing is scanned in the callback again.
        rig.host.records = _host({2, 3})
        rig.proto.data_received(_firing())
        assert rig.kinds()[1:] == [[(SHUTDOWN, 2)]]
        await rig.loop.stop()

    asyncio.run(main())


def test_names_of_new_domains_are_waited_for_under_the_lock():
    release = asyncio.Event()

    async def names(domid: int):
        await release.wait()
        return f"guest-{domid}"

    async def main():
        rig = _Rig(name_reader=names)
        rig.host.records = _host(set(), (0, 1, 2, 3, 9))
        rig.proto.data_received(_firing(wire.SPECIAL_INTRODUCE))
        assert rig.published.batches == [] and rig.loop._lock.locked()
        rig.proto.data_received(_firing())  # meanwhile: the task's, after the lock
        release.set()
        for _ in range(100):
            if rig.published.batches and not rig.loop._lock.locked():
                break
            await asyncio.sleep(0.01)
        assert rig.kinds() == [[(NEW, 9)]]
        assert rig.published.batches[0][0].name == "guest-9"
        assert rig.stats.scans[TRIGGER_WATCH] == 2 and not rig.loop._lock.locked()
        await rig.loop.stop()

    asyncio.run(main())


def test_no_scan_in_the_callback_once_the_loop_is_stopped():
    """After stop() (the daemon's shutdown: its final checkpoint follows) a late firing
    moves nothing: the table stays where the journal is."""

    async def main():
        rig = _Rig()
        await rig.loop.stop()
        rig.host.records = _host({1})
        rig.proto.data_received(_firing())
        await asyncio.sleep(0.01)
        assert rig.published.batches == [] and rig.host.scans == 1  # prime only
        assert rig.loop.table.seq == 0

    asyncio.run(main())


def test_the_lock_hands_over_in_order_and_is_never_overtaken():
    async def main():
        lock = ScanLock()
        order = []
        assert lock.try_acquire() and not lock.try_acquire()

        async def user(name):
            async with lock:
                order.append(name)
                await asyncio.sleep(0)

        a, b = asyncio.ensure_future(user("a")), asyncio.ensure_future(user("b"))
        c = asyncio.ensure_future(user("c"))
        await asyncio.sleep(0)
        c.cancel()  # a waiter cancelled before its turn is skipped
        lock.release()
        assert not lock.try_acquire()  # "a" holds it from the release on, before it runs
        await asyncio.gather(a, b)
        with pytest.raises(asyncio.CancelledError):
            await c
        assert order == ["a", "b"] and not lock.locked()
        assert lock.try_acquire()
        lock.release()
        with pytest.raises(RuntimeError):
            lock.release()

    asyncio.run(main())


def _scans(rig: _Rig) -> int:
    return rig.stats.scans[TRIGGER_WATCH]


def test_an_isolated_firing_is_scanned_at_once_whatever_the_window():
    async def main():
        rig = _Rig(burst_window=60.0)
        rig.host.records = _host({2})
        rig.proto.data_received(_firing())
        assert rig.kinds() == [[(SHUTDOWN, 2)]] and rig.loop._held is None
        await rig.loop.stop()

    asyncio.run(main())


def test_the_firings_of_a_burst_wait_for_one_held_scan_that_firings_never_push_back():
    async def main():
        rig = _Rig(burst_window=0.05)
        rig.host.records = _host({1})
        rig.proto.data_received(_firing())
        assert rig.kinds() == [[(SHUTDOWN, 1)]]
        rig.host.records = _host({1, 2})
        rig.proto.data_received(_firing())  # right after a firing's scan: held
        held = rig.loop._held
        assert held is not None and len(rig.published.batches) == 1
        due = held.when()
        for shut in ({1, 2, 3}, {1, 2, 3}, {1, 2, 3}):
            rig.host.records = _host(shut)
            rig.proto.data_received(_firing())
            await asyncio.sleep(0)
            # Joined the held scan; its time stays where the first held firing set it.
            assert rig.loop._held is held and held.when() == due
        assert len(rig.published.batches) == 1 and _scans(rig) == 1
        for _ in range(200):
            if len(rig.published.batches) > 1:
                break
            await asyncio.sleep(0.005)
        assert rig.kinds()[1:] == [[(SHUTDOWN, 2), (SHUTDOWN, 3)]]
        assert _scans(rig) == 2 and rig.loop._held is None
        await rig.loop.stop()

    asyncio.run(main())


class _FrozenClock:
    """The scan loop's `time`, with a monotonic clock the test moves: whether a firing is
    held depends on how long after the last scan it came, and a loaded machine's sleeps
    are no measure of that. The hold's timer stays the event loop's own."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_a_long_burst_doubles_the_window_up_to_its_max_and_a_quiet_gap_resets_it(monkeypatch):
    clock = _FrozenClock()
    monkeypatch.setattr(scanloop, "time", clock)

    async def main():
        # Each firing comes as soon as the last hold's scan ended: every hold is one its
        # timer ended, so the window doubles (10, 20, 40, 80, then stays at 80 ms).
        rig = _Rig(burst_window=0.01, burst_window_max=0.08)
        domids = range(10)
        rig.host.records = _host(set(), domids)
        rig.proto.data_received(_firing(wire.SPECIAL_INTRODUCE))
        await asyncio.sleep(0.05)
        scans = _scans(rig)
        windows = []
        for domid in range(1, 7):
            rig.host.records = _host(set(range(1, domid + 1)), domids)
            rig.proto.data_received(_firing())
            assert rig.loop._held is not None and rig.kinds()[-1] != [(SHUTDOWN, domid)]
            windows.append(rig.loop._window)
            for _ in range(400):
                if rig.loop._held is None:
                    break
                await asyncio.sleep(0.005)
            assert rig.kinds()[-1] == [(SHUTDOWN, domid)]  # one scan served the hold
        assert windows == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]
        assert _scans(rig) - scans == 6
        clock.now += 0.081  # longer than the grown window: the burst is over
        before = len(rig.published.batches)
        rig.host.records = _host(set(range(1, 8)), domids)
        rig.proto.data_received(_firing())
        assert rig.kinds()[before:] == [[(SHUTDOWN, 7)]]  # scanned at once, not held
        assert rig.loop._window == 0.01
        rig.proto.data_received(_firing())  # right after it: held for the first window again
        held = rig.loop._held
        assert held is not None
        assert held.when() - asyncio.get_running_loop().time() <= 0.011
        await rig.loop.stop()

    asyncio.run(main())


def test_a_held_scan_runs_as_soon_as_burst_firings_wait_for_it():
    async def main():
        rig = _Rig(burst_window=60.0, burst_firings=3)
        rig.host.records = _host({1})
        rig.proto.data_received(_firing())
        assert rig.kinds() == [[(SHUTDOWN, 1)]]
        rig.host.records = _host({1, 2})
        rig.proto.data_received(_firing() * 2)  # two firings wait: held (for a minute)
        assert rig.loop._held is not None and len(rig.published.batches) == 1
        rig.host.records = _host({1, 2, 3})
        rig.proto.data_received(_firing())  # the third: scanned now, in this callback
        assert rig.kinds()[1:] == [[(SHUTDOWN, 2), (SHUTDOWN, 3)]]
        assert rig.loop._held is None and _scans(rig) == 2
        await rig.loop.stop()

    asyncio.run(main())


def test_a_hold_that_burst_firings_ended_does_not_grow_the_window():
    async def main():
        # Fast firings: each hold ends at two firings, so the window stays 50 ms, and the
        # burst's last firing waits at most that, not a grown window.
        rig = _Rig(burst_window=0.05, burst_window_max=10.0, burst_firings=2)
        domids = range(40)
        rig.host.records = _host(set(), domids)
        rig.proto.data_received(_firing(wire.SPECIAL_INTRODUCE))
        await asyncio.sleep(0.1)
        shut: set[int] = set()
        for domid in range(1, 22):  # scanned at once, then held and scanned in pairs
            shut.add(domid)
            rig.host.records = _host(shut, domids)
            rig.proto.data_received(_firing())
            await asyncio.sleep(0)
        assert rig.loop._held is None and _scans(rig) == 1 + 11  # the introduce, then these
        shut.add(30)
        rig.host.records = _host(shut, domids)
        rig.proto.data_received(_firing())  # alone: held for the first window, no more
        held = rig.loop._held
        assert held is not None
        assert held.when() - asyncio.get_running_loop().time() <= 0.051
        await rig.loop.stop()

    asyncio.run(main())


def test_a_subscribe_serves_a_held_scan_and_its_timer_then_finds_nothing():
    async def main():
        rig = _Rig(burst_window=0.05)
        rig.host.records = _host({1})
        rig.proto.data_received(_firing())
        rig.host.records = _host({1, 2})
        rig.proto.data_received(_firing())
        assert rig.loop._held is not None
        seen = []
        await rig.loop.subscribe([2], lambda rows, seq: seen.append((rows[0]["state"], seq)))
        assert rig.kinds()[1:] == [[(SHUTDOWN, 2)]] and seen == [("shutdown", 2)]
        for _ in range(200):
            if rig.loop._held is None:
                break
            await asyncio.sleep(0.005)
        assert rig.loop._held is None and _scans(rig) == 2 and rig.host.scans == 3
        await rig.loop.stop()

    asyncio.run(main())


def test_stop_cancels_a_held_scan():
    async def main():
        rig = _Rig(burst_window=0.05)
        rig.host.records = _host({1})
        rig.proto.data_received(_firing())
        rig.host.records = _host({1, 2})
        rig.proto.data_received(_firing())
        held = rig.loop._held
        await rig.loop.stop()
        assert held.cancelled() and rig.loop._held is None
        await asyncio.sleep(0.06)
        assert len(rig.published.batches) == 1 and rig.host.scans == 2

    asyncio.run(main())
