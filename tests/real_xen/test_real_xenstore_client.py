"""XenstoreClient against Debian's real xenstored and oxenstored 4.17 under the hypervisor
stand-in (tests/realxen.py): the operations, GET_FEATURE held back by oxenstored,
DIRECTORY_PART of C xenstored, and oxenstored's oversized DIRECTORY refused."""

from __future__ import annotations

import asyncio
import time

import pytest
import realxen
from xsclienthelpers import run, spy_types, until

from mux.xenstore import wire
from mux.xenstore.client import XenstoreClient, XenstoreProtocolError

# Debian's real xenstored / oxenstored 4.17 under the hypervisor stand-in (tests/realxen.py).
xenstub_libs = realxen.xenstub_libs
c_xenstored = realxen.c_xenstored
oxenstored = realxen.oxenstored
real_xenstored = realxen.real_xenstored


def test_real_servers(real_xenstored):
    xsd = real_xenstored

    async def main():
        events: list[tuple[str, str]] = []
        async with await XenstoreClient.connect(
            str(xsd.socket_path), on_watch=lambda p, t: events.append((p, t))
        ) as c:
            t0 = time.monotonic()
            assert await c.get_feature(timeout=5) is None  # 4.17: ENOSYS, however it comes
            assert time.monotonic() - t0 < 2.5  # not the timeout
            assert await c.read("/local/domain/2/name") == b"guest2"
            await c.write("/t/a", "x")
            await c.mkdir("/t/d")
            assert sorted(await c.directory("/t")) == ["a", "d"]
            await c.set_perms("/t/a", ["n0", "r1"])
            assert await c.get_perms("/t/a") == ["n0", "r1"]
            tx = await c.transaction_start()
            await c.write("/t/b", "in tx", tx)
            assert await c.transaction_end(tx) is True
            assert await c.read("/t/b") == b"in tx"
            await c.rm("/t")
            with pytest.raises(wire.XenstoreError, match="ENOENT"):
                await c.read("/t/a")
            got = await asyncio.gather(*(c.read(f"/local/domain/{d}/name") for d in (1, 2, 3)))
            assert got == [b"guest1", b"guest2", b"guest3"]
            assert await c.is_domain_introduced(3) is True
            assert await c.is_domain_introduced(4) is False
            assert await c.get_domain_path(3) == "/local/domain/3"
            with pytest.raises(wire.XenstoreError, match="EINVAL"):
                await c.watch(wire.SPECIAL_RELEASE, "d", depth=1)
            await c.watch(wire.SPECIAL_RELEASE, "rel")
            await until(lambda: events == [(wire.SPECIAL_RELEASE, "rel")])
            await asyncio.to_thread(xsd.shutdown_domain, 1, 0)
            await until(lambda: len(events) >= 2)
            assert events[-1] == (wire.SPECIAL_RELEASE, "rel")

    run(main)


def test_real_oxenstored_holds_get_feature_back(oxenstored):
    """oxenstored answers an unknown request only when the next one arrives: the probe's
    follow-up read is what keeps get_feature() from waiting out its timeout."""

    async def main():
        async with await XenstoreClient.connect(str(oxenstored.socket_path)) as c:
            _, alone = c._proto.send(wire.XS_GET_FEATURE, b"")
            await asyncio.sleep(0.3)
            assert not alone.done()  # held back
            await c.read("/")
            with pytest.raises(wire.XenstoreError, match="ENOSYS"):
                await asyncio.wait_for(alone, 5)
            t0 = time.monotonic()
            assert await c.get_feature(timeout=5) is None
            assert time.monotonic() - t0 < 2.5  # not the timeout

    run(main)


def test_real_c_xenstored_directory_part(c_xenstored):
    async def main():
        async with await XenstoreClient.connect(str(c_xenstored.socket_path)) as c:
            # 13 KiB of names: four parts (the real server is slow to fill a transaction)
            names = [f"child-with-a-longish-name-{i:05d}" for i in range(400)]
            tx = await c.transaction_start()
            await asyncio.gather(*(c.write(f"/big/{n}", "", tx) for n in names))
            assert await c.transaction_end(tx) is True
            sent = spy_types(c)
            assert sorted(await c.directory("/big")) == names
            assert sent[0] == wire.XS_DIRECTORY and sent.count(wire.XS_DIRECTORY_PART) >= 4

    run(main)


def test_real_oxenstored_oversized_directory_is_refused(oxenstored):
    """oxenstored 4.17 answers DIRECTORY over its socket with any length and has no
    DIRECTORY_PART. Like libxenstore (read_message: E2BIG), the client does not take a
    reply over 4096 bytes: the connection is cut, with the length named."""

    async def main():
        lost = []
        async with await XenstoreClient.connect(
            str(oxenstored.socket_path), on_lost=lost.append
        ) as c:
            tx = await c.transaction_start()
            await asyncio.gather(*(c.write(f"/big/child-{i:05d}", "", tx) for i in range(500)))
            assert await c.transaction_end(tx) is True
            with pytest.raises(XenstoreProtocolError, match="over the 4096-byte limit"):
                await c.directory("/big")
            await asyncio.wait_for(c.wait_closed(), 5)
            assert c.closed and len(lost) == 1

    run(main)
