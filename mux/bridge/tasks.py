"""Stopping asyncio tasks for sure.

One `task.cancel()` is not always enough on Python 3.11: `asyncio.wait_for` (which nats-py's
`next_msg` runs inside) returns its inner result when the cancellation arrives just as that
result does, and the cancellation is lost; the task then runs on, and a caller awaiting it
waits for ever. So a task still running after `patience` is cancelled again; the patience
lets a task that did take the cancel finish its clean-up (which a second cancel would cut).
"""

from __future__ import annotations

import asyncio


async def cancel(*tasks: asyncio.Future, patience: float = 1.0) -> None:
    """Cancel `tasks` and wait until every one is done; their errors are dropped."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=patience)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
