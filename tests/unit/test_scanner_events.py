"""The event model's rules of wave 2 on both twins (docs/protocol.md, "Event model"): the
reason a death carries after a suspend, `resumed` before a changed shutdown, `paused` and
`unpaused`, and the `late` and `transient` flags with `table.transient`."""

from __future__ import annotations

import json
import math

import pytest
from scannerhelpers import NOW, batch, primed, rec, summary, uuid_of

from mux.records import (
    DOMINF_BLOCKED,
    DOMINF_PAUSED,
    SHUTDOWN_CRASH,
    SHUTDOWN_POWEROFF,
    SHUTDOWN_REBOOT,
    SHUTDOWN_SOFT_RESET,
    SHUTDOWN_SUSPEND,
)

PAUSED_BASE = DOMINF_BLOCKED | DOMINF_PAUSED


def suspended(impl, cpu=100, reason=SHUTDOWN_SUSPEND, **table_args):
    """A table that saw domid 1 running, then (at NOW) shut down with `reason` at `cpu`."""
    table = primed(impl, rec(1, cpu=cpu - 10), now=NOW - 1, **table_args)
    assert summary(table.diff(*batch(rec(1, reason=reason, cpu=cpu)), NOW)) == [
        ("shutdown", 1, table.snapshot()[0]["reason"])
    ]
    return table


# -- reasons at death ---------------------------------------------------------------------------


@pytest.mark.parametrize("reason", [SHUTDOWN_SUSPEND, SHUTDOWN_SOFT_RESET])
def test_dying_record_that_did_not_run_keeps_the_suspend(impl, reason):
    table = suspended(impl, reason=reason)
    row = table.rows()[0]
    assert (row["suspend_cpu"], row["suspend_seen"]) == (100, NOW)
    # The shutdown flag is gone from the dying record, but its cpu_time is the suspended one.
    events = table.diff(*batch(rec(1, dying=True, cpu=100)), NOW + 5)
    assert summary(events) == [("death", 1, row["reason"])]


@pytest.mark.parametrize("still_flagged", [False, True])
def test_dying_record_that_ran_again_proves_a_resume(impl, still_flagged):
    table = suspended(impl)
    reason = SHUTDOWN_SUSPEND if still_flagged else None
    events = table.diff(*batch(rec(1, dying=True, cpu=150, reason=reason)), NOW + 5)
    if still_flagged:
        # Resumed, ran, suspended again, then destroyed: all between two scans.
        assert summary(events) == [
            ("resumed", 1, None),
            ("shutdown", 1, "suspend"),
            ("death", 1, "suspend"),
        ]
    else:
        assert summary(events) == [("resumed", 1, None), ("death", 1, None)]
    assert [e.seq for e in events] == list(range(2, 2 + len(events)))


def test_a_quiet_scan_of_a_suspended_domain_moves_what_was_seen(impl):
    table = suspended(impl)
    # Seen suspended again (a poll) with more cpu_time: that is now the suspended one.
    assert table.diff(*batch(rec(1, reason=SHUTDOWN_SUSPEND, cpu=120)), NOW + 0.25) == []
    row = table.rows()[0]
    assert (row["suspend_cpu"], row["suspend_seen"]) == (120, NOW + 0.25)
    assert summary(table.diff(*batch(rec(1, dying=True, cpu=120)), NOW + 9)) == [
        ("death", 1, "suspend")
    ]


def test_a_targeted_scan_of_a_suspended_domain_counts_as_seen(impl):
    table = suspended(impl)
    assert table.diff_one(1, *batch(rec(1, reason=SHUTDOWN_SUSPEND, cpu=100)), NOW + 3) == []
    assert table.rows()[0]["suspend_seen"] == NOW + 3
    # A targeted scan of another domid does not see it.
    assert table.diff_one(2, b"", 0, NOW + 4) == []
    assert table.rows()[0]["suspend_seen"] == NOW + 3
    assert summary(table.diff(b"", 0, NOW + 3.25)) == [
        ("death", 1, "suspend"),
        ("released", 1, None),
    ]


@pytest.mark.parametrize(
    ("after", "window", "reason"),
    [(0.25, 0.25, "suspend"), (0.2501, 0.25, None), (1.0, 2.0, "suspend"), (0.1, 0.0, None)],
)
def test_vanished_record_keeps_the_suspend_only_within_the_window(impl, after, window, reason):
    table = suspended(impl, suspend_window=window)
    assert table.suspend_window == window
    events = table.diff(b"", 0, NOW + after)
    assert summary(events) == [("death", 1, reason), ("released", 1, None)]


def test_the_window_runs_from_the_last_full_scan_that_saw_it_suspended(impl):
    table = suspended(impl)
    for k in range(1, 5):  # polls while it sits suspended: nothing to say
        assert table.diff(*batch(rec(1, reason=SHUTDOWN_SUSPEND, cpu=100)), NOW + k) == []
    assert summary(table.diff(b"", 0, NOW + 4.2)) == [
        ("death", 1, "suspend"),
        ("released", 1, None),
    ]


def test_another_incarnation_on_the_domid_uses_the_window_too(impl):
    table = suspended(impl)
    events = table.diff(*batch(rec(1, inc=1)), NOW + 0.1)
    assert summary(events) == [("death", 1, "suspend"), ("released", 1, None), ("new", 1, None)]
    table = suspended(impl)
    events = table.diff(*batch(rec(1, inc=1)), NOW + 60)
    assert summary(events) == [("death", 1, None), ("released", 1, None), ("new", 1, None)]


@pytest.mark.parametrize("reason", [SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT, SHUTDOWN_CRASH])
def test_other_reasons_are_final(impl, reason):
    table = suspended(impl, reason=reason)
    name = table.snapshot()[0]["reason"]
    # Long gone, or dying with more cpu_time and no flag: no resume can undo these.
    assert summary(table.diff(*batch(rec(1, dying=True, cpu=999)), NOW + 60)) == [
        ("death", 1, name)
    ]
    table = suspended(impl, reason=reason)
    assert summary(table.diff(b"", 0, NOW + 60)) == [("death", 1, name), ("released", 1, None)]
    assert table.rows() == []


def test_prime_sees_suspended_domains_at_its_time(impl):
    table = primed(impl, rec(1, reason=SHUTDOWN_SUSPEND, cpu=7), now=NOW)
    row = table.rows()[0]
    assert (row["suspend_cpu"], row["suspend_seen"]) == (7, NOW)
    assert summary(table.diff(b"", 0, NOW + 0.2)) == [
        ("death", 1, "suspend"),
        ("released", 1, None),
    ]


@pytest.mark.parametrize("dying", [False, True])
def test_a_changed_reason_means_a_resume_in_between(impl, dying):
    table = suspended(impl, reason=SHUTDOWN_POWEROFF)
    events = table.diff(*batch(rec(1, reason=SHUTDOWN_CRASH, dying=dying, cpu=100)), NOW + 1)
    want = [("resumed", 1, None), ("shutdown", 1, "crash")]
    assert summary(events) == want + ([("death", 1, "crash")] if dying else [])
    assert table.n_shutdown == (0 if dying else 1)


def test_resume_suspend_without_cpu_time_is_not_seen(impl):
    # What remains unknowable: resumed and suspended again without running in between.
    table = suspended(impl)
    assert table.diff(*batch(rec(1, reason=SHUTDOWN_SUSPEND, cpu=100)), NOW + 1) == []


def test_suspend_window_is_checked(impl):
    for bad in (-1, math.nan, math.inf, "0.25", True, None):
        with pytest.raises(ValueError, match="suspend_window"):
            impl.DomainTable(suspend_window=bad)
    assert impl.DomainTable(suspend_window=2).suspend_window == 2.0
    assert impl.DomainTable().suspend_window == 0.25


# -- paused / unpaused ----------------------------------------------------------------------------


def test_pause_and_unpause_of_a_live_domain(impl):
    table = primed(impl, rec(1), rec(2))
    assert table.n_paused == 0
    events = table.diff(*batch(rec(1, base=PAUSED_BASE), rec(2)), NOW)
    assert summary(events) == [("paused", 1, None)]
    assert events[0].frame() == (
        b'{"seq": 1, "event": "paused", "domid": 1, "uuid": "' + uuid_of(1).encode() + b'", '
        b'"time": 1764090000.123456}\n'
    )
    assert table.n_paused == 1
    assert [s["paused"] for s in table.snapshot()] == [True, False]
    assert table.diff(*batch(rec(1, base=PAUSED_BASE, cpu=5), rec(2)), NOW) == []
    assert summary(table.diff(*batch(rec(1, cpu=6), rec(2)), NOW)) == [("unpaused", 1, None)]
    assert table.n_paused == 0


def test_a_domain_first_seen_paused_gets_new_paused_and_then_unpaused(impl):
    table = primed(impl)
    (new,) = table.diff(*batch(rec(4, base=PAUSED_BASE)), NOW)
    assert (new.kind, new.paused) == ("new", True)
    assert new.frame() == (
        b'{"seq": 1, "event": "new", "domid": 4, "uuid": "' + uuid_of(4).encode() + b'", '
        b'"paused": true, "time": 1764090000.123456}\n'
    )
    assert new.to_dict()["paused"] is True
    assert summary(table.diff(*batch(rec(4)), NOW)) == [("unpaused", 4, None)]
    (again,) = table.diff(*batch(rec(4), rec(5)), NOW)
    assert again.paused is False and b"paused" not in again.frame()


def test_pause_with_a_shutdown_in_one_scan(impl):
    table = primed(impl, rec(1))
    events = table.diff(*batch(rec(1, reason=SHUTDOWN_REBOOT, base=PAUSED_BASE)), NOW)
    assert summary(events) == [("shutdown", 1, "reboot"), ("paused", 1, None)]
    events = table.diff(*batch(rec(2, reason=SHUTDOWN_CRASH, base=PAUSED_BASE)), NOW)
    assert summary(events) == [
        ("death", 1, "reboot"),
        ("released", 1, None),
        ("new", 2, None),
        ("shutdown", 2, "crash"),
    ]
    assert events[2].paused and table.n_paused == 1


def test_a_dead_domain_is_not_paused_and_makes_no_pause_event(impl):
    table = primed(impl, rec(1, base=PAUSED_BASE), rec(2))
    assert table.n_paused == 1
    # Dying in the same scan as the pause: only the death.
    events = table.diff(*batch(rec(1, dying=True), rec(2, dying=True, base=PAUSED_BASE)), NOW)
    assert summary(events) == [("death", 1, None), ("death", 2, None)]
    assert [s["paused"] for s in table.snapshot()] == [False, False]
    assert table.n_paused == 0
    for base in (PAUSED_BASE, DOMINF_BLOCKED, PAUSED_BASE):
        assert table.diff(*batch(rec(1, dying=True, base=base), rec(2, dying=True)), NOW) == []
    assert table.rows()[0]["flags"] & DOMINF_PAUSED
    assert table.n_paused == 0


def test_paused_is_only_for_new(impl):
    with pytest.raises(ValueError, match="only a `new` event carries paused"):
        impl.Event(1, "death", 3, uuid_of(3), None, NOW, paused=True)
    with pytest.raises(TypeError, match="paused must be a bool"):
        impl.Event(1, "new", 3, uuid_of(3), None, NOW, paused=1)
    assert impl.Event(1, "new", 3, uuid_of(3), None, NOW, paused=True).paused


# -- late and transient -------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["late", "transient"])
def test_flags_settable_until_the_frame_is_taken(impl, flag):
    table = primed(impl, rec(1))
    (event,) = table.diff(*batch(rec(1, reason=SHUTDOWN_SUSPEND)), NOW)
    assert getattr(event, flag) is False
    setattr(event, flag, True)
    with pytest.raises(TypeError, match=f"{flag} must be a bool"):
        setattr(event, flag, 1)
    assert getattr(event, flag) is True
    frame = event.frame()
    assert frame.endswith(
        b'"reason": "suspend", "%s": true, "time": 1764090000.123456}\n' % (flag.encode())
    )
    with pytest.raises(AttributeError, match=f"Event.{flag} cannot change"):
        setattr(event, flag, False)
    assert event.frame() is frame and json.loads(frame)[flag] is True


def test_every_key_in_the_contracts_order(impl):
    event = impl.Event(
        7, "new", 9, uuid_of(9), None, 1.5, "vm-9", paused=True, late=True, transient=True
    )
    assert event.frame() == (
        b'{"seq": 7, "event": "new", "domid": 9, "uuid": "' + uuid_of(9).encode() + b'", '
        b'"name": "vm-9", "paused": true, "late": true, "transient": true, "time": 1.500000}\n'
    )
    assert list(event.to_dict()) == [
        "seq",
        "event",
        "domid",
        "uuid",
        "name",
        "paused",
        "late",
        "transient",
        "time",
    ]
    death = impl.Event(8, "death", 9, uuid_of(9), "crash", 2.0, late=True)
    assert list(death.to_dict()) == ["seq", "event", "domid", "uuid", "reason", "late", "time"]
    assert (death.late, death.transient, death.paused) == (True, False, False)


def test_transient_pair_takes_seqs_and_leaves_the_table(impl):
    table = primed(impl, rec(1), rec(2, reason=SHUTDOWN_SUSPEND), seq=10)
    before = table.rows()
    u = uuid_of(5).upper()  # xenstore's text, in any case
    born, died = table.transient(5, u, "flash", NOW)
    assert (born.seq, born.kind, died.seq, died.kind) == (11, "new", 12, "death")
    for e in (born, died):
        assert (e.domid, e.uuid, e.name, e.reason, e.time) == (5, uuid_of(5), "flash", None, NOW)
        assert e.transient and not e.late and not e.paused
    assert born.frame() == (
        b'{"seq": 11, "event": "new", "domid": 5, "uuid": "' + uuid_of(5).encode() + b'", '
        b'"name": "flash", "transient": true, "time": 1764090000.123456}\n'
    )
    assert table.seq == 12
    assert table.rows() == before and 5 not in table and len(table) == 2
    # The next scan's events follow on.
    later = table.diff(*batch(rec(1), rec(2, reason=SHUTDOWN_SUSPEND), rec(3)), NOW)
    assert [(e.seq, e.kind) for e in later] == [(13, "new")]
    # A table that held the domid is not touched either.
    assert [e.kind for e in table.transient(3, uuid_of(3, inc=1), None, NOW)] == ["new", "death"]
    assert table.rows()[-1]["uuid"] == uuid_of(3)


def test_transient_rejects_bad_input(impl):
    table = primed(impl, seq=3)
    with pytest.raises(ValueError, match="out of range"):
        table.transient(0x7FF0, uuid_of(1), None, NOW)
    with pytest.raises(ValueError, match="out of range"):
        table.transient(True, uuid_of(1), None, NOW)
    with pytest.raises(ValueError):
        table.transient(1, "not-a-uuid", None, NOW)
    with pytest.raises(TypeError):
        table.transient(1, 5, None, NOW)
    with pytest.raises(TypeError):
        table.transient(1, uuid_of(1), 5, NOW)
    assert table.seq == 3
