"""`xenmux sim-ctl` and the Python control clients: outputs, errors, churn."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from mux.sim.ctl import AsyncSimControl, SimControl, SimControlError
from mux.sim.wireclient import XsClient
from mux.xenstore import wire

pytest_plugins = ("simhelpers",)  # the sim, sim422, sim_factory, procs fixtures

XENMUX = [sys.executable, "-m", "mux.cli"]


def lines(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_cli_outputs_json_lines_and_clear_errors(sim):
    out = sim.sim_ctl("create", "--count", "3")
    assert out.returncode == 0, out.stderr
    created = lines(out)
    assert [d["domid"] for d in created] == [9, 10, 11]
    assert all(d["state"] == "running" and d["name"] == f"guest-{d['domid']}" for d in created)

    out = sim.sim_ctl("create", "--domid", "500", "--name", "db", "--uuid", "0" * 31 + "1")
    [row] = lines(out)
    assert row == {
        **row,
        "domid": 500,
        "name": "db",
        "uuid": "00000000-0000-0000-0000-000000000001",
    }

    out = sim.sim_ctl("shutdown", "9", "--reason", "3")
    [reply] = lines(out)
    assert reply["ok"] and reply["domids"] == [9] and reply["virqs"] == 1
    assert reply["firings"]["@releaseDomain"] == 1

    listed = lines(sim.sim_ctl("list"))
    assert [d["domid"] for d in listed] == [*range(12), 500]
    row9 = next(d for d in listed if d["domid"] == 9)
    assert row9["state"] == "shutdown" and row9["reason"] == "crash" and row9["latched"]

    for args, message in [
        (("shutdown", "42"), "no domain 42"),
        (("shutdown", "1", "--reason", "nap"), "unknown shutdown reason"),
        (("resume", "1"), "not shut down"),
        (("create", "--domid", "500"), "domain 500 exists"),
        (("create", "--uuid", "nope"), "not a UUID"),
        (("destroy", "0"), "domain 0"),
        (("release", "77"), "ENOENT"),
    ]:
        out = sim.sim_ctl(*args)
        assert out.returncode == 1, (args, out.stdout)
        assert message in out.stderr, (args, out.stderr)
        assert out.stderr.startswith("xenmux sim-ctl: ")

    out = sim.sim_ctl("destroy", "all")
    assert lines(out)[0]["domids"] == [*range(1, 12), 500]
    assert [d["domid"] for d in lines(sim.sim_ctl("list"))] == [0]


def test_cli_without_a_sim(tmp_path):
    out = subprocess.run(
        [*XENMUX, "sim-ctl", "--dir", str(tmp_path), "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "no simulated host answers" in out.stderr
    with pytest.raises(SimControlError):
        SimControl(str(tmp_path))


def test_second_sim_in_the_same_directory_is_refused(sim):
    out = subprocess.run(
        [*XENMUX, "sim", "--dir", str(sim.dir), "--domains", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "in use" in out.stderr
    assert sim.ctl.info()["guests"] == 8  # the first one is untouched


def test_churn_keeps_table_and_xenstore_consistent(sim):
    with XsClient(sim.xenstored) as xs:
        xs.watch(wire.SPECIAL_RELEASE, "rel")
        xs.sync()
        result = sim.ctl.churn(1.0, rate=60, seed=7, step_delay=0.002)
        assert sum(result["lifecycles"].values()) >= 40
        assert result["ops"]["destroy"] > 0 and result["ops"]["create"] > 0
        assert result["ops"].get("shutdown", 0) + result["ops"].get("suspend", 0) > 0
        assert len(xs.sync()) > 0  # it fired
        listed = sim.ctl.list()
        assert len(listed) - 1 == result["guests"]
        for dom in listed:
            home = f"/local/domain/{dom['domid']}"
            assert xs.read(f"{home}/name").decode() == dom["name"]
            if dom["domid"]:
                assert xs.read(f"{home}/vm").decode() == f"/vm/{dom['uuid']}"
                assert dom["introduced"] == (dom["state"] != "dying")
        homes = set(xs.directory("/local/domain"))
        assert homes == {str(d["domid"]) for d in listed}


def test_async_client(sim):
    async def main():
        async with await AsyncSimControl.connect(str(sim.dir)) as ctl:
            [dom] = await ctl.create(name="a")
            reply = await ctl.shutdown(dom["domid"], "watchdog")
            assert reply["domids"] == [dom["domid"]]
            rows = await ctl.list()
            assert {r["domid"]: r["reason"] for r in rows}[dom["domid"]] == "watchdog"
            with pytest.raises(SimControlError, match="no domain 4242"):
                await ctl.destroy(4242)

    asyncio.run(main())
