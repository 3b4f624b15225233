"""Debian's real C xenstored as the host's xenstored, under the hypervisor stand-in.

The stand-in (mux.realxen, see docs/real-xen.md) is support code shipped with the package, so
this works from any installation that has Debian's C xenstored (xen-utils-4.17 installed, or
extracted by `make deb-peers`: mux.debpeers), libxen-dev and a C compiler; without them the
harness says why it measured the sim's xenstored alone.

The simulated host keeps its domain table and sends each VIRQ_DOM_EXC to the real xenstored's
event-channel socket (`xenmux sim --virq-socket`); the real xenstored reads the table through
the stand-in. The harness plays libxl's xenstore part towards it: it introduces every guest
(and each one it creates) and sends XS_RESUME after a resume. Both models then talk to the
real xenstored only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mux.realxen import RealXenError, StubLibs, XenstoredUnderStub, build_stubs
from mux.realxen.servers import locate_server


def factory(tmp_root: str) -> tuple[Callable[[str], RealXenstored] | None, str | None]:
    """(make(workdir) -> RealXenstored, None), or (None, why it cannot be measured)."""
    try:
        locate_server("xenstored")
    except RealXenError as exc:
        return None, str(exc)
    try:
        libs = build_stubs(Path(tmp_root) / "xenstub")
    except RealXenError as exc:
        return None, f"building the stand-in failed: {exc}"

    def make(workdir: str) -> RealXenstored:
        return RealXenstored(libs, workdir)

    return make, None


class RealXenstored:
    """One C xenstored under the stand-in, reading the simulated host's table."""

    def __init__(self, libs: StubLibs, workdir: str) -> None:
        self.dir = Path(workdir) / "cxs"
        self.dir.mkdir()
        # As a host runs it: without the trace of every message (-T), which would cost the
        # daemon a write per watch event. Its table is the sim's, known once that is up.
        self.xsd = XenstoredUnderStub(
            "xenstored", libs, self.dir, shm_path=Path("unset"), trace=False
        )
        self.virq_path = str(self.xsd.virq_path)
        self.socket_path = str(self.xsd.socket_path)
        self.pid: int | None = None

    def start(self, host) -> None:
        """After the sim is up (its table exists): start the daemon, introduce the guests."""
        self.xsd.shm_path = Path(host.shm_path)
        self.xsd.start()
        self.pid = self.xsd.pid
        for domid in host.guests():
            self.xsd.introduce(domid)

    def toolstack(self):
        from mux.bench.scenarios import Toolstack

        xsd = self.xsd

        class LibxlXenstore(Toolstack):
            def after_create(self, domid: int) -> None:
                xsd.introduce(domid)

            def after_resume(self, domid: int) -> None:
                xsd.control.resume(domid)

        return LibxlXenstore()

    def stop(self) -> None:
        try:
            self.xsd.stop()
        finally:
            self.pid = None
