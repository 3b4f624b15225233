"""Incarnation ids through the xenctrl backend (issue 17 item 1): the daemon on the stand-in
libxenctrl and libxenmanage of Xen 4.21 names every event's and snapshot row's incarnation
by the library's unique id, and a domid reused with the same UUID while the daemon was
stopped is one `death` and one `new` after the restart; on 4.17's libraries (no
libxenmanage) there is no such field. The records come from a simulated host's table
($XENMUX_STUB_SHM); the ids from the stand-in ($XENMUX_STUB_UNIQUE_IDS, else made from
domid and UUID, so that a reuse with the same UUID needs the file to get another id).
"""

from __future__ import annotations

import os

import pytest
import realxen
import test_xenctrl_backend as xb
from daemonhelpers import brief, take
from resumehelpers import Cursor

from mux.protocol import INCARNATION
from mux.realxen import private_dir
from mux.realxen.stubs import build_xen_stubs

xenstub_libs = realxen.xenstub_libs
scratch = xb.scratch
serve_factory = xb.serve_factory

pytestmark = pytest.mark.timeout(120)

REUSED = "00c0ffee00c0ffee"


@pytest.fixture(scope="module")
def stubs():
    with private_dir() as d:
        yield {v: build_xen_stubs(d, v) for v in ("4.17", "4.21")}


def serve(serve_factory, scratch, sim, stubs, version: str):
    env = dict(os.environ, XENMUX_STUB_SHM=sim.shm, XENMUX_STUB_UNIQUE_IDS=str(scratch / "ids"))
    for name in ("XENMUX_STUB_FAIL", "XENMUX_STUB_FAIL_FILE"):
        env.pop(name, None)
    lib = str(stubs[version].xenctrl)
    args = ("--backend", "xenctrl", "--xenctrl-lib", lib, "--xenstore", sim.xenstored)
    return serve_factory(scratch, *args, env=env)


def test_the_library_ids_name_incarnations_and_a_reuse_is_seen(sim, stubs, serve_factory, scratch):
    (scratch / "ids").write_text("")
    d = serve(serve_factory, scratch, sim, stubs, "4.21")
    with Cursor(d.sock) as c:
        assert c.request("hello")["features"]["unique_ids"] is True
        first = c.subscribe("*")
        history, seq = first["history"], first["seq"]
        ids = {row["domid"]: row[INCARNATION] for row in first["snapshot"]}
        assert len(set(ids.values())) == len(ids) and all(len(i) == 16 for i in ids.values())
        (old,) = [row for row in first["snapshot"] if row["domid"] == 3]
        sim.ctl.shutdown(5, "reboot")
        (shut,) = c.take(1)
        assert brief([shut]) == [("shutdown", 5, "reboot")] and shut[INCARNATION] == ids[5]
        seq = shut["seq"]
    cpu_time = sim.ctl.domain(3)["cpu_time"]
    d.stop()
    # Destroyed and built again with its UUID, its cpu_time not behind (the sim draws one at
    # random): the record shows nothing; the library gives the new incarnation another id.
    sim.ctl.destroy(3)
    sim.ctl.create(domid=3, uuid=old["uuid"], name="guest-3")
    while sim.ctl.domain(3)["cpu_time"] < cpu_time:
        sim.ctl.destroy(3)
        sim.ctl.create(domid=3, uuid=old["uuid"], name="guest-3")
    (scratch / "ids").write_text(f"3 {REUSED}\n")
    d2 = serve(serve_factory, scratch, sim, stubs, "4.21")
    with Cursor(d2.sock) as c:
        reply = c.subscribe("*", since=seq, history=history)
        late = c.take(reply["seq"] - seq)
        assert brief(late) == [("death", 3, None), ("released", 3, None), ("new", 3, None)]
        assert [e[INCARNATION] for e in late] == [old[INCARNATION]] * 2 + [REUSED]
        assert all(e["late"] is True for e in late)
        assert c.quiet(0.3) == []


def test_no_field_without_libxenmanage(sim, stubs, serve_factory, scratch):
    d = serve(serve_factory, scratch, sim, stubs, "4.17")
    with d.client() as c:
        assert c.hello()["features"]["unique_ids"] is False
    with d.subscribe(None) as sub:
        assert sub.snapshot and all(INCARNATION not in row for row in sub.snapshot)
        sim.ctl.destroy(4)
        events = take(sub, 2)
        assert brief(events) == [("death", 4, None), ("released", 4, None)]
        assert all(INCARNATION not in e for e in events)
