"""The simulated host's ground-truth log, and the churn lifecycles a chaos run adds."""

from __future__ import annotations

import asyncio
import json
import struct
import time

import pytest

from mux import records
from mux.sim.churn import Churn, parse_domids, parse_kinds
from mux.sim.host import Hypervisor, SimError, SimHost, TruthLog
from mux.sim.paths import sim_paths
from mux.sim.shm import ShmTable
from mux.sim.toolstack import LocalToolstack
from mux.sim.xenstored import Xenstored

pytest_plugins = ("simhelpers",)


def read_truth(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def change_stamp(shm_path) -> int:
    with open(shm_path, "rb") as f:
        return struct.unpack_from("<Q", f.read(40), 32)[0]


@pytest.fixture
def host(tmp_path):
    paths = sim_paths(tmp_path)
    shm = ShmTable(paths.shm)
    truth = TruthLog(paths.truth)
    hv = Hypervisor(shm, truth=truth)
    xs = Xenstored(hv)
    hv.on_virq(xs.check_domains)
    yield SimHost(hv, LocalToolstack(xs)), paths
    truth.close()
    shm.close()


def test_every_step_the_hypervisor_applied_and_nothing_it_refused(host):
    h, paths = host
    [a, b] = h.create(count=2)
    h.shutdown(a.domid, records.SHUTDOWN_REBOOT)
    stamp = change_stamp(paths.shm)
    with pytest.raises(SimError, match="already shut down"):
        h.shutdown(a.domid, records.SHUTDOWN_CRASH)  # refused: logs nothing
    with pytest.raises(SimError, match="not shut down"):
        h.resume(b.domid)
    h.suspend(b.domid, silent=True)
    h.resume(b.domid)
    h.destroy(a.domid)
    h.destroy(b.domid, zombie=True)
    h.destroy(b.domid)
    [again] = h.create(domid=a.domid, uuid=a.uuid)
    log = read_truth(paths.truth)
    steps = [(e["step"], e["domid"], e["inc"], e.get("reason")) for e in log]
    assert steps == [
        ("create", 0, 0, None),
        ("create", a.domid, 1, None),
        ("create", b.domid, 2, None),
        ("shutdown", a.domid, 1, "reboot"),
        ("shutdown", b.domid, 2, "suspend"),
        ("resume", b.domid, 2, None),
        ("dying", a.domid, 1, None),
        ("gone", a.domid, 1, None),
        ("dying", b.domid, 2, None),
        ("gone", b.domid, 2, None),
        ("create", a.domid, 3, None),  # the same domid and UUID: another incarnation
    ]
    assert again.incarnation == 3 and log[-1]["uuid"] == a.uuid == log[1]["uuid"]
    assert log[1]["name"] == a.name and log[0]["name"] == "Domain-0"
    monos = [e["mono"] for e in log]
    assert monos == sorted(monos)
    # A step is stamped just before its table change: no reader sees it earlier.
    assert log[2]["mono"] < log[3]["mono"] <= stamp
    assert abs(log[-1]["wall"] - time.time()) < 60
    assert log[-1]["mono"] <= change_stamp(paths.shm) <= time.monotonic_ns()


def test_churn_kinds_and_domid_ranges_are_checked():
    assert parse_kinds(None) == ("boot", "reboot", "poweroff", "crash", "migrate", "destroy")
    assert "zombie" in parse_kinds("all") and parse_kinds("reuse,boot") == ("reuse", "boot")
    with pytest.raises(SimError, match="unknown churn kind 'nap'"):
        parse_kinds("boot,nap")
    assert parse_domids("1-1000") == (1, 1000) and parse_domids([3, 3]) == (3, 3)
    for bad in ("0-10", "10-5", "x", "1-40000"):
        with pytest.raises(SimError, match="domid range"):
            parse_domids(bad)


def test_chaos_lifecycles_are_in_the_truth(host):
    """Zombies, domid reuse, migrations that succeed and fail, all inside one domid range."""
    h, paths = host
    h.create(count=40)
    churn = Churn(
        h,
        set(),
        seed=3,
        step_delay=0.001,
        kinds="all",
        domids="1-40",
        hold=0.02,
    )
    result = asyncio.run(churn.run(2.0, 150))
    assert {"zombie", "reuse", "migrate-away", "migrate-failed"} <= set(result["lifecycles"])
    log = read_truth(paths.truth)
    by_inc: dict[int, list[dict]] = {}
    for e in log:
        by_inc.setdefault(e["inc"], []).append(e)
    in_range = [e["domid"] for e in log if e["step"] == "create" and e["domid"]]
    assert sum(1 for d in in_range if d <= 40) > 0.7 * len(in_range)  # boots use the range
    zombies = reuse_same_uuid = failed_migrations = 0
    for inc, steps in by_inc.items():
        kinds = [e["step"] for e in steps]
        assert kinds[0] == "create", (inc, kinds)
        if "gone" in kinds:
            assert kinds.index("dying") < kinds.index("gone")
            gap = steps[kinds.index("gone")]["mono"] - steps[kinds.index("dying")]["mono"]
            zombies += gap > 5_000_000  # held dying for `hold`, not one destroy call
        reasons = [e.get("reason") for e in steps if e["step"] == "shutdown"]
        if reasons[:2] == ["suspend", "poweroff"]:
            assert kinds[:4] == ["create", "shutdown", "resume", "shutdown"]
            failed_migrations += 1
    creates = [e for e in log if e["step"] == "create" and e["domid"]]
    seen: dict[int, dict] = {}
    for e in creates:
        old = seen.get(e["domid"])
        if old is not None and old["uuid"] == e["uuid"]:
            reuse_same_uuid += 1
        seen[e["domid"]] = e
    assert zombies and failed_migrations and reuse_same_uuid
    assert result["guests"] == len(h.guests())


def test_the_sim_process_writes_its_truth_and_keeps_it(sim_factory):
    handle = sim_factory(domains=3)
    path = sim_paths(handle.dir).truth
    assert handle.ready["truth"] == path
    handle.ctl.shutdown(2, "crash")
    handle.ctl.destroy(2)
    reply = handle.ctl.churn(0.3, rate=40, seed=1, kinds="all", domids="1-3", hold=0.05)
    assert reply["ok"]
    with pytest.raises(Exception, match="unknown churn kind"):
        handle.ctl.churn(0.1, kinds="nap")
    log = read_truth(path)
    assert [e["step"] for e in log[:6]] == ["create"] * 4 + ["shutdown", "dying"]
    assert log[4] == {**log[4], "domid": 2, "reason": "crash", "inc": 2}
    handle.stop()
    assert read_truth(path) == log  # kept after the sim stopped, and nothing more in it


def test_renames_do_not_crowd_the_reasons_out_of_the_line_cache(host):
    # Each rename's old_uuid is new, so its line is made fresh every time; the shutdown
    # reasons, which repeat on every change of a churn, stay cached however many renames
    # came first, and every line still says what happened.
    h, paths = host
    [dom] = h.create(count=1)
    at = TruthLog.clock()
    olds = [f"00000000-0000-0000-0000-{n:012d}" for n in range(100)]
    for old in olds:
        h.hv.truth.record("rename", [dom], at, old_uuid=old)
    h.shutdown(dom.domid, records.SHUTDOWN_CRASH)
    renames = [e for e in read_truth(paths.truth) if e["step"] == "rename"]
    assert [e["old_uuid"] for e in renames] == olds
    assert read_truth(paths.truth)[-1]["reason"] == "crash"
    assert ("shutdown", ("reason", "crash")) in h.hv.truth._parts
    assert not any(key[0] == "rename" for key in h.hv.truth._parts)
