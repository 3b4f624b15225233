"""What a subscription knows, and what a (re)subscribe reply means for it. No I/O here.

The tracker remembers the daemon's `history` and the last `seq` it received, and the state
of every watched domain. On a reconnect it asks to resume with `since`; the daemon then
either replays what was missed (nothing to synthesise: the real events come) or answers
with a gap and a fresh snapshot, and only then does the tracker compare that snapshot
with what it knew and synthesise the events in between, each marked `"missed": true`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from mux.client.cursor import Cursor
from mux.client.events import EVENT_TYPES
from mux.protocol import (
    DEAD,
    DEATH,
    DEFAULT_KINDS,
    EVENT_KINDS,
    INCARNATION,
    NEW,
    PAUSED,
    RELEASED,
    RESUMED,
    RUNNING,
    SHUTDOWN,
    UNPAUSED,
)

# The only shutdowns a resume can undo (Xen resets the shutdown code only on resume): a
# domain last seen in one of them may have run again before it died, so the reason it
# died with is unknown. Any other reason in force is the one it died with.
UNDOABLE_REASONS = frozenset({"suspend", "soft_reset"})

# Kinds the tracker needs whatever the caller asked for, to keep its table right.
TRACKING_KINDS = frozenset({NEW, DEATH, RELEASED})


@dataclass
class Known:
    uuid: str
    state: str  # running, shutdown or dead
    reason: str | None = None
    paused: bool = False
    incarnation: str | None = None  # the hypervisor's unique id, where the daemon has them

    def same(self, uuid: object, incarnation: object) -> bool:
        """Whether a frame or row of this UUID and incarnation is this incarnation."""
        return self.uuid == uuid and self.incarnation == incarnation


def _known_from_row(row: dict) -> Known:
    return Known(
        row["uuid"], row["state"], row.get("reason"), bool(row.get("paused")), row.get(INCARNATION)
    )


class Tracker:
    """One subscription's memory: the watched domids and kinds, the cursor, the domains."""

    def __init__(
        self,
        domids: Iterable[int] | None,
        events: Iterable[str] | None,
        since: Cursor | None = None,
    ) -> None:
        self.domids = None if domids is None else list(dict.fromkeys(domids))
        self.kinds = None if events is None else frozenset(events)
        self.known: dict[int, Known] = {}
        # The position to resume from: the history and the last seq received. With a
        # protocol-1 daemon (no history) there is nothing to resume from.
        self.history: str | None = None if since is None else since.history
        self.seq: int | None = None if since is None else since.seq
        self.resumable = since is not None
        # domid -> the seq of the `list` its entry in `known` came from: older events of
        # that domid (a replay still arriving) are delivered but do not change the entry.
        self.asof: dict[int, int] = {}

    # -- requests ---------------------------------------------------------------------------

    def subscribe_fields(self) -> dict:
        fields: dict = {"domids": "*" if self.domids is None else self.domids}
        if self.kinds is not None:
            asked = self.kinds | TRACKING_KINDS
            order = {k: i for i, k in enumerate(EVENT_KINDS)}
            fields["events"] = sorted(asked, key=lambda k: (order.get(k, len(order)), k))
        if self.resumable and self.seq is not None:
            fields["since"] = self.seq
            if self.history is not None:
                fields["history"] = self.history
        return fields

    def forget_cursor(self) -> None:
        """The daemon refused our cursor: the next subscribe relists."""
        self.resumable = False

    # -- replies ----------------------------------------------------------------------------

    @staticmethod
    def served(reply: dict) -> bool:
        """Whether the daemon will replay from our cursor (else: a snapshot came)."""
        return "since" in reply and not reply.get("gap")

    def accept(self, reply: dict, first: bool) -> list[dict]:
        """Take a subscribe reply; returns the events synthesised from a gap's snapshot
        (none on the first subscribe: there was nothing known to compare with)."""
        served = self.served(reply)
        self.history = reply.get("history")
        self.resumable = self.history is not None
        if served:
            return []
        missed = [] if first else self.resync(reply["snapshot"])
        self.known = {row["domid"]: _known_from_row(row) for row in reply["snapshot"]}
        self.asof.clear()
        self.seq = reply["seq"]
        return missed

    def baseline(self, rows: list[dict], seq: int) -> None:
        """After resuming from a caller's cursor there is no snapshot: the table's rows
        (a `list` reply) say what the watched domains are, as of `seq`."""
        watched = None if self.domids is None else set(self.domids)
        for row in rows:
            domid = row["domid"]
            if (watched is None or domid in watched) and domid not in self.known:
                self.known[domid] = _known_from_row(row)
                self.asof[domid] = seq

    # -- the stream -------------------------------------------------------------------------

    def track(self, frame: dict) -> None:
        """Apply one event frame from the daemon (the caller has not seen it yet)."""
        seq = frame.get("seq")
        if isinstance(seq, int) and (self.seq is None or seq > self.seq):
            self.seq = seq
        domid = frame.get("domid")
        if domid in self.asof and isinstance(seq, int) and seq <= self.asof[domid]:
            return
        kind = frame.get("event")
        uuid = frame.get("uuid")
        known = self.known.get(domid)
        incarnation = frame.get(INCARNATION)
        if kind == NEW:
            self.known[domid] = Known(uuid, RUNNING, None, bool(frame.get("paused")), incarnation)
        elif kind == RELEASED:
            self.known.pop(domid, None)
            self.asof.pop(domid, None)
        elif known is None or not known.same(uuid, incarnation):
            # An incarnation whose `new` came before our cursor.
            state = {SHUTDOWN: SHUTDOWN, DEATH: DEAD}.get(kind, RUNNING)
            self.known[domid] = Known(uuid, state, frame.get("reason"), kind == PAUSED, incarnation)
        elif kind == SHUTDOWN:
            known.state, known.reason = SHUTDOWN, frame.get("reason")
        elif kind == RESUMED:
            known.state, known.reason = RUNNING, None
        elif kind == DEATH:
            known.state, known.reason = DEAD, frame.get("reason")
        elif kind in (PAUSED, UNPAUSED):
            known.paused = kind == PAUSED

    def wanted(self, event: dict) -> bool:
        kind = event.get("event")
        if self.kinds is None:
            # Frames that are not events of a kind (none yet) pass; kinds off by default
            # (paused, unpaused) come only when asked for.
            return kind in DEFAULT_KINDS or kind not in EVENT_TYPES
        return kind in self.kinds

    @property
    def cursor(self) -> Cursor | None:
        if self.history is None or self.seq is None:
            return None
        return Cursor(self.history, self.seq)

    # -- a gap ------------------------------------------------------------------------------

    def resync(self, snapshot: list[dict]) -> list[dict]:
        """The events between what we knew and this snapshot, marked missed."""
        now = time.time()
        rows = {row["domid"]: row for row in snapshot}
        missed: list[dict] = []

        def ev(kind: str, domid: int, uuid: str, incarnation: str | None, **extra) -> None:
            head = {"event": kind, "domid": domid, "uuid": uuid}
            if incarnation is not None:
                head[INCARNATION] = incarnation
            missed.append({**head, **extra, "missed": True, "time": now})

        for domid, old in sorted(self.known.items()):
            row = rows.get(domid)
            inc = old.incarnation
            if row is not None and old.same(row["uuid"], row.get(INCARNATION)):
                for kind, extra in _changes(old, row):
                    ev(kind, domid, old.uuid, inc, **extra)
                continue
            # Gone, or another incarnation: the one we knew died while we were away.
            if old.state != DEAD:
                final = old.state == SHUTDOWN and old.reason not in UNDOABLE_REASONS
                ev(DEATH, domid, old.uuid, inc, **_reason(old.reason if final else None))
            ev(RELEASED, domid, old.uuid, inc)
        for domid, row in sorted(rows.items()):
            old = self.known.get(domid)
            inc = row.get(INCARNATION)
            if old is not None and old.same(row["uuid"], inc):
                continue
            extra = {"name": row["name"]} if row.get("name") else {}
            if row.get("paused") and row["state"] != DEAD:
                extra["paused"] = True
            ev(NEW, domid, row["uuid"], inc, **extra)
            if row["state"] in (SHUTDOWN, DEAD) and row.get("reason"):
                ev(SHUTDOWN, domid, row["uuid"], inc, **_reason(row["reason"]))
            if row["state"] == DEAD:
                ev(DEATH, domid, row["uuid"], inc, **_reason(row.get("reason")))
        return missed


def _changes(old: Known, row: dict) -> list[tuple[str, dict]]:
    """One incarnation's missed events, from its state then and its snapshot row now."""
    state, reason = row["state"], row.get("reason")
    if state == DEAD:
        return [] if old.state == DEAD else [(DEATH, _reason(reason))]
    out: list[tuple[str, dict]] = []
    if old.state == SHUTDOWN and (state == RUNNING or reason != old.reason):
        out.append((RESUMED, {}))  # a shutdown whose reason changed was resumed in between
    if state == SHUTDOWN and (old.state != SHUTDOWN or reason != old.reason):
        out.append((SHUTDOWN, _reason(reason)))
    if bool(row.get("paused")) != old.paused:
        out.append((PAUSED if row.get("paused") else UNPAUSED, {}))
    return out


def _reason(reason: str | None) -> dict:
    return {"reason": reason} if reason else {}
