"""The real Xen 4.17 xenstored and oxenstored, run on a machine without Xen (docs/real-xen.md).

Debian's daemons run unchanged under `tests/xenstub/hvstub.so` (LD_PRELOAD), which stands in
for the hypervisor: the domain list comes from a shared-memory table laid out as the simulated
host's `DIR/domains.shm` (docs/internals.md), and VIRQ_DOM_EXC is one AF_UNIX datagram sent
to the server's event channel socket. Everything lives in one private temporary directory
that is removed at the end; every process is stopped by its PID.

Use from a test module (assigning the fixtures registers them for that module):

    import realxen
    c_xenstored = realxen.c_xenstored

    def test_x(c_xenstored):
        xs = c_xenstored.connect()
        xs.watch("@releaseDomain", "t")
        assert xs.sync() == [("@releaseDomain", "t")]        # the initial event
        c_xenstored.shutdown_domain(1, records.SHUTDOWN_POWEROFF)   # table + VIRQ
        assert xs.sync() == [("@releaseDomain", "t")]

`xenmux sim` will write the very same table; once it exists, point `XenstoredUnderStub` at
the sim's `DIR/domains.shm` and pass its VIRQ socket to `xenmux sim --virq-socket PATH`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from mux import records
from mux.records import DomainRecord
from mux.xenstore import wire

XEN_BIN = Path("/usr/lib/xen-4.17/bin")
XENSTORED = XEN_BIN / "xenstored"
OXENSTORED = XEN_BIN / "oxenstored"
STUB_SRC = Path(__file__).resolve().parent / "xenstub"
STEP_TIMEOUT = 5.0  # seconds for any single wait in these fixtures

# ---------------------------------------------------------------------------------------------
# Building the stand-ins


@dataclasses.dataclass(frozen=True)
class StubLibs:
    hvstub: Path  # LD_PRELOAD for xenstored / oxenstored
    xenctrl: Path  # libxenctrl stand-in for `xenmux serve --xenctrl-lib`


def build_stubs(out: Path) -> StubLibs:
    """Compile tests/xenstub with the system cc into `out` (never into the source tree)."""
    for tool in ("cc", "make"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: install build-essential")
    if not Path("/usr/include/xenctrl.h").exists():
        pytest.fail("/usr/include/xenctrl.h is missing: install libxen-dev (make test does)")
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["make", "-s", "-C", str(STUB_SRC), f"OUT={out}", "CC=cc"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        pytest.fail(f"building tests/xenstub failed:\n{proc.stdout}\n{proc.stderr}")
    return StubLibs(out / "hvstub.so", out / "libxenctrl_stub.so")


# ---------------------------------------------------------------------------------------------
# The shared-memory domain table (the writer side, as the simulated host will do it)

SHM_MAGIC = b"XMUXSHM1"
SHM_HEADER = 128
_OFF_COUNT, _OFF_SEQ, _OFF_STAMP, _OFF_CHANGES, _OFF_VIRQS = 20, 24, 32, 40, 48


class ShmTable:
    """A writer of `domains.shm` for tests, until `xenmux sim` writes it."""

    def __init__(self, path: Path, capacity: int = 256) -> None:
        self.path = Path(path)
        self.capacity = capacity
        size = SHM_HEADER + capacity * records.RECORD_SIZE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._map[0:8] = SHM_MAGIC
        struct.pack_into("<IIII", self._map, 8, 1, records.RECORD_SIZE, capacity, 0)
        self._domains: dict[int, DomainRecord] = {}

    # -- writing under the seqlock
    def _publish(self) -> None:
        doms = [self._domains[d] for d in sorted(self._domains)]
        if len(doms) > self.capacity:
            raise ValueError(f"{len(doms)} domains do not fit a table of {self.capacity}")
        m = self._map
        (seq,) = struct.unpack_from("<Q", m, _OFF_SEQ)
        struct.pack_into("<Q", m, _OFF_SEQ, seq + 1)  # odd: readers retry
        for i, rec in enumerate(doms):
            rec.pack_into(m, SHM_HEADER + i * records.RECORD_SIZE)
        struct.pack_into("<I", m, _OFF_COUNT, len(doms))
        (changes,) = struct.unpack_from("<Q", m, _OFF_CHANGES)
        struct.pack_into("<QQ", m, _OFF_STAMP, time.monotonic_ns(), changes + 1)
        struct.pack_into("<Q", m, _OFF_SEQ, seq + 2)

    def set_domains(self, recs: Iterable[DomainRecord]) -> None:
        self._domains = {r.domid: r for r in recs}
        self._publish()

    def put(self, rec: DomainRecord) -> None:
        self._domains[rec.domid] = rec
        self._publish()

    def remove(self, domid: int) -> None:
        del self._domains[domid]
        self._publish()

    def get(self, domid: int) -> DomainRecord:
        return self._domains[domid]

    def update(self, domid: int, **changes) -> DomainRecord:
        rec = dataclasses.replace(self._domains[domid], **changes)
        self.put(rec)
        return rec

    # -- the lifecycle, as Xen sets the flags
    def shutdown(self, domid: int, reason: int) -> None:
        flags = self._domains[domid].flags & ~(0xFF << records.DOMINF_SHUTDOWNSHIFT)
        flags |= records.DOMINF_SHUTDOWN | (reason << records.DOMINF_SHUTDOWNSHIFT)
        self.update(domid, flags=flags)

    def resume(self, domid: int) -> None:
        """domain_resume(): the shutdown flag clears and the code goes back to 255."""
        flags = self._domains[domid].flags & ~(0xFF << records.DOMINF_SHUTDOWNSHIFT)
        flags &= ~records.DOMINF_SHUTDOWN
        self.update(domid, flags=flags | (records.SHUTDOWN_NONE << records.DOMINF_SHUTDOWNSHIFT))

    def dying(self, domid: int) -> None:
        self.update(domid, flags=self._domains[domid].flags | records.DOMINF_DYING)

    def count_virq(self) -> None:
        (n,) = struct.unpack_from("<Q", self._map, _OFF_VIRQS)
        struct.pack_into("<Q", self._map, _OFF_VIRQS, n + 1)

    def close(self) -> None:
        if not self._map.closed:
            self._map.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def guest(domid: int, **kw) -> DomainRecord:
    """A running guest as the hypervisor reports it (reason 255, a UUID from its domid)."""
    handle = kw.pop("handle", bytes(12) + domid.to_bytes(4, "big"))
    return DomainRecord(
        domid, records.make_flags(), handle=handle, cpu_time=kw.pop("cpu_time", 1), **kw
    )


def dom0() -> DomainRecord:
    return DomainRecord(0, records.make_flags(base=records.DOMINF_RUNNING), cpu_time=1)


def send_virq(path: Path | str) -> None:
    """Raise VIRQ_DOM_EXC at a server under hvstub: one datagram, as `xenmux sim` will send."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"V", str(path))


# ---------------------------------------------------------------------------------------------
# A small blocking xenstore client over the Unix socket (our wire codecs)

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


# ---------------------------------------------------------------------------------------------
# The servers


OXENSTORED_CONF = """\
# oxenstored configuration of a test (tests/realxen.py); the rest are built-in defaults.
pid-file = {rundir}/xenstored.pid
xenstored-log-file = {rundir}/xenstored.log
xenstored-log-level = debug
persistent = false
xenstored-kva = /proc/xen/xsd_kva
xenstored-port = /proc/xen/xsd_port
"""


class XenstoredUnderStub:
    """A real xenstored (kind "xenstored") or oxenstored (kind "oxenstored") under hvstub.

    Files, all inside `workdir`: `domains.shm` (unless `shm_path` is given), `virq.sock`
    (the server's event channel), `run/socket` (the xenstore socket), `run/` also holds
    oxenstored's pid file, log and exit dump, and `stderr.log` the server's output.
    """

    def __init__(
        self,
        kind: str,
        libs: StubLibs,
        workdir: Path,
        domains: Iterable[DomainRecord] | None = None,
        shm_path: Path | None = None,
    ) -> None:
        if kind not in ("xenstored", "oxenstored"):
            raise ValueError(kind)
        self.kind = kind
        self.libs = libs
        self.workdir = Path(workdir)
        self.rundir = self.workdir / "run"
        self.socket_path = self.rundir / "socket"
        self.virq_path = self.workdir / "virq.sock"
        self.stderr_path = self.workdir / "stderr.log"
        self.table: ShmTable | None = None
        if shm_path is None:
            self.table = ShmTable(self.workdir / "domains.shm")
            self.table.set_domains(domains if domains is not None else [dom0()])
            self.shm_path = self.table.path
        else:
            self.shm_path = Path(shm_path)
        self.proc: subprocess.Popen | None = None
        self._conn: XsConnection | None = None

    @property
    def binary(self) -> Path:
        return XENSTORED if self.kind == "xenstored" else OXENSTORED

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LD_PRELOAD": str(self.libs.hvstub),
            "XENMUX_STUB_SHM": str(self.shm_path),
            "XENMUX_STUB_VIRQ_SOCKET": str(self.virq_path),
            "XENMUX_STUB_XSD_PORT": "1",
        }
        if self.kind == "xenstored":
            env["XENSTORED_RUNDIR"] = str(self.rundir)
        else:
            env["XENMUX_STUB_REDIRECT"] = f"/var/run/xenstored={self.rundir}"
        if os.environ.get("XENMUX_STUB_DEBUG"):
            env["XENMUX_STUB_DEBUG"] = "1"
        return env

    def argv(self) -> list[str]:
        if self.kind == "xenstored":
            # -N foreground, -T trace of every request (cheap; read it when a test fails)
            return [str(XENSTORED), "-N", "-T", str(self.workdir / "trace.log")]
        conf = self.workdir / "oxenstored.conf"
        conf.write_text(OXENSTORED_CONF.format(rundir=self.rundir))
        return [str(OXENSTORED), "--no-fork", "--no-access-log", "--config-file", str(conf)]

    def start(self) -> None:
        if not self.binary.exists():
            pytest.fail(f"{self.binary} is missing: install xen-utils-4.17 (make test does)")
        self.rundir.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv(),
                env=self.env(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                # One round trip: only the main loop answers, and it runs after the
                # event channel (and with it the VIRQ socket) is set up.
                with XsConnection(self.socket_path, timeout=1.0) as c:
                    c.sync()
                break
            except (FileNotFoundError, ConnectionRefusedError, TimeoutError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"{self.kind} did not answer in time:\n{self.log()}"
                    ) from None
                time.sleep(0.02)
        if not self.virq_path.exists():
            raise RuntimeError(f"{self.kind} did not open its event channel:\n{self.log()}")

    def log(self) -> str:
        parts = []
        for p in (self.stderr_path, self.rundir / "xenstored.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {p.name}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM by PID, SIGKILL after a grace period; returns the exit status."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=3)
        return self.proc.returncode

    # -- talking to it as a toolstack does
    def connect(self) -> XsConnection:
        return XsConnection(self.socket_path)

    @property
    def control(self) -> XsConnection:
        """A connection kept for the toolstack's own requests (introduce, resume...)."""
        if self._conn is None:
            self._conn = self.connect()
        return self._conn

    def introduce(
        self, domid: int, name: str | None = None, port: int | None = None, mfn: int | None = None
    ) -> None:
        """What libxl does for a new domain: its nodes (owned by it), then XS_INTRODUCE."""
        c = self.control
        base = f"/local/domain/{domid}"
        tx = c.transaction_start()
        c.mkdir(base, tx)
        c.set_perms(base, f"n{domid}", "r0", tx=tx)
        c.write(f"{base}/name", name or f"guest{domid}", tx)
        c.write(f"{base}/domid", str(domid), tx)
        c.transaction_end(tx)
        c.introduce(
            domid, mfn if mfn is not None else 0x10000 + domid, port if port is not None else 2
        )

    def raise_virq(self) -> None:
        if self.table is not None:
            self.table.count_virq()
        send_virq(self.virq_path)

    def shutdown_domain(self, domid: int, reason: int) -> None:
        assert self.table is not None
        self.table.shutdown(domid, reason)
        self.raise_virq()

    def kill_domain(self, domid: int) -> None:
        """The domain reaches DOMDYING_dead (flag `dying`), as on `xl destroy`."""
        assert self.table is not None
        self.table.dying(domid)
        self.raise_virq()

    def close(self) -> None:
        self.stop()
        if self.table is not None:
            self.table.close()


@contextlib.contextmanager
def private_dir() -> Iterator[Path]:
    """A temporary directory under /tmp (short: socket paths max 107 bytes), removed after."""
    d = Path(tempfile.mkdtemp(prefix="xenmux-realxen-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def running(
    kind: str,
    libs: StubLibs,
    domains: Iterable[DomainRecord] | None = None,
    introduce: Iterable[int] = (),
) -> Iterator[XenstoredUnderStub]:
    """Start a real server under the stub in a private directory; stop it and remove all."""
    with private_dir() as d:
        xsd = XenstoredUnderStub(kind, libs, d, domains)
        try:
            xsd.start()
            for domid in introduce:
                xsd.introduce(domid)
            yield xsd
        finally:
            xsd.close()


# ---------------------------------------------------------------------------------------------
# pytest fixtures

# dom0 plus guests 1..4; 1..3 are introduced, 4 never is.
DEFAULT_GUESTS = (1, 2, 3, 4)
DEFAULT_INTRODUCED = (1, 2, 3)


@pytest.fixture(scope="session")
def xenstub_libs() -> Iterator[StubLibs]:
    """hvstub.so and libxenctrl_stub.so, built once per session, removed at its end."""
    out = Path(tempfile.mkdtemp(prefix="xenmux-xenstub-", dir="/tmp"))
    try:
        yield build_stubs(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _server(kind: str, libs: StubLibs) -> Iterator[XenstoredUnderStub]:
    doms = [dom0(), *(guest(d) for d in DEFAULT_GUESTS)]
    with running(kind, libs, doms, DEFAULT_INTRODUCED) as xsd:
        yield xsd
        assert xsd.alive(), f"{kind} died during the test:\n{xsd.log()}"


@pytest.fixture
def c_xenstored(xenstub_libs) -> Iterator[XenstoredUnderStub]:
    """The real C xenstored 4.17: dom0 and guests 1-4 in its table, 1-3 introduced."""
    yield from _server("xenstored", xenstub_libs)


@pytest.fixture
def oxenstored(xenstub_libs) -> Iterator[XenstoredUnderStub]:
    """The real oxenstored 4.17: dom0 and guests 1-4 in its table, 1-3 introduced."""
    yield from _server("oxenstored", xenstub_libs)


@pytest.fixture(params=["xenstored", "oxenstored"])
def real_xenstored(request, xenstub_libs) -> Iterator[XenstoredUnderStub]:
    """Each real server in turn (same set-up as `c_xenstored`)."""
    yield from _server(request.param, xenstub_libs)
