"""The bridge's one seam into nats-py's internals, and replies held in the kernel.

mux/bridge/natsconn.py finds the TCP socket under a nats-py connection through private
attributes; a nats-py release that moves them must fail here, not quietly stop holding
acks (the bridge would then pay a wake-up per ack batch again, and nothing else would say).
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios

import pytest
import uvloop

from mux.bridge.natsconn import (
    NatsOptions,
    NatsUnavailable,
    connect,
    pub_command,
    transport_socket,
)
from mux.bridge.publisher import Publisher


def _queued(sock: socket.socket) -> int:
    """Bytes the kernel holds unread on `sock` (SIOCINQ)."""
    buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    return struct.unpack("i", buf)[0]


async def _until(predicate, tries: int = 2000) -> None:
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met")


# The bridge runs on uvloop (its sockets are uvloop's pseudo-sockets); asyncio's as well.
LOOPS = pytest.mark.parametrize("runner", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


@LOOPS
def test_held_replies_stay_in_the_kernel_until_someone_reads(pool, runner):
    server = pool.nats()

    async def run() -> None:
        conn = await connect(NatsOptions([server.url]), "test")
        try:
            sock = transport_socket(conn.nc)
            assert sock is not None, "nats-py moved its transport: see transport_socket"
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
            got: list[bytes] = []

            async def on_msg(msg) -> None:
                got.append(msg.data)

            await conn.nc.subscribe("t.held", cb=on_msg)
            await conn.nc.flush()
            conn.hold_replies()
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) > 1
            await conn.nc.publish("t.held", b"one")
            # The server echoes it to our own subscription: it reaches the kernel, not us.
            await _until(lambda: _queued(sock) > 0)
            await asyncio.sleep(0.05)  # loop turns in which an unheld socket would be read
            assert got == []
            with conn.reading():
                await _until(lambda: got == [b"one"])
            # Out of reading(), still read as it comes until the next hold.
            await conn.nc.publish("t.held", b"two")
            await _until(lambda: got == [b"one", b"two"])
            conn.hold_replies()
            conn.release_replies()
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
        finally:
            await conn.close()

    runner(run())


@LOOPS
def test_a_hold_while_someone_reads_does_not_starve_them(pool, runner):
    server = pool.nats()

    async def run() -> None:
        conn = await connect(NatsOptions([server.url]), "test")
        try:
            sock = transport_socket(conn.nc)
            assert sock is not None
            got: list[bytes] = []

            async def on_msg(msg) -> None:
                got.append(msg.data)

            await conn.nc.subscribe("t.race", cb=on_msg)
            await conn.nc.flush()
            with conn.reading():
                conn.hold_replies()  # another task's publish, while this one waits
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
                await conn.nc.publish("t.race", b"x")
                await _until(lambda: got == [b"x"])
        finally:
            await conn.close()

    runner(run())


@LOOPS
def test_commands_sent_raw_arrive_as_nats_py_would_have_sent_them(pool, runner):
    server = pool.nats()

    async def run() -> None:
        conn = await connect(NatsOptions([server.url]), "test")
        try:
            got = []

            async def on_msg(msg) -> None:
                got.append((msg.subject, msg.reply, dict(msg.headers or {}), msg.data))

            await conn.nc.subscribe("t.raw.>", cb=on_msg)
            # nats-py's own buffered command (this SUB) goes out first: the server sees the
            # subscription before the messages, in one flush with them.
            await conn.nc.subscribe("t.late", cb=on_msg)
            await conn.send(
                pub_command("t.raw.1", b'{"a":1}', "in.7", {"Nats-Msg-Id": "h:gap:3:u:death"})
                + pub_command("t.raw.2", b"")
                + pub_command("t.late", b"x", headers={"KV-Operation": "DEL"})
            )
            await conn.nc.flush()
            await _until(lambda: len(got) == 3)
            assert got == [
                ("t.raw.1", "in.7", {"Nats-Msg-Id": "h:gap:3:u:death"}, b'{"a":1}'),
                ("t.raw.2", "", {}, b""),
                ("t.late", "", {"KV-Operation": "DEL"}, b"x"),
            ]
        finally:
            await conn.close()
        with pytest.raises(NatsUnavailable):
            await conn.send(pub_command("t.raw.3", b"gone"))

    runner(run())


@LOOPS
def test_publishes_written_straight_to_the_socket_are_acknowledged_in_order(pool, runner):
    server = pool.nats()

    async def run() -> None:
        conn = await connect(NatsOptions([server.url]), "test")
        try:
            await conn.js.add_stream(name="t", subjects=["t.>"])
            await conn.nc.flush()  # nothing queued in nats-py: the publishes go out at once
            pub = Publisher(conn)
            for i in (1, 2, 1):  # the third repeats the first's id
                await pub.send(f"t.{i}", b"x", {"Nats-Msg-Id": f"id{i}"}, item=i)
            # (the replies, held in the kernel, are read by drain)
            acks = await pub.drain()
            assert [(a.item, a.stream_seq, a.duplicate) for a in acks] == [
                (1, 1, False),
                (2, 2, False),
                (1, 1, True),
            ]
            pub.close()
        finally:
            await conn.close()

    runner(run())
