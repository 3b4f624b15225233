"""The client library after a gap (mux.client.tracker), where the daemon names incarnations:
a domid whose snapshot row carries another `incarnation`, with the same UUID, is another
domain: the one known died and the other is new, each synthesised with its incarnation."""

from __future__ import annotations

from mux.client.tracker import Tracker
from mux.protocol import INCARNATION

UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
OLD, NOW = "0123456789abcdef", "fedcba9876543210"


def row(incarnation: str | None, state: str = "running", reason: str | None = None) -> dict:
    out = {"domid": 7, "uuid": UUID}
    if incarnation is not None:
        out[INCARNATION] = incarnation
    return out | {"state": state, "reason": reason, "name": "web", "paused": False}


def reply(*rows: dict, gap: bool = False) -> dict:
    out = {"ok": True, "snapshot": list(rows), "absent": [], "seq": 10, "history": "h"}
    return out | ({"gap": True} if gap else {})


def brief(events: list[dict]) -> list[tuple]:
    return [(e["event"], e.get(INCARNATION), e.get("reason")) for e in events]


def test_another_incarnation_behind_the_same_uuid_is_a_death_and_a_new():
    tracker = Tracker([7], None)
    assert tracker.accept(reply(row(OLD, "shutdown", "crash")), first=True) == []
    missed = tracker.accept(reply(row(NOW), gap=True), first=False)
    assert brief(missed) == [("death", OLD, "crash"), ("released", OLD, None), ("new", NOW, None)]
    assert all(e["missed"] is True and e["uuid"] == UUID for e in missed)
    assert list(missed[0])[:4] == ["event", "domid", "uuid", INCARNATION]


def test_the_same_incarnation_gives_only_what_changed():
    tracker = Tracker([7], None)
    tracker.accept(reply(row(OLD)), first=True)
    missed = tracker.accept(reply(row(OLD, "shutdown", "reboot"), gap=True), first=False)
    assert brief(missed) == [("shutdown", OLD, "reboot")]


def test_events_keep_the_tracker_on_the_incarnation_they_name():
    tracker = Tracker([7], None)
    tracker.accept(reply(row(OLD)), first=True)
    # Another incarnation's `new` came after a death we did not see (events filtered out):
    tracker.track({"seq": 11, "event": "new", "domid": 7, "uuid": UUID, INCARNATION: NOW})
    assert tracker.known[7].incarnation == NOW
    tracker.track({"seq": 12, "event": "shutdown", "domid": 7, "uuid": UUID, INCARNATION: NOW,
                   "reason": "poweroff"})  # fmt: skip
    assert tracker.accept(reply(row(NOW, "shutdown", "poweroff"), gap=True), first=False) == []


def test_without_incarnations_nothing_changes():
    tracker = Tracker([7], None)
    tracker.accept(reply(row(None)), first=True)
    assert tracker.accept(reply(row(None), gap=True), first=False) == []
    missed = tracker.accept(reply(row(None, "dead"), gap=True), first=False)
    assert brief(missed) == [("death", None, None)]
    assert all(INCARNATION not in e for e in missed)
