"""Whatever one client does, the daemon keeps serving the others (issue 11 items 1 and 6).

A member that floods `list` requests and never reads, subscribers that stop reading, a
client that half-closes: each costs the daemon a bounded number of bytes, which come back
when it goes, and every other client keeps getting its answers and its events. Bounds are
asserted on bytes (the daemon's RSS and what it holds for clients), never on wall time.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path

from daemonhelpers import brief, take, until
from test_daemon_resilience import _raw as raw

MiB = 1 << 20


def rss(pid: int) -> int:
    """Resident bytes of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def ask(s: socket.socket, obj: dict) -> dict:
    s.sendall(json.dumps(obj).encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1 << 20)
        assert chunk, "the daemon closed the connection"
        buf += chunk
    return json.loads(buf)


class Flooder(threading.Thread):
    """Sends `count` list requests as fast as the daemon takes them, and reads nothing."""

    def __init__(self, path: str, count: int) -> None:
        super().__init__(daemon=True)
        self.sock = raw(path, rcvbuf=4096)
        self.sock.settimeout(None)
        pad = b"x" * 1000  # 6 MB of requests for 6,000: more than any buffer on the way
        self.data = b"".join(
            b'{"op": "list", "id": %d, "pad": "%s"}\n' % (i, pad) for i in range(count)
        )
        self.sent = 0

    def run(self) -> None:
        try:
            self.sent = self.sock.send(self.data)
            while self.sent < len(self.data):
                self.sent += self.sock.send(self.data[self.sent :])
        except OSError:
            pass  # closed by the test

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.join(10)


def test_a_member_flooding_requests_costs_bytes_not_service(sim_factory, daemon_factory):
    host = sim_factory(domains=1000)
    d = daemon_factory(host, "--full-scan", "0")
    with d.client() as c:
        list_reply = len(json.dumps({"id": 1, "ok": True, "domains": c.list(), "seq": 0}))
    assert list_reply > 100_000  # a thousand rows
    baseline = rss(d.pid)
    with d.subscribe(None) as sub:
        # 6,000 list requests: answered all at once, that is 6,000 x 130 KB of replies.
        flood = Flooder(d.sock, 6000)
        flood.start()
        until(lambda: d.stats()["reads_paused"] >= 1)
        pinger = raw(d.sock)
        for i in range(20):
            assert ask(pinger, {"op": "ping", "id": i}) == {"id": i, "ok": True}
        # The scans and the fan-out go on: a domain born and killed during the flood is
        # reported, as is a crash.
        (born,) = host.ctl.create()
        assert brief(take(sub, 1)) == [("new", born["domid"], None)]
        host.ctl.shutdown(5, "crash")
        # The destroy waits for the shutdown's frame: a shutdown and a destroy inside one
        # scan give a death without a reason, as docs/protocol.md allows.
        assert brief(take(sub, 1)) == [("shutdown", 5, "crash")]
        host.ctl.destroy(5)
        host.ctl.destroy(born["domid"])
        got = brief(take(sub, 4))
        assert ("death", 5, "crash") in got and ("death", born["domid"], None) in got
        st = d.stats()
        # What the flooder costs: its transport's buffer and one reply, not its requests.
        assert st["output_bytes"] <= 64 * 1024 + list_reply + 4096, st["output_bytes"]
        assert flood.sent < len(flood.data)  # the daemon stopped reading it
        assert rss(d.pid) - baseline < 64 * MiB
        flood.close()
        until(lambda: d.stats()["clients"] == 3)  # the subscriber, the pinger, the asker
        assert d.stats()["output_bytes"] == 0
        assert rss(d.pid) - baseline < 64 * MiB
        assert ask(pinger, {"op": "ping", "id": 99}) == {"id": 99, "ok": True}
        pinger.close()


def test_overflowed_subscribers_that_never_read_are_closed(sim_factory, daemon_factory):
    host = sim_factory(domains=1000)
    d = daemon_factory(host, "--high-water", str(64 * 1024), "--full-scan", "0")
    baseline = rss(d.pid)
    sleepers = [raw(d.sock, rcvbuf=4096) for _ in range(30)]
    for s in sleepers:
        s.sendall(b'{"op": "subscribe", "id": 1, "domids": "*"}\n')
    until(lambda: d.stats()["subscribers"] == 30)
    with d.subscribe([3]) as reader:
        host.ctl.shutdown("all", "poweroff")  # 1,000 frames each: ~150 KB
        # Seen shut down before it is destroyed, so its death keeps the reason.
        assert brief(take(reader, 1)) == [("shutdown", 3, "poweroff")]
        host.ctl.destroy("all")  # 2,000 more
        until(lambda: d.stats()["overflows"] == 30)
        assert brief(take(reader, 2)) == [
            ("death", 3, "poweroff"),
            ("released", 3, None),
        ]
        # Their held frames are dropped at the overflow; they are disconnected once they
        # read nothing of the overflow frame for the grace period.
        until(lambda: d.stats()["clients"] == 2)  # the reader and the one asking
        st = d.stats()
        assert st["clients_aborted"] == 30 and st["subscribers"] == 1
        assert st["output_bytes"] == 0
        assert rss(d.pid) - baseline < 32 * MiB
    for s in sleepers:
        data = b""
        try:
            while chunk := s.recv(1 << 16):
                data += chunk
        except ConnectionResetError:
            pass  # aborted: what its socket held is still read first
        frames = [json.loads(line) for line in data.split(b"\n")[:-1]]  # whole lines
        assert frames[0]["id"] == 1 and frames[0]["ok"] is True
        assert all(f.get("event") != "overflow" for f in frames)  # it never got that far
        s.close()


def test_a_half_closed_connection_gets_its_replies(sim, daemon_factory):
    d = daemon_factory(sim)
    out = subprocess.run(
        ["socat", "-", f"UNIX-CONNECT:{d.sock}"],
        input=b'{"op":"rescan","id":9}\n',
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["id"] == 9 and reply["ok"] is True and reply["events"] == 0
    # Pipelined, the last line without its newline: every one is answered, in order.
    out = subprocess.run(
        ["socat", "-", f"UNIX-CONNECT:{d.sock}"],
        input=b'{"op":"list","id":1}\n{"op":"stats","id":2}\n{"op":"ping","id":3}',
        capture_output=True,
        timeout=30,
    )
    replies = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["id"] for r in replies] == [1, 2, 3] and all(r["ok"] for r in replies)
    assert len(replies[0]["domains"]) == 9
    until(lambda: d.stats()["clients"] == 1)  # the one asking
