"""The `xenctrl` backend: libxenctrl through dlopen in mux._fast, its errors, and the daemon
on it (issue 5).

Three libraries stand in for the hypervisor here, none of them Xen:
- Debian's real `libxenctrl.so.4.17` (libxen-dev): it loads, its three functions resolve,
  and `xc_interface_open` fails because this machine has no /dev/xen/privcmd;
- `libxenctrl_stub.so` (mux/realxen/xenstub): the same ABI, serving a domain table in shared memory
  (the sim's `domains.shm` or a `mux.realxen.ShmTable`), with failure injection;
- `fakexc.so`, built below from FAKE_XC: a misbehaving libxenctrl (bad batches, slow calls,
  an open that fails with a chosen errno).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import realxen
from daemonhelpers import DaemonHandle, _accepts, brief, take, until
from simhelpers import REPO, sim_command

from mux import _fast, records
from mux.hypervisor import HypervisorError, NotADom0Error, open_backend
from mux.hypervisor import xenctrl as xenctrl_mod
from mux.hypervisor.xenctrl import XenctrlBackend, candidate_libraries
from mux.realxen import ShmTable, dom0, guest, private_dir

xenstub_libs = realxen.xenstub_libs  # the session fixture, registered for this module

RECORD = records.RECORD_SIZE

FAKE_XC = r"""
/* A misbehaving libxenctrl for xenmux's tests (the xenctrl.h prototypes, opaque handle).
 * FAKE_XC_OPEN_ERRNO=N   xc_interface_open fails with errno N
 * FAKE_XC_MODE=...       what xc_domain_getinfolist returns:
 *   count      domids 0 .. FAKE_XC_TOTAL-1 (default 3000), honest paging
 *   descending two records, the second with a smaller domid
 *   below      a record below `first`
 *   reserved   a record with domid 0x7FF0
 *   toomany    max + 1 (writes nothing)
 *   wait       creates $FAKE_XC_ENTERED, then waits (up to 5 s) until $FAKE_XC_GO exists,
 *              then one record (domid `first`); ETIMEDOUT if it never appears
 * fakexc_calls() counts getinfolist calls. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned long calls;

static void put(unsigned char *rec, unsigned domid)
{
	uint16_t d = (uint16_t)domid;
	memset(rec, 0, 112);
	memcpy(rec, &d, 2);
	rec[76 + 15] = (unsigned char)domid; /* a handle of its own */
	rec[76 + 14] = (unsigned char)(domid >> 8);
	rec[56] = 1; /* cpu_time */
}

void *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags)
{
	const char *e = getenv("FAKE_XC_OPEN_ERRNO");
	(void)logger; (void)dombuild_logger; (void)open_flags;
	if (e) {
		errno = atoi(e);
		return NULL;
	}
	return calloc(1, 16);
}

int xc_interface_close(void *xch)
{
	free(xch);
	return 0;
}

int xc_domain_getinfolist(void *xch, uint32_t first, unsigned max, void *info)
{
	const char *mode = getenv("FAKE_XC_MODE");
	const char *tot = getenv("FAKE_XC_TOTAL");
	unsigned char *p = info;
	unsigned total = tot ? (unsigned)atoi(tot) : 3000, n = 0;

	(void)xch;
	calls++;
	if (!mode || !strcmp(mode, "count")) {
		while (n < max && first + n < total) {
			put(p + 112 * n, first + n);
			n++;
		}
		return (int)n;
	}
	if (!strcmp(mode, "descending")) {
		put(p, first + 5);
		put(p + 112, first + 2);
		return 2;
	}
	if (!strcmp(mode, "below")) {
		put(p, first ? first - 1 : 0);
		return 1;
	}
	if (!strcmp(mode, "reserved")) {
		put(p, 0x7FF0);
		return 1;
	}
	if (!strcmp(mode, "toomany"))
		return (int)max + 1;
	if (!strcmp(mode, "wait")) {
		int fd = open(getenv("FAKE_XC_ENTERED"), O_CREAT | O_WRONLY, 0600), i;
		if (fd >= 0)
			close(fd);
		for (i = 0; i < 5000 && access(getenv("FAKE_XC_GO"), F_OK) != 0; i++)
			usleep(1000);
		if (i == 5000) {
			errno = ETIMEDOUT;
			return -1;
		}
		put(p, first);
		return 1;
	}
	errno = EINVAL;
	return -1;
}

unsigned long fakexc_calls(void)
{
	return calls;
}
"""


# ---------------------------------------------------------------------------------------------
# Libraries


def system_libxenctrl() -> str:
    """Debian's real library (libxen-dev, installed by `make test`)."""
    for name in candidate_libraries():
        path = name if os.path.isabs(name) else f"/usr/lib/x86_64-linux-gnu/{name}"
        if os.path.exists(path):
            return path
    pytest.fail("no libxenctrl.so.4.* on this machine: install libxen-dev (make test does)")


@pytest.fixture(scope="module")
def fakexc():
    with private_dir() as d:
        src = d / "fakexc.c"
        src.write_text(FAKE_XC)
        out = d / "fakexc.so"
        subprocess.run(
            ["cc", "-O1", "-shared", "-fPIC", "-o", str(out), str(src)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield out


@pytest.fixture
def stub_copy(xenstub_libs, scratch):
    """A private copy of libxenctrl_stub.so: its failure counter and parsed environment are
    static, so each test loads a fresh instance."""
    path = scratch / f"libxenctrl_stub-{time.monotonic_ns()}.so"
    shutil.copy(xenstub_libs.xenctrl, path)
    return path


@pytest.fixture
def scratch():
    with private_dir() as d:
        yield d


@pytest.fixture
def table(scratch, monkeypatch):
    """dom0 and guests 1, 5, 6, 9, served to the stub through $XENMUX_STUB_SHM."""
    t = ShmTable(scratch / "domains.shm", capacity=3000)
    t.set_domains([dom0(), guest(1), guest(5), guest(6), guest(9)])
    monkeypatch.setenv("XENMUX_STUB_SHM", str(t.path))
    monkeypatch.delenv("XENMUX_STUB_FAIL", raising=False)
    monkeypatch.delenv("XENMUX_STUB_FAIL_FILE", raising=False)
    yield t
    t.close()


def domids(buf, n: int) -> list[int]:
    return [int.from_bytes(buf[i * RECORD : i * RECORD + 2], "little") for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Finding and loading the library


def test_the_system_library_is_found_the_way_the_system_does():
    names = candidate_libraries()
    assert names[0] == "libxenctrl.so"  # the development link first, as the linker would
    assert any(n.startswith("libxenctrl.so.4.") for n in names)  # ldconfig's soname
    # Each installed version once, newest first, from the library directories.
    files = [n for n in names if os.path.isabs(n)]
    assert files and all(os.path.basename(f).startswith("libxenctrl.so.4.") for f in files)
    assert len({xenctrl_mod._version_key(f)[:2] for f in files}) == len(files)


def test_real_libxenctrl_loads_and_says_this_is_no_dom0():
    """Debian's libxenctrl 4.17: dlopen and dlsym of the three calls succeed (the failure is
    the hypervisor interface's), and the message says what is wrong."""
    if os.path.exists(xenctrl_mod.PRIVCMD):
        pytest.skip("a real dom0: the library would open")
    with pytest.raises(_fast.XenctrlError) as info:
        _fast.Xenctrl(system_libxenctrl())
    assert info.value.call == "xc_interface_open" and info.value.errno == errno.ENOENT
    with pytest.raises(HypervisorError) as info:
        XenctrlBackend()  # found by the search, as `serve` finds it
    msg = str(info.value)
    assert "libxenctrl" in msg and "/dev/xen/privcmd is missing" in msg
    assert "not a Xen dom0" in msg and not info.value.retryable


def test_missing_and_wrong_libraries(tmp_path):
    with pytest.raises(HypervisorError) as info:
        XenctrlBackend(str(tmp_path / "libxenctrl.so.4.99"))
    assert info.value.errno == errno.ENOENT
    assert "cannot load libxenctrl from" in str(info.value) and "--xenctrl-lib" in str(info.value)
    with pytest.raises(HypervisorError) as info:
        XenctrlBackend("libc.so.6")  # loads, but is no libxenctrl
    assert "has no xc_interface_open()" in str(info.value)


def test_nothing_found_names_every_candidate(monkeypatch):
    monkeypatch.setattr(xenctrl_mod, "candidate_libraries", lambda: ["libnope.so", "/x/y.so"])
    with pytest.raises(HypervisorError) as info:
        XenctrlBackend()
    msg = str(info.value)
    assert "tried libnope.so (" in msg and "/x/y.so (" in msg and "--xenctrl-lib" in msg


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EACCES, "no permission to open /dev/xen/privcmd: run `xenmux serve` as root"),
        (errno.EPERM, "no permission to open /dev/xen/privcmd"),
        (errno.ENOENT, "/dev/xen/privcmd is missing"),
        (errno.ENXIO, "xc_interface_open failed"),
    ],
)
def test_no_privilege_to_open_the_hypervisor(fakexc, monkeypatch, code, words):
    monkeypatch.setenv("FAKE_XC_OPEN_ERRNO", str(code))
    with pytest.raises(HypervisorError) as info:
        XenctrlBackend(str(fakexc))
    assert info.value.errno == code and not info.value.retryable
    assert words in str(info.value) and str(fakexc) in str(info.value)


# ---------------------------------------------------------------------------------------------
# The calls


def test_getinfolist_has_the_hypercall_semantics(stub_copy, table):
    be = XenctrlBackend(str(stub_copy))
    assert be.name == "xenctrl" and be.domain_count_hint() == 5
    buf = bytearray(16 * RECORD)
    assert be.getinfolist(0, 16, buf) == 5 and domids(buf, 5) == [0, 1, 5, 6, 9]
    assert be.getinfolist(2, 16, buf) == 3 and domids(buf, 3) == [5, 6, 9]  # a lower bound
    assert be.getinfolist(5, 2, buf, 3 * RECORD) == 2  # at an offset
    assert domids(buf, 5) == [5, 6, 9, 5, 6]
    assert be.getinfolist(10, 16, buf) == 0
    assert be.getinfolist(0x7FF0, 16, buf) == 0 and be.getinfolist(0, 0, buf) == 0
    table.shutdown(6, records.SHUTDOWN_CRASH)
    assert be.getinfolist(6, 1, buf) == 1
    rec = records.DomainRecord.unpack_from(buf, 0)
    assert rec == table.get(6) and rec.reason == records.SHUTDOWN_CRASH
    with pytest.raises(ValueError, match="need"):
        be.getinfolist(0, 17, buf)  # 17 records do not fit
    with pytest.raises(ValueError, match="negative"):
        be.getinfolist(-1, 1, buf)
    with pytest.raises(BufferError):
        be.getinfolist(0, 1, bytes(RECORD))  # not writable
    be.close()
    be.close()
    assert be.closed
    with pytest.raises(ValueError, match="closed"):
        be.getinfolist(0, 1, buf)


def test_scan_all_pages_in_batches_of_1024_and_grows_its_buffer(stub_copy, table):
    table.set_domains([dom0(), *(guest(d) for d in range(1, 2500))])
    lib = ctypes.CDLL(str(stub_copy))  # the same instance _fast loads: its call counter
    lib.xenmux_stub_calls.restype = ctypes.c_ulong
    be = XenctrlBackend(str(stub_copy))
    calls = lib.xenmux_stub_calls()
    buf, n = be.scan_all()
    assert n == 2500 and domids(buf, n) == list(range(2500))
    assert lib.xenmux_stub_calls() - calls == 3  # 1024 + 1024 + 452
    assert len(buf) >= (n + _fast.SCAN_SLACK) * RECORD  # the live count plus slack
    # Exactly 2048 domains: the third batch comes back empty and ends the scan.
    table.set_domains([dom0(), *(guest(d) for d in range(1, 2048))])
    calls = lib.xenmux_stub_calls()
    assert be.scan_all()[1] == 2048 and lib.xenmux_stub_calls() - calls == 3
    assert be.domain_count_hint() == 2048
    # The diff reads the buffer as it is: no per-record Python object on the way.
    t = _fast.DomainTable()
    t.prime(*be.scan_all())
    table.shutdown(7, records.SHUTDOWN_REBOOT)
    table.remove(9)
    (ev1,) = [e for e in t.diff(*be.scan_all()) if e.domid == 7]
    assert ev1.kind == "shutdown" and ev1.reason == "reboot"
    be.close()


def test_scan_all_stops_below_the_reserved_domids(fakexc, monkeypatch):
    monkeypatch.setenv("FAKE_XC_MODE", "count")
    monkeypatch.setenv("FAKE_XC_TOTAL", str(0x7FF0))  # every valid domid: 32 full batches
    be = XenctrlBackend(str(fakexc))
    calls = ctypes.CDLL(str(fakexc)).fakexc_calls
    calls.restype = ctypes.c_ulong
    before = calls()
    buf, n = be.scan_all()
    assert n == 0x7FF0 and calls() - before == 32  # no 33rd call for domids >= 0x7FF0
    assert domids(buf, 3) == [0, 1, 2] and domids(buf[(n - 1) * RECORD :], 1) == [0x7FEF]
    be.close()


def test_a_held_buffer_cannot_be_resized_under_the_scan(fakexc, monkeypatch):
    monkeypatch.setenv("FAKE_XC_TOTAL", "10")
    xc = _fast.Xenctrl(str(fakexc))
    buf = bytearray(0)
    view = memoryview(buf)
    with pytest.raises(BufferError):
        xc.scan_all(buf)  # it must grow, and an exported bytearray cannot
    view.release()
    assert xc.scan_all(buf) == 10
    xc.close()


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("descending", "returned domid 7 at record 1: domids must rise from 5"),
        ("below", "returned domid 4 at record 0"),
        ("reserved", "returned domid 32752 at record 0"),
        ("toomany", "returned 9 records"),
    ],
)
def test_a_batch_that_breaks_the_contract_is_refused(fakexc, monkeypatch, mode, words):
    monkeypatch.setenv("FAKE_XC_TOTAL", "3")
    be = XenctrlBackend(str(fakexc))
    monkeypatch.setenv("FAKE_XC_MODE", mode)
    with pytest.raises(HypervisorError) as info:
        be.getinfolist(5, 8, bytearray(8 * RECORD))
    assert info.value.errno == errno.EIO and words in str(info.value)
    assert "libxenctrl of the running Xen" in str(info.value)
    be.close()


@pytest.mark.parametrize(
    ("name", "code", "retryable", "words"),
    [
        ("EAGAIN", errno.EAGAIN, True, "transient, retrying"),
        ("EINTR", errno.EINTR, True, "transient, retrying"),
        ("EBUSY", errno.EBUSY, True, "transient, retrying"),
        ("EPERM", errno.EPERM, False, "refused XEN_SYSCTL_getdomaininfolist: run as root"),
        ("EACCES", errno.EACCES, False, "mismatched sysctl interface version"),
        ("EFAULT", errno.EFAULT, False, "xl dmesg"),
    ],
)
def test_a_failing_batch_becomes_a_hypervisor_error(
    stub_copy, table, monkeypatch, name, code, retryable, words
):
    be = XenctrlBackend(str(stub_copy))  # the first scan succeeds
    ctl = table.path.parent / "fail"
    ctl.write_text(f"{name} 1\n")
    monkeypatch.setenv("XENMUX_STUB_FAIL_FILE", str(ctl))  # read by the stub at each call
    with pytest.raises(HypervisorError) as info:
        be.scan_all()
    exc = info.value
    assert exc.errno == code and exc.retryable is retryable
    assert str(stub_copy) in str(exc) and "xc_domain_getinfolist(first=0, max=1024)" in str(exc)
    assert words in str(exc)
    assert be.scan_all()[1] == 5  # the next one works
    be.close()


def test_transient_errors_at_start_up_are_retried(stub_copy, table, monkeypatch):
    monkeypatch.setenv("XENMUX_STUB_FAIL", "EAGAIN:3")
    t0 = time.monotonic()
    be = XenctrlBackend(str(stub_copy))
    assert be.domain_count_hint() == 5 and time.monotonic() - t0 < 3
    be.close()


def test_no_privilege_at_start_up_is_not_retried(stub_copy, table, monkeypatch):
    monkeypatch.setenv("XENMUX_STUB_FAIL", "EPERM:1")
    t0 = time.monotonic()
    with pytest.raises(HypervisorError) as info:
        XenctrlBackend(str(stub_copy))
    assert info.value.errno == errno.EPERM and time.monotonic() - t0 < 1


def test_the_call_runs_without_the_gil(fakexc, monkeypatch, scratch):
    """The library waits inside the call until this (Python) thread creates a file: only
    possible if the call let go of the GIL. Held, the call would time out after 5 s."""
    monkeypatch.setenv("FAKE_XC_TOTAL", "1")
    be = XenctrlBackend(str(fakexc))
    entered, go = scratch / "entered", scratch / "go"
    monkeypatch.setenv("FAKE_XC_MODE", "wait")
    monkeypatch.setenv("FAKE_XC_ENTERED", str(entered))
    monkeypatch.setenv("FAKE_XC_GO", str(go))
    got: list = []

    def call() -> None:
        try:
            got.append(be.getinfolist(3, 1, bytearray(RECORD)))
        except HypervisorError as exc:
            got.append(exc)

    t = threading.Thread(target=call)
    t.start()
    until(entered.exists, timeout=4)  # Python runs while the other thread is in the call
    go.touch()
    t.join(10)
    assert got == [1]
    be.close()


# ---------------------------------------------------------------------------------------------
# Backend choice


def test_auto_picks_xenctrl_where_privcmd_exists(stub_copy, table, monkeypatch, tmp_path):
    fake_privcmd = tmp_path / "privcmd"
    fake_privcmd.touch()
    import mux.hypervisor as hv

    monkeypatch.setattr(hv, "PRIVCMD", str(fake_privcmd))
    be = open_backend("auto", xenctrl_lib=str(stub_copy))
    assert isinstance(be, XenctrlBackend) and be.name == "xenctrl"
    be.close()
    monkeypatch.setattr(hv, "PRIVCMD", str(tmp_path / "absent"))
    with pytest.raises(NotADom0Error, match="this is not a Xen dom0"):
        open_backend("auto", xenctrl_lib=str(stub_copy))


def run_xenmux(*args: str, env: dict | None = None, timeout: float = 30):
    return subprocess.run(
        [*sim_command(), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def test_serve_without_arguments_on_a_machine_without_xen():
    if os.path.exists("/dev/xen/privcmd"):
        pytest.skip("this is a Xen dom0")
    r = run_xenmux("serve")
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("xenmux serve: this is not a Xen dom0 (/dev/xen/privcmd is missing)")
    assert "xenmux sim --dir DIR" in lines[0] and "--backend sim --sim-dir DIR" in lines[0]


def test_serve_refuses_in_one_line_when_the_hypervisor_is_out_of_reach(fakexc, tmp_path):
    sock = str(tmp_path / "x.sock")
    common = ["serve", "--socket", sock, "--metrics-addr", "", "--xenstore", "/nonexistent"]
    env = dict(os.environ, FAKE_XC_OPEN_ERRNO=str(errno.EACCES))
    r = run_xenmux(*common, "--backend", "xenctrl", "--xenctrl-lib", str(fakexc), env=env)
    assert r.returncode == 1 and not os.path.exists(sock)
    assert r.stderr.strip().endswith("(the systemd unit packaging/xenmux.service does)")
    assert r.stderr.startswith(f"xenmux serve: {fakexc}: xc_interface_open failed (Permission")
    r = run_xenmux(*common, "--backend", "xenctrl", "--xenctrl-lib", "/no/libxenctrl.so")
    assert r.returncode == 1 and "cannot load libxenctrl from /no/libxenctrl.so" in r.stderr
    if not os.path.exists("/dev/xen/privcmd"):
        r = run_xenmux(*common, "--backend", "xenctrl")  # Debian's real library, found
        assert r.returncode == 1 and "/dev/xen/privcmd is missing" in r.stderr
        assert "libxenctrl.so" in r.stderr


# ---------------------------------------------------------------------------------------------
# The daemon on the xenctrl backend


def start_serve(
    workdir: Path, *args: str, env: dict | None = None, timeout: float = 30.0
) -> DaemonHandle:
    """`xenmux serve ARGS --socket workdir/x.sock --metrics-addr ''`, ready when it accepts;
    its state dir is in `workdir` too (not the host's /var/lib/xenmux)."""
    sock = str(workdir / f"x{time.monotonic_ns() % 100000}.sock")
    log = workdir / f"serve-{time.monotonic_ns()}.log"
    argv = [
        *sim_command(),
        "serve",
        *args,
        "--socket",
        sock,
        "--metrics-addr",
        "",
        "--state-dir",
        str(workdir / "xenmux-state"),
        "--log-level",
        "debug",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    deadline = time.monotonic() + timeout
    while not _accepts(sock):
        if proc.poll() is not None:
            raise AssertionError(f"xenmux serve exited with {proc.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise AssertionError(f"xenmux serve not ready after {timeout} s: {log.read_text()}")
        time.sleep(0.02)
    return DaemonHandle(proc, sock, log, argv)


@pytest.fixture
def serve_factory():
    """start_serve(), each daemon stopped by PID at teardown (and checked: clean exit)."""
    started: list[DaemonHandle] = []

    def make(workdir: Path, *args: str, **kw) -> DaemonHandle:
        d = start_serve(Path(workdir), *args, **kw)
        started.append(d)
        return d

    yield make
    errors = []
    for d in reversed(started):
        try:
            assert d.stop() == 0, f"daemon exited with {d.proc.returncode}: {d.log_text()}"
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, errors


def test_daemon_counts_and_retries_failing_hypercalls(sim, xenstub_libs, serve_factory, scratch):
    """The stub serves the sim's table; failures are armed while the daemon runs. Each is
    counted and retried with backoff; no event is lost or repeated; the daemon lives on."""
    fail = scratch / "fail"
    fail.write_text("")
    env = dict(os.environ, XENMUX_STUB_SHM=sim.shm, XENMUX_STUB_FAIL_FILE=str(fail))
    env.pop("XENMUX_STUB_FAIL", None)
    d = serve_factory(
        scratch,
        "--backend",
        "xenctrl",
        "--xenctrl-lib",
        str(xenstub_libs.xenctrl),
        "--xenstore",
        sim.xenstored,
        "--full-scan",
        "0",
        env=env,
    )
    assert d.stats()["backend"] == "xenctrl"
    with d.subscribe(None) as sub:
        events = []
        for errname, k, change in [
            ("EAGAIN", 3, lambda: sim.ctl.shutdown(3, "crash")),
            ("EPERM", 2, lambda: sim.ctl.destroy(3)),
            ("EINTR", 1, lambda: sim.ctl.suspend(4)),
            ("EBUSY", 1, lambda: sim.ctl.resume(4)),
            ("EIO", 1, lambda: sim.ctl.create(name="after-errors")),
        ]:
            before = d.stats()["hypercall_errors"]
            fail.write_text(f"{errname} {k}\n")
            change()
            if errname == "EBUSY":  # a resume fires nothing: the shutdown poll finds it
                events += take(sub, 1)
            else:
                events += take(sub, {"EPERM": 2}.get(errname, 1))
            assert fail.read_text().split() == [errname, "0"]  # every armed failure was hit
            until(lambda b=before, k=k: d.stats()["hypercall_errors"] == b + k)
    assert brief(events) == [
        ("shutdown", 3, "crash"),
        ("death", 3, "crash"),
        ("released", 3, None),
        ("shutdown", 4, "suspend"),
        ("resumed", 4, None),
        ("new", 9, None),
    ]
    assert events[-1]["name"] == "after-errors"
    text = d.log_text()
    assert "domain-info hypercall failed" in text and "retrying in" in text
    assert "Traceback" not in text
    assert d.stats()["hypercall_errors"] == 8


def test_daemon_starts_through_transient_errors_and_stops_on_no_privilege(
    sim, xenstub_libs, serve_factory, scratch
):
    args = ["--backend", "xenctrl", "--xenctrl-lib", str(xenstub_libs.xenctrl)]
    args += ["--xenstore", sim.xenstored]
    env = dict(os.environ, XENMUX_STUB_SHM=sim.shm, XENMUX_STUB_FAIL="EAGAIN:2")
    d = serve_factory(scratch, *args, env=env)
    with d.client() as c:
        assert len(c.list()) == 9
    assert "first domain scan failed" in d.log_text()
    env["XENMUX_STUB_FAIL"] = "EPERM:1"
    r = run_xenmux("serve", *args, "--socket", str(scratch / "y.sock"), env=env)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "(EPERM); the hypervisor refused XEN_SYSCTL_getdomaininfolist" in r.stderr
