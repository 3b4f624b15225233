"""The table across a restart: its dump for the checkpoint, its load, and the replay of the
journal's tail onto a dump; plus the `late` flag on the events of the first scan after.

The scanner twins are to offer these themselves (`table.dump()`, `DomainTable.load(dump)`,
`mux.reference.replay(dump, events)`, a settable `Event.late`); until they do, each
function here does it with what the twins have today (`rows()`, `prime()`, the frame) and
uses theirs as soon as it is there. When both twins have them, the callers can call the
twins directly and this module can go.
"""

from __future__ import annotations

import uuid as _uuid
from collections.abc import Iterable

from mux import reference
from mux.protocol import DEAD, DEATH, NEW, RELEASED, RESUMED, RUNNING, SHUTDOWN
from mux.records import (
    DOMINF_DYING,
    DOMINF_SHUTDOWN,
    DOMINF_SHUTDOWNMASK,
    DOMINF_SHUTDOWNSHIFT,
    REASON_CODES,
    SHUTDOWN_NONE,
    DomainRecord,
    pack_all,
)

_EVENT_BITS = DOMINF_DYING | DOMINF_SHUTDOWN | (DOMINF_SHUTDOWNMASK << DOMINF_SHUTDOWNSHIFT)


def dump_table(table) -> dict:
    """Everything the diff needs to go on from where `table` is (JSON-serializable)."""
    if hasattr(table, "dump"):
        return table.dump()
    rows = table.rows()
    return {
        "seq": table.seq,
        "gen": max((r["gen"] for r in rows), default=0),
        "rows": [
            {
                "domid": r["domid"],
                "uuid": r["uuid"],
                "flags": r["flags"],
                "cpu_time": r["cpu_time"],
                "state": r["state"],
                "reason_code": r["reason_code"],
                "name": r["name"],
                "suspend_cpu": None,
                "suspend_seen": None,
            }
            for r in rows
        ],
    }


def load_table(table_class, dump: dict):
    """A table of `table_class` that goes on exactly as the dumped one would."""
    if hasattr(table_class, "load"):
        return table_class.load(dump)
    table = table_class(seq=dump["seq"])
    rows = sorted(dump["rows"], key=lambda r: r["domid"])
    records = [
        DomainRecord(
            r["domid"],
            _flags(r["flags"], r["state"], r["reason_code"]),
            _uuid.UUID(r["uuid"]).bytes,
            r["cpu_time"],
        )
        for r in rows
    ]
    table.prime(pack_all(records), len(records))
    for r in rows:
        if r["name"] is not None:
            table.set_name(r["domid"], r["name"])
    return table


def _flags(flags: int, state: str, reason: int) -> int:
    """`flags` with the bits that make events set as `state` and `reason` say: what prime()
    reads back into the same state and reason."""
    if state == RUNNING:
        return flags & ~(DOMINF_DYING | DOMINF_SHUTDOWN)
    bits = (reason << DOMINF_SHUTDOWNSHIFT) | (DOMINF_SHUTDOWN if reason != SHUTDOWN_NONE else 0)
    if state == DEAD:
        bits |= DOMINF_DYING
    else:
        bits |= DOMINF_SHUTDOWN
    return (flags & ~_EVENT_BITS) | bits


def replay(dump: dict, events: Iterable[dict]) -> dict:
    """The dump as it stands after the journaled `events` (frames, parsed) after its seq.

    What the events do not say takes the values that cannot make a false event: a domain
    born after the dump has cpu_time 0 (any record is at or after it), its flags follow
    from its state."""
    own = getattr(reference, "replay", None)
    if own is not None:
        return own(dump, events)
    rows = {r["domid"]: dict(r) for r in dump["rows"]}
    seq, gen = dump["seq"], dump["gen"]
    for ev in events:
        if ev["seq"] <= seq:
            continue
        seq = ev["seq"]
        domid, kind = ev["domid"], ev["event"]
        reason = REASON_CODES.get(ev.get("reason"), SHUTDOWN_NONE)
        if kind == RELEASED:
            rows.pop(domid, None)
            continue
        if kind == NEW:
            gen += 1
            rows[domid] = {
                "domid": domid,
                "uuid": ev["uuid"],
                "flags": SHUTDOWN_NONE << DOMINF_SHUTDOWNSHIFT,
                "cpu_time": 0,
                "state": RUNNING,
                "reason_code": SHUTDOWN_NONE,
                "name": None,
                "suspend_cpu": None,
                "suspend_seen": None,
            }
        row = rows.get(domid)
        if row is None or row["uuid"] != ev["uuid"]:
            continue  # not the incarnation the table holds: nothing to change
        if "name" in ev:
            row["name"] = ev["name"]
        state = {SHUTDOWN: SHUTDOWN, RESUMED: RUNNING, DEATH: DEAD}.get(kind)
        if state is not None:
            row["state"] = state
            row["reason_code"] = SHUTDOWN_NONE if kind == RESUMED else reason
            row["flags"] = _flags(row["flags"], state, row["reason_code"])
    return {"seq": seq, "gen": gen, "rows": [rows[d] for d in sorted(rows)]}


def mark_late(events: list) -> list:
    """The events of the first scan after a restart, each flagged `"late": true`."""
    try:
        for ev in events:
            ev.late = True
    except AttributeError:  # the twin's Event has no `late` yet: wrap its frame
        return [_LateEvent(ev) for ev in events]
    return events


class _LateEvent:
    """An event whose frame carries `"late": true` (before `time`, as the key order wants)."""

    __slots__ = ("_event", "_frame")

    late = True

    def __init__(self, event) -> None:
        self._event = event
        self._frame: bytes | None = None

    def __getattr__(self, name: str):
        return getattr(self._event, name)

    @property
    def name(self) -> str | None:
        return self._event.name

    @name.setter
    def name(self, value: str | None) -> None:
        self._event.name = value

    def frame(self) -> bytes:
        if self._frame is None:
            inner = self._event.frame()
            cut = inner.rindex(b', "time": ')
            self._frame = inner[:cut] + b', "late": true' + inner[cut:]
        return self._frame

    def to_dict(self) -> dict:
        d = self._event.to_dict()
        t = d.pop("time")
        d["late"] = True
        d["time"] = t
        return d
