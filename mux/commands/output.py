"""Output helpers: JSON lines for programs (flushed per line), aligned tables for people."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence


def emit(obj: dict) -> None:
    """One JSON line, flushed at once so pipes and files see it as it happens."""
    sys.stdout.write(json.dumps(obj, separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence], *, out=None) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    text = "\n".join(lines) + "\n"
    if out is not None:
        out.write(text)
        out.flush()
    return text


def clock(t: float | None) -> str:
    if t is None:
        return ""
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}"


def fail(command: str, message: str, status: int = 1) -> int:
    print(f"xenmux {command}: {message}", file=sys.stderr)
    return status
