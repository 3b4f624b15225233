"""Reading the pool: the stream followed through server restarts, the table exactly as of now.

`follow()` yields the stream's messages in order from a start position and survives a NATS
restart or a lost connection: it resumes after the last stream sequence it yielded (a
durable consumer resumes from its acknowledgements, and anything at or below what was
yielded is skipped). `load_pool()` is the table: the bucket's rows of each host, brought up
to date with that host's stream messages after its checkpoint.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mux.bridge import names, tasks, view
from mux.bridge.natsconn import (
    CONNECT_TIMEOUT,
    NatsOptions,
    NatsRejected,
    NatsUnavailable,
    connect,
)
from mux.bridge.position import parse_event, replay_tail, split_bucket
from mux.bridge.store import read_bucket

FETCH_BATCH = 256
IDLE = 1.0  # how long one wait for messages lasts before the connection is checked
BACKOFF_MAX = 2.0
LINGER_MARGIN = 0.25
# How long the server waits before it redelivers what a durable fetched and did not
# acknowledge. A clean stop gives those back (nak) at once; a reader SIGKILLed, or cut off by
# a server restart, cannot, and the server's default (30 s) was a 30 s hole in the output.
# Each message is acknowledged as soon as it is printed, so 5 s is long; a redelivery of one
# printed meanwhile is recognised by its sequence and only acknowledged.
ACK_WAIT = 5.0


@dataclass
class Message:
    stream_seq: int
    subject: str
    event: dict  # the payload: the daemon's event plus "host"
    host: str  # the host's subject token
    nats_msg: Any = None  # from a durable consumer: acknowledged by done()

    async def done(self) -> None:
        """The reader has it (printed it): a durable consumer moves past it for good."""
        if self.nats_msg is not None:
            msg, self.nats_msg = self.nats_msg, None
            await msg.ack()


@dataclass
class Start:
    """Where a follower starts: "new" (only what comes next), "all", a stream sequence or a
    time."""

    kind: str = "new"
    seq: int = 0
    time: float = 0.0


class Follower:
    def __init__(
        self,
        opts: NatsOptions,
        stream: str,
        subject: str,
        start: Start,
        durable: str | None = None,
        name: str = "xenmux pool",
    ) -> None:
        self.opts = opts
        self.stream = stream
        self.subject = subject
        self.start = start
        self.durable = durable
        self.name = name
        self.last = 0  # the stream sequence of the last message yielded
        # Set by Inbox.close before it cancels: a cancel lost on the way (mux/bridge/tasks.py)
        # still ends the session at its next message, its clean-up done.
        self.stopping = False

    async def messages(self) -> AsyncIterator[Message]:
        """Every message from the start, in stream order, for ever. Raises NatsRejected."""
        from nats.js.errors import NotFoundError

        delay = 0.05
        outage = False
        while not self.stopping:
            try:
                conn = await connect(self.opts, self.name)
            except NatsUnavailable as exc:
                outage = _say_once(outage, str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = 0.05
            try:
                async for msg in self._session(conn):
                    if outage:
                        outage = False
                        print(
                            f"xenmux pool: NATS reachable again at {conn.server}", file=sys.stderr
                        )
                    yield msg
            except NatsUnavailable as exc:
                outage = _say_once(outage, f"lost NATS: {exc}")
            except NatsRejected:
                raise
            except NotFoundError:
                outage = _say_once(
                    outage, f"stream {self.stream} does not exist (yet: a bridge makes it)"
                )
                await asyncio.sleep(IDLE)
            except Exception as exc:
                if not self.stopping:
                    outage = _say_once(outage, f"lost NATS: {str(exc) or type(exc).__name__}")
            finally:
                await conn.close()

    async def _session(self, conn) -> AsyncIterator[Message]:
        from nats.errors import TimeoutError as NatsTimeout

        sub = await self._subscribe(conn)
        # A durable's messages handed over and not yet done, and those of its batch not yet
        # handed over: given back (nak) when the session ends, so that the next reader gets
        # them at once instead of after the server's ack wait (ACK_WAIT).
        undone: collections.deque[Message] = collections.deque()
        batch: list = []
        # Until when the server may still hold the last fetch's pull request: a message given
        # back before then would be delivered to it, to nobody, and come back after the ack
        # wait. A request that got its whole batch is over.
        lingers_until = 0.0
        try:
            while not self.stopping:
                if conn.lost.is_set():
                    raise NatsUnavailable("the connection was lost")
                if self.durable:
                    # (the server counts the request's expiry from when it gets it: a margin)
                    lingers_until = time.monotonic() + IDLE + LINGER_MARGIN
                    try:
                        batch = await sub.fetch(FETCH_BATCH, timeout=IDLE)
                    except NatsTimeout:
                        continue
                    if len(batch) == FETCH_BATCH:
                        lingers_until = 0.0
                else:
                    try:
                        batch = [await sub.next_msg(timeout=IDLE)]
                    except NatsTimeout:
                        continue
                while batch and not self.stopping:
                    msg = batch.pop(0)
                    seq = msg.metadata.sequence.stream
                    parsed = _message(seq, msg.subject, msg.data) if seq > self.last else None
                    if parsed is None:
                        if self.durable:  # seen before (a redelivery), or not an event
                            await msg.ack()
                        continue
                    self.last = seq
                    if self.durable:
                        parsed.nats_msg = msg
                        while undone and undone[0].nats_msg is None:  # done in order
                            undone.popleft()
                        undone.append(parsed)
                    yield parsed
        finally:
            back = [m.nats_msg for m in undone if m.nats_msg is not None] + batch
            if self.durable and back and not conn.lost.is_set():
                with contextlib.suppress(Exception):
                    await asyncio.sleep(max(0.0, lingers_until - time.monotonic()))
                    for msg in back:
                        await msg.nak()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _policy(self) -> dict:
        from nats.js.api import DeliverPolicy

        if self.last:
            return {
                "deliver_policy": DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": self.last + 1,
            }
        if self.start.kind == "seq":
            return {
                "deliver_policy": DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": self.start.seq,
            }
        if self.start.kind == "time":
            when = datetime.fromtimestamp(self.start.time, UTC).isoformat().replace("+00:00", "Z")
            return {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": when}
        if self.start.kind == "all":
            return {"deliver_policy": DeliverPolicy.ALL}
        return {"deliver_policy": DeliverPolicy.NEW}

    async def _subscribe(self, conn):
        from nats.js.api import AckPolicy, ConsumerConfig

        if self.durable:
            # A durable keeps its place on the server; where it starts counts only the
            # first time it is made.
            config = ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, **self._policy()
            )
            return await conn.js.pull_subscribe(
                self.subject, durable=self.durable, stream=self.stream, config=config
            )
        policy = self._policy()
        config = ConsumerConfig(**{k: v for k, v in policy.items() if k != "deliver_policy"})
        return await conn.js.subscribe(
            self.subject,
            stream=self.stream,
            ordered_consumer=True,
            deliver_policy=policy["deliver_policy"],
            config=config,
            idle_heartbeat=IDLE,
        )


class Inbox:
    """A follower run in the background, read with a timeout: `await inbox.get(5)`."""

    def __init__(self, follower: Follower) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=FETCH_BATCH * 4)
        self.follower = follower
        self.task = asyncio.ensure_future(self._pump(follower))

    async def _pump(self, follower: Follower) -> None:
        # Closed here, when cancelled, while its connection is still there to close: left to
        # the loop's shutdown it would close a connection whose tasks are already gone.
        async with contextlib.aclosing(follower.messages()) as messages:
            async for msg in messages:
                await self.queue.put(msg)

    async def get(self, timeout: float | None) -> Message | None:
        """The next message, or None after `timeout`. Raises what ended the follower."""
        if not self.queue.empty():
            return self.queue.get_nowait()
        get = asyncio.ensure_future(self.queue.get())
        done, _ = await asyncio.wait(
            (get, self.task), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if get in done:
            return get.result()
        get.cancel()
        if self.task in done:
            self.task.result()
        return None

    async def close(self) -> None:
        self.follower.stopping = True
        # The patience covers a durable's clean-up: the last pull request's lapse, the naks.
        await tasks.cancel(self.task, patience=IDLE + 2 * CONNECT_TIMEOUT)


def _say_once(already: bool, line: str) -> bool:
    if not already:
        print(f"xenmux pool: {line}; retrying", file=sys.stderr, flush=True)
    return True


def _message(seq: int, subject: str, payload: bytes) -> Message | None:
    parsed = names.parse_subject(subject)
    event = parse_event(payload)
    if parsed is None or event is None:
        return None
    return Message(seq, subject, event, parsed[0])


# -- the table ---------------------------------------------------------------------------


@dataclass
class PoolTable:
    hosts: dict[str, dict[int, dict]] = field(default_factory=dict)  # token -> domid -> row
    applied: dict[str, int] = field(default_factory=dict)  # token -> last stream seq applied
    stream_last: int = 0  # the stream's last sequence before the table was read

    def apply(self, msg: Message) -> bool:
        """Apply a followed message unless the host's rows already went past it."""
        if msg.stream_seq <= self.applied.get(msg.host, 0):
            return False
        self.applied[msg.host] = msg.stream_seq
        rows = self.hosts.setdefault(msg.host, {})
        name = msg.event.get("host") or names.decode_host(msg.host)
        return view.apply(rows, name, msg.event)

    def rows(self) -> list[dict]:
        return [row for rows in self.hosts.values() for row in rows.values()]


async def load_pool(conn, stream: str, bucket: str) -> PoolTable:
    """The pool's table now: every host's rows and checkpoint from the bucket, each host
    brought up to date with its stream messages after the checkpoint."""
    from nats.js.errors import NotFoundError

    table = PoolTable()
    try:
        info = await conn.js.stream_info(stream)
        table.stream_last = info.state.last_seq
    except NotFoundError:
        table.stream_last = 0
    table.hosts, checkpoints = split_bucket(await read_bucket(conn.js, bucket))
    for host, checkpoint in checkpoints.items():
        after = int(checkpoint.get("stream_seq") or 0)
        table.applied[host] = after
        if table.stream_last:
            last = await replay_tail(conn, stream, host, after, table.hosts.setdefault(host, {}))
            if last is not None:
                table.applied[host] = last[2]
    for host in table.hosts:
        table.applied.setdefault(host, table.stream_last)
    return table


def parse_since(text: str, now: float | None = None) -> Start:
    """`--since`: a stream sequence (digits), an ISO 8601 time, or a duration ago (90s, 15m,
    2h, 1d). Raises ValueError."""
    text = text.strip()
    if text.isdigit():
        return Start("seq", seq=max(1, int(text)))
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) > 1 and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return Start("time", time=(now or time.time()) - float(text[:-1]) * units[text[-1]])
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a stream sequence (123), a time (2025-01-31T10:00:00Z) "
            "or how long ago (15m, 2h, 1d)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()
    return Start("time", time=when.timestamp())
