"""A daemon restart that resuming subscribers do not notice (docs/protocol.md, "Cursors").

What happened while no daemon ran comes out of the first scan after the restart as ordinary
events flagged `"late": true`, once, to subscribers resuming with `since`; the seq numbers
go on in the same history; a new boot starts a new history; a kill -9 at any point neither
repeats nor loses an event for a resuming subscriber.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest
from daemonhelpers import brief, until
from resumehelpers import Cursor, Follower

from mux.sim.ctl import SimControl


def test_what_happened_while_the_daemon_was_away_comes_late_and_once(sim, daemon_factory):
    d = daemon_factory(sim, "--shutdown-poll", "0.05")
    with Cursor(d.sock) as c:
        first = c.subscribe("*")
        history = first["history"]
        sim.ctl.shutdown(4, "poweroff")
        (ev,) = c.take(1)
        assert (ev["event"], ev["domid"], ev["seq"]) == ("shutdown", 4, first["seq"] + 1)
        assert "late" not in ev
    d.stop()
    sim.ctl.destroy(2)  # dies while no daemon runs
    sim.ctl.destroy(4)  # was shut down: dies with its reason
    sim.ctl.shutdown(3, "crash")
    born = sim.ctl.create(name="born-meanwhile")
    d2 = daemon_factory(sim, "--shutdown-poll", "0.05", sock=d.sock)
    with Cursor(d2.sock) as c:
        hello = c.request("hello")
        assert hello["history"] == history and hello["protocol"] == 2
        reply = c.subscribe("*", since=ev["seq"], history=history)
        assert reply["ok"] and reply["since"] == ev["seq"] and reply["history"] == history
        assert "snapshot" not in reply and "gap" not in reply
        late = c.take(reply["seq"] - ev["seq"])
        assert all(e["late"] is True for e in late)
        assert [e["seq"] for e in late] == list(range(ev["seq"] + 1, reply["seq"] + 1))
        assert sorted(brief(late)) == sorted(
            [
                ("death", 2, None),
                ("released", 2, None),
                ("shutdown", 3, "crash"),
                ("death", 4, "poweroff"),
                ("released", 4, None),
                ("new", born[0]["domid"], None),
            ]
        )
        assert next(e for e in late if e["event"] == "new")["name"] == "born-meanwhile"
        assert c.quiet(0.3) == []
        sim.ctl.destroy(3)
        after = c.take(2)
        assert brief(after) == [("death", 3, "crash"), ("released", 3, None)]
        assert not any("late" in e for e in after)
        assert after[0]["seq"] == reply["seq"] + 1


def kill9(d) -> None:
    """SIGKILL, by its PID: no checkpoint at stop, whatever it was doing."""
    d.proc.kill()
    d.proc.wait(10)


def test_a_new_boot_is_a_new_history_without_late_events(sim, daemon_factory, tmp_path):
    boot = tmp_path / "boot_id"
    boot.write_text("6e0c9c1d-5a4b-4c43-9a38-0a1b2c3d4e5f\n")
    args = ("--boot-id-file", str(boot))
    d = daemon_factory(sim, *args)
    with Cursor(d.sock) as c:
        old = c.subscribe("*")
        sim.ctl.shutdown(2, "crash")
        (ev,) = c.take(1)
    d.stop()
    sim.ctl.destroy(2)
    boot.write_text("0a1b2c3d-0000-4c43-9a38-6e0c9c1d5a4b\n")  # the host rebooted
    d2 = daemon_factory(sim, *args, sock=d.sock)
    with Cursor(d2.sock) as c:
        hello = c.request("hello")
        assert hello["history"] != old["history"]
        assert (hello["seq"], hello["oldest_seq"]) == (0, 1)
        reply = c.subscribe("*", since=ev["seq"], history=old["history"])
        assert reply["gap"] is True and reply["seq"] == 0
        assert {r["domid"] for r in reply["snapshot"]} == {0, 1, 3, 4, 5, 6, 7, 8}
        assert c.quiet(0.3) == []
    assert "another boot" in d2.log_text() and ".corrupt-" not in d2.log_text()


def test_a_corrupt_checkpoint_is_moved_aside_and_a_new_history_starts(sim, daemon_factory):
    d = daemon_factory(sim)
    with Cursor(d.sock) as c:
        old = c.subscribe("*")["history"]
    d.stop()
    state = sim.dir / "xenmux-state"
    (state / "checkpoint").write_bytes(b'{"format": 1, "history": "' + b"\xff" * 40)
    d2 = daemon_factory(sim, sock=d.sock)
    with Cursor(d2.sock) as c:
        hello = c.request("hello")
    assert hello["history"] != old and hello["seq"] == 0
    (aside,) = [p for p in sim.dir.iterdir() if p.name.startswith("xenmux-state.corrupt-")]
    assert (aside / "checkpoint").exists()
    lines = [line for line in d2.log_text().splitlines() if " ERROR " in line]
    assert len(lines) == 1 and str(state) in lines[0] and str(aside) in lines[0], lines
    assert "Traceback" not in d2.log_text()


@pytest.mark.parametrize("damage", ["torn", "garbage"])
def test_a_torn_or_garbage_tail_is_cut_off_and_never_served(sim, daemon_factory, damage):
    d = daemon_factory(sim)
    with Cursor(d.sock) as c:
        c.subscribe("*")
        sim.ctl.shutdown(2, "crash")
        first = c.take(1)
        sim.ctl.shutdown(3, "reboot")  # seen by a scan of its own: a batch of its own
        first += c.take(1)
    kill9(d)  # no checkpoint since the start: both events are in the journal only
    (segment,) = (sim.dir / "xenmux-state").glob("journal-*")
    data = segment.read_bytes()
    if damage == "torn":  # the daemon died half-way through writing the second event
        segment.write_bytes(data[: len(data) - 40])
    else:
        segment.write_bytes(data + b'{"seq": 3, "event": "death", "domid": 4}\n' + b"\0" * 99)
    d2 = daemon_factory(sim, sock=d.sock)
    assert "cut off" in d2.log_text() and "Traceback" not in d2.log_text()
    with Cursor(d2.sock) as c:
        reply = c.subscribe("*", since=0)
        got = c.take(reply["seq"])
        assert c.quiet(0.3) == []
    assert got[0] == first[0]
    if damage == "torn":
        # Its write never completed, so nobody got it; the first scan finds it again.
        assert reply["seq"] == 2
        assert brief(got[1:]) == [("shutdown", 3, "reboot")] and got[1]["late"] is True
    else:
        assert got == first and reply["seq"] == 2


def _apply(domains: dict, ev: dict) -> None:
    """A subscriber's view of the host, one event further."""
    kind, domid = ev["event"], ev["domid"]
    if kind == "released":
        assert domains.pop(domid)[0] == ev["uuid"], ev
    elif kind == "new":
        assert domid not in domains, ev
        domains[domid] = (ev["uuid"], "running")
    else:
        assert domid in domains and domains[domid][0] == ev["uuid"], ev
        state = {"shutdown": "shutdown", "resumed": "running", "death": "dead"}[kind]
        domains[domid] = (ev["uuid"], state)


def test_kill_9_at_random_points_of_a_churn_neither_repeats_nor_loses_an_event(sim, daemon_factory):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    args = ("--shutdown-poll", "0.05", "--checkpoint-interval", "0.4")
    d = daemon_factory(sim, *args)
    follower = Follower(d.sock)
    follower.start()
    until(lambda: follower.replies)
    kills = []

    def churn_until_killed_thrice() -> None:
        # Rounds of churn until three kills landed in it, however slow restarts are here.
        rounds = 0
        while rounds < 2 or len(kills) < 3:
            SimControl(str(sim.dir)).churn(seconds=3, rate=25, seed=seed + rounds)
            rounds += 1

    churn = threading.Thread(target=churn_until_killed_thrice)
    churn.start()
    while churn.is_alive() and len(kills) < 5:
        time.sleep(rng.uniform(0.2, 1.2))
        kills.append(d.stats()["seq"])
        kill9(d)
        d = daemon_factory(sim, *args, sock=d.sock)
    churn.join(60)
    assert len(kills) >= 3, f"seed {seed}: only {len(kills)} kills during the churn"

    # The host is quiet now: the table agrees with it once a rescan says so...
    def settled():
        with d.client() as c:
            c.rescan()
            listed = c.list()
        truth = {r["domid"]: r["uuid"] for r in sim.ctl.list()}
        return listed if {r["domid"]: r["uuid"] for r in listed} == truth else None

    listed = until(settled)
    with Cursor(d.sock) as c:
        last = c.request("hello")["seq"]
        # ...and the continuous record: the journal of the last daemon, from the start.
        reply = c.subscribe("*", since=0)
        record = c.take(reply["seq"])
    follower.wait_for_seq(last)
    follower.stop()

    got = [f for f in follower.frames if "event" in f]
    # Once each and in order, the very events of the record, though the daemon died
    # under the follower at random points (at seqs `kills`, seed printed).
    assert [e["seq"] for e in got[: len(record)]] == list(range(1, len(record) + 1)), (seed, kills)
    assert got[: len(record)] == record, (seed, kills)
    assert all(r.get("since") is not None for r in follower.replies[1:]), follower.replies
    assert not [r for r in follower.replies if r.get("gap")]
    assert follower.reconnects >= len(kills)

    # Nothing lost: the follower's snapshot and events give the table as it is.
    domains = {r["domid"]: (r["uuid"], r["state"]) for r in follower.replies[0]["snapshot"]}
    for ev in record[:last]:
        _apply(domains, ev)
    assert domains == {r["domid"]: (r["uuid"], r["state"]) for r in listed}, (seed, kills)
    incarnations = Counter((e["domid"], e["uuid"], e["event"]) for e in record)
    assert max(incarnations.values()) == 1 or all(
        kind in ("shutdown", "resumed") for (_, _, kind), n in incarnations.items() if n > 1
    ), (seed, kills)
    assert any(e.get("late") for e in record), (seed, kills)  # the churn went on meanwhile
