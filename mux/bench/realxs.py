"""Debian's real C xenstored as the host's xenstored, under the test stand-in hypervisor.

The stand-in (`tests/xenstub/hvstub.so`, driven by `tests/realxen.py`, see docs/real-xen.md)
lives in the source tree, not in the installed package, so this works from a checkout only:
anywhere else the harness says why it measured the sim's xenstored alone.

The simulated host keeps its domain table and sends each VIRQ_DOM_EXC to the real xenstored's
event-channel socket (`xenmux sim --virq-socket`); the real xenstored reads the table through
the stand-in. The harness plays libxl's xenstore part towards it: it introduces every guest
(and each one it creates) and sends XS_RESUME after a resume. Both models then talk to the
real xenstored only.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import mux

XENSTORED = Path("/usr/lib/xen-4.17/bin/xenstored")


def _tests_dir() -> Path | None:
    candidates = [Path(mux.__file__).resolve().parent.parent / "tests", Path.cwd() / "tests"]
    for d in candidates:
        if (d / "realxen.py").exists() and (d / "xenstub" / "Makefile").exists():
            return d
    return None


def factory(tmp_root: str):
    """(make(workdir) -> RealXenstored, None), or (None, why it cannot be measured)."""
    if not XENSTORED.exists():
        return None, f"{XENSTORED} is missing (Debian: apt-get install xen-utils-4.17)"
    tests = _tests_dir()
    if tests is None:
        return None, (
            "the stand-in fixture tests/realxen.py is not here: it lives in the source tree "
            "(run from a checkout)"
        )
    sys.path.insert(0, str(tests))
    try:
        realxen = importlib.import_module("realxen")
    except ImportError as exc:
        return None, f"tests/realxen.py cannot be imported ({exc}); pip install pytest"
    finally:
        sys.path.remove(str(tests))
    try:
        libs = realxen.build_stubs(Path(tmp_root) / "xenstub")
    except BaseException as exc:  # pytest.fail raises an outcome, not an Exception
        if isinstance(exc, KeyboardInterrupt):
            raise
        return None, f"building the stand-in failed: {exc}"

    def make(workdir: str) -> RealXenstored:
        return RealXenstored(realxen, libs, workdir)

    return make, None


class RealXenstored:
    """One C xenstored under the stand-in, reading the simulated host's table."""

    def __init__(self, realxen, libs, workdir: str) -> None:
        self.realxen = realxen
        self.dir = Path(workdir) / "cxs"
        self.dir.mkdir()
        self.xsd = _Untraced(realxen)("xenstored", libs, self.dir, shm_path=Path("unset"))
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


def _untraced_argv(self) -> list[str]:
    # As a host runs it: in the foreground (-N), without the fixture's trace of every
    # message (-T), which would cost the daemon a write per watch event.
    return [str(XENSTORED), "-N"]


def _Untraced(realxen):
    cls = realxen.XenstoredUnderStub
    return type("UntracedXenstored", (cls,), {"argv": _untraced_argv})
