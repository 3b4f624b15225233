"""XenstoreClient against the simulated xenstored (`xenmux sim`, C xenstored 4.17 rules, and
4.22 for GET_FEATURE and depth watches): every operation, over the socket and through a
/dev/xen/xenbus stand-in. Each test runs its own event loop (tests/xsclienthelpers.py)."""

from __future__ import annotations

import asyncio
import errno
import time

import pytest
from xsclienthelpers import LOOPS, XenbusStandIn, run, spy_types, until

from mux.xenstore import wire
from mux.xenstore.client import XenstoreClient

pytest_plugins = ("simhelpers",)  # sim (4.17), sim422, sim_factory: `xenmux sim` by PID


def test_sim_nodes_perms_and_errors(sim):
    async def main():
        async with await XenstoreClient.connect(sim.xenstored) as c:
            assert await c.read("/local/domain/3/name") == b"guest-3"
            await c.write("/t/a", "text")
            await c.write("/t/b", b"x\0y")  # values are bytes, NULs included
            assert await c.read("/t/a") == b"text"
            assert await c.read("/t/b") == b"x\0y"
            await c.mkdir("/t/dir")
            assert await c.read("/t/dir") == b""
            assert sorted(await c.directory("/t")) == ["a", "b", "dir"]
            assert await c.directory("/t/dir") == []
            await c.rm("/t/a")
            with pytest.raises(wire.XenstoreError) as info:
                await c.read("/t/a")
            assert info.value.errno == errno.ENOENT and info.value.name == "ENOENT"
            assert "XS_READ /t/a" in str(info.value)
            with pytest.raises(wire.XenstoreError, match="ENOENT"):
                await c.directory("/no/such")
            assert await c.get_perms("/t/b") == ["n0"]
            await c.set_perms("/t/b", ["n0", "r3"])
            assert await c.get_perms("/t/b") == ["n0", "r3"]
            with pytest.raises(wire.XenstoreError, match="EINVAL"):
                await c.write("bad//path", "x")
            assert not c.closed

    run(main)


def test_sim_directory_of_4000_children_uses_directory_part(sim):
    async def main():
        async with await XenstoreClient.connect(sim.xenstored) as c:
            names = [f"child-with-a-longish-name-{i:05d}" for i in range(4000)]
            tx = await c.transaction_start()
            await asyncio.gather(*(c.write(f"/big/{n}", "", tx) for n in names))
            assert await c.transaction_end(tx) is True
            sent = spy_types(c)
            assert sorted(await c.directory("/big")) == names
            assert sent[0] == wire.XS_DIRECTORY  # answered E2BIG
            assert sent.count(wire.XS_DIRECTORY_PART) > 20  # ~120 KiB of names, 4 KiB a part

    run(main)


def test_sim_500_concurrent_requests(sim):
    async def main():
        async with await XenstoreClient.connect(sim.xenstored) as c:
            await asyncio.gather(*(c.write(f"/c/{i}", f"value {i}") for i in range(500)))
            got = await asyncio.gather(*(c.read(f"/c/{i}") for i in range(500)))
            assert got == [f"value {i}".encode() for i in range(500)]

    run(main, "uvloop")


def test_sim_watch_first_event_firing_unwatch_reset(sim):
    async def main():
        events: list[tuple[str, str]] = []
        async with await XenstoreClient.connect(
            sim.xenstored, on_watch=lambda p, t: events.append((p, t))
        ) as c:
            await c.watch("/w", "tok")
            await until(lambda: ("/w", "tok") in events)  # the immediate first event
            await c.write("/w/x", "1")
            await until(lambda: ("/w/x", "tok") in events)
            await c.unwatch("/w", "tok")
            with pytest.raises(wire.XenstoreError, match="ENOENT"):
                await c.unwatch("/w", "tok")
            events.clear()
            await c.write("/w/y", "1")
            await c.read("/w/y")  # a round trip: anything fired would be here by now
            assert events == []

            await c.watch(wire.SPECIAL_RELEASE, "rel")
            await until(lambda: events == [(wire.SPECIAL_RELEASE, "rel")])
            await asyncio.to_thread(sim.ctl.shutdown, 3, "poweroff")
            await until(lambda: len(events) == 2)
            assert events[1] == (wire.SPECIAL_RELEASE, "rel")

            await c.watch("/w", "again")
            await until(lambda: ("/w", "again") in events)
            await c.reset_watches()
            events.clear()
            await c.write("/w/z", "1")
            await asyncio.to_thread(sim.ctl.shutdown, 4, "reboot")
            await c.read("/w/z")
            assert events == []

    run(main)


def test_sim_transactions(sim):
    async def main():
        async with await XenstoreClient.connect(sim.xenstored) as c:
            tx = await c.transaction_start()
            assert tx != 0
            await c.write("/tx/a", "inside", tx)
            assert await c.read("/tx/a", tx) == b"inside"
            with pytest.raises(wire.XenstoreError, match="ENOENT"):
                await c.read("/tx/a")  # not visible before the commit
            assert await c.transaction_end(tx) is True
            assert await c.read("/tx/a") == b"inside"

            tx = await c.transaction_start()
            await c.write("/tx/a", "discarded", tx)
            assert await c.transaction_end(tx, commit=False) is True
            assert await c.read("/tx/a") == b"inside"

            tx = await c.transaction_start()
            assert await c.read("/tx/a", tx) == b"inside"
            await c.write("/tx/a", "loser", tx)
            await c.write("/tx/a", "winner")  # a write outside, in between
            assert await c.transaction_end(tx) is False  # EAGAIN: start over
            assert await c.read("/tx/a") == b"winner"
            with pytest.raises(wire.XenstoreError, match="ENOENT"):
                await c.read("/tx/a", tx)  # the transaction is gone

    run(main)


def test_sim_domains_introduce_release_resume(sim):
    async def main():
        events: list[tuple[str, str]] = []
        async with await XenstoreClient.connect(
            sim.xenstored, on_watch=lambda p, t: events.append((p, t))
        ) as c:
            assert await c.get_domain_path(5) == "/local/domain/5"
            assert await c.is_domain_introduced(0) is True
            assert await c.is_domain_introduced(2) is True
            await c.watch(wire.SPECIAL_RELEASE, "rel")
            await c.watch(wire.SPECIAL_INTRODUCE, "intro")
            await until(lambda: len(events) == 2)
            await c.release(2)
            assert await c.is_domain_introduced(2) is False
            await until(lambda: (wire.SPECIAL_RELEASE, "rel") in events[2:])
            with pytest.raises(wire.XenstoreError, match="ENOENT"):
                await c.release(2)
            await c.introduce(2, 0x10002, 5)
            assert await c.is_domain_introduced(2) is True
            await until(lambda: (wire.SPECIAL_INTRODUCE, "intro") in events[2:])
            await c.resume(2)
            with pytest.raises(wire.XenstoreError, match="EINVAL"):
                await c.introduce(4000, 1, 5)  # no such domain

    run(main)


def test_sim_417_no_features_no_depth(sim):
    async def main():
        async with await XenstoreClient.connect(sim.xenstored) as c:
            t0 = time.monotonic()
            assert await c.get_feature(timeout=5) is None  # ENOSYS
            assert time.monotonic() - t0 < 2.5  # not the timeout
            with pytest.raises(wire.XenstoreError) as info:
                await c.watch(wire.SPECIAL_RELEASE, "d", depth=1)
            assert info.value.name == "EINVAL"
            assert await c.read("/local/domain/1/name") == b"guest-1"  # still fine

    run(main)


def test_sim_422_features_and_depth_watch(sim422):
    async def main():
        events: list[tuple[str, str]] = []
        async with await XenstoreClient.connect(
            sim422.xenstored, on_watch=lambda p, t: events.append((p, t))
        ) as c:
            features = await c.get_feature()
            assert features is not None
            assert features & wire.XENSTORE_SERVER_FEATURE_WATCHDEPTH
            await c.watch(wire.SPECIAL_RELEASE, "d", depth=1)
            await until(lambda: events == [(wire.SPECIAL_RELEASE, "d")])
            await asyncio.to_thread(sim422.ctl.shutdown, 6, "crash")
            await until(lambda: len(events) == 2)
            assert events[1] == (f"{wire.SPECIAL_RELEASE}/6", "d")  # the firing names the domid

    run(main)


@pytest.mark.parametrize("loop", LOOPS)
def test_sim_through_the_device(sim, loop):
    """The same client through a /dev/xen/xenbus stand-in in front of the sim's xenstored."""

    async def main():
        events: list[tuple[str, str]] = []
        async with XenbusStandIn(sim.xenstored) as dev:
            c = await XenstoreClient.connect(dev.path, on_watch=lambda p, t: events.append((p, t)))
            dev.release_slave()
            assert await c.read("/local/domain/2/name") == b"guest-2"
            await c.watch(wire.SPECIAL_RELEASE, "rel")
            await until(lambda: events == [(wire.SPECIAL_RELEASE, "rel")])
            await asyncio.to_thread(sim.ctl.shutdown, 5, "suspend")
            await until(lambda: len(events) >= 2)
            assert await c.get_feature() is None
            got = await asyncio.gather(*(c.read(f"/local/domain/{d}/name") for d in range(1, 9)))
            assert got == [f"guest-{d}".encode() for d in range(1, 9)]
            await c.close()
            await asyncio.wait_for(dev.hangup.wait(), 2)

    run(main, loop)
