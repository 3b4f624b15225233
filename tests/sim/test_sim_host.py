"""The simulated hypervisor in process: the table layout, domids, lifecycle flags, batches,
and pauses (a count of pauses held, as Xen keeps it; domains built paused as Xen builds them;
the churn's boots unpaused by the toolstack a step after their introduction)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import pytest

from mux import _fast, records
from mux.sim import shm as shmmod
from mux.sim.backend import SimBackend
from mux.sim.churn import Churn
from mux.sim.host import Hypervisor, SimError, SimHost
from mux.sim.paths import sim_paths
from mux.sim.shm import ShmReader, ShmTable
from mux.sim.toolstack import LocalToolstack
from mux.sim.xenstored import Xenstored


class Host:
    def __init__(self, directory, **kwargs) -> None:
        self.path = sim_paths(directory).shm
        self.shm = ShmTable(self.path)
        self.hv = Hypervisor(self.shm, **kwargs)
        self.xs = Xenstored(self.hv)
        self.hv.on_virq(self.xs.check_domains)
        self.host = SimHost(self.hv, LocalToolstack(self.xs))

    def table(self) -> list[records.DomainRecord]:
        with ShmReader(self.path) as reader:
            return reader.snapshot().domains()

    def record_of(self, domid: int) -> records.DomainRecord:
        [rec] = [r for r in self.table() if r.domid == domid]
        return rec

    def header(self) -> tuple:
        with open(self.path, "rb") as f:
            raw = f.read(128)
        return struct.unpack_from("<8sIIIIQQQQ", raw)


@pytest.fixture
def h(tmp_path):
    host = Host(str(tmp_path))
    yield host
    host.shm.close()


def test_header_layout_and_dom0(h):
    magic, version, rsize, capacity, count, seq, stamp, changes, virqs = h.header()
    assert magic == b"XMUXSHM1" and version == 1 and rsize == records.RECORD_SIZE == 112
    assert capacity >= 32768 + 1
    assert os.path.getsize(h.path) == 128 + capacity * 112
    assert count == 1 and seq % 2 == 0 and seq > 0
    assert 0 < stamp <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert changes == 1 and virqs == 0
    with open(h.path, "rb") as f:
        head = f.read(128)
    assert head[56:64] == bytes(8)  # a 4.17 host: no unique ids
    assert head[64:68] == (4 << 16 | 17).to_bytes(4, "little")  # the Xen release modelled
    assert head[68:] == bytes(60)  # reserved
    [dom0] = h.table()
    assert dom0.domid == 0 and not dom0.shutdown and not dom0.dying
    assert dom0.reason == records.SHUTDOWN_NONE
    assert dom0.flags & records.DOMINF_RUNNING
    assert h.xs.local_read("/local/domain/0/name") is None  # written by the runtime, not here


def test_seqlock_is_odd_while_writing(h):
    h.shm.begin()
    try:
        assert h.header()[5] % 2 == 1
        with ShmReader(h.path) as reader, pytest.raises(TimeoutError):
            reader.snapshot(timeout=0.05)
    finally:
        h.shm.end()
    assert h.header()[5] % 2 == 0


def test_records_sorted_and_equal_to_the_host(h):
    h.host.create(count=50)
    h.host.create(domid=3000, name="forced")
    h.host.destroy(7)
    h.host.shutdown(9, records.SHUTDOWN_CRASH)
    h.host.create()  # the rover: 51, not the freed 7
    table = h.table()
    assert [r.domid for r in table] == sorted(h.hv.domains)
    for rec in table:
        dom = h.hv.domains[rec.domid]
        assert rec == dom.record()
    assert [r.domid for r in table][-2:] == [51, 3000]
    assert 7 not in {r.domid for r in table}
    assert [r.reason for r in table if r.domid == 9] == [records.SHUTDOWN_CRASH]


def test_batches_are_one_change_each(h):
    def counters():
        _m, _v, _r, _c, count, seq, _stamp, changes, virqs = h.header()
        return count, seq, changes, virqs

    count, seq, changes, virqs = counters()
    h.host.create(count=1000)
    assert counters() == (count + 1000, seq + 2, changes + 1, virqs)
    h.host.shutdown("all", records.SHUTDOWN_POWEROFF)
    assert counters()[1:] == (seq + 4, changes + 2, virqs + 1)
    assert all(r.shutdown for r in h.table()[1:])
    h.host.destroy("all")  # dying (one change, VIRQ), then gone (one change, VIRQ)
    assert counters() == (1, seq + 8, changes + 4, virqs + 3)


def test_domid_allocation_is_xens_rover(h):
    doms = h.host.create(count=3)
    assert [d.domid for d in doms] == [1, 2, 3]
    h.host.destroy(2)
    assert h.host.create()[0].domid == 4  # moves forward: 2 is not reused yet
    h.hv.rover = records.DOMID_FIRST_RESERVED - 2
    assert h.host.create()[0].domid == records.DOMID_FIRST_RESERVED - 1
    assert h.host.create()[0].domid == 2  # wrapped below 0x7FF0: 1 is taken, 2 is free
    assert h.host.create(domid=100)[0].domid == 100
    assert h.hv.rover == 2  # a forced domid does not move the rover
    for bad in (0, records.DOMID_FIRST_RESERVED, 100):
        with pytest.raises(SimError):
            h.host.create(domid=bad)


def test_lifecycle_flags_resume_and_cpu_time(h):
    [dom] = h.host.create(name="vm", uuid="12345678-1234-5678-1234-567812345678")
    first_cpu = dom.cpu_time
    assert 0 < first_cpu < 10_000_000
    assert dom.uuid == "12345678-1234-5678-1234-567812345678"
    virqs = h.hv.virqs
    h.host.suspend(dom.domid)
    rec = h.table()[1]
    assert rec.shutdown and rec.reason == records.SHUTDOWN_SUSPEND
    assert h.hv.virqs == virqs + 1
    assert h.xs.domains[dom.domid].shutdown  # latched
    h.host.resume(dom.domid)
    rec = h.table()[1]
    assert not rec.shutdown and rec.reason == records.SHUTDOWN_NONE  # as domain_resume
    assert h.hv.virqs == virqs + 1  # resume raises no VIRQ
    assert not h.xs.domains[dom.domid].shutdown  # XS_RESUME cleared the latch
    with pytest.raises(SimError, match="not shut down"):
        h.host.resume(dom.domid)
    h.host.suspend(dom.domid, silent=True)
    assert h.hv.virqs == virqs + 1
    with pytest.raises(SimError, match="already shut down"):
        h.host.shutdown(dom.domid, records.SHUTDOWN_REBOOT)
    grown = h.hv.domains[dom.domid].cpu_time
    assert grown > first_cpu + 10_000_000
    h.host.destroy(dom.domid)
    # a new incarnation at the same domid with the same UUID starts with little cpu_time
    [again] = h.host.create(domid=dom.domid, uuid=dom.uuid, name="vm")
    assert again.cpu_time < grown
    with pytest.raises(SimError, match="no domain 999"):
        h.host.shutdown(999, 0)
    with pytest.raises(SimError):
        h.host.destroy(0)


def test_zombie_stays_dying_until_destroyed_again(h):
    [dom] = h.host.create()
    h.host.destroy(dom.domid, zombie=True)
    [rec] = [r for r in h.table() if r.domid == dom.domid]
    assert rec.dying
    assert dom.domid not in h.xs.domains  # xenstored dropped it (and fired)
    assert h.xs.local_read(f"/local/domain/{dom.domid}/name") is not None
    with pytest.raises(SimError, match="dying"):
        h.host.shutdown(dom.domid, 0)
    h.host.destroy(dom.domid)
    assert dom.domid not in {r.domid for r in h.table()}
    assert h.xs.local_read(f"/local/domain/{dom.domid}/name") is None


def test_virq_sockets_get_one_datagram_per_virq(tmp_path):
    sink_path = str(tmp_path / "virq.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(sink_path)
    sink.settimeout(2)
    host = Host(str(tmp_path), virq_sockets=[str(tmp_path / "absent.sock"), sink_path])
    try:
        [dom] = host.host.create()
        host.host.shutdown(dom.domid, 0)
        assert sink.recv(16) == b"V"
        host.host.destroy(dom.domid)  # two VIRQs
        assert sink.recv(16) == b"V"
        assert sink.recv(16) == b"V"
        sink.settimeout(0.1)
        with pytest.raises(TimeoutError):
            sink.recv(16)  # create and resume raise none
    finally:
        host.shm.close()
        sink.close()


def test_boot_storm_and_mass_destroy_of_32000_domains(h):
    # What it costs is the bench's to say (the host model at 32,000), not a timed assertion.
    h.host.create(count=32000)
    h.host.shutdown("all", records.SHUTDOWN_POWEROFF)
    h.host.destroy("all")
    assert h.header()[4] == 1


def test_table_full(tmp_path):
    table = ShmTable(str(tmp_path / "small.shm"), capacity=3)
    try:
        hv = Hypervisor(table)
        xs = Xenstored(hv)
        host = SimHost(hv, LocalToolstack(xs))
        host.create(count=2)
        with pytest.raises(SimError, match="full"):
            host.create()
        assert shmmod.read_table(table.path).count == 3
    finally:
        table.close()


def test_sim_backend_scan_reads_a_host_that_outgrew_its_buffer(sim_factory):
    """The sim backend's scan buffer is sized at start-up; a host that grew past it (boot
    storm) must still be read whole, in one consistent copy."""
    from mux.records import unpack_all
    from mux.sim.backend import SimBackend

    host = sim_factory(domains=10)
    backend = SimBackend(str(host.dir))
    try:
        host.ctl.create(count=2000)  # far past the 10 + slack records it was sized for
        buf, n = backend.scan_all()
        ids = [r.domid for r in unpack_all(buf, n)]
        assert n == 2011 and ids == sorted(set(ids)) and ids[0] == 0
    finally:
        backend.close()


# -- pause / unpause ------------------------------------------------------------------------


def test_created_paused_stays_paused_until_unpaused(h):
    virqs, introduced = h.hv.virqs, h.xs.counters.as_dict()["introduce_firings"]
    [dom] = h.host.create(paused=True, name="p")
    assert h.record_of(dom.domid).flags & records.DOMINF_PAUSED
    assert dom.as_dict()["paused"] is True and dom.as_dict()["state"] == "running"
    # Introduced while paused, as libxl does: @introduceDomain fired, no VIRQ.
    assert h.xs.counters.as_dict()["introduce_firings"] == introduced + 1
    h.host.unpause(dom.domid)
    assert not h.record_of(dom.domid).flags & records.DOMINF_PAUSED
    assert dom.as_dict()["paused"] is False
    assert h.hv.virqs == virqs  # neither creating nor unpausing raises one
    with pytest.raises(SimError, match=f"domain {dom.domid} is not paused"):
        h.host.unpause(dom.domid)
    # A plain create is never seen paused.
    [plain] = h.host.create()
    assert not h.record_of(plain.domid).flags & records.DOMINF_PAUSED


def test_pauses_are_counted_as_xen_counts_them(h):
    [dom] = h.host.create()
    h.host.pause(dom.domid)
    h.host.pause(dom.domid)
    h.host.unpause(dom.domid)
    assert h.record_of(dom.domid).flags & records.DOMINF_PAUSED  # one pause still held
    h.host.unpause(dom.domid)
    assert not h.record_of(dom.domid).flags & records.DOMINF_PAUSED
    # Shut down domains may be paused; dom0 and dying ones may not.
    h.host.shutdown(dom.domid, records.SHUTDOWN_SUSPEND)
    h.host.pause(dom.domid)
    rec = h.record_of(dom.domid)
    assert rec.flags & records.DOMINF_PAUSED and rec.shutdown
    with pytest.raises(SimError, match="domain 0 cannot do that"):
        h.host.pause(0)
    h.host.destroy(dom.domid, zombie=True)
    with pytest.raises(SimError, match="is dying"):
        h.host.unpause(dom.domid)
    with pytest.raises(SimError, match="no domain 77"):
        h.host.pause(77)


def test_the_scanner_reads_pauses_through_the_sim_backend(h, tmp_path):
    backend = SimBackend(str(tmp_path))
    table = _fast.DomainTable()
    try:

        def scan():
            return [(e.kind, e.domid, e.paused) for e in table.diff(*backend.scan_all())]

        table.prime(*backend.scan_all())
        [dom] = h.host.create(paused=True)
        assert scan() == [("new", dom.domid, True)]
        h.host.unpause(dom.domid)
        assert scan() == [("unpaused", dom.domid, False)]
        h.host.pause(dom.domid)
        assert scan() == [("paused", dom.domid, False)]
        assert table.snapshot([dom.domid])[0]["paused"] is True
        h.host.destroy(dom.domid, zombie=True)
        assert scan() == [("death", dom.domid, False)]
        assert table.snapshot([dom.domid])[0]["paused"] is False and table.n_paused == 0
    finally:
        backend.close()


def test_churn_boots_paused_and_unpauses_a_step_later(h):
    unpaused: list[tuple[int, bool]] = []
    unpause = h.host.unpause

    def watched(domid):
        unpaused.append((domid, bool(h.record_of(domid).flags & records.DOMINF_PAUSED)))
        return unpause(domid)

    h.host.unpause = watched
    h.host.create(count=20)
    churn = Churn(h.host, set(), seed=3, step_delay=0.002)
    result = asyncio.run(churn.run(0.5, 80))
    assert result["ops"]["create"] > 0 and result["errors"] == 0
    assert result["ops"]["unpause"] == result["ops"]["create"]
    assert len(unpaused) == result["ops"]["unpause"]
    assert all(was_paused for _domid, was_paused in unpaused)
    assert not any(d.paused for d in h.host.guests())
