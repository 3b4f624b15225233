"""One client connection (the socket side of C xenstored's connection handling): frames
in, whole messages handed to the server, replies and watch events out.

A header announcing more than XENSTORE_PAYLOAD_MAX drops the connection (handle_input():
"Client tried to feed us"); a watcher that stops reading is dropped once WRITE_HARD_LIMIT
bytes are queued for it; a client that does not read its replies is not read from until it
does. All output goes through the connection's `ConnWriter` (mux/sim/_simfast.pyx), which
the sim's change thread writes its watch events through too, so that replies and events
never interleave and leave in order. With oxenstored's rules a request with an empty payload
is handled only once more bytes follow it, as oxenstored's reader does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING

from mux.sim._simfast import ConnWriter
from mux.xenstore.wire import HEADER, HEADER_SIZE, XENSTORE_PAYLOAD_MAX

if TYPE_CHECKING:
    from mux.sim.xenstored.interfaces import Server
    from mux.sim.xenstored.transactions import Transaction
    from mux.sim.xenstored.watches import Watch

log = logging.getLogger("mux.sim.xenstored")

WRITE_HARD_LIMIT = 64 * 1024 * 1024
# A client's queued replies past which it is not read from until they drain below the low
# mark (asyncio's transport defaults, which this backpressure had before the writer).
WRITE_HIGH = 64 * 1024
WRITE_LOW = 16 * 1024


class XsConnection(asyncio.Protocol):
    """One client socket: frames in, replies and events out."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.watches: list[Watch] = []
        self.transactions: dict[int, Transaction] = {}
        self.next_tx = 1
        self.closed = False
        self._reading_paused = False
        self.writer: ConnWriter | None = None
        self._fd = -1
        self._flushing = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        # A descriptor of our own for the socket: the loop refuses a writable callback on a
        # transport's, and the change thread must never write to a number reused after close.
        self._fd = os.dup(transport.get_extra_info("socket").fileno())
        os.set_blocking(self._fd, False)
        self.writer = ConnWriter(self.server.engine, self._fd)
        self.server.connections.add(self)

    def connection_lost(self, exc) -> None:
        self._closed()

    def _closed(self) -> None:
        with self.server.engine:
            self.closed = True
            self._stop_output()
            self.server.connection_lost(self)

    def data_received(self, data: bytes) -> None:
        with self.server.engine:  # the host's lock; what the change thread did is known first
            self._received(data)

    def _received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        size = len(buf)
        handle = self.server.handle
        hold_empty = self.server.rules.holds_empty_requests
        while size - pos >= HEADER_SIZE:
            msg_type, req_id, tx_id, length = HEADER.unpack_from(buf, pos)
            if length > XENSTORE_PAYLOAD_MAX:
                log.info("client sent a %d-byte payload: dropping it", length)
                self.server.counters.dropped_connections += 1
                self.close()
                return
            end = pos + HEADER_SIZE + length
            if end > size or (hold_empty and not length and end == size):
                # (oxenstored: a request with no payload waits for the next bytes)
                break
            payload = bytes(buf[pos + HEADER_SIZE : end])
            pos = end
            handle(self, msg_type, req_id, tx_id, payload)
            if self.closed:
                return
        if pos:
            del buf[:pos]

    def send(self, msg_type: int, req_id: int, tx_id: int, payload: bytes) -> None:
        if self.closed:
            return
        self._write(HEADER.pack(msg_type, req_id, tx_id, len(payload)) + payload)

    def send_event(self, frame: bytes) -> None:
        if self.closed:
            return
        if self._write(frame) > WRITE_HARD_LIMIT:
            self.drop_watcher()

    def drop_watcher(self) -> None:
        """A watcher that stopped reading: dropped once WRITE_HARD_LIMIT bytes wait for it."""
        log.warning("a watcher stopped reading (%d bytes queued): dropping it", WRITE_HARD_LIMIT)
        self.server.counters.dropped_connections += 1
        self.close()

    def _write(self, data: bytes) -> int:
        queued = self.writer.write(data)
        if queued:
            if not self._flushing:
                self._flushing = True
                asyncio.get_running_loop().add_writer(self._fd, self._flush)
            if queued > WRITE_HIGH and not self._reading_paused:
                # Backpressure for requests: a client that does not read its replies is not
                # read from until it does.
                self._reading_paused = True
                self.transport.pause_reading()
        return queued

    def _flush(self) -> None:
        if self.closed:
            return
        queued = self.writer.flush()
        if not queued:
            self._flushing = False
            asyncio.get_running_loop().remove_writer(self._fd)
        if self._reading_paused and queued < WRITE_LOW:
            self._reading_paused = False
            self.transport.resume_reading()

    def _stop_output(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._flushing:
            self._flushing = False
            asyncio.get_running_loop().remove_writer(self._fd)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        if not self.closed:
            self._closed()
            if self.transport is not None:
                self.transport.abort()


async def serve_unix(server: Server, sock: socket.socket) -> asyncio.AbstractServer:
    """Serve on an already bound and listening Unix socket."""
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(lambda: XsConnection(server), sock=sock)
