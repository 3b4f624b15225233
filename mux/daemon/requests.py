"""The requests a client may send: one table, one row per op (docs/protocol.md).

As C xenstored's `wire_funcs[]`, each row names the op, its handler and the privilege it
needs; `handle_line` parses one line, finds the row, checks the privilege and writes the
reply or the error. Handlers take (ctx, conn, req): `ctx` holds the collaborators the
composition root passes (the scan loop, the fan-out, the table...), `conn` the asking
connection. A handler returns the reply's fields, or None when it wrote the reply itself.
"""

from __future__ import annotations

import enum
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from mux import __version__
from mux.daemon.connection import ClientConnection
from mux.daemon.fanout import Fanout
from mux.daemon.journal import Journal
from mux.daemon.scanloop import ScanLoop
from mux.daemon.stats import DaemonSnapshot, Stats
from mux.protocol import (
    ERR_BAD_CURSOR,
    ERR_BAD_DOMID,
    ERR_BAD_JSON,
    ERR_BAD_REQUEST,
    ERR_INTERNAL,
    ERR_PERMISSION_DENIED,
    ERR_TOO_MANY_SUBSCRIPTIONS,
    ERR_UNKNOWN_OP,
    MODE_LATEST,
    OP_HELLO,
    OP_LIST,
    OP_PING,
    OP_RESCAN,
    OP_STATS,
    OP_SUBSCRIBE,
    OP_UNSUBSCRIBE,
    OPS,
    PROTOCOL_VERSION,
    SERVER_NAME,
    SUBSCRIBE_MODES,
    kinds_mask,
)
from mux.records import DOMID_FIRST_RESERVED

log = logging.getLogger("xenmux.server")

MAX_BAD_LINES = 8  # malformed lines in a row before the connection is closed


class RequestError(Exception):
    """A request refused with `code` (one of mux.protocol.ERROR_CODES) and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Table(Protocol):
    """What requests read of the domain table (mux._fast.DomainTable, mux.reference's)."""

    seq: int

    def snapshot(self, domids: list[int] | None) -> list[dict]: ...


@dataclass
class RequestContext:
    """The collaborators of the requests, passed by the composition root."""

    instance: str  # random per daemon start (`hello`)
    backend_name: str
    table: Table
    scanloop: ScanLoop  # subscribe's snapshot, rescan
    fanout: Fanout  # subscriptions
    stats: Stats  # client errors by code
    features: Callable[[], dict]  # xenstored's, as the watcher found them
    backend_features: Callable[[], dict]  # the backend's capabilities (Capabilities.features)
    snapshot: Callable[[], DaemonSnapshot]  # `stats`
    max_subscriptions: int
    journal: Journal  # `history`, cursors, replay


class Privilege(enum.Enum):
    READ = "read"  # any peer that can reach the socket
    RESCAN = "rescan"  # root, the daemon's own uid, or --allow-rescan-group


Handler = Callable[[RequestContext, ClientConnection, dict], Awaitable[dict | None]]


@dataclass(frozen=True)
class Request:
    name: str
    handler: Handler
    privilege: Privilege


def parse_domids(value, *, allow_wild: bool = True) -> list[int] | None:
    """A request's `domids`: a list of domids, or "*" (returned as None)."""
    if value == "*" and allow_wild:
        return None
    if not isinstance(value, list):
        raise RequestError(ERR_BAD_REQUEST, 'domids must be a list of integers or "*"')
    out = []
    for d in value:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < DOMID_FIRST_RESERVED:
            raise RequestError(
                ERR_BAD_DOMID,
                f"domid {d!r} is not an integer from 0 to {DOMID_FIRST_RESERVED - 1}",
            )
        out.append(d)
    return out


# -- the handlers ------------------------------------------------------------------------------


async def hello(ctx: RequestContext, conn: ClientConnection, req: dict) -> dict:
    return {
        "server": SERVER_NAME,
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "instance": ctx.instance,
        "backend": ctx.backend_name,
        # xenstored's (watch depth, flavour) and the backend's (unique ids, the one-domain
        # query), as found at start-up.
        "features": {**ctx.features(), **ctx.backend_features()},
        "seq": ctx.table.seq,
        "history": ctx.journal.history,
        "oldest_seq": ctx.journal.oldest_seq,
    }


async def ping(ctx: RequestContext, conn: ClientConnection, req: dict) -> dict:
    return {}


def parse_cursor(req: dict) -> tuple[int | None, str | None]:
    """A subscribe's `since` (a seq, or None) and `history` (None: the current one)."""
    since = req.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
        raise RequestError(ERR_BAD_CURSOR, f"since must be a seq: an integer >= 0, not {since!r}")
    history = req.get("history")
    if history is not None and not isinstance(history, str):
        raise RequestError(ERR_BAD_REQUEST, "history must be a string, as hello names it")
    return since, history


def parse_mode(req: dict) -> str | None:
    """A subscribe's `mode` (None when it names none: the connection keeps its own)."""
    mode = req.get("mode")
    if mode is not None and mode not in SUBSCRIBE_MODES:
        raise RequestError(
            ERR_BAD_REQUEST, f"unknown mode {mode!r}: use one of {', '.join(SUBSCRIBE_MODES)}"
        )
    return mode


async def subscribe(ctx: RequestContext, conn: ClientConnection, req: dict) -> None:
    domids = parse_domids(req.get("domids"))
    try:
        mask = kinds_mask(req.get("events"))
    except ValueError as exc:
        raise RequestError(ERR_BAD_REQUEST, str(exc)) from None
    since, history = parse_cursor(req)
    mode = parse_mode(req)
    if domids is not None:
        already = ctx.fanout.watched(conn)
        added = len(set(domids) - already)
        if len(already) + added > ctx.max_subscriptions:
            raise RequestError(
                ERR_TOO_MANY_SUBSCRIPTIONS,
                f"a connection may watch at most {ctx.max_subscriptions} domids "
                f"(--max-subscriptions); it watches {len(already)}",
            )
    journal = ctx.journal

    def register(snapshot: list[dict], seq: int) -> None:
        # Called by the scan loop with no event between its snapshot and this: the reply
        # goes out before any event later than `seq`, and the journal holds every one up
        # to `seq`.
        resume = since is not None and history in (None, journal.history)
        if resume and since > seq:
            raise RequestError(
                ERR_BAD_CURSOR,
                f"since {since} is ahead of the last seq {seq} of history {journal.history}",
            )
        if mode is not None:
            conn.mode_latest = mode == MODE_LATEST
        ctx.fanout.subscribe(conn, domids, mask)
        reply = {"id": req.get("id"), "ok": True}
        if resume and since >= journal.oldest_seq - 1:
            conn.write_obj({**reply, "history": journal.history, "seq": seq, "since": since})
            if since < seq:
                conn.start_replay(journal.reader(since, domids, mask))
            return
        if since is not None:  # older than the journal, or of another history
            ctx.stats.subscribe_gaps += 1
            reply["gap"] = True
        absent = []
        if domids is not None:
            present = {row["domid"] for row in snapshot}
            absent = [x for x in dict.fromkeys(domids) if x not in present]
        reply.update(snapshot=snapshot, absent=absent, seq=seq, history=journal.history)
        conn.write_obj(reply)

    await ctx.scanloop.subscribe(domids, register)
    return None


async def unsubscribe(ctx: RequestContext, conn: ClientConnection, req: dict) -> dict:
    ctx.fanout.unsubscribe(conn, parse_domids(req.get("domids")))
    return {}


async def list_domains(ctx: RequestContext, conn: ClientConnection, req: dict) -> dict:
    return {"domains": ctx.table.snapshot(None), "seq": ctx.table.seq}


async def rescan(ctx: RequestContext, conn: ClientConnection, req: dict) -> dict:
    n = await ctx.scanloop.rescan()
    return {"events": n, "seq": ctx.table.seq}


async def stats(ctx: RequestContext, conn: ClientConnection, req: dict) -> dict:
    return {"stats": ctx.snapshot().stats_reply()}


REQUESTS: dict[str, Request] = {
    row.name: row
    for row in (
        Request(OP_HELLO, hello, Privilege.READ),
        Request(OP_SUBSCRIBE, subscribe, Privilege.READ),
        Request(OP_UNSUBSCRIBE, unsubscribe, Privilege.READ),
        Request(OP_LIST, list_domains, Privilege.READ),
        Request(OP_RESCAN, rescan, Privilege.RESCAN),
        Request(OP_STATS, stats, Privilege.READ),
        Request(OP_PING, ping, Privilege.READ),
    )
}
if tuple(REQUESTS) != OPS:  # an op added to the vocabulary needs its row here, in order
    raise ImportError(f"the request table {tuple(REQUESTS)} does not match mux.protocol.OPS {OPS}")


# -- one line ----------------------------------------------------------------------------------


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def parse_request(line: bytes) -> dict:
    """One request line as a JSON object: strict JSON (no NaN, no Infinity, no number that
    overflows to one), so that whatever is echoed back is valid JSON too."""
    try:
        req = json.loads(line, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise RequestError(
            ERR_BAD_JSON, "a request must be one JSON object: nested too deeply"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(ERR_BAD_JSON, f"a request must be one JSON object: {exc}") from None
    if not isinstance(req, dict):
        raise RequestError(ERR_BAD_JSON, "a request must be one JSON object")
    return req


def _echoable(req_id) -> bool:
    """Whether `id` can be sent back: a scalar can; a nested value might be too deep."""
    if req_id is None or isinstance(req_id, (str, int, float)):
        return True
    try:
        json.dumps(req_id)
    except (RecursionError, ValueError):
        return False
    return True


async def handle_line(ctx: RequestContext, conn: ClientConnection, line: bytes) -> None:
    """Answer one request line: the reply, or an error (counted by code). Every line gets
    exactly one reply, whatever it holds, so a request pipelined behind it is answered too."""
    req_id = None
    try:
        req = parse_request(line)
        if not _echoable(req.get("id")):
            raise RequestError(ERR_BAD_REQUEST, "id must be a JSON value that can be echoed")
        req_id = req.get("id")
        conn.bad_lines = 0
        op = req.get("op")
        row = REQUESTS.get(op) if isinstance(op, str) else None
        if row is None:
            raise RequestError(
                ERR_UNKNOWN_OP, f"unknown op {op!r}: use one of {', '.join(sorted(REQUESTS))}"
            )
        if row.privilege is Privilege.RESCAN and not conn.may_rescan:
            raise RequestError(
                ERR_PERMISSION_DENIED,
                f"{op} needs root or a group allowed by --allow-rescan-group",
            )
        reply = await row.handler(ctx, conn, req)
        if reply is not None:
            conn.write_obj({"id": req_id, "ok": True, **reply})
    except RequestError as exc:
        ctx.stats.client_errors[exc.code] += 1
        conn.reply_error(req_id, exc.code, str(exc))
        if exc.code == ERR_BAD_JSON:
            conn.bad_lines += 1
            if conn.bad_lines >= MAX_BAD_LINES:
                log.warning("client pid=%d sends garbage; closing it", conn.pid)
                conn.close()
    except Exception:
        # A bug must cost this request only: the client gets an answer, the daemon serves on.
        log.exception("request from client pid=%d failed: %.200r", conn.pid, line)
        ctx.stats.client_errors[ERR_INTERNAL] += 1
        conn.reply_error(req_id, ERR_INTERNAL, "the daemon failed on this request (see its log)")
