"""Events as watch and wait print them: JSON lines, or rows of a table with names."""

from __future__ import annotations

import sys

from mux.commands.output import (
    ISO,
    TABLE,
    UNIX,
    Column,
    StreamTable,
    emit,
    json_time,
    table,
    table_time,
)

TIME_WIDTH = {ISO: 29, UNIX: 17, None: 12}
NAME_WIDTH = 20
# Flags shown after the reason: what makes an event other than a plain firing's.
FLAGS = ("missed", "late", "transient", "paused")


def _columns(time_mode: str | None) -> list[Column]:
    return [
        Column("TIME", TIME_WIDTH[time_mode]),
        Column("SEQ", 8, right=True),
        Column("DOMID", 5, right=True),
        Column("NAME", NAME_WIDTH),
        Column("EVENT", 8),
        Column("REASON", 22),
        Column("UUID", 36),
    ]


DOMAIN_COLUMNS = (Column("DOMID", right=True), "NAME", "STATE", "REASON", "UUID")


def domain_row(r: dict) -> tuple:
    """A snapshot row (or a `list` one) under DOMAIN_COLUMNS."""
    return (r["domid"], r.get("name") or "-", r["state"], r.get("reason") or "", r["uuid"])


def domain_table(rows: list[dict], absent: list[int] = ()) -> None:
    more = [(d, "-", "absent", "", "") for d in absent]
    table(DOMAIN_COLUMNS, [domain_row(r) for r in rows] + more, out=sys.stdout)


class EventPrinter:
    """Prints events (and a snapshot) as `-o` and `--time` ask."""

    def __init__(self, output: str, time_mode: str | None, names: dict[int, str | None]):
        self.output = output
        self.time_mode = time_mode
        self.names = names  # domid -> name, from the snapshot and then the events
        self.table = StreamTable(_columns(time_mode)) if output == TABLE else None
        self.headed = False

    @classmethod
    def for_snapshot(cls, args, rows: list[dict]) -> EventPrinter:
        """As `-o` and `--time` ask, knowing the names of the snapshot's domains."""
        return cls(args.output, args.time, {r["domid"]: r.get("name") for r in rows})

    def snapshot(self, rows: list[dict], absent: list[int], **mark) -> None:
        if self.table is not None:
            domain_table(rows, absent)
            return
        for row in rows:
            emit({"snapshot": True, **mark, **row})
        for domid in absent:
            emit({"snapshot": True, **mark, "domid": domid, "state": "absent"})

    def header(self) -> None:
        if self.table is not None and not self.headed:
            self.headed = True
            self.table.header()

    def event(self, ev: dict) -> None:
        if ev.get("name"):
            self.names[ev["domid"]] = ev["name"]
        if self.table is None:
            emit(json_time(ev, self.time_mode))
            return
        self.header()
        flags = [f for f in FLAGS if ev.get(f)]
        reason = " ".join([ev.get("reason") or "", *(f"({f})" for f in flags)]).strip()
        name = self.names.get(ev["domid"]) or "-"
        if len(name) > NAME_WIDTH:
            name = name[: NAME_WIDTH - 1] + "~"
        self.table.row(
            (
                table_time(ev.get("time"), self.time_mode),
                ev.get("seq", "-"),
                ev["domid"],
                name,
                ev["event"],
                reason,
                ev["uuid"],
            )
        )
