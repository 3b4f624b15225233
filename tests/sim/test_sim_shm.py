"""The shared-memory table seen from other processes: equal to the host, never torn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from mux import records
from mux.sim.host import Hypervisor, SimHost
from mux.sim.shm import ShmReader, ShmTable

pytest_plugins = ("simhelpers",)  # the sim, sim422, sim_factory, procs fixtures


def test_table_of_a_running_sim_equals_its_domains(sim):
    sim.ctl.shutdown(2, "reboot")
    sim.ctl.suspend(3)
    sim.ctl.destroy(4, zombie=True)
    sim.ctl.destroy(5)
    sim.ctl.create(name="late")
    with ShmReader(sim.shm) as reader:
        snap = reader.snapshot()
    table = snap.domains()
    listed = sim.ctl.list()
    assert [r.domid for r in table] == [d["domid"] for d in listed]
    for rec, row in zip(table, listed, strict=True):
        assert rec.uuid == row["uuid"]
        assert rec.flags == row["flags"]
        assert rec.cpu_time == row["cpu_time"]
    by_id = {r.domid: r for r in table}
    assert by_id[2].shutdown and by_id[2].reason == records.SHUTDOWN_REBOOT
    assert by_id[3].reason == records.SHUTDOWN_SUSPEND
    assert by_id[4].dying
    assert 5 not in by_id
    assert by_id[0].reason == records.SHUTDOWN_NONE
    assert snap.virqs == 5  # shutdown, suspend, destroy 4 (dying), destroy 5 (dying, gone)
    assert 0 < snap.stamp <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)


READER = r"""
import json, sys, time
from mux.sim.shm import ShmReader
path, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
snaps = bad = 0
states = set()
problems = []
with ShmReader(path) as reader:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        snap = reader.snapshot()
        doms = snap.domains()
        snaps += 1
        ids = [d.domid for d in doms]
        guests = doms[1:]
        ok = (
            ids == sorted(set(ids))
            and ids[:1] == [0]
            and len(guests) in (0, n)
            and len({(g.flags, g.cpu_time > 0) for g in guests}) <= 1
        )
        if not ok:
            bad += 1
            if len(problems) < 3:
                problems.append([len(guests), sorted({g.flags for g in guests})[:4]])
        elif guests:
            states.add(guests[0].flags)
print(json.dumps({"snapshots": snaps, "bad": bad, "states": len(states), "problems": problems}))
"""


def test_readers_never_see_a_half_applied_batch(tmp_path):
    """Batches of 1000 domains change in one seqlock section each; a reader in another
    process, copying under the seqlock, must only ever see whole states."""
    n = 1000
    table = ShmTable(str(tmp_path / "domains.shm"))

    class NoToolstack:  # only the table matters here
        def write_domain(self, dom): ...
        def introduce(self, domid): ...
        def resume(self, domid): ...
        def release(self, domid): ...
        def remove_domain(self, domid, uuid): ...

    hv = Hypervisor(table)
    host = SimHost(hv, NoToolstack())
    env = dict(os.environ, PYTHONPATH=str(os.getcwd()))
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, table.path, str(n), "2.0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        reasons = [0, 1, 2, 3, 4, 5]
        deadline = time.monotonic() + 2.5
        rounds = 0
        while reader.poll() is None and time.monotonic() < deadline:
            host.create(count=n)
            host.shutdown("all", reasons[rounds % len(reasons)])
            host.destroy("all")
            rounds += 1
        out, _ = reader.communicate(timeout=30)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait(timeout=10)
        table.close()
    result = json.loads(out)
    assert rounds > 5
    assert result["snapshots"] > 50
    assert result["bad"] == 0, result["problems"]
    assert result["states"] >= 2  # it did see the table change under it
