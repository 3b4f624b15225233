"""Shared by the XenstoreClient tests (tests/unit, tests/sim, tests/real_xen): a fresh event
loop per test whose exception handler must stay silent, tiny scripted xenstored servers, a
stand-in for the /dev/xen/xenbus device, and small waits and spies.

A test module registers the fixture by assigning it: `sockdir = xsclienthelpers.sockdir`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import termios
import time
import tty

import pytest
import uvloop

from mux.xenstore import wire
from mux.xenstore.client import XenstoreClient

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(coro_fn, loop: str = "asyncio", limit: float = 10.0):
    """Run `coro_fn()` on a fresh loop; fail if anything reached the loop's exception handler."""
    handled: list[dict] = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: handled.append(ctx))
        async with asyncio.timeout(limit):
            return await coro_fn()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        result = runner.run(main())
    assert not handled, f"reached the event loop's exception handler: {handled}"
    return result


@pytest.fixture
def sockdir():
    """A short directory for Unix sockets (sun_path is 108 bytes; tmp_path can be longer)."""
    d = tempfile.mkdtemp(prefix="xsc-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# A scripted server ---------------------------------------------------------------------------


async def read_msg(reader: asyncio.StreamReader) -> wire.Message:
    header = await reader.readexactly(wire.HEADER_SIZE)
    msg_type, req_id, tx_id, length = wire.decode_header(header)
    return wire.Message(msg_type, req_id, tx_id, await reader.readexactly(length))


def frame(msg_type: int, req_id: int, payload: bytes, tx_id: int = 0) -> bytes:
    return wire.HEADER.pack(msg_type, req_id, tx_id, len(payload)) + payload


def answer(msg: wire.Message, payload: bytes, msg_type: int | None = None) -> bytes:
    return frame(msg.type if msg_type is None else msg_type, msg.req_id, payload, msg.tx_id)


@contextlib.asynccontextmanager
async def scripted(path: str, handler):
    """A Unix server at `path` running `handler(reader, writer)` for each connection."""
    tasks: set[asyncio.Task] = set()

    async def on_conn(reader, writer):
        tasks.add(asyncio.current_task())
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test is over (ending normally keeps asyncio quiet)
        finally:
            writer.close()

    server = await asyncio.start_unix_server(on_conn, path)
    try:
        yield server
    finally:
        server.close()
        if tasks:
            await asyncio.wait(tasks, timeout=1)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


# The character device (/dev/xen/xenbus) -------------------------------------------------------


def make_raw_pty() -> tuple[int, int, str]:
    """(master, slave, slave path) of a pty passing bytes untouched, as a device would."""
    master, slave = os.openpty()
    tty.setraw(slave)
    attrs = termios.tcgetattr(slave)
    attrs[0] &= ~(termios.INLCR | termios.IGNCR | termios.IXOFF | termios.IXON)
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


class XenbusStandIn:
    """A stand-in for /dev/xen/xenbus: a pty whose slave the client opens by its path, and
    whose master is relayed, byte for byte, to a xenstored Unix socket (the kernel's xenbus
    driver likewise passes requests and replies between its device and xenstored)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.master, self._slave, self.path = make_raw_pty()
        self.hangup = asyncio.Event()

    async def __aenter__(self) -> XenbusStandIn:
        self._loop = asyncio.get_running_loop()
        self._reader, self._writer = await asyncio.open_unix_connection(self.target)
        self._loop.add_reader(self.master, self._from_master)
        self._pump = self._loop.create_task(self._to_master())
        return self

    def release_slave(self) -> None:
        """Drop the test's own slave descriptor: from now on only the client holds the pty."""
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1

    def _from_master(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: no descriptor of the slave is open any more
            data = b""
        if not data:
            self._loop.remove_reader(self.master)
            self.hangup.set()
            self._writer.close()
            return
        self._writer.write(data)

    async def _to_master(self) -> None:
        while data := await self._reader.read(65536):
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self.master, view) :]
                except BlockingIOError:
                    await asyncio.sleep(0.001)

    async def hang_up(self) -> None:
        """The device goes away under the client."""
        if self.master < 0:
            return
        self._loop.remove_reader(self.master)
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)
        os.close(self.master)
        self.master = -1

    async def __aexit__(self, *exc) -> None:
        await self.hang_up()
        self.release_slave()
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


# Waiting and spying ---------------------------------------------------------------------------


async def until(cond, timeout: float = 5.0) -> None:
    """Wait for `cond()` to hold (events arrive on their own schedule)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def spy_types(c: XenstoreClient) -> list[int]:
    """Record the type of every request the client sends."""
    sent: list[int] = []
    send = c._proto.send

    def spy(msg_type, payload, tx=0):
        sent.append(msg_type)
        return send(msg_type, payload, tx)

    c._proto.send = spy
    return sent
