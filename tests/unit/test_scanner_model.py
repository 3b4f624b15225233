"""A model host under random lifecycle changes, scanned by both twins.

At every step mux._fast and mux.reference must produce the same events (the same frame
bytes) and the same rows(); the events must follow the event model's grammar per domain
(new, then shutdown/resumed/paused/unpaused, then exactly one death, then released; a
changed shutdown only after `resumed`; a death's reason the shutdown in force, or none
where a resume cannot be ruled out), and after every full scan the table must agree with
the host. Tables reloaded from their own dumps (crosswise, through JSON) must go on exactly
as a third table that never was; and after every full scan the checkpoint taken earlier,
replayed with the events journaled since, must load into the same table as far as events
tell it, one that a scan of the same host finds nothing new in.

Half the runs model a host with unique ids (Xen 4.21+): every incarnation the host builds
gets a new id, the scans read them (checking the held domains' ids or not), and a domid
reused behind a record that shows nothing (same UUID, cpu_time not behind) is a new
incarnation as soon as a checking scan reads its id; events carry the incarnation.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mux import _fast, reference
from mux.records import (
    DOMID_FIRST_RESERVED,
    DOMINF_BLOCKED,
    DOMINF_DYING,
    DOMINF_PAUSED,
    DOMINF_RUNNING,
    DOMINF_SHUTDOWN,
    DOMINF_SHUTDOWNMASK,
    DOMINF_SHUTDOWNSHIFT,
    REASON_NAMES,
    RECORD_SIZE,
    DomainRecord,
    make_flags,
    pack_all,
    uuid_str,
)

# A few low domids, one in the middle and the highest valid one.
ALL_DOMIDS = [*range(6), 300, DOMID_FIRST_RESERVED - 1]
DOMIDS = st.sampled_from(ALL_DOMIDS)
# A small pool of handles, so that "another UUID" sometimes is not.
HANDLES = st.sampled_from([bytes([n]) * 16 for n in range(1, 6)]) | st.binary(
    min_size=16, max_size=16
)
REASONS = st.sampled_from(sorted(REASON_NAMES))
CPU = st.integers(min_value=0, max_value=10**12)
REASON_BITS = DOMINF_SHUTDOWNMASK << DOMINF_SHUTDOWNSHIFT
VOLATILE = DOMINF_RUNNING | DOMINF_BLOCKED  # change all the time: no event may come of them
RESUMABLE = {"suspend", "soft_reset"}
# Seconds between two scans: within the suspend window (0.25), just past it, far past it.
STEPS = st.sampled_from([0.1, 0.25, 0.2500001, 2.0])


class Life:
    """What the events have said about one domain incarnation so far."""

    def __init__(
        self,
        uuid: str,
        phase: str,
        shut: str | bool | None = False,
        paused: bool = False,
        incarnation: str | None = None,
    ) -> None:
        self.uuid = uuid
        self.incarnation = incarnation
        self.phase = phase  # alive or dead
        self.shut = shut  # False, or the reason (name or None) of the shutdown in force
        self.paused = paused


def flags_of(reason, *, dying=False, paused=False) -> int:
    return make_flags(
        shutdown_reason=reason, dying=dying, base=DOMINF_BLOCKED | (DOMINF_PAUSED * paused)
    )


def through_json(dump: dict) -> dict:
    return json.loads(json.dumps(dump))


class ScannerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.host: dict[int, DomainRecord] = {}
        self.fast = _fast.DomainTable(seq=100)
        self.ref = reference.DomainTable(seq=100)
        # Never reloaded: what the reloaded twins must go on exactly as.
        self.orig = reference.DomainTable(seq=100)
        self.life: dict[int, Life] = {}
        self.now = 1764090000.0
        self.rng = random.Random(0)
        self.checkpoint: dict = {}
        self.journal: list[dict] = []  # the events since the checkpoint, as frames parsed
        self.with_ids = False  # the host has unique ids (Xen 4.21+), and the scans read them
        self.ids: dict[int, int] = {}  # domid -> the unique id of the incarnation it holds

    @property
    def tables(self):
        return (self.fast, self.ref, self.orig)

    # -- the model host ---------------------------------------------------------------------

    def _set(self, domid: int, **changes) -> None:
        old = self.host[domid]
        self.host[domid] = DomainRecord(
            domid,
            changes.get("flags", old.flags),
            changes.get("handle", old.handle),
            changes.get("cpu_time", old.cpu_time),
        )

    def _batch(self, records) -> tuple[bytes, int]:
        return pack_all(records), len(records)

    def _born(self, domid: int) -> None:
        """The host built a new incarnation on `domid`: Xen draws it a new id."""
        self.ids[domid] = self.rng.getrandbits(64) or 1

    def unique_id(self, domid: int) -> int | None:
        """The backend's unique_id(domid)."""
        return self.ids[domid] if domid in self.host else None

    def _ids_args(self, data) -> dict:
        """How a scan reads ids: not at all without them; else checking the held ones or not."""
        if not self.with_ids:
            return {}
        return {"unique_id": self.unique_id, "check_ids": data.draw(st.booleans(), label="check")}

    @initialize(
        start=st.dictionaries(
            DOMIDS, st.tuples(HANDLES, CPU, st.none() | REASONS, st.booleans()), max_size=6
        ),
        dying=st.sets(DOMIDS, max_size=2),
        seed=st.integers(0, 2**32 - 1),
        with_ids=st.booleans(),
    )
    def prime(self, start, dying, seed, with_ids) -> None:
        self.rng = random.Random(seed)
        self.with_ids = with_ids
        for domid, (handle, cpu, reason, paused) in start.items():
            flags = flags_of(reason, dying=domid in dying, paused=paused)
            self.host[domid] = DomainRecord(domid, flags, handle, cpu)
            self._born(domid)
        records = list(self.host.values())
        self.rng.shuffle(records)
        buf, n = self._batch(records)
        for table in self.tables:
            table.prime(buf, n, self.now, unique_id=self.unique_id if with_ids else None)
        for row, snap in zip(self.ref.rows(), self.ref.snapshot(), strict=True):
            shut = row["reason"] if row["state"] == "shutdown" else False
            phase = "dead" if row["state"] == "dead" else "alive"
            life = Life(row["uuid"], phase, shut, snap["paused"], snap.get("incarnation"))
            self.life[row["domid"]] = life
            assert (life.incarnation is not None) == with_ids
        self.take_checkpoint()

    def _pick(self, data, *, alive_only=False) -> int:
        domids = sorted(d for d, r in self.host.items() if not (alive_only and r.dying))
        return data.draw(st.sampled_from(domids), label="domid")

    def _any_alive(self) -> bool:
        return any(not r.dying for r in self.host.values())

    @precondition(lambda self: len(self.host) < len(ALL_DOMIDS))
    @rule(data=st.data(), handle=HANDLES, cpu=CPU, paused=st.booleans())
    def create(self, data, handle, cpu, paused) -> None:
        """Built paused and unpaused by the toolstack, or not yet."""
        free = [d for d in ALL_DOMIDS if d not in self.host]
        domid = data.draw(st.sampled_from(free), label="domid")
        self.host[domid] = DomainRecord(domid, flags_of(None, paused=paused), handle, cpu)
        self._born(domid)

    @precondition(lambda self: self.host)
    @rule(
        data=st.data(),
        handle=HANDLES,
        cpu=CPU,
        reason=st.none() | REASONS,
        paused=st.booleans(),
    )
    def reuse_domid(self, data, handle, cpu, reason, paused) -> None:
        """The domain went and another took its domid between two scans."""
        domid = self._pick(data)
        flags = flags_of(reason, paused=paused)
        self.host[domid] = DomainRecord(domid, flags, handle, cpu)
        self._born(domid)

    @precondition(lambda self: self.host)
    @rule(data=st.data(), ran=st.integers(0, 10**9), paused=st.booleans())
    def reuse_unseen(self, data, ran, paused) -> None:
        """The domain went and another with the same UUID took its domid, its cpu_time not
        behind: nothing in the record shows it, only the unique id (where there is one)."""
        domid = self._pick(data)
        old = self.host[domid]
        flags = flags_of(None, paused=paused)
        self.host[domid] = DomainRecord(domid, flags, old.handle, old.cpu_time + ran)
        self._born(domid)

    @precondition(lambda self: self.host)
    @rule(data=st.data())
    def pause_or_unpause(self, data) -> None:
        """xl pause / xl unpause (of a dead domain too: no event may come of that)."""
        domid = self._pick(data)
        self._set(domid, flags=self.host[domid].flags ^ DOMINF_PAUSED)

    @precondition(_any_alive)
    @rule(data=st.data(), reason=REASONS)
    def shutdown(self, data, reason) -> None:
        domid = self._pick(data, alive_only=True)
        flags = self.host[domid].flags & ~REASON_BITS
        self._set(domid, flags=flags | DOMINF_SHUTDOWN | (reason << DOMINF_SHUTDOWNSHIFT))

    @precondition(_any_alive)
    @rule(data=st.data(), destroy=st.booleans(), ran=st.sampled_from([0, 0, 1, 10**6]))
    def resume(self, data, destroy, ran) -> None:
        """Resumed in place (no firing), maybe running a while (or not at all); maybe
        destroyed too before the next scan."""
        domid = self._pick(data, alive_only=True)
        rec = self.host[domid]
        flags = make_flags(base=rec.flags & (VOLATILE | DOMINF_PAUSED), dying=destroy)
        self._set(domid, flags=flags, cpu_time=rec.cpu_time + ran)

    def _any_suspended(self) -> bool:
        return any(r.shutdown and not r.dying and r.reason in (2, 5) for r in self.host.values())

    @precondition(_any_suspended)
    @rule(
        data=st.data(),
        then=st.sampled_from(["destroy", "resume+destroy", "gone", "resume+suspend"]),
        ran=st.sampled_from([0, 1, 10**6]),
    )
    def after_a_suspend(self, data, then, ran) -> None:
        """What the reason rule is about: a suspended domain destroyed (its shutdown flag
        gone from the dying record, as a resume clears it too), or resumed first, running
        `ran` ns (or not at all), then destroyed, gone or suspended again."""
        domid = data.draw(
            st.sampled_from(
                sorted(
                    d
                    for d, r in self.host.items()
                    if r.shutdown and not r.dying and r.reason in (2, 5)
                )
            ),
            label="domid",
        )
        rec = self.host[domid]
        cpu = rec.cpu_time + (ran if then.startswith("resume") else 0)
        keep = rec.flags & (VOLATILE | DOMINF_PAUSED)
        if then == "gone":
            del self.host[domid]
        elif then == "resume+suspend":
            self._set(domid, cpu_time=cpu, flags=rec.flags)
        else:
            self._set(domid, cpu_time=cpu, flags=make_flags(base=keep, dying=True))

    @precondition(lambda self: self.host)
    @rule(data=st.data())
    def set_dying(self, data) -> None:
        domid = self._pick(data)
        self._set(domid, flags=self.host[domid].flags | DOMINF_DYING)

    @precondition(lambda self: self.host)
    @rule(data=st.data())
    def remove(self, data) -> None:
        del self.host[self._pick(data)]

    @precondition(lambda self: self.host)
    @rule(data=st.data(), delta=st.integers(0, 10**9), volatile=st.sampled_from([0, VOLATILE]))
    def run(self, data, delta, volatile) -> None:
        """cpu_time moves on and the volatile flags flip: no event may come of it."""
        domid = self._pick(data)
        rec = self.host[domid]
        self._set(domid, cpu_time=rec.cpu_time + delta, flags=rec.flags ^ volatile)

    @precondition(lambda self: any(r.cpu_time > 0 for r in self.host.values()))
    @rule(data=st.data())
    def cpu_time_backwards(self, data) -> None:
        """Same UUID, smaller cpu_time: a new incarnation (e.g. restored in place)."""
        domid = data.draw(st.sampled_from(sorted(d for d, r in self.host.items() if r.cpu_time)))
        self._set(domid, cpu_time=data.draw(st.integers(0, self.host[domid].cpu_time - 1)))

    @rule(
        ops=st.lists(
            st.tuples(
                st.sampled_from(["create", "shutdown", "resume", "dying", "remove", "reuse"]),
                DOMIDS,
                REASONS,
                HANDLES,
            ),
            min_size=2,
            max_size=10,
        )
    )
    def churn(self, ops) -> None:
        """Many changes between two scans (a boot storm, a mass shutdown...)."""
        for op, domid, reason, handle in ops:
            rec = self.host.get(domid)
            if rec is None:
                if op == "create":
                    self.host[domid] = DomainRecord(domid, make_flags(), handle, 10)
                    self._born(domid)
            elif op == "remove":
                del self.host[domid]
            elif op == "reuse":
                self.host[domid] = DomainRecord(domid, make_flags(), handle, 5)
                self._born(domid)
            elif op == "dying":
                self._set(domid, flags=rec.flags | DOMINF_DYING)
            elif op == "shutdown" and not rec.dying:
                flags = (rec.flags & ~REASON_BITS) | DOMINF_SHUTDOWN
                self._set(domid, flags=flags | (reason << DOMINF_SHUTDOWNSHIFT))
            elif op == "resume" and not rec.dying:
                self._set(domid, flags=make_flags(base=rec.flags & (VOLATILE | DOMINF_PAUSED)))

    @rule(domid=DOMIDS, name=st.none() | st.text(max_size=6))
    def set_name(self, domid, name) -> None:
        if domid in self.ref:
            for table in self.tables:
                table.set_name(domid, name)

    @rule(domid=DOMIDS, handle=HANDLES, name=st.none() | st.text(max_size=6))
    def transient(self, domid, handle, name) -> None:
        """A domain that came and went between two scans, known from xenstore alone."""
        rows = self.ref.rows()
        self.now += 0.01
        u = uuid_str(handle)
        pairs = [table.transient(domid, u, name, self.now) for table in self.tables]
        frames = [[e.frame() for e in pair] for pair in pairs]
        assert frames[0] == frames[1] == frames[2]
        assert [(e.kind, e.transient) for e in pairs[1]] == [("new", True), ("death", True)]
        assert self.fast.seq == self.ref.seq == self.orig.seq == pairs[1][1].seq
        assert self.ref.rows() == rows
        self.journal += [json.loads(f) for f in frames[1]]

    @rule(crosswise=st.booleans())
    def reload(self, crosswise) -> None:
        """The daemon restarted on its checkpoint: each twin loads a dump (through JSON)."""
        rows, fast_dump, ref_dump = self.ref.rows(), self.fast.dump(), self.ref.dump()
        assert fast_dump == ref_dump
        dumps = (ref_dump, fast_dump) if crosswise else (fast_dump, ref_dump)
        self.fast = _fast.DomainTable.load(through_json(dumps[0]))
        self.ref = reference.DomainTable.load(through_json(dumps[1]))
        assert self.fast.rows() == self.ref.rows() == rows
        assert self.fast.dump() == ref_dump

    @rule()
    def take_checkpoint(self) -> None:
        self.checkpoint = through_json(self.ref.dump())
        self.journal = []

    # -- scans ----------------------------------------------------------------------------------

    def _compare(self, data, scan) -> None:
        """Run `scan(table)` on each table: the same events, frames and seqs from all."""
        fast_events, ref_events, orig_events = (scan(table) for table in self.tables)
        # The daemon may flag a scan's events `late` before their frames are taken.
        if ref_events and data.draw(st.booleans(), label="late"):
            for e in (*fast_events, *ref_events, *orig_events):
                e.late = True
        frames = [e.frame() for e in ref_events]
        assert [e.frame() for e in fast_events] == frames
        assert [e.frame() for e in orig_events] == frames
        assert self.fast.seq == self.ref.seq == self.orig.seq
        domids = [e.domid for e in ref_events]
        assert domids == sorted(domids)
        seqs = [e.seq for e in ref_events]
        assert seqs == list(range(self.ref.seq - len(seqs) + 1, self.ref.seq + 1))
        for e in ref_events:
            self._follow(e)
        self.journal += [json.loads(f) for f in frames]

    def _follow(self, e) -> None:
        """The per-domain grammar: new (shutdown|resumed|paused|unpaused)* death released,
        a shutdown only after `resumed` when one is in force."""
        life = self.life.get(e.domid)
        if e.kind == "new":
            assert life is None, f"new for domid {e.domid} while {life.phase}"
            assert (e.incarnation is not None) == self.with_ids
            if self.with_ids:  # read as the scan took it in: the host's id
                assert e.incarnation == reference.incarnation_text(self.ids[e.domid])
            self.life[e.domid] = Life(e.uuid, "alive", paused=e.paused, incarnation=e.incarnation)
            return
        assert not e.paused, "paused on an event other than new"
        assert life is not None, f"{e.kind} for unknown domid {e.domid}"
        assert e.uuid == life.uuid, f"{e.kind} of domid {e.domid} names another incarnation"
        assert e.incarnation == life.incarnation, f"{e.kind} of {e.domid}: another incarnation"
        if e.kind == "shutdown":
            assert life.phase == "alive"
            assert life.shut is False, "a shutdown over another without `resumed`"
            life.shut = e.reason
        elif e.kind == "resumed":
            assert life.phase == "alive" and life.shut is not False
            life.shut = False
        elif e.kind in ("paused", "unpaused"):
            assert life.phase == "alive", f"{e.kind} of dead domid {e.domid}"
            assert life.paused == (e.kind == "unpaused"), f"{e.kind} repeated"
            life.paused = e.kind == "paused"
        elif e.kind == "death":
            assert life.phase == "alive", f"second death for domid {e.domid}"
            if life.shut is False or life.shut not in RESUMABLE:
                assert e.reason == (None if life.shut is False else life.shut)
            else:  # a resume may have come in between: then it does not say
                assert e.reason in (life.shut, None)
            life.phase = "dead"
            life.paused = False
        else:
            assert e.kind == "released"
            assert life.phase == "dead", f"released before death for domid {e.domid}"
            del self.life[e.domid]

    @rule(data=st.data(), step=STEPS)
    def full_scan(self, data, step) -> None:
        records = data.draw(st.permutations(list(self.host.values())))
        buf, n = self._batch(records)
        self.now += step
        ids = self._ids_args(data)
        self._compare(data, lambda table: table.diff(buf, n, self.now, **ids))
        # The table now is the host.
        rows = self.ref.rows()
        if ids.get("check_ids"):  # every incarnation is the host's, reused domids included
            assert {r["domid"]: r["unique_id"] for r in rows} == {d: self.ids[d] for d in self.host}
        assert [r["domid"] for r in rows] == sorted(self.host)
        for row in rows:
            rec = self.host[row["domid"]]
            assert (row["uuid"], row["flags"], row["cpu_time"]) == (
                uuid_str(rec.handle),
                rec.flags,
                rec.cpu_time,
            )
            want = "dead" if rec.dying else "shutdown" if rec.shutdown else "running"
            assert row["state"] == want
        self._check_replay(buf, n)
        # Scanned again with only cpu_time and the volatile flags moved: no events, and
        # the tables keep the latest values.
        if data.draw(st.booleans(), label="quiet rescan"):
            for domid, rec in list(self.host.items()):
                self._set(domid, cpu_time=rec.cpu_time + 7, flags=rec.flags ^ DOMINF_RUNNING)
            buf, n = self._batch(data.draw(st.permutations(list(self.host.values()))))
            self.now += data.draw(STEPS, label="step")
            for table in self.tables:
                assert table.diff(buf, n, self.now) == []

    def _check_replay(self, buf: bytes, n: int) -> None:
        """The checkpoint and the journal since give back the table, as events tell it."""
        replayed = reference.replay(self.checkpoint, self.journal)
        assert through_json(replayed) == replayed
        fast, ref = (impl.DomainTable.load(replayed) for impl in (_fast, reference))
        assert fast.rows() == ref.rows()
        assert fast.seq == ref.seq == self.ref.seq
        told = {r["domid"]: r for r in ref.rows()}
        now = {r["domid"]: r for r in self.ref.rows()}
        assert told.keys() == now.keys()
        for domid, row in now.items():
            keys = ("uuid", "gen", "state", "reason_code", "unique_id")
            assert [told[domid][k] for k in keys] == [row[k] for k in keys], domid
        assert [s["paused"] for s in ref.snapshot()] == [s["paused"] for s in self.ref.snapshot()]
        assert {d: r["name"] for d, r in told.items()} == self._names_told()
        # Nothing the host says is news to it (its cpu_times and flags make no false event).
        for table in (fast, ref):
            assert table.diff(buf, n, self.now) == []

    def _names_told(self) -> dict[int, str | None]:
        """Names as the checkpoint and the events since tell them (set_name says nothing)."""
        names = {r["domid"]: r["name"] for r in self.checkpoint["rows"]}
        for ev in self.journal:
            if ev.get("transient"):
                continue
            if ev["event"] == "new":
                names[ev["domid"]] = ev.get("name")
            elif ev["event"] == "released":
                del names[ev["domid"]]
            elif ev.get("name") is not None:
                names[ev["domid"]] = ev["name"]
        return names

    @rule(data=st.data(), domid=DOMIDS, most=st.integers(1, 3), step=STEPS)
    def targeted_scan(self, data, domid, most, step) -> None:
        """getinfolist(first=domid, max=most), as the 4.22 @releaseDomain/<domid> path does."""
        records = [self.host[d] for d in sorted(self.host) if d >= domid][:most]
        buf, n = self._batch(records)
        self.now += step
        ids = self._ids_args(data)
        self._compare(data, lambda table: table.diff_one(domid, buf, n, self.now, **ids))
        if ids.get("check_ids") and domid in self.host:
            (row,) = [r for r in self.ref.rows() if r["domid"] == domid]
            assert row["unique_id"] == self.ids[domid]
        row = [r for r in self.ref.rows() if r["domid"] == domid]
        assert bool(row) == (domid in self.host)

    @rule(data=st.data(), how=st.sampled_from(["duplicate", "reserved", "count"]))
    def corrupt_scan(self, data, how) -> None:
        records = data.draw(st.permutations(list(self.host.values())))
        count = len(records)
        if how == "duplicate":
            if not records:
                return
            # The copy may carry other values: they must not be committed either.
            twin = data.draw(st.sampled_from(records))
            twin = DomainRecord(twin.domid, twin.flags ^ DOMINF_DYING, twin.handle, 0)
            records.insert(data.draw(st.integers(0, len(records))), twin)
            count += 1
        elif how == "reserved":
            bad = DomainRecord(data.draw(st.integers(DOMID_FIRST_RESERVED, 0xFFFF)), 0)
            records.insert(data.draw(st.integers(0, len(records))), bad)
            count += 1
        else:
            count += data.draw(st.integers(1, 3))
        buf = pack_all(records)
        assert len(buf) == len(records) * RECORD_SIZE
        before_fast, before_ref = self.fast.rows(), self.ref.rows()
        seq = self.ref.seq
        ids = self._ids_args(data)
        for table in self.tables:
            with pytest.raises(ValueError, match="corrupt batch"):
                table.diff(buf, count, self.now + 1, **ids)
            with pytest.raises(ValueError, match="corrupt batch"):
                table.diff_one(0, buf, count, self.now + 1, **ids)
        assert self.fast.rows() == before_fast
        assert self.ref.rows() == before_ref
        assert self.fast.seq == self.ref.seq == seq

    # -- always -------------------------------------------------------------------------------

    @invariant()
    def twins_agree(self) -> None:
        rows = self.ref.rows()
        assert self.fast.rows() == rows
        assert self.orig.rows() == rows
        assert self.fast.counts() == self.ref.counts()
        assert self.fast.n_shutdown == self.ref.n_shutdown
        assert self.fast.n_paused == self.ref.n_paused
        assert len(self.fast) == len(self.ref)
        assert self.fast.snapshot() == self.ref.snapshot()
        assert self.fast.dump() == self.ref.dump()

    @invariant()
    def events_tell_the_table(self) -> None:
        rows = {r["domid"]: r for r in self.ref.rows()}
        snap = {s["domid"]: s for s in self.ref.snapshot()}
        assert rows.keys() == self.life.keys()
        for domid, life in self.life.items():
            assert rows[domid]["uuid"] == life.uuid
            assert (rows[domid]["state"] == "dead") == (life.phase == "dead")
            assert snap[domid]["paused"] == life.paused
            assert snap[domid].get("incarnation") == life.incarnation
        assert self.ref.n_paused == sum(life.paused for life in self.life.values())


ScannerMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
TestScannerModel = ScannerMachine.TestCase
