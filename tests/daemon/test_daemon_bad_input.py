"""Bad input costs its own connection at most; limits are enforced with clear errors."""

from __future__ import annotations

import json
import os
import socket

import pytest
from daemonhelpers import brief, take, until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mux.protocol import ERROR_CODES


class Line:
    """A raw connection to the daemon, one JSON line at a time."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.s.settimeout(20)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def reply(self) -> dict | None:
        """The next line (strict JSON: see `strict`), or None when the daemon closed the
        connection."""
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return strict(line)

    def ask(self, obj) -> dict | None:
        self.send(json.dumps(obj).encode() + b"\n")
        return self.reply()

    def closed(self) -> bool:
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except OSError:
            return True

    def close(self) -> None:
        self.s.close()


def _err(reply: dict) -> str:
    assert reply["ok"] is False, reply
    assert reply["error"]["message"]
    return reply["error"]["code"]


@pytest.fixture
def daemon(sim, daemon_factory):
    return daemon_factory(sim, "--max-clients", "20", "--max-subscriptions", "4")


def test_malformed_json_gets_an_error_and_the_connection_lives(daemon):
    c = Line(daemon.sock)
    c.send(b"{not json\n")
    r = c.reply()
    assert _err(r) == "bad-json" and r["id"] is None
    c.send(b"[1, 2]\n")
    assert _err(c.reply()) == "bad-json"
    assert c.ask({"op": "ping", "id": 9}) == {"id": 9, "ok": True}


def test_unknown_op_and_bad_fields(daemon):
    c = Line(daemon.sock)
    r = c.ask({"op": "explode", "id": 1})
    assert _err(r) == "unknown-op" and "subscribe" in r["error"]["message"] and r["id"] == 1
    assert _err(c.ask({"id": 2})) == "unknown-op"
    assert _err(c.ask({"op": "subscribe", "id": 3})) == "bad-request"
    assert _err(c.ask({"op": "subscribe", "id": 4, "domids": "7"})) == "bad-request"
    assert _err(c.ask({"op": "subscribe", "id": 5, "domids": [1], "events": ["boom"]})) == (
        "bad-request"
    )
    for bad in ([-1], [0x7FF0], [1.5], ["3"], [True], [None]):
        r = c.ask({"op": "subscribe", "id": 6, "domids": bad})
        assert _err(r) == "bad-domid", bad
        assert "32751" in r["error"]["message"]
    assert c.ask({"op": "ping", "id": 7})["ok"] is True


def strict(line: bytes) -> dict:
    """A frame parsed as strict JSON: NaN, Infinity and -Infinity are not JSON."""

    def refuse(constant):
        raise AssertionError(f"the daemon sent {constant}, which is not JSON: {line!r}")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize(
    "bad, code",
    [
        (b"[" * 60_000, "bad-json"),  # deeper than the parser goes
        (b'{"op": "ping", "id": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "bad-json"),
        (b'{"op": "subscribe", "id": 1, "domids": "*", "events": 5}', "bad-request"),
        (b'{"op": "subscribe", "id": 1, "domids": [1], "events": "death"}', "bad-request"),
        (b'{"op": "subscribe", "id": 1, "domids": [1], "events": {"death": 1}}', "bad-request"),
        (b'{"op": "subscribe", "id": 1, "domids": [1], "events": [["death"]]}', "bad-request"),
        (b'{"op": "unsubscribe", "id": 1, "domids": 5}', "bad-request"),
        (b'{"op": "ping", "id": NaN}', "bad-json"),
        (b'{"op": "ping", "id": Infinity}', "bad-json"),
        (b'{"op": "ping", "id": -Infinity}', "bad-json"),
        (b'{"op": "ping", "id": 1e400}', "bad-json"),
        (b'{"op": "ping", "id": ' + b"9" * 5000 + b"}", "bad-json"),
        (b'{"op": "subscribe", "id": 1, "domids": [1e400]}', "bad-json"),
        (b'{"op": "ping", "id": "\\ud800"}', None),  # a lone surrogate: echoed, escaped
    ],
)
def test_every_bad_line_gets_one_reply_and_the_next_line_its_own(daemon, bad, code):
    """Pipelined behind a line that is malformed or ill-typed, a ping is answered at once."""
    c = Line(daemon.sock)
    c.send(bad + b'\n{"op": "ping", "id": "next"}\n')
    first = c.reply()
    after = c.reply()
    assert first is not None and after is not None, "closed"
    if code is None:
        assert first["ok"] is True
    else:
        assert _err(first) == code, first
    assert after == {"id": "next", "ok": True}
    assert c.ask({"op": "ping", "id": 3}) == {"id": 3, "ok": True}  # still open
    assert "Traceback" not in daemon.log_text()
    assert daemon.stats()["client_errors"].get("internal-error", 0) == 0


def test_over_long_line_closes_that_client_only(daemon, sim):
    other = daemon.subscribe([2])
    c = Line(daemon.sock)
    c.send(b'{"op": "ping", "id": 1, "pad": "' + b"x" * (70 * 1024))
    r = c.reply()
    assert _err(r) == "line-too-long"
    assert c.closed()
    sim.ctl.shutdown(2, "crash")
    assert brief(take(other, 1)) == [("shutdown", 2, "crash")]
    other.close()


def test_garbage_sent_fast_closes_that_client_and_the_table_stays_right(daemon, sim):
    other = daemon.subscribe(None)
    c = Line(daemon.sock)
    junk = bytes(range(256)) * 64
    try:
        for _ in range(64):
            c.send(junk.replace(b"\n", b"") + b"\n")
    except OSError:
        pass  # closed while we were still sending: that is the point
    assert c.closed()
    sim.ctl.shutdown(4, "reboot")
    assert brief(take(other, 1)) == [("shutdown", 4, "reboot")]
    table = {r["domid"]: (r["uuid"], r["state"]) for r in daemon.client().list()}
    host = {r["domid"]: (r["uuid"], r["state"]) for r in sim.ctl.list()}
    assert table == host
    assert daemon.stats()["client_errors"]["bad-json"] >= 8
    other.close()


def test_too_many_subscriptions_adds_nothing(daemon):
    c = Line(daemon.sock)
    r = c.ask({"op": "subscribe", "id": 1, "domids": [1, 2, 3, 4, 5]})
    assert _err(r) == "too-many-subscriptions" and "--max-subscriptions" in r["error"]["message"]
    assert c.ask({"op": "subscribe", "id": 2, "domids": [1, 2, 3]})["ok"] is True
    assert _err(c.ask({"op": "subscribe", "id": 3, "domids": [4, 5]})) == "too-many-subscriptions"
    assert c.ask({"op": "subscribe", "id": 4, "domids": [3, 4]})["ok"] is True  # 3 again: 4 in all


def test_max_clients_refuses_the_next_one_clearly(daemon):
    conns = [Line(daemon.sock) for _ in range(20)]
    for c in conns:
        assert c.ask({"op": "ping", "id": 1})["ok"]
    extra = Line(daemon.sock)
    r = extra.reply()
    assert _err(r) == "too-many-clients" and "--max-clients" in r["error"]["message"]
    assert extra.closed()
    conns[0].close()
    until(lambda: daemon.stats()["clients"] <= 20)
    again = Line(daemon.sock)
    assert again.ask({"op": "ping", "id": 2})["ok"]


@pytest.fixture
def open_dir():
    """A directory an unprivileged process can reach (pytest's tmp_path is 0700)."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="xmux-perm-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("allowed", [False, True])
def test_rescan_needs_privilege(sim, daemon_factory, open_dir, allowed):
    """An unprivileged peer may subscribe but not rescan (unless in --allow-rescan-group)."""
    import grp

    group = grp.getgrnam("daemon").gr_gid
    extra = ("--allow-rescan-group", "daemon") if allowed else ()
    d = daemon_factory(sim, *extra, sock=os.path.join(open_dir, "x.sock"))
    os.chmod(d.sock, 0o666)  # let the test's unprivileged child reach it
    nobody = 65534
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody and ask
        try:
            os.close(r)
            os.setgroups([group])
            os.setgid(nobody)
            os.setuid(nobody)
            c = Line(d.sock)
            out = [c.ask({"op": "rescan", "id": 1}), c.ask({"op": "list", "id": 2})]
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    rescan, listing = json.loads(data)
    if allowed:
        assert rescan["ok"] is True and rescan["events"] == 0
    else:
        assert _err(rescan) == "permission-denied"
        assert "--allow-rescan-group" in rescan["error"]["message"]
    assert listing["ok"] is True and len(listing["domains"]) == 9


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
requests = st.one_of(
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" ")),
    st.dictionaries(
        st.sampled_from(["op", "id", "domids", "events", "x"]),
        json_values,
        max_size=5,
    ).map(lambda d: json.dumps({"op": "subscribe", **d}).encode()),
    st.sampled_from([b"NaN", b"Infinity", b"1e999", b"-1e999"]).map(
        lambda n: b'{"op": "ping", "id": %s}' % n
    ),
    st.dictionaries(
        st.sampled_from(["op", "id", "domids", "events", "x"]),
        st.one_of(
            st.sampled_from(
                [
                    "hello",
                    "subscribe",
                    "unsubscribe",
                    "list",
                    "stats",
                    "ping",
                    "rescan",
                    "bogus",
                    "*",
                ]
            ),
            st.integers(-(2**40), 2**40),
            st.lists(st.one_of(st.integers(-5, 40000), st.text(max_size=3)), max_size=5),
            st.none(),
            st.booleans(),
            st.text(max_size=10),
        ),
        max_size=5,
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(deadline=None, max_examples=150, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(requests, min_size=1, max_size=6))
def test_fuzzed_requests_each_get_one_well_formed_reply(daemon, lines):
    c = Line(daemon.sock)
    try:
        for raw in lines:
            c.send(raw + b"\n")
            reply = c.reply()
            while reply is not None and "event" in reply:
                reply = c.reply()
            if reply is None:
                break  # closed: only after a run of garbage
            assert isinstance(reply["ok"], bool)
            if not reply["ok"]:
                assert reply["error"]["code"] in ERROR_CODES
                assert reply["error"]["code"] != "internal-error", reply  # a bug
                assert isinstance(reply["error"]["message"], str)
    finally:
        c.close()
    probe = Line(daemon.sock)
    assert probe.ask({"op": "ping", "id": 1}) == {"id": 1, "ok": True}
    probe.close()
