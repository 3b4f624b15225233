"""Publishing to JetStream in the host's order, pipelined, with acks taken in order.

Publishes go out without waiting for each ack (up to WINDOW in flight), but never past one
whose ack is late: while the oldest unacknowledged message is older than STALL, nothing new
is sent. So when a message is lost (a server killed, a stream leader lost), everything sent
after it was sent within STALL of it; a JetStream leader election takes seconds (raft
election timeouts), so none of those can be stored by a new leader ahead of the lost one.
After any failure the caller drops the connection and resumes from what the stream holds:
the stored prefix is kept, the rest published again under the same Nats-Msg-Id.

Acks come back on one inbox subscription (`<inbox>.<n>`), as a JetStream publish with a
reply subject gets them; they are matched by `n` and parsed here, which costs a fraction
of nats-py's request-per-publish machinery (the bridge's budget is 250 us of CPU per event).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

from mux.bridge.natsconn import Connection, NatsUnavailable, pub_command

WINDOW = 1024
STALL = 0.25
ACK_TIMEOUT = 5.0
READ_GRACE = 0.05  # the least time a wait for an ack reads the socket before giving up
NO_RESPONDERS = "503"  # the status a publish gets when no stream listens on its subject


@dataclass
class Ack:
    item: Any  # what the caller sent along
    stream_seq: int
    duplicate: bool
    sent: float  # time.monotonic() when it was sent


class _Refused(Exception):
    pass


def _plain_ack(data: bytes) -> dict | None:
    """A stored-message ack, `{"stream":"S","seq":N}` (`,"duplicate":true` when dropped by
    id), read without the JSON parser (one per event); None for anything else (an error, a
    domain, another server's layout), which json.loads then reads."""
    if not data.startswith(b'{"stream":"') or not data.endswith(b"}"):
        return None
    at = data.find(b'","seq":', 11)
    if at < 0 or data.find(b'"', 11, at) >= 0:
        return None  # a stream name with an escaped quote, or more fields before seq
    tail = data[at + 8 : -1]
    seq, _, rest = tail.partition(b",")
    if not seq.isdigit():
        return None
    if not rest:
        return {"seq": int(seq)}
    if rest == b'"duplicate":true':
        return {"seq": int(seq), "duplicate": True}
    return None


class Publisher:
    def __init__(
        self, conn: Connection, window: int = WINDOW, stall: float = STALL, timeout=ACK_TIMEOUT
    ) -> None:
        self.conn = conn
        self.window = window
        self.stall = stall
        self.timeout = timeout
        # (sent, ack future, item), oldest first
        self.inflight: collections.deque[tuple[float, asyncio.Future, Any]] = collections.deque()
        self.unsent: Any = None  # the item of a send() that failed before it went out
        self._waiting: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._inbox: str | None = None
        self._sub: Any = None
        self._lost = asyncio.ensure_future(conn.lost.wait())

    async def _open(self) -> None:
        self._inbox = self.conn.nc.new_inbox()
        self._sub = await self.conn.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)

    async def _on_ack(self, msg: Any) -> None:
        fut = self._waiting.pop(int(msg.subject.rpartition(".")[2]), None)
        if fut is None or fut.done():
            return
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            fut.set_exception(_Refused("no stream answers on that subject"))
            return
        reply = _plain_ack(msg.data)
        if reply is None:
            try:
                reply = json.loads(msg.data)
            except ValueError:
                fut.set_exception(_Refused(f"an ack that is not JSON: {msg.data[:80]!r}"))
                return
        if "error" in reply:
            err = reply["error"]
            fut.set_exception(_Refused(err.get("description") or str(err)))
        else:
            fut.set_result(reply)

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
            acks.extend(await self._wait_oldest())
            acks.extend(self.take())
        if self.conn.lost.is_set():
            raise NatsUnavailable("the NATS connection was lost")
        if self._inbox is None:
            await self._open()
        n = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[n] = fut
        try:
            await self.conn.send(pub_command(subject, payload, f"{self._inbox}.{n}", headers))
        except Exception as exc:
            self._waiting.pop(n, None)
            raise NatsUnavailable(f"publish failed: {exc or type(exc).__name__}") from None
        self.inflight.append((time.monotonic(), fut, item))
        self.unsent = None
        # Its ack is taken when someone waits for one (the stall, the window, drain, the
        # bridge's keeper before a flush): till then it stays in the kernel.
        self.conn.hold_replies()
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
        # (judged only with the socket read: a held ack may be waiting in the kernel)
        late = self.inflight and time.monotonic() - self.inflight[0][0] > self.timeout
        if late and not self.conn.holding:
            raise NatsUnavailable("JetStream did not acknowledge a publish in time")
        return acks

    async def drain(self) -> list[Ack]:
        """Wait for every message in flight; their acks in order."""
        out = []
        while self.inflight:
            out.extend(await self._wait_oldest())
            out.extend(self.take())
        return out

    @property
    def pending(self) -> int:
        return len(self.inflight)

    @property
    def oldest_sent(self) -> float:
        """time.monotonic() when the oldest message in flight went out (pending > 0)."""
        return self.inflight[0][0]

    async def wait_oldest_ack(self) -> None:
        """Until the oldest message in flight (pending > 0) is acknowledged, its timeout
        passes or the connection is lost, with the socket read meanwhile: an ack may have
        waited in the kernel (held replies) past the timeout, so it is read, for at least
        READ_GRACE, before the timeout is judged."""
        sent, fut, _item = self.inflight[0]
        if fut.done():
            return
        left = max(READ_GRACE, sent + self.timeout - time.monotonic())
        with self.conn.reading():
            await asyncio.wait((fut, self._lost), timeout=left, return_when=asyncio.FIRST_COMPLETED)

    async def _wait_oldest(self) -> list[Ack]:
        """Wait for the oldest message in flight; its ack, or none when another task took
        it meanwhile (the keeper's check(): acks are taken in order either way)."""
        entry = self.inflight[0]
        fut = entry[1]
        await self.wait_oldest_ack()
        if not self.inflight or self.inflight[0] is not entry:
            return []
        if not fut.done():
            why = "the connection was lost" if self.conn.lost.is_set() else "no ack in time"
            raise NatsUnavailable(f"JetStream did not acknowledge a publish: {why}")
        ack = self._result(entry)
        self.inflight.popleft()
        return [ack]

    def _result(self, entry: tuple[float, asyncio.Future, Any]) -> Ack:
        """The ack of a finished publish; raises (leaving it in flight) when it failed."""
        sent, fut, item = entry
        exc = fut.exception()
        if exc is not None:
            raise NatsUnavailable(f"JetStream refused a publish: {exc}")
        reply = fut.result()
        return Ack(item, reply["seq"], bool(reply.get("duplicate")), sent)

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
        self._waiting.clear()
        self._lost.cancel()
        # The inbox subscription ends with the connection, which every session closes.
        return items
