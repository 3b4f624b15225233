"""A TEST DOUBLE of `xenmux serve`, for testing the client side of protocol 2 before (and
besides) the real daemon: it speaks the frames of docs/protocol.md's cursor protocol
(hello with `history` and `oldest_seq`; subscribe with `since`/`history`, answered by a
replay, a `gap` with a snapshot, or `bad-cursor`) from a journal the test writes.

It is not the daemon: no hypervisor, no scans, no xenstore. A test scripts what the
daemon would have seen (`add`, `event`), and breaks it the ways a daemon breaks (`down`,
`up`, `drop_connections`, `trim`, `new_history`, `rewind`, `silent`). Every request it
received is in `requests`, to assert what the client asked.

    with doubles() as make:                   # each in a short temporary directory
        daemon = make()
        daemon.add(3, name="guest-3")
        sub = Subscription(None, socket_path=daemon.path)
        daemon.event("shutdown", 3, reason="crash")

It runs in threads of the test process: one accepting, one per connection; `close()`
(done by `doubles`) stops them all and removes the socket and its directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path

from mux.protocol import DEFAULT_KINDS, ERR_BAD_CURSOR

RUNNING, SHUTDOWN, DEAD = "running", "shutdown", "dead"


def _frame(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


class _Peer:
    """One client connection: what it watches, and a lock so frames do not interleave."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.domids: set[int] | None = set()  # None: "*"
        self.kinds: set[str] = set()
        self.subscribed = False

    def send(self, obj: dict) -> None:
        with self.lock:
            try:
                self.sock.sendall(_frame(obj))
            except OSError:
                pass

    def wants(self, frame: dict) -> bool:
        if not self.subscribed or frame["event"] not in self.kinds:
            return False
        return self.domids is None or frame["domid"] in self.domids


class ContractDouble:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.history = secrets.token_hex(16)
        self.seq = 0
        self.oldest_seq = 1
        self.journal: list[dict] = []
        self.table: dict[int, dict] = {}
        self.requests: list[dict] = []
        self.answering = True
        self.lock = threading.RLock()
        self.peers: list[_Peer] = []
        self.threads: list[threading.Thread] = []
        self.listener: socket.socket | None = None
        self.up()

    # -- the script ---------------------------------------------------------------------------

    def add(
        self,
        domid: int,
        *,
        name: str | None = None,
        state: str = RUNNING,
        reason=None,
        paused: bool = False,
        uuid: str | None = None,
    ) -> str:
        """A domain the daemon already knew (no event)."""
        uuid = uuid or str(uuidlib.uuid4())
        with self.lock:
            self.table[domid] = {
                "domid": domid,
                "uuid": uuid,
                "state": state,
                "reason": reason,
                "name": name,
                "paused": paused,
            }
        return uuid

    def event(
        self,
        kind: str,
        domid: int,
        *,
        reason: str | None = None,
        uuid: str | None = None,
        name: str | None = None,
        **flags,
    ) -> dict:
        """Journal one event (updating the table as the daemon would) and send it live."""
        with self.lock:
            row = self.table.get(domid)
            if kind == "new":
                uuid = uuid or str(uuidlib.uuid4())
                row = self.table[domid] = {
                    "domid": domid,
                    "uuid": uuid,
                    "state": RUNNING,
                    "reason": None,
                    "name": name,
                    "paused": bool(flags.get("paused")),
                }
            assert row is not None, f"domain {domid} unknown to the double"
            if kind == "shutdown":
                row["state"], row["reason"] = SHUTDOWN, reason
            elif kind == "resumed":
                row["state"], row["reason"] = RUNNING, None
            elif kind == "death":
                row["state"] = DEAD
                reason = reason if reason is not None else row["reason"]
                row["reason"] = reason
            elif kind in ("paused", "unpaused"):
                row["paused"] = kind == "paused"
            self.seq += 1
            frame = {"seq": self.seq, "event": kind, "domid": domid, "uuid": row["uuid"]}
            if reason and kind in ("shutdown", "death"):
                frame["reason"] = reason
            if name or row.get("name"):
                frame["name"] = name or row["name"]
            frame.update({k: v for k, v in flags.items() if v})
            frame["time"] = 1_764_000_000.0 + self.seq
            if kind == "released":
                del self.table[domid]
            self.journal.append(frame)
            for peer in list(self.peers):
                if peer.wants(frame):
                    peer.send(frame)
            return frame

    def add_guests(self, count: int) -> None:
        """guest-1 .. guest-COUNT, running, as domids 1 .. COUNT."""
        for domid in range(1, count + 1):
            self.add(domid, name=f"guest-{domid}")

    def down(self) -> None:
        """The daemon stops: connections closed, socket gone."""
        with self.lock:
            if self.listener is not None:
                try:
                    self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
                except OSError:
                    pass
                self.listener.close()
                self.listener = None
                os.unlink(self.path)
            self.drop_connections()

    def up(self) -> None:
        """The daemon (re)starts with the same state: same history, same journal."""
        with self.lock:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(self.path)
            sock.listen(64)
            self.listener = sock
        self._spawn(self._accept, sock)

    def drop_connections(self) -> None:
        with self.lock:
            for peer in self.peers:
                try:
                    peer.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.peers.clear()

    def trim(self, oldest_seq: int) -> None:
        """The journal's bound dropped everything before `oldest_seq`."""
        with self.lock:
            self.oldest_seq = oldest_seq
            self.journal = [f for f in self.journal if f["seq"] >= oldest_seq]

    def new_history(self) -> None:
        """A new boot, or a lost state directory: another history, seq from 0."""
        with self.lock:
            self.history = secrets.token_hex(16)
            self.seq, self.oldest_seq, self.journal = 0, 1, []

    def rewind(self, seq: int) -> None:
        """Same history, but the state restored from an older copy: seq back to `seq`."""
        with self.lock:
            self.journal = [f for f in self.journal if f["seq"] <= seq]
            self.seq = seq

    def silent(self) -> None:
        """Accept connections, read requests, answer none (a hung daemon)."""
        self.answering = False

    def subscribes(self) -> list[dict]:
        return [r for r in self.requests if r.get("op") == "subscribe"]

    # -- serving ------------------------------------------------------------------------------

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(t)
        t.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            peer = _Peer(conn)
            with self.lock:
                if self.listener is not listener:
                    conn.close()
                    return
                self.peers.append(peer)
            self._spawn(self._serve, peer)

    def _serve(self, peer: _Peer) -> None:
        buf = b""
        try:
            while True:
                data = peer.sock.recv(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    req = json.loads(line)
                    with self.lock:
                        self.requests.append(req)
                        if self.answering:
                            self._answer(peer, req)
        except OSError:
            return
        finally:
            peer.sock.close()

    def _answer(self, peer: _Peer, req: dict) -> None:
        rid, op = req.get("id"), req.get("op")
        if op == "hello":
            peer.send(
                {
                    "id": rid,
                    "ok": True,
                    "server": "contract-double",
                    "protocol": 2,
                    "instance": "double",
                    "history": self.history,
                    "seq": self.seq,
                    "oldest_seq": self.oldest_seq,
                }
            )
        elif op == "subscribe":
            self._subscribe(peer, req)
        elif op == "list":
            peer.send({"id": rid, "ok": True, "domains": self._rows(None), "seq": self.seq})
        elif op == "rescan":
            peer.send({"id": rid, "ok": True, "events": 0, "seq": self.seq})
        elif op == "ping":
            peer.send({"id": rid, "ok": True})
        else:
            peer.send(
                {
                    "id": rid,
                    "ok": False,
                    "error": {"code": "unknown-op", "message": f"unknown op {op!r}"},
                }
            )

    def _rows(self, domids: set[int] | None) -> list[dict]:
        return [dict(r) for d, r in sorted(self.table.items()) if domids is None or d in domids]

    def _subscribe(self, peer: _Peer, req: dict) -> None:
        rid = req.get("id")
        wanted = None if req["domids"] == "*" else set(req["domids"])
        kinds = set(req.get("events") or DEFAULT_KINDS)
        since, history = req.get("since"), req.get("history", self.history)
        if "since" in req and (
            isinstance(since, bool)
            or not isinstance(since, int)
            or since < 0
            or (history == self.history and since > self.seq)
        ):
            peer.send(
                {
                    "id": rid,
                    "ok": False,
                    "error": {
                        "code": ERR_BAD_CURSOR,
                        "message": f"since {since!r} is not a seq of this history ({self.seq})",
                    },
                }
            )
            return
        peer.domids = None if wanted is None else (peer.domids or set()) | wanted
        peer.kinds |= kinds
        served = (
            "since" in req and history == self.history and self.oldest_seq - 1 <= since <= self.seq
        )
        reply = {"id": rid, "ok": True, "history": self.history, "seq": self.seq}
        if served:
            peer.send({**reply, "since": since})
            for frame in self.journal:
                if (
                    frame["seq"] > since
                    and (wanted is None or frame["domid"] in wanted)
                    and frame["event"] in kinds
                ):
                    peer.send(frame)
        else:
            rows = self._rows(wanted)
            absent = [] if wanted is None else sorted(wanted - {r["domid"] for r in rows})
            gap = {"gap": True} if "since" in req else {}
            peer.send({**reply, **gap, "snapshot": rows, "absent": absent})
        peer.subscribed = True

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        self.down()
        for t in self.threads:
            t.join(5)
        assert not any(t.is_alive() for t in self.threads), "a thread of the double is stuck"
        assert not os.path.lexists(self.path)

    def __enter__(self) -> ContractDouble:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def doubles() -> Iterator[Callable[[], ContractDouble]]:
    """A factory of ContractDoubles, each on a socket in its own short temporary directory
    (sun_path holds 108 bytes); all closed and removed on exit. A test module makes its
    fixture of it:

        @pytest.fixture
        def double():
            with doubles() as make:
                yield make()
    """
    made: list[tuple[ContractDouble, Path]] = []

    def make() -> ContractDouble:
        directory = Path(tempfile.mkdtemp(prefix="xmcd", dir="/tmp"))
        made.append((ContractDouble(directory / "x.sock"), directory))
        return made[-1][0]

    try:
        yield make
    finally:
        for double, directory in made:
            try:
                double.close()
            finally:
                shutil.rmtree(directory, ignore_errors=True)
