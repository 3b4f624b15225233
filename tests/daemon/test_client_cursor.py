"""mux.client resumes by cursor: `since` on every reconnect, missed events only after a gap.

Against ContractDouble (tests/contract_double.py), a test double speaking protocol 2's
frames, until the daemon's journal lands; tests/daemon/test_client_journal.py runs the
same promises against the real daemon once it speaks protocol 2.
"""

from __future__ import annotations

import asyncio

import pytest
from contract_double import doubles
from daemonhelpers import brief, take

from mux.client import AsyncSubscription, Cursor, Subscription, XenmuxError


@pytest.fixture
def double():
    with doubles() as make:
        d = make()
        d.add_guests(4)
        yield d


def flags(events: list[dict]) -> list[tuple]:
    return [(e["event"], e["domid"], e.get("reason"), bool(e.get("missed"))) for e in events]


def test_a_lost_connection_resumes_with_since_and_gets_the_real_events(double):
    with Subscription(None, socket_path=double.path, retry_timeout=10) as sub:
        assert sub.cursor == f"{double.history}:0"
        double.event("shutdown", 3, reason="crash")
        (first,) = take(sub, 1)
        assert sub.cursor == f"{double.history}:1"
        double.down()
        double.event("death", 3)  # while we are away: journaled, not sent
        double.event("released", 3)
        double.event("shutdown", 4, reason="suspend")
        double.up()
        events = take(sub, 3)
        assert sub.next_event(0.2) is None
    assert first["seq"] == 1
    assert flags(events) == [
        ("death", 3, "crash", False),
        ("released", 3, None, False),
        ("shutdown", 4, "suspend", False),
    ]
    assert [e["seq"] for e in events] == [2, 3, 4]  # no gap, no duplicate at the seam
    again = double.subscribes()[-1]
    assert again["since"] == 1 and again["history"] == double.history
    assert sub.cursor == f"{double.history}:4"


def test_a_gap_relists_and_only_then_synthesises_missed_events(double):
    with Subscription([1, 2, 3, 4], socket_path=double.path, retry_timeout=10) as sub:
        double.event("shutdown", 1, reason="crash")
        double.event("shutdown", 2, reason="suspend")
        double.event("shutdown", 4, reason="reboot")
        take(sub, 3)
        double.down()
        double.event("death", 1)
        double.event("released", 1)
        double.event("death", 2)
        double.event("released", 2)
        double.event("resumed", 4)
        double.event("death", 3)
        double.trim(double.seq + 1)  # the journal no longer reaches back to our cursor
        double.up()
        events = take(sub, 6)
        assert sub.next_event(0.2) is None
        assert sub.gap is True
        assert sub.cursor == f"{double.history}:{double.seq}"
    assert all(e["missed"] and "seq" not in e for e in events)
    assert flags(events) == [
        # A final reason in force is the one it died with...
        ("death", 1, "crash", True),
        ("released", 1, None, True),
        # ...but a suspend may have been resumed before the death: no reason.
        ("death", 2, None, True),
        ("released", 2, None, True),
        ("death", 3, None, True),  # dead now, not yet released
        ("resumed", 4, None, True),
    ]


def test_a_gap_after_a_new_history_reports_each_death_once(double):
    with Subscription([3, 4], socket_path=double.path, retry_timeout=10) as sub:
        old = double.table[3]["uuid"]
        double.down()
        double.new_history()  # a new boot: the old table and journal are gone
        del double.table[3]
        double.add(3, name="guest-3-again")
        double.up()
        events = take(sub, 3)
        assert sub.next_event(0.2) is None
        assert sub.cursor == f"{double.history}:0"
    assert [(e["event"], e["domid"], e["missed"]) for e in events] == [
        ("death", 3, True),
        ("released", 3, True),
        ("new", 3, True),
    ]
    assert events[0]["uuid"] == old != events[2]["uuid"]
    assert events[2]["name"] == "guest-3-again"
    resumed_with = double.subscribes()[-1]
    assert resumed_with["history"] != double.history  # the old one: the daemon said gap


def test_a_served_resume_synthesises_nothing(double):
    with Subscription([3], socket_path=double.path, retry_timeout=10) as sub:
        double.drop_connections()
        double.event("death", 3)
        events = take(sub, 1)
        assert sub.next_event(0.2) is None
    assert flags(events) == [("death", 3, None, False)]


def test_a_refused_cursor_on_reconnect_relists(double):
    with Subscription([3], socket_path=double.path, retry_timeout=10) as sub:
        double.event("shutdown", 3, reason="crash")
        double.event("resumed", 3)
        take(sub, 2)
        double.down()
        double.rewind(0)  # same history, state restored from an older copy
        double.table[3].update(state="shutdown", reason="crash")
        double.up()
        events = take(sub, 1)
    assert flags(events) == [("shutdown", 3, "crash", True)]
    asked = [("since" in r) for r in double.subscribes()]
    assert asked == [False, True, False]


def test_a_callers_cursor_replays_what_followed_it(double):
    double.event("shutdown", 2, reason="reboot")  # seq 1
    double.event("death", 2)  # seq 2
    double.event("released", 2)  # seq 3
    double.event("shutdown", 4, reason="crash")  # seq 4
    cursor = f"{double.history}:2"
    with Subscription(None, socket_path=double.path, since=cursor) as sub:
        assert sub.gap is False and sub.snapshot == []
        assert sub.cursor == cursor  # nothing delivered yet
        events = take(sub, 2)
        double.event("death", 4)
        events += take(sub, 1)
        assert sub.cursor == f"{double.history}:5"
        # A later gap still knows domains no replayed event named: the baseline list.
        double.down()
        double.event("death", 1)
        double.event("released", 1)
        double.trim(double.seq + 1)
        double.up()
        events += take(sub, 2)
    assert [(e["event"], e["domid"], e.get("seq")) for e in events] == [
        ("released", 2, 3),
        ("shutdown", 4, 4),
        ("death", 4, 5),
        ("death", 1, None),
        ("released", 1, None),
    ]
    assert [r["op"] for r in double.requests[:3]] == ["hello", "subscribe", "list"]


def test_a_callers_cursor_the_daemon_no_longer_holds_gives_the_current_state(double):
    double.event("shutdown", 2, reason="reboot")
    double.trim(2)
    with Subscription(None, socket_path=double.path, since=0) as sub:
        assert sub.gap is True
        assert [r["domid"] for r in sub.snapshot] == [1, 2, 3, 4]
        assert sub.next_event(0.2) is None  # nothing to compare with: nothing synthesised
    with Subscription(None, socket_path=double.path, since=f"{'e' * 32}:1") as sub:
        assert sub.gap is True  # another history: always a gap, never an error


def test_a_cursor_ahead_of_the_daemon_is_refused(double):
    with pytest.raises(XenmuxError, match="not a seq of this history") as info:
        Subscription(None, socket_path=double.path, since=f"{double.history}:99")
    assert info.value.code == "bad-cursor"
    for bad in ("x:y", "-1", "1:2:3", ""):
        with pytest.raises(ValueError, match="SEQ or HISTORY:SEQ"):
            Cursor.parse(bad)
    assert Cursor.parse("ab12:7") == Cursor("ab12", 7) and str(Cursor(None, 7)) == "7"


def test_the_cursor_moves_past_events_the_caller_filtered_out(double):
    with Subscription(None, events=["death"], socket_path=double.path) as sub:
        double.event("shutdown", 1, reason="crash")  # asked of the daemon, not delivered
        double.event("death", 1)
        double.event("released", 1)  # asked (the tracker needs it), not delivered
        (death,) = take(sub, 1)
        assert death["event"] == "death"
        assert sub.next_event(0.2) is None
        assert sub.cursor == f"{double.history}:3"
    assert double.subscribes()[0]["events"] == ["new", "death", "released"]


def test_paused_and_unpaused_come_only_when_asked(double):
    with (
        Subscription([2], socket_path=double.path) as plain,
        Subscription([2], events=["paused", "unpaused", "death"], socket_path=double.path) as asked,
    ):
        double.event("paused", 2)
        double.event("death", 2)
        assert brief(take(plain, 1)) == [("death", 2, None)]
        assert brief(take(asked, 2)) == [("paused", 2, None), ("death", 2, None)]
        # After a gap, a missed unpause is synthesised for the one that asked only.
    with (
        Subscription([3], socket_path=double.path, retry_timeout=10) as plain,
        Subscription([3], events=["unpaused"], socket_path=double.path, retry_timeout=10) as asked,
    ):
        double.table[3]["paused"] = True  # as if its `paused` event came before: both know
        plain.tracker.known[3].paused = asked.tracker.known[3].paused = True
        double.down()
        double.event("unpaused", 3)
        double.trim(double.seq + 1)
        double.up()
        assert flags(take(asked, 1)) == [("unpaused", 3, None, True)]
        assert plain.next_event(0.5) is None


def test_the_async_subscription_resumes_the_same_way(double):
    async def run() -> tuple[list[dict], str | None]:
        async with AsyncSubscription([3, 4], socket_path=double.path, retry_timeout=10) as sub:
            await asyncio.to_thread(double.event, "shutdown", 4, reason="crash")
            got = [await sub.next_event(5)]
            await asyncio.to_thread(double.down)
            await asyncio.to_thread(double.event, "death", 4)
            await asyncio.to_thread(double.up)
            got.append(await sub.next_event(5))
            await asyncio.to_thread(double.down)
            await asyncio.to_thread(double.event, "death", 3)
            await asyncio.to_thread(double.trim, double.seq + 1)
            await asyncio.to_thread(double.up)
            got += [await sub.next_event(5), await sub.next_event(0.3)]
            return got, sub.cursor

    got, cursor = asyncio.run(run())
    assert flags(got[:3]) == [
        ("shutdown", 4, "crash", False),
        ("death", 4, "crash", False),
        ("death", 3, None, True),
    ]
    assert got[3] is None
    assert cursor == f"{double.history}:{double.seq}"
    assert [("since" in r) for r in double.subscribes()] == [False, True, True]
