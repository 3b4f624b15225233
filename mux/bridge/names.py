"""Every name the pool stream and table use: subjects, KV keys, message ids, defaults.

Subjects are `xenmux.events.<host>.<domid>.<kind>`, KV keys `<host>.<domid>`, so a host must
be one subject token and one KV key token. A host name is kept as it is when it consists of
ASCII letters, digits and `-` only; any other byte (the dots of a FQDN, `_`, `*`, `>`,
spaces, UTF-8) is written `_XX`, its hex value: `node1.pool` -> `node1_2epool`. `_` itself is
the escape, so the encoding is one-to-one and `decode_host` inverts it.
"""

from __future__ import annotations

import re

SUBJECT_ROOT = "xenmux.events"
DEFAULT_STREAM = "xenmux-events"
DEFAULT_BUCKET = "xenmux-domains"

# The stream's limits when the bridge creates it (docs/pool.md): the stream is the pool's
# record, kept a week or until it holds this many bytes, whichever comes first.
DEFAULT_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_MAX_BYTES = 1 << 30
# JetStream drops a message whose Nats-Msg-Id it has seen within this window. The bridge's
# only doubt about a message lasts one ack timeout (seconds), far within it.
DUPLICATE_WINDOW = 120.0

# The key of a host's checkpoint in the bucket, beside its `<host>.<domid>` rows: up to which
# stream message the rows of that host are written (mux/bridge/table.py).
CHECKPOINT_TOKEN = "checkpoint"

_PLAIN = re.compile(rb"[A-Za-z0-9-]")
_ENCODED = re.compile(r"^(?:[A-Za-z0-9-]|_[0-9a-f]{2})+$")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def encode_host(name: str) -> str:
    """The host's subject token. Raises ValueError for an empty name."""
    if not name:
        raise ValueError("the host name is empty")
    raw = name.encode()
    return "".join(
        chr(b) if _PLAIN.fullmatch(raw[i : i + 1]) else f"_{b:02x}" for i, b in enumerate(raw)
    )


def decode_host(token: str) -> str:
    """The host name a token stands for. Raises ValueError if it is not an encoded name."""
    if not _ENCODED.match(token):
        raise ValueError(f"{token!r} is not an encoded host name")
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    return out.decode(errors="replace")


def check_stream_name(name: str) -> str:
    if not _STREAM_NAME.match(name):
        raise ValueError(f"stream name {name!r}: use letters, digits, '-' and '_' only")
    return name


def check_consumer_name(name: str) -> str:
    if not _STREAM_NAME.match(name):
        raise ValueError(f"consumer name {name!r}: use letters, digits, '-' and '_' only")
    return name


def check_bucket_name(name: str) -> str:
    if not _BUCKET_NAME.match(name):
        raise ValueError(f"bucket name {name!r}: use letters, digits, '-' and '_' only")
    return name


def event_subject(host: str, domid: int, kind: str) -> str:
    """The subject of one event; `host` is already a token (encode_host)."""
    return f"{SUBJECT_ROOT}.{host}.{domid}.{kind}"


def host_subjects(host: str) -> str:
    """Every event of one host, as a subject filter."""
    return f"{SUBJECT_ROOT}.{host}.>"


def filter_subject(host: str | None = None, domid: int | None = None, kind: str | None = None):
    """A subject filter for some host, domid and kind (None: any)."""
    parts = [
        "*" if host is None else host,
        "*" if domid is None else str(domid),
        "*" if kind is None else kind,
    ]
    if parts == ["*", "*", "*"]:
        return f"{SUBJECT_ROOT}.>"
    return f"{SUBJECT_ROOT}.{'.'.join(parts)}"


def parse_subject(subject: str) -> tuple[str, int, str] | None:
    """(host token, domid, kind) of an event subject, or None for another subject."""
    prefix = SUBJECT_ROOT + "."
    if not subject.startswith(prefix):
        return None
    parts = subject[len(prefix) :].split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


def row_key(host: str, domid: int) -> str:
    return f"{host}.{domid}"


def checkpoint_key(host: str) -> str:
    return f"{host}.{CHECKPOINT_TOKEN}"


def parse_key(key: str) -> tuple[str, int | None] | None:
    """(host token, domid) of a row key, (host token, None) of a checkpoint key, else None."""
    host, sep, rest = key.partition(".")
    if not sep or not host:
        return None
    if rest == CHECKPOINT_TOKEN:
        return host, None
    if rest.isdigit():
        return host, int(rest)
    return None


# -- message ids -----------------------------------------------------------------------------
# A live event's Nats-Msg-Id is `<history>:<seq>`: the daemon's cursor, unique within the
# pool (histories are random) and the same however often the bridge publishes it. An event
# the bridge made up after a gap (a death it missed) has no seq; its id names what it says,
# `<history>:gap:<domid>:<uuid>:<kind>`, so a bridge that retries the same gap publishes it
# once.


def event_msg_id(history: str, seq: int) -> str:
    return f"{history}:{seq}"


def missed_msg_id(history: str, event: dict) -> str:
    parts = [history, "gap", str(event["domid"]), event["uuid"], event["event"]]
    if event.get("reason"):
        parts.append(event["reason"])
    return ":".join(parts)


def parse_msg_id(msg_id: str) -> tuple[str, int | None] | None:
    """(history, seq) of a live event's id, (history, None) of a missed one's, else None."""
    history, sep, rest = msg_id.partition(":")
    if not sep or not history:
        return None
    if rest.isdigit():
        return history, int(rest)
    if rest.startswith("gap:"):
        return history, None
    return None
