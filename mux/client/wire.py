"""One connection to the daemon: JSON lines out, JSON lines in, every wait bounded.

`LineSocket` (blocking) and `AsyncLineStream` (asyncio) do the same three things: connect,
read the next line before a deadline, and send a request then read until its reply (event
frames that arrive meanwhile are kept in `backlog`). A `Deadline` is one budget shared by
every step of an operation, so that "3 seconds" holds for connect + hello + subscribe
together and not for each of them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import select
import socket
import time
from dataclasses import dataclass

from mux.client.errors import XenmuxError, lost, no_answer, unreachable

MAX_REPLY = 64 * 1024 * 1024  # a `list` or a wildcard snapshot of 32,000 domains is large


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock (None: never), with the budget it was made from,
    to say "within 3 s" when it passes. asyncio's loop clock is the same monotonic clock."""

    at: float | None
    seconds: float | None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        if seconds is None:
            return NEVER
        return cls(time.monotonic() + seconds, seconds)

    def left(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def sooner(self, other: Deadline) -> Deadline:
        if other.at is None or (self.at is not None and self.at <= other.at):
            return self
        return other


NEVER = Deadline(None, None)


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def check(reply: dict) -> dict:
    """The reply itself if it says ok, else its error raised as XenmuxError."""
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise XenmuxError(err.get("message", "request failed"), err.get("code"))
    return reply


# The C scanner under json.loads, called directly for a line that is one JSON value: loads'
# own steps around it (the encoding sniffed, the text decoded, whitespace matched) were half
# of a follower's decode. Anything else (leading space, trailing text) takes json.loads.
_scan = json.JSONDecoder().scan_once


def _scanned(line: bytes) -> object:
    """The line's JSON value read by the C scanner alone, or None: json.loads decides."""
    try:
        text = line.decode()
        value, end = _scan(text, 0)
    except (ValueError, StopIteration):  # UnicodeDecodeError is a ValueError
        return None
    return None if text[end:].strip(" \t\n\r") else value


def _decode(line: bytes, path: str) -> dict:
    msg = _scanned(line)
    try:
        if msg is None:
            msg = json.loads(line)
    except ValueError:
        raise lost(path, "it sent a line that is not JSON") from None
    if not isinstance(msg, dict):
        raise lost(path, "it sent a line that is not a JSON object")
    return msg


class _Replies:
    """What both connections do with a line while they await a reply."""

    path: str
    backlog: list[dict]

    def _reply_in(self, msg: dict | None, op: str, req_id: int, deadline: Deadline):
        """`msg` if it is the reply to `req_id`; None after keeping an event frame."""
        if msg is None:
            raise no_answer(self.path, op, deadline.seconds or 0.0)
        if msg.get("id") == req_id and "ok" in msg:
            return msg
        if "event" in msg:
            self.backlog.append(msg)
        return None


class LineSocket(_Replies):
    """A blocking connection. Raises Unreachable (or TimedOut, a kind of it) when the
    daemon cannot be reached, goes away, or does not answer before the deadline."""

    def __init__(self, path: str, deadline: Deadline = NEVER) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(deadline.left())
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise unreachable(path, exc) from None
        self.sock.settimeout(None)  # reads wait in select() against their deadline
        self.buf = bytearray()
        self.ids = itertools.count(1)
        self.backlog: list[dict] = []  # event frames that arrived while awaiting a reply

    def readline(self, deadline: Deadline = NEVER) -> dict | None:
        """The next JSON object; None once the deadline has passed."""
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                return _decode(line, self.path)
            if len(self.buf) > MAX_REPLY:
                raise lost(self.path, "it sent a line over 64 MiB")
            left = deadline.left()
            if left is not None and not select.select([self.sock], [], [], left)[0]:
                return None
            try:
                data = self.sock.recv(1 << 20)
            except OSError as exc:
                raise lost(self.path, exc.strerror or str(exc)) from None
            if not data:
                raise lost(self.path, "the daemon closed it")
            self.buf += data

    def request(self, op: str, fields: dict, deadline: Deadline = NEVER) -> dict:
        """Send one request and return its reply as it came (ok or not)."""
        req_id = next(self.ids)
        try:
            self.sock.sendall(encode({"op": op, "id": req_id, **fields}))
        except OSError as exc:
            raise lost(self.path, exc.strerror or str(exc)) from None
        while True:
            reply = self._reply_in(self.readline(deadline), op, req_id, deadline)
            if reply is not None:
                return reply

    def close(self) -> None:
        self.sock.close()


class AsyncLineStream(_Replies):
    """The asyncio twin of LineSocket; `await AsyncLineStream.open(path, deadline)`."""

    def __init__(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.path = path
        self.reader = reader
        self.writer = writer
        self.ids = itertools.count(1)
        self.backlog: list[dict] = []

    @classmethod
    async def open(cls, path: str, deadline: Deadline = NEVER) -> AsyncLineStream:
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for drops a cancellation that
            # arrives as the awaited call completes, and the caller's task would go on.
            async with asyncio.timeout(deadline.left()):
                reader, writer = await asyncio.open_unix_connection(path, limit=MAX_REPLY)
        except OSError as exc:  # TimeoutError included
            raise unreachable(path, exc) from None
        return cls(path, reader, writer)

    async def readline(self, deadline: Deadline = NEVER) -> dict | None:
        try:
            if deadline.at is None:
                # (no timeout to set: a follower's every read, where the timeout scope cost
                # a few per cent of the bridge's CPU per event)
                line = await self.reader.readline()
            else:
                async with asyncio.timeout(deadline.left()):
                    line = await self.reader.readline()
        except TimeoutError:
            return None
        except ValueError:  # asyncio's LimitOverrunError and friends
            raise lost(self.path, "it sent a line over 64 MiB") from None
        except OSError as exc:
            raise lost(self.path, exc.strerror or str(exc)) from None
        if not line:
            raise lost(self.path, "the daemon closed it")
        return _decode(line, self.path)

    async def request(self, op: str, fields: dict, deadline: Deadline = NEVER) -> dict:
        req_id = next(self.ids)
        try:
            self.writer.write(encode({"op": op, "id": req_id, **fields}))
            await self.writer.drain()
        except OSError as exc:
            raise lost(self.path, exc.strerror or str(exc)) from None
        while True:
            reply = self._reply_in(await self.readline(deadline), op, req_id, deadline)
            if reply is not None:
                return reply

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass
