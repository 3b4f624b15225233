"""One client connection (the socket side of C xenstored's connection handling): frames
in, whole messages handed to the server, replies and watch events out.

A header announcing more than XENSTORE_PAYLOAD_MAX drops the connection (handle_input():
"Client tried to feed us"); a watcher that stops reading is dropped once WRITE_HARD_LIMIT
bytes are queued for it; a client that does not read its replies is not read from until it
does. With oxenstored's rules a request with an empty payload is handled only once more
bytes follow it, as oxenstored's reader does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from mux.xenstore.wire import HEADER, HEADER_SIZE, XENSTORE_PAYLOAD_MAX

if TYPE_CHECKING:
    from mux.sim.xenstored.interfaces import Server
    from mux.sim.xenstored.transactions import Transaction
    from mux.sim.xenstored.watches import Watch

log = logging.getLogger("mux.sim.xenstored")

WRITE_HARD_LIMIT = 64 * 1024 * 1024


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

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.server.connection_lost(self)

    def data_received(self, data: bytes) -> None:
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
        self.transport.write(HEADER.pack(msg_type, req_id, tx_id, len(payload)) + payload)

    def send_event(self, frame: bytes) -> None:
        if self.closed:
            return
        transport = self.transport
        transport.write(frame)
        if transport.get_write_buffer_size() > WRITE_HARD_LIMIT:
            log.warning(
                "a watcher stopped reading (%d bytes queued): dropping it", WRITE_HARD_LIMIT
            )
            self.server.counters.dropped_connections += 1
            self.close()

    # Backpressure for requests: stop reading from a client that does not read its replies.
    def pause_writing(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.connection_lost(self)
            if self.transport is not None:
                self.transport.abort()


async def serve_unix(server: Server, sock: socket.socket) -> asyncio.AbstractServer:
    """Serve on an already bound and listening Unix socket."""
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(lambda: XsConnection(server), sock=sock)
