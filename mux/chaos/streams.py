"""What each subscriber of a chaos run received, read back from its log as a stream of items.

Two log formats: the lean C subscriber's `--follow` lines (mux/bench/subscriber.c: `Q`, `J`,
`G`, `E`, `F`, `X`, one connection per subscriber) and the JSON lines of the `mux.client`
subscribers (mux/chaos/wildsub.py). Both become the same items, in the order received:

    Relist    the subscriber's view replaced by a snapshot: the first subscribe, a reply with
              `gap`, or a reply that neither replayed from the cursor nor said gap
    Resumed   a reply that serves the cursor: the journal's events since it follow
    Reconnect mux.client reconnected (it replays or, after a gap, synthesises `missed` events)
    Frame     an event frame (or a latest-mode `state` frame)
    Refused   a subscribe answered with an error
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

PER_DOMID = "per-domid"
WILDCARD = "wildcard"
LATEST = "latest"
SUBSCRIBER_KINDS = (PER_DOMID, WILDCARD, LATEST)


class StreamError(ValueError):
    """A subscriber log that cannot be read, or a subscriber that failed (its message)."""


def journal_would_serve(cursor: int | None, history: str | None, hello: dict) -> bool:
    """Whether the daemon that answered `hello` (after the resubscribe) still journals
    `cursor`: the contract serves `oldest_seq - 1 <= since <= seq` in the same history.
    A daemon whose hello names no `oldest_seq` keeps no journal, which the contract
    requires; it is judged as if it would have served. `oldest_seq` only grows within a
    history, so a hello answered after the reply proves what the journal held at it."""
    if cursor is None:
        return False
    if history is not None and hello.get("history") not in (None, history):
        return False  # another history: a gap is the only answer
    oldest = hello.get("oldest_seq")
    if oldest is None:
        return True
    return oldest - 1 <= cursor <= hello.get("seq", cursor)


@dataclass
class Relist:
    t: int
    rows: dict[int, dict]
    absent: list[int]
    cause: str  # "initial", "gap", "ignored" (a cursor sent, neither served nor gap), "relist"
    space: str  # the seq space frames after it belong to (the history, when named)
    seq: int
    needless: bool = False  # a gap the journal could have served
    history_changed: bool = False


@dataclass
class Resumed:
    t: int
    since: int
    seq: int
    space: str


@dataclass
class Reconnect:
    t: int
    cursor: int | None
    hello: dict  # the hello mux.client sent before resubscribing
    needless: bool  # a replay could have served it: `missed` events after it are a fault
    space: str


@dataclass
class Frame:
    t: int
    frame: dict
    space: str
    replayed: bool = False


@dataclass
class Refused:
    t: int
    reply: dict


Item = Relist | Resumed | Reconnect | Frame | Refused


@dataclass
class Subscriber:
    name: str
    kind: str  # one of SUBSCRIBER_KINDS
    domids: frozenset[int] | None  # None: every domain
    items: list[Item] = field(default_factory=list)
    overflows: int = 0
    disconnects: int = 0
    bad_lines: list[str] = field(default_factory=list)

    @property
    def first_t(self) -> int | None:
        for item in self.items:
            if isinstance(item, Relist):
                return item.t
        return None


def _space(reply: dict, fallback: str) -> str:
    history = reply.get("history")
    return f"history {history}" if history else fallback


class _Conn:
    """One C connection while its log is read."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.request: dict = {}
        self.space = ""
        self.relists = 0
        self.replay_upto = -1
        self.pending_gap: Relist | None = None

    def on_reply(self, t: int, reply: dict) -> None:
        req = self.request
        if not reply.get("ok"):
            self.sub.items.append(Refused(t, reply))
            return
        cursor = req.get("since")
        self.replay_upto = -1
        if reply.get("gap") is not True and "since" in reply:
            self.space = _space(reply, self.space)
            self.replay_upto = reply.get("seq", -1)
            self.sub.items.append(Resumed(t, reply["since"], reply.get("seq", -1), self.space))
            return
        self.relists += 1
        self.space = _space(reply, f"{self.sub.name} relist {self.relists}")
        if cursor is None:
            cause = "initial" if self.relists == 1 else "relist"
        else:
            cause = "gap" if reply.get("gap") is True else "ignored"
        rows = {row["domid"]: row for row in reply.get("snapshot", [])}
        item = Relist(t, rows, list(reply.get("absent", [])), cause, self.space, reply["seq"])
        if cause == "gap":
            hist = req.get("history")
            item.history_changed = hist is not None and reply.get("history") != hist
            self.pending_gap = item
        self.sub.items.append(item)

    def on_hello(self, reply: dict) -> None:
        gap, self.pending_gap = self.pending_gap, None
        if gap is not None and reply.get("ok"):
            gap.needless = journal_would_serve(
                self.request.get("since"), self.request.get("history"), reply
            )

    def on_frame(self, t: int, frame: dict) -> None:
        if frame.get("event") == "overflow":
            self.sub.overflows += 1
            return
        seq = frame.get("seq")
        replayed = isinstance(seq, int) and seq <= self.replay_upto
        self.sub.items.append(Frame(t, frame, self.space, replayed))


def read_follow_log(path: str, kind: str, name: str) -> list[Subscriber]:
    """The subscribers (one per connection) of a `subscriber --follow` results file."""
    conns: dict[int, _Conn] = {}
    failures: list[str] = []
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # cut short by the end of the run
            tag, _, rest = raw.rstrip(b"\n").partition(b" ")
            if tag in (b"F", b"G", b""):
                continue  # totals; gaps are read from the reply itself
            if tag == b"X":
                failures.append(raw.decode(errors="replace").strip())
                continue
            idx_text, _, rest = rest.partition(b" ")
            t_text, _, data = rest.partition(b" ")
            try:
                idx, t = int(idx_text), int(t_text)
            except ValueError:
                raise StreamError(f"{path}: not a results line: {raw[:120]!r}") from None
            conn = conns.get(idx)
            if tag == b"Q":
                req = json.loads(data)
                if conn is None:
                    domids = req.get("domids")
                    wanted = None if domids == "*" else frozenset(domids)
                    label = name if wanted is None else f"{name} {min(wanted)}"
                    conn = conns[idx] = _Conn(Subscriber(label, kind, wanted))
                conn.request = req
                continue
            if conn is None:
                raise StreamError(f"{path}: connection {idx} has lines before its request")
            if tag == b"E":
                conn.sub.disconnects += 1
                continue
            if tag != b"J":
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                conn.sub.bad_lines.append(data[:200].decode(errors="replace"))
                continue
            if "id" in obj and "ok" in obj:
                if obj["id"] == 1:
                    conn.on_reply(t, obj)
                elif obj["id"] == 2:
                    conn.on_hello(obj)
            elif "event" in obj:
                conn.on_frame(t, obj)
            else:
                conn.sub.bad_lines.append(data[:200].decode(errors="replace"))
    if failures:
        raise StreamError(f"{path}: the subscriber failed: {'; '.join(failures[:3])}")
    return [conns[i].sub for i in sorted(conns)]


def read_client_log(path: str, kind: str, name: str) -> Subscriber:
    """The one subscriber of a mux/chaos/wildsub.py log."""
    sub = Subscriber(name, kind, None)
    space = ""
    replay_upto = -1
    for t, rec in _json_lines(path):
        if "start" in rec:
            start = rec["start"]
            hello = start.get("hello", {})
            space = _space(hello, f"{name} instance {hello.get('instance')}")
            rows = {row["domid"]: row for row in start["snapshot"]}
            sub.items.append(Relist(t, rows, [], "initial", space, start.get("seq") or 0))
        elif "event" in rec:
            frame = rec["event"]
            if frame.get("event") == "overflow":
                sub.overflows += 1
                continue
            seq = frame.get("seq")
            replayed = isinstance(seq, int) and seq <= replay_upto
            sub.items.append(Frame(t, frame, space, replayed))
        elif "reconnect" in rec:
            rc = rec["reconnect"]
            hello = rc.get("hello") or {}
            space = _space(hello, f"{name} instance {hello.get('instance')}")
            replay_upto = hello.get("seq", -1)
            needless = journal_would_serve(
                rc.get("cursor"), rc.get("history"), rc.get("after") or hello
            )
            sub.disconnects += 1
            sub.items.append(Reconnect(t, rc.get("cursor"), hello, needless, space))
        elif "error" in rec:
            raise StreamError(f"{path}: the subscriber {name} failed: {rec['error']}")
    return sub


def _json_lines(path: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                return
            try:
                rec = json.loads(line)
                yield rec["t"], rec
            except (ValueError, KeyError, TypeError):
                raise StreamError(f"{path} line {n}: not a subscriber record") from None
