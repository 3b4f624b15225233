"""The asyncio client: `AsyncClient` and `AsyncSubscription`, twins of the blocking ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from mux.client.errors import XenmuxError
from mux.client.events import Event
from mux.client.session import (
    Action,
    Done,
    Drop,
    Open,
    Read,
    Request,
    Sleep,
    Steps,
    SubscriptionCore,
    resume,
)
from mux.client.wire import AsyncLineStream, Deadline, check
from mux.protocol import OP_HELLO, OP_LIST, OP_PING, OP_RESCAN, OP_STATS, default_socket


class AsyncClient:
    """`async with AsyncClient(path) as c: await c.stats()`; `timeout` as for Client."""

    def __init__(self, socket_path: str | None = None, timeout: float | None = 10.0) -> None:
        self.path = socket_path or default_socket()
        self.timeout = timeout
        self.conn: AsyncLineStream | None = None

    async def connect(self) -> AsyncClient:
        self.conn = await AsyncLineStream.open(self.path, Deadline.after(self.timeout))
        return self

    async def call(self, op: str, **fields) -> dict:
        if self.conn is None:
            await self.connect()
        assert self.conn is not None
        return check(await self.conn.request(op, fields, Deadline.after(self.timeout)))

    async def hello(self) -> dict:
        return await self.call(OP_HELLO)

    async def list(self) -> list[dict]:
        return (await self.call(OP_LIST))["domains"]

    async def stats(self) -> dict:
        return (await self.call(OP_STATS))["stats"]

    async def rescan(self) -> dict:
        return await self.call(OP_RESCAN)

    async def ping(self) -> None:
        await self.call(OP_PING)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()


class AsyncSubscription(SubscriptionCore):
    """The asyncio twin of Subscription (same arguments and attributes): `async with
    AsyncSubscription([7]) as sub:` then `async for event in sub` or
    `await sub.next_event(timeout)`."""

    conn: AsyncLineStream | None

    async def __aenter__(self) -> AsyncSubscription:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and subscribe (what `async with` does)."""
        await self._run(self.connecting())

    async def next_event(self, timeout: float | None = None) -> Event | None:
        return await self._run(self.next_steps(timeout))

    async def _run(self, steps: Steps):
        """Perform the actions `steps` yields until it returns."""
        action = resume(steps)
        while not isinstance(action, Done):
            try:
                result = await self._perform(action)
            except XenmuxError as exc:
                action = resume(steps, error=exc)
            else:
                action = resume(steps, result)
        return action.value

    async def _perform(self, action: Action):
        match action:
            case Open(deadline):
                self.conn = await AsyncLineStream.open(self.path, deadline)
                return self.conn
            case Request(op, fields, deadline):
                assert self.conn is not None
                return await self.conn.request(op, fields, deadline)
            case Read(deadline):
                assert self.conn is not None
                return await self.conn.readline(deadline)
            case Sleep(seconds):
                await asyncio.sleep(seconds)
            case Drop():
                await self.close()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            event = await self.next_event()
            if event is not None:
                return event

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        self.conn = None
