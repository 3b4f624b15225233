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
import realxen
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

pytest_plugins = ("simhelpers",)  # sim (4.17), sim422, sim_factory: `xenmux sim` by PID

# Debian's real xenstored / oxenstored 4.17 under the hypervisor stand-in (tests/realxen.py).
xenstub_libs = realxen.xenstub_libs
c_xenstored = realxen.c_xenstored
oxenstored = realxen.oxenstored
real_xenstored = realxen.real_xenstored

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
            await XenstoreClient.connect(path, timeout=5)
        assert time.monotonic() - t0 < 2
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
        assert time.monotonic() - t0 < 2

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
            assert time.monotonic() - t0 < 2  # at once, not after some timeout
            for r in results:
                assert isinstance(r, XenstoreConnectionError), r
                assert not isinstance(r, XenstoreProtocolError)
                assert path in str(r)
            await asyncio.wait_for(c.wait_closed(), 5)
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
            await asyncio.wait_for(c.wait_closed(), 5)
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
            assert 0.25 < time.monotonic() - t0 < 2
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
            assert time.monotonic() - t0 < 2.5  # not the timeout
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
            await asyncio.wait_for(c.close(), 5)
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
            assert time.monotonic() - t0 < 2
            await asyncio.wait_for(c.wait_closed(), 5)
            assert c.closed and len(lost) == 1
        assert open_fds() <= before

    run(main, loop)


# Against the simulated xenstored (`xenmux sim`, C xenstored rules) ---------------------------


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


def test_directory_part_starts_over_when_the_directory_changes(sockdir):
    """A generation that changes between parts means the listing moved: gather it again."""
    path = os.path.join(sockdir, "parts.sock")
    listing = b"".join(f"n{i}\0".encode() for i in range(6))
    offsets = []

    async def handler(reader, writer):
        generation = 7
        while True:
            m = await read_msg(reader)
            if m.type == wire.XS_DIRECTORY:
                writer.write(answer(m, b"E2BIG\0", wire.XS_ERROR))
                continue
            off = int(wire.split(m.payload)[1])
            offsets.append(off)
            if len(offsets) == 2:
                generation = 8  # changed under the client after the first part
            part = listing[off : off + 9]
            end = b"\0" if off + 9 >= len(listing) else b""
            writer.write(answer(m, str(generation).encode() + b"\0" + part + end))

    async def main():
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path)
            assert await c.directory("/d") == [f"n{i}" for i in range(6)]
            await c.close()

    run(main)
    assert offsets == [0, 9, 0, 9]


def test_directory_without_directory_part_is_e2big(sockdir):
    """A server without XS_DIRECTORY_PART (ENOSYS) leaves E2BIG, as libxenstore reports it."""
    path = os.path.join(sockdir, "noparts.sock")

    async def handler(reader, writer):
        while True:
            m = await read_msg(reader)
            name = b"E2BIG\0" if m.type == wire.XS_DIRECTORY else b"ENOSYS\0"
            writer.write(answer(m, name, wire.XS_ERROR))

    async def main():
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path)
            with pytest.raises(wire.XenstoreError) as info:
                await c.directory("/d")
            assert info.value.errno == errno.E2BIG
            await c.close()

    run(main)


# Against Debian's real xenstored and oxenstored 4.17 -----------------------------------------


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
