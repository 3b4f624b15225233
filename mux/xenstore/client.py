"""An asyncio client of xenstored: the real wire protocol, many requests in flight, watches.

One connection (a Unix socket to xenstored, or the `/dev/xen/xenbus` character device) is
driven by `XenstoreProtocol`, an `asyncio.Protocol` whose reader (`mux._fast.XsReader`, the C
twin of `wire.FrameReader`) cuts the byte stream into frames in `data_received`; the
protocol resolves each reply's future by its `req_id` (replies may come in any order), and
the reader hands every `XS_WATCH_EVENT` to `on_watch` synchronously, without a trip through
the event loop. `on_read_end` follows a read that brought watch events, once they are all
dispatched: what they asked for can be done there, coalesced, as one. `XenstoreClient` is
the API on top: one coroutine per request type, named after libxenstore's calls.

Failure rules (the daemon depends on them):
- `XS_ERROR` replies raise `wire.XenstoreError` (errno and the name the server sent, plus the
  request it answered); the connection stays up.
- A server that goes away fails every pending request at once with `XenstoreConnectionError`
  naming the server's path, and calls `on_lost(exc)` once.
- A server that breaks the protocol (a bad header, a payload over 4096 bytes, an unknown
  type, a reply of the wrong type or shape) is cut off: the same, with `XenstoreProtocolError`.
  A reply to a req_id nobody waits for is only logged and dropped (a late answer to a
  request that timed out is expected and dropped quietly).
- A request that misses its deadline raises `XenstoreTimeoutError`; the connection stays up,
  unless the client was made with `abort_on_timeout`: then a missed deadline is taken as a
  hung server (or one that lost the request) and the connection is given up at once, the
  other pending requests failing with `XenstoreDeadlineError`, and `on_lost` called.
- Nothing raised by a callback or by a malformed frame escapes into the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

from mux._fast import XsReader
from mux.xenstore import wire
from mux.xenstore.transport import open_transport

log = logging.getLogger(__name__)

XENSTORED_SOCKET = "/var/run/xenstored/socket"
XENBUS_DEVICE = "/dev/xen/xenbus"

_XS_ERROR = int(wire.XS_ERROR)
_OK = b"OK\0"
_ABANDONED_KEEP = 4096  # req_ids of given-up requests remembered, so late replies drop quietly
_DIRECTORY_PART_RESTARTS = 16

OnWatch = Callable[[str, str], Any]
OnReadEnd = Callable[[], Any]
OnLost = Callable[[BaseException | None], Any]


class XenstoreConnectionError(ConnectionError):
    """The connection to xenstored is gone (or could not be made). `path` names the server."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path

    def _copy(self) -> XenstoreConnectionError:
        """A fresh instance to raise again (one instance per raise keeps tracebacks apart)."""
        exc = type(self)(str(self), self.path)
        exc.__cause__ = self.__cause__
        return exc


class XenstoreProtocolError(XenstoreConnectionError):
    """xenstored sent something outside the protocol; the client closed the connection."""


class XenstoreTimeoutError(TimeoutError):
    """No reply within the request's timeout; a late reply is dropped. `request` names the
    request type (`XS_READ`...). The connection stays up unless `abort_on_timeout`."""

    def __init__(self, message: str, request: str = "") -> None:
        super().__init__(message)
        self.request = request


class XenstoreDeadlineError(XenstoreConnectionError):
    """The client gave the connection up: a request (`request`, its type) missed its deadline."""

    def __init__(self, message: str, path: str = "", request: str = "") -> None:
        super().__init__(message, path)
        self.request = request

    def _copy(self) -> XenstoreDeadlineError:
        exc = type(self)(str(self), self.path, self.request)
        exc.__cause__ = self.__cause__
        return exc


def default_xenstore_path(
    explicit: str | None = None,
    environ: dict[str, str] | None = None,
) -> str:
    """Which xenstored of this host to talk to, in the order of docs/architecture.md.

    `explicit` (`serve --xenstore PATH`, or the backend's own xenstored), else
    `$XENSTORED_PATH`, else `/var/run/xenstored/socket` if it exists, else `/dev/xen/xenbus`.
    """
    if explicit:
        return explicit
    env = os.environ if environ is None else environ
    from_env = env.get("XENSTORED_PATH")
    if from_env:
        return from_env
    if os.path.exists(XENSTORED_SOCKET):
        return XENSTORED_SOCKET
    return XENBUS_DEVICE


def _type_name(msg_type: int) -> str:
    try:
        return wire.XsdSockmsgType(msg_type).name
    except ValueError:
        return f"type {msg_type}"


def _describe(msg_type: int, payload: bytes) -> str:
    """'XS_READ /local/domain/1/name': a request as error messages name it."""
    first = payload.split(b"\0", 1)[0][:200].decode("utf-8", "replace")
    return f"{_type_name(msg_type)} {first}".rstrip()


def _consume(fut: asyncio.Future) -> None:
    """Done-callback of a future nobody awaits: fetch its exception so none is reported."""
    if not fut.cancelled():
        fut.exception()


class XenstoreProtocol(asyncio.Protocol):
    """The wire state machine of one connection: framing, req_id matching, watch dispatch."""

    def __init__(
        self,
        path: str,
        loop: asyncio.AbstractEventLoop,
        on_watch: OnWatch | None = None,
        on_lost: OnLost | None = None,
        on_read_end: OnReadEnd | None = None,
    ) -> None:
        self.path = path
        self.on_lost = on_lost
        self.on_read_end = on_read_end
        self._loop = loop
        self._transport: asyncio.BaseTransport | None = None
        self._reader = XsReader(on_watch, self._reply, self._watch_failed)
        # req_id -> (future, request type, request payload); the last two for error messages.
        self._pending: dict[int, tuple[asyncio.Future, int, bytes]] = {}
        self._abandoned: set[int] = set()
        self._abandoned_order: collections.deque[int] = collections.deque()
        self._next_id = 0
        self._error: XenstoreConnectionError | None = None  # set once: why we are down
        self._closing_by_us = False
        self._closed = loop.create_future()
        self._lost_task: asyncio.Task | None = None
        # loop.time() of the last bytes from the server: how long the connection has been silent.
        self.last_received = loop.time()

    # Requests -------------------------------------------------------------------------------

    def send(self, msg_type: int, payload: bytes, tx: int = 0) -> tuple[int, asyncio.Future]:
        """Send one request; returns its req_id and the future its reply payload resolves."""
        if self._error is not None:
            raise self._error._copy()
        rid = self._next_id
        pending = self._pending
        while True:
            rid = (rid + 1) & 0xFFFFFFFF
            if rid and rid not in pending:
                break
        frame = wire.encode(msg_type, rid, tx, payload)  # WireError (ValueError) if too long
        self._next_id = rid
        fut = self._loop.create_future()
        pending[rid] = (fut, msg_type, payload)
        try:
            self._transport.write(frame)  # type: ignore[union-attr]
        except Exception as exc:
            del pending[rid]
            err = XenstoreConnectionError(
                f"cannot send {_describe(msg_type, payload)} to xenstored at {self.path}: {exc}",
                self.path,
            )
            raise err from exc
        return rid, fut

    def abandon(self, req_id: int) -> None:
        """The caller gave up on `req_id` (timeout, cancel); its late reply will be dropped."""
        entry = self._pending.pop(req_id, None)
        if entry is None:
            return
        self._abandoned.add(req_id)
        self._abandoned_order.append(req_id)
        if len(self._abandoned_order) > _ABANDONED_KEEP:
            self._abandoned.discard(self._abandoned_order.popleft())

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # asyncio.Protocol -----------------------------------------------------------------------

    @property
    def on_watch(self) -> OnWatch | None:
        return self._reader.on_watch

    @on_watch.setter
    def on_watch(self, cb: OnWatch | None) -> None:
        self._reader.on_watch = cb

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_received = self._loop.time()
        if self._error is not None:
            return
        reader = self._reader
        before = reader.dispatched
        try:
            reader.feed(data)
        except wire.WireError as exc:
            self.protocol_error(str(exc))
        except Exception as exc:  # a bug of ours must not reach the loop's handler either
            log.exception("xenstore client: failure while reading from %s", self.path)
            self.protocol_error(f"client failure while decoding: {exc!r}")
        finally:
            if reader.dispatched != before and self.on_read_end is not None:
                try:
                    self.on_read_end()
                except Exception:
                    log.exception("on_read_end() raised")

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            n = len(self._pending)
            waiting = f" ({n} request{'s' if n != 1 else ''} pending)" if n else ""
            if self._closing_by_us:
                msg = f"connection to xenstored at {self.path} was closed by the client"
            elif exc is None:
                msg = f"xenstored at {self.path} closed the connection{waiting}"
            else:
                msg = f"connection to xenstored at {self.path} lost: {exc}{waiting}"
            err = XenstoreConnectionError(msg, self.path)
            err.__cause__ = exc
            self._go_down(err)
        if not self._closed.done():
            self._closed.set_result(None)
        if not self._closing_by_us:
            self._call_on_lost(self._error)

    # Frames ---------------------------------------------------------------------------------

    @staticmethod
    def _watch_failed(path: str, token: str) -> None:
        """The reader's handler of an exception from on_watch (called inside it)."""
        log.exception("on_watch(%r, %r) raised; event dropped", path, token)

    def _reply(self, msg_type: int, req_id: int, payload: bytes) -> None:
        entry = self._pending.pop(req_id, None)
        if entry is None:
            if req_id in self._abandoned:
                log.debug(
                    "late %s reply to given-up req_id %d dropped", _type_name(msg_type), req_id
                )
            else:
                log.warning(
                    "xenstored at %s sent a %s reply to unknown req_id %d; dropped",
                    self.path,
                    _type_name(msg_type),
                    req_id,
                )
            return
        fut, sent_type, sent_payload = entry
        if msg_type == _XS_ERROR:
            try:
                name = wire.decode_error(payload)
            except wire.WireError:
                # An errno name xs_wire.h does not list: still an answer, reported as sent.
                name = payload.rstrip(b"\0").decode("ascii", "replace") or "EIO"
            if not fut.done():
                fut.set_exception(wire.XenstoreError(name, _describe(sent_type, sent_payload)))
        elif msg_type != sent_type:
            self._pending[req_id] = entry  # failed with the rest by protocol_error()
            raise wire.WireError(
                f"a {_type_name(msg_type)} reply to {_describe(sent_type, sent_payload)} "
                f"(req_id {req_id})"
            )
        elif not fut.done():
            fut.set_result(payload)

    # Going down -----------------------------------------------------------------------------

    def protocol_error(self, what: str) -> XenstoreProtocolError:
        """Cut off a server that broke the protocol; every pending request fails with it."""
        if self._error is None:
            err = XenstoreProtocolError(
                f"xenstored at {self.path} broke the protocol ({what}); connection closed",
                self.path,
            )
            log.error("%s", err)
            self._go_down(err)
            if self._transport is not None:
                self._transport.abort()  # type: ignore[attr-defined]
        return self._error  # type: ignore[return-value]

    def give_up(self, err: XenstoreConnectionError) -> None:
        """Take the connection down with `err` (a hung server, say); on_lost is called."""
        if self._error is None:
            log.error("%s", err)
            self._go_down(err)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._error is None:
            self._closing_by_us = True
            self._go_down(
                XenstoreConnectionError(
                    f"connection to xenstored at {self.path} was closed by the client", self.path
                )
            )
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()  # type: ignore[attr-defined]

    def _go_down(self, err: XenstoreConnectionError) -> None:
        self._error = err
        self._reader.stop()  # the rest of a read being decoded is dropped
        pending, self._pending = self._pending, {}
        for fut, _t, _p in pending.values():
            if not fut.done():
                fut.set_exception(err._copy())

    def _call_on_lost(self, err: BaseException | None) -> None:
        cb = self.on_lost
        if cb is None:
            return
        try:
            res = cb(err)
        except Exception:
            log.exception("on_lost(%r) raised", err)
            return
        if inspect.isawaitable(res):
            task = asyncio.ensure_future(res)
            task.add_done_callback(self._on_lost_done)
            self._lost_task = task

    @staticmethod
    def _on_lost_done(task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("on_lost callback failed", exc_info=task.exception())


class XenstoreClient:
    """One connection to xenstored. Create it with `await XenstoreClient.connect(path)`."""

    def __init__(
        self,
        protocol: XenstoreProtocol,
        path: str,
        request_timeout: float | None = None,
        abort_on_timeout: bool = False,
    ) -> None:
        self._proto = protocol
        self.path = path
        self.request_timeout = request_timeout
        self.abort_on_timeout = abort_on_timeout

    @classmethod
    async def connect(
        cls,
        path: str,
        *,
        on_watch: OnWatch | None = None,
        on_lost: OnLost | None = None,
        on_read_end: OnReadEnd | None = None,
        timeout: float = 5.0,
        request_timeout: float | None = None,
        abort_on_timeout: bool = False,
    ) -> XenstoreClient:
        """Connect to a xenstored Unix socket or to a character device such as /dev/xen/xenbus.

        `on_watch(path, token)` is called synchronously for every XS_WATCH_EVENT (keep it
        short; coalesce elsewhere); `on_read_end()` after a read that brought any, once they
        are dispatched (where what they asked for can be done, coalesced). `on_lost(exc)`
        is called once when the connection goes away for any reason other than `close()`;
        `exc` is a `XenstoreConnectionError` (`XenstoreProtocolError` for a misbehaving
        server). Either may be changed later through the attributes of the same names.
        `request_timeout` is the default of `request(timeout=...)`; None waits as long as
        the connection lives. With `abort_on_timeout` a request that misses its deadline
        takes the connection down.
        """
        loop = asyncio.get_running_loop()
        proto = XenstoreProtocol(path, loop, on_watch, on_lost, on_read_end)
        try:
            async with asyncio.timeout(timeout):
                await open_transport(loop, path, proto)
        except TimeoutError:
            raise XenstoreConnectionError(
                f"cannot connect to xenstored at {path}: no connection within {timeout} s", path
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise XenstoreConnectionError(
                f"cannot connect to xenstored at {path}: {reason}", path
            ) from exc
        return cls(proto, path, request_timeout, abort_on_timeout)

    # Callbacks and state ----------------------------------------------------------------------

    @property
    def on_watch(self) -> OnWatch | None:
        return self._proto.on_watch

    @on_watch.setter
    def on_watch(self, cb: OnWatch | None) -> None:
        self._proto.on_watch = cb

    @property
    def on_lost(self) -> OnLost | None:
        return self._proto.on_lost

    @on_lost.setter
    def on_lost(self, cb: OnLost | None) -> None:
        self._proto.on_lost = cb

    @property
    def closed(self) -> bool:
        """True once the connection is down (closed by us, by the server, or cut off)."""
        return self._proto._error is not None

    @property
    def error(self) -> XenstoreConnectionError | None:
        """Why the connection is down (None while it is up)."""
        return self._proto._error

    @property
    def idle_for(self) -> float:
        """Seconds since the server last sent anything (a reply or a watch event)."""
        proto = self._proto
        return proto._loop.time() - proto.last_received

    async def close(self) -> None:
        """Close the connection; pending requests fail with XenstoreConnectionError."""
        self._proto.close()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._proto._closed)

    async def __aenter__(self) -> XenstoreClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # The generic call -------------------------------------------------------------------------

    async def request(
        self, msg_type: int, payload: bytes, tx: int = 0, timeout: float | None = None
    ) -> bytes:
        """Send one request and return its reply payload.

        Raises wire.XenstoreError for an XS_ERROR reply, XenstoreConnectionError when the
        connection is or goes down, XenstoreTimeoutError after `timeout` seconds, and
        wire.WireError (a ValueError, before anything is sent) for a payload over 4096 bytes.
        """
        proto = self._proto
        req_id, fut = proto.send(msg_type, payload, tx)
        if timeout is None:
            timeout = self.request_timeout
        try:
            if timeout is None:
                return await fut
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            what = _describe(msg_type, payload)
            proto.abandon(req_id)
            request = _type_name(msg_type)
            message = f"xenstored at {self.path} did not answer {what} within {timeout} s"
            if self.abort_on_timeout:
                proto.give_up(
                    XenstoreDeadlineError(f"{message}; connection closed", self.path, request)
                )
            raise XenstoreTimeoutError(message, request) from None
        except asyncio.CancelledError:
            proto.abandon(req_id)
            raise

    def _broken(self, what: str) -> XenstoreProtocolError:
        return self._proto.protocol_error(what)._copy()  # type: ignore[return-value]

    def _expect_ok(self, payload: bytes, msg_type: int) -> None:
        if payload != _OK:
            raise self._broken(f"{_type_name(msg_type)} answered {payload[:40]!r}, not OK")

    async def _ok_request(self, msg_type: int, payload: bytes, tx: int = 0) -> None:
        self._expect_ok(await self.request(msg_type, payload, tx), msg_type)

    def _one_string(self, payload: bytes, msg_type: int) -> str:
        try:
            return wire.split(payload, 1)[0]
        except wire.WireError as exc:
            raise self._broken(f"{_type_name(msg_type)} reply: {exc}") from None

    # The database -----------------------------------------------------------------------------

    async def read(self, path: str, tx: int = 0) -> bytes:
        return await self.request(wire.XS_READ, wire.join(path), tx)

    async def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        if isinstance(value, str):
            value = value.encode()
        await self._ok_request(wire.XS_WRITE, wire.join(path) + bytes(value), tx)

    async def mkdir(self, path: str, tx: int = 0) -> None:
        await self._ok_request(wire.XS_MKDIR, wire.join(path), tx)

    async def rm(self, path: str, tx: int = 0) -> None:
        await self._ok_request(wire.XS_RM, wire.join(path), tx)

    async def directory(self, path: str, tx: int = 0) -> list[str]:
        """The children's names; over 4096 bytes of names, XS_DIRECTORY_PART as libxenstore."""
        try:
            payload = await self.request(wire.XS_DIRECTORY, wire.join(path), tx)
        except wire.XenstoreError as exc:
            if exc.name != "E2BIG":
                raise
            return await self._directory_part(path, tx)
        try:
            return wire.decode_directory(payload)
        except wire.WireError as exc:
            raise self._broken(f"XS_DIRECTORY reply: {exc}") from None

    async def _directory_part(self, path: str, tx: int) -> list[str]:
        """Gather the listing by byte offset; start over if the node's generation changes.

        Each reply is `<generation>\\0` and the next bytes of `name\\0name\\0...`; the last
        one ends with an extra NUL. A server without DIRECTORY_PART (ENOSYS) leaves E2BIG.
        """
        names = bytearray()
        generation: bytes | None = None
        restarts = 0
        while True:
            try:
                reply = await self.request(
                    wire.XS_DIRECTORY_PART, wire.join(path, str(len(names))), tx
                )
            except wire.XenstoreError as exc:
                if exc.name == "ENOSYS":
                    raise wire.XenstoreError("E2BIG", f"XS_DIRECTORY {path}") from exc
                raise
            gen_end = reply.find(b"\0")
            if gen_end < 0:
                raise self._broken(f"XS_DIRECTORY_PART reply without a generation: {reply[:40]!r}")
            gen, chunk = reply[:gen_end], reply[gen_end + 1 :]
            if generation is None:
                generation = gen
            elif gen != generation:  # the directory changed under us
                restarts += 1
                if restarts > _DIRECTORY_PART_RESTARTS:
                    raise wire.XenstoreError("EAGAIN", f"XS_DIRECTORY_PART {path}")
                names.clear()
                generation = None
                continue
            names += chunk
            if len(names) <= 1 or names.endswith(b"\0\0"):
                break
            if not chunk:
                raise self._broken(f"XS_DIRECTORY_PART of {path} stopped making progress")
        if len(names) <= 1:
            return []
        try:
            return wire.decode_directory(bytes(names[:-1]))
        except wire.WireError as exc:
            raise self._broken(f"XS_DIRECTORY_PART reply: {exc}") from None

    async def get_perms(self, path: str, tx: int = 0) -> list[str]:
        payload = await self.request(wire.XS_GET_PERMS, wire.join(path), tx)
        try:
            return wire.split(payload)
        except wire.WireError as exc:
            raise self._broken(f"XS_GET_PERMS reply: {exc}") from None

    async def set_perms(self, path: str, perms: list[str], tx: int = 0) -> None:
        await self._ok_request(wire.XS_SET_PERMS, wire.join(path, *perms), tx)

    # Watches ----------------------------------------------------------------------------------

    async def watch(self, path: str, token: str, depth: int | None = None) -> None:
        """XS_WATCH; resolves on OK. The immediate first event goes to on_watch like any other.

        `depth` (Xen 4.22, XENSTORE_SERVER_FEATURE_WATCHDEPTH) limits matching to that many
        levels below `path`; older servers answer EINVAL.
        """
        parts = [path, token] if depth is None else [path, token, str(int(depth))]
        await self._ok_request(wire.XS_WATCH, wire.join(*parts))

    async def unwatch(self, path: str, token: str) -> None:
        await self._ok_request(wire.XS_UNWATCH, wire.join(path, token))

    async def reset_watches(self) -> None:
        await self._ok_request(wire.XS_RESET_WATCHES, wire.join(""))

    async def probe(self, timeout: float | None = None) -> None:
        """Show that the server still answers: XS_GET_DOMAIN_PATH of domain 0, which every
        xenstored answers without touching its store. Any answer counts, an XS_ERROR too;
        XenstoreTimeoutError (and, with abort_on_timeout, a closed connection) if none comes."""
        try:
            await self.request(wire.XS_GET_DOMAIN_PATH, wire.join("0"), timeout=timeout)
        except wire.XenstoreError:
            pass

    async def get_feature(self, timeout: float = 1.0) -> int | None:
        """The server's XENSTORE_SERVER_FEATURE_* bitmap (XS_GET_FEATURE with no domid).

        None when the server does not know the request (ENOSYS, or EINVAL) or does not answer
        within `timeout`. A harmless XS_READ of "/" follows the probe at once, so that a
        server holding its error back until the next request (oxenstored) releases it.
        """
        proto = self._proto
        req_id, fut = proto.send(wire.XS_GET_FEATURE, b"")
        flush_id, flush = proto.send(wire.XS_READ, wire.join("/"))
        flush.add_done_callback(_consume)
        try:
            async with asyncio.timeout(timeout):
                payload = await fut
        except TimeoutError:
            proto.abandon(req_id)
            log.info(
                "xenstored at %s did not answer XS_GET_FEATURE within %s s", self.path, timeout
            )
            return None
        except wire.XenstoreError as exc:
            if exc.name in ("ENOSYS", "EINVAL"):
                return None
            raise
        except asyncio.CancelledError:
            proto.abandon(req_id)
            raise
        finally:
            if not flush.done():
                proto.abandon(flush_id)
                flush.cancel()
        text = payload.rstrip(b"\0")
        if not text.isdigit():
            log.warning("xenstored at %s answered XS_GET_FEATURE with %r", self.path, payload)
            return None
        return int(text)

    # Transactions -----------------------------------------------------------------------------

    async def transaction_start(self) -> int:
        payload = await self.request(wire.XS_TRANSACTION_START, wire.join(""))
        text = self._one_string(payload, wire.XS_TRANSACTION_START)
        if not text.isdigit():
            raise self._broken(f"XS_TRANSACTION_START answered {payload[:40]!r}")
        return int(text)

    async def transaction_end(self, tx: int, commit: bool = True) -> bool:
        """Commit (or abort) `tx`. False when the commit lost a race (EAGAIN): start over."""
        if not tx:
            raise ValueError("transaction_end needs the id transaction_start returned, not 0")
        try:
            await self._ok_request(wire.XS_TRANSACTION_END, wire.join("T" if commit else "F"), tx)
        except wire.XenstoreError as exc:
            if exc.name == "EAGAIN":
                return False
            raise
        return True

    # Domains ----------------------------------------------------------------------------------

    async def introduce(self, domid: int, mfn: int, port: int) -> None:
        payload = wire.join(str(int(domid)), str(int(mfn)), str(int(port)))
        await self._ok_request(wire.XS_INTRODUCE, payload)

    async def release(self, domid: int) -> None:
        await self._ok_request(wire.XS_RELEASE, wire.join(str(int(domid))))

    async def resume(self, domid: int) -> None:
        await self._ok_request(wire.XS_RESUME, wire.join(str(int(domid))))

    async def set_target(self, domid: int, target: int) -> None:
        await self._ok_request(wire.XS_SET_TARGET, wire.join(str(int(domid)), str(int(target))))

    async def is_domain_introduced(self, domid: int) -> bool:
        payload = await self.request(wire.XS_IS_DOMAIN_INTRODUCED, wire.join(str(int(domid))))
        answer = self._one_string(payload, wire.XS_IS_DOMAIN_INTRODUCED)
        if answer not in ("T", "F"):
            raise self._broken(f"XS_IS_DOMAIN_INTRODUCED answered {payload[:40]!r}")
        return answer == "T"

    async def get_domain_path(self, domid: int) -> str:
        payload = await self.request(wire.XS_GET_DOMAIN_PATH, wire.join(str(int(domid))))
        return self._one_string(payload, wire.XS_GET_DOMAIN_PATH)
