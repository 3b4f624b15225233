"""paused / unpaused end to end: the sim's toolstack pauses (`sim-ctl pause`), the daemon
reports it with its next scan to the subscribers that asked for those kinds, and to no one
else; a domain built paused comes as `new` with `"paused": true`."""

from __future__ import annotations

import subprocess

from daemonhelpers import take
from simhelpers import sim_command

from mux.client import Client


def _rescan(sock: str) -> None:
    with Client(sock) as c:  # a pause fires nothing: the next scan is what sees it
        c.rescan()


def test_pause_and_unpause_reach_only_who_asked(sim, daemon_factory):
    d = daemon_factory(sim, "--shutdown-poll", "0", "--full-scan", "0")
    kinds = ["new", "paused", "unpaused", "shutdown", "death"]
    with d.subscribe(None, events=kinds) as asked, d.subscribe([3]) as plain:
        (row,) = sim.ctl.create(paused=True)
        new = take(asked, 1)[0]
        assert (new["event"], new["domid"], new.get("paused")) == ("new", row["domid"], True)

        sim.ctl.unpause(row["domid"])
        sim.ctl.pause(3)
        _rescan(d.sock)
        got = sorted((e["event"], e["domid"]) for e in take(asked, 2))
        assert got == sorted([("unpaused", row["domid"]), ("paused", 3)])

        out = subprocess.run(
            [*sim_command(), "sim-ctl", "--dir", str(sim.dir), "unpause", "3"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        _rescan(d.sock)
        assert [(e["event"], e["domid"]) for e in take(asked, 1)] == [("unpaused", 3)]

        sim.ctl.shutdown(3, "poweroff")
        # The default kinds: the pauses never came to `plain`, its first event is this.
        assert [(e["event"], e.get("reason")) for e in take(plain, 1)] == [("shutdown", "poweroff")]
        assert take(asked, 1)[0]["event"] == "shutdown"
