"""The subscriber socket: newline-delimited JSON requests, replies and event frames.

See docs/protocol.md. A malformed frame costs its own connection at most: the daemon goes on
serving the others.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import json
import logging
import os
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING

from mux import __version__
from mux.daemon.fanout import Fanout, kinds_mask
from mux.protocol import PROTOCOL_VERSION
from mux.records import DOMID_FIRST_RESERVED

if TYPE_CHECKING:
    from mux.daemon.service import Daemon

log = logging.getLogger("xenmux.server")

MAX_LINE = 64 * 1024
MAX_BAD_LINES = 8
READ_OPS = frozenset({"hello", "subscribe", "unsubscribe", "list", "stats", "ping"})


class RequestError(Exception):
    def __init__(self, code: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.close = close


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, from SO_PEERCRED."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def peer_groups(pid: int, gid: int) -> set[int]:
    """The peer's primary and supplementary groups (Linux: /proc/PID/status)."""
    groups = {gid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
                    break
    except OSError:
        pass
    return groups


def parse_domids(value, *, allow_wild: bool = True) -> list[int] | None:
    """A request's `domids`: a list of domids, or "*" (returned as None)."""
    if value == "*" and allow_wild:
        return None
    if not isinstance(value, list):
        raise RequestError("bad-request", 'domids must be a list of integers or "*"')
    out = []
    for d in value:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < DOMID_FIRST_RESERVED:
            raise RequestError(
                "bad-domid",
                f"domid {d!r} is not an integer from 0 to {DOMID_FIRST_RESERVED - 1}",
            )
        out.append(d)
    return out


class ClientConnection(asyncio.Protocol):
    """One subscriber or tool. Also the Fanout's subscriber: `send_frame` is the hot path."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.transport: asyncio.Transport | None = None
        self.wild_mask = 0
        self.closing = False
        self.buf = bytearray()
        self.lines: deque[bytes] = deque()
        self.task: asyncio.Task | None = None
        self.bad_lines = 0
        self.pid = self.uid = self.gid = -1
        self.privileged = False
        self.may_rescan = False
        self.last_seq = 0

    # -- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        d = self.daemon
        sock = transport.get_extra_info("socket")
        try:
            self.pid, self.uid, self.gid = peer_credentials(sock)
        except OSError:
            pass
        self.privileged = self.uid == 0 or self.uid == os.geteuid()
        rescan_gid = d.config.allow_rescan_gid
        self.may_rescan = self.privileged or (
            rescan_gid is not None and rescan_gid in peer_groups(self.pid, self.gid)
        )
        d.stats.clients_total += 1
        if len(d.clients) >= d.config.max_clients:
            d.stats.client_errors["too-many-clients"] += 1
            log.warning(
                "refusing client pid=%d uid=%d: %d clients already (--max-clients)",
                self.pid,
                self.uid,
                len(d.clients),
            )
            self._reply_error(
                None,
                "too-many-clients",
                f"the daemon serves {d.config.max_clients} clients already (--max-clients)",
            )
            self.close()
            return
        d.clients.add(self)
        log.info("client connected: pid=%d uid=%d gid=%d", self.pid, self.uid, self.gid)

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.daemon.clients.discard(self)
        self.daemon.fanout.drop(self)
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
        if len(self.lines) > 256 and self.transport is not None:
            self.transport.pause_reading()  # a client that floods us waits for its replies

    def _too_long(self) -> None:
        self.daemon.stats.client_errors["line-too-long"] += 1
        log.warning("client pid=%d sent a line over %d bytes; closing it", self.pid, MAX_LINE)
        self._reply_error(None, "line-too-long", f"a request line is limited to {MAX_LINE} bytes")
        self.close()

    # -- writing -------------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        t = self.transport
        if self.closing or t is None:
            return
        t.write(frame)
        if t.get_write_buffer_size() > self.daemon.config.high_water:
            self._overflow(frame)

    def _overflow(self, frame: bytes) -> None:
        d = self.daemon
        d.stats.overflows += 1
        try:
            seq = json.loads(frame)["seq"]
        except (ValueError, KeyError):
            seq = d.table.seq
        log.warning(
            "subscriber pid=%d stopped reading (%d bytes unsent); cutting it off",
            self.pid,
            self.transport.get_write_buffer_size(),
        )
        self.transport.write(b'{"event": "overflow", "seq": %d}\n' % seq)
        self.close()

    def write_obj(self, obj: dict) -> None:
        if self.closing or self.transport is None:
            return
        self.transport.write(json.dumps(obj, separators=(", ", ": ")).encode() + b"\n")

    def _reply_error(self, req_id, code: str, message: str) -> None:
        self.write_obj({"id": req_id, "ok": False, "error": {"code": code, "message": message}})

    def close(self) -> None:
        self.closing = True
        self.daemon.fanout.drop(self)
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered, then closes

    # -- requests ------------------------------------------------------------------------

    async def _drain(self) -> None:
        try:
            while self.lines and not self.closing:
                line = self.lines.popleft()
                if self.transport is not None and len(self.lines) < 64:
                    self.transport.resume_reading()
                await self._handle_line(line)
        finally:
            self.task = None

    async def _handle_line(self, line: bytes) -> None:
        d = self.daemon
        req_id = None
        try:
            try:
                req = json.loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestError(
                    "bad-json", f"a request must be one JSON object: {exc}"
                ) from None
            if not isinstance(req, dict):
                raise RequestError("bad-json", "a request must be one JSON object")
            req_id = req.get("id")
            self.bad_lines = 0
            op = req.get("op")
            handler = _HANDLERS.get(op) if isinstance(op, str) else None
            if handler is None:
                raise RequestError(
                    "unknown-op",
                    f"unknown op {op!r}: use one of {', '.join(sorted(_HANDLERS))}",
                )
            if op not in READ_OPS and not self.may_rescan:
                raise RequestError(
                    "permission-denied",
                    f"{op} needs root or a group allowed by --allow-rescan-group",
                )
            reply = await handler(self, req)
            if reply is not None:
                reply = {"id": req_id, "ok": True, **reply}
                self.write_obj(reply)
        except RequestError as exc:
            d.stats.client_errors[exc.code] = d.stats.client_errors.get(exc.code, 0) + 1
            self._reply_error(req_id, exc.code, str(exc))
            if exc.code == "bad-json":
                self.bad_lines += 1
                if self.bad_lines >= MAX_BAD_LINES:
                    log.warning("client pid=%d sends garbage; closing it", self.pid)
                    self.close()
            if exc.close:
                self.close()

    async def op_hello(self, req: dict) -> dict:
        d = self.daemon
        return {
            "server": "xen-watch-mux",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "instance": d.instance,
            "backend": d.backend.name,
            "features": d.watcher.feature_dict,
            "seq": d.table.seq,
        }

    async def op_ping(self, req: dict) -> dict:
        return {}

    async def op_subscribe(self, req: dict) -> None:
        d = self.daemon
        domids = parse_domids(req.get("domids"))
        try:
            mask = kinds_mask(req.get("events"))
        except ValueError as exc:
            raise RequestError("bad-request", str(exc)) from None
        if domids is not None:
            already = d.fanout.subscriptions.get(self, set())
            added = len(set(domids) - already)
            if len(already) + added > d.config.max_subscriptions:
                raise RequestError(
                    "too-many-subscriptions",
                    f"a connection may watch at most {d.config.max_subscriptions} domids "
                    f"(--max-subscriptions); it watches {len(already)}",
                )
        # Under the scan lock no event is between the diff and its fan-out: the snapshot
        # and the registration below see one consistent seq.
        async with d.scanloop.lock:
            if domids is not None:
                unknown = {x for x in domids if x not in d.table}
                if unknown:
                    # Creation fires nothing: ask the hypervisor before saying "absent".
                    await d.scanloop.probe_and_publish(unknown, "subscribe")
            snapshot = d.table.snapshot(domids)
            seq = d.table.seq
            d.fanout.subscribe(self, domids, mask)
            absent = []
            if domids is not None:
                present = {row["domid"] for row in snapshot}
                absent = [x for x in dict.fromkeys(domids) if x not in present]
            self.write_obj(
                {
                    "id": req.get("id"),
                    "ok": True,
                    "snapshot": snapshot,
                    "absent": absent,
                    "seq": seq,
                }
            )
        return None

    async def op_unsubscribe(self, req: dict) -> dict:
        domids = parse_domids(req.get("domids"))
        self.daemon.fanout.unsubscribe(self, domids)
        return {}

    async def op_list(self, req: dict) -> dict:
        d = self.daemon
        return {"domains": d.table.snapshot(None), "seq": d.table.seq}

    async def op_rescan(self, req: dict) -> dict:
        d = self.daemon
        n = await d.scanloop.rescan()
        return {"events": n, "seq": d.table.seq}

    async def op_stats(self, req: dict) -> dict:
        return {"stats": self.daemon.stats_dict()}


_HANDLERS = {
    "hello": ClientConnection.op_hello,
    "ping": ClientConnection.op_ping,
    "subscribe": ClientConnection.op_subscribe,
    "unsubscribe": ClientConnection.op_unsubscribe,
    "list": ClientConnection.op_list,
    "rescan": ClientConnection.op_rescan,
    "stats": ClientConnection.op_stats,
}


def resolve_group(group: str | None) -> int | None:
    if group is None or group == "":
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no group named {group!r} on this host (see /etc/group)") from None


def bind_socket(path: str, group_gid: int | None) -> socket.socket:
    """Bind the listening socket, mode 0660 from the first moment, replacing a stale file.

    A socket file whose connect is refused is left over from a daemon that died; one that
    accepts belongs to a live daemon, and we refuse to take it over.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if os.path.exists(path) or os.path.islink(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("replacing stale socket %s", path)
            os.unlink(path)
        except OSError as exc:
            if exc.errno in (errno.ENOTSOCK, errno.ECONNREFUSED):
                os.unlink(path)
            else:
                raise
        else:
            probe.close()
            raise OSError(
                errno.EADDRINUSE,
                f"another daemon is serving on {path}; stop it or choose --socket",
            )
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    if group_gid is not None:
        os.chown(path, -1, group_gid)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


__all__ = ["ClientConnection", "Fanout", "bind_socket", "resolve_group"]
