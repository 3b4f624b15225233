"""The daemon's stream as the bridge takes it: the one module that talks to mux.client.

`DaemonFeed.open(cursor, known)` subscribes to every domain and kind, from `cursor` (the
daemon's `HISTORY:SEQ` the pool stream last holds). When the daemon can replay from there
(its journal), the events after it follow and open() returns None. Otherwise (the first
start, another history, a cursor older than the journal, a daemon without a journal) the
daemon sends its snapshot and open() returns a Resync: the snapshot, and the events made up
(`"missed": true`) from the difference between `known`, what the pool stream says of this
host, and the snapshot. Later the client library reconnects by itself (a daemon restart):
it resumes with `since`; a reconnect that could not be continued (a gap) comes out of
next() as a Resync too, with the events the library made up, before the events after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from mux.client import AsyncSubscription, Cursor, Unreachable, XenmuxError
from mux.client.tracker import Known, Tracker
from mux.client.words import ERR_BAD_CURSOR
from mux.protocol import EVENT_KINDS

log = logging.getLogger("xenmux.bridge")

# Every kind the daemon has, asked for by name: the ones it sends only when asked (paused
# and unpaused, issue 16) are in EVENT_KINDS where the daemon has them.
ALL_KINDS = EVENT_KINDS


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
    """Remembers what each (re)subscribe reply said: served from the cursor or not, and the
    snapshot's seq (which the library's own cursor passes as soon as an event is taken)."""

    reply_seq = 0
    served = False

    def accept(self, done, backlog: list[dict]) -> None:
        self.served = self.tracker.served(done.reply)
        self.reply_seq = done.reply["seq"]
        super().accept(done, backlog)


class DaemonFeed:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.sub: _Subscription | None = None
        self.history = ""
        self.handed = 0  # the seq of the last event handed over (or of the last snapshot)
        self._hello: dict | None = None
        self._held: dict | None = None

    async def open(
        self, cursor: str | None, known: dict[int, tuple[str, str, str | None]] | None
    ) -> Resync | None:
        """Subscribe from `cursor`; `known` (domid -> (uuid, state, reason)) is what the
        stream says of the host, None when the pool has no record of it (nothing is made
        up then). None when the daemon replays from the cursor, else the Resync."""
        sub = await self._connect(cursor)
        self.sub = sub
        self._hello = sub.hello
        self.history = _history(sub.hello)
        if sub.served:
            assert cursor is not None  # a reply is served only from a cursor
            self.handed = Cursor.parse(cursor).seq
            return None
        resync = Resync(self.history, sub.reply_seq, list(sub.snapshot))
        if known is not None:
            tracker = Tracker(None, None)
            tracker.known = {d: Known(u, s, r) for d, (u, s, r) in known.items()}
            resync.missed = tracker.resync(resync.rows)
        self.handed = resync.seq
        return resync

    async def _connect(self, cursor: str | None) -> _Subscription:
        sub = _Subscription(None, events=ALL_KINDS, socket_path=self.socket_path, since=cursor)
        try:
            await sub.connect()
        except XenmuxError as exc:
            if exc.code != ERR_BAD_CURSOR or cursor is None:
                raise
            # The stream is ahead of the daemon in its own history (its state came back
            # from an older copy): nothing can be replayed; start from its snapshot.
            log.warning("the daemon refused the cursor %s (%s): taking its snapshot", cursor, exc)
            await sub.close()
            sub = _Subscription(None, events=ALL_KINDS, socket_path=self.socket_path)
            await sub.connect()
        return sub

    async def _resynced(self, first: dict | None) -> Resync:
        """The Resync of the library's latest reconnect, which the daemon could not serve
        from the cursor: its snapshot and the events it made up (queued ahead of every live
        one); holds back the first live event."""
        sub = self.sub
        assert sub is not None
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
            resync.missed.append(dict(event))
            event = None
        self.handed = resync.seq
        return resync

    async def next(self, timeout: float | None) -> dict | Resync | None:
        """The next event or Resync; None when nothing came within `timeout`."""
        if self._held is not None:
            event, self._held = self._held, None
            return self._note(event)
        sub = self.sub
        assert sub is not None
        event = await sub.next_event(timeout)
        if sub.hello is not self._hello:
            self._hello = sub.hello
            new_history = _history(sub.hello)
            if not sub.served or new_history != self.history:
                self.history = new_history
                return await self._resynced(event)
        return None if event is None else self._note(dict(event))

    def _note(self, event: dict) -> dict:
        self.handed = max(self.handed, event.get("seq", 0))
        return event

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(OSError, Unreachable, XenmuxError, asyncio.CancelledError):
                await self.sub.close()
            self.sub = None
