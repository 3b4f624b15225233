"""Stopping asyncio tasks for sure.

One `task.cancel()` is not always enough on Python 3.11: `asyncio.wait_for` (which nats-py's
`next_msg` runs inside) returns its inner result when the cancellation arrives just as that
result does, and the cancellation is lost; the task then runs on, and a caller awaiting it
waits for ever. So the cancel is repeated until the task is done.
"""

from __future__ import annotations

import asyncio

RETRY = 0.05  # seconds between cancels of a task that swallowed one


async def cancel(*tasks: asyncio.Future) -> None:
    """Cancel `tasks` and wait until every one is done; their errors are dropped."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RETRY)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
