"""The client library: talk to `xenmux serve` over its Unix socket, sync or async.

    from mux.client import Subscription
    with Subscription([12]) as sub:          # or: async with AsyncSubscription([12]) as sub
        for event in sub:                     #     async for event in sub
            if event["event"] == "death":
                break

A subscription survives the daemon: on a lost connection (or an `overflow` frame) it
reconnects with backoff capped at 1 s, resubscribes, and compares the new snapshot with what
it knew. A domain that died meanwhile (absent now, or carrying another UUID) is reported as
a `death` with `"missed": true`, so no death is ever lost; none is reported twice.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import select
import socket
import time
from collections.abc import AsyncIterator, Iterable, Iterator

from mux.protocol import (
    DEAD,
    DEATH,
    NEW,
    OP_HELLO,
    OP_LIST,
    OP_PING,
    OP_RESCAN,
    OP_STATS,
    OP_SUBSCRIBE,
    OVERFLOW,
    RELEASED,
    RESUMED,
    RUNNING,
    SHUTDOWN,
    SOCKET_ENV,
    default_socket,
)

MAX_REPLY = 64 * 1024 * 1024  # a `list` or a wildcard snapshot of 32,000 domains is large
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0


class XenmuxError(Exception):
    """The daemon answered a request with an error, or cannot be reached."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class Unreachable(XenmuxError, ConnectionError):
    pass


def _encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _check(reply: dict) -> dict:
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise XenmuxError(err.get("message", "request failed"), err.get("code"))
    return reply


class _Tracker:
    """What a subscriber knows of each watched domain; turns a fresh snapshot into the events
    it missed while away. Shared by the sync and async subscriptions."""

    def __init__(self, domids: Iterable[int] | None, events: Iterable[str] | None) -> None:
        self.domids = None if domids is None else list(dict.fromkeys(domids))
        self.kinds = None if events is None else set(events)
        # domid -> (uuid, state, reason) as last known; state in running/shutdown/dead
        self.known: dict[int, tuple[str, str, str | None]] = {}
        self.instance: str | None = None
        self.seq = 0

    def request(self) -> dict:
        req = {"op": OP_SUBSCRIBE, "domids": "*" if self.domids is None else self.domids}
        if self.kinds is not None:
            # death and new are always needed to keep `known` right; others are filtered here.
            req["events"] = sorted(self.kinds | {NEW, DEATH, RELEASED})
        return req

    def first_snapshot(self, reply: dict) -> None:
        for row in reply["snapshot"]:
            self.known[row["domid"]] = (row["uuid"], row["state"], row.get("reason"))
        self.seq = reply["seq"]

    def resync(self, reply: dict) -> list[dict]:
        """Events missed between the old connection and this snapshot."""
        now = time.time()
        rows = {row["domid"]: row for row in reply["snapshot"]}
        missed: list[dict] = []

        def ev(kind: str, domid: int, uuid: str, **extra) -> None:
            missed.append(
                {"event": kind, "domid": domid, "uuid": uuid, "time": now, "missed": True, **extra}
            )

        for domid, (uuid, state, _reason) in sorted(self.known.items()):
            row = rows.get(domid)
            if row is not None and row["uuid"] == uuid:
                if row["state"] == state:
                    continue
                if row["state"] == DEAD:
                    ev(DEATH, domid, uuid, **_reason_of(row))
                elif row["state"] == SHUTDOWN:
                    ev(SHUTDOWN, domid, uuid, **_reason_of(row))
                elif state == SHUTDOWN:
                    ev(RESUMED, domid, uuid)
                continue
            # Gone, or another incarnation: this one died while we were away.
            if state != DEAD:
                ev(DEATH, domid, uuid)
            ev(RELEASED, domid, uuid)
        for domid, row in sorted(rows.items()):
            old = self.known.get(domid)
            if old is not None and old[0] == row["uuid"]:
                continue
            ev(NEW, domid, row["uuid"], **({"name": row["name"]} if row.get("name") else {}))
            if row["state"] in (SHUTDOWN, DEAD) and row.get("reason"):
                ev(SHUTDOWN, domid, row["uuid"], reason=row["reason"])
            if row["state"] == DEAD:
                ev(DEATH, domid, row["uuid"], **_reason_of(row))
        self.known = {d: (r["uuid"], r["state"], r.get("reason")) for d, r in rows.items()}
        self.seq = reply["seq"]
        return [e for e in missed if self.wanted(e)]

    def track(self, event: dict) -> None:
        kind = event["event"]
        domid = event["domid"]
        if kind == NEW:
            self.known[domid] = (event["uuid"], RUNNING, None)
        elif kind == SHUTDOWN:
            self.known[domid] = (event["uuid"], SHUTDOWN, event.get("reason"))
        elif kind == RESUMED:
            self.known[domid] = (event["uuid"], RUNNING, None)
        elif kind == DEATH:
            self.known[domid] = (event["uuid"], DEAD, event.get("reason"))
        elif kind == RELEASED:
            self.known.pop(domid, None)
        self.seq = event.get("seq", self.seq)

    def wanted(self, event: dict) -> bool:
        return self.kinds is None or event["event"] in self.kinds


def _reason_of(row: dict) -> dict:
    return {"reason": row["reason"]} if row.get("reason") else {}


# -- synchronous -------------------------------------------------------------------------


class _LineSocket:
    def __init__(self, path: str, timeout: float | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise Unreachable(
                f"cannot reach the xenmux daemon at {path} ({exc.strerror or exc}); "
                f"is `xenmux serve` running? (--socket or ${SOCKET_ENV} choose another)"
            ) from None
        self.buf = bytearray()
        self.ids = itertools.count(1)
        self.backlog: list[dict] = []  # event frames that arrived while awaiting a reply

    def readline(self, deadline: float | None = None) -> dict | None:
        """The next JSON line; None at the deadline. Raises Unreachable when closed."""
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                return json.loads(line)
            if len(self.buf) > MAX_REPLY:
                raise XenmuxError("the daemon sent a line over 64 MiB")
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                ready, _, _ = select.select([self.sock], [], [], left)
                if not ready:
                    return None
            try:
                data = self.sock.recv(1 << 20)
            except OSError as exc:
                raise Unreachable(f"lost the xenmux daemon: {exc}") from None
            if not data:
                raise Unreachable("the xenmux daemon closed the connection")
            self.buf += data

    def call(self, op: str, **fields) -> dict:
        req_id = next(self.ids)
        try:
            self.sock.sendall(_encode({"op": op, "id": req_id, **fields}))
        except OSError as exc:
            raise Unreachable(f"lost the xenmux daemon: {exc}") from None
        while True:
            msg = self.readline()
            if msg.get("id") == req_id and "ok" in msg:
                return _check(msg)
            if "event" in msg:
                self.backlog.append(msg)

    def close(self) -> None:
        self.sock.close()


class Client:
    """Request/reply calls: `Client().call("list")`, `.list()`, `.stats()`, `.rescan()`."""

    def __init__(self, socket_path: str | None = None, timeout: float | None = 10.0) -> None:
        self.path = socket_path or default_socket()
        self.conn = _LineSocket(self.path, timeout)

    def call(self, op: str, **fields) -> dict:
        return self.conn.call(op, **fields)

    def hello(self) -> dict:
        return self.call(OP_HELLO)

    def list(self) -> list[dict]:
        return self.call(OP_LIST)["domains"]

    def stats(self) -> dict:
        return self.call(OP_STATS)["stats"]

    def rescan(self) -> dict:
        return self.call(OP_RESCAN)

    def ping(self) -> None:
        self.call(OP_PING)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _SubscriptionCore:
    """What the sync and async subscriptions share: the tracker, the queue of events due,
    and what a (re)subscribe reply means. Only their I/O differs."""

    def __init__(
        self,
        domids: Iterable[int] | None,
        events: Iterable[str] | None,
        socket_path: str | None,
        retry_timeout: float | None,
    ) -> None:
        self.path = socket_path or default_socket()
        self.retry_timeout = retry_timeout
        self.tracker = _Tracker(domids, events)
        self.snapshot: list[dict] = []
        self.absent: list[int] = []
        self.hello: dict = {}
        self._queue: collections.deque[dict] = collections.deque()

    def _accept(self, hello: dict, reply: dict, first: bool, backlog: list[dict]) -> None:
        self.hello = hello
        self.snapshot = reply["snapshot"]
        self.absent = reply["absent"]
        if first:
            self.tracker.first_snapshot(reply)
        else:
            self._queue.extend(self.tracker.resync(reply))
        self._queue.extend(backlog)

    def _next_queued(self) -> dict | None:
        """The next event due to the caller, or None when the queue is empty.
        Raises _Resubscribe at an overflow frame."""
        while self._queue:
            event = self._queue.popleft()
            if event.get("event") == OVERFLOW:
                self._queue.clear()  # the daemon closes after it: nothing follows
                raise _Resubscribe
            if not event.get("missed"):
                self.tracker.track(event)
            if self.tracker.wanted(event):
                return event
        return None


class _Resubscribe(Exception):
    pass


class Subscription(_SubscriptionCore):
    """Events for some domids (None: all), surviving daemon restarts. Iterate for events;
    `next_event(timeout)` returns None when nothing came in time."""

    def __init__(
        self,
        domids: Iterable[int] | None = None,
        *,
        events: Iterable[str] | None = None,
        socket_path: str | None = None,
        retry_timeout: float | None = None,
    ) -> None:
        super().__init__(domids, events, socket_path, retry_timeout)
        self.conn: _LineSocket | None = None
        self._connect(first=True)

    def _connect(self, first: bool) -> None:
        deadline = None if self.retry_timeout is None else time.monotonic() + self.retry_timeout
        delay = BACKOFF_MIN
        while True:
            conn = None
            try:
                conn = _LineSocket(self.path, None)
                hello = conn.call(OP_HELLO)
                reply = conn.call(OP_SUBSCRIBE, **_args(self.tracker.request()))
                break
            except Unreachable:
                if conn is not None:
                    conn.close()
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        self.conn = conn
        self._accept(hello, reply, first, conn.backlog)
        conn.backlog.clear()

    def next_event(self, timeout: float | None = None) -> dict | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                event = self._next_queued()
            except _Resubscribe:
                self._reconnect()
                continue
            if event is not None:
                return event
            assert self.conn is not None
            try:
                msg = self.conn.readline(deadline)
            except Unreachable:
                self._reconnect()
                continue
            if msg is None:
                return None
            if "event" in msg:
                self._queue.append(msg)

    def _reconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self._connect(first=False)

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.next_event()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _args(req: dict) -> dict:
    return {k: v for k, v in req.items() if k != "op"}


# -- asyncio -----------------------------------------------------------------------------


class AsyncSubscription(_SubscriptionCore):
    """The asyncio twin of Subscription: `async with AsyncSubscription([7]) as sub:` then
    `async for event in sub` or `await sub.next_event(timeout)`."""

    def __init__(
        self,
        domids: Iterable[int] | None = None,
        *,
        events: Iterable[str] | None = None,
        socket_path: str | None = None,
        retry_timeout: float | None = None,
    ) -> None:
        super().__init__(domids, events, socket_path, retry_timeout)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._backlog: list[dict] = []

    async def __aenter__(self) -> AsyncSubscription:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self, first: bool = True) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if self.retry_timeout is None else loop.time() + self.retry_timeout
        delay = BACKOFF_MIN
        while True:
            try:
                self.reader, self.writer = await asyncio.open_unix_connection(
                    self.path, limit=MAX_REPLY
                )
                hello = await self._call(OP_HELLO)
                reply = await self._call(OP_SUBSCRIBE, **_args(self.tracker.request()))
                break
            except (OSError, Unreachable) as exc:
                await self._drop()
                if deadline is not None and loop.time() + delay > deadline:
                    raise Unreachable(
                        f"cannot reach the xenmux daemon at {self.path}: {exc}"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        self._accept(hello, reply, first, self._backlog)
        self._backlog = []

    async def _readline(self) -> dict:
        assert self.reader is not None
        line = await self.reader.readline()
        if not line:
            raise Unreachable("the xenmux daemon closed the connection")
        return json.loads(line)

    async def _call(self, op: str, **fields) -> dict:
        assert self.writer is not None
        req_id = next(self._ids)
        self.writer.write(_encode({"op": op, "id": req_id, **fields}))
        while True:
            msg = await self._readline()
            if msg.get("id") == req_id and "ok" in msg:
                return _check(msg)
            if "event" in msg:
                self._backlog.append(msg)

    async def next_event(self, timeout: float | None = None) -> dict | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                event = self._next_queued()
            except _Resubscribe:
                await self._reconnect()
                continue
            if event is not None:
                return event
            try:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                msg = await asyncio.wait_for(self._readline(), left)
            except TimeoutError:
                return None
            except (OSError, Unreachable, ValueError):
                await self._reconnect()
                continue
            if "event" in msg:
                self._queue.append(msg)

    async def _reconnect(self) -> None:
        await self._drop()
        await self.connect(first=False)

    async def _drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    def __aiter__(self) -> AsyncIterator[dict]:
        return self

    async def __anext__(self) -> dict:
        event = await self.next_event()
        assert event is not None
        return event

    async def close(self) -> None:
        await self._drop()
