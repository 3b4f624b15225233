"""The harness's binary change path (DIR/changes.sock, mux/sim/changes.py): each change is
applied, fired and counted before its reply, as over the JSON control socket."""

from __future__ import annotations

import os
import socket

import pytest

from mux.records import SHUTDOWN_CRASH
from mux.sim.changes import FLAG_ZOMBIE, REQUEST, ChangeClient, ChangeError
from mux.sim.paths import sim_paths
from mux.sim.wireclient import XsClient
from mux.xenstore import wire

pytest_plugins = ("simhelpers",)  # the sim, sim422, sim_factory, procs fixtures


def test_a_change_is_fired_at_the_watchers_before_its_reply(sim):
    changes = ChangeClient(sim_paths(sim.dir).changes)
    with XsClient(sim.xenstored) as xs:
        xs.watch(wire.SPECIAL_RELEASE, "rel")
        xs.watch(wire.SPECIAL_INTRODUCE, "intro")
        xs.sync()
        fired = changes.change("shutdown", 3, SHUTDOWN_CRASH)
        assert (fired.release, fired.introduce, fired.events) == (1, 0, 1)
        assert xs.drain_events() == [(wire.SPECIAL_RELEASE, "rel")]
        row = {r["domid"]: r for r in sim.ctl.list()}[3]
        assert row["reason"] == "crash" and row["latched"]

        assert changes.change("destroy", 3, flags=FLAG_ZOMBIE).release == 1
        assert {r["domid"]: r for r in sim.ctl.list()}[3]["state"] == "dying"
        assert changes.change("destroy", 3).events == 0  # xenstored forgot it at dying
        assert 3 not in {r["domid"] for r in sim.ctl.list()}

        made = changes.change("create")
        assert made.domid == 9 and made.introduce == 1
        assert xs.drain_events() == [
            (wire.SPECIAL_RELEASE, "rel"),
            (wire.SPECIAL_INTRODUCE, "intro"),
        ]
        assert changes.change("suspend", 9).release == 1
        assert changes.change("resume", 9).events == 0  # a resume fires nothing
        assert changes.change("virq").events == 0
    changes.close()


def test_a_refused_change_says_why_and_the_path_goes_on(sim):
    changes = ChangeClient(sim_paths(sim.dir).changes)
    with pytest.raises(ChangeError, match="no domain 4242"):
        changes.change("destroy", 4242)
    with pytest.raises(ChangeError, match="domain 0 cannot do that"):
        changes.change("shutdown", 0)
    with pytest.raises(ChangeError, match="unknown shutdown reason 99"):
        changes.change("shutdown", 2, 99)
    with pytest.raises(ChangeError, match="not a change op"):
        changes.change("reboot", 2)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as raw:
        raw.connect(sim_paths(sim.dir).changes)
        raw.send(b"\x01")
        assert f"is {REQUEST.size} bytes, not 1".encode() in raw.recv(4096)
        raw.send(REQUEST.pack(77, 0, 2, 0))
        assert b"unknown change op 77" in raw.recv(4096)
    assert changes.change("shutdown", 2).release == 1
    changes.close()


def test_the_change_socket_goes_with_the_sim(sim):
    path = sim_paths(sim.dir).changes
    assert os.path.exists(path)
    sim.stop()
    assert not os.path.lexists(path)
    with pytest.raises(ChangeError, match="no simulated host takes changes"):
        ChangeClient(path)
