"""A host's table as the pool stream tells it: rows by domid, moved by events.

The bridge keeps one (what JetStream has acknowledged), and so does a pool reader for each
host (the bucket's rows brought up to date with the stream). Each event sets a row's state
outright, never relative to what it was, so replaying an event the rows already reflect
changes nothing: a reader may start from rows a little ahead of its stream position.
"""

from __future__ import annotations

from mux.client.words import PAUSED, UNPAUSED
from mux.protocol import DEAD, DEATH, NEW, RELEASED, RESUMED, RUNNING, SHUTDOWN


def row_from_snapshot(host: str, row: dict, seq: int, time: float) -> dict:
    out = {
        "host": host,
        "domid": row["domid"],
        "uuid": row["uuid"],
        "state": row["state"],
        "reason": row.get("reason"),
        "name": row.get("name"),
        "seq": seq,
        "time": time,
    }
    if row.get("paused"):
        out["paused"] = True
    return out


def apply(rows: dict[int, dict], host: str, event: dict) -> bool:
    """Apply one event to `rows` (domid -> row); True when the domid's row changed."""
    domid = event["domid"]
    kind = event["event"]
    old = rows.get(domid)
    if kind == RELEASED:
        if old is not None and old["uuid"] == event["uuid"]:
            del rows[domid]
            return True
        return False
    if kind == NEW or old is None or old["uuid"] != event["uuid"]:
        if kind not in (NEW, SHUTDOWN, RESUMED, DEATH, PAUSED, UNPAUSED):
            return False
        old = {"host": host, "domid": domid, "uuid": event["uuid"], "state": RUNNING}
        old["reason"] = None
        old["name"] = None
        if kind == NEW and event.get("paused"):
            old["paused"] = True
    row = dict(old)
    if kind == SHUTDOWN:
        row["state"] = SHUTDOWN
        row["reason"] = event.get("reason")
    elif kind == RESUMED:
        row["state"] = RUNNING
        row["reason"] = None
    elif kind == DEATH:
        row["state"] = DEAD
        row["reason"] = event.get("reason")
    elif kind == PAUSED:
        row["paused"] = True
    elif kind == UNPAUSED:
        row.pop("paused", None)
    if event.get("name"):
        row["name"] = event["name"]
    row["seq"] = event.get("seq", row.get("seq"))
    row["time"] = event.get("time", row.get("time"))
    rows[domid] = row
    return True


def known_states(rows: dict[int, dict]) -> dict[int, tuple[str, str, str | None]]:
    """domid -> (uuid, state, reason): what a snapshot is compared with after a gap."""
    return {d: (r["uuid"], r["state"], r.get("reason")) for d, r in rows.items()}
