"""Where a host stands in the pool stream: its rows as of its last message, and the cursor.

After every (re)connect the bridge asks JetStream, not its memory: the bucket's rows and
checkpoint for its host, brought up to date with the host's stream messages after the
checkpoint. The last of those messages names the daemon's cursor in its Nats-Msg-Id
(`<history>:<seq>`), found with a last-message-by-subject lookup on `xenmux.events.<host>.>`
(2.9.10 takes a wildcard there). A message the bridge made up after a gap (`...:gap:...`)
as the last one means that gap's resync did not finish: it is done again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mux.bridge import names, view
from mux.bridge.natsconn import Connection
from mux.bridge.store import last_message, read_bucket, stream_messages_after


@dataclass
class Position:
    rows: dict[int, dict] = field(default_factory=dict)  # domid -> row, as of stream_seq
    present: set[int] = field(default_factory=set)  # the host's row keys in the bucket now
    history: str | None = None  # the daemon's history the host's last message belongs to
    seq: int | None = None  # the daemon seq to resume after; None: resync from a snapshot
    stream_seq: int = 0  # the host's last stream message applied to rows
    recorded: bool = False  # the pool has any record of this host (rows, checkpoint, messages)

    def cursor(self) -> str | None:
        if self.history is None or self.seq is None:
            return None
        return f"{self.history}:{self.seq}"


def parse_event(payload: bytes | None) -> dict | None:
    """The event a message carries, or None for a payload that is not one."""
    try:
        event = json.loads(payload or b"")
    except ValueError:
        return None
    if not isinstance(event, dict) or "domid" not in event or "event" not in event:
        return None
    return event


def parse_message(headers: dict, payload: bytes) -> tuple[dict, str, int | None] | None:
    """(event, history, seq) of one of the bridge's messages (seq None: made up after a
    gap), or None for a message that is not one."""
    parsed = names.parse_msg_id(headers.get("Nats-Msg-Id", ""))
    event = parse_event(payload)
    if parsed is None or event is None:
        return None
    return event, parsed[0], parsed[1]


def split_bucket(values: dict[str, dict]) -> tuple[dict[str, dict[int, dict]], dict[str, dict]]:
    """The bucket's values as (host token -> domid -> row, host token -> checkpoint)."""
    rows: dict[str, dict[int, dict]] = {}
    checkpoints: dict[str, dict] = {}
    for key, value in values.items():
        parsed = names.parse_key(key)
        if parsed is None:
            continue
        host, domid = parsed
        if domid is None:
            checkpoints[host] = value
        elif isinstance(value.get("uuid"), str):
            rows.setdefault(host, {})[domid] = value
    return rows, checkpoints


async def replay_tail(
    conn: Connection, stream: str, host: str, after: int, rows: dict[int, dict]
) -> tuple[str, int | None, int] | None:
    """Apply the host's stream messages after `after` to its rows; (history, seq, stream
    seq) of the last one, or None when there were none."""
    last = None
    tail = await stream_messages_after(conn.jsm, stream, names.host_subjects(host), after)
    for stream_seq, _subject, headers, payload in tail:
        parsed = parse_message(headers, payload)
        if parsed is None:
            continue
        event, history, seq = parsed
        view.apply(rows, event.get("host") or names.decode_host(host), event)
        last = (history, seq, stream_seq)
    return last


async def load_position(conn: Connection, stream: str, bucket: str, host: str) -> Position:
    values = await read_bucket(conn.js, bucket, f"{host}.*")
    by_host, checkpoints = split_bucket(values)
    pos = Position(rows=by_host.get(host, {}))
    pos.present = set(pos.rows)
    pos.recorded = bool(pos.rows)
    checkpoint = checkpoints.get(host)
    if checkpoint is not None:
        pos.history = checkpoint.get("history")
        pos.seq = checkpoint.get("seq")
        pos.stream_seq = int(checkpoint.get("stream_seq") or 0)
        pos.recorded = True
        last = await replay_tail(conn, stream, host, pos.stream_seq, pos.rows)
    else:
        # No checkpoint: only the last message, for the cursor; the rows are what they are.
        msg = await last_message(conn.jsm, stream, names.host_subjects(host))
        last = None
        if msg is not None:
            parsed = parse_message(msg.headers or {}, msg.data or b"")
            if parsed is not None:
                last = (parsed[1], parsed[2], msg.seq)
    if last is not None:
        pos.history, pos.seq, pos.stream_seq = last
        pos.recorded = True
    return pos
