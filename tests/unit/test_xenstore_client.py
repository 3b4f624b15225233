"""XenstoreClient's failure rules and protocol behaviour (a server that dies, one that sends
garbage, one that never answers, timeouts, GET_FEATURE, DIRECTORY_PART) against tiny
scripted servers (tests/xsclienthelpers.py). Each test runs its own event loop, under asyncio
and under uvloop where the transport matters; every loop's exception handler must stay silent.
The same client against the sim is tests/sim/test_sim_xenstore_client.py, through the
device tests/unit/test_xenstore_client_device.py, against Debian's real servers
tests/real_xen/test_real_xenstore_client.py."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time

import pytest
import xsclienthelpers
from xsclienthelpers import LOOPS, answer, frame, read_msg, run, scripted

from mux.xenstore import client as xsclient
from mux.xenstore import wire
from mux.xenstore.client import (
    XenstoreClient,
    XenstoreConnectionError,
    XenstoreProtocolError,
    XenstoreTimeoutError,
    default_xenstore_path,
)

sockdir = xsclienthelpers.sockdir


# Which xenstored ------------------------------------------------------------------------------


def test_default_path_order(tmp_path, monkeypatch):
    sock = tmp_path / "socket"
    monkeypatch.setattr(xsclient, "XENSTORED_SOCKET", str(sock))
    env = {"XENSTORED_PATH": "/env/sock"}
    assert default_xenstore_path(explicit="/x", environ=env) == "/x"
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


# DIRECTORY_PART -------------------------------------------------------------------------------


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
