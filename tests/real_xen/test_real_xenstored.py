"""Debian's real xenstored / oxenstored 4.17 under our hypervisor stand-in (docs/real-xen.md).

These prove the stand-in (mux.realxen) and its fixtures (tests/realxen.py): the real clients
work against the real servers, @releaseDomain fires from our shared-memory table and VIRQ
datagrams, and the two servers' firing rules are the ones docs/architecture.md builds on.
They also keep tests/data/xenstored_conformance.json (the servers' raw replies) true.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import realxen
from xsconformance import CONFORMANCE, TX_CASES, run_steps, run_tx_case, tx_expected

from mux import records
from mux.realxen import (
    STEP_TIMEOUT,
    ShmTable,
    XenstoredUnderStub,
    XsConnection,
    dom0,
    guest,
    private_dir,
    running,
)
from mux.records import DomainRecord
from mux.xenstore import wire

# The fixtures of tests/realxen.py, registered for this module.
xenstub_libs = realxen.xenstub_libs
c_xenstored = realxen.c_xenstored
oxenstored = realxen.oxenstored
real_xenstored = realxen.real_xenstored

RELEASE = ("@releaseDomain", "rel")

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


@pytest.mark.parametrize("kind", ["xenstored", "oxenstored"])
def test_introduce_all_writes_every_home_then_introduces_each(xenstub_libs, kind):
    """What the bench does with the guests a host starts with: the homes first (owned by
    their domain alone), then an XS_INTRODUCE each; every one is introduced and named."""
    doms = [dom0(), *(guest(d) for d in range(1, 42))]
    with running(kind, xenstub_libs, doms) as x:
        w = x.connect()
        w.watch("@introduceDomain", "intro")
        assert w.sync() == [("@introduceDomain", "intro")]
        x.introduce_all(range(1, 41), owner_only=True)
        c = x.control
        assert all(c.is_introduced(d) for d in range(1, 41))
        assert c.read("/local/domain/40/name") == b"guest40"
        assert c.call(wire.XS_GET_PERMS, b"/local/domain/40\0") == b"n40\0"
        x.introduce(41, owner_only=False)
        assert c.call(wire.XS_GET_PERMS, b"/local/domain/41\0") == b"n41\0r0\0"
        assert len(w.sync()) >= 1  # @introduceDomain fired
        assert x.alive(), x.log()


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
    with private_dir() as d:
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


def test_xenctrl_stub_follows_a_table_replaced_or_removed(xenstub_libs, table, scratch):
    """The table is mapped once; what removes or replaces it raises a VIRQ (counted in its
    header), and the next call serves what the path now holds."""
    xc = XenctrlStub(xenstub_libs, scratch)
    assert [r.domid for r in xc.getinfolist(0, 16)] == [0, 1, 5, 6, 9]
    table.path.unlink()
    table.count_virq()
    with pytest.raises(FileNotFoundError):
        xc.getinfolist(0, 16)
    again = ShmTable(table.path)  # a new file at the same path
    try:
        again.set_domains([dom0(), guest(3)])
        assert [r.domid for r in xc.getinfolist(0, 16)] == [0, 3]
    finally:
        again.close()
    xc.close()


STAT_CALLS = ("stat(", "newfstatat(", "statx(", "lstat(", "fstatat64(")


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_the_stand_in_does_not_stat_the_table_on_every_call(xenstub_libs, table, scratch):
    """Under C xenstored a VIRQ asks for every domain, one call each: the table is looked at
    (one stat) when its VIRQ count moves, not on each of those calls."""
    trace = scratch / "strace.out"
    script = (
        "import ctypes, sys\n"
        "lib = ctypes.CDLL(sys.argv[1])\n"
        "lib.xc_interface_open.restype = ctypes.c_void_p\n"
        "lib.xc_domain_getinfolist.argtypes = [ctypes.c_void_p, ctypes.c_uint32, "
        "ctypes.c_uint, ctypes.c_char_p]\n"
        "xch = lib.xc_interface_open(None, None, 0)\n"
        "buf = ctypes.create_string_buffer(112)\n"
        "assert all(lib.xc_domain_getinfolist(xch, d % 10, 1, buf) == 1 for d in range(2000))\n"
    )
    env = dict(os.environ, XENMUX_STUB_SHM=str(table.path))
    proc = subprocess.run(
        [
            "strace",
            "-f",
            "-o",
            str(trace),
            "-e",
            "trace=%stat,%fstat",
            sys.executable,
            "-c",
            script,
            str(xenstub_libs.xenctrl),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = [
        line
        for line in trace.read_text().splitlines()
        if str(table.path) in line and any(c in line for c in STAT_CALLS)
    ]
    assert 1 <= len(stats) <= 3, stats


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
            "Raw replies of Debian bookworm's Xen 4.17 servers (run under mux/realxen/xenstub, see "
            "docs/real-xen.md) to the requests of tests/xsconformance.py:STEPS, sent in order "
            "on one socket connection (dom0 privileges) after dom0 and guests 1-4 were "
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


def test_transactions_between_two_connections(real_xenstored):
    """Each server's answers to tests/xsconformance.py:TX_CASES (the sim is held to the C
    server's by tests/sim/test_sim_transactions.py): C xenstored 4.17 fails the commit of a
    transaction whose nodes another connection changed meanwhile with EAGAIN."""
    expected = tx_expected(real_xenstored.kind)
    got = {name: run_tx_case(real_xenstored, steps) for name, steps in TX_CASES.items()}
    differ = {name: answers for name, answers in got.items() if answers != expected[name]}
    assert not differ, f"{real_xenstored.kind}: {differ}"
