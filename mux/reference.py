"""The scanner in plain Python: the executable specification of `mux._fast`.

`DomainTable` keeps, per live domid, what the diff needs and turns each batch of
`xc_domaininfo_t` records (as `xc_domain_getinfolist` returns them) into the events of the
event model (docs/protocol.md, "Event model"), named as `mux.protocol` names them.
`mux._fast` is its Cython twin: same API, same rules, same bytes out of `Event.frame()`, the
same `dump()`. The tests run both and compare them step by step, so when the two disagree,
this file is the one that says what is right.

Where the backend has unique ids (Xen 4.21+, `Capabilities.unique_ids`), the diff is given
the backend's `unique_id(domid)` and an incarnation is (domid, unique id): the table reads
the id of every incarnation it takes in, and with `check_ids` the ids of the domains of the
batch it already holds, before anything changes; an id that changed is a `death` (and
`released`) of the old incarnation and a `new` of the other, whatever the record says. Each
event and snapshot row of an incarnation whose id is known carries it (`incarnation`, 16
hex digits); without ids nothing differs from the rules of UUID and cpu_time.

It also holds what the journal's checkpoint needs once, at start-up: `parse_dump` (the
check of a dump that both twins' `load` use) and `replay` (a dump brought forward by the
events journaled after it).

Written for clarity, not speed: records are decoded with `DomainRecord.unpack_from`, the
table is a dict, and every batch is validated in full before anything changes.
"""

from __future__ import annotations

import json
import math
import time as _time
import uuid as _uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from mux.protocol import (
    DEAD,
    DEATH,
    DOMAIN_STATES,
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
from mux.records import (
    DOMID_FIRST_RESERVED,
    DOMINF_DYING,
    DOMINF_PAUSED,
    DOMINF_SHUTDOWN,
    DOMINF_SHUTDOWNMASK,
    DOMINF_SHUTDOWNSHIFT,
    REASON_CODES,
    RECORD_SIZE,
    SHUTDOWN_NONE,
    SHUTDOWN_SOFT_RESET,
    SHUTDOWN_SUSPEND,
    DomainRecord,
    reason_name,
    uuid_str,
)

# The shutdowns a resume (XEN_DOMCTL_resumedomain, which fires nothing) can undo. Xen resets
# a domain's shutdown code only on a resume, so every other reason is final.
RESUMABLE = frozenset({SHUTDOWN_SUSPEND, SHUTDOWN_SOFT_RESET})

# How long after the last scan that saw a domain suspended its vanished record still counts
# as "did not run again": the daemon's default --shutdown-poll, the period of those scans.
DEFAULT_SUSPEND_WINDOW = 0.25

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hex_digits(text: object) -> str | None:
    """The 32 digits of a UUID in the 8-4-4-4-12 form, as every frame and dump has it."""
    if type(text) is str and len(text) == 36 and text[8] == text[13] == text[18] == text[23] == "-":
        digits = text[:8] + text[9:13] + text[14:18] + text[19:23] + text[24:]
        # fromhex would take spaces between digits, int() (and so uuid.UUID) around them
        if digits.isascii() and digits.isalnum():
            return digits
    return None


def _handle_of(text: object) -> bytes:
    """The 16 bytes of a UUID's text (ValueError, TypeError or AttributeError if it is not
    one, as uuid.UUID); without uuid.UUID's cost for the usual form (a checkpoint and its
    journal hold one UUID per row and event)."""
    digits = _hex_digits(text)
    return _uuid.UUID(text).bytes if digits is None else bytes.fromhex(digits)


def _uuid_text(text: object) -> str:
    """The canonical text of a UUID's text (errors as _handle_of)."""
    digits = _hex_digits(text)
    if isinstance(text, str) and digits is not None and digits == digits.lower():
        bytes.fromhex(digits)  # ValueError for what is not hex
        return text
    return uuid_str(_handle_of(text))


# The backend's `unique_id(domid)`: the id of the incarnation `domid` holds now, None when
# none does (or it cannot be read).
UniqueIdReader = Callable[[int], "int | None"]


def incarnation_text(unique_id: int) -> str:
    """A unique id as frames and dumps carry it: 16 lowercase hex digits."""
    return f"{unique_id:016x}"


def parse_incarnation(text: object) -> int:
    """The unique id of an `incarnation` text (ValueError unless 16 lowercase hex digits
    naming a non-zero id)."""
    if (
        type(text) is not str
        or len(text) != 16
        or not text.isascii()
        or text.lower() != text
        or not all(c in "0123456789abcdef" for c in text)
        or int(text, 16) == 0
    ):
        raise ValueError(f"incarnation {text!r} is not 16 lowercase hex digits (non-zero)")
    return int(text, 16)


def _flag_value(what: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"Event.{what} must be a bool")
    return value


def check_suspend_window(value: object) -> float:
    """A `suspend_window` (seconds, finite, >= 0) as a float, or ValueError."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"suspend_window must be a number of seconds, not {value!r}")
    window = float(value)
    if not (window >= 0 and math.isfinite(window)):
        raise ValueError(f"suspend_window must be finite and at least 0, not {value!r}")
    return window


class Event:
    """One change of one domain incarnation, as subscribers receive it."""

    __slots__ = (
        "_frame",
        "_incarnation",
        "_late",
        "_name",
        "_paused",
        "_transient",
        "domid",
        "kind",
        "reason",
        "seq",
        "time",
        "uuid",
    )

    def __init__(
        self,
        seq: int,
        kind: str,
        domid: int,
        uuid: str,
        reason: str | None,
        time: float,
        name: str | None = None,
        *,
        paused: bool = False,
        late: bool = False,
        transient: bool = False,
        incarnation: str | None = None,
    ) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        if _flag_value("paused", paused) and kind != NEW:
            raise ValueError("only a `new` event carries paused")
        if reason is not None and reason not in REASON_CODES:
            raise KeyError(reason)
        self.seq = seq
        self.kind = kind
        self.domid = domid
        self.uuid = str(_uuid.UUID(uuid))
        self.reason = reason
        self.time = float(time)
        self._paused = paused
        if incarnation is not None:
            parse_incarnation(incarnation)
        self._incarnation = incarnation
        self._frame: bytes | None = None
        self._name: str | None = None
        self._late = self._transient = False
        self.name = name
        self.late = late
        self.transient = transient

    def _settable(self, what: str) -> None:
        if self._frame is not None:
            raise AttributeError(f"Event.{what} cannot change once frame() has been taken")

    @property
    def name(self) -> str | None:
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        self._settable("name")
        if value is not None and not isinstance(value, str):
            raise TypeError("Event.name must be a str or None")
        self._name = value

    @property
    def paused(self) -> bool:
        """On `new`: the domain was paused when first seen (as every domain is built)."""
        return self._paused

    @property
    def incarnation(self) -> str | None:
        """The hypervisor's unique id of the incarnation (16 hex digits), where known."""
        return self._incarnation

    @property
    def late(self) -> bool:
        """Found by the first scan after a restart: it happened while the daemon was down."""
        return self._late

    @late.setter
    def late(self, value: bool) -> None:
        self._settable("late")
        self._late = _flag_value("late", value)

    @property
    def transient(self) -> bool:
        """Half of a `new` + `death` pair for a domain that came and went between two scans."""
        return self._transient

    @transient.setter
    def transient(self, value: bool) -> None:
        self._settable("transient")
        self._transient = _flag_value("transient", value)

    def to_dict(self) -> dict:
        """The frame's fields as a dict (same keys, same order; `time` unrounded)."""
        d: dict = {"seq": self.seq, "event": self.kind, "domid": self.domid, "uuid": self.uuid}
        if self._incarnation is not None:
            d[INCARNATION] = self._incarnation
        if self.reason is not None:
            d["reason"] = self.reason
        if self._name is not None:
            d["name"] = self._name
        if self._paused:
            d["paused"] = True
        if self._late:
            d["late"] = True
        if self._transient:
            d["transient"] = True
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
    # While shut down with a RESUMABLE reason: the cpu_time and the scan time (`now`) of the
    # last scan that saw it so (None when no scan of this table has yet). A resume fires
    # nothing, so these are what tells, at its death, whether it ran again.
    suspend_cpu: int | None = None
    suspend_seen: float | None = None
    unique_id: int = 0  # the hypervisor's id of the incarnation; 0: not known

    @property
    def paused(self) -> bool:
        """Held paused, as the events tell it: a dead domain is not."""
        return self.state != DEAD and bool(self.flags & DOMINF_PAUSED)


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


def check_domid(domid: object) -> int:
    """`domid` if it is an ordinary domain's, or ValueError."""
    if not _is_int(domid) or not 0 <= domid < DOMID_FIRST_RESERVED:
        raise ValueError(f"domid {domid!r} out of range 0..{DOMID_FIRST_RESERVED - 1}")
    return domid


DUMP_BATCH = 512  # rows of a dump_batches() batch


class DumpBatches(NamedTuple):
    """A table's dump, read a batch of rows at a time: `head` is the dump without its
    "rows", `batches` the rows in domid order, lists of at most the batch size."""

    head: dict
    batches: Iterator[list[dict]]


def split_dump(dump: Mapping, batch: int = DUMP_BATCH) -> DumpBatches:
    """A whole `dump()` as its DumpBatches."""
    head = dict(dump)
    rows = head.pop("rows")
    return DumpBatches(head, (rows[i : i + batch] for i in range(0, len(rows), batch)))


class DomainTable:
    """The scanner's table of domains, keyed by domid."""

    def __init__(self, seq: int = 0, *, suspend_window: float = DEFAULT_SUSPEND_WINDOW) -> None:
        self._window = check_suspend_window(suspend_window)
        self._seq = seq
        self._gen = 0
        self._doms: dict[int, Entry] = {}

    # -- the table ------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The last seq handed out."""
        return self._seq

    @property
    def suspend_window(self) -> float:
        return self._window

    @property
    def n_shutdown(self) -> int:
        """Domains shut down but not dead: while any exist, the daemon polls."""
        return sum(1 for e in self._doms.values() if e.state == SHUTDOWN)

    @property
    def n_paused(self) -> int:
        """Domains held paused and not dead: an unpause fires nothing either."""
        return sum(1 for e in self._doms.values() if e.paused)

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
        out = []
        for domid in sorted(wanted):
            e = self._doms[domid]
            row: dict = {"domid": domid, "uuid": uuid_str(e.handle)}
            if e.unique_id:
                row[INCARNATION] = incarnation_text(e.unique_id)
            row.update(state=e.state, reason=reason_name(e.reason), name=e.name, paused=e.paused)
            out.append(row)
        return out

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
                "suspend_cpu": e.suspend_cpu,
                "suspend_seen": e.suspend_seen,
                "unique_id": e.unique_id or None,
            }
            for domid, e in sorted(self._doms.items())
        ]

    # -- the journal's checkpoint -----------------------------------------------------------

    def dump_batches(self, batch: int = DUMP_BATCH) -> DumpBatches:
        """`dump()` as it is now, its rows `batch` at a time: the rows of the iterator are
        the table's at this call, whatever the table does while it is read (the checkpoint
        is encoded in a thread while scans go on)."""
        return split_dump(self.dump(), batch)

    def dump(self) -> dict:
        """Everything the diff needs to go on exactly as this table would, as JSON values."""
        return {
            "seq": self._seq,
            "gen": self._gen,
            "rows": [
                dump_row(
                    domid,
                    uuid_str(e.handle),
                    e.flags,
                    e.cpu_time,
                    e.gen,
                    e.state,
                    e.reason,
                    e.name,
                    e.suspend_cpu,
                    e.suspend_seen,
                    e.unique_id,
                )
                for domid, e in sorted(self._doms.items())
            ],
        }

    @classmethod
    def load(cls, dump: object, *, suspend_window: float = DEFAULT_SUSPEND_WINDOW) -> DomainTable:
        """The table a `dump()` was taken of (ValueError naming what is wrong with a bad one)."""
        seq, gen, rows = parse_dump(dump)
        table = cls(seq, suspend_window=suspend_window)
        table._gen = gen
        for r in rows:
            table._doms[r.domid] = Entry(
                r.handle,
                r.flags,
                r.cpu_time,
                r.gen,
                r.state,
                r.reason_code,
                r.name,
                r.suspend_cpu,
                r.suspend_seen,
                r.unique_id,
            )
        return table

    # -- loading and diffing ----------------------------------------------------------------

    def prime(
        self,
        buffer,
        count: int,
        now: float | None = None,
        *,
        unique_id: UniqueIdReader | None = None,
    ) -> None:
        """Replace the table with the batch, without events (the start-up scan); with
        `unique_id`, every domain's id is read (in domid order)."""
        records = _check_batch(buffer, count)
        now = _time.time() if now is None else float(now)
        self._doms = {}
        for rec in sorted(records, key=lambda r: r.domid):
            entry = self._incarnate(rec, _read_id(unique_id, rec.domid))
            entry.state = _state_of(rec)
            entry.reason = rec.reason if rec.shutdown else SHUTDOWN_NONE
            self._seen(entry, rec, now)
            self._doms[rec.domid] = entry

    def diff(
        self,
        buffer,
        count: int,
        now: float | None = None,
        *,
        unique_id: UniqueIdReader | None = None,
        check_ids: bool = False,
    ) -> list[Event]:
        """A full scan: the batch holds every domain; those missing from it are gone.

        With `unique_id`, the id of every incarnation taken in is read; with `check_ids`
        too, first the ids of the batch's domains the table holds (in the batch's order)."""
        records = _check_batch(buffer, count)
        now = _time.time() if now is None else float(now)
        by_domid = {rec.domid: rec for rec in records}
        read = self._check_ids(records, unique_id) if check_ids else {}
        events: list[Event] = []
        for domid in sorted(by_domid.keys() | self._doms.keys()):
            self._apply(domid, by_domid.get(domid), now, events, unique_id, read)
        return events

    def diff_one(
        self,
        domid: int,
        buffer,
        count: int,
        now: float | None = None,
        *,
        unique_id: UniqueIdReader | None = None,
        check_ids: bool = False,
    ) -> list[Event]:
        """A targeted scan of one domid, from getinfolist(first=domid, max>=1).

        Records of other domids in the batch are ignored; if none has `domid`, it is gone.
        `unique_id` and `check_ids` as for `diff`, for `domid` alone.
        """
        if not 0 <= domid < DOMID_FIRST_RESERVED:
            raise ValueError(f"domid {domid} out of range 0..{DOMID_FIRST_RESERVED - 1}")
        records = _check_batch(buffer, count)
        now = _time.time() if now is None else float(now)
        rec = next((r for r in records if r.domid == domid), None)
        read = self._check_ids([rec], unique_id) if check_ids and rec is not None else {}
        events: list[Event] = []
        self._apply(domid, rec, now, events, unique_id, read)
        return events

    def _check_ids(
        self, records: list[DomainRecord], unique_id: UniqueIdReader | None
    ) -> dict[int, int]:
        """The ids, read now, of the domains of `records` that the table holds (those it
        does not are read as they are taken in)."""
        if unique_id is None:
            return {}
        read = {}
        for rec in records:
            if rec.domid in self._doms:
                uid = _read_id(unique_id, rec.domid)
                if uid:
                    read[rec.domid] = uid
        return read

    def transient(
        self, domid: int, uuid: str, name: str | None, now: float | None = None
    ) -> list[Event]:
        """`new` and `death`, both flagged transient, for a domain that came and went between
        two scans (known only from xenstore). They take the next seqs; the table is unchanged.
        """
        check_domid(domid)
        if name is not None and not isinstance(name, str):
            raise TypeError("name must be a str or None")
        if not isinstance(uuid, str):
            raise TypeError("uuid must be a str")
        text = str(_uuid.UUID(uuid))
        now = _time.time() if now is None else float(now)
        born = Event(self._seq + 1, NEW, domid, text, None, now, name, transient=True)
        died = Event(self._seq + 2, DEATH, domid, text, None, now, name, transient=True)
        self._seq += 2
        return [born, died]

    # -- the rules of the event model -------------------------------------------------------

    def _incarnate(self, rec: DomainRecord, unique_id: int) -> Entry:
        self._gen += 1
        return Entry(rec.handle, rec.flags, rec.cpu_time, self._gen, RUNNING, unique_id=unique_id)

    def _emit(self, events: list[Event], kind, domid, entry, reason, now, paused=False) -> None:
        self._seq += 1
        events.append(
            Event(
                self._seq,
                kind,
                domid,
                uuid_str(entry.handle),
                reason_name(reason),
                now,
                entry.name,
                paused=paused,
                incarnation=incarnation_text(entry.unique_id) if entry.unique_id else None,
            )
        )

    def _seen(self, entry: Entry, rec: DomainRecord, now: float) -> None:
        """This scan saw `rec` of `entry`: the entry keeps its values."""
        entry.flags = rec.flags
        entry.cpu_time = rec.cpu_time
        if entry.state == SHUTDOWN and entry.reason in RESUMABLE:
            entry.suspend_cpu, entry.suspend_seen = rec.cpu_time, now
        else:
            entry.suspend_cpu = entry.suspend_seen = None

    @staticmethod
    def _ran_since_suspended(entry: Entry, rec: DomainRecord) -> bool:
        """A dying record whose cpu_time moved past the one seen while suspended: it was
        resumed (which fires nothing) and ran before it died."""
        return entry.suspend_cpu is not None and rec.cpu_time > entry.suspend_cpu

    def _resumed(self, entry: Entry, rec: DomainRecord) -> bool:
        """Whether the record of a shut-down domain proves a resume since the last scan."""
        if rec.shutdown:
            # Xen keeps the first reason until a resume resets it: another reason means
            # the domain was resumed and shut down again.
            if rec.reason != entry.reason:
                return True
            return rec.dying and self._ran_since_suspended(entry, rec)
        if rec.dying:
            return self._ran_since_suspended(entry, rec)
        return True

    @staticmethod
    def _reason_dying(entry: Entry, rec: DomainRecord) -> int:
        """The reason a domain dies with, its record (dying) at hand."""
        if entry.state != SHUTDOWN:
            return SHUTDOWN_NONE
        if entry.reason not in RESUMABLE or rec.shutdown:
            return entry.reason
        # The shutdown flag is gone: the suspend of the last scan holds only if the record
        # shows the domain did not run since.
        if entry.suspend_cpu is not None and rec.cpu_time == entry.suspend_cpu:
            return entry.reason
        return SHUTDOWN_NONE

    def _reason_gone(self, entry: Entry, now: float) -> int:
        """The reason a domain dies with, its record gone."""
        if entry.state != SHUTDOWN:
            return SHUTDOWN_NONE
        if entry.reason not in RESUMABLE:
            return entry.reason
        # Nothing left to compare: a suspend holds only if this scan came within one
        # shutdown poll of the last one that saw the domain still suspended.
        seen = entry.suspend_seen
        if seen is not None and now - seen <= self._window:
            return entry.reason
        return SHUTDOWN_NONE

    def _apply(
        self,
        domid: int,
        rec: DomainRecord | None,
        now: float,
        events: list,
        unique_id: UniqueIdReader | None = None,
        read: Mapping[int, int] | None = None,
    ) -> None:
        """One domain's events for this scan, in their order; the table is updated.
        `read`: the ids read by this scan's check (domid -> id)."""
        entry = self._doms.get(domid)
        uid = read.get(domid, 0) if read else 0

        if entry is not None:
            # Another unique id, another UUID, a cpu_time that went back, or a dead domain
            # no longer dying (Xen never clears `dying`): the domid now holds another
            # incarnation.
            new_incarnation = rec is not None and (
                (uid != 0 and entry.unique_id != 0 and uid != entry.unique_id)
                or rec.handle != entry.handle
                or rec.cpu_time < entry.cpu_time
                or (entry.state == DEAD and not rec.dying)
            )
            if rec is None or new_incarnation:
                # The incarnation we knew is over: it dies (unless it already did) and its
                # record has left the list (even if the domid is already back).
                if entry.state != DEAD:
                    self._emit(events, DEATH, domid, entry, self._reason_gone(entry, now), now)
                self._emit(events, RELEASED, domid, entry, SHUTDOWN_NONE, now)
                del self._doms[domid]
                entry = None
        if rec is None:
            return

        if entry is not None and uid and not entry.unique_id:
            entry.unique_id = uid  # the same incarnation, its id first read now
        if entry is None:
            if not uid:
                uid = _read_id(unique_id, domid)
            entry = self._doms[domid] = self._incarnate(rec, uid)
            paused = bool(rec.flags & DOMINF_PAUSED)
            self._emit(events, NEW, domid, entry, SHUTDOWN_NONE, now, paused)

        if entry.state != DEAD:
            if entry.state == SHUTDOWN and self._resumed(entry, rec):
                entry.state, entry.reason = RUNNING, SHUTDOWN_NONE
                self._emit(events, RESUMED, domid, entry, SHUTDOWN_NONE, now)
            if rec.shutdown and entry.state != SHUTDOWN:
                entry.state, entry.reason = SHUTDOWN, rec.reason
                self._emit(events, SHUTDOWN, domid, entry, rec.reason, now)
            if rec.dying:
                reason = self._reason_dying(entry, rec)
                entry.state, entry.reason = DEAD, reason
                self._emit(events, DEATH, domid, entry, reason, now)
            elif (rec.flags ^ entry.flags) & DOMINF_PAUSED:
                kind = PAUSED if rec.flags & DOMINF_PAUSED else UNPAUSED
                self._emit(events, kind, domid, entry, SHUTDOWN_NONE, now)

        self._seen(entry, rec, now)


def _read_id(unique_id: UniqueIdReader | None, domid: int) -> int:
    """The id `unique_id` reads of `domid`, 0 for none (or no reader)."""
    if unique_id is None:
        return 0
    uid = unique_id(domid)
    if uid is None:
        return 0
    if not _is_int(uid) or not 0 <= uid <= _U64:
        raise TypeError(f"unique_id({domid}) gave {uid!r}, not a 64-bit id or None")
    return uid


# -- dumps: the journal's checkpoint ----------------------------------------------------------


class DumpRow(NamedTuple):
    """One checked row of a dump."""

    domid: int
    handle: bytes
    flags: int
    cpu_time: int
    gen: int
    state: str
    reason_code: int
    name: str | None
    suspend_cpu: int | None
    suspend_seen: float | None
    unique_id: int  # 0: not known


def dump_row(
    domid: int,
    uuid: str,
    flags: int,
    cpu_time: int,
    gen: int,
    state: str,
    reason_code: int,
    name: str | None,
    suspend_cpu: int | None,
    suspend_seen: float | None,
    unique_id: int = 0,
) -> dict:
    """One row of `dump()`, its keys in their order (`incarnation` only where known)."""
    row = {
        "domid": domid,
        "uuid": uuid,
        "flags": flags,
        "cpu_time": cpu_time,
        "gen": gen,
        "state": state,
        "reason_code": reason_code,
        "name": name,
        "suspend_cpu": suspend_cpu,
        "suspend_seen": suspend_seen,
    }
    if unique_id:
        row[INCARNATION] = incarnation_text(unique_id)
    return row


class _BadDump(ValueError):
    pass


def _field(row: Mapping, key: str, where: str) -> Any:
    if key not in row:
        raise _BadDump(f"{where or 'it'} has no {key!r}")
    return row[key]


def _int_field(row: Mapping, key: str, where: str, top: int) -> int:
    """`row[key]`, an integer from 0 to `top`; `where` names the row ("" for the dump)."""
    value = _field(row, key, where)
    if not _is_int(value) or not 0 <= value <= top:
        prefix = f"{where}: " if where else ""
        raise _BadDump(f"{prefix}{key} {value!r} is not an integer from 0 to {top}")
    return value


def _parse_row(row: object, i: int, gen_top: int) -> DumpRow:
    where = f"row {i}"
    if not isinstance(row, Mapping):
        raise _BadDump(f"{where} is not an object")
    domid = _int_field(row, "domid", where, DOMID_FIRST_RESERVED - 1)
    where = f"row {i} (domid {domid})"
    text = _field(row, "uuid", where)
    try:
        handle = _handle_of(text)
    except (AttributeError, TypeError, ValueError):
        raise _BadDump(f"{where}: uuid {text!r} is not a UUID") from None
    flags = _int_field(row, "flags", where, _U32)
    cpu_time = _int_field(row, "cpu_time", where, _U64)
    gen = _int_field(row, "gen", where, gen_top) if "gen" in row else 0
    state = _field(row, "state", where)
    if state not in DOMAIN_STATES:
        raise _BadDump(f"{where}: state {state!r} is not one of {', '.join(DOMAIN_STATES)}")
    reason_code = _int_field(row, "reason_code", where, DOMINF_SHUTDOWNMASK)
    name = row.get("name")
    if name is not None and not isinstance(name, str):
        raise _BadDump(f"{where}: name {name!r} is not a string")
    # The row must say what its flags say, or the diff would read the two differently.
    code = (flags >> DOMINF_SHUTDOWNSHIFT) & DOMINF_SHUTDOWNMASK
    if state == RUNNING and (
        flags & (DOMINF_DYING | DOMINF_SHUTDOWN) or reason_code != SHUTDOWN_NONE
    ):
        raise _BadDump(f"{where}: running, but flags {flags:#x} / reason {reason_code} say not")
    if state == SHUTDOWN and (
        flags & DOMINF_DYING or not flags & DOMINF_SHUTDOWN or code != reason_code
    ):
        raise _BadDump(f"{where}: shut down ({reason_code}), but flags {flags:#x} say not")
    if state == DEAD and not flags & DOMINF_DYING:
        raise _BadDump(f"{where}: dead, but flags {flags:#x} are not dying")
    suspend_cpu = row.get("suspend_cpu")
    suspend_seen = row.get("suspend_seen")
    if suspend_cpu is not None or suspend_seen is not None:
        if state != SHUTDOWN or reason_code not in RESUMABLE:
            raise _BadDump(f"{where}: suspend_cpu/suspend_seen while not suspended")
        if suspend_cpu != cpu_time or not _is_int(suspend_cpu):
            raise _BadDump(f"{where}: suspend_cpu {suspend_cpu!r} is not its cpu_time")
        if (
            not isinstance(suspend_seen, (int, float))
            or isinstance(suspend_seen, bool)
            or not math.isfinite(suspend_seen)
        ):
            raise _BadDump(f"{where}: suspend_seen {suspend_seen!r} is not a time")
        suspend_seen = float(suspend_seen)
    text = row.get(INCARNATION)
    try:
        unique_id = 0 if text is None else parse_incarnation(text)
    except ValueError as exc:
        raise _BadDump(f"{where}: {exc}") from None
    return DumpRow(
        domid,
        handle,
        flags,
        cpu_time,
        gen,
        state,
        reason_code,
        name,
        suspend_cpu,
        suspend_seen,
        unique_id,
    )


def parse_dump(dump: object) -> tuple[int, int, list[DumpRow]]:
    """(seq, gen, rows in domid order) of a `dump()`, or ValueError naming what is wrong."""
    try:
        if not isinstance(dump, Mapping):
            raise _BadDump("it is not an object")
        seq = _int_field(dump, "seq", "", _U64)
        gen = _int_field(dump, "gen", "", _U32)
        rows = _field(dump, "rows", "")
        if not isinstance(rows, list):
            raise _BadDump("rows is not a list")
        out = [_parse_row(row, i, gen) for i, row in enumerate(rows)]
        domids = [r.domid for r in out]
        if len(set(domids)) != len(domids):
            dup = next(d for d in domids if domids.count(d) > 1)
            raise _BadDump(f"domid {dup} has two rows")
    except _BadDump as exc:
        raise ValueError(f"bad table dump: {exc}") from None
    return seq, gen, sorted(out, key=lambda r: r.domid)


# -- replay: a checkpoint brought forward by the journal --------------------------------------


def _flags_of(state: str, reason_code: int, paused: bool) -> int:
    """Flags a record with this state could have: the ones that cannot make a false event."""
    if state == DEAD:
        if reason_code == SHUTDOWN_NONE:
            return DOMINF_DYING | (SHUTDOWN_NONE << DOMINF_SHUTDOWNSHIFT)
        return DOMINF_DYING | DOMINF_SHUTDOWN | (reason_code << DOMINF_SHUTDOWNSHIFT)
    flags = reason_code << DOMINF_SHUTDOWNSHIFT
    if state == SHUTDOWN:
        flags |= DOMINF_SHUTDOWN
    if paused:
        flags |= DOMINF_PAUSED
    return flags


class _BadEvent(ValueError):
    pass


def _event_seq(ev: object, i: int) -> int:
    if not isinstance(ev, Mapping):
        raise _BadEvent(f"event {i} is not an object")
    seq = ev.get("seq")
    if not _is_int(seq) or seq < 0:
        raise _BadEvent(f"event {i}: seq {seq!r} is not an integer >= 0")
    return seq


def _event_fields(ev: Mapping, i: int, seq: int) -> tuple[str, int, str]:
    """(kind, domid, uuid) of journaled event `i` (its seq checked), all checked."""
    kind = ev.get("event")
    domid = ev.get("domid")
    if kind not in EVENT_KINDS:
        raise _BadEvent(f"event {i} (seq {seq}): {kind!r} is not an event kind")
    if not _is_int(domid) or not 0 <= domid < DOMID_FIRST_RESERVED:
        raise _BadEvent(f"event {i} (seq {seq}): domid {domid!r} is out of range")
    try:
        uuid = _uuid_text(ev.get("uuid"))
    except (AttributeError, TypeError, ValueError):
        raise _BadEvent(f"event {i} (seq {seq}): uuid {ev.get('uuid')!r} is not a UUID") from None
    reason = ev.get("reason")
    if reason is not None and reason not in REASON_CODES:
        raise _BadEvent(f"event {i} (seq {seq}): reason {reason!r} is not a shutdown reason")
    name = ev.get("name")
    if name is not None and not isinstance(name, str):
        raise _BadEvent(f"event {i} (seq {seq}): name {name!r} is not a string")
    if ev.get(INCARNATION) is not None:
        try:
            parse_incarnation(ev[INCARNATION])
        except ValueError as exc:
            raise _BadEvent(f"event {i} (seq {seq}): {exc}") from None
    return kind, domid, uuid


def _replay_one(table: dict[int, dict], ev: Mapping, kind: str, domid: int, uuid: str) -> None:
    row = table.get(domid)
    text = ev.get(INCARNATION)
    uid = 0 if text is None else int(text, 16)
    if kind == NEW:
        if row is not None:
            raise _BadEvent(f"new for domid {domid}, which still holds {row['uuid']}")
        table[domid] = {
            "uuid": uuid,
            "cpu_time": 0,  # any later record's is as large: no false new incarnation
            "gen": None,  # numbered by the caller
            "state": RUNNING,
            "reason_code": SHUTDOWN_NONE,
            "name": ev.get("name"),
            "suspend_cpu": None,
            "suspend_seen": None,
            "paused": ev.get("paused") is True,
            "flags": None,
            "unique_id": uid,
        }
        return
    if row is None or row["uuid"] != uuid or (uid and row["unique_id"] not in (0, uid)):
        raise _BadEvent(f"{kind} for domid {domid} ({uuid}), which the table does not hold")
    if uid:
        row["unique_id"] = uid
    state = row["state"]
    if (kind == RELEASED) != (state == DEAD) or (kind == RESUMED and state != SHUTDOWN):
        raise _BadEvent(f"{kind} for domid {domid} ({uuid}), which is {state}")
    if kind == RELEASED:
        del table[domid]
        return
    if kind in (SHUTDOWN, RESUMED, DEATH):
        row["state"] = {SHUTDOWN: SHUTDOWN, RESUMED: RUNNING, DEATH: DEAD}[kind]
        # A shutdown whose code has no name (a guest may pass any) comes back as 255.
        row["reason_code"] = REASON_CODES.get(ev.get("reason"), SHUTDOWN_NONE)
        if kind == RESUMED:
            row["reason_code"] = SHUTDOWN_NONE
        # Not seen suspended by any scan yet: at its death the daemon cannot tell.
        row["suspend_cpu"] = row["suspend_seen"] = None
    if kind in (PAUSED, UNPAUSED, DEATH):
        row["paused"] = kind == PAUSED
    if ev.get("name") is not None:
        row["name"] = ev["name"]
    row["flags"] = None  # made again from the state below


def replay(dump: object, events: Iterable[object]) -> dict:
    """The dump of the table as it stood after the journaled `events` (frames, parsed) that
    come after `dump` (seq > dump["seq"]; older ones are skipped). Rows the events touch get
    flags made from their state, and a new incarnation cpu_time 0: values no record can make
    a false event of. ValueError names the first event that does not fit the table."""
    seq, gen, rows = parse_dump(dump)
    table: dict[int, dict] = {}
    for r in rows:
        table[r.domid] = {
            "uuid": uuid_str(r.handle),
            "cpu_time": r.cpu_time,
            "gen": r.gen,
            "state": r.state,
            "reason_code": r.reason_code,
            "name": r.name,
            "suspend_cpu": r.suspend_cpu,
            "suspend_seen": r.suspend_seen,
            "paused": bool(r.flags & DOMINF_PAUSED),
            "flags": r.flags,
            "unique_id": r.unique_id,
        }
    try:
        for i, ev in enumerate(events):
            ev_seq = _event_seq(ev, i)
            if ev_seq <= seq:
                continue
            if ev_seq != seq + 1:
                raise _BadEvent(f"event {i}: seq {ev_seq} follows {seq} (events are missing)")
            seq = ev_seq
            kind, domid, uuid = _event_fields(ev, i, ev_seq)
            if ev.get("transient") is True:
                continue  # reported for a domain the table never held
            try:
                _replay_one(table, ev, kind, domid, uuid)
            except _BadEvent as exc:
                raise _BadEvent(f"event {i} (seq {ev_seq}): {exc}") from None
            if kind == NEW:
                gen += 1
                table[domid]["gen"] = gen
    except _BadEvent as exc:
        raise ValueError(f"journal does not fit the table: {exc}") from None
    if gen > _U32:
        raise ValueError(f"journal does not fit the table: {gen} incarnations")
    out = []
    for domid, row in sorted(table.items()):
        if row["flags"] is None:
            row["flags"] = _flags_of(row["state"], row["reason_code"], row["paused"])
        out.append(
            dump_row(
                domid,
                row["uuid"],
                row["flags"],
                row["cpu_time"],
                row["gen"],
                row["state"],
                row["reason_code"],
                row["name"],
                row["suspend_cpu"],
                row["suspend_seen"],
                row["unique_id"],
            )
        )
    return {"seq": seq, "gen": gen, "rows": out}
