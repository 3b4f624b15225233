"""XenstoreClient's deadlines and liveness (issue 11 item 9) against scripted servers: with
`abort_on_timeout` a request that misses its deadline gives the connection up (a hung
xenstored, or one that lost the request), `probe()` shows a server still answers, and
`idle_for` says how long it has been silent. The daemon's use of them is
tests/daemon/test_xenstore_faults.py."""

from __future__ import annotations

import asyncio
import os

import pytest
import xsclienthelpers
from xsclienthelpers import LOOPS, answer, read_msg, run, scripted

from mux.xenstore import wire
from mux.xenstore.client import (
    XenstoreClient,
    XenstoreConnectionError,
    XenstoreDeadlineError,
    XenstoreTimeoutError,
)

sockdir = xsclienthelpers.sockdir


async def _mute(reader, writer):
    """Reads every request, answers none: a hung xenstored (it still accepts)."""
    while True:
        await read_msg(reader)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_missed_deadline_gives_the_connection_up(sockdir, loop):
    path = os.path.join(sockdir, "hung.sock")
    seen_eof = []

    async def handler(reader, writer):
        await read_msg(reader)
        await read_msg(reader)
        seen_eof.append(await reader.read() == b"")  # the client hung up

    async def main():
        lost = []
        async with scripted(path, handler):
            c = await XenstoreClient.connect(
                path, on_lost=lost.append, request_timeout=0.2, abort_on_timeout=True
            )
            other = asyncio.ensure_future(c.request(wire.XS_READ, b"/other\0", timeout=30))
            with pytest.raises(XenstoreTimeoutError, match="XS_WATCH @releaseDomain") as info:
                await c.watch("@releaseDomain", "t")
            assert info.value.request == "XS_WATCH"
            # The request waiting behind it fails at once with the connection.
            with pytest.raises(XenstoreDeadlineError, match="XS_WATCH") as other_info:
                await asyncio.wait_for(other, 1)
            assert other_info.value.request == "XS_WATCH" and other_info.value.path == path
            await asyncio.wait_for(c.wait_closed(), 5)
            assert c.closed and isinstance(c.error, XenstoreDeadlineError)
            assert len(lost) == 1 and isinstance(lost[0], XenstoreDeadlineError)
            with pytest.raises(XenstoreConnectionError):
                await c.read("/after")
            await xsclienthelpers.until(lambda: seen_eof)
        assert seen_eof == [True]

    run(main, loop)


def test_without_abort_a_missed_deadline_leaves_the_connection_up(sockdir):
    path = os.path.join(sockdir, "slow.sock")

    async def handler(reader, writer):
        await read_msg(reader)  # never answered
        m = await read_msg(reader)
        writer.write(answer(m, b"v"))
        await reader.read()

    async def main():
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path, request_timeout=0.2)
            with pytest.raises(XenstoreTimeoutError) as info:
                await c.read("/never")
            assert info.value.request == "XS_READ"
            assert await c.read("/next") == b"v" and not c.closed
            await c.close()

    run(main)


def test_probe_takes_any_answer_and_times_out_on_none(sockdir):
    answers = os.path.join(sockdir, "answers.sock")
    mute = os.path.join(sockdir, "mute.sock")
    seen: list[wire.Message] = []

    async def handler(reader, writer):
        m = await read_msg(reader)
        seen.append(m)
        writer.write(answer(m, b"/local/domain/0\0"))
        m = await read_msg(reader)
        seen.append(m)
        writer.write(answer(m, b"EACCES\0", wire.XS_ERROR))  # an answer all the same
        await reader.read()

    async def main():
        async with scripted(answers, handler):
            c = await XenstoreClient.connect(answers, request_timeout=1, abort_on_timeout=True)
            await c.probe()
            await c.probe()
            assert not c.closed
            await c.close()
        assert [(m.type, m.payload) for m in seen] == [(wire.XS_GET_DOMAIN_PATH, b"0\0")] * 2

        async with scripted(mute, _mute):
            c = await XenstoreClient.connect(mute, request_timeout=0.2, abort_on_timeout=True)
            with pytest.raises(XenstoreTimeoutError) as info:
                await c.probe()
            assert info.value.request == "XS_GET_DOMAIN_PATH"
            await asyncio.wait_for(c.wait_closed(), 5)
            assert isinstance(c.error, XenstoreDeadlineError)

    run(main)


def test_idle_for_counts_from_the_last_bytes_received(sockdir):
    path = os.path.join(sockdir, "idle.sock")

    async def handler(reader, writer):
        while True:
            m = await read_msg(reader)
            writer.write(answer(m, b"v"))

    async def main():
        async with scripted(path, handler):
            c = await XenstoreClient.connect(path)
            await asyncio.sleep(0.2)
            assert c.idle_for >= 0.2
            await c.read("/x")  # the reply is news from the server
            assert c.idle_for < 0.2
            await c.close()

    run(main)
