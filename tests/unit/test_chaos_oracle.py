"""The chaos oracle on small hand-made logs: it passes a right stream and catches each kind
of violation (so that a 0 from a chaos run means something)."""

from __future__ import annotations

import json

import pytest

from mux.chaos import oracle
from mux.chaos.oracle import Fault, check, classify
from mux.chaos.streams import (
    LATEST,
    PER_DOMID,
    WILDCARD,
    Frame,
    Reconnect,
    Refused,
    Relist,
    Resumed,
    StreamError,
    Subscriber,
    journal_would_serve,
    read_client_log,
    read_follow_log,
)
from mux.chaos.truth import Truth, TruthError

S = 1_000_000_000  # one second in ns: the truth and the streams use CLOCK_MONOTONIC ns
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U3 = "33333333-3333-4333-8333-333333333333"
END = 100 * S


class Host:
    """A truth log written by hand: steps at times given in seconds."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.incs = 0

    def create(self, t: float, domid: int, uuid: str) -> int:
        self.incs += 1
        self._add(t, "create", domid, uuid, self.incs, name=f"guest-{domid}")
        return self.incs

    def step(self, t: float, step: str, inc: int, **extra) -> None:
        [first] = [e for e in self.entries if e["inc"] == inc and e["step"] == "create"]
        self._add(t, step, first["domid"], first["uuid"], inc, **extra)

    def destroy(self, t: float, inc: int) -> None:
        self.step(t, "dying", inc)
        self.step(t, "gone", inc)

    def _add(self, t, step, domid, uuid, inc, **extra) -> None:
        mono = int(t * S)
        self.entries.append(
            {"step": step, "domid": domid, "uuid": uuid, "inc": inc, "mono": mono, "wall": t}
            | extra
        )

    def truth(self) -> Truth:
        return Truth.from_entries(sorted(self.entries, key=lambda e: e["mono"]))


def row(domid, uuid, state="running", reason=None) -> dict:
    return {"domid": domid, "uuid": uuid, "state": state, "reason": reason}


def relist(t, rows=(), absent=(), cause="initial", space="h", seq=0, **kw) -> Relist:
    return Relist(int(t * S), {r["domid"]: r for r in rows}, list(absent), cause, space, seq, **kw)


def ev(t, seq, event, domid, uuid, space="h", replayed=False, **extra) -> Frame:
    frame = {"seq": seq, "event": event, "domid": domid, "uuid": uuid, **extra}
    if seq is None:
        del frame["seq"]
    return Frame(int(t * S), frame, space, replayed)


def sub(items, domids=(1,), kind=PER_DOMID, name="s") -> Subscriber:
    return Subscriber(name, kind, None if domids is None else frozenset(domids), list(items))


def crash_host() -> Host:
    """Domain 1 (U1) runs from 0 s, crashes at 10 s, is destroyed at 11 s."""
    h = Host()
    inc = h.create(0, 1, U1)
    h.step(10, "shutdown", inc, reason="crash")
    h.destroy(11, inc)
    return h


def clean_stream() -> list:
    return [
        relist(1, [row(1, U1)]),
        ev(10.01, 1, "shutdown", 1, U1, reason="crash"),
        ev(11.01, 2, "death", 1, U1, reason="crash"),
        ev(11.02, 3, "released", 1, U1),
    ]


def kinds(verdict) -> dict[str, int]:
    return dict(verdict.by_kind())


def test_a_right_stream_passes():
    v = check(crash_host().truth(), [], [sub(clean_stream())], end=END)
    assert kinds(v) == {}
    d = v.deaths[PER_DOMID]
    assert (d.expected, d.once, d.lost, d.duplicated) == (1, 1, 0, 0)
    assert v.events == 3 and v.incarnations == {"observable": 1}


def test_lost_duplicated_and_early_deaths():
    truth = crash_host().truth()
    lost = [i for i in clean_stream() if not (isinstance(i, Frame) and i.frame["seq"] >= 2)]
    v = check(truth, [], [sub(lost)], end=END)
    assert kinds(v) == {"lost": 1} and v.deaths[PER_DOMID].lost == 1

    twice = [*clean_stream()[:3], ev(11.03, 3, "death", 1, U1, reason="crash")]
    v = check(truth, [], [sub(twice)], end=END)
    assert kinds(v) == {"duplicated": 1} and v.deaths[PER_DOMID].duplicated == 1

    early = [relist(1, [row(1, U1)]), ev(5, 1, "death", 1, U1)]
    v = check(truth, [], [sub(early)], end=END)
    assert kinds(v)["death-of-live"] == 1

    # A death after the end of churn is not expected; one reported is still checked.
    h = Host()
    h.destroy(200, h.create(0, 1, U1))
    assert kinds(check(h.truth(), [], [sub([relist(1, [row(1, U1)])])], end=END)) == {}


def test_reasons_by_the_rule():
    truth = crash_host().truth()
    wrong = [*clean_stream()[:2], ev(11.01, 2, "death", 1, U1, reason="poweroff")]
    v = check(truth, [], [sub(wrong)], end=END)
    assert kinds(v) == {"wrong-reason": 1} and v.deaths[PER_DOMID].wrong_reason == 1

    # Told crash, then a death without it: the daemon knew (final reasons are kept).
    dropped = [*clean_stream()[:2], ev(11.01, 2, "death", 1, U1)]
    assert kinds(check(truth, [], [sub(dropped)], end=END)) == {"wrong-reason": 1}

    # Never told why: a death without a reason is right (the record was gone).
    unknown = [relist(1, [row(1, U1)]), ev(11.01, 1, "death", 1, U1)]
    assert kinds(check(truth, [], [sub(unknown)], end=END)) == {}

    # A failed migration: suspended, resumed, powered off. `suspend` at death is wrong.
    h = Host()
    inc = h.create(0, 1, U1)
    h.step(5, "shutdown", inc, reason="suspend")
    h.step(5.1, "resume", inc)
    h.step(8, "shutdown", inc, reason="poweroff")
    h.destroy(9, inc)
    told = [
        relist(1, [row(1, U1)]),
        ev(5.01, 1, "shutdown", 1, U1, reason="suspend"),
        ev(5.2, 2, "resumed", 1, U1),
        ev(8.01, 3, "shutdown", 1, U1, reason="poweroff"),
    ]
    right = [*told, ev(9.01, 4, "death", 1, U1, reason="poweroff")]
    assert kinds(check(h.truth(), [], [sub(right)], end=END)) == {}
    stale = [*told, ev(9.01, 4, "death", 1, U1, reason="suspend")]
    assert kinds(check(h.truth(), [], [sub(stale)], end=END)) == {"wrong-reason": 1}

    # A successful migration: suspended, destroyed. `suspend` at death is right.
    h = Host()
    inc = h.create(0, 1, U1)
    h.step(5, "shutdown", inc, reason="suspend")
    h.destroy(6, inc)
    away = [
        relist(1, [row(1, U1)]),
        ev(5.01, 1, "shutdown", 1, U1, reason="suspend"),
        ev(6.01, 2, "death", 1, U1, reason="suspend"),
    ]
    assert kinds(check(h.truth(), [], [sub(away)], end=END)) == {}
    # ... and no reason is right too: the daemon may not be able to tell.
    away[-1] = ev(6.01, 2, "death", 1, U1)
    assert kinds(check(h.truth(), [], [sub(away)], end=END)) == {}


def test_order_phantoms_and_seq():
    truth = crash_host().truth()
    released_first = [
        relist(1, [row(1, U1)]),
        ev(11.01, 1, "released", 1, U1),
        ev(11.02, 2, "death", 1, U1),
    ]
    # Released before the death, then a death after released: two inversions.
    assert kinds(check(truth, [], [sub(released_first)], end=END)) == {"order": 2}

    h = Host()
    inc = h.create(0, 1, U1)
    h.step(5, "shutdown", inc, reason="suspend")
    h.step(5.1, "resume", inc)
    h.step(6, "shutdown", inc, reason="poweroff")
    no_resumed = [
        relist(1, [row(1, U1)]),
        ev(5.01, 1, "shutdown", 1, U1, reason="suspend"),
        ev(6.01, 2, "shutdown", 1, U1, reason="poweroff"),
    ]
    assert kinds(check(h.truth(), [], [sub(no_resumed)], end=END)) == {"order": 1}

    # Domain 1 is reborn with U2: its events without a `new` are out of order.
    h = crash_host()
    h.create(12, 1, U2)
    unannounced = [*clean_stream(), ev(12.5, 4, "shutdown", 1, U2, reason="reboot")]
    v = check(h.truth(), [], [sub(unannounced)], end=END)
    assert kinds(v) == {"order": 1, "wrong-reason": 1}

    phantoms = [
        relist(1, [row(1, U1)]),
        ev(2, 1, "new", 1, U3),
        ev(3, 2, "resumed", 1, U1),
        ev(4, 3, "death", 7, U1),
    ]
    v = check(truth, [], [sub(phantoms, domids=(1, 7))], end=END)
    assert kinds(v) == {"phantom": 3, "lost": 1}

    repeated = [*clean_stream()[:2], ev(11.01, 1, "death", 1, U1, reason="crash")]
    assert kinds(check(truth, [], [sub(repeated)], end=END)) == {"seq-order": 1}


def test_gaps_only_where_the_journal_was_exceeded():
    truth = crash_host().truth()
    away = [relist(1, [row(1, U1)]), ev(10.01, 1, "shutdown", 1, U1, reason="crash")]

    legit = [*away, relist(20, absent=[1], cause="gap", seq=9)]
    v = check(truth, [], [sub(legit)], end=END)
    assert kinds(v) == {} and v.gaps == 1 and v.deaths[PER_DOMID].excused == 1

    needless = [*away, relist(20, absent=[1], cause="gap", seq=9, needless=True)]
    v = check(truth, [], [sub(needless)], end=END)
    assert kinds(v) == {"needless-gap": 1, "lost": 1}

    ignored = [*away, relist(20, absent=[1], cause="ignored", space="i", seq=0)]
    v = check(truth, [], [sub(ignored)], end=END)
    assert kinds(v) == {"cursor-ignored": 1, "lost": 1}

    lineage = [*away, relist(20, absent=[1], cause="gap", seq=9, history_changed=True)]
    assert kinds(check(truth, [], [sub(lineage)], end=END)) == {"history-changed": 1}

    # A replay from the cursor: nothing is lost, the seam is checked.
    resumed = [
        *away,
        Resumed(12 * S, 1, 3, "h"),
        ev(12.01, 2, "death", 1, U1, reason="crash", replayed=True, late=True),
        ev(12.02, 3, "released", 1, U1, replayed=True),
    ]
    v = check(truth, [], [sub(resumed)], end=END)
    assert kinds(v) == {} and v.replayed == 2 and v.late == 1
    seam = [*away, Resumed(12 * S, 1, 3, "h"), ev(12.01, 1, "shutdown", 1, U1, reason="crash")]
    assert "seq-order" in kinds(check(truth, [], [sub(seam)], end=END))

    refused = [*clean_stream(), Refused(12 * S, {"ok": False, "error": {"code": "bad-cursor"}})]
    assert kinds(check(truth, [], [sub(refused)], end=END)) == {"refused": 1}
    assert kinds(check(truth, [], [sub([])], end=END)) == {"refused": 1}  # never subscribed


def test_unwatched_and_bad_frames():
    truth = crash_host().truth()
    items = [
        *clean_stream(),
        ev(12, 4, "new", 2, U2),
        Frame(12 * S, {"seq": 5, "event": "death"}, "h"),
        ev(12, 6, "nap", 1, U1),
    ]
    s = sub(items)
    s.bad_lines.append("{not json")
    v = check(truth, [], [s], end=END)
    assert kinds(v) == {"unwatched": 1, "bad-frame": 3}


def test_observability_by_the_blind_windows():
    h = Host()
    seen = h.create(0, 1, U1)
    h.destroy(20.5, seen)  # died while the daemon was down, but it lived long before
    brief = h.create(20.2, 2, U2)
    h.destroy(20.6, brief)  # born and dead while the daemon was down
    down = [Fault("kill", 20 * S, 21 * S, True), Fault("flood", 1 * S, 90 * S, False)]
    classes = classify(h.truth(), down, S, END)
    assert classes == {seen: "observable", brief: "unobservable"}

    view = relist(1, [row(1, U1)], absent=[2])
    nothing = check(h.truth(), down, [sub([view], domids=(1, 2))], end=END)
    assert kinds(nothing) == {"lost": 1}  # the first one's death; the brief one is excused
    late = [view, ev(21.5, 1, "death", 1, U1, late=True), ev(21.5, 2, "released", 1, U1)]
    transient = [ev(21.5, 3, "new", 2, U2, transient=True), ev(21.5, 4, "death", 2, U2)]
    v = check(h.truth(), down, [sub([*late, *transient], domids=(1, 2))], end=END)
    assert kinds(v) == {} and v.transient == 1 and v.deaths[PER_DOMID].optional == 1
    twice = [*late, *transient, ev(21.6, 5, "death", 2, U2)]
    assert kinds(check(h.truth(), down, [sub(twice, domids=(1, 2))], end=END)) == {"duplicated": 1}

    # Without the fault the brief one (0.4 s) was observable with a 0.1 s margin.
    v = check(h.truth(), [], [sub(late, domids=(1, 2))], end=END, margin=S // 10)
    assert kinds(v) == {"lost": 1}


def test_same_uuid_reborn_unseen_is_indistinguishable():
    h = Host()
    first = h.create(0, 1, U1)
    h.destroy(30.2, first)
    again = h.create(30.4, 1, U1)
    stop = [Fault("stop", 30 * S, 33 * S, True)]
    assert classify(h.truth(), stop, S, END) == {first: "indistinguishable", again: "observable"}
    assert kinds(check(h.truth(), stop, [sub([relist(1, [row(1, U1)])])], end=END)) == {}
    # With time (0.2 s, more than a 0.1 s margin) between the death and the rebirth the
    # death is due.
    v = check(h.truth(), [], [sub([relist(1, [row(1, U1)])])], end=END, margin=S // 10)
    assert kinds(v) == {"lost": 1}


def test_events_go_to_the_incarnation_the_daemon_read():
    """Three incarnations with one UUID on domid 1. The daemon's `time` (when it read the
    record) tells which one an event is about, whenever it is received."""
    h = Host()
    first = h.create(0, 1, U1)
    h.destroy(10, first)
    second = h.create(12, 1, U1)
    h.destroy(20, second)
    third = h.create(22, 1, U1)
    h.step(30, "shutdown", third, reason="reboot")
    h.destroy(31, third)
    start = relist(1, [row(1, U1)])
    # A subscriber away from 5 s to 29 s that was told nothing of the rebirths: the reboot
    # is the third one's (not a wrong reason of the first), the two deaths before are lost,
    # and the third was never announced.
    away = [
        start,
        ev(30.01, 9, "shutdown", 1, U1, reason="reboot", time=30.005),
        ev(31.01, 10, "death", 1, U1, reason="reboot", time=31.005),
    ]
    v = check(h.truth(), [], [sub(away)], end=END)
    assert kinds(v) == {"order": 1, "lost": 2}
    assert {x.inc for x in v.violations if x.kind == "lost"} == {first, second}
    # Every event told, the second's replayed late (received after the third was born):
    # the `time` of each says whose it is.
    told = [
        start,
        ev(10.01, 1, "death", 1, U1, time=10.005),
        ev(10.02, 2, "released", 1, U1, time=10.005),
        ev(12.01, 3, "new", 1, U1, time=12.005),
        ev(25.0, 4, "death", 1, U1, replayed=True, time=20.005),
        ev(25.0, 5, "released", 1, U1, replayed=True, time=20.005),
        ev(25.0, 6, "new", 1, U1, replayed=True, time=22.005),
        ev(30.01, 7, "shutdown", 1, U1, reason="reboot", time=30.005),
        ev(31.01, 8, "death", 1, U1, reason="reboot", time=31.005),
    ]
    v = check(h.truth(), [], [sub(told)], end=END)
    assert kinds(v) == {} and v.deaths[PER_DOMID].once == 3 and v.replayed == 3


def reborn(born: float, died: float, again: float, end: float, uuid: str = U1):
    """Domain 1 (U1) from `born` to `died`, built again with `uuid` from `again` to `end`:
    the host and the two incarnations."""
    h = Host()
    first = h.create(born, 1, U1)
    h.destroy(died, first)
    second = h.create(again, 1, uuid)
    h.destroy(end, second)
    return h, first, second


def test_a_rebirth_no_record_could_show_hides_one_death_not_two():
    """Domain 1 (U1) dies at 10 s and is built again with U1 at 11 s, all while the daemon
    is stopped; the second one dies at 20 s. The one death told is the second's (the
    daemon tells a death when it sees it); the first is indistinguishable, and the second
    could not be announced."""
    h, first, _second = reborn(0, 10, 11, 20)
    stop = [Fault("stop", 9 * S, 12 * S, True)]
    told = [relist(1, [row(1, U1)]), ev(20.01, 5, "death", 1, U1, time=20.005)]
    v = check(h.truth(), stop, [sub(told)], end=END)
    assert kinds(v) == {} and v.deaths[PER_DOMID].once == 1
    assert v.incarnations == {"indistinguishable": 1, "observable": 1}
    # Seen by a daemon that was up, the first death was due, and so was the second `new`.
    v = check(h.truth(), [], [sub(told)], end=END)
    assert kinds(v) == {"order": 1, "lost": 1}
    assert [x.inc for x in v.violations if x.kind == "lost"] == [first]


def test_a_rebirth_no_record_could_show_excuses_an_unobservable_first_one_too():
    """Domain 1 (U1) is built just before the daemon is killed, long enough for a scan to
    announce it but not for a margin of visible life; it dies at 20.5 s and is built again
    with U1 at 21.5 s, both while no daemon runs. Without unique ids the restarted daemon's
    first scan finds U1 on domid 1 with a cpu_time not behind (a table replayed from the
    journal even has 0 there): one incarnation to it, so the second one's death at 40 s is
    the first it tells of the second. No record could have announced the second, whether
    or not the first was observable (the chaos run's "death of an incarnation never
    announced", seed 1, domid 872)."""
    h, first, second = reborn(18.9, 20.5, 21.5, 40)
    kill = [Fault("kill", 20 * S, 22 * S, True)]
    assert classify(h.truth(), kill, S, END) == {
        first: "indistinguishable",
        second: "observable",
    }
    told = [
        relist(1, absent=[1]),
        ev(18.91, 1, "new", 1, U1, time=18.905),
        ev(40.01, 2, "death", 1, U1, time=40.005),
        ev(40.02, 3, "released", 1, U1, time=40.005),
    ]
    v = check(h.truth(), kill, [sub(told)], end=END)
    assert kinds(v) == {} and v.deaths[PER_DOMID].once == 1
    # Reborn with another UUID, it could be told apart: its death without its `new` is
    # the daemon's fault, the first one being unobservable or not.
    other, _first, _second = reborn(18.9, 20.5, 21.5, 40, uuid=U2)
    renamed = [*told[:2], ev(40.01, 2, "death", 1, U2, time=40.005)]
    v = check(other.truth(), kill, [sub(renamed)], end=END)
    assert kinds(v) == {"order": 1}
    assert v.incarnations == {"unobservable": 1, "observable": 1}


def test_an_untold_rebirth_excuses_only_the_next_incarnation():
    """Domain 1 (U1) dies at 10 s and is built again with U1 at 11 s while the daemon is
    stopped (the second is indistinguishable from the first); the second dies at 20 s with
    the daemon up, and a third is built with U1 at 22 s. A death of the third with no `new`
    before it is not excused by the first rebirth: the second's death and the third's
    `new` were both there to be told."""
    h = Host()
    first = h.create(0, 1, U1)
    h.destroy(10, first)
    second = h.create(11, 1, U1)
    h.destroy(20, second)
    third = h.create(22, 1, U1)
    h.destroy(30, third)
    stop = [Fault("stop", 9 * S, 12 * S, True)]
    assert classify(h.truth(), stop, S, END) == {
        first: "indistinguishable",
        second: "observable",
        third: "observable",
    }
    told = [relist(1, [row(1, U1)]), ev(30.01, 5, "death", 1, U1, time=30.005)]
    v = check(h.truth(), stop, [sub(told)], end=END)
    assert kinds(v) == {"order": 1, "lost": 1}
    assert [x.inc for x in v.violations if x.kind == "order"] == [third]
    assert [x.inc for x in v.violations if x.kind == "lost"] == [second]


def test_client_library_missed_deaths_need_a_real_gap():
    truth = crash_host().truth()
    start = relist(1, [row(1, U1)], space="a")
    missed = [ev(20, None, "death", 1, U1, space="b", missed=True)]
    needless = Reconnect(20 * S, 1, {"instance": "b"}, True, "b")
    v = check(truth, [], [sub([start, needless, *missed], domids=None, kind=WILDCARD)], end=END)
    assert kinds(v) == {"needless-gap": 1}
    assert v.deaths[WILDCARD].missed == 1 and v.deaths[WILDCARD].once == 1
    real = Reconnect(20 * S, 1, {"history": "x", "oldest_seq": 50}, False, "b")
    v = check(truth, [], [sub([start, real, *missed], domids=None, kind=WILDCARD)], end=END)
    assert kinds(v) == {} and v.gaps == 1


def test_latest_mode_never_coalesces_a_death_away():
    truth = crash_host().truth()
    start = relist(1, [row(1, U1)])
    coalesced = [start, ev(12, 3, "state", 1, U1, state="dead", reason="crash")]
    v = check(truth, [], [sub(coalesced, domids=None, kind=LATEST)], end=END)
    assert kinds(v) == {"lost": 1}
    kept = [
        start,
        ev(12, 2, "death", 1, U1, reason="crash"),
        ev(12, 3, "state", 1, U1, state="dead", reason="crash"),
    ]
    v = check(truth, [], [sub(kept, domids=None, kind=LATEST)], end=END)
    assert kinds(v) == {} and v.deaths[LATEST].once == 1


def test_a_latest_mode_death_may_stand_for_the_new_it_replaced():
    """A slow latest-mode subscriber's pending state frame of an incarnation is replaced by
    its death (docs/protocol.md): the death is the first it hears of that incarnation. An
    events-mode subscriber must have been told of it first."""
    h = Host()
    first = h.create(0, 1, U1)
    h.destroy(10, first)
    second = h.create(11, 1, U2)
    h.destroy(12, second)
    start = relist(1, [row(1, U1)])
    folded = [
        start,
        ev(10.01, 1, "death", 1, U1, time=10.005),
        ev(10.02, 2, "released", 1, U1, time=10.005),
        ev(12.01, 4, "death", 1, U2, time=12.005),
        ev(12.02, 5, "released", 1, U2, time=12.005),
    ]
    v = check(h.truth(), [], [sub(folded, domids=None, kind=LATEST)], end=END)
    assert kinds(v) == {} and v.deaths[LATEST].once == 2
    v = check(h.truth(), [], [sub(folded)], end=END)
    assert kinds(v) == {"order": 1}


def test_journal_would_serve():
    hello = {"history": "h1", "oldest_seq": 10, "seq": 40}
    assert journal_would_serve(9, "h1", hello) and journal_would_serve(40, None, hello)
    assert not journal_would_serve(8, "h1", hello)  # older than the journal: a real gap
    assert not journal_would_serve(12, "h0", hello)  # another history: a real gap
    assert journal_would_serve(5, None, {"seq": 9})  # no journal at all: it should have one
    assert not journal_would_serve(None, None, hello)


def write_lines(path, lines) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_follow_log_is_read_into_streams(tmp_path):
    snapshot = {"id": 1, "ok": True, "history": "h1", "seq": 4, "snapshot": [row(1, U1)]}
    gap = {"id": 1, "ok": True, "gap": True, "history": "h1", "seq": 30, "snapshot": []}
    gap["absent"] = [1]
    frame = {"seq": 5, "event": "shutdown", "domid": 1, "uuid": U1, "reason": "crash"}
    replayed = {"seq": 6, "event": "death", "domid": 1, "uuid": U1, "reason": "crash"}
    lines = [
        'Q 0 1000000000 {"op":"subscribe","id":1,"domids":[1]}',
        f"J 0 1000000100 {json.dumps(snapshot)}",
        'J 0 1000000200 {"id": 2, "ok": true, "history": "h1", "oldest_seq": 1, "seq": 4}',
        f"J 0 10100000000 {json.dumps(frame)}",
        'J 0 10100000100 {"event": "overflow", "seq": 9}',
        "E 0 10100000200 0",
        'Q 0 11500000000 {"op":"subscribe","id":1,"domids":[1],"since":5,"history":"h1"}',
        'J 0 11500000100 {"id": 1, "ok": true, "history": "h1", "seq": 6, "since": 5}',
        f"J 0 11500000200 {json.dumps(replayed)}",
        "E 0 12000000000 0",
        'Q 0 20000000000 {"op":"subscribe","id":1,"domids":[1],"since":6,"history":"h1"}',
        f"J 0 20000000100 {json.dumps(gap)}",
        "G 0 20000000100 30",
        'J 0 20000000200 {"id": 2, "ok": true, "history": "h1", "oldest_seq": 7, "seq": 30}',
        "F 1 3 2",
    ]
    [s] = read_follow_log(write_lines(tmp_path / "r", lines), PER_DOMID, "per-domid")
    assert s.domids == frozenset({1}) and s.overflows == 1 and s.disconnects == 2
    first, shut, resumed, death, gap_item = s.items
    assert isinstance(first, Relist) and first.cause == "initial" and first.space == "history h1"
    assert isinstance(shut, Frame) and not shut.replayed
    assert isinstance(resumed, Resumed) and (resumed.since, resumed.seq) == (5, 6)
    assert isinstance(death, Frame) and death.replayed
    assert isinstance(gap_item, Relist) and gap_item.cause == "gap" and gap_item.absent == [1]
    assert gap_item.needless  # the hello after it: oldest_seq 7, cursor 6 (still served)

    lines[-2] = 'J 0 20000000200 {"id": 2, "ok": true, "history": "h1", "oldest_seq": 8, "seq": 30}'
    [s] = read_follow_log(write_lines(tmp_path / "r2", lines), PER_DOMID, "per-domid")
    assert not s.items[-1].needless
    assert kinds(check(crash_host().truth(), [], [s], end=END)) == {}

    failed = write_lines(tmp_path / "r3", [*lines, "X 0 24 connect"])
    with pytest.raises(StreamError, match="the subscriber failed: X 0 24 connect"):
        read_follow_log(failed, PER_DOMID, "per-domid")


def test_client_log_is_read_into_a_stream(tmp_path):
    recs = [
        {"t": 100, "start": {"snapshot": [row(1, U1)], "hello": {"history": "h1"}, "seq": 3}},
        {"t": 200, "event": {"seq": 4, "event": "shutdown", "domid": 1, "uuid": U1}},
        {"t": 300, "reconnect": {"cursor": 4, "history": "h1", "hello": {"history": "h1"}}},
        {"t": 400, "event": {"event": "death", "domid": 1, "uuid": U1, "missed": True}},
    ]
    s = read_client_log(write_lines(tmp_path / "w", map(json.dumps, recs)), WILDCARD, "steady")
    start, frame, rc, missed = s.items
    assert isinstance(frame, Frame) and frame.frame["seq"] == 4 and frame.space == "history h1"
    assert isinstance(start, Relist) and start.seq == 3 and start.space == "history h1"
    assert isinstance(rc, Reconnect) and rc.needless  # no oldest_seq named: no journal
    assert missed.frame["missed"] and s.domids is None
    broken = write_lines(tmp_path / "b", ['{"t": 1, "error": "boom"}'])
    with pytest.raises(StreamError, match="boom"):
        read_client_log(broken, WILDCARD, "steady")


def test_truth_log_errors_name_the_line(tmp_path):
    with pytest.raises(TruthError, match="line 1: dying of incarnation 4 before create"):
        Truth.from_entries([{"step": "dying", "inc": 4, "mono": 1}])
    path = tmp_path / "truth.jsonl"
    path.write_text('{"step": "create"}\n')
    with pytest.raises(TruthError, match="line 1: missing or bad field"):
        Truth.load(str(path))
    path.write_text("nonsense\n")
    with pytest.raises(TruthError, match="line 1"):
        Truth.load(str(path))


def test_every_violation_kind_is_exercised_here():
    """The list of kinds the oracle reports, each caught by a test above."""
    assert set(oracle.VIOLATION_KINDS) == {
        "lost",
        "duplicated",
        "death-of-live",
        "wrong-reason",
        "order",
        "phantom",
        "seq-order",
        "needless-gap",
        "cursor-ignored",
        "history-changed",
        "refused",
        "unwatched",
        "bad-frame",
    }
