"""Small asyncio helpers shared by the daemon's parts."""

from __future__ import annotations

import asyncio
import collections
import contextlib


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel a task and wait until it has finished unwinding."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class ScanLock:
    """A FIFO asyncio lock (`async with`) that can also be taken without awaiting.

    The scan loop scans in the xenstore reading callback when no scan holds the lock
    (`try_acquire`), and in its task otherwise; both must exclude each other and every
    `async with` holder (subscribe's snapshot), which asyncio.Lock cannot offer to code
    that is not a coroutine. The lock is handed to the first waiter on release, so a
    `try_acquire` never overtakes a coroutine already waiting."""

    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def locked(self) -> bool:
        return self._locked

    def try_acquire(self) -> bool:
        """Take the lock if it is free and nobody waits for it; never waits."""
        if self._locked:
            return False
        while self._waiters and self._waiters[0].done():  # cancelled waiters
            self._waiters.popleft()
        if self._waiters:
            return False
        self._locked = True
        return True

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed the lock, then cancelled
                self.release()
            raise

    def release(self) -> None:
        """Hand the lock to the first live waiter, or free it."""
        if not self._locked:
            raise RuntimeError("ScanLock released while not held")
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # it holds the lock from here
                return
        self._locked = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
