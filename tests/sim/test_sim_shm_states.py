"""The sim writer's lifecycle step in one C call (ShmTable.write_states): the records' flags
and CPU time, and the header, in one seqlock section that readers see whole."""

from __future__ import annotations

import struct

import pytest

from mux import records
from mux.sim.shm import ShmReader, ShmTable


def header(path: str) -> tuple:
    with open(path, "rb") as f:
        return struct.unpack_from("<8sIIIIQQQQ", f.read(128))


def test_a_step_changes_flags_and_cpu_time_in_one_section(tmp_path):
    path = str(tmp_path / "domains.shm")
    t = ShmTable(path, capacity=8)
    try:
        t.begin()
        for i, domid in enumerate((0, 3, 7)):
            t.insert(i, records.DomainRecord(domid=domid, flags=records.DOMINF_RUNNING))
        t.end()
        *_, seq, _, changes, _ = header(path)
        shut = records.DOMINF_SHUTDOWN | (records.SHUTDOWN_CRASH << records.DOMINF_SHUTDOWNSHIFT)
        stamp = t.write_states([(1, shut, 5_000), (2, records.DOMINF_DYING, 7_000)])
        *_, seq2, stamp2, changes2, _ = header(path)
        assert (seq2, stamp2, changes2) == (seq + 2, stamp, changes + 1) and stamp > 0
        with ShmReader(path) as r:
            doms = r.snapshot().domains()
        assert [(d.domid, d.flags, d.cpu_time) for d in doms] == [
            (0, records.DOMINF_RUNNING, 0),
            (3, shut, 5_000),
            (7, records.DOMINF_DYING, 7_000),
        ]
        assert doms[1].reason == records.SHUTDOWN_CRASH

        with pytest.raises(IndexError, match="record 3 is not in the table"):
            t.write_states([(0, 0, 0), (3, 0, 0)])
        assert header(path)[5:8] == (seq2, stamp2, changes2)  # nothing written
        with ShmReader(path) as r:
            assert r.snapshot().domains() == doms
    finally:
        t.close()
