"""What one connection holds back while its peer takes output slower than it comes.

While the transport takes frames they go straight to it (connection.py). Once its buffer
passes its limit, or while a replay is being written, frames and replies wait here, in
order; their bytes count toward the connection's high-water mark. A replay waits as one
marker whose bytes do not count: they are pulled from the journal only as the socket drains.

In `latest` mode (docs/protocol.md) a backlog past the mark is *coalesced*: from then on a
domid's pending event frames are one newest-state frame, moved to the end each time an event
is folded into it, so that the backlog stays in seq order; a `death` is kept as its own
frame, in order, in place of the state frame pending before it; replies and replay markers
are kept as they are. The backlog then holds at most one frame per domid, plus deaths.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Protocol

from mux.protocol import (
    ABSENT,
    DEAD,
    DEATH,
    LATEST_STATE,
    NEW,
    RELEASED,
    RESUMED,
    RUNNING,
    SHUTDOWN,
)


class Event(Protocol):
    """What coalescing reads of an event (mux._fast.Event, mux.reference.Event)."""

    seq: int
    kind: str
    domid: int
    uuid: str
    reason: str | None
    name: str | None
    time: float


# The state a domain is in after an event of each kind; the other kinds (paused, unpaused)
# leave it as it was.
STATE_AFTER = {NEW: RUNNING, SHUTDOWN: SHUTDOWN, RESUMED: RUNNING, DEATH: DEAD, RELEASED: ABSENT}


class Replay:
    """A marker in the backlog: the journal's chunks are written when the output reaches it."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks

    def close(self) -> None:
        close = getattr(self.chunks, "close", None)  # a generator holding the journal open
        if close is not None:
            close()


class StateFrame:
    """The newest state of one domid, folded from its pending events; `seq` is the newest's."""

    __slots__ = ("domid", "name", "reason", "seq", "size", "state", "time", "uuid")

    def __init__(self, ev: Event, size: int) -> None:
        self.domid = ev.domid
        self.uuid = ev.uuid
        self.name = ev.name
        self.state = STATE_AFTER.get(ev.kind, RUNNING)
        self.reason = ev.reason if self.state == SHUTDOWN else None
        self.seq = ev.seq
        self.time = ev.time
        self.size = size  # the bytes counted for it: those of the last frame folded in

    def fold(self, ev: Event, size: int) -> None:
        if ev.uuid != self.uuid:  # another incarnation: its name is its own
            self.uuid = ev.uuid
            self.name = None
        self.state = STATE_AFTER.get(ev.kind, self.state)
        if ev.kind == SHUTDOWN:
            self.reason = ev.reason
        elif self.state != SHUTDOWN:
            self.reason = None
        if ev.name is not None:
            self.name = ev.name
        self.seq = ev.seq
        self.time = ev.time
        self.size = size

    def encode(self) -> bytes:
        head: dict = {
            "seq": self.seq,
            "event": LATEST_STATE,
            "domid": self.domid,
            "uuid": self.uuid,
            "state": self.state,
        }
        if self.reason is not None:
            head["reason"] = self.reason
        if self.name is not None:
            head["name"] = self.name
        # `time` as event frames carry it (mux.reference.Event.frame): six decimals.
        return (json.dumps(head)[:-1] + f', "time": {self.time:.6f}}}\n').encode("ascii")


# An item: (bytes, its event or None for a reply), (Replay, None), or once coalesced a
# StateFrame.
Item = tuple


class Backlog:
    __slots__ = ("_folded", "_plain", "folded_events", "nbytes")

    def __init__(self) -> None:
        self._plain: deque[Item] = deque()
        self._folded: OrderedDict | None = None  # domid -> StateFrame, object() -> Item
        self.nbytes = 0  # frame and reply bytes held (a replay's do not count)
        self.folded_events = 0  # events sent as part of a state frame instead of their own

    @property
    def coalesced(self) -> bool:
        return self._folded is not None

    def __len__(self) -> int:
        return len(self._plain if self._folded is None else self._folded)

    def __bool__(self) -> bool:
        return bool(self._plain if self._folded is None else self._folded)

    def append(self, data: bytes, event: Event | None = None) -> None:
        """A frame with its event, or a reply (no event)."""
        if self._folded is not None and event is not None:
            self._fold(event, len(data), data)
            return
        self._keep(data, event)

    def add_replay(self, chunks: Iterator[bytes]) -> None:
        self._keep(Replay(chunks), None)

    def popleft(self) -> tuple[bytes | Replay, object | None]:
        """The oldest item: (bytes, what it carries: an event, a StateFrame or None), or
        (Replay, None) when the replay is due."""
        if self._folded is None:
            data, out = self._plain.popleft()
        else:
            _key, item = self._folded.popitem(last=False)
            if type(item) is StateFrame:
                self.nbytes -= item.size
                return item.encode(), item
            data, out = item
        if type(data) is bytes:
            self.nbytes -= len(data)
        return data, out

    def coalesce(self) -> None:
        """From now on, one newest-state frame per domid (see the module's docstring)."""
        if self._folded is not None:
            return
        plain, self._plain = self._plain, deque()
        self._folded = OrderedDict()
        self.nbytes = 0
        for data, event in plain:
            if event is None:
                self._keep(data, None)
            else:
                self._fold(event, len(data), data)

    def clear(self) -> None:
        """Drop everything held, releasing a pending replay's journal reader."""
        items = self._plain if self._folded is None else self._folded.values()
        for item in items:
            if type(item) is tuple and type(item[0]) is Replay:
                item[0].close()
        self._plain = deque()
        self._folded = None
        self.nbytes = 0

    def _keep(self, data: bytes | Replay, event: Event | None) -> None:
        if self._folded is None:
            self._plain.append((data, event))
        else:
            self._folded[object()] = (data, event)
        if type(data) is bytes:
            self.nbytes += len(data)

    def _fold(self, ev: Event, size: int, frame: bytes) -> None:
        folded = self._folded
        domid = ev.domid
        slot = folded.pop(domid, None)
        if slot is not None:
            self.nbytes -= slot.size
        if ev.kind == DEATH:  # kept as itself, in place of the state it ends
            self._keep(frame, ev)
            return
        if slot is None:
            slot = StateFrame(ev, size)
        else:
            slot.fold(ev, size)
        self.folded_events += 1
        folded[domid] = slot
        self.nbytes += size
