"""The real Xen 4.17 xenstored and oxenstored on a machine without Xen (docs/real-xen.md).

Support code, not product: the hypervisor stand-ins (C sources in `xenstub/`, shipped with
the package and built on demand), a hand-written domain table, a small exact xenstore client,
and Debian's daemons run under the stand-in. The tests' fixtures (tests/realxen.py) and the
bench's C xenstored runs (`xenmux bench`, mux/bench/realxs.py) are both built on it; the
product side never imports it.

    libs = build_stubs(Path(tmp) / "xenstub")
    with running("xenstored", libs, [dom0(), guest(1)], introduce=[1]) as xsd:
        xs = xsd.connect()
        xs.watch("@releaseDomain", "t")
        assert xs.sync() == [("@releaseDomain", "t")]        # the initial event
        xsd.shutdown_domain(1, records.SHUTDOWN_POWEROFF)     # table + VIRQ
        assert xs.sync() == [("@releaseDomain", "t")]

A server can also read the simulated host's own table: `XenstoredUnderStub(...,
shm_path=DIR/domains.shm)`, with `xenmux sim --virq-socket` pointed at its `virq_path`.
"""

from mux.realxen.errors import RealXenError
from mux.realxen.servers import (
    OXENSTORED,
    OXENSTORED_CONF,
    XEN_BIN,
    XENSTORED,
    XenstoredUnderStub,
    private_dir,
    running,
    send_virq,
)
from mux.realxen.stubs import StubLibs, build_stubs
from mux.realxen.table import ShmTable, dom0, guest
from mux.realxen.xsconn import STEP_TIMEOUT, Raw, XsConnection

__all__ = [
    "OXENSTORED",
    "OXENSTORED_CONF",
    "STEP_TIMEOUT",
    "XENSTORED",
    "XEN_BIN",
    "Raw",
    "RealXenError",
    "ShmTable",
    "StubLibs",
    "XenstoredUnderStub",
    "XsConnection",
    "build_stubs",
    "dom0",
    "guest",
    "private_dir",
    "running",
    "send_virq",
]
