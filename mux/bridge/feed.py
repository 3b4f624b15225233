"""The daemon's stream as the bridge takes it: the one module that talks to mux.client.

`DaemonFeed.open(cursor, known)` subscribes to every domain and kind. When the daemon can
continue from the cursor (`since`, with the journal), the events after it follow and open()
returns None. Otherwise (the first start, another history, a cursor older than the journal,
a daemon without a journal) the daemon sends its snapshot and open() returns a Resync: the
snapshot, and the events made up (`"missed": true`) from the difference between `known`,
what the pool stream already says of this host, and the snapshot. The client library
reconnects by itself when the daemon restarts; a reconnect that could not be continued comes
out of next() as a Resync too, before the events after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from mux.client import AsyncSubscription, Unreachable, XenmuxError


@dataclass
class Resync:
    history: str
    seq: int  # the snapshot's seq: events after it follow
    rows: list[dict]  # the daemon's snapshot
    missed: list[dict] = field(default_factory=list)  # what the stream lacks, oldest first


def _history(hello: dict) -> str:
    # The journal's `history` names the daemon's lineage (seq continues across restarts);
    # without it `instance` is the lineage, since seq restarts with the daemon.
    return str(hello.get("history") or hello["instance"])


class _Subscription(AsyncSubscription):
    """Remembers the seq of each (re)subscribe reply: the snapshot's position, which the
    library's own counter passes as soon as an event is taken."""

    reply_seq = 0

    def _accept(self, hello: dict, reply: dict, first: bool, backlog: list[dict]) -> None:
        self.reply_seq = reply["seq"]
        super()._accept(hello, reply, first, backlog)


class DaemonFeed:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.sub: _Subscription | None = None
        self.history = ""
        self.handed = 0  # the seq of the last event handed over (or of the last snapshot)
        self._hello: dict | None = None
        self._held: dict | None = None

    async def open(self, cursor: str | None, known: dict | None) -> Resync | None:
        """Subscribe; `known` (domid -> (uuid, state, reason)) is what the stream says of the
        host, None when the pool has no record of it (nothing is made up then)."""
        sub = _Subscription(None, socket_path=self.socket_path)
        if known is not None:
            sub.tracker.known = dict(known)
        # The library as it is resumes no cursor, so every open is answered with a snapshot;
        # `cursor` is where the journal's `since` goes.
        del cursor
        await sub.connect(first=known is None)
        self.sub = sub
        return await self._resynced()

    async def _resynced(self, first: dict | None = None) -> Resync:
        """The Resync the subscription's latest (re)subscribe made, with its made-up events
        (queued ahead of every live one); holds back the first live event."""
        sub = self.sub
        assert sub is not None
        self._hello = sub.hello
        self.history = _history(sub.hello)
        resync = Resync(self.history, sub.reply_seq, list(sub.snapshot))
        event = first
        while True:
            if event is None:
                event = await sub.next_event(0)
                if event is None:
                    break
            if not event.get("missed"):
                self._held = event
                break
            resync.missed.append(event)
            event = None
        self.handed = resync.seq
        return resync

    async def next(self, timeout: float) -> dict | Resync | None:
        """The next event or Resync; None when nothing came within `timeout`.

        Raises Unreachable only when the daemon cannot be reached at all (the library
        retries for ever, so not in practice)."""
        if self._held is not None:
            event, self._held = self._held, None
            return self._note(event)
        assert self.sub is not None
        event = await self.sub.next_event(timeout)
        if self.sub.hello is not self._hello:
            return await self._resynced(event)
        return None if event is None else self._note(event)

    def _note(self, event: dict) -> dict:
        self.handed = max(self.handed, event.get("seq", 0))
        return event

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(OSError, Unreachable, XenmuxError, asyncio.CancelledError):
                await self.sub.close()
            self.sub = None
