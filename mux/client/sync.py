"""The blocking client: `Client` for requests, `Subscription` for events."""

from __future__ import annotations

import time
from collections.abc import Iterator

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
from mux.client.wire import Deadline, LineSocket, check
from mux.protocol import OP_HELLO, OP_LIST, OP_PING, OP_RESCAN, OP_STATS, default_socket


class Client:
    """Request/reply calls: `Client().call("list")`, `.list()`, `.stats()`, `.rescan()`.

    `timeout` bounds the connect and then each call (None: wait for ever); when it passes,
    TimedOut is raised (an Unreachable)."""

    def __init__(self, socket_path: str | None = None, timeout: float | None = 10.0) -> None:
        self.path = socket_path or default_socket()
        self.timeout = timeout
        self.conn = LineSocket(self.path, Deadline.after(timeout))

    def call(self, op: str, **fields) -> dict:
        return check(self.conn.request(op, fields, Deadline.after(self.timeout)))

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


class Subscription(SubscriptionCore):
    """Events for some domids (None: all), surviving daemon restarts. Iterate for events;
    `next_event(timeout)` returns None when nothing came in time.

    - `since`: a cursor (`"HISTORY:SEQ"` or a seq) to resume from: the daemon replays what
      followed it, or, when it cannot, `gap` is True and `snapshot` is the current state.
    - `retry_timeout`: how long to keep trying to reach the daemon (None: for ever; each
      outage gets one `on_retry` notice, a logging warning by default). When it passes,
      Unreachable is raised.
    - `request_timeout`: how long hello and subscribe may take before the connection counts
      as broken (the daemon accepted but does not answer).
    - `cursor`: where to resume from later (`"HISTORY:SEQ"` of the last event delivered).
    """

    conn: LineSocket | None

    def _started(self) -> None:
        self._run(self.connecting())  # a Subscription is connected once made

    def next_event(self, timeout: float | None = None) -> Event | None:
        return self._run(self.next_steps(timeout))

    def _run(self, steps: Steps):
        """Perform the actions `steps` yields until it returns."""
        action = resume(steps)
        while not isinstance(action, Done):
            try:
                result = self._perform(action)
            except XenmuxError as exc:
                action = resume(steps, error=exc)
            else:
                action = resume(steps, result)
        return action.value

    def _perform(self, action: Action):
        match action:
            case Open(deadline):
                self.conn = LineSocket(self.path, deadline)
                return self.conn
            case Request(op, fields, deadline):
                assert self.conn is not None
                return self.conn.request(op, fields, deadline)
            case Read(deadline):
                assert self.conn is not None
                return self.conn.readline(deadline)
            case Sleep(seconds):
                time.sleep(seconds)
            case Drop():
                self.close()

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.next_event()
            if event is not None:
                yield event

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
