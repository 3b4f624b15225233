"""Debian's real xenstoreds as the host's xenstored, under the hypervisor stand-in.

Two of them: the C xenstored (`c-xenstored`) and oxenstored (`oxenstored`, what XenServer and
XCP-ng run). The stand-in (mux.realxen, see docs/real-xen.md) is support code shipped with the
package, so this works from any installation that has Debian's xenstoreds (xen-utils-4.17
installed, or extracted by `make deb-peers`: mux.debpeers), libxen-dev and a C compiler;
without them the harness says why it measured the sim's xenstored alone.

The simulated host keeps its domain table and sends each VIRQ_DOM_EXC to the real xenstored's
event-channel socket (`xenmux sim --virq-socket`); the real xenstored reads the table through
the stand-in. The harness plays libxl's xenstore part towards it: it introduces every guest
(and each one it creates), sends XS_RESUME after a resume and removes a guest's home before
it destroys the guest, as libxl's destroy does. Both models then talk to the real xenstored
only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mux.realxen import RealXenError, StubLibs, XenstoredUnderStub
from mux.realxen import build_stubs as _build_stubs
from mux.realxen.servers import locate_server

# The harness's name of each real xenstored -> mux.realxen's kind
KINDS = {"c-xenstored": "xenstored", "oxenstored": "oxenstored"}
TITLES = {"c-xenstored": "Debian's C xenstored", "oxenstored": "Debian's oxenstored"}


def stand_in(tmp_root: str) -> StubLibs:
    """The stand-in libraries, built once per run into `tmp_root` (RealXenError says why
    they cannot be)."""
    out = Path(tmp_root) / "xenstub"
    libs = StubLibs(out / "hvstub.so", out / "libxenctrl_stub.so")
    if libs.hvstub.exists() and libs.xenctrl.exists():
        return libs
    return _build_stubs(out)


def factory(
    xenstored: str, tmp_root: str
) -> tuple[Callable[[str], RealXenstored] | None, str | None]:
    """(make(workdir) -> RealXenstored, None), or (None, why it cannot be measured)."""
    kind = KINDS[xenstored]
    try:
        locate_server(kind)
    except RealXenError as exc:
        return None, str(exc)
    try:
        libs = stand_in(tmp_root)
    except RealXenError as exc:
        return None, f"building the stand-in failed: {exc}"

    def make(workdir: str) -> RealXenstored:
        return RealXenstored(kind, libs, workdir)

    return make, None


class RealXenstored:
    """One real xenstored under the stand-in, reading the simulated host's table.

    Every home is owned by its domain alone (`XenstoredUnderStub.write_home` says why: with a
    second entry for dom0, C xenstored walks its whole domain list per read), and the guests
    there at the start are introduced all at once, homes first."""

    def __init__(self, kind: str, libs: StubLibs, workdir: str) -> None:
        self.dir = Path(workdir) / "rxs"
        self.dir.mkdir()
        # As a host runs it: without the C xenstored's trace of every message (-T), which
        # would cost the daemon a write per watch event. Its table is the sim's, known once
        # that is up.
        self.xsd = XenstoredUnderStub(kind, libs, self.dir, shm_path=Path("unset"), trace=False)
        self.virq_path = str(self.xsd.virq_path)
        self.socket_path = str(self.xsd.socket_path)
        self.pid: int | None = None

    def start(self, host) -> None:
        """After the sim is up (its table exists): start the daemon, introduce the guests."""
        self.xsd.shm_path = Path(host.shm_path)
        self.xsd.start()
        self.pid = self.xsd.pid
        self.xsd.introduce_all(host.guests(), owner_only=True)

    def toolstack(self):
        from mux.bench.scenarios import Toolstack

        xsd = self.xsd

        class LibxlXenstore(Toolstack):
            def after_create(self, domid: int) -> None:
                xsd.introduce(domid, owner_only=True)

            def after_resume(self, domid: int) -> None:
                xsd.control.resume(domid)

            def before_destroy(self, domid: int) -> None:
                xsd.remove_home(domid)

        return LibxlXenstore()

    def stop(self) -> None:
        try:
            self.xsd.stop()
        finally:
            self.pid = None
