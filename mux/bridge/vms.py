"""Where each VM of the pool is: one row per UUID, across hosts.

A migrating VM has a row on each host for a while: suspended (then dead, then gone) on the
one it leaves, new on the one it reaches. The live row wins, so the VM is shown where it
runs and never as dead while it runs anywhere; only when no host runs it is its dead row
shown.
"""

from __future__ import annotations

from collections.abc import Iterable

from mux.protocol import DEAD, RUNNING, SHUTDOWN

_RANK = {RUNNING: 3, SHUTDOWN: 2, DEAD: 1}


def is_live(row: dict) -> bool:
    return row.get("state") in (RUNNING, SHUTDOWN)


def _rank(row: dict) -> tuple:
    return (_RANK.get(row.get("state"), 0), row.get("time") or 0.0, row.get("seq") or 0)


def placements(rows: Iterable[dict]) -> list[dict]:
    """One row per UUID (the one the VM is at), sorted by host then domid."""
    best: dict[str, dict] = {}
    for row in rows:
        uuid = row.get("uuid")
        if not isinstance(uuid, str):
            continue
        if uuid not in best or _rank(row) > _rank(best[uuid]):
            best[uuid] = row
    return sorted(best.values(), key=lambda r: (str(r.get("host")), r.get("domid", 0)))


def rows_of(rows: Iterable[dict], uuid: str) -> list[dict]:
    return [r for r in rows if r.get("uuid") == uuid]
