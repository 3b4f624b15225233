"""XenstoreClient through a character device: a stand-in for /dev/xen/xenbus
(tests/xsclienthelpers.py:XenbusStandIn) in front of a scripted server, under asyncio and
uvloop; requests, replies and watch events pass, a device that goes away fails what is
pending, and no descriptor leaks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import pytest
import xsclienthelpers
from xsclienthelpers import LOOPS, XenbusStandIn, answer, frame, read_msg, run, scripted

from mux.xenstore import wire
from mux.xenstore.client import XenstoreClient, XenstoreConnectionError

sockdir = xsclienthelpers.sockdir


def open_fds() -> set[str]:
    """This process's descriptors of ttys and sockets (what a client could leak)."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(("/dev/pts/", "/dev/ptmx", "socket:")):
                fds.add(f"{fd} {target}")
    return fds


async def answer_reads_and_watches(reader, writer):
    """Scripted: READ answers "v:<path>", WATCH answers OK and then its first event."""
    while True:
        m = await read_msg(reader)
        if m.type == wire.XS_READ:
            writer.write(answer(m, b"v:" + m.payload.rstrip(b"\0")))
        elif m.type == wire.XS_WATCH:
            path, token = wire.split(m.payload)[:2]
            writer.write(answer(m, b"OK\0"))
            writer.write(frame(wire.XS_WATCH_EVENT, 0, wire.join(path, token)))
        else:
            writer.write(answer(m, b"ENOSYS\0", wire.XS_ERROR))


@pytest.mark.parametrize("loop", LOOPS)
def test_device_transport(sockdir, loop):
    """Requests, replies and watch events through a character device; nothing leaks."""
    path = os.path.join(sockdir, "behind-xenbus.sock")

    async def main():
        before = open_fds()
        async with scripted(path, answer_reads_and_watches), XenbusStandIn(path) as dev:
            events = []
            c = await XenstoreClient.connect(dev.path, on_watch=lambda p, t: events.append((p, t)))
            dev.release_slave()
            assert "XenbusStandIn" not in repr(c)  # it is just a client
            await c.watch("@releaseDomain", "tok")
            # more than the tty's 4 KiB buffer in both directions at once
            keys = [f"/local/domain/{i}/name" for i in range(300)]
            got = await asyncio.gather(*(c.read(k) for k in keys))
            assert got == [b"v:" + k.encode() for k in keys]
            assert events == [("@releaseDomain", "tok")]
            with pytest.raises(wire.XenstoreError, match="ENOSYS"):
                await c.mkdir("/x")
            await c.close()
            assert c.closed
            await asyncio.wait_for(dev.hangup.wait(), 2)  # the client let go of the pty
        assert open_fds() <= before

    run(main, loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_device_goes_away(sockdir, loop):
    path = os.path.join(sockdir, "behind-xenbus.sock")

    async def handler(reader, writer):
        while True:
            await read_msg(reader)  # never answers

    async def main():
        before = open_fds()
        async with scripted(path, handler), XenbusStandIn(path) as dev:
            lost = []
            c = await XenstoreClient.connect(dev.path, on_lost=lost.append)
            dev.release_slave()
            pending = asyncio.ensure_future(c.read("/a"))
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            await dev.hang_up()
            with pytest.raises(XenstoreConnectionError, match=dev.path):
                await pending
            assert time.monotonic() - t0 < 2
            await asyncio.wait_for(c.wait_closed(), 5)
            assert c.closed and len(lost) == 1
        assert open_fds() <= before

    run(main, loop)
