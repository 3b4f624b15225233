"""XenstoreClient: every operation against the simulated xenstored, and the failure rules
(a server that dies, one that sends garbage, one that never answers) against tiny scripted
servers written here. Each test runs its own event loop, under asyncio and under uvloop
where the transport matters; every loop's exception handler must stay silent."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import socket
import tempfile
import termios
import time
import tty

import pytest
import uvloop

from mux.xenstore import client as xsclient
from mux.xenstore import wire
from mux.xenstore.client import (
    XenstoreClient,
    XenstoreConnectionError,
    XenstoreProtocolError,
    XenstoreTimeoutError,
    default_xenstore_path,
)

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


# Which xenstored ------------------------------------------------------------------------------


def test_default_path_order(tmp_path, monkeypatch):
    sock = tmp_path / "socket"
    monkeypatch.setattr(xsclient, "XENSTORED_SOCKET", str(sock))
    env = {"XENSTORED_PATH": "/env/sock"}
    assert default_xenstore_path("/sim", explicit="/x", environ=env) == "/x"
    assert default_xenstore_path("/sim", environ=env) == "/sim/xenstored.sock"
    assert default_xenstore_path(environ=env) == "/env/sock"
    assert default_xenstore_path(environ={}) == "/dev/xen/xenbus"
    sock.touch()
    assert default_xenstore_path(environ={"XENSTORED_PATH": ""}) == str(sock)
    monkeypatch.setenv("XENSTORED_PATH", "/from/os/environ")
    assert default_xenstore_path() == "/from/os/environ"


# Connecting -----------------------------------------------------------------------------------


def test_connect_to_nothing_names_the_path(sockdir):
    path = os.path.join(sockdir, "absent.sock")

    async def main():
        t0 = time.monotonic()
        with pytest.raises(XenstoreConnectionError, match=path) as info:
            await XenstoreClient.connect(path, timeout=2)
        assert time.monotonic() - t0 < 1
        assert info.value.path == path

        refused = os.path.join(sockdir, "refused.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(refused)  # bound, never listening: connect is refused
        try:
            with pytest.raises(XenstoreConnectionError, match="refused"):
                await XenstoreClient.connect(refused, timeout=2)
        finally:
            s.close()

    run(main)


def test_connect_timeout(monkeypatch):
    """A connect that never completes ends after `timeout` (a hung device open, say)."""

    async def never(loop, path, protocol):
        await asyncio.sleep(30)

    monkeypatch.setattr(xsclient, "open_transport", never)

    async def main():
        t0 = time.monotonic()
        with pytest.raises(XenstoreConnectionError, match=r"/hung: no connection within 0\.2 s"):
            await XenstoreClient.connect("/hung", timeout=0.2)
        assert time.monotonic() - t0 < 1

    run(main)


# A server that goes away or misbehaves ---------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_server_dies_mid_request(sockdir, loop):
    """Accepts, reads one request, closes: every pending request fails at once, on_lost once."""
    path = os.path.join(sockdir, "dies.sock")

    async def handler(reader, writer):
        await read_msg(reader)
        writer.transport.abort()

    async def main():
        lost = []
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path, on_lost=lost.append)
            t0 = time.monotonic()
            results = await asyncio.gather(
                c.read("/a"),
                c.write("/b", "x"),
                c.watch("@releaseDomain", "t"),
                c.directory("/"),
                return_exceptions=True,
            )
            assert time.monotonic() - t0 < 1
            for r in results:
                assert isinstance(r, XenstoreConnectionError), r
                assert not isinstance(r, XenstoreProtocolError)
                assert path in str(r)
            await asyncio.wait_for(c.wait_closed(), 1)
            assert c.closed
            assert len(lost) == 1 and isinstance(lost[0], XenstoreConnectionError)
            assert path in str(lost[0])
            with pytest.raises(XenstoreConnectionError, match=path):
                await c.read("/a")
            await c.close()  # closing a dead client is harmless
            assert len(lost) == 1

    run(main, loop)


GARBAGE = {
    "length over 4096": lambda m: wire.HEADER.pack(m.type, m.req_id, 0, 5000) + b"x" * 64,
    "unknown type": lambda m: frame(999, m.req_id, b"OK\0"),
    "reply of another type": lambda m: answer(m, b"OK\0", wire.XS_WRITE),
    "watch event without NULs": lambda m: frame(wire.XS_WATCH_EVENT, 0, b"junk"),
    "OK that is not OK": lambda m: answer(m, b"KO\0"),
}
GARBAGE_SAYS = {
    "length over 4096": "5000",
    "unknown type": "unknown message type 999",
    "reply of another type": "XS_WRITE reply to XS_MKDIR /a",
    "watch event without NULs": "NUL",
    "OK that is not OK": "not OK",
}


@pytest.mark.parametrize("kind", GARBAGE)
def test_garbage_cuts_the_connection(sockdir, kind):
    path = os.path.join(sockdir, "garbage.sock")
    server_saw_eof = asyncio.Event

    async def main():
        eof = server_saw_eof()

        async def handler(reader, writer):
            first = await read_msg(reader)
            await read_msg(reader)  # the second request stays pending
            writer.write(GARBAGE[kind](first))
            await writer.drain()
            assert await reader.read() == b""  # the client hung up on us
            eof.set()

        lost = []
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path, on_lost=lost.append)
            results = await asyncio.gather(c.mkdir("/a"), c.read("/b"), return_exceptions=True)
            for r in results:
                assert isinstance(r, XenstoreProtocolError), r
                assert GARBAGE_SAYS[kind] in str(r) and path in str(r)
            await asyncio.wait_for(eof.wait(), 2)
            await asyncio.wait_for(c.wait_closed(), 1)
            assert c.closed and isinstance(c.error, XenstoreProtocolError)
            assert len(lost) == 1 and isinstance(lost[0], XenstoreProtocolError)

    run(main)


def test_unknown_req_id_is_dropped_and_logged(sockdir, caplog):
    path = os.path.join(sockdir, "stray.sock")

    async def handler(reader, writer):
        while True:
            m = await read_msg(reader)
            writer.write(frame(wire.XS_READ, 0xDEAD, b"stray"))
            writer.write(answer(m, b"value"))

    async def main():
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path)
            assert await c.read("/x") == b"value"
            assert await c.read("/y") == b"value"
            assert not c.closed
            await c.close()

    with caplog.at_level(logging.WARNING, logger="mux.xenstore.client"):
        run(main)
    assert "unknown req_id 57005" in caplog.text


@pytest.mark.parametrize("loop", LOOPS)
def test_replies_out_of_order_and_in_pieces(sockdir, loop):
    """Replies matched by req_id whatever their order and however the bytes are cut."""
    path = os.path.join(sockdir, "shuffle.sock")
    n = 200

    async def handler(reader, writer):
        msgs = [await read_msg(reader) for _ in range(n)]
        out = b"".join(answer(m, b"value of " + m.payload.rstrip(b"\0")) for m in reversed(msgs))
        out = frame(wire.XS_WATCH_EVENT, 0, wire.join("/w", "tok")) + out
        for i in range(0, 300):  # the first frames a byte at a time ...
            writer.write(out[i : i + 1])
            await writer.drain()
        writer.write(out[300:])  # ... the rest in one go

    async def main():
        events = []
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path, on_watch=lambda p, t: events.append((p, t)))
            got = await asyncio.gather(*(c.read(f"/k/{i}") for i in range(n)))
            assert got == [f"value of /k/{i}".encode() for i in range(n)]
            assert events == [("/w", "tok")]
            await c.close()

    run(main, loop)


def test_errors_name_the_request(sockdir):
    path = os.path.join(sockdir, "errors.sock")

    async def handler(reader, writer):
        while True:
            m = await read_msg(reader)
            name = b"EACCES\0" if m.type == wire.XS_READ else b"EWEIRD\0"
            writer.write(answer(m, name, wire.XS_ERROR))

    async def main():
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path)
            with pytest.raises(wire.XenstoreError) as info:
                await c.read("/local/domain/7/name")
            assert info.value.errno == errno.EACCES and info.value.name == "EACCES"
            assert "XS_READ /local/domain/7/name" in str(info.value)
            with pytest.raises(
                wire.XenstoreError, match="EWEIRD"
            ):  # unlisted name: still an answer
                await c.mkdir("/a")
            assert not c.closed
            await c.close()

    run(main)


def test_on_watch_that_raises_is_contained(sockdir, caplog):
    path = os.path.join(sockdir, "cb.sock")

    async def handler(reader, writer):
        m = await read_msg(reader)
        writer.write(answer(m, b"OK\0") + frame(wire.XS_WATCH_EVENT, 0, wire.join("/p", "t")))
        writer.write(frame(wire.XS_WATCH_EVENT, 0, wire.join("/p/q", "t", "extra")))
        m = await read_msg(reader)
        writer.write(answer(m, b"v"))

    async def main():
        seen = []

        def on_watch(p, t):
            seen.append(p)
            if p == "/p":
                raise RuntimeError("subscriber bug")

        async with scripted(path, handler):
            c = await XenstoreClient.connect(path, on_watch=on_watch)
            await c.watch("/p", "t")
            assert await c.read("/p") == b"v"
            assert seen == ["/p", "/p/q"]
            await c.close()

    run(main)
    assert "subscriber bug" in caplog.text


# Timeouts and GET_FEATURE ----------------------------------------------------------------------


def test_request_timeout_then_late_reply_dropped(sockdir, caplog):
    path = os.path.join(sockdir, "slow.sock")

    async def handler(reader, writer):
        slow = await read_msg(reader)
        fast = await read_msg(reader)
        writer.write(answer(fast, b"fast"))
        await asyncio.sleep(0.3)
        writer.write(answer(slow, b"late"))  # after the client gave up on it
        m = await read_msg(reader)
        writer.write(answer(m, b"after"))

    async def main():
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path)
            slow = asyncio.ensure_future(c.request(wire.XS_READ, b"/slow\0", timeout=0.1))
            await asyncio.sleep(0)
            assert await c.read("/fast") == b"fast"
            with pytest.raises(XenstoreTimeoutError, match="XS_READ /slow"):
                await slow
            await asyncio.sleep(0.35)
            assert await c.read("/next") == b"after"
            assert not c.closed
            await c.close()

    with caplog.at_level(logging.DEBUG, logger="mux.xenstore.client"):
        run(main)
    assert "unknown req_id" not in caplog.text
    assert "late XS_READ reply" in caplog.text


def test_get_feature_server_never_answers(sockdir):
    path = os.path.join(sockdir, "mute.sock")

    async def handler(reader, writer):
        while True:
            await read_msg(reader)

    async def main():
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path)
            t0 = time.monotonic()
            assert await c.get_feature(timeout=0.3) is None
            assert 0.25 < time.monotonic() - t0 < 1.0
            assert c._proto.pending_count == 0  # nothing left waiting
            await c.close()

    run(main)


def test_get_feature_reply_held_back_until_next_request(sockdir):
    """oxenstored-like: the ENOSYS for GET_FEATURE comes only when another request arrives."""
    path = os.path.join(sockdir, "held.sock")
    seen = []

    async def handler(reader, writer):
        held = None
        while True:
            m = await read_msg(reader)
            seen.append((m.type, m.payload))
            if m.type == wire.XS_GET_FEATURE:
                held = m
                continue
            if held is not None:
                writer.write(answer(held, b"ENOSYS\0", wire.XS_ERROR))
                held = None
            writer.write(answer(m, b""))

    async def main():
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path)
            t0 = time.monotonic()
            assert await c.get_feature(timeout=5) is None
            assert time.monotonic() - t0 < 1
            await c.close()

    run(main)
    # libxenstore's xs_get_features_supported(): no payload at all asks for the server's set.
    assert seen[0] == (wire.XS_GET_FEATURE, b"")
    assert seen[1] == (wire.XS_READ, b"/\0")


def test_get_feature_parses_the_bitmap(sockdir):
    path = os.path.join(sockdir, "feat.sock")

    async def handler(reader, writer):
        while True:
            m = await read_msg(reader)
            writer.write(answer(m, b"7\0" if m.type == wire.XS_GET_FEATURE else b""))

    async def main():
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path)
            assert await c.get_feature() == 7
            await c.close()

    run(main)


def test_close_fails_pending_and_skips_on_lost(sockdir):
    path = os.path.join(sockdir, "close.sock")

    async def handler(reader, writer):
        while True:
            await read_msg(reader)

    async def main():
        lost = []
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path, on_lost=lost.append)
            pending = asyncio.ensure_future(c.read("/never"))
            await asyncio.sleep(0.01)
            await asyncio.wait_for(c.close(), 1)
            with pytest.raises(XenstoreConnectionError, match="closed by the client"):
                await pending
            assert c.closed and lost == []

    run(main)


def test_payload_over_the_limit_is_refused_before_sending(sockdir):
    path = os.path.join(sockdir, "big.sock")

    async def handler(reader, writer):
        while True:
            m = await read_msg(reader)
            writer.write(answer(m, b"OK\0"))

    async def main():
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path)
            with pytest.raises(wire.WireError):
                await c.write("/big", b"x" * 5000)
            await c.write("/small", b"x" * 100)
            assert c._proto.pending_count == 0
            await c.close()

    run(main)


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
            assert time.monotonic() - t0 < 1
            await asyncio.wait_for(c.wait_closed(), 1)
            assert c.closed and len(lost) == 1
        assert open_fds() <= before

    run(main, loop)
