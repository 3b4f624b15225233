"""The scanner's rules (docs/protocol.md, "Event model"), run on both twins: mux._fast
and mux.reference. tests/unit/test_scanner_model.py compares the twins step by step."""

from __future__ import annotations

import gc
import json
import mmap
import random
import sys
import time
import types
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scannerhelpers import NOW, batch, primed, rec, summary, uuid_of

from mux import _fast, protocol, reference
from mux.bench import _floor
from mux.records import (
    DOMID_FIRST_RESERVED,
    DOMINF_BLOCKED,
    DOMINF_PAUSED,
    DOMINF_RUNNING,
    RECORD_SIZE,
    SHUTDOWN_CRASH,
    SHUTDOWN_POWEROFF,
    SHUTDOWN_REBOOT,
    SHUTDOWN_SUSPEND,
    DomainRecord,
    make_flags,
    pack_all,
)

# -- prime, new, and what the table says ------------------------------------------------------


def test_prime_emits_nothing_and_fills_the_table(impl):
    table = primed(impl, rec(0), rec(3, reason=SHUTDOWN_SUSPEND), rec(5, dying=True))
    assert table.seq == 0
    assert len(table) == 3
    assert 3 in table and 4 not in table and "3" not in table
    assert table.counts() == {"running": 1, "shutdown": 1, "dead": 1}
    assert table.n_shutdown == 1
    row = {"reason": None, "name": None, "paused": False}
    assert table.snapshot() == [
        {**row, "domid": 0, "uuid": uuid_of(0), "state": "running"},
        {**row, "domid": 3, "uuid": uuid_of(3), "state": "shutdown", "reason": "suspend"},
        {**row, "domid": 5, "uuid": uuid_of(5), "state": "dead"},
    ]
    # An unchanged scan after prime says nothing.
    assert table.diff(*batch(rec(0), rec(3, reason=SHUTDOWN_SUSPEND), rec(5, dying=True))) == []


def test_prime_replaces_the_table(impl):
    table = primed(impl, rec(1), rec(2))
    table.set_name(1, "vm1")
    table.prime(*batch(rec(2), rec(7)))
    assert [r["domid"] for r in table.rows()] == [2, 7]
    assert table.get_name(1) is None
    assert table.counts() == {"running": 2, "shutdown": 0, "dead": 0}


def test_new_domain(impl):
    table = primed(impl, rec(0))
    events = table.diff(*batch(rec(0), rec(4)), NOW)
    assert summary(events) == [("new", 4, None)]
    ev = events[0]
    assert (ev.seq, ev.uuid, ev.time, ev.name) == (1, uuid_of(4), NOW, None)
    assert table.seq == 1 and len(table) == 2


def test_first_seen_shut_down_gives_new_then_shutdown(impl):
    table = primed(impl)
    events = table.diff(*batch(rec(2, reason=SHUTDOWN_CRASH)), NOW)
    assert summary(events) == [("new", 2, None), ("shutdown", 2, "crash")]
    assert [e.seq for e in events] == [1, 2]


def test_first_seen_dying(impl):
    table = primed(impl)
    events = table.diff(*batch(rec(2, dying=True), rec(3, dying=True, reason=SHUTDOWN_REBOOT)))
    assert summary(events) == [
        ("new", 2, None),
        ("death", 2, None),
        ("new", 3, None),
        ("shutdown", 3, "reboot"),
        ("death", 3, "reboot"),
    ]
    assert table.counts() == {"running": 0, "shutdown": 0, "dead": 2}


# -- shutdown and resume -----------------------------------------------------------------------


def test_shutdown_then_reason_change_is_a_resume_in_between(impl):
    table = primed(impl, rec(1))
    assert summary(table.diff(*batch(rec(1, reason=SHUTDOWN_SUSPEND)))) == [
        ("shutdown", 1, "suspend")
    ]
    assert table.n_shutdown == 1
    assert table.diff(*batch(rec(1, reason=SHUTDOWN_SUSPEND))) == []
    # Xen keeps a shutdown's first reason until a resume resets it: another reason means
    # the domain was resumed (which fires nothing) and shut down again.
    assert summary(table.diff(*batch(rec(1, reason=SHUTDOWN_CRASH)))) == [
        ("resumed", 1, None),
        ("shutdown", 1, "crash"),
    ]
    assert table.snapshot([1])[0]["reason"] == "crash"
    assert table.n_shutdown == 1


def test_volatile_flags_and_cpu_time_make_no_event(impl):
    table = primed(impl, rec(1, cpu=10, base=DOMINF_RUNNING))
    assert table.diff(*batch(rec(1, cpu=20, base=DOMINF_BLOCKED))) == []
    row = table.rows()[0]
    # ...but the table keeps the latest values.
    assert row["cpu_time"] == 20
    assert row["flags"] == make_flags(base=DOMINF_BLOCKED)


def test_resumed(impl):
    table = primed(impl, rec(1, reason=SHUTDOWN_SUSPEND))
    events = table.diff(*batch(rec(1)))
    assert summary(events) == [("resumed", 1, None)]
    assert table.n_shutdown == 0
    assert table.snapshot()[0]["state"] == "running"


def test_resumed_then_destroyed_dies_without_reason(impl):
    table = primed(impl, rec(1, reason=SHUTDOWN_SUSPEND))
    table.diff(*batch(rec(1)))
    assert summary(table.diff(*batch(rec(1, dying=True)))) == [("death", 1, None)]


# -- death ---------------------------------------------------------------------------------------


def test_death_when_dying_set_carries_the_shutdown_reason(impl):
    table = primed(impl, rec(1), rec(2, reason=SHUTDOWN_POWEROFF))
    events = table.diff(*batch(rec(1, dying=True, reason=SHUTDOWN_CRASH), rec(2, dying=True)))
    # domid 1: shut down and dying in one go; domid 2: the flag went but the reason of
    # the last scan is still the one it dies with (no `resumed` for a dying domain).
    assert summary(events) == [
        ("shutdown", 1, "crash"),
        ("death", 1, "crash"),
        ("death", 2, "poweroff"),
    ]
    assert table.counts() == {"running": 0, "shutdown": 0, "dead": 2}
    assert [s["reason"] for s in table.snapshot()] == ["crash", "poweroff"]


def test_zombie_stays_dead_without_more_events(impl):
    table = primed(impl, rec(1))
    table.diff(*batch(rec(1, dying=True)))
    for cpu in (5, 6, 7):
        assert table.diff(*batch(rec(1, dying=True, cpu=cpu, reason=SHUTDOWN_REBOOT))) == []
    assert table.snapshot()[0]["state"] == "dead"


def test_dead_then_gone_gives_released_only(impl):
    table = primed(impl, rec(0), rec(1, dying=True, reason=SHUTDOWN_POWEROFF))
    assert summary(table.diff(*batch(rec(0)))) == [("released", 1, None)]
    assert 1 not in table and len(table) == 1


def test_running_then_gone_gives_death_and_released(impl):
    table = primed(impl, rec(0), rec(1), rec(2, reason=SHUTDOWN_REBOOT))
    events = table.diff(*batch(rec(0)))
    assert summary(events) == [
        ("death", 1, None),
        ("released", 1, None),
        ("death", 2, "reboot"),
        ("released", 2, None),
    ]
    assert len(table) == 1 and table.counts()["running"] == 1


def test_empty_batch_means_every_domain_is_gone(impl):
    table = primed(impl, rec(3), rec(9))
    assert summary(table.diff(b"", 0)) == [
        ("death", 3, None),
        ("released", 3, None),
        ("death", 9, None),
        ("released", 9, None),
    ]
    assert len(table) == 0
    assert summary(table.diff(*batch(rec(3)))) == [("new", 3, None)]


@pytest.mark.parametrize("how", ["uuid", "cpu_time"])
def test_new_incarnation_on_the_same_domid(impl, how):
    table = primed(impl, rec(1, cpu=500, reason=SHUTDOWN_REBOOT))
    table.set_name(1, "old")
    new = rec(1, inc=1, cpu=600) if how == "uuid" else rec(1, cpu=100)
    events = table.diff(*batch(new))
    assert summary(events) == [("death", 1, "reboot"), ("released", 1, None), ("new", 1, None)]
    old_uuid = uuid_of(1)
    assert [e.uuid for e in events] == [old_uuid, old_uuid, str(uuid.UUID(bytes=new.handle))]
    # The old incarnation's name goes with it.
    assert [e.name for e in events] == ["old", "old", None]
    assert table.get_name(1) is None
    gens = [r["gen"] for r in table.rows()]
    assert gens == [2]


def test_new_incarnation_of_a_dead_domain_is_released_not_killed_again(impl):
    table = primed(impl, rec(1, dying=True))
    events = table.diff(*batch(rec(1, inc=1, dying=True, reason=SHUTDOWN_CRASH)))
    assert summary(events) == [
        ("released", 1, None),
        ("new", 1, None),
        ("shutdown", 1, "crash"),
        ("death", 1, "crash"),
    ]


def test_dead_domain_no_longer_dying_is_another_incarnation(impl):
    # Same UUID, cpu_time not lower: only the cleared `dying` flag (which Xen never
    # clears) tells that the domain was destroyed and created again between two scans.
    table = primed(impl, rec(1, cpu=0, dying=True, reason=SHUTDOWN_REBOOT))
    events = table.diff(*batch(rec(1, cpu=40)))
    assert summary(events) == [("released", 1, None), ("new", 1, None)]
    assert table.snapshot()[0]["state"] == "running"


# -- order and numbering -------------------------------------------------------------------------


def test_events_come_in_domid_order_whatever_the_record_order(impl):
    table = primed(impl, *[rec(d) for d in range(20)])
    after = [rec(d, reason=SHUTDOWN_SUSPEND) if d % 3 == 0 else rec(d) for d in range(1, 20)]
    after += [rec(25), rec(21, dying=True)]
    random.Random(7).shuffle(after)
    events = table.diff(*batch(*after))
    domids = [e.domid for e in events]
    assert domids == sorted(domids)
    assert summary(events)[:3] == [
        ("death", 0, None),
        ("released", 0, None),
        ("shutdown", 3, "suspend"),
    ]
    assert summary(events)[-3:] == [("new", 21, None), ("death", 21, None), ("new", 25, None)]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_seq_starts_where_told_and_keeps_rising(impl):
    table = primed(impl, rec(1), seq=40)
    assert table.seq == 40
    events = table.diff(*batch(rec(1, reason=SHUTDOWN_SUSPEND)), NOW)
    assert [e.seq for e in events] == [41]
    events = table.diff(*batch(rec(1), rec(2)), NOW + 1)
    assert [e.seq for e in events] == [42, 43]
    assert table.seq == 43
    assert {e.time for e in events} == {NOW + 1}


def test_time_defaults_to_now(impl):
    table = primed(impl)
    before = time.time()
    (event,) = table.diff(*batch(rec(1)))
    assert before <= event.time <= time.time()


def test_gen_numbers_incarnations_in_domid_order(impl):
    table = primed(impl, rec(9), rec(2))  # records out of order
    assert [(r["domid"], r["gen"]) for r in table.rows()] == [(2, 1), (9, 2)]
    table.diff(*batch(rec(9), rec(5), rec(2, inc=1), rec(3)))
    assert [(r["domid"], r["gen"]) for r in table.rows()] == [(2, 3), (3, 4), (5, 5), (9, 2)]


def test_fast_allocates_nothing_per_unchanged_domain():
    # cpu_time and the volatile flags move for every domain, as they do between real scans;
    # some domains sit paused, some suspended (seen again by every scan), some dead.
    n = 2000

    def host(cpu, base):
        return [
            rec(
                d,
                cpu=cpu + d,
                base=base | (DOMINF_PAUSED if d % 3 == 0 else 0),
                reason=SHUTDOWN_SUSPEND if d % 7 == 0 else None,
                dying=d % 11 == 0,
            )
            for d in range(n)
        ]

    table = _fast.DomainTable()
    table.prime(*batch(*host(1, DOMINF_BLOCKED)))
    assert table.n_paused > 0 and table.n_shutdown > 0
    later = pack_all(host(2, DOMINF_RUNNING))
    assert table.diff(later, n) == []
    again = pack_all(host(3, DOMINF_BLOCKED))
    gc.disable()
    try:
        before = sys.getallocatedblocks()
        events = table.diff(again, n, NOW)
        grown = sys.getallocatedblocks() - before
    finally:
        gc.enable()
    assert events == []
    assert grown < 10, f"{grown} Python blocks allocated by an unchanged scan of {n} domains"
    assert table.rows()[-1]["cpu_time"] == 3 + n - 1
    assert table.rows()[7]["suspend_seen"] == NOW


# -- diff_one: the targeted scan of Xen 4.22's @releaseDomain/<domid> ------------------------


def test_diff_one_sees_only_its_domid(impl):
    table = primed(impl, rec(1), rec(2), rec(3))
    # getinfolist(first=2, max=2) after 2 shut down; 3 is also in the batch, changed, and
    # 1 is not in it at all: neither may be reported.
    events = table.diff_one(2, *batch(rec(2, reason=SHUTDOWN_POWEROFF), rec(3, dying=True)))
    assert summary(events) == [("shutdown", 2, "poweroff")]
    assert [s["state"] for s in table.snapshot()] == ["running", "shutdown", "running"]


def test_diff_one_gone_when_the_next_domid_answers(impl):
    table = primed(impl, rec(1), rec(2), rec(3))
    # getinfolist(first=2, max=1) returns domid 3 when 2 is gone.
    events = table.diff_one(2, *batch(rec(3)))
    assert summary(events) == [("death", 2, None), ("released", 2, None)]
    assert [r["domid"] for r in table.rows()] == [1, 3]
    assert table.diff_one(2, b"", 0) == []  # still gone, nothing more to say


def test_diff_one_new_domain_and_new_incarnation(impl):
    table = primed(impl, rec(1))
    assert summary(table.diff_one(4, *batch(rec(4)))) == [("new", 4, None)]
    assert summary(table.diff_one(4, *batch(rec(4, inc=1)))) == [
        ("death", 4, None),
        ("released", 4, None),
        ("new", 4, None),
    ]
    # A full scan afterwards agrees that nothing else changed.
    assert table.diff(*batch(rec(1), rec(4, inc=1))) == []


def test_diff_one_then_full_diff_keep_cpu_time(impl):
    table = primed(impl, rec(1, cpu=100))
    assert table.diff_one(1, *batch(rec(1, cpu=200))) == []
    assert table.rows()[0]["cpu_time"] == 200
    # 150 < 200: another incarnation, although it is above what prime saw.
    assert [e.kind for e in table.diff(*batch(rec(1, cpu=150)))] == ["death", "released", "new"]


@pytest.mark.parametrize("domid", [-1, DOMID_FIRST_RESERVED])
def test_diff_one_rejects_bad_domids(impl, domid):
    table = primed(impl, rec(1))
    with pytest.raises(ValueError, match="out of range"):
        table.diff_one(domid, *batch(rec(1)))


# -- names, snapshot, rows -----------------------------------------------------------------------


def test_names(impl):
    table = primed(impl, rec(1), rec(2))
    with pytest.raises(KeyError):
        table.set_name(5, "nope")
    table.set_name(2, "web-2")
    assert table.get_name(2) == "web-2" and table.get_name(1) is None and table.get_name(5) is None
    (event,) = table.diff(*batch(rec(1), rec(2, reason=SHUTDOWN_SUSPEND)))
    assert event.name == "web-2"
    assert b'"name": "web-2"' in event.frame()
    table.set_name(2, None)
    assert table.get_name(2) is None


def test_snapshot_filters_sorts_and_skips_unknown(impl):
    table = primed(impl, rec(1), rec(4, reason=SHUTDOWN_SUSPEND), rec(8))
    table.set_name(8, "db")
    snap = table.snapshot([8, 99, 1, 8, DOMID_FIRST_RESERVED + 5])
    assert [s["domid"] for s in snap] == [1, 8]
    assert snap[1] == {
        "domid": 8,
        "uuid": uuid_of(8),
        "state": "running",
        "reason": None,
        "name": "db",
        "paused": False,
    }
    assert table.snapshot([]) == []


def test_rows_carry_every_field(impl):
    table = primed(impl, rec(6, cpu=77, reason=SHUTDOWN_CRASH))
    (row,) = table.rows()
    assert row == {
        "domid": 6,
        "uuid": uuid_of(6),
        "flags": make_flags(shutdown_reason=SHUTDOWN_CRASH),
        "cpu_time": 77,
        "gen": 1,
        "state": "shutdown",
        "reason": "crash",
        "reason_code": SHUTDOWN_CRASH,
        "name": None,
        "suspend_cpu": None,
        "suspend_seen": None,
        "unique_id": None,
    }


def test_buffer_kinds(impl, tmp_path):
    records = [rec(1), rec(2, reason=SHUTDOWN_SUSPEND)]
    data = pack_all(records)
    path = tmp_path / "recs"
    path.write_bytes(b"\0" * 8 + data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        mv = memoryview(mm)
        try:
            for buf in (data, bytearray(data), memoryview(data), mv[8:], mm[8:]):
                table = primed(impl, rec(1))
                assert summary(table.diff(buf, 2)) == [("new", 2, None), ("shutdown", 2, "suspend")]
        finally:
            mv.release()


# -- corrupt batches ------------------------------------------------------------------------------


def corrupt_batches():
    good = [rec(1, cpu=50), rec(2, reason=SHUTDOWN_SUSPEND), rec(3)]
    data = pack_all(good)
    yield "count", data, 4, r"count 4 needs 448 bytes but the buffer holds 336"
    yield "negative", data, -1, r"negative record count"
    yield (
        "reserved",
        pack_all([*good, DomainRecord(DOMID_FIRST_RESERVED, make_flags())]),
        4,
        r"record 3 has domid 32752",
    )
    yield "duplicate", pack_all([*good, rec(1, cpu=99)]), 4, r"record 3 repeats domid 1"


@pytest.mark.parametrize(("what", "data", "count", "message"), list(corrupt_batches()))
@pytest.mark.parametrize("method", ["diff", "diff_one", "prime"])
def test_corrupt_batch_raises_and_changes_nothing(impl, what, data, count, message, method):
    table = primed(impl, rec(1, cpu=10), rec(2), rec(4, reason=SHUTDOWN_REBOOT), seq=5)
    table.set_name(4, "x")
    before = table.rows()
    with pytest.raises(ValueError, match=message):
        if method == "diff":
            table.diff(data, count, NOW)
        elif method == "diff_one":
            table.diff_one(1, data, count, NOW)
        else:
            table.prime(data, count)
    assert table.rows() == before
    assert table.seq == 5
    assert table.counts() == {"running": 2, "shutdown": 1, "dead": 0}
    # And the table still works: the valid part of the batch now gives its events.
    events = table.diff(*batch(rec(1, cpu=50), rec(2, reason=SHUTDOWN_SUSPEND), rec(3)), NOW)
    assert summary(events) == [
        ("shutdown", 2, "suspend"),
        ("new", 3, None),
        ("death", 4, "reboot"),
        ("released", 4, None),
    ]
    assert events[0].seq == 6


def test_corrupt_batch_after_partial_pass_keeps_cpu_time(impl):
    # Records before the bad one have a smaller cpu_time: were it committed, the next
    # scan would see a new incarnation.
    table = primed(impl, rec(1, cpu=100), rec(2, cpu=100))
    bad = pack_all([rec(2, cpu=500), rec(1, cpu=500), rec(2, cpu=500)])
    with pytest.raises(ValueError, match="repeats domid 2"):
        table.diff(bad, 3)
    assert [r["cpu_time"] for r in table.rows()] == [100, 100]
    assert table.diff(*batch(rec(1, cpu=200), rec(2, cpu=200))) == []


# -- events and their frames ----------------------------------------------------------------------


def test_frame_bytes_exactly(impl):
    table = primed(impl, rec(7))
    table.set_name(7, "vm7")
    (event,) = table.diff(*batch(rec(7, reason=SHUTDOWN_SUSPEND)), 1764090000.123456)
    u = uuid_of(7)
    assert event.frame() == (
        b'{"seq": 1, "event": "shutdown", "domid": 7, "uuid": "' + u.encode() + b'", '
        b'"reason": "suspend", "name": "vm7", "time": 1764090000.123456}\n'
    )
    assert event.frame() is event.frame()  # encoded once
    assert json.loads(event.frame()) == {**event.to_dict(), "time": 1764090000.123456}
    assert list(event.to_dict()) == ["seq", "event", "domid", "uuid", "reason", "name", "time"]


def test_frame_without_reason_and_name(impl):
    table = primed(impl)
    (event,) = table.diff(*batch(rec(3)), 12.5)
    assert event.frame() == (
        b'{"seq": 1, "event": "new", "domid": 3, "uuid": "' + uuid_of(3).encode() + b'", '
        b'"time": 12.500000}\n'
    )
    assert list(event.to_dict()) == ["seq", "event", "domid", "uuid", "time"]


def test_name_settable_until_the_frame_is_taken(impl):
    table = primed(impl)
    (event,) = table.diff(*batch(rec(3)), NOW)
    event.name = 'caf\u00e9 "quoted" \\ \n\U0001f600'
    with pytest.raises(TypeError):
        event.name = 5
    frame = event.frame()
    assert b'"name": ' + json.dumps(event.name).encode() in frame
    assert frame.isascii() and frame.count(b"\n") == 1
    with pytest.raises(AttributeError):
        event.name = "late"
    assert event.frame() is frame and json.loads(frame)["name"] == event.name


def test_event_constructed_directly(impl):
    ev = impl.Event(9, "death", 3, uuid_of(3), "watchdog", 2.0, name="n")
    assert (ev.seq, ev.kind, ev.domid, ev.uuid, ev.reason, ev.time, ev.name) == (
        9,
        "death",
        3,
        uuid_of(3),
        "watchdog",
        2.0,
        "n",
    )
    assert json.loads(ev.frame())["reason"] == "watchdog"
    with pytest.raises(ValueError):
        impl.Event(1, "exploded", 3, uuid_of(3), None, 2.0)


def test_unknown_reason_codes_have_no_name(impl):
    table = primed(impl, rec(1))
    (event,) = table.diff(*batch(rec(1, reason=77)))
    assert (event.kind, event.reason) == ("shutdown", None)
    assert b"reason" not in event.frame()
    assert table.rows()[0]["reason_code"] == 77


@settings(deadline=None, max_examples=200)
@given(
    t=st.floats(min_value=0, max_value=2e10, allow_nan=False)
    | st.floats(allow_nan=False, allow_infinity=False),
    name=st.none() | st.text(max_size=12),
    seq=st.integers(min_value=0, max_value=2**64 - 1),
    domid=st.integers(min_value=0, max_value=DOMID_FIRST_RESERVED - 1),
    kind=st.sampled_from(protocol.EVENT_KINDS),
    reason=st.none()
    | st.sampled_from(["poweroff", "reboot", "suspend", "crash", "watchdog", "soft_reset"]),
    h=st.binary(min_size=16, max_size=16),
)
def test_twins_frame_the_same_bytes(t, name, seq, domid, kind, reason, h):
    u = str(uuid.UUID(bytes=h))
    a = _fast.Event(seq, kind, domid, u, reason, t, name)
    b = reference.Event(seq, kind, domid, u, reason, t, name)
    assert a.frame() == b.frame()
    assert a.to_dict() == b.to_dict()
    assert a.uuid == u


def test_c_constants_match_records():
    # _fast refuses to import on a mismatch; this is the proof it looks.
    assert _fast._record_layout()["RECORD_SIZE"] == RECORD_SIZE
    fake = types.SimpleNamespace(**{**_fast._record_layout(), "OFF_CPU_TIME": 64})
    with pytest.raises(ImportError, match=r"built with OFF_CPU_TIME=56, mux/records\.py says 64"):
        _fast._check_record_layout(fake)
    del fake.OFF_CPU_TIME
    with pytest.raises(ImportError, match=r"OFF_CPU_TIME=56, mux/records\.py says nothing"):
        _fast._check_record_layout(fake)
    # The floor loop (mux.bench._floor) reads the same fields through the same header.
    assert _floor.floor_scan(*batch(rec(1), rec(2))) != _floor.floor_scan(*batch(rec(1), rec(3)))
    with pytest.raises(ValueError):
        _floor.floor_scan(b"\0" * RECORD_SIZE, 2)


def test_c_event_kinds_follow_the_protocol():
    """Adding an event kind to mux.protocol without its C twin fails at import, by name."""
    _fast._check_event_kinds(protocol.EVENT_KINDS)
    with pytest.raises(ImportError, match="not in the C enum: migrated"):
        _fast._check_event_kinds((*protocol.EVENT_KINDS, "migrated"))
    swapped = ("new", "resumed", "shutdown", *protocol.EVENT_KINDS[3:])
    with pytest.raises(ImportError, match=r"kind 1 is 'resumed' in mux\.protocol but 'shutdown'"):
        _fast._check_event_kinds(swapped)
    assert [_fast.Event(1, k, 1, uuid_of(1), None, NOW).kind for k in protocol.EVENT_KINDS] == list(
        protocol.EVENT_KINDS
    )
