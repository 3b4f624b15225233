"""How the xenstore client reaches xenstored: a Unix stream socket or a character device.

xenstored listens on a Unix socket (`/var/run/xenstored/socket`); a dom0 without a local
xenstored (xenstore in a stub domain) talks the same protocol through the kernel's
`/dev/xen/xenbus` character device instead. Both end up as one asyncio transport handed to
the same protocol object, so the client never knows which one it has.

The device is driven by the pipe transports of asyncio (they accept character devices): one
read transport and one write transport, each over its own descriptor (a `dup` of the
other) so that either can be closed on its own. `DeviceTransport` joins the two into the
single transport the protocol expects: one `connection_made`, one `connection_lost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat


def kind_of(path: str) -> str:
    """'device' for a character device, 'socket' for anything else (connect() will tell)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "socket"
    return "device" if stat.S_ISCHR(mode) else "socket"


async def open_transport(
    loop: asyncio.AbstractEventLoop, path: str, protocol: asyncio.Protocol
) -> asyncio.Transport:
    """Connect `protocol` to the xenstored at `path`; raises OSError when that fails."""
    if kind_of(path) == "device":
        return await DeviceTransport.open(loop, path, protocol)
    transport, _ = await loop.create_unix_connection(lambda: protocol, path)
    return transport


class _Side(asyncio.Protocol):
    """The protocol of one of the two pipe transports; reports to the joint transport."""

    def __init__(self, joint: DeviceTransport, reader: bool) -> None:
        self._joint = joint
        self._reader = reader

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self._joint._protocol.data_received(data)

    def eof_received(self) -> bool:
        return False  # the pipe transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._joint._side_lost(self._reader, exc)

    def pause_writing(self) -> None:
        self._joint._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._joint._protocol.resume_writing()


class DeviceTransport(asyncio.Transport):
    """A read and a write pipe transport over one character device, seen as one transport.

    Each `write` is handed to the write pipe transport, which writes it at once when its
    buffer is empty: one message per write(2), which is what `/dev/xen/xenbus` expects.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, protocol: asyncio.Protocol):
        super().__init__(extra={"path": path})
        self._loop = loop
        self._protocol = protocol
        self._rt: asyncio.ReadTransport | None = None
        self._wt: asyncio.WriteTransport | None = None
        self._alive = {True: False, False: False}  # reader, writer
        self._first_exc: Exception | None = None
        self._closing = False
        self._lost_called = False

    @classmethod
    async def open(
        cls, loop: asyncio.AbstractEventLoop, path: str, protocol: asyncio.Protocol
    ) -> DeviceTransport:
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        fd = os.open(path, flags)
        try:
            wfd = os.dup(fd)
        except OSError:
            os.close(fd)
            raise
        rfile = os.fdopen(fd, "rb", buffering=0)
        wfile = os.fdopen(wfd, "wb", buffering=0)
        self = cls(loop, path, protocol)
        try:
            # The writer first: once the reader is connected, replies can arrive.
            self._wt, _ = await loop.connect_write_pipe(lambda: _Side(self, False), wfile)
            self._alive[False] = True
            self._rt, _ = await loop.connect_read_pipe(lambda: _Side(self, True), rfile)
            self._alive[True] = True
        except BaseException:
            if self._wt is not None:
                self._wt.abort()
            else:
                with contextlib.suppress(OSError):
                    wfile.close()
            if self._rt is not None:
                self._rt.close()
            else:
                with contextlib.suppress(OSError):
                    rfile.close()
            raise
        protocol.connection_made(self)
        return self

    # asyncio.Transport --------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._wt is None or self._closing:
            raise ConnectionResetError("the xenbus device is closed")
        self._wt.write(data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._shut(abort=False)

    def abort(self) -> None:
        self._shut(abort=True)

    def get_write_buffer_size(self) -> int:
        return self._wt.get_write_buffer_size() if self._wt is not None else 0

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        if self._rt is not None:
            self._rt.pause_reading()

    def resume_reading(self) -> None:
        if self._rt is not None:
            self._rt.resume_reading()

    def is_reading(self) -> bool:
        return self._rt is not None and self._rt.is_reading()

    # ------------------------------------------------------------------------------------------

    def _shut(self, abort: bool) -> None:
        if self._closing:
            return
        self._closing = True
        # A read transport stops at once on close() (it has no abort()); the write side
        # drops what it still buffers only on abort.
        if self._rt is not None and not self._rt.is_closing():
            self._rt.close()
        if self._wt is not None and not self._wt.is_closing():
            if abort:
                self._wt.abort()
            else:
                self._wt.close()

    def _side_lost(self, reader: bool, exc: Exception | None) -> None:
        self._alive[reader] = False
        if exc is not None and self._first_exc is None:
            self._first_exc = exc
        if any(self._alive.values()):
            # One side is gone (EOF or an error): the device is unusable; take the other down.
            self._shut(abort=True)
            return
        if not self._lost_called:
            self._lost_called = True
            self._protocol.connection_lost(self._first_exc)
