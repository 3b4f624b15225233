"""A position in the daemon's event stream: `HISTORY:SEQ`, or `SEQ` in the current history.

`history` names the lineage of a daemon's state (it survives daemon restarts, not a new
boot or a lost state directory); `seq` is the last event already seen. Resuming from a
cursor replays every later event the daemon's journal still holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CURSOR = re.compile(r"(?:(?P<history>[0-9A-Za-z_-]+):)?(?P<seq>[0-9]+)")


@dataclass(frozen=True)
class Cursor:
    history: str | None  # None: whatever history the daemon has now
    seq: int

    def __str__(self) -> str:
        return f"{self.history}:{self.seq}" if self.history else str(self.seq)

    @classmethod
    def parse(cls, value: str | int | Cursor) -> Cursor:
        """`HISTORY:SEQ`, `SEQ` (a str or an int) or a Cursor. Raises ValueError."""
        if isinstance(value, Cursor):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"a cursor's seq is never negative, not {value}")
            return cls(None, value)
        match = _CURSOR.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise ValueError(
                f"a cursor is SEQ or HISTORY:SEQ (as `xenmux watch` prints at exit), not {value!r}"
            )
        return cls(match["history"], int(match["seq"]))
