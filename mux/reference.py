"""The scanner in plain Python: the executable specification of `mux._fast`.

`DomainTable` keeps, per live domid, what the diff needs and turns each batch of
`xc_domaininfo_t` records (as `xc_domain_getinfolist` returns them) into the events of the
event model in docs/architecture.md, named as `mux.protocol` names them. `mux._fast` is its
Cython twin: same API, same rules, same bytes out of `Event.frame()`. The tests run both and
compare them step by step, so when the two disagree, this file is the one that says what is
right.

Written for clarity, not speed: records are decoded with `DomainRecord.unpack_from`, the
table is a dict, and every batch is validated in full before anything changes.
"""

from __future__ import annotations

import json
import time as _time
from collections.abc import Iterable
from dataclasses import dataclass

from mux.protocol import (
    DEAD,
    DEATH,
    DOMAIN_STATES,
    EVENT_KINDS,
    NEW,
    RELEASED,
    RESUMED,
    RUNNING,
    SHUTDOWN,
)
from mux.records import (
    DOMID_FIRST_RESERVED,
    RECORD_SIZE,
    SHUTDOWN_NONE,
    DomainRecord,
    reason_name,
    uuid_str,
)


class Event:
    """One change of one domain incarnation, as subscribers receive it."""

    __slots__ = ("_frame", "_name", "domid", "kind", "reason", "seq", "time", "uuid")

    def __init__(
        self,
        seq: int,
        kind: str,
        domid: int,
        uuid: str,
        reason: str | None,
        time: float,
        name: str | None = None,
    ) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        self.seq = seq
        self.kind = kind
        self.domid = domid
        self.uuid = uuid
        self.reason = reason
        self.time = float(time)
        self._name = name
        self._frame: bytes | None = None

    @property
    def name(self) -> str | None:
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        if self._frame is not None:
            raise AttributeError("Event.name cannot change once frame() has been taken")
        if value is not None and not isinstance(value, str):
            raise TypeError("Event.name must be a str or None")
        self._name = value

    def to_dict(self) -> dict:
        """The frame's fields as a dict (same keys, same order; `time` unrounded)."""
        d: dict = {"seq": self.seq, "event": self.kind, "domid": self.domid, "uuid": self.uuid}
        if self.reason is not None:
            d["reason"] = self.reason
        if self._name is not None:
            d["name"] = self._name
        d["time"] = self.time
        return d

    def frame(self) -> bytes:
        """The event's JSON line, encoded once: every subscriber gets these same bytes."""
        if self._frame is None:
            head = self.to_dict()
            del head["time"]
            # json.dumps' default separators are ", " and ": " and it escapes to ASCII;
            # `time` is appended by hand because JSON has no fixed-point float format.
            text = json.dumps(head)[:-1] + f', "time": {self.time:.6f}}}\n'
            self._frame = text.encode("ascii")
        return self._frame

    def __repr__(self) -> str:
        return f"Event({self.to_dict()!r})"


@dataclass(slots=True)
class Entry:
    """What the table remembers of one domain incarnation."""

    handle: bytes  # the 16-byte UUID
    flags: int  # XEN_DOMINF_* of the latest record
    cpu_time: int  # of the latest record
    gen: int  # table-wide incarnation number, rising from 1
    state: str  # running, shutdown or dead
    # Reason code of the shutdown in force: the current one while shut down, the one the
    # domain died with once dead, SHUTDOWN_NONE while running.
    reason: int = SHUTDOWN_NONE
    name: str | None = None


def _check_batch(buffer, count: int) -> list[DomainRecord]:
    """Decode and validate a whole batch; raise ValueError before anything is changed."""
    size = memoryview(buffer).nbytes
    if count < 0:
        raise ValueError(f"corrupt batch: negative record count {count}")
    if count * RECORD_SIZE > size:
        raise ValueError(
            f"corrupt batch: count {count} needs {count * RECORD_SIZE} bytes "
            f"but the buffer holds {size} ({size // RECORD_SIZE} records)"
        )
    records = [DomainRecord.unpack_from(buffer, i * RECORD_SIZE) for i in range(count)]
    seen: set[int] = set()
    for i, rec in enumerate(records):
        if rec.domid >= DOMID_FIRST_RESERVED:
            raise ValueError(
                f"corrupt batch: record {i} has domid {rec.domid} "
                f"(>= DOMID_FIRST_RESERVED {DOMID_FIRST_RESERVED:#x})"
            )
        if rec.domid in seen:
            raise ValueError(f"corrupt batch: record {i} repeats domid {rec.domid}")
        seen.add(rec.domid)
    return records


def _state_of(rec: DomainRecord) -> str:
    if rec.dying:
        return DEAD
    return SHUTDOWN if rec.shutdown else RUNNING


class DomainTable:
    """The scanner's table of domains, keyed by domid."""

    def __init__(self, seq: int = 0) -> None:
        self._seq = seq
        self._gen = 0
        self._doms: dict[int, Entry] = {}

    # -- the table ------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The last seq handed out."""
        return self._seq

    @property
    def n_shutdown(self) -> int:
        """Domains shut down but not dead: while any exist, the daemon polls."""
        return sum(1 for e in self._doms.values() if e.state == SHUTDOWN)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(DOMAIN_STATES, 0)
        for e in self._doms.values():
            out[e.state] += 1
        return out

    def __len__(self) -> int:
        return len(self._doms)

    def __contains__(self, domid: object) -> bool:
        return domid in self._doms

    def set_name(self, domid: int, name: str | None) -> None:
        """Names come from xenstore; the events of this incarnation carry them from now on."""
        if name is not None and not isinstance(name, str):
            raise TypeError("name must be a str or None")
        if domid not in self._doms:
            raise KeyError(domid)
        self._doms[domid].name = name

    def get_name(self, domid: int) -> str | None:
        entry = self._doms.get(domid)
        return None if entry is None else entry.name

    def snapshot(self, domids: Iterable[int] | None = None) -> list[dict]:
        """Subscribers' view of the known domains among `domids` (all when None)."""
        wanted = self._doms.keys() if domids is None else set(domids) & self._doms.keys()
        return [
            {
                "domid": domid,
                "uuid": uuid_str(self._doms[domid].handle),
                "state": self._doms[domid].state,
                "reason": reason_name(self._doms[domid].reason),
                "name": self._doms[domid].name,
            }
            for domid in sorted(wanted)
        ]

    def rows(self) -> list[dict]:
        """Every field of every entry, in domid order (for tests and debugging)."""
        return [
            {
                "domid": domid,
                "uuid": uuid_str(e.handle),
                "flags": e.flags,
                "cpu_time": e.cpu_time,
                "gen": e.gen,
                "state": e.state,
                "reason": reason_name(e.reason),
                "reason_code": e.reason,
                "name": e.name,
            }
            for domid, e in sorted(self._doms.items())
        ]

    # -- loading and diffing ----------------------------------------------------------------

    def prime(self, buffer, count: int) -> None:
        """Replace the table with the batch, without events (the start-up scan)."""
        records = _check_batch(buffer, count)
        self._doms = {}
        for rec in sorted(records, key=lambda r: r.domid):
            entry = self._incarnate(rec)
            entry.state = _state_of(rec)
            entry.reason = rec.reason if rec.shutdown else SHUTDOWN_NONE
            self._doms[rec.domid] = entry

    def diff(self, buffer, count: int, now: float | None = None) -> list[Event]:
        """A full scan: the batch holds every domain; those missing from it are gone."""
        records = _check_batch(buffer, count)
        now = _time.time() if now is None else float(now)
        by_domid = {rec.domid: rec for rec in records}
        events: list[Event] = []
        for domid in sorted(by_domid.keys() | self._doms.keys()):
            self._apply(domid, by_domid.get(domid), now, events)
        return events

    def diff_one(self, domid: int, buffer, count: int, now: float | None = None) -> list[Event]:
        """A targeted scan of one domid, from getinfolist(first=domid, max>=1).

        Records of other domids in the batch are ignored; if none has `domid`, it is gone.
        """
        if not 0 <= domid < DOMID_FIRST_RESERVED:
            raise ValueError(f"domid {domid} out of range 0..{DOMID_FIRST_RESERVED - 1}")
        records = _check_batch(buffer, count)
        now = _time.time() if now is None else float(now)
        rec = next((r for r in records if r.domid == domid), None)
        events: list[Event] = []
        self._apply(domid, rec, now, events)
        return events

    # -- the rules of the event model -------------------------------------------------------

    def _incarnate(self, rec: DomainRecord) -> Entry:
        self._gen += 1
        return Entry(rec.handle, rec.flags, rec.cpu_time, self._gen, RUNNING)

    def _emit(self, events: list[Event], kind, domid, entry, reason, now) -> None:
        self._seq += 1
        events.append(
            Event(
                self._seq, kind, domid, uuid_str(entry.handle), reason_name(reason), now, entry.name
            )
        )

    def _apply(self, domid: int, rec: DomainRecord | None, now: float, events: list) -> None:
        """One domain's events for this scan, in their order; the table is updated."""
        entry = self._doms.get(domid)

        if entry is not None:
            # Another UUID, a cpu_time that went back, or a dead domain no longer dying
            # (Xen never clears `dying`): the domid now holds another incarnation.
            new_incarnation = rec is not None and (
                rec.handle != entry.handle
                or rec.cpu_time < entry.cpu_time
                or (entry.state == DEAD and not rec.dying)
            )
            if rec is None or new_incarnation:
                # The incarnation we knew is over: it dies (unless it already did) and its
                # record has left the list (even if the domid is already back).
                if entry.state != DEAD:
                    reason = entry.reason if entry.state == SHUTDOWN else SHUTDOWN_NONE
                    self._emit(events, DEATH, domid, entry, reason, now)
                self._emit(events, RELEASED, domid, entry, SHUTDOWN_NONE, now)
                del self._doms[domid]
                entry = None
        if rec is None:
            return

        if entry is None:
            entry = self._doms[domid] = self._incarnate(rec)
            self._emit(events, NEW, domid, entry, SHUTDOWN_NONE, now)

        if entry.state != DEAD:
            if rec.shutdown:
                if entry.state != SHUTDOWN or entry.reason != rec.reason:
                    entry.state, entry.reason = SHUTDOWN, rec.reason
                    self._emit(events, SHUTDOWN, domid, entry, rec.reason, now)
            elif entry.state == SHUTDOWN and not rec.dying:
                entry.state, entry.reason = RUNNING, SHUTDOWN_NONE
                self._emit(events, RESUMED, domid, entry, SHUTDOWN_NONE, now)
            if rec.dying:
                # Dies with the shutdown still in force: the record's if its shutdown flag
                # is set (just copied into the entry), else the one of the last scan.
                reason = entry.reason if entry.state == SHUTDOWN else SHUTDOWN_NONE
                entry.state, entry.reason = DEAD, reason
                self._emit(events, DEATH, domid, entry, reason, now)

        entry.flags = rec.flags
        entry.cpu_time = rec.cpu_time
