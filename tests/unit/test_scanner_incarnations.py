"""Incarnations keyed on the hypervisor's unique id (issue 17 item 1), in both twins: where
the backend has ids, a domid whose id changed is a `death` of the old incarnation and a `new`
of the other even when its UUID and cpu_time show nothing; every event and snapshot row
carries `incarnation`; the id goes through dump, load and replay; without ids nothing on
the wire changes. (test_scanner_model.py runs the same rules at random, twin against twin.)
"""

from __future__ import annotations

import json

import pytest
from scannerhelpers import NOW, batch, primed, rec, summary, uuid_of

from mux import _fast, reference
from mux.protocol import INCARNATION

ID_A = 0x0123456789ABCDEF
ID_B = 0xFEDCBA9876543210


class Host:
    """The backend's unique_id(domid), counting its calls."""

    def __init__(self, ids: dict[int, int | None]) -> None:
        self.ids = dict(ids)
        self.calls: list[int] = []

    def __call__(self, domid: int) -> int | None:
        self.calls.append(domid)
        return self.ids.get(domid)


def with_ids(impl, ids: dict[int, int | None], *records):
    table = impl.DomainTable()
    host = Host(ids)
    table.prime(*batch(*records), NOW, unique_id=host)
    return table, host


def test_new_and_every_later_event_carry_the_incarnation(impl):
    table, host = with_ids(impl, {1: ID_A}, rec(1))
    assert table.snapshot()[0] == {
        "domid": 1,
        "uuid": uuid_of(1),
        INCARNATION: "0123456789abcdef",
        "state": "running",
        "reason": None,
        "name": None,
        "paused": False,
    }
    host.ids[2] = ID_B
    (new,) = table.diff(*batch(rec(1), rec(2)), NOW + 1, unique_id=host)
    assert (new.kind, new.domid, new.incarnation) == ("new", 2, "fedcba9876543210")
    assert new.frame() == (
        b'{"seq": 1, "event": "new", "domid": 2, "uuid": "' + uuid_of(2).encode() + b'", '
        b'"incarnation": "fedcba9876543210", "time": 1764090001.123456}\n'
    )
    assert list(new.to_dict()) == ["seq", "event", "domid", "uuid", INCARNATION, "time"]
    # Only the newcomer's id was read: the held domain's record was quiet and not checked.
    assert host.calls == [1, 2]
    (shut,) = table.diff(*batch(rec(1), rec(2, reason=3)), NOW + 2, unique_id=host)
    assert json.loads(shut.frame())[INCARNATION] == "fedcba9876543210"
    assert list(json.loads(shut.frame())) == [
        "seq", "event", "domid", "uuid", INCARNATION, "reason", "time"
    ]  # fmt: skip


def test_a_domid_reused_behind_an_unchanged_record_is_seen_by_its_id(impl):
    """Same UUID, cpu_time not behind: the records say nothing; the id does, once read."""
    table, host = with_ids(impl, {3: ID_A}, rec(3, cpu=100))
    host.ids[3] = ID_B  # destroyed and made again with the same UUID
    assert table.diff(*batch(rec(3, cpu=500)), NOW + 1, unique_id=host) == []
    events = table.diff(*batch(rec(3, cpu=600)), NOW + 2, unique_id=host, check_ids=True)
    assert summary(events) == [("death", 3, None), ("released", 3, None), ("new", 3, None)]
    assert [e.incarnation for e in events] == ["0123456789abcdef"] * 2 + ["fedcba9876543210"]
    assert {e.uuid for e in events} == {uuid_of(3)}
    # Checked again, the same id: nothing.
    assert table.diff(*batch(rec(3, cpu=700)), NOW + 3, unique_id=host, check_ids=True) == []


def test_a_targeted_scan_checks_its_domid(impl):
    table, host = with_ids(impl, {3: ID_A, 4: ID_A ^ 1}, rec(3), rec(4))
    host.ids[3] = ID_B
    host.calls.clear()
    events = table.diff_one(3, *batch(rec(3, cpu=9)), NOW + 1, unique_id=host, check_ids=True)
    assert summary(events) == [("death", 3, None), ("released", 3, None), ("new", 3, None)]
    assert host.calls == [3]  # the one id it read serves the new incarnation too
    assert table.diff_one(4, *batch(rec(4)), NOW + 1, unique_id=host, check_ids=True) == []


def test_a_shut_down_domain_reused_dies_and_the_newcomer_is_new(impl):
    """Without ids the record would read as a resume; with them it is another domain."""
    table, host = with_ids(impl, {5: ID_A}, rec(5, reason=0))
    host.ids[5] = ID_B
    events = table.diff(*batch(rec(5, cpu=1)), NOW + 1, unique_id=host, check_ids=True)
    assert summary(events) == [("death", 5, "poweroff"), ("released", 5, None), ("new", 5, None)]
    plain = primed(impl, rec(5, reason=0))
    assert summary(plain.diff(*batch(rec(5, cpu=1)), NOW + 1)) == [("resumed", 5, None)]


def test_an_id_that_cannot_be_read_leaves_the_incarnation_unknown(impl):
    table, host = with_ids(impl, {1: None}, rec(1))
    assert INCARNATION not in table.snapshot()[0]
    # Read later (a check), it is that incarnation's: no event, and from now on it is named.
    host.ids[1] = ID_A
    assert table.diff(*batch(rec(1)), NOW + 1, unique_id=host, check_ids=True) == []
    assert table.snapshot()[0][INCARNATION] == "0123456789abcdef"
    (shut,) = table.diff(*batch(rec(1, reason=1)), NOW + 2, unique_id=host)
    assert shut.incarnation == "0123456789abcdef"
    # A record present but its id gone by the time it is read (destroyed between the two
    # calls): nothing is concluded from it.
    host.ids[1] = None
    assert table.diff(*batch(rec(1, reason=1)), NOW + 3, unique_id=host, check_ids=True) == []


def test_a_reader_that_gives_something_else_is_a_type_error(impl):
    table, _host = with_ids(impl, {1: ID_A}, rec(1))
    before = table.rows()
    for bad in ("0123", -1, 1 << 64, 1.5):
        with pytest.raises(TypeError, match="unique_id"):
            table.diff(*batch(rec(1)), NOW + 1, unique_id=lambda _d, b=bad: b, check_ids=True)
        assert table.rows() == before
    assert table.diff(*batch(rec(1)), NOW + 1, unique_id=Host({1: ID_A}), check_ids=True) == []


def test_without_ids_nothing_changes_on_the_wire(impl):
    table = primed(impl, rec(1))
    (new,) = table.diff(*batch(rec(1), rec(2)), NOW + 1)
    assert new.incarnation is None and INCARNATION not in new.to_dict()
    assert b"incarnation" not in new.frame()
    assert all(INCARNATION not in row for row in table.snapshot())
    assert all(INCARNATION not in row for row in table.dump()["rows"])
    # check_ids without a reader reads nothing
    assert table.diff(*batch(rec(1), rec(2)), NOW + 2, check_ids=True) == []


def test_the_id_survives_dump_load_and_replay(impl):
    """A restart: the checkpoint (and the journal after it) keep each incarnation's id, so
    a domid reused while no daemon ran is found, and one that was not gives nothing."""
    table, host = with_ids(impl, {1: ID_A}, rec(1))
    dump = json.loads(json.dumps(table.dump()))
    assert dump["rows"][0][INCARNATION] == "0123456789abcdef"
    host.ids[2] = ID_B
    journal = [
        json.loads(e.frame()) for e in table.diff(*batch(rec(1), rec(2)), NOW + 1, unique_id=host)
    ]
    replayed = reference.replay(dump, journal)
    assert [r.get(INCARNATION) for r in replayed["rows"]] == [
        "0123456789abcdef",
        "fedcba9876543210",
    ]
    for other in (_fast, reference):
        again = other.DomainTable.load(replayed)
        assert again.snapshot() == table.snapshot()
        # Nothing happened while it was down: nothing.
        assert again.diff(*batch(rec(1), rec(2)), NOW + 2, unique_id=host, check_ids=True) == []
    again = impl.DomainTable.load(replayed)
    host.ids[2] = ID_A ^ ID_B  # 2 reused with the same UUID while the daemon was down
    events = again.diff(*batch(rec(1), rec(2, cpu=5)), NOW + 3, unique_id=host, check_ids=True)
    assert summary(events) == [("death", 2, None), ("released", 2, None), ("new", 2, None)]
    assert events[0].incarnation == "fedcba9876543210" != events[2].incarnation


def test_a_dump_or_journal_with_a_bad_incarnation_is_refused(impl):
    table, _host = with_ids(impl, {1: ID_A}, rec(1))
    for bad in ("0123456789ABCDEF", "123", 5, "0000000000000000", "0123456789abcdeg"):
        dump = table.dump()
        dump["rows"][0][INCARNATION] = bad
        with pytest.raises(ValueError, match=r"bad table dump: row 0 .*incarnation"):
            impl.DomainTable.load(dump)
        frame = {"seq": 1, "event": "new", "domid": 2, "uuid": uuid_of(2), INCARNATION: bad}
        with pytest.raises(
            ValueError, match=r"journal does not fit the table: event 0 .*incarnation"
        ):
            reference.replay(table.dump(), [frame])
    # An event of another incarnation than the table's does not fit it either.
    frame = {
        "seq": 1,
        "event": "shutdown",
        "domid": 1,
        "uuid": uuid_of(1),
        INCARNATION: "00000000000000aa",
    }
    with pytest.raises(ValueError, match="which the table does not hold"):
        reference.replay(table.dump(), [frame])


@pytest.mark.parametrize("incarnation", ["0123456789ABCDEF", "xyz", "", "0" * 16])
def test_an_event_refuses_a_bad_incarnation(impl, incarnation):
    with pytest.raises(ValueError, match="incarnation"):
        impl.Event(1, "new", 1, uuid_of(1), None, NOW, incarnation=incarnation)


def test_an_event_made_by_hand_encodes_as_its_twin(impl):
    made = impl.Event(
        7, "death", 3, uuid_of(3), "crash", NOW, "web", incarnation="00000000000000ff"
    )
    twin = reference.Event(
        7, "death", 3, uuid_of(3), "crash", NOW, "web", incarnation="00000000000000ff"
    )
    assert made.frame() == twin.frame()
    assert made.incarnation == "00000000000000ff"
    assert list(made.to_dict()) == [
        "seq",
        "event",
        "domid",
        "uuid",
        INCARNATION,
        "reason",
        "name",
        "time",
    ]
