"""A model host under random lifecycle changes, scanned by both twins.

At every step mux._fast and mux.reference must produce the same events (the same frame
bytes) and the same rows(); the events must follow the event model's grammar per domain
(new, then shutdown/resumed, then exactly one death, then released), and after every full
scan the table must agree with the host.
"""

from __future__ import annotations

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
VOLATILE = DOMINF_RUNNING | DOMINF_BLOCKED | DOMINF_PAUSED


class Life:
    """What the events have said about one domain incarnation so far."""

    def __init__(self, uuid: str, phase: str, shut: str | bool | None = False) -> None:
        self.uuid = uuid
        self.phase = phase  # alive or dead
        self.shut = shut  # False, or the reason (name or None) of the shutdown in force


class ScannerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.host: dict[int, DomainRecord] = {}
        self.fast = _fast.DomainTable(seq=100)
        self.ref = reference.DomainTable(seq=100)
        self.life: dict[int, Life] = {}
        self.now = 1764090000.0
        self.rng = random.Random(0)

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

    @initialize(
        start=st.dictionaries(DOMIDS, st.tuples(HANDLES, CPU, st.none() | REASONS), max_size=6),
        dying=st.sets(DOMIDS, max_size=2),
        seed=st.integers(0, 2**32 - 1),
    )
    def prime(self, start, dying, seed) -> None:
        self.rng = random.Random(seed)
        for domid, (handle, cpu, reason) in start.items():
            flags = make_flags(shutdown_reason=reason, dying=domid in dying)
            self.host[domid] = DomainRecord(domid, flags, handle, cpu)
        records = list(self.host.values())
        self.rng.shuffle(records)
        buf, n = self._batch(records)
        self.fast.prime(buf, n)
        self.ref.prime(buf, n)
        for row in self.ref.rows():
            shut = row["reason"] if row["state"] == "shutdown" else False
            phase = "dead" if row["state"] == "dead" else "alive"
            self.life[row["domid"]] = Life(row["uuid"], phase, shut)

    def _pick(self, data, *, alive_only=False) -> int:
        domids = sorted(d for d, r in self.host.items() if not (alive_only and r.dying))
        return data.draw(st.sampled_from(domids), label="domid")

    def _any_alive(self) -> bool:
        return any(not r.dying for r in self.host.values())

    @precondition(lambda self: len(self.host) < len(ALL_DOMIDS))
    @rule(data=st.data(), handle=HANDLES, cpu=CPU)
    def create(self, data, handle, cpu) -> None:
        free = [d for d in ALL_DOMIDS if d not in self.host]
        domid = data.draw(st.sampled_from(free), label="domid")
        self.host[domid] = DomainRecord(domid, make_flags(), handle, cpu)

    @precondition(lambda self: self.host)
    @rule(data=st.data(), handle=HANDLES, cpu=CPU, reason=st.none() | REASONS)
    def reuse_domid(self, data, handle, cpu, reason) -> None:
        """The domain went and another took its domid between two scans."""
        domid = self._pick(data)
        flags = make_flags(shutdown_reason=reason)
        self.host[domid] = DomainRecord(domid, flags, handle, cpu)

    @precondition(_any_alive)
    @rule(data=st.data(), reason=REASONS)
    def shutdown(self, data, reason) -> None:
        domid = self._pick(data, alive_only=True)
        flags = self.host[domid].flags & ~REASON_BITS
        self._set(domid, flags=flags | DOMINF_SHUTDOWN | (reason << DOMINF_SHUTDOWNSHIFT))

    @precondition(_any_alive)
    @rule(data=st.data(), destroy=st.booleans())
    def resume(self, data, destroy) -> None:
        """Resumed in place (no firing); maybe destroyed too before the next scan."""
        domid = self._pick(data, alive_only=True)
        flags = make_flags(base=self.host[domid].flags & VOLATILE, dying=destroy)
        self._set(domid, flags=flags)

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
            elif op == "remove":
                del self.host[domid]
            elif op == "reuse":
                self.host[domid] = DomainRecord(domid, make_flags(), handle, 5)
            elif op == "dying":
                self._set(domid, flags=rec.flags | DOMINF_DYING)
            elif op == "shutdown" and not rec.dying:
                flags = (rec.flags & ~REASON_BITS) | DOMINF_SHUTDOWN
                self._set(domid, flags=flags | (reason << DOMINF_SHUTDOWNSHIFT))
            elif op == "resume" and not rec.dying:
                self._set(domid, flags=make_flags(base=rec.flags & VOLATILE))

    @rule(domid=DOMIDS, name=st.text(max_size=6))
    def set_name(self, domid, name) -> None:
        if domid in self.ref:
            self.fast.set_name(domid, name)
            self.ref.set_name(domid, name)

    # -- scans ----------------------------------------------------------------------------------

    def _compare(self, fast_events, ref_events) -> None:
        assert [e.frame() for e in fast_events] == [e.frame() for e in ref_events]
        assert self.fast.seq == self.ref.seq
        domids = [e.domid for e in ref_events]
        assert domids == sorted(domids)
        seqs = [e.seq for e in ref_events]
        assert seqs == list(range(self.ref.seq - len(seqs) + 1, self.ref.seq + 1))
        for e in ref_events:
            self._follow(e)

    def _follow(self, e) -> None:
        """The per-domain grammar: new (shutdown|resumed)* death released, once each."""
        life = self.life.get(e.domid)
        if e.kind == "new":
            assert life is None, f"new for domid {e.domid} while {life.phase}"
            self.life[e.domid] = Life(e.uuid, "alive")
            return
        assert life is not None, f"{e.kind} for unknown domid {e.domid}"
        assert e.uuid == life.uuid, f"{e.kind} of domid {e.domid} names another incarnation"
        if e.kind == "shutdown":
            assert life.phase == "alive"
            assert life.shut is False or life.shut != e.reason, "shutdown repeated"
            life.shut = e.reason
        elif e.kind == "resumed":
            assert life.phase == "alive" and life.shut is not False
            life.shut = False
        elif e.kind == "death":
            assert life.phase == "alive", f"second death for domid {e.domid}"
            assert e.reason == (None if life.shut is False else life.shut)
            life.phase = "dead"
        else:
            assert e.kind == "released"
            assert life.phase == "dead", f"released before death for domid {e.domid}"
            del self.life[e.domid]

    @rule(data=st.data())
    def full_scan(self, data) -> None:
        records = data.draw(st.permutations(list(self.host.values())))
        buf, n = self._batch(records)
        self.now += 0.25
        self._compare(self.fast.diff(buf, n, self.now), self.ref.diff(buf, n, self.now))
        # The table now is the host.
        rows = self.ref.rows()
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
        # Scanned again with only cpu_time and the volatile flags moved: no events, and
        # both tables keep the latest values.
        if data.draw(st.booleans(), label="quiet rescan"):
            for domid, rec in list(self.host.items()):
                self._set(domid, cpu_time=rec.cpu_time + 7, flags=rec.flags ^ DOMINF_PAUSED)
            buf, n = self._batch(data.draw(st.permutations(list(self.host.values()))))
            self.now += 0.25
            assert self.fast.diff(buf, n, self.now) == []
            assert self.ref.diff(buf, n, self.now) == []

    @rule(domid=DOMIDS, most=st.integers(1, 3))
    def targeted_scan(self, domid, most) -> None:
        """getinfolist(first=domid, max=most), as the 4.22 @releaseDomain/<domid> path does."""
        records = [self.host[d] for d in sorted(self.host) if d >= domid][:most]
        buf, n = self._batch(records)
        self.now += 0.25
        fast_events = self.fast.diff_one(domid, buf, n, self.now)
        ref_events = self.ref.diff_one(domid, buf, n, self.now)
        assert {e.domid for e in ref_events} <= {domid}
        self._compare(fast_events, ref_events)
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
        for table in (self.fast, self.ref):
            with pytest.raises(ValueError, match="corrupt batch"):
                table.diff(buf, count, self.now)
            with pytest.raises(ValueError, match="corrupt batch"):
                table.diff_one(0, buf, count, self.now)
        assert self.fast.rows() == before_fast
        assert self.ref.rows() == before_ref
        assert self.fast.seq == self.ref.seq == seq

    # -- always -------------------------------------------------------------------------------

    @invariant()
    def twins_agree(self) -> None:
        assert self.fast.rows() == self.ref.rows()
        assert self.fast.counts() == self.ref.counts()
        assert self.fast.n_shutdown == self.ref.n_shutdown
        assert len(self.fast) == len(self.ref)
        assert self.fast.snapshot() == self.ref.snapshot()

    @invariant()
    def events_tell_the_table(self) -> None:
        rows = {r["domid"]: r for r in self.ref.rows()}
        assert rows.keys() == self.life.keys()
        for domid, life in self.life.items():
            assert rows[domid]["uuid"] == life.uuid
            assert (rows[domid]["state"] == "dead") == (life.phase == "dead")


ScannerMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
TestScannerModel = ScannerMachine.TestCase
