"""The harness's change path into a simulated host: one fixed binary message per change.

`xenmux bench` drives thousands of isolated lifecycle changes and measures what each one
costs the host. Over the JSON control socket (runtime.py) a change costs the sim a stream
reader's task wake-up, a JSON decode and encode and two counter dicts, more than the change
itself. This path is a SOCK_SEQPACKET socket, DIR/changes.sock. With the sim's own xenstored
a C thread serves it (mux/sim/hostpath.py): it applies the common changes itself without
waking Python and hands the others to the loop, which answers them with `handle`. Without
one (an external xenstored) the event loop's reader calls `handle` directly: it decodes one
request, applies the change (the table, the VIRQ, the domain pass and its WATCH_EVENT
writes, with no task between them) and sends one reply.

    request  REQUEST: op (u8), flags (u8), domid (u16), reason (u32)
    reply    REPLY: status (i8, 0 ok), domid (u16: the created one), then what the change
             fired: @releaseDomain, @releaseDomain/<domid>, @introduceDomain, watch events
             (u32 each); on an error (status 1) the message follows, UTF-8.

The ops are the lifecycle the harness drives: shutdown (reason), suspend (FLAG_SILENT),
resume, destroy (FLAG_ZOMBIE), create (one domain), virq. `sim-ctl` and everything else
stay on the JSON socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mux.sim.host import SimError
from mux.xenstore.wire import XenstoreError

if TYPE_CHECKING:
    from mux.sim.host import SimHost
    from mux.sim.hostpath import HostPath
    from mux.sim.xenstored import Counters

log = logging.getLogger("mux.sim")

REQUEST = struct.Struct("<BBHI")
REPLY = struct.Struct("<bxHIIII")
MESSAGE_MAX = 4096

SHUTDOWN, SUSPEND, RESUME, DESTROY, CREATE, VIRQ = range(1, 7)
OPS = {
    "shutdown": SHUTDOWN,
    "suspend": SUSPEND,
    "resume": RESUME,
    "destroy": DESTROY,
    "create": CREATE,
    "virq": VIRQ,
}
FLAG_ZOMBIE = 1  # destroy: the domain stays dying
FLAG_SILENT = 1  # suspend: a suspend event channel, no VIRQ


class ChangeError(Exception):
    """The sim refused a change (the message is its reason), or is not there."""


@dataclass(frozen=True, slots=True)
class Fired:
    """What one change fired, and the domain a create made."""

    domid: int
    release: int
    release_dom: int
    introduce: int
    events: int


class ChangeServer:
    """DIR/changes.sock: on the change thread of `path` when there is one, else on the sim's
    event loop (accept, then one callback per request)."""

    def __init__(self, host: SimHost, counters: Counters, path: HostPath | None = None) -> None:
        self.host = host
        self.counters = counters
        self.path = path
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def serve(self, listener: socket.socket) -> None:
        """Serve on a bound, listening, non-blocking SOCK_SEQPACKET socket."""
        self._loop = asyncio.get_running_loop()
        self._listener = listener
        if self.path is not None:
            self.path.start(listener, self.handle)
            return
        self._loop.add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self._conns.add(conn)
        self._loop.add_reader(conn.fileno(), self._readable, conn)

    def _drop(self, conn: socket.socket) -> None:
        self._loop.remove_reader(conn.fileno())
        self._conns.discard(conn)
        conn.close()

    def _readable(self, conn: socket.socket) -> None:
        try:
            msg = conn.recv(MESSAGE_MAX)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            msg = b""
        if not msg:
            self._drop(conn)
            return
        reply = self.handle(msg)
        try:
            conn.send(reply)
        except OSError as exc:  # a client that went away, or stopped reading its replies
            log.info("dropping a change client: %s", exc)
            self._drop(conn)

    def handle(self, msg: bytes) -> bytes:
        """One request -> its reply (errors are replies too)."""
        if len(msg) != REQUEST.size:
            return _error(f"a change request is {REQUEST.size} bytes, not {len(msg)}")
        op, flags, domid, reason = REQUEST.unpack(msg)
        c = self.counters
        before = (c.release_firings, c.release_dom_firings, c.introduce_firings, c.events)
        host = self.host
        made = 0
        try:
            if op == SHUTDOWN:
                host.shutdown(domid, reason)
            elif op == SUSPEND:
                host.suspend(domid, silent=bool(flags & FLAG_SILENT))
            elif op == RESUME:
                host.resume(domid)
            elif op == DESTROY:
                host.destroy(domid, zombie=bool(flags & FLAG_ZOMBIE))
            elif op == CREATE:
                made = host.create()[0].domid
            elif op == VIRQ:
                host.virq()
            else:
                return _error(f"unknown change op {op}")
        except (SimError, XenstoreError) as exc:
            return _error(str(exc))
        return REPLY.pack(
            0,
            made,
            c.release_firings - before[0],
            c.release_dom_firings - before[1],
            c.introduce_firings - before[2],
            c.events - before[3],
        )

    def close(self) -> None:
        if self.path is not None:
            if self._listener is not None:
                self.path.close()  # closes the listener too
                self._listener = None
            return
        for conn in list(self._conns):
            self._drop(conn)
        if self._listener is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing already
                self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None


def _error(message: str) -> bytes:
    return REPLY.pack(1, 0, 0, 0, 0, 0) + message.encode()[: MESSAGE_MAX - REPLY.size]


class ChangeClient:
    """The harness's blocking client: one change per round trip."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise ChangeError(f"no simulated host takes changes at {path}: {exc}") from None

    def change(self, op: str, domid: int = 0, reason: int = 0, flags: int = 0) -> Fired:
        try:
            code = OPS[op]
        except KeyError:
            raise ChangeError(f"not a change op: {op!r} (one of {', '.join(OPS)})") from None
        if not 0 <= domid <= 0xFFFF:
            raise ChangeError(f"not a domid: {domid}")
        try:
            self._sock.send(REQUEST.pack(code, flags, domid, reason))
            reply = self._sock.recv(MESSAGE_MAX)
        except OSError as exc:  # TimeoutError included
            raise ChangeError(f"the simulated host at {self.path} did not answer: {exc}") from None
        if len(reply) < REPLY.size:
            raise ChangeError(f"the simulated host at {self.path} closed the change path")
        status, made, release, release_dom, introduce, events = REPLY.unpack_from(reply)
        if status:
            raise ChangeError(reply[REPLY.size :].decode(errors="replace"))
        return Fired(made, release, release_dom, introduce, events)

    def close(self) -> None:
        self._sock.close()


def bind_seqpacket(path: str) -> socket.socket:
    """A listening SOCK_SEQPACKET socket at `path` (a stale file there is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.bind(path)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
