"""Debian's real Xen 4.17 xenstored and oxenstored, run unchanged on a machine without Xen
under the LD_PRELOAD hypervisor stand-in (docs/real-xen.md).

The domain list comes from a shared-memory table laid out as the simulated host's
`DIR/domains.shm` (mux/sim/shm_layout.h), and VIRQ_DOM_EXC is one AF_UNIX datagram sent to
the server's event channel socket. Every process is stopped by its PID; `running()` keeps
everything in one private temporary directory that is removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from mux import debpeers
from mux.realxen.errors import RealXenError
from mux.realxen.stubs import StubLibs
from mux.realxen.table import ShmTable, dom0
from mux.realxen.xsconn import STEP_TIMEOUT, XsConnection
from mux.records import DomainRecord

# Debian's own (xen-utils-4.17 installed) or the one `make deb-peers` extracted
# (mux.debpeers); where the system would have them when they are nowhere.
XENSTORED = debpeers.where("xenstored")
OXENSTORED = debpeers.where("oxenstored")
XEN_BIN = XENSTORED.parent


def locate_server(kind: str) -> debpeers.Located:
    """The program of `kind` ("xenstored" or "oxenstored"); RealXenError says how to get it."""
    try:
        return debpeers.locate(kind)
    except debpeers.PeerMissing as exc:
        raise RealXenError(str(exc)) from None


def send_virq(path: Path | str) -> None:
    """Raise VIRQ_DOM_EXC at a server under hvstub: one datagram, as `xenmux sim` sends it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"V", str(path))


OXENSTORED_CONF = """\
# oxenstored configuration (mux/realxen/servers.py); the rest are built-in defaults.
pid-file = {rundir}/xenstored.pid
xenstored-log-file = {rundir}/xenstored.log
xenstored-log-level = {log_level}
persistent = false
xenstored-kva = /proc/xen/xsd_kva
xenstored-port = /proc/xen/xsd_port
"""


class XenstoredUnderStub:
    """A real xenstored (kind "xenstored") or oxenstored (kind "oxenstored") under hvstub.

    Files, all inside `workdir`: `domains.shm` (unless `shm_path` is given), `virq.sock`
    (the server's event channel), `run/socket` (the xenstore socket), `run/` also holds
    oxenstored's pid file, log and exit dump, and `stderr.log` the server's output.

    `trace=False` runs the C xenstored as a host does, without `-T`: that trace writes every
    domain's write-rate-limit state on every poll round, which makes each request cost
    milliseconds once a thousand domains are introduced (and a write per watch event). It
    also runs oxenstored at the log level of Debian's oxenstored.conf (`null`), not `debug`.
    """

    def __init__(
        self,
        kind: str,
        libs: StubLibs,
        workdir: Path,
        domains: Iterable[DomainRecord] | None = None,
        shm_path: Path | None = None,
        trace: bool = True,
    ) -> None:
        if kind not in ("xenstored", "oxenstored"):
            raise ValueError(kind)
        self.kind = kind
        self.trace = trace
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
        return debpeers.where(self.kind)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # A server from the cache finds its libraries there; hvstub needs none of them.
            **locate_server(self.kind).environ({}),
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
            # -N foreground, -T trace of every request (read it when a test fails)
            trace = ["-T", str(self.workdir / "trace.log")] if self.trace else []
            return [str(self.binary), "-N", *trace]
        conf = self.workdir / "oxenstored.conf"
        level = "debug" if self.trace else "null"
        conf.write_text(OXENSTORED_CONF.format(rundir=self.rundir, log_level=level))
        return [str(self.binary), "--no-fork", "--no-access-log", "--config-file", str(conf)]

    def start(self) -> None:
        locate_server(self.kind)
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

    def write_home(self, domid: int, name: str | None = None, owner_only: bool = False) -> None:
        """A new domain's nodes as libxl writes them, in one transaction.

        Its home is owned by the domain and readable by dom0, or with `owner_only` owned by
        the domain alone. Dom0's connections read every node anyway, and C xenstored 4.17
        resolves each entry after the owner by a walk of its domain list (dom0 is the list's
        last) on every read of the node; a commit reads each node it wrote once per
        connection, so with that entry a home costs O(connections x domains), 1 s of its CPU
        at 3,000 domains, and owned by the domain alone O(connections).
        """
        c = self.control
        base = f"/local/domain/{domid}"
        perms = (f"n{domid}",) if owner_only else (f"n{domid}", "r0")
        tx = c.transaction_start()
        c.mkdir(base, tx)
        c.set_perms(base, *perms, tx=tx)
        c.write(f"{base}/name", name or f"guest{domid}", tx)
        c.write(f"{base}/domid", str(domid), tx)
        c.transaction_end(tx)

    def remove_home(self, domid: int) -> None:
        """What libxl's destroy does in xenstore before it destroys the domain: its home goes.

        When a domain dies, C xenstored 4.17 looks for every node the domain still owns by
        walking the whole tree from `/` (it stops once the domain owns none): a home left
        behind cost it about 3 ms per death at 1,000 homes, a removed one nothing.
        """
        self.control.rm(f"/local/domain/{domid}")

    def introduce(
        self,
        domid: int,
        name: str | None = None,
        port: int | None = None,
        mfn: int | None = None,
        owner_only: bool = False,
    ) -> None:
        """What libxl does for a new domain: its nodes (owned by it), then XS_INTRODUCE."""
        self.write_home(domid, name, owner_only)
        self.control.introduce(
            domid, mfn if mfn is not None else 0x10000 + domid, port if port is not None else 2
        )

    def introduce_all(self, domids: Iterable[int], owner_only: bool = False) -> None:
        """Many domains at once, as a toolstack that finds them running: every home first,
        then an XS_INTRODUCE each. Every request costs C xenstored in proportion to the
        domains already introduced (a connection each), so 4,000 domains written each after
        the other's XS_INTRODUCE cost it minutes, and written first, seconds."""
        domids = list(domids)
        for domid in domids:
            self.write_home(domid, owner_only=owner_only)
        for domid in domids:
            self.control.introduce(domid, 0x10000 + domid, 2)

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
