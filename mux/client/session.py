"""What the sync and async subscriptions share: everything but the I/O itself.

A subscription's work is written once, as generators that yield I/O actions (`Open`,
`Request`, `Read`, `Sleep`, `Drop`) and are sent each action's result (or have its
XenmuxError thrown in). `Subscription` performs the actions with blocking calls,
`AsyncSubscription` with awaits; neither holds any protocol logic of its own, so the two
cannot drift apart.

- `connecting`: one (re)connection: hello, subscribe with the cursor, a refused cursor,
  the baseline after a caller's cursor, and the retry policy while the daemon cannot be
  reached (`Outage`: backoff capped at 1 s, the retry budget, one notice per outage).
- `next_steps`: the next event due to the caller, reconnecting as needed.
- the queue of events due to the caller and the cursor of the last one delivered.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

from mux.client.cursor import Cursor
from mux.client.errors import Unreachable, XenmuxError
from mux.client.events import Event
from mux.client.tracker import Tracker
from mux.client.wire import NEVER, Deadline, check
from mux.protocol import (
    ERR_BAD_CURSOR,
    ERR_TOO_MANY_CLIENTS,
    ERR_TOO_MANY_CONNECTIONS,
    OP_HELLO,
    OP_LIST,
    OP_SUBSCRIBE,
    OVERFLOW,
    default_socket,
)

log = logging.getLogger("mux.client")

BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
REQUEST_TIMEOUT = 10.0  # how long a daemon may take to answer hello or subscribe

# Refusals that last only while the daemon is full: retried like an unreachable daemon.
TRANSIENT_CODES = frozenset({ERR_TOO_MANY_CLIENTS, ERR_TOO_MANY_CONNECTIONS})

OnRetry = Callable[[XenmuxError], None]


def log_retry(exc: XenmuxError) -> None:
    """The default notice: one warning per outage (Python prints it on stderr when
    logging is not configured), so that a wrong socket never waits in silence."""
    log.warning("%s; retrying until it answers", exc)


def retryable(exc: XenmuxError) -> bool:
    return isinstance(exc, Unreachable) or exc.code in TRANSIENT_CODES


@dataclass(frozen=True)
class Open:
    """Connect; the result is the connection (its `backlog` holds early event frames)."""

    deadline: Deadline


@dataclass(frozen=True)
class Request:
    """Send a request; the result is its reply, ok or not."""

    op: str
    fields: dict
    deadline: Deadline


@dataclass(frozen=True)
class Read:
    """The next line from the daemon; None once the deadline has passed."""

    deadline: Deadline


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Drop:
    """Close the connection, if there is one."""


Action = Open | Request | Read | Sleep | Drop
Steps = Generator[Action, Any, Any]


@dataclass(frozen=True)
class Done:
    value: Any


def resume(steps: Steps, result: Any = None, error: XenmuxError | None = None) -> Action | Done:
    """Hand the last action's result (or its error) to `steps`: its next action, or Done."""
    try:
        return steps.send(result) if error is None else steps.throw(error)
    except StopIteration as stop:
        return Done(stop.value)


@dataclass
class Handshake:
    hello: dict
    reply: dict  # the subscribe reply
    listing: dict | None  # the `list` reply taken after resuming from a caller's cursor


class Outage:
    """One spell of not reaching the daemon: how long to wait before the next try."""

    def __init__(self, retry_timeout: float | None, on_retry: OnRetry) -> None:
        self.deadline = Deadline.after(retry_timeout)
        self.delay = BACKOFF_MIN
        self.on_retry = on_retry
        self.told = False

    def failed(self, exc: XenmuxError) -> float:
        """The pause before the next try; raises `exc` once the retry budget is spent."""
        left = self.deadline.left()
        if left is not None and left <= self.delay:
            raise exc
        if not self.told:
            self.told = True
            self.on_retry(exc)
        delay, self.delay = self.delay, min(self.delay * 2, BACKOFF_MAX)
        return delay


@dataclass
class _Due:
    """An entry of the queue: an event for the caller (None: nothing to deliver), and the
    cursor that is current once the caller has it."""

    event: dict | None
    history: str | None
    seq: int | None


class _Resubscribe(Exception):
    """An overflow frame: the daemon cut us off and closes; reconnect at once."""


class SubscriptionCore:
    """The arguments and attributes of both subscriptions (see Subscription)."""

    def __init__(
        self,
        domids: Iterable[int] | None = None,
        *,
        events: Iterable[str] | None = None,
        socket_path: str | None = None,
        retry_timeout: float | None = None,
        request_timeout: float | None = REQUEST_TIMEOUT,
        since: str | int | Cursor | None = None,
        on_retry: OnRetry | None = None,
    ) -> None:
        self.path = socket_path or default_socket()
        self.retry_timeout = retry_timeout
        self.request_timeout = request_timeout
        self.on_retry = on_retry or log_retry
        start = None if since is None else Cursor.parse(since)
        self.tracker = Tracker(domids, events, start)
        self.from_cursor = start is not None
        self.snapshot: list[dict] = []
        self.absent: list[int] = []
        self.hello: dict = {}
        self.gap = False
        self.connected_once = False
        self.conn: Any = None  # the connection, set and cleared by the I/O side
        self._queue: collections.deque[_Due] = collections.deque()
        self._position: Cursor | None = None
        self._outage: Outage | None = None
        self._started()

    def _started(self) -> None:
        """What the I/O side does once the subscription is made (the blocking one
        connects; the asyncio one waits for `connect()` or `async with`)."""

    @property
    def cursor(self) -> str | None:
        """`HISTORY:SEQ` of the last event delivered (the subscribe's seq before any):
        give it to `since=` (or `xenmux watch --since`) to resume from there. None with a
        daemon that keeps no history (protocol 1)."""
        return None if self._position is None else str(self._position)

    # -- (re)connecting ---------------------------------------------------------------------

    def _attempt_deadline(self, outage: Outage, caller: Deadline) -> Deadline:
        budget = Deadline.after(self.request_timeout).sooner(outage.deadline)
        return budget.sooner(caller)

    def connecting(self, caller: Deadline = NEVER) -> Steps:
        """Connect and subscribe: True, or False when `caller`'s deadline passed first.
        Raises what cannot be retried, or the last failure once the retry budget is spent."""
        if self._outage is None:
            self._outage = Outage(self.retry_timeout, self.on_retry)
        outage = self._outage
        while True:
            attempt = self._attempt_deadline(outage, caller)
            try:
                conn = yield Open(attempt)
                done = yield from self._handshake(attempt)
                self.accept(done, conn.backlog)
                return True
            except _Resubscribe:
                yield Drop()
            except XenmuxError as exc:
                yield Drop()
                if not retryable(exc):
                    raise
                if caller.passed():
                    return False
                pause = outage.failed(exc)
                left = caller.left()
                yield Sleep(pause if left is None else min(pause, left))

    def _handshake(self, deadline: Deadline) -> Steps:
        first = not self.connected_once
        hello = check((yield Request(OP_HELLO, {}, deadline)))
        reply = yield Request(OP_SUBSCRIBE, self.tracker.subscribe_fields(), deadline)
        if not first and _error_code(reply) == ERR_BAD_CURSOR:
            # Our own cursor is ahead of the daemon's seq in the same history (its state
            # was restored from an older copy): nothing can be replayed, so relist.
            self.tracker.forget_cursor()
            reply = yield Request(OP_SUBSCRIBE, self.tracker.subscribe_fields(), deadline)
        check(reply)
        listing = None
        if first and self.tracker.served(reply):
            listing = check((yield Request(OP_LIST, {}, deadline)))
        return Handshake(hello, reply, listing)

    def next_steps(self, timeout: float | None) -> Steps:
        """The next event due to the caller, or None when none came within `timeout`."""
        deadline = Deadline.after(timeout)
        while True:
            event: Event | None = self.pop()  # type: ignore[assignment]
            if event is not None:
                return event
            if self.conn is None:
                if not (yield from self.connecting(deadline)):
                    return None
                continue  # a gap's missed events and early frames may be queued now
            try:
                msg = yield Read(deadline)
                if msg is None:
                    return None
                if "event" in msg:
                    self.receive(msg)
            except (Unreachable, _Resubscribe):
                yield Drop()

    def accept(self, done: Handshake, backlog: list[dict]) -> None:
        first = not self.connected_once
        reply = done.reply
        served = self.tracker.served(reply)
        missed = self.tracker.accept(reply, first)
        self.hello = done.hello
        self.connected_once = True
        self._outage = None
        if not served:
            self.snapshot = reply["snapshot"]
            self.absent = reply["absent"]
        self.gap = not served and (self.from_cursor or not first)
        if done.listing is not None:
            self.tracker.baseline(done.listing["domains"], done.listing["seq"])
        history = self.tracker.history
        at = reply["since"] if served else reply["seq"]
        for event in missed:
            self._queue.append(_Due(event, history, at))
        self._queue.append(_Due(None, history, at))
        for frame in backlog:
            self.receive(frame)
        backlog.clear()
        self._settle()

    # -- the stream -------------------------------------------------------------------------

    def receive(self, frame: dict) -> None:
        """A frame from the daemon. Raises _Resubscribe at an overflow frame."""
        if frame.get("event") == OVERFLOW:
            raise _Resubscribe
        self.tracker.track(frame)
        self._queue.append(_Due(frame, self.tracker.history, self.tracker.seq))

    def pop(self) -> dict | None:
        """The next event due to the caller, or None when there is none yet."""
        self._settle()
        if not self._queue:
            return None
        due = self._queue.popleft()
        self._move_to(due)
        self._settle()
        return due.event

    def _settle(self) -> None:
        # Entries the caller will not see still move the cursor past them.
        while self._queue and (
            self._queue[0].event is None or not self.tracker.wanted(self._queue[0].event)
        ):
            self._move_to(self._queue.popleft())

    def _move_to(self, due: _Due) -> None:
        known = due.history is not None and due.seq is not None
        self._position = Cursor(due.history, due.seq) if known else None


def _error_code(reply: dict) -> str | None:
    return None if reply.get("ok") else (reply.get("error") or {}).get("code")
