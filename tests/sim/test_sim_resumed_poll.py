"""The resumed poll (mux.daemon.watcher.ResumedPoll, issue 17 item 5): a shutdown that fires
nothing after a resume is still seen, for as long as the poll's window lasts.

The scan loop here is wired to the sim's table as the daemon wires it, with the poll as a
tap on its events, and with no xenstore watch at all: so every change is one that "fires
nothing", as a shutdown does on C xenstored when the domain was resumed without XS_RESUME
(the latch still set). The test asks for a scan itself only where a firing would have come.
"""

from __future__ import annotations

import asyncio

from mux import reference
from mux.daemon.scanloop import ScanLoop
from mux.daemon.stats import Stats
from mux.daemon.watcher import ResumedPoll
from mux.protocol import RESUMED, SHUTDOWN, TRIGGER_POLL, TRIGGER_RESCAN, TRIGGER_WATCH
from mux.sim.backend import SimBackend


class _Tap:
    """The fan-out's `publish`, keeping the events and feeding the poll."""

    def __init__(self, poll: ResumedPoll) -> None:
        self.poll = poll
        self.events: list = []
        self.arrived = asyncio.Event()

    def publish(self, events) -> None:
        events = list(events)
        self.events += events
        self.poll.publish(events)
        self.arrived.set()


async def _until(tap: _Tap, want: tuple, timeout: float) -> None:
    """Until an event (kind, domid) arrives after those already there."""
    start = len(tap.events)
    async with asyncio.timeout(timeout):
        while not any((e.kind, e.domid) == want for e in tap.events[start:]):
            tap.arrived.clear()
            await tap.arrived.wait()


def test_a_silent_shutdown_after_a_resume_is_seen_within_the_window(sim):
    async def main():
        backend = SimBackend(str(sim.dir))
        loop = ScanLoop(
            reference.DomainTable(), backend, None, Stats(), shutdown_poll=0, full_scan=0
        )
        poll = ResumedPoll(lambda: loop.request_full(TRIGGER_POLL), window=1.5, interval=0.05)
        tap = _Tap(poll)
        loop.fanout = tap
        loop.prime()
        loop.start()
        try:
            await asyncio.to_thread(sim.ctl.suspend, 3)
            waiting = asyncio.ensure_future(_until(tap, (SHUTDOWN, 3), 10))
            loop.request_full(TRIGGER_WATCH)  # the suspend's firing
            await waiting
            await asyncio.to_thread(sim.ctl.resume, 3)
            waiting = asyncio.ensure_future(_until(tap, (RESUMED, 3), 10))
            loop.request_full(TRIGGER_RESCAN)  # the resume fired nothing
            await waiting
            assert 3 in poll.until

            # The next shutdown fires nothing (no request from the test): the poll sees it.
            waiting = asyncio.ensure_future(_until(tap, (SHUTDOWN, 3), 1.0))
            await asyncio.to_thread(sim.ctl.shutdown, 3, "reboot")
            await waiting
            last = [e for e in tap.events if e.domid == 3][-1]
            assert (last.kind, last.reason) == (SHUTDOWN, "reboot")
            assert poll.polls > 0

            # After the window nothing is polled any more.
            await asyncio.sleep(1.6)
            assert poll.until == {}
            settled = poll.polls
            await asyncio.sleep(0.3)
            assert poll.polls == settled
        finally:
            poll.stop()
            await loop.stop()
            backend.close()

    asyncio.run(main())


def test_a_zero_window_polls_nothing():
    calls = []
    poll = ResumedPoll(lambda: calls.append(1), window=0, interval=0.05)
    poll.publish([reference.Event(1, RESUMED, 3, "00000000-0000-0000-0000-000000000003", None, 0)])
    assert poll.until == {} and calls == []
