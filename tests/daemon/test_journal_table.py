"""The table across a restart (mux/daemon/tablestate.py), with both scanner twins: a table
loaded from a dump, or from an older dump with the journaled events since replayed onto
it, goes on exactly as the table that was never stopped: the same events, byte for byte,
from the same records. And the first scan's events carry `"late": true` in their frames.
"""

from __future__ import annotations

import json
import random
import uuid

import pytest

from mux import _fast, reference
from mux.daemon.tablestate import dump_table, load_table, mark_late, replay
from mux.records import (
    SHUTDOWN_CRASH,
    SHUTDOWN_POWEROFF,
    SHUTDOWN_REBOOT,
    SHUTDOWN_SUSPEND,
    DomainRecord,
    make_flags,
    pack_all,
)

TWINS = {"fast": _fast.DomainTable, "reference": reference.DomainTable}


class Host:
    """Domains whose records change at random, as a hypervisor's would between scans."""

    def __init__(self, seed: int, n: int = 12) -> None:
        self.rng = random.Random(seed)
        self.doms: dict[int, DomainRecord] = {}
        self.next_domid = 0
        self.clock = 10**9
        for _ in range(n):
            self.create()

    def create(self) -> None:
        self.clock += 1000
        handle = uuid.UUID(int=self.rng.getrandbits(128)).bytes
        self.doms[self.next_domid] = DomainRecord(self.next_domid, make_flags(), handle, 0)
        self.next_domid += 1

    def step(self) -> None:
        """A few changes; every live domain's cpu_time moves on (quiet changes too)."""
        for domid, rec in list(self.doms.items()):
            self.doms[domid] = DomainRecord(domid, rec.flags, rec.handle, rec.cpu_time + 7)
        for _ in range(self.rng.randint(0, 3)):
            if not self.doms or self.rng.random() < 0.2:
                self.create()
                continue
            domid = self.rng.choice(sorted(self.doms))
            rec = self.doms[domid]
            what = self.rng.choice(["shutdown", "resume", "dying", "gone", "nothing"])
            if what == "shutdown" and not rec.dying:
                reason = self.rng.choice(
                    [SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT, SHUTDOWN_SUSPEND, SHUTDOWN_CRASH]
                )
                flags = make_flags(shutdown_reason=reason)
            elif what == "resume" and rec.shutdown and not rec.dying:
                flags = make_flags()
            elif what == "dying":
                flags = rec.flags | make_flags(dying=True)
            elif what == "gone":
                del self.doms[domid]
                continue
            else:
                continue
            self.doms[domid] = DomainRecord(domid, flags, rec.handle, rec.cpu_time)

    def batch(self) -> tuple[bytes, int]:
        return pack_all(self.doms[d] for d in sorted(self.doms)), len(self.doms)


def frames(events) -> list[bytes]:
    return [ev.frame() for ev in events]


def parsed(events) -> list[dict]:
    return [json.loads(f) for f in frames(events)]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("source", sorted(TWINS))
@pytest.mark.parametrize("target", sorted(TWINS))
def test_checkpoint_plus_replayed_journal_goes_on_as_if_never_stopped(seed, source, target):
    host = Host(seed)
    table = TWINS[source]()
    table.prime(*host.batch())
    for d in range(0, host.next_domid, 3):
        table.set_name(d, f"guest-{d}")
    now = 100.0
    checkpoint = None
    journaled: list[dict] = []
    for step in range(60):
        host.step()
        now += 1
        evs = table.diff(*host.batch(), now)
        if step == 20:
            checkpoint = json.loads(json.dumps(dump_table(table)))  # as written to disk
        elif checkpoint is not None:
            journaled += parsed(evs)
    assert checkpoint is not None and journaled, "the random host changed nothing"

    from_dump = load_table(TWINS[target], json.loads(json.dumps(dump_table(table))))
    from_replay = load_table(TWINS[target], replay(checkpoint, journaled))
    for restored in (from_dump, from_replay):
        assert restored.seq == table.seq
        assert restored.snapshot(None) == table.snapshot(None)
    for _ in range(40):
        host.step()
        now += 1
        want = frames(table.diff(*host.batch(), now))
        assert frames(from_dump.diff(*host.batch(), now)) == want
        assert frames(from_replay.diff(*host.batch(), now)) == want
    assert from_replay.snapshot(None) == table.snapshot(None)


def test_replay_skips_what_the_dump_already_has():
    table = reference.DomainTable()
    host = Host(1)
    table.prime(*host.batch())
    host.step()
    host.create()
    evs = parsed(table.diff(*host.batch(), 5.0))
    dump = dump_table(table)
    assert replay(dump, evs) == dump


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_the_first_scans_events_say_late_in_their_frames(twin):
    host = Host(3, n=3)
    table = TWINS[twin]()
    table.prime(*host.batch())
    del host.doms[1]
    host.create()
    evs = mark_late(table.diff(*host.batch(), 7.5))
    evs[-1].name = "born"  # names are still filled in after the mark
    got = parsed(evs)
    assert [e["event"] for e in got] == ["death", "released", "new"]
    for e in got:
        assert e["late"] is True
        keys = list(e)
        assert keys[-2:] == ["late", "time"], keys  # the contract's key order
    assert got[-1]["name"] == "born"
    assert [e.to_dict()["late"] for e in evs] == [True] * 3
