"""Publishing to JetStream in the host's order, pipelined, with acks taken in order.

Publishes go out without waiting for each ack (up to WINDOW in flight), but never past one
whose ack is late: while the oldest unacknowledged message is older than STALL, nothing new
is sent. So when a message is lost (a server killed, a stream leader lost), everything sent
after it was sent within STALL of it; a JetStream leader election takes seconds (raft
election timeouts), so none of those can be stored by a new leader ahead of the lost one.
After any failure the caller drops the connection and resumes from what the stream holds:
the stored prefix is kept, the rest published again under the same Nats-Msg-Id.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Any

from mux.bridge.natsconn import Connection, NatsUnavailable

WINDOW = 1024
STALL = 0.25
ACK_TIMEOUT = 5.0


@dataclass
class Ack:
    item: Any  # what the caller sent along
    stream_seq: int
    duplicate: bool
    sent: float  # time.monotonic() when it was sent


class Publisher:
    def __init__(
        self, conn: Connection, window: int = WINDOW, stall: float = STALL, timeout=ACK_TIMEOUT
    ) -> None:
        self.conn = conn
        self.window = window
        self.stall = stall
        self.timeout = timeout
        self.inflight: collections.deque[tuple[float, asyncio.Future, Any]] = collections.deque()
        self.unsent: Any = None  # the item of a send() that failed before it went out
        self._lost = asyncio.ensure_future(conn.lost.wait())

    async def send(
        self, subject: str, payload: bytes, headers: dict | None = None, item: Any = None
    ) -> list[Ack]:
        """Publish one message; returns the acks that came in meanwhile, in order. When this
        raises, the message is not sent, and close() still returns its item."""
        self.unsent = item
        acks = self.take()
        while self.inflight and (
            len(self.inflight) >= self.window or time.monotonic() - self.inflight[0][0] > self.stall
        ):
            acks.append(await self._wait_oldest())
            acks.extend(self.take())
        if self.conn.lost.is_set():
            raise NatsUnavailable("the NATS connection was lost")
        try:
            fut = await self.conn.js.publish_async(subject, payload, headers=headers)
        except Exception as exc:
            raise NatsUnavailable(f"publish failed: {exc or type(exc).__name__}") from None
        self.inflight.append((time.monotonic(), fut, item))
        self.unsent = None
        return acks

    def take(self) -> list[Ack]:
        """The acks that have arrived, oldest first, up to the first one still pending."""
        out = []
        while self.inflight and self.inflight[0][1].done():
            out.append(self._result(self.inflight[0]))
            self.inflight.popleft()
        return out

    def check(self) -> list[Ack]:
        """The acks that have arrived; raises NatsUnavailable when the connection is lost or
        the oldest message in flight waited past the ack timeout."""
        acks = self.take()
        if self.conn.lost.is_set():
            raise NatsUnavailable("the NATS connection was lost")
        if self.inflight and time.monotonic() - self.inflight[0][0] > self.timeout:
            raise NatsUnavailable("JetStream did not acknowledge a publish in time")
        return acks

    async def drain(self) -> list[Ack]:
        """Wait for every message in flight; their acks in order."""
        out = []
        while self.inflight:
            out.append(await self._wait_oldest())
            out.extend(self.take())
        return out

    @property
    def pending(self) -> int:
        return len(self.inflight)

    async def _wait_oldest(self) -> Ack:
        sent, fut, _item = self.inflight[0]
        left = sent + self.timeout - time.monotonic()
        if not fut.done() and left > 0:
            await asyncio.wait((fut, self._lost), timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if not fut.done():
            why = "the connection was lost" if self.conn.lost.is_set() else "no ack in time"
            raise NatsUnavailable(f"JetStream did not acknowledge a publish: {why}")
        ack = self._result(self.inflight[0])
        self.inflight.popleft()
        return ack

    def _result(self, entry: tuple[float, asyncio.Future, Any]) -> Ack:
        """The ack of a finished publish; raises (leaving it in flight) when it failed."""
        sent, fut, item = entry
        exc = fut.exception()
        if exc is not None:
            raise NatsUnavailable(f"JetStream refused a publish: {exc or type(exc).__name__}")
        ack = fut.result()
        return Ack(item, ack.seq, bool(ack.duplicate), sent)

    def close(self) -> list[Any]:
        """Stop waiting for what is in flight (the connection is gone or going); returns
        those messages' items, oldest first (JetStream may or may not hold them), and the
        item of a send that failed before it went out."""
        items = [item for _sent, _fut, item in self.inflight]
        if self.unsent is not None:
            items.append(self.unsent)
            self.unsent = None
        for _sent, fut, _item in self.inflight:
            if fut.done() and not fut.cancelled():
                fut.exception()  # seen: asyncio would log it as never retrieved
            fut.cancel()
        self.inflight.clear()
        self._lost.cancel()
        return items
