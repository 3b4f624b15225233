"""The stand-in's table reader from several threads, and the toolstack's destroy step.

Each thread keeps its own mapping of the table (mux/realxen/xenstub/shmtable.c), so these
check that every thread reads what the table holds, follows its changes, and that a thread
that ends leaves the others their mapping; and that `remove_home` leaves a real xenstored
with no home for the domain, its death still reported.
"""

from __future__ import annotations

import ctypes
import shutil
import threading

import realxen

from mux import records
from mux.realxen import guest

xenstub_libs = realxen.xenstub_libs
real_xenstored = realxen.real_xenstored
stub_table = realxen.stub_table

RELEASE = ("@releaseDomain", "t")


class Xenctrl:
    """A private copy of libxenctrl_stub.so (fresh static state), called through ctypes,
    which lets go of the GIL during the call: the threads' calls overlap."""

    def __init__(self, libs, where) -> None:
        path = where / "libxenctrl_stub.so"
        shutil.copy(libs.xenctrl, path)
        self.lib = ctypes.CDLL(str(path), use_errno=True)
        self.lib.xc_interface_open.restype = ctypes.c_void_p
        self.lib.xc_interface_open.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
        self.lib.xc_domain_getinfolist.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_uint,
            ctypes.c_char_p,
        ]
        self.xch = self.lib.xc_interface_open(None, None, 0)
        assert self.xch

    def domains(self) -> list[records.DomainRecord]:
        buf = ctypes.create_string_buffer(records.RECORD_SIZE * 16)
        n = self.lib.xc_domain_getinfolist(self.xch, 0, 16, buf)
        assert n >= 0, f"errno {ctypes.get_errno()}"
        return records.unpack_all(buf.raw, n)


def test_threads_read_the_table_while_it_changes(xenstub_libs, stub_table):
    table = stub_table
    xc = Xenctrl(xenstub_libs, table.path.parent)
    assert [r.domid for r in xc.domains()] == [0, 1, 5, 6, 9]  # this thread maps it first
    seen: list[list[int]] = []
    shut: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                recs = xc.domains()
                seen.append([r.domid for r in recs])
                shut.append(sum(r.shutdown for r in recs))
        except BaseException as exc:  # the main thread reports it
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(200):
        if i % 2:
            table.resume(6)
        else:
            table.shutdown(6, records.SHUTDOWN_POWEROFF)
        table.count_virq()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not errors
    assert seen and all(ids == [0, 1, 5, 6, 9] for ids in seen)
    assert set(shut) <= {0, 1}
    # the threads ended (each unmapped its own mapping); this one's still follows the table
    table.put(guest(3))
    table.count_virq()
    assert [r.domid for r in xc.domains()] == [0, 1, 3, 5, 6, 9]


def test_remove_home_leaves_no_home_and_the_death_is_reported(real_xenstored):
    xsd = real_xenstored
    xs = xsd.connect()
    assert "1" in xs.directory("/local/domain")
    xs.watch("@releaseDomain", "t")
    assert xs.sync() == [RELEASE]
    xsd.remove_home(1)
    assert "1" not in xs.directory("/local/domain")
    xsd.kill_domain(1)
    assert xs.sync() == [RELEASE]
    assert not xs.is_introduced(1)
