"""A subscriber that speaks the cursor protocol on a raw socket (docs/protocol.md), for the
tests of the journal and of daemon restarts.

    with Cursor(d.sock) as c:
        reply = c.subscribe("*")                  # {"ok": true, "history": H, "seq": S, ...}
        events = c.take(3)                        # frames, parsed
    with Cursor(d.sock) as c2:
        c2.subscribe("*", since=events[-1]["seq"], history=reply["history"])

`Follower` is a thread that keeps one stream across daemon restarts: it reconnects and
resubscribes with `since` (its last seq) and `history`, and records every frame and reply.
"""

from __future__ import annotations

import json
import socket
import threading
import time


class Cursor:
    """One connection: requests, replies and event frames, read with timeouts."""

    def __init__(self, path: str, timeout: float = 20.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.pending: list[dict] = []  # frames read while waiting for a reply
        self.next_id = 0

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def line(self, timeout: float = 20.0) -> dict | None:
        """The next line, parsed (None if nothing came within `timeout`); EOFError at the
        end of the stream."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                return None
            if not chunk:
                raise EOFError("the daemon closed the connection")
            self.buf += chunk
        raw, _, self.buf = self.buf.partition(b"\n")
        return json.loads(raw)

    def request(self, op: str, **fields) -> dict:
        self.next_id += 1
        req = {"op": op, "id": self.next_id, **fields}
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self.line()
            assert msg is not None, f"no reply to {req}"
            if msg.get("id") == self.next_id and "ok" in msg:
                return msg
            self.pending.append(msg)

    def subscribe(self, domids="*", **fields) -> dict:
        return self.request("subscribe", domids=domids, **fields)

    def take(self, count: int, timeout: float = 20.0) -> list[dict]:
        """Exactly `count` event frames (fails if fewer arrive within `timeout`)."""
        deadline = time.monotonic() + timeout
        out = self.pending[:count]
        del self.pending[:count]
        while len(out) < count:
            msg = self.line(deadline - time.monotonic())
            assert msg is not None, f"only {len(out)} of {count} frames arrived: {out[-3:]}"
            out.append(msg)
        return out

    def quiet(self, seconds: float = 0.5) -> list[dict]:
        """Whatever arrives within `seconds` (to show that nothing more does)."""
        out, self.pending = self.pending, []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self.line(left)
            if msg is not None:
                out.append(msg)
        return out


class Follower(threading.Thread):
    """A wildcard stream kept across daemon restarts by cursor, as a client library would."""

    def __init__(self, path: str, **subscribe_fields) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.fields = subscribe_fields
        self.frames: list[dict] = []
        self.replies: list[dict] = []
        self.history: str | None = None
        self.last_seq: int | None = None
        self.reconnects = 0
        self._done = threading.Event()
        self._cursor: Cursor | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._done.is_set():
                try:
                    self._follow()
                except (OSError, EOFError):
                    self.reconnects += 1
                    time.sleep(0.05)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _follow(self) -> None:
        with Cursor(self.path) as c:
            self._cursor = c
            fields = dict(self.fields)
            if self.last_seq is not None:
                fields.update(since=self.last_seq, history=self.history)
            reply = c.subscribe("*", **fields)
            self.replies.append(reply)
            assert reply["ok"], reply
            self.history = reply["history"]
            if "since" not in reply:
                self.last_seq = reply["seq"]
            self.frames.extend(c.pending)
            c.pending = []
            while not self._done.is_set():
                msg = c.line(0.1)
                if msg is None:
                    continue
                self.frames.append(msg)
                if "seq" in msg:
                    self.last_seq = msg["seq"]

    def wait_for_seq(self, seq: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.last_seq is None or self.last_seq < seq:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"the follower is at {self.last_seq}, not {seq}"
            time.sleep(0.02)

    def stop(self) -> None:
        self._done.set()
        self.join(10)
        assert not self.is_alive(), "the follower did not stop"
        if self.error is not None:
            raise self.error
