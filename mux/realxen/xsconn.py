"""A small blocking xenstore client over the Unix socket (our wire codecs), for talking to a
real xenstored exactly: every frame kept, watch events aside in arrival order."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

from mux.xenstore import wire

STEP_TIMEOUT = 5.0  # seconds for any single wait on a server

Raw = tuple[int, bytes]  # (message type, payload) as the server sent it


class XsConnection:
    """One connection; watch events that arrive are kept in `events` in arrival order."""

    def __init__(self, path: Path | str, timeout: float = STEP_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.timeout = timeout
        self._buf = b""
        self._next_id = 1
        self.events: list[tuple[str, str]] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> XsConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- raw frames
    def send(self, msg_type: int, payload: bytes = b"", tx_id: int = 0) -> int:
        req_id = self._next_id
        self._next_id += 1
        self.sock.sendall(wire.HEADER.pack(msg_type, req_id, tx_id, len(payload)) + payload)
        return req_id

    def recv(self, timeout: float | None = None) -> tuple[int, int, int, bytes]:
        """The next frame (type, req_id, tx_id, payload); TimeoutError when none comes."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self._buf) >= wire.HEADER_SIZE:
                t, rid, tx, n = wire.HEADER.unpack_from(self._buf)
                if len(self._buf) >= wire.HEADER_SIZE + n:
                    payload = self._buf[wire.HEADER_SIZE : wire.HEADER_SIZE + n]
                    self._buf = self._buf[wire.HEADER_SIZE + n :]
                    return t, rid, tx, payload
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError("no reply from xenstored")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("xenstored closed the connection")
            self._buf += chunk

    def exchange(
        self, msg_type: int, payload: bytes = b"", tx_id: int = 0, timeout: float | None = None
    ) -> list[Raw]:
        """Send one request; every frame up to and including its reply, in arrival order."""
        req_id = self.send(msg_type, payload, tx_id)
        got: list[Raw] = []
        while True:
            t, rid, _tx, body = self.recv(timeout)
            got.append((t, body))
            if t == wire.XS_WATCH_EVENT:
                self.events.append(tuple(wire.decode_watch_event(body)))  # type: ignore[arg-type]
            elif rid == req_id:
                return got

    def call(self, msg_type: int, payload: bytes = b"", tx_id: int = 0) -> bytes:
        t, body = self.exchange(msg_type, payload, tx_id)[-1]
        if t == wire.XS_ERROR:
            raise wire.XenstoreError(wire.decode_error(body), wire.XsdSockmsgType(msg_type).name)
        if t != msg_type:
            raise wire.WireError(f"reply type {t} to a request of type {msg_type}")
        return body

    # -- requests
    def read(self, path: str, tx: int = 0) -> bytes:
        return self.call(wire.XS_READ, wire.join(path), tx)

    def write(self, path: str, value: str | bytes, tx: int = 0) -> None:
        v = value.encode() if isinstance(value, str) else value
        self.call(wire.XS_WRITE, path.encode() + b"\0" + v, tx)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self.call(wire.XS_MKDIR, wire.join(path), tx)

    def rm(self, path: str, tx: int = 0) -> None:
        self.call(wire.XS_RM, wire.join(path), tx)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        return wire.decode_directory(self.call(wire.XS_DIRECTORY, wire.join(path), tx))

    def set_perms(self, path: str, *perms: str, tx: int = 0) -> None:
        self.call(wire.XS_SET_PERMS, wire.join(path, *perms), tx)

    def watch(self, path: str, token: str) -> None:
        self.call(wire.XS_WATCH, wire.join(path, token))

    def unwatch(self, path: str, token: str) -> None:
        self.call(wire.XS_UNWATCH, wire.join(path, token))

    def transaction_start(self) -> int:
        return int(wire.split(self.call(wire.XS_TRANSACTION_START, b"\0"), 1)[0])

    def transaction_end(self, tx: int, commit: bool = True) -> None:
        self.call(wire.XS_TRANSACTION_END, wire.join("T" if commit else "F"), tx)

    def introduce(self, domid: int, mfn: int, port: int) -> None:
        self.call(wire.XS_INTRODUCE, wire.join(str(domid), str(mfn), str(port)))

    def release(self, domid: int) -> None:
        self.call(wire.XS_RELEASE, wire.join(str(domid)))

    def resume(self, domid: int) -> None:
        self.call(wire.XS_RESUME, wire.join(str(domid)))

    def is_introduced(self, domid: int) -> bool:
        return wire.split(self.call(wire.XS_IS_DOMAIN_INTRODUCED, wire.join(str(domid))))[0] == "T"

    def sync(self) -> list[tuple[str, str]]:
        """A round trip; returns (and forgets) the watch events that arrived before its reply.

        Both servers handle a raised VIRQ before the socket input of the same poll round
        and queue a firing before any later reply, so after `send_virq()` a sync shows
        exactly the firings that VIRQ caused on this connection.
        """
        self.call(wire.XS_GET_DOMAIN_PATH, wire.join("0"))
        got, self.events = self.events, []
        return got
