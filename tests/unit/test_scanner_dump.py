"""The journal's checkpoint on both twins: `dump()`, `DomainTable.load(dump)` and
`mux.reference.replay(dump, events)` (docs/internals.md, "Scanner API")."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scannerhelpers import IMPLS, NOW, batch, primed, rec, summary, uuid_of

from mux import _fast, reference
from mux.records import (
    DOMINF_BLOCKED,
    DOMINF_DYING,
    DOMINF_PAUSED,
    DOMINF_SHUTDOWN,
    SHUTDOWN_CRASH,
    SHUTDOWN_NONE,
    SHUTDOWN_REBOOT,
    SHUTDOWN_SUSPEND,
    make_flags,
)

PAUSED_BASE = DOMINF_BLOCKED | DOMINF_PAUSED


def busy_table(impl):
    """A table with one domain in each state that matters, names, and a seq."""
    table = primed(
        impl,
        rec(0),
        rec(2, cpu=50),
        rec(3, base=PAUSED_BASE),
        rec(5, dying=True, reason=SHUTDOWN_CRASH),
        seq=40,
        now=NOW - 10,
    )
    table.set_name(2, "web")
    table.diff(
        *batch(
            rec(0),
            rec(2, cpu=60, reason=SHUTDOWN_SUSPEND),
            rec(3, base=PAUSED_BASE, reason=SHUTDOWN_REBOOT),
            rec(5, dying=True, reason=SHUTDOWN_CRASH),
        ),
        NOW,
    )
    return table


def roundtrip(dump: dict) -> dict:
    """What the journal writes and reads back."""
    return json.loads(json.dumps(dump))


def test_dump_is_json_and_says_everything(impl):
    table = busy_table(impl)
    dump = table.dump()
    assert roundtrip(dump) == dump
    assert (dump["seq"], dump["gen"]) == (42, 4)
    rows = {r["domid"]: r for r in dump["rows"]}
    assert list(rows) == [0, 2, 3, 5]
    assert list(rows[2]) == [
        "domid",
        "uuid",
        "flags",
        "cpu_time",
        "gen",
        "state",
        "reason_code",
        "name",
        "suspend_cpu",
        "suspend_seen",
    ]
    assert rows[2] == {
        "domid": 2,
        "uuid": uuid_of(2),
        "flags": make_flags(shutdown_reason=SHUTDOWN_SUSPEND),
        "cpu_time": 60,
        "gen": 2,
        "state": "shutdown",
        "reason_code": SHUTDOWN_SUSPEND,
        "name": "web",
        "suspend_cpu": 60,
        "suspend_seen": NOW,
    }
    assert (rows[3]["state"], rows[3]["suspend_cpu"]) == ("shutdown", None)
    assert rows[5]["state"] == "dead" and rows[5]["reason_code"] == SHUTDOWN_CRASH


@pytest.mark.parametrize("source", IMPLS)
def test_load_gives_the_table_back(impl, source):
    table = busy_table(source)
    loaded = impl.DomainTable.load(roundtrip(table.dump()), suspend_window=0.5)
    assert loaded.rows() == table.rows()
    assert loaded.snapshot() == table.snapshot()
    assert (loaded.seq, len(loaded), loaded.counts()) == (table.seq, len(table), table.counts())
    assert (loaded.n_shutdown, loaded.n_paused) == (2, 1)
    assert loaded.suspend_window == 0.5
    assert loaded.dump() == table.dump()


@pytest.mark.parametrize("source", IMPLS)
def test_a_loaded_table_goes_on_as_the_original(impl, source):
    """Same events from the same batches, suspend window included."""
    later = [
        batch(rec(0), rec(2, cpu=60, dying=True), rec(3, base=PAUSED_BASE, reason=SHUTDOWN_REBOOT)),
        batch(rec(0), rec(3, reason=SHUTDOWN_REBOOT), rec(7)),
        batch(rec(0), rec(7, inc=1)),
    ]
    for step in range(len(later) + 1):
        original = busy_table(source)
        for buf, n in later[:step]:
            original.diff(buf, n, NOW)
        loaded = impl.DomainTable.load(roundtrip(original.dump()))
        for buf, n in later[step:]:
            want = [e.frame() for e in original.diff(buf, n, NOW + 0.2)]
            assert [e.frame() for e in loaded.diff(buf, n, NOW + 0.2)] == want
            assert loaded.rows() == original.rows()
    # The suspend seen at NOW holds at NOW + 0.2 for a loaded table too.
    loaded = impl.DomainTable.load(roundtrip(busy_table(source).dump()))
    events = loaded.diff(
        *batch(rec(0), rec(3, base=PAUSED_BASE, reason=SHUTDOWN_REBOOT)), NOW + 0.2
    )
    assert ("death", 2, "suspend") in summary(events)


def test_load_of_a_dump_without_what_was_seen(impl):
    """A suspended domain that no scan of this history saw suspended: at its death the
    daemon cannot tell, until a scan sees it."""
    dump = busy_table(impl).dump()
    row = next(r for r in dump["rows"] if r["domid"] == 2)
    row["suspend_cpu"] = row["suspend_seen"] = None
    del row["gen"]  # optional: 0 when a dump does not say
    table = impl.DomainTable.load(dump)
    assert table.rows()[1]["gen"] == 0
    assert summary(table.diff(*batch(rec(0), rec(2, cpu=60, dying=True)), NOW)) == [
        ("death", 2, None),
        ("death", 3, "reboot"),
        ("released", 3, None),
        ("released", 5, None),
    ]
    table = impl.DomainTable.load(dump)
    assert table.diff_one(2, *batch(rec(2, cpu=60, reason=SHUTDOWN_SUSPEND)), NOW + 1) == []
    assert table.rows()[1]["suspend_seen"] == NOW + 1
    assert summary(table.diff_one(2, *batch(rec(2, cpu=60, dying=True)), NOW + 1)) == [
        ("death", 2, "suspend")
    ]


def bad_dumps():
    good = busy_table(reference).dump()

    def with_row(which, **changes):
        d = roundtrip(good)
        row = next(r for r in d["rows"] if r["domid"] == which)
        for k, v in changes.items():
            if v is KeyError:
                del row[k]
            else:
                row[k] = v
        return d

    yield [], "not an object"
    yield {**good, "seq": -1}, "seq -1 is not an integer"
    yield {**good, "seq": True}, "seq True is not an integer"
    yield {k: v for k, v in good.items() if k != "gen"}, "has no 'gen'"
    yield {**good, "rows": {}}, "rows is not a list"
    yield {**good, "rows": [*good["rows"], 7]}, "row 4 is not an object"
    yield {**good, "rows": [*good["rows"], good["rows"][0]]}, "domid 0 has two rows"
    yield with_row(2, domid=0x7FF0), "domid 32752 is not an integer"
    yield with_row(2, uuid="nope"), "uuid 'nope' is not a UUID"
    yield with_row(2, uuid=None), "uuid None is not a UUID"
    yield with_row(2, flags=1 << 32), "flags"
    yield with_row(2, cpu_time=-5), "cpu_time -5"
    yield with_row(2, gen=5), "gen 5 is not an integer from 0 to 4"
    yield with_row(2, state="zombie"), "state 'zombie' is not one of"
    yield with_row(2, reason_code=256), "reason_code 256"
    yield with_row(2, name=5), "name 5 is not a string"
    yield with_row(2, state=KeyError), "has no 'state'"
    yield with_row(0, flags=DOMINF_SHUTDOWN), "running, but flags"
    yield with_row(0, reason_code=SHUTDOWN_CRASH), "running, but flags"
    yield with_row(2, reason_code=SHUTDOWN_CRASH), "shut down (3), but flags"
    yield with_row(2, flags=DOMINF_DYING | DOMINF_SHUTDOWN | 2 << 16), "but flags"
    yield with_row(5, flags=make_flags()), "dead, but flags"
    yield with_row(0, suspend_cpu=0, suspend_seen=NOW), "while not suspended"
    yield with_row(2, suspend_cpu=59), "suspend_cpu 59 is not its cpu_time"
    yield with_row(2, suspend_cpu=None), "suspend_cpu None is not its cpu_time"
    yield with_row(2, suspend_seen="then"), "suspend_seen 'then' is not a time"
    yield with_row(2, suspend_seen=float("nan")), "suspend_seen nan is not a time"


@pytest.mark.parametrize(("dump", "message"), list(bad_dumps()))
def test_load_refuses_a_bad_dump_by_name(impl, dump, message):
    with pytest.raises(ValueError, match=r"^bad table dump: ") as info:
        impl.DomainTable.load(dump)
    assert message in str(info.value)


# -- replay ---------------------------------------------------------------------------------------


def frames(events) -> list[dict]:
    """The events as the journal holds them: their frames, parsed."""
    return [json.loads(e.frame()) for e in events]


@pytest.mark.parametrize("source", IMPLS)
def test_replay_brings_a_dump_to_the_table_after_the_events(impl, source):
    table = busy_table(source)
    dump = roundtrip(table.dump())
    events = []
    events += table.diff(*batch(rec(0), rec(2, cpu=60, dying=True), rec(8, base=PAUSED_BASE)), NOW)
    table.set_name(8, "db")
    events += table.diff(*batch(rec(0), rec(2, cpu=60, dying=True), rec(8, reason=1)), NOW + 1)
    events += table.transient(9, uuid_of(9), "blink", NOW + 2)
    events += table.diff(*batch(rec(0), rec(8, reason=1)), NOW + 3)
    assert summary(events[-1:]) == [("released", 2, None)]
    replayed = reference.replay(dump, frames(events))
    assert roundtrip(replayed) == replayed
    loaded = impl.DomainTable.load(replayed)
    assert loaded.seq == table.seq
    assert loaded.snapshot() == table.snapshot()  # names and paused included
    assert [(r["domid"], r["gen"], r["state"]) for r in loaded.rows()] == [
        (r["domid"], r["gen"], r["state"]) for r in table.rows()
    ]
    row8 = next(r for r in replayed["rows"] if r["domid"] == 8)
    # Born after the checkpoint: what no record can make a false event of.
    assert row8["cpu_time"] == 0 and row8["suspend_cpu"] is None
    assert row8["flags"] == make_flags(shutdown_reason=1, base=0)
    # ...and the next scan of the same host says nothing.
    assert loaded.diff(*batch(rec(0), rec(8, reason=1, cpu=77)), NOW + 4) == []


def test_replay_skips_what_the_dump_has_and_flags_rows_from_events():
    table = busy_table(reference)
    before = table.dump()
    events = table.diff(*batch(rec(0), rec(3, base=PAUSED_BASE)), NOW)
    assert summary(events) == [
        ("death", 2, "suspend"),
        ("released", 2, None),
        ("resumed", 3, None),
        ("released", 5, None),
    ]
    events = frames(events)
    after = table.dump()
    assert reference.replay(after, events) == after  # all at or below its seq
    assert reference.replay(before, []) == before
    replayed = reference.replay(before, events)
    row3 = next(r for r in replayed["rows"] if r["domid"] == 3)
    # Resumed after the checkpoint: flags made from its state (paused, from the dump's).
    assert row3["flags"] == make_flags(base=DOMINF_PAUSED) and row3["cpu_time"] == 0
    assert replayed["seq"] == after["seq"]
    # An unpause and a death later: paused follows the events, not the dump.
    more = frames(table.diff(*batch(rec(0), rec(3)), NOW))
    assert [e["event"] for e in more] == ["unpaused"]
    more += frames(table.diff(*batch(rec(0), rec(3, dying=True)), NOW))
    replayed = reference.replay(before, events + more)
    row3 = next(r for r in replayed["rows"] if r["domid"] == 3)
    assert row3["state"] == "dead" and row3["flags"] == DOMINF_DYING | SHUTDOWN_NONE << 16


def bad_journals():
    table = busy_table(reference)
    dump = table.dump()
    good = frames(table.diff(*batch(rec(0), rec(2, cpu=60, dying=True), rec(8)), NOW))
    assert [e["event"] for e in good] == ["death", "death", "released", "released", "new"]
    yield dump, [good[0], good[2]], "seq 45 follows 43 (events are missing)"
    yield dump, [{**good[0], "seq": "43"}], "seq '43' is not an integer"
    yield dump, ["death"], "event 0 is not an object"
    yield dump, [{**good[0], "event": "exploded"}], "'exploded' is not an event kind"
    yield dump, [{**good[0], "domid": -1}], "domid -1 is out of range"
    yield dump, [{**good[0], "uuid": "x"}], "uuid 'x' is not a UUID"
    yield dump, [{**good[0], "reason": "nap"}], "reason 'nap' is not a shutdown reason"
    yield dump, [{**good[0], "name": 5}], "name 5 is not a string"
    yield dump, [{**good[0], "domid": 4}], "death for domid 4"
    yield dump, [{**good[0], "uuid": uuid_of(2, inc=9)}], "which the table does not hold"
    yield dump, [{**good[0], "event": "released"}], "released for domid 2"
    yield dump, [{**good[0], "event": "resumed", "domid": 0, "uuid": uuid_of(0)}], "resumed"
    yield dump, [{**good[0], "event": "new", "domid": 0}], "new for domid 0, which still holds"
    yield {**dump, "seq": -3}, good, "bad table dump: seq -3"


@pytest.mark.parametrize(("dump", "events", "message"), list(bad_journals()))
def test_replay_refuses_a_journal_that_does_not_fit(dump, events, message):
    with pytest.raises(ValueError) as info:
        reference.replay(dump, events)
    assert message in str(info.value)


def test_fast_takes_the_reference_dump_checks():
    """One check of a dump for both twins: the specification's."""
    with pytest.raises(ValueError, match="bad table dump: it is not an object"):
        _fast.DomainTable.load(None)


@settings(deadline=None, max_examples=300)
@given(
    text=st.uuids().map(str)
    | st.uuids().map(lambda u: str(u).upper())
    | st.text(alphabet="0123456789abcdefABCDEF-{} _xz", min_size=30, max_size=40)
    | st.uuids().map(lambda u: str(u)[:-1] + " ")
)
def test_the_quick_uuid_reading_is_uuid_uuids(text):
    """Dumps and journals hold a UUID per row and event: read without uuid.UUID's cost, but
    exactly as it reads them (the same bytes, or an error)."""
    try:
        want = uuid.UUID(text).bytes
    except ValueError:
        with pytest.raises(ValueError):
            reference._handle_of(text)
        return
    assert reference._handle_of(text) == want
    assert reference._uuid_text(text) == str(uuid.UUID(text))


@pytest.mark.parametrize("size", [1, 2, 3, 512])
def test_dump_batches_are_the_dump_a_batch_of_rows_at_a_time(impl, size):
    table = busy_table(impl)
    whole = table.dump()
    head, batches = table.dump_batches(size)
    batches = list(batches)
    assert head == {"seq": whole["seq"], "gen": whole["gen"]}
    assert [row for b in batches for row in b] == whole["rows"]
    assert all(1 <= len(b) <= size for b in batches)
    assert len(batches) == -(-len(whole["rows"]) // size)


def test_dump_batches_are_the_table_at_the_call_whatever_it_does_after(impl):
    # The checkpoint's thread reads the batches while the loop goes on scanning.
    table = busy_table(impl)
    whole = table.dump()
    head, batches = table.dump_batches(2)
    first = next(batches)
    table.set_name(3, "renamed")
    events = table.diff(*batch(rec(0), rec(3, base=PAUSED_BASE), rec(9)), NOW + 1)
    assert events and table.dump() != whole
    assert first + [row for b in batches for row in b] == whole["rows"]
    assert head["seq"] == whole["seq"] < table.seq


def test_an_empty_table_dumps_no_batch(impl):
    head, batches = impl.DomainTable(seq=7).dump_batches()
    assert head == {"seq": 7, "gen": 0} and list(batches) == []
