"""What a backend declares is what the daemon uses (mux/hypervisor/base.py: Capabilities).

The daemon runs in this process on a test double of a backend (FeedBackend below: records
the test writes, and a changed-domain feed the test fires by hand), without xenstored, with
polls and safety scans off: so the only way a change can reach a subscriber is the path
under test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile

import pytest

from mux.client import AsyncSubscription, Client
from mux.daemon.service import Config, Daemon
from mux.hypervisor import Capabilities
from mux.hypervisor.base import ChangedCallback
from mux.protocol import OP_LIST, OP_STATS, SHUTDOWN, TRIGGER_DEPTH, TRIGGER_STARTUP
from mux.records import (
    RECORD_SIZE,
    SHUTDOWN_CRASH,
    DomainRecord,
    make_flags,
    pack_all,
)


class FeedBackend:
    """A test double, not a backend of the product: domain records held in a dict that the
    test edits, and a feed of changed domids that the test fires with `changed(...)`."""

    name = "test-feed"
    capabilities = Capabilities(full_scan=True, one_domain=True, changed_feed=True)
    xenstore_path: str | None = None
    state_dir: str | None = None

    def __init__(self, domains: int) -> None:
        self.records = {
            d: DomainRecord(d, make_flags(), d.to_bytes(2, "little") * 8, 10**9 + d)
            for d in range(domains)
        }
        self.feeds: list[ChangedCallback] = []
        self.full_scans = 0
        self.queries: list[int] = []
        self.closed = False

    def _pack(self, domids) -> tuple[bytearray, int]:
        rows = [self.records[d] for d in sorted(domids)]
        return bytearray(pack_all(rows) if rows else RECORD_SIZE), len(rows)

    def scan_all(self) -> tuple[bytearray, int]:
        self.full_scans += 1
        return self._pack(self.records)

    def query_one(self, domid: int) -> tuple[bytearray, int]:
        self.queries.append(domid)
        return self._pack([domid] if domid in self.records else [])

    def getinfolist(self, first: int, max_domains: int, out: bytearray, offset: int = 0) -> int:
        rows = [self.records[d] for d in sorted(self.records) if d >= first][:max_domains]
        out[offset : offset + len(rows) * RECORD_SIZE] = pack_all(rows) if rows else b""
        return len(rows)

    def watch_changed(self, callback: ChangedCallback) -> None:
        if not self.capabilities.changed_feed:
            raise AssertionError("the daemon asked a backend without a feed for its feed")
        self.feeds.append(callback)

    def changed(self, *domids: int) -> None:
        for feed in self.feeds:
            feed(domids)

    def domain_count_hint(self) -> int:
        return len(self.records)

    def close(self) -> None:
        self.closed = True


class NoFeedBackend(FeedBackend):
    capabilities = Capabilities(full_scan=True, one_domain=True, changed_feed=False)


@pytest.fixture
def workdir():
    """A short directory (Unix socket paths are limited to 108 bytes)."""
    path = tempfile.mkdtemp(prefix="xmux-seam-")
    yield path
    shutil.rmtree(path)


def _config(workdir: str) -> Config:
    return Config(
        socket_path=os.path.join(workdir, "x.sock"),
        xenstore_path=os.path.join(workdir, "no-xenstored"),  # nobody listens there
        shutdown_poll=0,
        full_scan=0,
    )


async def _running(daemon: Daemon) -> Daemon:
    await daemon.start(xenstore_wait=0.05)
    return daemon


async def _ask(daemon: Daemon, op: str) -> dict:
    """One request through the client library, from a thread (it is synchronous)."""

    def call() -> dict:
        with Client(daemon.config.socket_path) as c:
            return c.call(op)

    return await asyncio.to_thread(call)


def test_a_backend_feed_of_changed_domids_reaches_subscribers(workdir):
    backend = FeedBackend(domains=5)

    async def main() -> tuple[dict, dict]:
        daemon = await _running(Daemon(_config(workdir), backend))
        try:
            assert len(backend.feeds) == 1
            async with AsyncSubscription([3], socket_path=daemon.config.socket_path) as sub:
                rec = backend.records[3]
                backend.records[3] = dataclasses.replace(
                    rec, flags=make_flags(shutdown_reason=SHUTDOWN_CRASH)
                )
                assert await sub.next_event(0.3) is None  # nothing fires, nothing polls
                backend.changed(3)
                event = await sub.next_event(10)
            return event, (await _ask(daemon, OP_STATS))["stats"]
        finally:
            await daemon.stop()

    event, stats = asyncio.run(main())
    assert (event["event"], event["domid"], event["reason"]) == (SHUTDOWN, 3, "crash")
    # A targeted scan of the one domid, not a full scan.
    assert backend.full_scans == 1 and backend.queries == [3]
    assert stats["scans"][TRIGGER_DEPTH] == 1 and stats["targeted_scans"] == 1
    assert {k: v for k, v in stats["scans"].items() if v} == {TRIGGER_STARTUP: 1, TRIGGER_DEPTH: 1}
    assert backend.closed


def test_a_backend_without_a_feed_is_not_asked_for_one(workdir):
    backend = NoFeedBackend(domains=3)

    async def main() -> list[dict]:
        daemon = await _running(Daemon(_config(workdir), backend))
        try:
            return (await _ask(daemon, OP_LIST))["domains"]
        finally:
            await daemon.stop()

    assert [row["domid"] for row in asyncio.run(main())] == [0, 1, 2]
    assert backend.feeds == [] and backend.closed


def test_a_backend_that_cannot_list_every_domain_is_refused(workdir):
    class OneAtATime(NoFeedBackend):
        capabilities = Capabilities(full_scan=False, one_domain=True, changed_feed=False)

    with pytest.raises(ValueError, match="cannot list every domain"):
        Daemon(_config(workdir), OneAtATime(domains=3))
