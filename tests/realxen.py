"""pytest fixtures over mux.realxen: Debian's real Xen 4.17 xenstored and oxenstored under the
hypervisor stand-in (docs/real-xen.md). The machinery is the package's support side; this
module only turns what the machine lacks into a failing test, and holds the fixtures.

Use from a test module (assigning the fixtures registers them for that module):

    import realxen
    c_xenstored = realxen.c_xenstored

    def test_x(c_xenstored):
        xs = c_xenstored.connect()
        xs.watch("@releaseDomain", "t")
        assert xs.sync() == [("@releaseDomain", "t")]        # the initial event
        c_xenstored.shutdown_domain(1, records.SHUTDOWN_POWEROFF)   # table + VIRQ
        assert xs.sync() == [("@releaseDomain", "t")]

The machinery itself (servers, table, client) is imported from mux.realxen.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mux import realxen as _realxen
from mux.realxen import (
    RealXenError,
    ShmTable,
    StubLibs,
    XenstoredUnderStub,
    dom0,
    guest,
    private_dir,
    running,
)

__all__ = [
    "DEFAULT_GUESTS",
    "DEFAULT_INTRODUCED",
    "build_stubs",
    "c_xenstored",
    "oxenstored",
    "real_xenstored",
    "stub_table",
    "xenstub_libs",
]


def build_stubs(out: Path) -> StubLibs:
    """mux.realxen.build_stubs, failing the test with what the machine lacks."""
    try:
        return _realxen.build_stubs(out)
    except RealXenError as exc:
        pytest.fail(str(exc))


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
    with contextlib.ExitStack() as stack:
        try:
            xsd = stack.enter_context(running(kind, libs, doms, DEFAULT_INTRODUCED))
        except RealXenError as exc:
            pytest.fail(str(exc))
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


@pytest.fixture
def stub_table(monkeypatch) -> Iterator[ShmTable]:
    """A table of dom0 and guests 1, 5, 6 and 9 in a private directory, named by
    $XENMUX_STUB_SHM for the stand-ins loaded into the test's own process (no failure
    injection); its directory is `stub_table.path.parent`."""
    with private_dir() as d:
        t = ShmTable(d / "domains.shm")
        t.set_domains([dom0(), guest(1), guest(5), guest(6), guest(9)])
        monkeypatch.setenv("XENMUX_STUB_SHM", str(t.path))
        monkeypatch.delenv("XENMUX_STUB_FAIL", raising=False)
        monkeypatch.delenv("XENMUX_STUB_FAIL_FILE", raising=False)
        try:
            yield t
        finally:
            t.close()
