"""One client connection: transport callbacks, line framing, writes and the overflow rule.

A connection knows who its peer is and what it may ask; what a request line means is the
business of `handle_line` (mux.daemon.requests), which the composition root hands over in
the connection's `ConnectionContext`. A malformed frame costs its own connection at most.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mux.daemon.fanout import Event, Fanout
from mux.daemon.listener import peer_credentials, peer_groups
from mux.daemon.stats import Stats
from mux.protocol import ERR_LINE_TOO_LONG, ERR_TOO_MANY_CLIENTS, OVERFLOW

log = logging.getLogger("xenmux.server")

MAX_LINE = 64 * 1024
PAUSE_LINES = 256  # a client that floods us waits for its replies past this many lines...
RESUME_LINES = 64  # ...until fewer than this many wait


@dataclass
class ConnectionContext:
    """What a connection works with, besides its transport."""

    stats: Stats  # clients_total, client_errors, overflows
    fanout: Fanout  # a closed connection is dropped from it
    clients: set[ClientConnection]  # the open connections, for --max-clients
    handle_line: Callable[[ClientConnection, bytes], Awaitable[None]]
    max_clients: int
    high_water: int  # unsent bytes before a subscriber is cut off
    allow_rescan_gid: int | None


class ClientConnection(asyncio.Protocol):
    """One subscriber or tool. Also the Fanout's subscriber: `send_frame` is the hot path."""

    def __init__(self, ctx: ConnectionContext) -> None:
        self.ctx = ctx
        self.high_water = ctx.high_water
        self.transport: asyncio.Transport | None = None
        self.wild_mask = 0
        self.closing = False
        self.buf = bytearray()
        self.lines: deque[bytes] = deque()
        self.task: asyncio.Task | None = None
        self.bad_lines = 0  # malformed lines in a row (requests.py closes after too many)
        self.pid = self.uid = self.gid = -1
        self.privileged = False
        self.may_rescan = False

    # -- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        ctx = self.ctx
        sock = transport.get_extra_info("socket")
        try:
            self.pid, self.uid, self.gid = peer_credentials(sock)
        except OSError:
            pass
        self.privileged = self.uid == 0 or self.uid == os.geteuid()
        rescan_gid = ctx.allow_rescan_gid
        self.may_rescan = self.privileged or (
            rescan_gid is not None and rescan_gid in peer_groups(self.pid, self.gid)
        )
        ctx.stats.clients_total += 1
        if len(ctx.clients) >= ctx.max_clients:
            ctx.stats.client_errors[ERR_TOO_MANY_CLIENTS] += 1
            log.warning(
                "refusing client pid=%d uid=%d: %d clients already (--max-clients)",
                self.pid,
                self.uid,
                len(ctx.clients),
            )
            self.reply_error(
                None,
                ERR_TOO_MANY_CLIENTS,
                f"the daemon serves {ctx.max_clients} clients already (--max-clients)",
            )
            self.close()
            return
        ctx.clients.add(self)
        log.info("client connected: pid=%d uid=%d gid=%d", self.pid, self.uid, self.gid)

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.ctx.clients.discard(self)
        self.ctx.fanout.drop(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        log.debug("client gone: pid=%d", self.pid)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        buf = self.buf
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if nl - start >= MAX_LINE:
                self._too_long()
                return
            self.lines.append(bytes(buf[start:nl]))
            start = nl + 1
        del buf[:start]
        if len(buf) >= MAX_LINE:
            self._too_long()
            return
        if self.lines and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._drain())
        if len(self.lines) > PAUSE_LINES and self.transport is not None:
            self.transport.pause_reading()

    def _too_long(self) -> None:
        self.ctx.stats.client_errors[ERR_LINE_TOO_LONG] += 1
        log.warning("client pid=%d sent a line over %d bytes; closing it", self.pid, MAX_LINE)
        self.reply_error(None, ERR_LINE_TOO_LONG, f"a request line is limited to {MAX_LINE} bytes")
        self.close()

    async def _drain(self) -> None:
        try:
            while self.lines and not self.closing:
                line = self.lines.popleft()
                if self.transport is not None and len(self.lines) < RESUME_LINES:
                    self.transport.resume_reading()
                await self.ctx.handle_line(self, line)
        finally:
            self.task = None

    # -- writing -------------------------------------------------------------------------

    def send_frame(self, frame: bytes, event: Event) -> None:
        t = self.transport
        if self.closing or t is None:
            return
        t.write(frame)
        if t.get_write_buffer_size() > self.high_water:
            self._overflow(event.seq)

    def _overflow(self, seq: int) -> None:
        """Cut off a subscriber that stopped reading, telling it the last seq it was due."""
        self.ctx.stats.overflows += 1
        log.warning(
            "subscriber pid=%d stopped reading (%d bytes unsent); cutting it off",
            self.pid,
            self.transport.get_write_buffer_size(),
        )
        self.write_obj({"event": OVERFLOW, "seq": seq})
        self.close()

    def write_obj(self, obj: dict) -> None:
        if self.closing or self.transport is None:
            return
        self.transport.write(json.dumps(obj, separators=(", ", ": ")).encode() + b"\n")

    def reply_error(self, req_id, code: str, message: str) -> None:
        self.write_obj({"id": req_id, "ok": False, "error": {"code": code, "message": message}})

    def close(self) -> None:
        self.closing = True
        self.ctx.fanout.drop(self)
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered, then closes
