"""A reconnect storm does not hold back the scans (docs/protocol.md, "Limits": nothing one
client does holds back the scans). After a daemon restart every subscriber resubscribes at
once; each subscribe takes the lock every scan holds, and while a scan waits for names they
all queue on it. A firing's scan that then queued behind a thousand of them waited seconds
on a loaded host: chaos runs (seeds 2 and 3) lost the death of a guest that lived a second
after a restart, between two scans. The subscribe at the head of the queue now serves the
pending scan first.
"""

from __future__ import annotations

import asyncio
import errno

import pytest
from scannerhelpers import rec

from mux import _fast, reference
from mux.daemon.scanloop import ScanLoop
from mux.daemon.stats import Stats
from mux.hypervisor.base import Capabilities, HypervisorError
from mux.protocol import NEW, TRIGGER_WATCH
from mux.records import pack_all


class _Host:
    """A backend whose domains a test sets; it can be made to fail its next full scans."""

    name = "host"
    capabilities = Capabilities(full_scan=True)
    xenstore_path = None
    state_dir = None

    def __init__(self) -> None:
        self.records = {0: rec(0)}
        self.failures = 0

    def scan_all(self):
        if self.failures:
            self.failures -= 1
            raise HypervisorError(errno.EAGAIN, "domain-info call failed (armed by the test)")
        found = [self.records[d] for d in sorted(self.records)]
        return pack_all(found), len(found)

    def query_one(self, domid: int):
        found = [self.records[d] for d in sorted(self.records) if d >= domid][:1]
        return pack_all(found), len(found)


class _Log:
    """What happened, in order: batches published (their new domids) and snapshots taken."""

    def __init__(self) -> None:
        self.order: list[tuple] = []

    def publish(self, events) -> None:
        self.order.append(("news", [e.domid for e in events if e.kind == NEW]))

    def snapshot(self, domid: int):
        return lambda rows, seq: self.order.append(("subscribed", domid))


async def _storm(twin, failures: int = 0) -> tuple[list[tuple], Stats]:
    host, log, stats = _Host(), _Log(), Stats()
    names = asyncio.Event()

    async def read_name(domid: int) -> str | None:
        await names.wait()
        return f"guest-{domid}"

    loop = ScanLoop(
        twin.DomainTable(), host, log, stats, shutdown_poll=0, full_scan=0, name_reader=read_name
    )
    loop.prime()
    host.records[5] = rec(5)
    loop.request_full(TRIGGER_WATCH)
    first = asyncio.ensure_future(loop.scan_pending())  # holds the lock, waiting for a name
    await asyncio.sleep(0.01)
    subscribes = [
        asyncio.ensure_future(loop.subscribe([d], log.snapshot(d))) for d in range(100, 150)
    ]
    await asyncio.sleep(0.01)  # all queued on the lock
    host.records[6] = rec(6)  # born meanwhile: its firing's scan comes next
    host.failures = failures
    loop.request_full(TRIGGER_WATCH)
    second = asyncio.ensure_future(loop.scan_pending())
    names.set()
    await asyncio.wait_for(asyncio.gather(first, *subscribes), 5)
    if failures:
        with pytest.raises(HypervisorError):  # left pending: the scan loop retries it
            await asyncio.wait_for(second, 5)
        await loop.scan_pending()
    else:
        await asyncio.wait_for(second, 5)
    return log.order, stats


@pytest.mark.parametrize("twin", [_fast, reference], ids=["fast", "reference"])
def test_a_firing_is_scanned_before_the_subscribes_queued_ahead_of_it(twin):
    order, _stats = asyncio.run(_storm(twin))
    assert order[:3] == [("news", [5]), ("news", [6]), ("subscribed", 100)]
    assert [d for what, d in order if what == "subscribed"] == list(range(100, 150))


@pytest.mark.parametrize("twin", [_fast, reference], ids=["fast", "reference"])
def test_a_failing_hypercall_costs_the_subscribes_nothing(twin):
    """The scan a subscribe serves fails: the subscribes are answered all the same, the
    failure is counted, and the scan loop's retry serves the firing."""
    order, stats = asyncio.run(_storm(twin, failures=2))
    assert [d for what, d in order if what == "subscribed"] == list(range(100, 150))
    assert order[0] == ("news", [5]) and order[-1] == ("news", [6])
    assert stats.hypercall_errors == 1
