"""A client task that is cancelled stops, even when its line arrives in the same instant.

Python 3.11's `asyncio.wait_for` returns the inner call's result when the cancellation and
the completion meet, and the cancellation is lost: a `xenmux watch` stopped by its caller
would go on reading. The stream's deadlines use `asyncio.timeout`, which does not.
"""

from __future__ import annotations

import asyncio

import pytest

from mux.client.wire import NEVER, AsyncLineStream, Deadline


class _Writer:
    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


@pytest.mark.parametrize("seconds", [None, 30.0])
def test_a_cancel_that_meets_a_line_is_not_lost(seconds):
    async def main() -> None:
        reader = asyncio.StreamReader()
        stream = AsyncLineStream("/run/xenmux/test.sock", reader, _Writer())
        deadline = Deadline.after(seconds)
        task = asyncio.create_task(stream.readline(deadline))
        await asyncio.sleep(0)  # the task now waits for data
        await asyncio.sleep(0)
        reader.feed_data(b'{"event": "new", "domid": 7}\n')
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_deadline_still_ends_the_wait():
    async def main() -> None:
        reader = asyncio.StreamReader()
        stream = AsyncLineStream("/run/xenmux/test.sock", reader, _Writer())
        deadline = Deadline.after(0.05)
        assert await stream.readline(deadline) is None
        reader.feed_data(b'{"event": "new", "domid": 7}\n')
        assert await stream.readline(NEVER) == {"event": "new", "domid": 7}

    asyncio.run(main())
