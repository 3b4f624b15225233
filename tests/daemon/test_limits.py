"""Limits that protect root and the host, and options checked before any work.

Issue 11 item 4 (per-uid limits and a root reserve, refused with a clear frame), item 5 (the
metrics endpoint costs no thread and cannot lock root out), item 10 (the socket directory),
issue 16 item 4 (a bad option is one line and exit status 2, before any work). Unprivileged
peers are forked children that drop to other uids.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import resource
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import test_daemon_bad_input
from daemonhelpers import brief, take, until
from simhelpers import REPO, sim_command

from mux.client import Unreachable
from mux.daemon.paths import UnsafePathError, check_private_dir, ensure_private_dir

NOBODY = 65534
open_dir = test_daemon_bad_input.open_dir  # the fixture: a directory other uids can reach


class Holder:
    """A forked child that drops to `uid`, opens `count` connections, reports the first
    frame each got (a reply to a ping, or a refusal), and holds them until `release`."""

    def __init__(self, sock: str, uid: int, count: int) -> None:
        rd, wr = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            try:
                os.close(rd)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                conns, firsts = [], []
                for i in range(count):
                    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    c.settimeout(20)
                    c.connect(sock)
                    c.sendall(b'{"op": "ping", "id": %d}\n' % i)
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = c.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    firsts.append(json.loads(data) if data else None)
                    conns.append(c)
                os.write(wr, json.dumps(firsts).encode())
                os.close(wr)
                signal.pause()  # holding them until released
            finally:
                os._exit(0)
        os.close(wr)
        data = b""
        while chunk := os.read(rd, 65536):
            data += chunk
        os.close(rd)
        self.firsts: list[dict | None] = json.loads(data)

    def ok(self) -> int:
        return sum(1 for f in self.firsts if f and f.get("ok"))

    def refusals(self) -> list[dict]:
        return [f["error"] for f in self.firsts if f and not f.get("ok")]

    def release(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0


@contextlib.contextmanager
def holders():
    made: list[Holder] = []

    def hold(sock: str, uid: int, count: int) -> Holder:
        h = Holder(sock, uid, count)
        made.append(h)
        return h

    try:
        yield hold
    finally:
        for h in made:
            h.release()


def test_one_uid_cannot_lock_root_out(sim, daemon_factory, open_dir, procs):
    d = daemon_factory(
        sim,
        *("--max-clients", "24", "--max-clients-per-uid", "6", "--root-reserve", "4"),
        sock=os.path.join(open_dir, "x.sock"),
    )
    os.chmod(d.sock, 0o666)  # let the other uids reach it
    with holders() as hold:
        member = hold(d.sock, NOBODY, 8)
        assert member.ok() == 6
        for err in member.refusals():
            assert err["code"] == "too-many-connections"
            assert "uid 65534" in err["message"] and "--max-clients-per-uid 6" in err["message"]
        others = [hold(d.sock, NOBODY - i, 6) for i in (1, 2, 3)]
        assert [h.ok() for h in others] == [6, 6, 2]  # 20 of 24: the rest is root's
        (err, *_) = others[2].refusals()
        assert err["code"] == "too-many-connections"
        assert f"uid {NOBODY - 3}" in err["message"] and "--root-reserve" in err["message"]
        # Root is served: its commands work, its wait sees the crash.
        waiter = procs.start([*sim_command(), "wait", "3", "--socket", d.sock])
        until(lambda: d.stats()["subscribers"] == 1)
        out = subprocess.run(
            [*sim_command(), "domains", "--socket", d.sock],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0 and "guest-3" in out.stdout, out.stderr
        sim.ctl.shutdown(3, "crash")
        # A destroy in the same scan as the shutdown would leave the death without a reason
        # (the docs allow it): let the daemon see the crash first, as a toolstack's would.
        until(lambda: _state_of(d.sock, 3) == "shutdown")
        sim.ctl.destroy(3)
        assert waiter.wait(30) == 13  # crash
        until(lambda: d.stats()["clients"] == 21)  # the 20 members and the one asking
        assert d.stats()["client_errors"]["too-many-connections"] == 2 + 4
        # Root alone may fill the reserve; past --max-clients even root is told so.
        roots = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(5)]
        replies = []
        for s in roots:
            s.settimeout(20)
            s.connect(d.sock)
            s.sendall(b'{"op": "ping", "id": 1}\n')
            replies.append(json.loads(s.makefile("rb").readline()))
        assert [r["ok"] for r in replies] == [True] * 4 + [False]
        assert replies[-1]["error"]["code"] == "too-many-clients"
        assert "--max-clients 24" in replies[-1]["error"]["message"]
        for s in roots:
            s.close()
    # Once they are gone, everything is free again (an asker may be refused meanwhile).
    until(lambda: (st := stats_if_served(d)) is not None and st["clients"] == 1)


def stats_if_served(d) -> dict | None:
    try:
        return d.stats()
    except Unreachable:
        return None


@contextlib.contextmanager
def fd_limit(monkeypatch, n: int):
    """Processes started inside get RLIMIT_NOFILE n, soft and hard (set in the child: a
    hard limit lowered here could not be raised again)."""

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    with monkeypatch.context() as m:
        m.setattr(subprocess, "Popen", functools.partial(subprocess.Popen, preexec_fn=lower))
        yield


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_at_a_low_fd_limit_neither_members_nor_the_metrics_lock_root_out(
    sim, daemon_factory, open_dir, monkeypatch
):
    with fd_limit(monkeypatch, 256):
        d = daemon_factory(
            sim, "--metrics-addr", "127.0.0.1:0", sock=os.path.join(open_dir, "x.sock")
        )
    os.chmod(d.sock, 0o666)
    assert "allows 144 clients, not --max-clients 4096: serving 144, 16 of them kept for root" in (
        d.log_text()
    )
    port = d.stats()["metrics_port"]
    before = threads(d.pid)
    idle = []
    for _ in range(300):  # connections to the metrics port that never send a request
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle.append(s)
    with holders() as hold:
        member = hold(d.sock, NOBODY, 140)
        assert member.ok() == 128  # 144 less root's 16
        assert {e["code"] for e in member.refusals()} == {"too-many-connections"}
        assert threads(d.pid) <= before
        # A scrape is still answered (idle connections make room), and root still connects.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert "xenmux_metrics_connections_refused_total" in text
        with d.client() as c:
            assert len(c.list()) == 9
        st = d.stats()
        assert st["metrics_refused"] >= 300 - 16
        assert st["client_errors"]["too-many-connections"] == 12
    for s in idle:
        s.close()
    assert "Traceback" not in d.log_text()


def test_metrics_endpoint_answers_only_what_it_serves(sim, daemon_factory):
    d = daemon_factory(sim, "--metrics-addr", "127.0.0.1:0")
    port = d.stats()["metrics_port"]

    def http(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data

    assert http(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert http(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert http(b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    head = http(b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    big = b"GET /metrics HTTP/1.1\r\nX: " + b"x" * 10000 + b"\r\n\r\n"
    assert http(big).startswith(b"HTTP/1.1 431 ")
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(r.read()).decode()
    assert "xenmux_clients " in text


# -- the socket directory ---------------------------------------------------------------------


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*sim_command(), "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def refused_in_one_line(r: subprocess.CompletedProcess, status: int) -> str:
    assert r.returncode == status, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("xenmux serve: ")
    return lines[0]


@pytest.fixture
def unsafe(tmp_path):
    """Directories the daemon must refuse, by why."""
    made = {}
    made["owned"] = tmp_path / "owned"
    made["owned"].mkdir(mode=0o755)
    os.chown(made["owned"], NOBODY, NOBODY)
    for name, mode in (("group", 0o775), ("world", 0o777), ("sticky", 0o1777)):
        made[name] = tmp_path / name
        made[name].mkdir()
        os.chmod(made[name], mode)
    made["open-parent"] = tmp_path / "world" / "inner"  # 0755, but in a dir anyone can edit
    made["open-parent"].mkdir(mode=0o755)
    good = tmp_path / "good"
    good.mkdir(mode=0o755)
    made["their-link"] = tmp_path / "their-link"
    made["their-link"].symlink_to(good)
    os.lchown(made["their-link"], NOBODY, NOBODY)
    return made


@pytest.mark.parametrize(
    "case, words",
    [
        ("owned", "is owned by uid 65534, not by root or the daemon"),
        ("group", "is writable by group (mode 0775)"),
        ("world", "is writable by group and others (mode 0777)"),
        ("sticky", "is writable by group and others (mode 1777, sticky or not)"),
        ("open-parent", "above the socket directory (--socket), is writable by group and others"),
        ("their-link", "is a symlink owned by uid 65534"),
    ],
)
def test_an_unsafe_socket_directory_is_refused_before_any_work(sim, unsafe, case, words):
    sock = unsafe[case] / "x.sock"
    r = serve("--backend", "sim", "--sim-dir", str(sim.dir), "--socket", str(sock))
    line = refused_in_one_line(r, 1)
    assert words in line and "socket directory (--socket)" in line
    assert not sock.exists()


def test_tmp_itself_is_refused_and_the_default_dir_is_not(sim):
    sock = Path("/tmp") / f"xmux-{os.getpid()}.sock"
    r = serve("--backend", "sim", "--sim-dir", str(sim.dir), "--socket", str(sock))
    assert "/tmp is writable by group and others (mode 1777" in refused_in_one_line(r, 1)
    assert not sock.exists()
    check_private_dir("/run/xenmux", "the socket directory (--socket)", missing_ok=True)


def test_a_trusted_symlink_is_followed_and_a_stale_link_at_the_socket_is_not(
    sim, daemon_factory, tmp_path
):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    link = tmp_path / "link"
    link.symlink_to(real)  # root's: followed
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (real / "x.sock").symlink_to(victim)  # a stale symlink where the socket goes
    d = daemon_factory(sim, sock=str(link / "x.sock"))
    with d.client() as c:
        c.ping()
    assert (real / "x.sock").is_socket() and victim.read_text() == "keep me"
    assert oct((real / "x.sock").lstat().st_mode & 0o777) == "0o660"


def test_the_state_directory_check(tmp_path, unsafe):
    what = "the state directory (--state-dir)"
    for case in ("owned", "group", "world", "sticky", "open-parent", "their-link"):
        with pytest.raises(UnsafePathError, match=r"state directory \(--state-dir\)"):
            check_private_dir(str(unsafe[case]), what)
    with pytest.raises(UnsafePathError, match="does not exist"):
        check_private_dir(str(tmp_path / "missing"), what)
    check_private_dir(str(tmp_path / "missing" / "deeper"), what, missing_ok=True)
    state = tmp_path / "a" / "state"
    ensure_private_dir(str(state), 0o750, what)
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o750
    ensure_private_dir(str(state), 0o750, what)  # there already: checked, kept
    with pytest.raises(UnsafePathError, match="writable by group"):
        ensure_private_dir(str(unsafe["group"]), 0o750, what)


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, flag, words",
    [
        (["--metrics-addr", "foo"], "--metrics-addr", "'foo' is not HOST:PORT"),
        (["--metrics-addr", "127.0.0.1:99999"], "--metrics-addr", "is not HOST:PORT"),
        (["--max-clients", "0"], "--max-clients", "0 is below 1"),
        (["--max-clients-per-uid", "x"], "--max-clients-per-uid", "'x' is not an integer"),
        (["--high-water", "-5"], "--high-water", "-5 is below 1"),
        (["--shutdown-poll", "nan"], "--shutdown-poll", "'nan' is not a number of seconds"),
        (["--full-scan", "-1"], "--full-scan", "'-1' is not a number of seconds: give 0"),
        (["--socket-group", "no-such-group-x"], "--socket-group", "no group named"),
        (["--max-clients", "8", "--root-reserve", "8"], "--root-reserve", "leaves no connection"),
    ],
)
def test_a_bad_option_is_one_line_and_status_2_before_any_work(args, flag, words):
    # No such sim directory: had the options passed, the backend would fail (status 1).
    r = serve("--backend", "sim", "--sim-dir", "/nonexistent", *args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith(f"xenmux serve: error: argument {flag}: ") and words in last, last


def test_a_busy_metrics_port_names_the_address_and_the_flag(sim, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        addr = f"127.0.0.1:{busy.getsockname()[1]}"
        sock = tmp_path / "x.sock"
        r = serve(*("--backend", "sim", "--sim-dir", str(sim.dir), "--socket", str(sock)),
                  "--metrics-addr", addr)  # fmt: skip
    line = refused_in_one_line(r, 1)  # one line: before the scan logs anything
    assert f"cannot serve metrics on {addr} (--metrics-addr)" in line
    assert "in use" in line and not sock.exists()


def test_serve_runs_with_the_new_options(sim, daemon_factory):
    d = daemon_factory(sim, "--max-clients-per-uid", "3", "--root-reserve", "1")
    with d.subscribe([2]) as sub:
        sim.ctl.shutdown(2, "reboot")
        assert brief(take(sub, 1)) == [("shutdown", 2, "reboot")]


def test_limits_fit_the_fd_limit_the_daemon_may_reach(monkeypatch):
    from mux.daemon import admission

    limits = admission.Limits(max_clients=4096, per_uid=1024, root_reserve=16)
    monkeypatch.setattr(admission.resource, "getrlimit", lambda _which: (1024, 524288))
    raised = []
    monkeypatch.setattr(admission.resource, "setrlimit", lambda _w, lim: raised.append(lim))
    assert admission.fit_fd_limit(limits, 112) == (limits, None)
    assert raised == [(4208, 524288)]  # the soft limit, raised to what is needed

    def filtered(_which, _limits):  # a unit's SystemCallFilter=~@resources
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(admission.resource, "setrlimit", filtered)
    fitted, why = admission.fit_fd_limit(limits, 112)
    assert fitted == admission.Limits(max_clients=912, per_uid=912, root_reserve=16)
    assert why.startswith("the file-descriptor limit (1024, ulimit -n or LimitNOFILE=) allows 912")
    monkeypatch.setattr(admission.resource, "getrlimit", lambda _which: (100, 100))
    with pytest.raises(ValueError, match="leaves no room for clients"):
        admission.fit_fd_limit(limits, 112)


def _state_of(sock: str, domid: int) -> str | None:
    from mux.client import Client

    with Client(sock) as c:
        return next((r["state"] for r in c.list() if r["domid"] == domid), None)
