"""Output for programs and for people: `-o json` (JSON lines, flushed per line) or
`-o table` (aligned columns), and `--time iso|unix` for the times in either."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

JSON = "json"
TABLE = "table"
ISO = "iso"
UNIX = "unix"


def add_output_arguments(
    p: argparse.ArgumentParser, default: str, *, alias: str | None = None, times: bool = False
) -> None:
    """`-o json|table`, the old flag kept as an alias of one of them (`--json` means
    `-o json`, `--pretty` means `-o table`), and `--time` where the output has times."""
    p.add_argument(
        "-o",
        "--output",
        choices=(JSON, TABLE),
        default=default,
        help=f"json: one JSON object per line, for programs; table: aligned columns, for "
        f"people (default: {default})",
    )
    if alias is not None:
        same = TABLE if alias == "--pretty" else JSON
        p.add_argument(
            alias, dest="output", action="store_const", const=same, help=f"same as -o {same}"
        )
    if times:
        p.add_argument(
            "--time",
            choices=(ISO, UNIX),
            help="how times are printed: iso (ISO 8601, local time with its offset) or unix "
            "(seconds since the epoch); default: unix in JSON, the local time of day in tables",
        )


def emit(obj: dict) -> None:
    """One JSON line, flushed at once so pipes and files see it as it happens."""
    sys.stdout.write(json.dumps(obj, separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


def iso(t: float, timespec: str = "microseconds") -> str:
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec=timespec)


def clock(t: float | None) -> str:
    if t is None:
        return ""
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}"


def json_time(obj: dict, mode: str | None) -> dict:
    """`obj` with its `time` as `--time` asks (JSON keeps seconds unless iso is asked)."""
    if mode == ISO and isinstance(obj.get("time"), int | float):
        return {**obj, "time": iso(obj["time"])}
    return obj


def table_time(t: float | None, mode: str | None) -> str:
    if t is None:
        return "-"
    if mode == ISO:
        return iso(t, "milliseconds")
    if mode == UNIX:
        return f"{t:.6f}"
    return clock(t)


@dataclass(frozen=True)
class Column:
    header: str
    width: int = 0  # 0: as wide as the widest cell (known only when all rows are)
    right: bool = False  # numbers are right-aligned, under a right-aligned header

    def cell(self, value: object, width: int) -> str:
        text = "" if value is None else str(value)
        return text.rjust(width) if self.right else text.ljust(width)


def line(columns: Sequence[Column], cells: Sequence[object], widths: Sequence[int]) -> str:
    parts = [c.cell(v, w) for c, v, w in zip(columns, cells, widths, strict=True)]
    return "  ".join(parts).rstrip()


def table(headers: Sequence[str | Column], rows: Sequence[Sequence], *, out=None) -> str:
    """A whole table at once: each column as wide as its widest cell."""
    columns = [h if isinstance(h, Column) else Column(h) for h in headers]
    cells = [[c.header for c in columns]] + [
        ["" if v is None else str(v) for v in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    text = "".join(line(columns, r, widths) + "\n" for r in cells)
    if out is not None:
        out.write(text)
        out.flush()
    return text


class StreamTable:
    """A table printed row by row as events come: fixed widths, the header above them."""

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = list(columns)
        self.widths = [max(c.width, len(c.header)) for c in self.columns]

    def header(self) -> None:
        self._print([c.header for c in self.columns])

    def row(self, cells: Sequence[object]) -> None:
        self._print(cells)

    def _print(self, cells: Sequence[object]) -> None:
        sys.stdout.write(line(self.columns, cells, self.widths) + "\n")
        sys.stdout.flush()


def fail(command: str, message: str, status: int = 1) -> int:
    print(f"xenmux {command}: {message}", file=sys.stderr, flush=True)
    return status
