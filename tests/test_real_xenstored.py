"""Debian's real xenstored / oxenstored 4.17 under our hypervisor stand-in (docs/real-xen.md).

These prove the fixture of tests/realxen.py: the real clients work against the real servers,
@releaseDomain fires from our shared-memory table and VIRQ datagrams, and the two servers'
firing rules are the ones DESIGN.md builds on. They also keep tests/data/
xenstored_conformance.json (the servers' raw replies) true.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import realxen
from realxen import STEP_TIMEOUT, ShmTable, XenstoredUnderStub, XsConnection, dom0, guest, running

from mux import records
from mux.records import DomainRecord
from mux.xenstore import wire

# The fixtures of tests/realxen.py, registered for this module.
xenstub_libs = realxen.xenstub_libs
c_xenstored = realxen.c_xenstored
oxenstored = realxen.oxenstored
real_xenstored = realxen.real_xenstored

RELEASE = ("@releaseDomain", "rel")
CONFORMANCE = Path(__file__).resolve().parent / "data" / "xenstored_conformance.json"

pytestmark = pytest.mark.timeout(60)


def watch_release(xsd: XenstoredUnderStub) -> XsConnection:
    w = xsd.connect()
    w.watch(*RELEASE)
    assert w.sync() == [RELEASE], "a new watch fires once at once"
    return w


# ---------------------------------------------------------------------------------------------
# The real clients against the real servers


def xs_env(xsd: XenstoredUnderStub) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "XENSTORED_PATH": str(xsd.socket_path)}


def xs_tool(xsd: XenstoredUnderStub, *argv: str) -> str:
    tool = shutil.which(argv[0])
    if tool is None:
        pytest.fail(f"{argv[0]} is missing: install xenstore-utils (make test does)")
    proc = subprocess.run(
        [tool, *argv[1:]], env=xs_env(xsd), capture_output=True, text=True, timeout=STEP_TIMEOUT
    )
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc.stdout


def test_xenstore_clients_read_write_ls(real_xenstored):
    xs_tool(real_xenstored, "xenstore-write", "/test/greeting", "hello", "/test/n", "42")
    assert xs_tool(real_xenstored, "xenstore-read", "/test/greeting") == "hello\n"
    listing = xs_tool(real_xenstored, "xenstore-ls", "/local/domain/2")
    assert 'name = "guest2"' in listing and 'domid = "2"' in listing
    assert xs_tool(real_xenstored, "xenstore-list", "/test").split() == ["greeting", "n"]
    # our wire codecs see the same store
    with real_xenstored.connect() as c:
        assert c.read("/test/n") == b"42"
        assert c.is_introduced(3) and not c.is_introduced(4)


class WatchProcess:
    """xenstore-watch, read line by line with timeouts, killed by its PID at the end."""

    def __init__(self, xsd: XenstoredUnderStub, count: int) -> None:
        tool = shutil.which("xenstore-watch")
        if tool is None:
            pytest.fail("xenstore-watch is missing: install xenstore-utils (make test does)")
        self.proc = subprocess.Popen(
            [tool, "-n", str(count), "@releaseDomain"],
            env=xs_env(xsd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        self._buf = b""

    def line(self, timeout: float = STEP_TIMEOUT) -> str | None:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by PID: it spins when its server goes away
        self.proc.wait(timeout=STEP_TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def watch_process():
    started: list[WatchProcess] = []

    def start(xsd: XenstoredUnderStub, count: int) -> WatchProcess:
        wp = WatchProcess(xsd, count)
        started.append(wp)
        return wp

    yield start
    for wp in started:
        wp.close()


def test_xenstore_watch_c_xenstored(c_xenstored, watch_process):
    """-n 3: the initial event, the shutdown, the death; a repeat VIRQ in between is latched."""
    wp = watch_process(c_xenstored, 3)
    assert wp.line() == "@releaseDomain"  # registered: the initial event
    sync = c_xenstored.connect()

    c_xenstored.shutdown_domain(1, records.SHUTDOWN_POWEROFF)
    assert wp.line() == "@releaseDomain"

    c_xenstored.raise_virq()  # domain 1 is still shut down: the 4.17 latch holds
    sync.sync()
    assert wp.line(timeout=0.3) is None

    c_xenstored.kill_domain(2)
    assert wp.line() == "@releaseDomain"
    assert wp.proc.wait(timeout=STEP_TIMEOUT) == 0


def test_xenstore_watch_oxenstored(oxenstored, watch_process):
    """-n 4: the initial event, the shutdown, the repeat VIRQ (no latch), the death."""
    wp = watch_process(oxenstored, 4)
    assert wp.line() == "@releaseDomain"
    oxenstored.shutdown_domain(1, records.SHUTDOWN_POWEROFF)
    assert wp.line() == "@releaseDomain"
    oxenstored.raise_virq()
    assert wp.line() == "@releaseDomain"
    oxenstored.kill_domain(2)
    assert wp.line() == "@releaseDomain"
    assert wp.proc.wait(timeout=STEP_TIMEOUT) == 0


# ---------------------------------------------------------------------------------------------
# Firing rules, observed precisely on one connection (a VIRQ is handled before a later reply)


def test_no_change_no_firing(real_xenstored):
    w = watch_release(real_xenstored)
    for _ in range(3):
        real_xenstored.raise_virq()
        assert w.sync() == []


def test_c_xenstored_latch_and_resume(c_xenstored):
    x, w = c_xenstored, watch_release(c_xenstored)
    x.shutdown_domain(1, records.SHUTDOWN_SUSPEND)
    assert w.sync() == [RELEASE]
    x.raise_virq()
    assert w.sync() == [], "4.17 fires a domain's shutdown once"

    x.control.resume(1)  # XS_RESUME alone fires nothing ...
    assert w.sync() == []
    x.raise_virq()  # ... but re-arms: the domain is still shut down in the table
    assert w.sync() == [RELEASE]

    # what libxl does on a resume: the hypervisor clears the flag, then XS_RESUME
    x.table.resume(1)
    x.control.resume(1)
    x.raise_virq()
    assert w.sync() == [], "a resume fires nothing"
    x.shutdown_domain(1, records.SHUTDOWN_POWEROFF)
    assert w.sync() == [RELEASE], "the next shutdown fires again"


def test_c_xenstored_latch_without_resume_survives_a_new_reason(c_xenstored):
    """The latch is per domain, not per reason: without XS_RESUME a changed reason is silent."""
    x, w = c_xenstored, watch_release(c_xenstored)
    x.shutdown_domain(1, records.SHUTDOWN_SUSPEND)
    assert w.sync() == [RELEASE]
    x.table.resume(1)  # resumed in the hypervisor, no XS_RESUME sent
    x.raise_virq()
    assert w.sync() == []
    x.shutdown_domain(1, records.SHUTDOWN_CRASH)
    assert w.sync() == []


def test_oxenstored_fires_on_every_virq_while_a_domain_is_shut_down(oxenstored):
    x, w = oxenstored, watch_release(oxenstored)
    x.shutdown_domain(1, records.SHUTDOWN_SUSPEND)
    assert w.sync() == [RELEASE]
    for _ in range(3):
        x.raise_virq()
        assert w.sync() == [RELEASE], "no latch in oxenstored"
    x.control.resume(1)  # Domains.resume is a no-op
    assert w.sync() == []
    x.table.resume(1)
    x.raise_virq()
    assert w.sync() == [], "nothing shut down any more: silent again"


@pytest.mark.parametrize(
    "reason", [records.SHUTDOWN_CRASH, records.SHUTDOWN_WATCHDOG, records.SHUTDOWN_REBOOT]
)
def test_every_reason_fires(real_xenstored, reason):
    """C xenstored reads a crash as `crashed`, not `shutdown`: both must fire."""
    w = watch_release(real_xenstored)
    real_xenstored.shutdown_domain(2, reason)
    assert w.sync() == [RELEASE]


def test_death_fires_once_and_releases_the_domain(real_xenstored):
    x, w = real_xenstored, watch_release(real_xenstored)
    assert x.control.is_introduced(3)
    x.kill_domain(3)
    assert w.sync() == [RELEASE]
    assert not x.control.is_introduced(3), "xenstored forgets a dead domain"
    x.raise_virq()
    assert w.sync() == []
    x.table.remove(3)  # finally freed: xenstored no longer knows it
    x.raise_virq()
    assert w.sync() == []


def test_vanished_record_fires(real_xenstored):
    """A domain whose record disappears without `dying` (getinfo of domid 2 returns domid 3:
    the servers must check the domid) counts as dead."""
    x, w = real_xenstored, watch_release(real_xenstored)
    x.table.remove(2)
    x.raise_virq()
    assert w.sync() == [RELEASE]
    assert not x.control.is_introduced(2)


def test_never_introduced_domains_never_fire(real_xenstored):
    x, w = real_xenstored, watch_release(real_xenstored)
    x.shutdown_domain(4, records.SHUTDOWN_POWEROFF)
    assert w.sync() == []
    x.kill_domain(4)
    assert w.sync() == []
    x.table.remove(4)
    x.raise_virq()
    assert w.sync() == []


def test_one_firing_stands_for_many_shutdowns(real_xenstored):
    x, w = real_xenstored, watch_release(real_xenstored)
    x.table.shutdown(1, records.SHUTDOWN_POWEROFF)
    x.table.shutdown(2, records.SHUTDOWN_REBOOT)
    x.table.shutdown(3, records.SHUTDOWN_SUSPEND)
    x.raise_virq()
    assert w.sync() == [RELEASE]


def test_deaths_in_one_virq(real_xenstored):
    """C xenstored fires once per destroyed domain, and once more if it notices a shutdown
    after its last destruction (its scan restarts after each; the order is its domain
    list's: 3 firings with this fixture); oxenstored fires once per VIRQ."""
    x, w = real_xenstored, watch_release(real_xenstored)
    x.table.shutdown(1, records.SHUTDOWN_POWEROFF)
    x.table.dying(2)
    x.table.dying(3)
    x.raise_virq()
    fired = w.sync()
    assert set(fired) == {RELEASE}
    assert len(fired) in ((2, 3) if x.kind == "xenstored" else (1,))
    assert not x.control.is_introduced(2) and not x.control.is_introduced(3)


def test_virqs_queued_before_handling_coalesce(real_xenstored):
    """Several datagrams queued before the server reads its event channel are one event,
    like raises of a pending (not yet handled) event channel."""
    x, w = real_xenstored, watch_release(real_xenstored)
    x.table.shutdown(1, records.SHUTDOWN_POWEROFF)
    os.kill(x.pid, 19)  # SIGSTOP: let the datagrams queue up
    try:
        for _ in range(5):
            x.raise_virq()
    finally:
        os.kill(x.pid, 18)  # SIGCONT
    assert w.sync() == [RELEASE]


def test_introduce_fires_introduce_domain(real_xenstored):
    x = real_xenstored
    with x.connect() as w:
        w.watch("@introduceDomain", "intro")
        assert w.sync() == [("@introduceDomain", "intro")]
        x.introduce(4)
        assert w.sync() == [("@introduceDomain", "intro")]
    w2 = watch_release(x)
    x.shutdown_domain(4, records.SHUTDOWN_POWEROFF)
    assert w2.sync() == [RELEASE], "once introduced, domain 4 fires"


# ---------------------------------------------------------------------------------------------
# The fixture itself


def test_fixture_leaves_nothing_behind(xenstub_libs):
    with running("xenstored", xenstub_libs, [dom0(), guest(1)], introduce=[1]) as x:
        workdir, pid = x.workdir, x.pid
        assert x.socket_path.exists() and x.virq_path.exists()
    assert not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_server_death_is_reported(xenstub_libs):
    """A server that dies is seen as dead (the fixtures assert `alive()` after each test)."""
    with running("oxenstored", xenstub_libs) as x:
        os.kill(x.pid, 9)
        x.proc.wait(timeout=STEP_TIMEOUT)
        assert not x.alive()


def test_missing_table_means_no_domains(xenstub_libs):
    """Without its table the stand-in reports no domain at all: introduced domains die."""
    with running("xenstored", xenstub_libs, [dom0(), guest(1)], introduce=[1]) as x:
        w = watch_release(x)
        x.table.path.unlink()
        x.raise_virq()
        assert w.sync() == [RELEASE]
        assert x.alive()


# ---------------------------------------------------------------------------------------------
# libxenctrl_stub.so (for the daemon's xenctrl backend), through ctypes as the Cython core will


class XenctrlStub:
    def __init__(self, libs, tmp_path: Path) -> None:
        # a private copy: each test gets fresh static state (dlopen would share one)
        path = tmp_path / "libxenctrl_stub.so"
        shutil.copy(libs.xenctrl, path)
        self.lib = ctypes.CDLL(str(path), use_errno=True)
        self.lib.xc_interface_open.restype = ctypes.c_void_p
        self.lib.xc_interface_open.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
        self.lib.xc_interface_close.argtypes = [ctypes.c_void_p]
        self.lib.xc_domain_getinfolist.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_uint,
            ctypes.c_char_p,
        ]
        self.lib.xenmux_stub_calls.restype = ctypes.c_ulong
        self.xch = self.lib.xc_interface_open(None, None, 0)
        assert self.xch

    def getinfolist(self, first: int, max_domains: int) -> list[DomainRecord]:
        buf = ctypes.create_string_buffer(records.RECORD_SIZE * max(max_domains, 1))
        n = self.lib.xc_domain_getinfolist(self.xch, first, max_domains, buf)
        if n < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return records.unpack_all(buf.raw, n)

    def close(self) -> None:
        assert self.lib.xc_interface_close(self.xch) == 0


@pytest.fixture
def scratch():
    """A private directory removed after the test (pytest's tmp_path dirs are kept)."""
    with realxen.private_dir() as d:
        yield d


@pytest.fixture
def table(scratch, monkeypatch):
    t = ShmTable(scratch / "domains.shm")
    t.set_domains([dom0(), guest(1), guest(5), guest(6), guest(9)])
    monkeypatch.setenv("XENMUX_STUB_SHM", str(t.path))
    monkeypatch.delenv("XENMUX_STUB_FAIL", raising=False)
    monkeypatch.delenv("XENMUX_STUB_FAIL_FILE", raising=False)
    yield t
    t.close()


def test_xenctrl_stub_getinfolist_semantics(xenstub_libs, table, scratch):
    xc = XenctrlStub(xenstub_libs, scratch)
    ids = lambda first, n: [r.domid for r in xc.getinfolist(first, n)]  # noqa: E731
    assert ids(0, 1024) == [0, 1, 5, 6, 9]
    assert ids(2, 1024) == [5, 6, 9], "first is a lower bound, not an exact domid"
    assert ids(5, 2) == [5, 6]
    assert ids(10, 1024) == []
    assert ids(0, 0) == []
    assert ids(0x7FF0, 10) == []
    table.shutdown(6, records.SHUTDOWN_CRASH)
    (rec,) = xc.getinfolist(6, 1)
    assert rec == table.get(6) and rec.shutdown and rec.reason == records.SHUTDOWN_CRASH
    xc.close()


def test_xenctrl_stub_failure_injection_env(xenstub_libs, table, scratch, monkeypatch):
    monkeypatch.setenv("XENMUX_STUB_FAIL", "EAGAIN:2")
    xc = XenctrlStub(xenstub_libs, scratch)
    for _ in range(2):
        with pytest.raises(OSError) as e:
            xc.getinfolist(0, 16)
        assert e.value.errno == 11  # EAGAIN
    assert len(xc.getinfolist(0, 16)) == 5
    assert xc.lib.xenmux_stub_calls() == 3


def test_xenctrl_stub_failure_injection_file(xenstub_libs, table, scratch, monkeypatch):
    ctl = scratch / "fail"
    monkeypatch.setenv("XENMUX_STUB_FAIL_FILE", str(ctl))
    xc = XenctrlStub(xenstub_libs, scratch)
    assert len(xc.getinfolist(0, 16)) == 5  # no file: no failure
    ctl.write_text("EPERM 1\n")
    with pytest.raises(PermissionError):
        xc.getinfolist(0, 16)
    assert ctl.read_text().split() == ["EPERM", "0"]
    assert len(xc.getinfolist(0, 16)) == 5


def test_xenctrl_stub_without_table(xenstub_libs, scratch, monkeypatch):
    monkeypatch.setenv("XENMUX_STUB_SHM", str(scratch / "absent.shm"))
    xc = XenctrlStub(xenstub_libs, scratch)
    with pytest.raises(FileNotFoundError):
        xc.getinfolist(0, 16)


# ---------------------------------------------------------------------------------------------
# Raw replies of the real servers, kept in tests/data/xenstored_conformance.json

A = "a" * 4000
TX = "tx"  # the id returned by the last XS_TRANSACTION_START of the run
# (name, type, payload, tx_id)
STEPS: list[tuple[str, int, bytes, int | str]] = [
    ("write", wire.XS_WRITE, b"/test/a\0hello", 0),
    ("write-empty-value", wire.XS_WRITE, b"/test/empty\0", 0),
    ("read", wire.XS_READ, b"/test/a\0", 0),
    ("read-empty-value", wire.XS_READ, b"/test/empty\0", 0),
    ("read-missing", wire.XS_READ, b"/test/missing\0", 0),
    ("read-missing-parent", wire.XS_READ, b"/nowhere/x\0", 0),
    ("read-without-nul", wire.XS_READ, b"/test/a", 0),
    ("read-empty-payload", wire.XS_READ, b"", 0),
    ("write-relative", wire.XS_WRITE, b"rel\0v", 0),
    ("read-relative-as-absolute", wire.XS_READ, b"/local/domain/0/rel\0", 0),
    ("mkdir", wire.XS_MKDIR, b"/test/dir\0", 0),
    ("mkdir-existing", wire.XS_MKDIR, b"/test/dir\0", 0),
    ("mkdir-deep", wire.XS_MKDIR, b"/test/deep/er\0", 0),
    ("directory", wire.XS_DIRECTORY, b"/test\0", 0),
    ("directory-of-leaf", wire.XS_DIRECTORY, b"/test/a\0", 0),
    ("directory-missing", wire.XS_DIRECTORY, b"/test/missing\0", 0),
    ("directory-part", wire.XS_DIRECTORY_PART, wire.join("/test", "0"), 0),
    ("get-perms", wire.XS_GET_PERMS, b"/test/a\0", 0),
    ("get-perms-missing", wire.XS_GET_PERMS, b"/test/missing\0", 0),
    ("get-perms-guest-node", wire.XS_GET_PERMS, b"/local/domain/1\0", 0),
    ("set-perms", wire.XS_SET_PERMS, b"/test/a\0n0\0r1\0", 0),
    ("get-perms-after-set", wire.XS_GET_PERMS, b"/test/a\0", 0),
    ("set-perms-bad", wire.XS_SET_PERMS, b"/test/a\0x0\0", 0),
    ("get-perms-release-domain", wire.XS_GET_PERMS, b"@releaseDomain\0", 0),
    ("rm", wire.XS_RM, b"/test/dir\0", 0),
    ("rm-missing", wire.XS_RM, b"/test/dir\0", 0),
    ("rm-missing-parent", wire.XS_RM, b"/nowhere/x\0", 0),
    ("watch", wire.XS_WATCH, b"/test\0tok\0", 0),
    ("write-under-watch", wire.XS_WRITE, b"/test/b\0x", 0),
    ("watch-duplicate", wire.XS_WATCH, b"/test\0tok\0", 0),
    ("unwatch", wire.XS_UNWATCH, b"/test\0tok\0", 0),
    ("unwatch-missing", wire.XS_UNWATCH, b"/test\0tok\0", 0),
    ("watch-release-domain", wire.XS_WATCH, b"@releaseDomain\0rel\0", 0),
    ("watch-introduce-domain", wire.XS_WATCH, b"@introduceDomain\0intro\0", 0),
    ("watch-with-depth", wire.XS_WATCH, wire.join("@releaseDomain", "deep", "1"), 0),
    ("watch-release-domain-domid", wire.XS_WATCH, b"@releaseDomain/1\0one\0", 0),
    ("watch-bad-path", wire.XS_WATCH, b"/test/a b\0tok\0", 0),
    ("transaction-start", wire.XS_TRANSACTION_START, b"\0", 0),
    ("write-in-transaction", wire.XS_WRITE, b"/test/t\0in-tx", TX),
    ("read-in-transaction", wire.XS_READ, b"/test/t\0", TX),
    ("read-outside-transaction", wire.XS_READ, b"/test/t\0", 0),
    ("transaction-commit", wire.XS_TRANSACTION_END, b"T\0", TX),
    ("read-after-commit", wire.XS_READ, b"/test/t\0", 0),
    ("transaction-end-again", wire.XS_TRANSACTION_END, b"T\0", TX),
    ("transaction-start-2", wire.XS_TRANSACTION_START, b"\0", 0),
    ("transaction-end-bad-arg", wire.XS_TRANSACTION_END, b"X\0", TX),
    ("transaction-abort", wire.XS_TRANSACTION_END, b"F\0", TX),
    ("read-unknown-transaction", wire.XS_READ, b"/test/a\0", 999),
    ("get-domain-path", wire.XS_GET_DOMAIN_PATH, b"1\0", 0),
    ("is-introduced", wire.XS_IS_DOMAIN_INTRODUCED, b"1\0", 0),
    ("is-introduced-not", wire.XS_IS_DOMAIN_INTRODUCED, b"4\0", 0),
    ("resume-introduced", wire.XS_RESUME, b"1\0", 0),
    ("resume-not-introduced", wire.XS_RESUME, b"4\0", 0),
    ("resume-dom0", wire.XS_RESUME, b"0\0", 0),
    ("release-not-introduced", wire.XS_RELEASE, b"4\0", 0),
    ("introduce-port-0", wire.XS_INTRODUCE, wire.join("4", "65540", "0"), 0),
    ("introduce-missing-args", wire.XS_INTRODUCE, b"4\0", 0),
    ("introduce-again", wire.XS_INTRODUCE, wire.join("1", "65537", "2"), 0),
    ("path-bad-chars", wire.XS_READ, b"/test/a b\0", 0),
    ("path-trailing-slash", wire.XS_READ, b"/test/\0", 0),
    ("path-double-slash", wire.XS_READ, b"//test\0", 0),
    ("path-2048", wire.XS_READ, b"/" + b"p" * 2047 + b"\0", 0),
    ("path-2049", wire.XS_READ, b"/" + b"p" * 2048 + b"\0", 0),
    ("path-3073", wire.XS_READ, b"/" + b"p" * 3072 + b"\0", 0),
    ("write-path-2049", wire.XS_WRITE, b"/" + b"p" * 2048 + b"\0v", 0),
    ("write-value-4000", wire.XS_WRITE, b"/test/big\0" + A.encode(), 0),
    ("get-feature", wire.XS_GET_FEATURE, b"", 0),
    ("get-quota", wire.XS_GET_QUOTA, b"", 0),
    ("type-20-restrict-removed", 20, b"1\0", 0),
    ("type-watch-event-from-client", wire.XS_WATCH_EVENT, b"/x\0t\0", 0),
    ("type-error-from-client", wire.XS_ERROR, b"EINVAL\0", 0),
    ("type-unknown-0x7777", 0x7777, b"", 0),
    ("type-invalid-0xffff", wire.XS_INVALID, b"", 0),
    ("reset-watches", wire.XS_RESET_WATCHES, b"", 0),
    ("read-after-reset", wire.XS_READ, b"/test/a\0", 0),
]
REPLY_WAIT = 1.0  # a server may hold a reply back (oxenstored, GET_FEATURE): don't hang


def type_name(t: int) -> str:
    try:
        return wire.XsdSockmsgType(t).name
    except ValueError:
        return f"type {t}"


def run_steps(xsd: XenstoredUnderStub) -> list[dict]:
    out = []
    tx = 0
    with xsd.connect() as c:
        for name, msg_type, payload, tx_spec in STEPS:
            tx_id = tx if tx_spec == TX else int(tx_spec)
            req_id = c.send(msg_type, payload, tx_id)
            frames = []
            while True:
                try:
                    t, rid, _tx, body = c.recv(REPLY_WAIT)
                except TimeoutError:
                    frames.append({"no_reply_within_s": REPLY_WAIT})
                    break
                frames.append(
                    {
                        "type": t,
                        "name": type_name(t),
                        "payload": body.decode("latin-1"),
                        **({} if rid in (req_id, 0) else {"reply_to_earlier": True}),
                    }
                )
                if rid == req_id and t != wire.XS_WATCH_EVENT:
                    break
            if msg_type == wire.XS_TRANSACTION_START and frames[-1].get("type") == msg_type:
                tx = int(frames[-1]["payload"].rstrip("\0"))
            shown = payload.decode("latin-1")
            if len(shown) > 80:
                shown = shown[:40] + f"...({len(payload)} bytes)..." + shown[-10:]
            out.append(
                {
                    "step": name,
                    "type": msg_type,
                    "name": type_name(msg_type),
                    "tx_id": tx_id,
                    "payload": shown,
                    "replies": frames,
                }
            )
    return out


@pytest.mark.parametrize("kind", ["xenstored", "oxenstored"])
def test_conformance_record(xenstub_libs, kind):
    """The servers' raw replies must stay those recorded in the data file.

    XENMUX_RECORD_CONFORMANCE=1 rewrites the file from the live servers instead.
    """
    doms = [dom0(), *(guest(d) for d in (1, 2, 3, 4))]
    with running(kind, xenstub_libs, doms, introduce=(1, 2, 3)) as x:
        got = run_steps(x)
        assert x.alive(), x.log()
    if os.environ.get("XENMUX_RECORD_CONFORMANCE"):
        data = json.loads(CONFORMANCE.read_text()) if CONFORMANCE.exists() else {}
        data["about"] = (
            "Raw replies of Debian bookworm's Xen 4.17 servers (run under tests/xenstub, see "
            "docs/real-xen.md) to the requests of tests/test_real_xenstored.py:STEPS, sent in "
            "order on one socket connection (dom0 privileges) after dom0 and guests 1-4 were "
            "set up and 1-3 introduced. Payloads are the bytes as latin-1 strings. "
            "Rewrite with XENMUX_RECORD_CONFORMANCE=1."
        )
        data[kind] = got
        CONFORMANCE.parent.mkdir(exist_ok=True)
        CONFORMANCE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return
    recorded = json.loads(CONFORMANCE.read_text())[kind]
    assert [s["step"] for s in recorded] == [s["step"] for s in got], "STEPS changed: re-record"
    for want, have in zip(recorded, got, strict=True):
        assert have == want, f"{kind}: step {want['step']} differs"
