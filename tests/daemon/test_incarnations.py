"""Incarnation ids end to end on the simulated host (issue 17 item 1, docs/protocol.md
"Incarnations"): on a Xen 4.21 sim every event and snapshot row carries the hypervisor's
unique id of the incarnation, and a domid reused with the same UUID while the daemon could
not scan (stopped, or frozen) is exactly one `death` and one `new`, with different ids; a
restart without reuse emits nothing. On 4.17 and 4.20 (ids in the hypervisor, none for
dom0 to read) nothing on the wire changes.
"""

from __future__ import annotations

import os
import signal

import pytest
from daemonhelpers import brief, quiet, start_daemon, take
from resumehelpers import Cursor
from simhelpers import short_dir, start_sim

from mux.protocol import INCARNATION
from mux.sim.backend import SimBackend

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def sim421(tmp_path_factory):
    """dom0 + 6 guests on a Xen 4.21 host (the sim's unique ids readable by dom0)."""
    handle = start_sim(
        short_dir(tmp_path_factory.mktemp("inc"), "sim421"), 6, "4.21", ("--xen-version", "4.21")
    )
    yield handle
    handle.stop()


@pytest.fixture
def daemons():
    """Daemons of one test, each stopped by its PID at teardown (newest first)."""
    started = []

    def make(sim, *extra, **kw):
        d = start_daemon(sim, *extra, **kw)
        started.append(d)
        return d

    yield make
    for d in reversed(started):
        if d.proc.poll() is None:
            d.stop()


def sim_id(sim, domid: int) -> str:
    """The unique id the simulated hypervisor drew for the incarnation `domid` holds."""
    return sim.ctl.domain(domid)["unique_id"]


def reuse_behind_the_record(sim, domid: int, uuid: str, cpu_time: int) -> None:
    """Destroy `domid` and build it again with `uuid` until the new domain's cpu_time is not
    behind `cpu_time` (the sim draws a boot cpu_time at random): the records then show no
    sign of the reuse, and only the unique id can. The ones given up were never scanned."""
    for _ in range(50):
        if sim.ctl.domain(domid)["cpu_time"] >= cpu_time:
            return
        sim.ctl.destroy(domid)
        sim.ctl.create(domid=domid, uuid=uuid, name=f"guest-{domid}")
    raise AssertionError(f"no boot cpu_time of {domid} reached {cpu_time}")


def test_events_and_snapshot_rows_carry_the_incarnation(sim421, daemons):
    d = daemons(sim421, "--full-scan", "0")
    with d.client() as c:
        assert c.hello()["features"]["unique_ids"] is True
    with d.subscribe(None) as sub:
        rows = {row["domid"]: row for row in sub.snapshot}
        for domid, row in rows.items():
            assert row[INCARNATION] == sim_id(sim421, domid)
            assert list(row)[:3] == ["domid", "uuid", INCARNATION]
        sim421.ctl.shutdown(2, "crash")
        (shut,) = take(sub, 1)
        assert brief([shut]) == [("shutdown", 2, "crash")]
        assert shut[INCARNATION] == rows[2][INCARNATION]
        (born,) = sim421.ctl.create(name="fresh")
        (new,) = take(sub, 1)
        assert (new["event"], new["domid"]) == ("new", born["domid"])
        assert new[INCARNATION] == born["unique_id"]
        sim421.ctl.destroy(2)
        gone = take(sub, 2)
        assert brief(gone) == [("death", 2, "crash"), ("released", 2, None)]
        assert {e[INCARNATION] for e in gone} == {rows[2][INCARNATION]}


def test_a_domid_reused_with_its_uuid_while_no_daemon_ran_is_one_death_and_one_new(sim421, daemons):
    d = daemons(sim421)
    with Cursor(d.sock) as c:
        first = c.subscribe("*")
        history, seq = first["history"], first["seq"]
        (old,) = [row for row in first["snapshot"] if row["domid"] == 3]
    cpu_time = sim421.ctl.domain(3)["cpu_time"]
    d.stop()
    # What a toolstack does to restart a guest in place: destroy, create with the same UUID
    # and domid (through the command, as a user would).
    for args in (
        ("destroy", "3"),
        ("create", "--domid", "3", "--uuid", old["uuid"], "--name", "guest-3"),
    ):
        done = sim421.sim_ctl(*args)
        assert done.returncode == 0, done.stderr
    reuse_behind_the_record(sim421, 3, old["uuid"], cpu_time)
    now = sim_id(sim421, 3)
    assert now != old[INCARNATION]
    d2 = daemons(sim421, sock=d.sock)
    with Cursor(d2.sock) as c:
        reply = c.subscribe("*", since=seq, history=history)
        late = c.take(reply["seq"] - seq)
        assert brief(late) == [("death", 3, None), ("released", 3, None), ("new", 3, None)]
        assert all(e["late"] is True and e["uuid"] == old["uuid"] for e in late)
        assert [e[INCARNATION] for e in late] == [old[INCARNATION]] * 2 + [now]
        assert c.quiet(0.3) == []
        seq = reply["seq"]
    d2.stop()
    # A restart with nothing reused meanwhile: nothing.
    d3 = daemons(sim421, sock=d.sock)
    with Cursor(d3.sock) as c:
        hello = c.request("hello")
        assert hello["history"] == history and hello["seq"] == seq
        snap = c.subscribe([3])["snapshot"]
        assert [row[INCARNATION] for row in snap] == [now]


def test_a_reuse_while_the_daemon_was_frozen_is_seen_by_the_ids(sim421, daemons):
    """SIGSTOP: the destroy and the create with the same UUID both happen before the scan,
    the new record showing nothing (its cpu_time not behind the old one's); the
    @introduceDomain firings' scan reads the ids."""
    d = daemons(sim421, "--full-scan", "0")
    with d.subscribe([4]) as sub:
        (old,) = sub.snapshot
        cpu_time = sim421.ctl.domain(4)["cpu_time"]
        os.kill(d.pid, signal.SIGSTOP)
        try:
            sim421.ctl.destroy(4)
            sim421.ctl.create(domid=4, uuid=old["uuid"], name="guest-4")
            reuse_behind_the_record(sim421, 4, old["uuid"], cpu_time)
        finally:
            os.kill(d.pid, signal.SIGCONT)
        events = take(sub, 3)
        assert brief(events) == [("death", 4, None), ("released", 4, None), ("new", 4, None)]
        assert [e[INCARNATION] for e in events] == [old[INCARNATION]] * 2 + [sim_id(sim421, 4)]
        assert quiet(sub, 0.3) == []


@pytest.mark.parametrize("version", ["4.17", "4.20"])
def test_without_ids_for_dom0_nothing_changes(tmp_path, daemons, version):
    sim = start_sim(short_dir(tmp_path), 3, "4.17", ("--xen-version", version))
    try:
        # 4.20's hypervisor has them (the sim's table too), but no stable interface hands
        # them to dom0 before 4.21's XEN_DOMCTL_get_domain_state.
        assert ("unique_id" in sim.ctl.domain(1)) is (version == "4.20")
        backend = SimBackend(str(sim.dir))
        try:
            assert backend.capabilities.unique_ids is False
            with pytest.raises(NotImplementedError):
                backend.unique_id(1)
        finally:
            backend.close()
        d = daemons(sim)
        with d.client() as c:
            assert c.hello()["features"]["unique_ids"] is False
        with d.subscribe(None) as sub:
            assert all(INCARNATION not in row for row in sub.snapshot)
            sim.ctl.destroy(2)
            events = take(sub, 2)
            assert brief(events) == [("death", 2, None), ("released", 2, None)]
            assert all(INCARNATION not in e for e in events)
        d.stop()
    finally:
        sim.stop()
