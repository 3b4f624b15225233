"""A minimal blocking xenstore wire client: exact replies, errors and events.

Used by the tests to check every byte the sim's xenstored sends, and by `WireToolstack`
(toolstack.py) to drive an external xenstored (for example Debian's C xenstored) the way libxl
does. It is deliberately small: one request at a time, events kept aside while waiting.
"""

from __future__ import annotations

import socket
import time
from collections import deque

from mux.xenstore import wire


class XsClient:
    """A minimal blocking xenstore wire client, for exact checks of replies and events."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.timeout = timeout
        self.buf = b""
        self.events: deque[tuple[str, str]] = deque()
        self.req_id = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> XsClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_message(self, timeout: float | None) -> tuple[int, int, int, bytes] | None:
        """One message, or None on timeout (raises ConnectionError when closed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if len(self.buf) >= wire.HEADER_SIZE:
                t, rid, tx, ln = wire.HEADER.unpack_from(self.buf)
                if len(self.buf) >= wire.HEADER_SIZE + ln:
                    payload = self.buf[wire.HEADER_SIZE : wire.HEADER_SIZE + ln]
                    self.buf = self.buf[wire.HEADER_SIZE + ln :]
                    return t, rid, tx, payload
            left = self.timeout if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("xenstored closed the connection")
            self.buf += chunk

    def request(self, msg_type: int, payload: bytes = b"", tx_id: int = 0) -> tuple[int, bytes]:
        """(reply type, payload); events that arrive meanwhile are kept in .events."""
        self.req_id += 1
        self.sock.sendall(wire.encode(msg_type, self.req_id, tx_id, payload))
        while True:
            msg = self._read_message(self.timeout)
            if msg is None:
                raise TimeoutError(f"no reply to message type {msg_type}")
            t, rid, tx, body = msg
            if t == wire.XS_WATCH_EVENT:
                self.events.append(wire.decode_watch_event(body))
                continue
            if rid != self.req_id or tx != tx_id:
                raise wire.WireError(
                    f"reply (req_id {rid}, tx_id {tx}) to request ({self.req_id}, {tx_id})"
                )
            return t, body

    def ok(self, msg_type: int, *parts: str | bytes, tx_id: int = 0, raw: bytes | None = None):
        """The reply payload; raises wire.XenstoreError on XS_ERROR."""
        payload = raw if raw is not None else wire.join(*parts)
        t, body = self.request(msg_type, payload, tx_id)
        if t == wire.XS_ERROR:
            raise wire.XenstoreError(wire.decode_error(body), wire.XsdSockmsgType(msg_type).name)
        if t != msg_type:
            raise wire.WireError(f"reply of type {t} to a request of type {msg_type}")
        return body

    def error(self, msg_type: int, *parts: str | bytes, tx_id: int = 0, raw=None) -> str:
        """The errno name of a request that must fail."""
        payload = raw if raw is not None else wire.join(*parts)
        t, body = self.request(msg_type, payload, tx_id)
        if t != wire.XS_ERROR:
            raise AssertionError(f"expected an error, got type {t}: {body[:60]!r}")
        return wire.decode_error(body)

    def read(self, path: str, tx_id: int = 0) -> bytes:
        return self.ok(wire.XS_READ, path, tx_id=tx_id)

    def write(self, path: str, value: bytes | str, tx_id: int = 0) -> None:
        value = value.encode() if isinstance(value, str) else value
        self.ok(wire.XS_WRITE, raw=path.encode() + b"\0" + value, tx_id=tx_id)

    def directory(self, path: str, tx_id: int = 0) -> list[str]:
        return wire.decode_directory(self.ok(wire.XS_DIRECTORY, path, tx_id=tx_id))

    def watch(self, path: str, token: str, *extra: str) -> None:
        wire.decode_ok(self.ok(wire.XS_WATCH, path, token, *extra))

    def event(self, timeout: float = 5.0) -> tuple[str, str] | None:
        """The next watch event, or None when none comes within `timeout`."""
        if self.events:
            return self.events.popleft()
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_message(max(0.0, deadline - time.monotonic()))
            if msg is None:
                return None
            t, _rid, _tx, body = msg
            if t == wire.XS_WATCH_EVENT:
                return wire.decode_watch_event(body)

    def sync(self) -> list[tuple[str, str]]:
        """A round trip; returns (and clears) the events that arrived before its reply.

        Whatever xenstored wrote to this connection before it handled the request (such as
        the firings of a sim-ctl operation that already returned) is among them.
        """
        self.request(wire.XS_READ, wire.join("/"))
        out = list(self.events)
        self.events.clear()
        return out

    def drain_events(self, quiet: float = 0.2) -> list[tuple[str, str]]:
        """Every event that arrives until none came for `quiet` seconds."""
        out = []
        while (ev := self.event(quiet)) is not None:
            out.append(ev)
        return out
