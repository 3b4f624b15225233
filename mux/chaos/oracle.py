"""The oracle of a chaos run: what every subscriber received, checked against the truth.

Pure functions of the host's ground truth (mux.chaos.truth), the fault windows the runner
recorded, and each subscriber's stream (mux.chaos.streams). docs/chaos.md states the rules;
in short:

* An incarnation is *observable* when, outside the blind windows (a fault that kept the
  daemon from scanning: killed or stopped daemon, xenstored away, failing hypercalls,
  widened by `margin` on both sides), it existed for at least `margin`: the daemon then
  scanned while it existed. Its death (if before the end of churn) must reach every
  subscriber that watched its domid from before it died: exactly once, in order, with
  the right reason. An unobservable one may be reported (its death once, at most), or not.
* When the next incarnation on the same domid has the same UUID and no `margin` of
  visible time lies between the death and the rebirth, no record could show the death:
  it is *indistinguishable*, and like an unobservable one may go unreported.
* A death passed over by a relist counts as excused only when the relist was a gap the
  journal could not have served (its cursor older than `oldest_seq`); otherwise it is lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from mux.chaos.streams import (
    LATEST,
    SUBSCRIBER_KINDS,
    Frame,
    Reconnect,
    Refused,
    Relist,
    Resumed,
    Subscriber,
)
from mux.chaos.truth import UNDOABLE, Incarnation, Truth

# How far apart two processes' reads of the clocks may be (the daemon's `time` is Unix time).
CLOCK_SLACK = 50_000_000  # ns

# Event kinds of docs/protocol.md (paused/unpaused are not checked: not subscribed to).
_EVENT_KINDS = frozenset({"new", "shutdown", "resumed", "death", "released", "paused", "unpaused"})

OBSERVABLE = "observable"
UNOBSERVABLE = "unobservable"
INDISTINGUISHABLE = "indistinguishable"

# Violation kinds: each one is a way the daemon (or the client library) broke the contract.
LOST = "lost"  # an observable death never reported
DUPLICATED = "duplicated"  # a death reported twice (or again after a snapshot showed it)
DEATH_OF_LIVE = "death-of-live"  # a death before the incarnation died
WRONG_REASON = "wrong-reason"  # a reason the rule of docs/protocol.md does not allow
ORDER = "order"  # events of a domid out of lifecycle order
PHANTOM = "phantom"  # an event or row naming an incarnation or step that never was
SEQ_ORDER = "seq-order"  # seq repeated or going back within one history
NEEDLESS_GAP = "needless-gap"  # a gap (or missed events) where the journal held the cursor
CURSOR_IGNORED = "cursor-ignored"  # a cursor answered with neither replay nor gap
HISTORY_CHANGED = "history-changed"  # the lineage was lost though the state dir was kept
REFUSED = "refused"  # a subscribe answered with an error
UNWATCHED = "unwatched"  # an event for a domid the subscriber did not ask for
BAD_FRAME = "bad-frame"  # a line that is not a frame of the protocol
VIOLATION_KINDS = (
    LOST,
    DUPLICATED,
    DEATH_OF_LIVE,
    WRONG_REASON,
    ORDER,
    PHANTOM,
    SEQ_ORDER,
    NEEDLESS_GAP,
    CURSOR_IGNORED,
    HISTORY_CHANGED,
    REFUSED,
    UNWATCHED,
    BAD_FRAME,
)


@dataclass(frozen=True)
class Fault:
    kind: str
    start: int  # CLOCK_MONOTONIC ns
    end: int
    blind: bool  # the daemon could not see the host meanwhile


@dataclass
class Violation:
    kind: str
    subscriber: str
    detail: str
    domid: int | None = None
    inc: int | None = None
    t: int | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Deaths:
    """Deaths per subscriber kind: expected (observable), seen once, lost, duplicated..."""

    expected: int = 0
    once: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong_reason: int = 0
    missed: int = 0  # reported by the client library as `missed` (after a gap)
    excused: int = 0  # passed over by a gap the journal could not serve
    optional: int = 0  # unobservable or indistinguishable deaths that were reported


def _by_kind(make):
    return {kind: make() for kind in SUBSCRIBER_KINDS}


@dataclass
class Verdict:
    violations: list[Violation] = field(default_factory=list)
    deaths: dict[str, Deaths] = field(default_factory=lambda: _by_kind(Deaths))
    incarnations: Counter[str] = field(default_factory=Counter)
    events: int = 0
    replayed: int = 0
    gaps: int = 0
    late: int = 0
    transient: int = 0
    overflows: int = 0
    subscribers: Counter[str] = field(default_factory=Counter)

    def by_kind(self) -> Counter[str]:
        return Counter(v.kind for v in self.violations)

    def figures(self, examples: int = 5) -> dict:
        shown: Counter[str] = Counter()
        sample = []
        for v in self.violations:
            if shown[v.kind] < examples:
                shown[v.kind] += 1
                sample.append(v.as_dict())
        return {
            "violations": sum(self.by_kind().values()),
            "violations_by_kind": dict(self.by_kind()),
            "violation_examples": sample,
            "deaths": {k: d.__dict__.copy() for k, d in self.deaths.items()},
            "incarnations": dict(self.incarnations),
            "events_checked": self.events,
            "replayed": self.replayed,
            "gaps": self.gaps,
            "late": self.late,
            "transient": self.transient,
            "overflows": self.overflows,
            "subscribers": dict(self.subscribers),
        }


# -- observability -----------------------------------------------------------------------


def blind_windows(faults: Iterable[Fault], margin: int) -> list[tuple[int, int]]:
    """The blind faults, widened by `margin` each side, merged and sorted."""
    spans = sorted((f.start - margin, f.end + margin) for f in faults if f.blind)
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def visible(a: int, b: int, blind: list[tuple[int, int]]) -> int:
    """Nanoseconds of [a, b) outside the blind windows."""
    if b <= a:
        return 0
    total = b - a
    for x, y in blind:
        if y <= a:
            continue
        if x >= b:
            break
        total -= min(b, y) - max(a, x)
    return total


def classify(truth: Truth, faults: Iterable[Fault], margin: int, end: int) -> dict[int, str]:
    """Each guest incarnation: observable, unobservable or indistinguishable."""
    blind = blind_windows(faults, margin)
    out: dict[int, str] = {}
    for incs in truth.by_domid.values():
        for i, dom in enumerate(incs):
            if dom.domid == 0:
                continue
            # Decided first: a daemon that saw one that was brief (unobservable) takes its
            # rebirth for it just the same, and then cannot announce the rebirth.
            nxt = incs[i + 1] if i + 1 < len(incs) else None
            if (
                nxt is not None
                and dom.died is not None
                and nxt.uuid == dom.uuid
                and visible(dom.died, nxt.born, blind) < margin
            ):
                out[dom.inc] = INDISTINGUISHABLE
                continue
            until = dom.gone if dom.gone is not None else end
            out[dom.inc] = OBSERVABLE if visible(dom.born, until, blind) >= margin else UNOBSERVABLE
    return out


# -- one subscriber's stream -------------------------------------------------------------


@dataclass
class _Seen:
    """What one subscriber was told of one incarnation."""

    deaths: int = 0
    announced: bool = False
    released: bool = False
    missed: bool = False
    snapshot_dead: bool = False  # a snapshot (or latest state) showed it dead
    # Passed over with its death untold: by the first snapshot ("initial"), a gap the
    # journal could not serve ("gap"), any other relist ("relist"), or a later
    # incarnation's events ("skipped").
    passed: str | None = None
    shut: str | None = None  # the shutdown reason in force as told
    known_final: str | None = None  # a reason told that no resume can undo


class _Checker:
    def __init__(
        self, truth: Truth, verdict: Verdict, sub: Subscriber, classes: dict[int, str]
    ) -> None:
        self.truth = truth
        self.v = verdict
        self.sub = sub
        self.classes = classes
        # Latest mode keeps each domid's frames in order, not the frames of all domids.
        self.seq_per_domid = sub.kind == LATEST
        self.seen: dict[int, _Seen] = {}
        self.floor: dict[int, int] = {}  # domid -> index of the first incarnation not reached
        self.cur: dict[int, int | None] = {}  # domid -> index of the incarnation in view
        self.last_seq: dict[str, int] = {}
        self.reconnect: Reconnect | None = None
        self.reconnect_missed = False

    def flag(self, kind: str, detail: str, dom: Incarnation | None = None, t=None, domid=None):
        self.v.violations.append(
            Violation(
                kind,
                self.sub.name,
                detail,
                domid if dom is None else dom.domid,
                None if dom is None else dom.inc,
                t,
            )
        )

    def s(self, dom: Incarnation) -> _Seen:
        seen = self.seen.get(dom.inc)
        if seen is None:
            seen = self.seen[dom.inc] = _Seen()
        return seen

    def watched(self, domid: int) -> bool:
        return self.sub.domids is None or domid in self.sub.domids

    # moving the view

    def _pass(self, dom: Incarnation, excuse: str) -> None:
        seen = self.s(dom)
        if seen.deaths == 0 and seen.passed is None:
            seen.passed = excuse

    def reach(self, domid: int, index: int, excuse: str) -> None:
        """Move the view of `domid` to its incarnation `index`: those before it that were
        not told dead are passed over (excused as `excuse` says)."""
        incs = self.truth.by_domid[domid]
        cur = self.cur.get(domid)
        if cur is not None and cur < index:
            self._pass(incs[cur], excuse)
        for j in range(self.floor.get(domid, 0), index):
            if j != cur:
                self._pass(incs[j], excuse)
        self.floor[domid] = max(self.floor.get(domid, 0), index)

    def find(self, domid: int, uuid: str, at: int, kind: str = "new") -> int | None:
        """The incarnation not yet reached with this UUID that an event the daemon read at
        `at` is about: born by then, and still there then (dead by then, for a death or a
        release); the first such, else the last one born by then."""
        found = None
        for j in range(self.floor.get(domid, 0), len(self.truth.by_domid[domid])):
            dom = self.truth.by_domid[domid][j]
            if dom.born > at + CLOCK_SLACK:
                break
            if dom.uuid != uuid:
                continue
            found = j
            if kind in ("death", "released"):
                if dom.died is not None and dom.died <= at + CLOCK_SLACK:
                    return j
            elif dom.gone is None or dom.gone >= at - CLOCK_SLACK:
                return j
        return found

    def latest(self, domid: int, uuid: str, t: int) -> int | None:
        """The latest incarnation with this UUID born by time t (a snapshot's row)."""
        found = None
        for j, dom in enumerate(self.truth.by_domid.get(domid, ())):
            if dom.born > t:
                break
            if dom.uuid == uuid:
                found = j
        return found

    def view_row(self, t: int, domid: int, row: dict | None, excuse: str) -> None:
        """A snapshot row (or a latest-mode state) says what `domid` is at time t."""
        incs = self.truth.by_domid.get(domid)
        state = None if row is None else row.get("state")
        if row is None or state == "absent":
            if not incs:
                return
            # Absent: those dead by then are passed over; one born since may follow.
            k = 0
            while k < len(incs) and incs[k].died is not None and incs[k].died <= t:
                k += 1
            self.reach(domid, k, excuse)
            self.cur[domid] = None
            return
        idx = None if not incs else self.latest(domid, row.get("uuid"), t + CLOCK_SLACK)
        if idx is None:
            self.flag(PHANTOM, f"a view row names no incarnation: {row}", t=t, domid=domid)
            return
        dom = incs[idx]
        self.reach(domid, idx, excuse)
        self.floor[domid] = max(self.floor.get(domid, 0), idx + 1)
        self.cur[domid] = idx
        seen = self.s(dom)
        seen.announced = True
        reason = row.get("reason")
        if state == "dead":
            if reason is not None and reason != dom.reason_at_death():
                self.flag(WRONG_REASON, f"a dead row says {reason!r}", dom, t)
        elif reason is not None and reason not in dom.reasons_by(t):
            self.flag(WRONG_REASON, f"a view row says reason {reason!r}", dom, t)
        if state == "shutdown":
            seen.shut = reason
            if reason is not None and reason not in UNDOABLE:
                seen.known_final = reason
        elif state == "running":
            seen.shut = None
        elif state == "dead" and seen.deaths == 0 and not seen.snapshot_dead:
            seen.snapshot_dead = True
            self._pass(dom, excuse)

    # items

    def relist(self, item: Relist) -> None:
        if item.cause == "gap":
            if item.history_changed:
                self.flag(HISTORY_CHANGED, "a gap reply names another history", t=item.t)
            if item.needless:
                self.flag(NEEDLESS_GAP, "gap though the journal held the cursor", t=item.t)
            else:
                self.v.gaps += 1
        elif item.cause == "ignored":
            self.flag(CURSOR_IGNORED, "a subscribe with since got a plain snapshot", t=item.t)
        legit = item.cause == "initial" or (item.cause == "gap" and not item.needless)
        excuse = ("initial" if item.cause == "initial" else "gap") if legit else "relist"
        domids = set(item.rows) | set(item.absent)
        if self.sub.domids is not None:
            domids = set(self.sub.domids)
        else:
            domids |= set(self.truth.by_domid)
        for domid in sorted(domids):
            if domid == 0 and domid not in item.rows:
                continue
            self.view_row(item.t, domid, item.rows.get(domid), excuse)
        self.last_seq[item.space] = max(self.last_seq.get(item.space, -1), item.seq)

    def frame(self, item: Frame) -> None:
        f = item.frame
        self.v.events += 1
        kind = f.get("event")
        domid, uuid = f.get("domid"), f.get("uuid")
        if not isinstance(domid, int) or not isinstance(uuid, str) or not isinstance(kind, str):
            self.flag(BAD_FRAME, f"not an event frame: {f}", t=item.t)
            return
        if item.replayed:
            self.v.replayed += 1
        self.v.late += bool(f.get("late"))
        self.v.transient += bool(f.get("transient"))
        seq = f.get("seq")
        if f.get("missed"):
            rc = self.reconnect
            if rc is not None and not self.reconnect_missed:
                # The first `missed` event after a reconnect: that reconnect was a gap.
                if rc.needless:
                    self.flag(NEEDLESS_GAP, "missed events, the journal held the cursor", t=item.t)
                else:
                    self.v.gaps += 1
            self.reconnect_missed = True
        elif isinstance(seq, int):
            space = f"{item.space} domid {domid}" if self.seq_per_domid else item.space
            last = max(self.last_seq.get(space, -1), self.last_seq.get(item.space, -1))
            if seq <= last:
                self.flag(SEQ_ORDER, f"seq {seq} after {last}", t=item.t, domid=domid)
            self.last_seq[space] = max(last, seq)
        if not self.watched(domid):
            self.flag(UNWATCHED, f"{kind} for a domid not subscribed to", t=item.t, domid=domid)
            return
        incs = self.truth.by_domid.get(domid)
        if not incs:
            self.flag(PHANTOM, f"{kind} for a domid the host never had", t=item.t, domid=domid)
            return
        # When the daemon read the record: its `time` (taken just after), never after receipt.
        at = item.t
        if isinstance(f.get("time"), (int, float)) and not isinstance(f["time"], bool):
            at = min(at, self.truth.mono_of(f["time"]))
        if kind == "state":
            self.view_row(at, domid, f, "skipped")
            return
        if kind not in _EVENT_KINDS:
            self.flag(BAD_FRAME, f"unknown event {kind!r}", t=item.t, domid=domid)
            return
        cur = self.cur.get(domid)
        if kind == "new":
            idx = self.find(domid, uuid, at)
            if idx is None:
                if cur is not None and incs[cur].uuid == uuid:
                    self.flag(ORDER, "new again for the incarnation in view", incs[cur], item.t)
                else:
                    self.flag(PHANTOM, f"new {uuid} matches no incarnation", t=item.t, domid=domid)
                return
            self.reach(domid, idx, "skipped")
            self.floor[domid] = idx + 1
            self.cur[domid] = idx
            self.s(incs[idx]).announced = True
            return
        idx = cur if cur is not None and incs[cur].uuid == uuid else None
        later = None
        if idx is not None:
            later = self._later(incs, idx, kind, at)
            if later is not None:
                idx = None  # of a later incarnation with this UUID: the view skips to it
            elif self.s(incs[idx]).released:
                self.flag(ORDER, f"{kind} after released", incs[idx], item.t)
        if idx is None:
            idx = later if later is not None else self.find(domid, uuid, at, kind)
            if idx is None:
                self.flag(PHANTOM, f"{kind} {uuid} matches no incarnation", t=item.t, domid=domid)
                return
            # Its `new` could not be told if no record could tell it from the one in view;
            # and a slow latest-mode subscriber's death frame takes the place of the state
            # frame that would have announced it (docs/protocol.md, "Slow subscribers in
            # `latest` mode"): the death names the incarnation itself.
            folded = self.seq_per_domid and kind == "death"
            # Untold only through a chain of rebirths no record could show: from the one in
            # view to this one, each indistinguishable from the next.
            untold = (
                cur is not None
                and cur < idx
                and all(self.classes.get(incs[j].inc) == INDISTINGUISHABLE for j in range(cur, idx))
            )
            if not folded and not untold:
                self.flag(ORDER, f"{kind} of an incarnation never announced", incs[idx], item.t)
            self.reach(domid, idx, "skipped")
            self.floor[domid] = idx + 1
            self.cur[domid] = idx
            self.s(incs[idx]).announced = True
        self.event(item, incs[idx], kind, f)

    def _later(self, incs: list[Incarnation], idx: int, kind: str, at: int) -> int | None:
        """A later incarnation with the UUID of `incs[idx]`, the one in view, that an event
        read at `at` is about rather than the one in view; None if it is the one in view.

        Not the one in view when it was released already, or had its death told (for
        another death), or was gone when the daemon read the record (for anything but a
        death or a release). A death or release read when a later one had died too is the
        latest such one's: the daemon tells a death when it sees it."""
        dom = incs[idx]
        seen = self.s(dom)
        if kind in ("death", "released"):
            dead_by = [
                j
                for j in range(max(idx + 1, self.floor.get(dom.domid, 0)), len(incs))
                if incs[j].uuid == dom.uuid
                and incs[j].died is not None
                and incs[j].died <= at + CLOCK_SLACK
            ]
            if dead_by:
                return dead_by[-1]
            told = seen.deaths > 0 or seen.snapshot_dead
            stale = seen.released or (kind == "death" and told)
        else:
            stale = seen.released or (dom.gone is not None and dom.gone < at - CLOCK_SLACK)
        return self.find(dom.domid, dom.uuid, at, kind) if stale else None

    def event(self, item: Frame, dom: Incarnation, kind: str, f: dict) -> None:
        seen = self.s(dom)
        t = item.t
        reason = f.get("reason")
        if kind == "shutdown":
            if reason not in dom.reasons_by(t):
                self.flag(WRONG_REASON, f"shutdown {reason!r}: the host did not", dom, t)
            if seen.shut is not None and seen.shut != reason:
                self.flag(ORDER, f"shutdown {reason!r} after {seen.shut!r}, no resumed", dom, t)
            seen.shut = reason
            if reason is not None and reason not in UNDOABLE:
                seen.known_final = reason
        elif kind == "resumed":
            # A rebirth no record could tell from a resume is not the daemon's fault.
            if not dom.resumed_by(t) and self.classes.get(dom.inc) != INDISTINGUISHABLE:
                self.flag(PHANTOM, "resumed: the host never resumed it", dom, t)
            seen.shut = None
        elif kind == "death":
            seen.deaths += 1
            seen.missed = seen.missed or bool(f.get("missed"))
            if seen.deaths > 1 or seen.snapshot_dead:
                self.flag(DUPLICATED, "death reported again", dom, t)
            if dom.died is None or dom.died > t:
                self.flag(DEATH_OF_LIVE, "death of a living incarnation", dom, t)
            elif seen.deaths == 1:
                self.check_reason(dom, seen, reason, t)
        elif kind == "released":
            if seen.deaths == 0 and not seen.snapshot_dead:
                self.flag(ORDER, "released before death", dom, t)
            seen.released = True

    def check_reason(self, dom: Incarnation, seen: _Seen, reason, t: int) -> None:
        truth = dom.reason_at_death()
        if reason is not None:
            if reason != truth:
                ran = " (it ran again after it)" if reason in dom.reasons_by(t) else ""
                self.flag(WRONG_REASON, f"death {reason!r}, the host says {truth!r}{ran}", dom, t)
                self.v.deaths[self.sub.kind].wrong_reason += 1
        elif seen.known_final is not None:
            self.flag(WRONG_REASON, f"death without {seen.known_final!r}, told before", dom, t)
            self.v.deaths[self.sub.kind].wrong_reason += 1

    def run(self, end: int) -> None:
        for item in self.sub.items:
            if isinstance(item, Relist):
                self.relist(item)
            elif isinstance(item, Frame):
                self.frame(item)
            elif isinstance(item, Resumed):
                self.last_seq[item.space] = max(self.last_seq.get(item.space, -1), item.since)
            elif isinstance(item, Reconnect):
                self.reconnect, self.reconnect_missed = item, False
            elif isinstance(item, Refused):
                self.flag(REFUSED, f"subscribe refused: {item.reply.get('error')}", t=item.t)
        for line in self.sub.bad_lines:
            self.flag(BAD_FRAME, f"not JSON: {line[:120]}")
        self.v.overflows += self.sub.overflows
        self.tally(end, self.classes)

    def tally(self, end: int, classes: dict[int, str]) -> None:
        first = self.sub.first_t
        deaths = self.v.deaths[self.sub.kind]
        if first is None:
            self.flag(REFUSED, "never got a snapshot: it was not subscribed")
        domids = self.truth.by_domid if self.sub.domids is None else self.sub.domids
        for domid in domids:
            for dom in self.truth.by_domid.get(domid, ()):
                if dom.domid == 0 or dom.died is None or dom.died > end:
                    continue
                seen = self.seen.get(dom.inc) or _Seen()
                if first is None or dom.died < first or seen.passed == "initial":
                    continue  # dead before this subscriber's first snapshot
                cls = classes.get(dom.inc, OBSERVABLE)
                if cls != OBSERVABLE:
                    deaths.optional += seen.deaths > 0
                    continue
                deaths.expected += 1
                if seen.deaths == 1:
                    deaths.once += 1
                    deaths.missed += seen.missed
                elif seen.deaths > 1:
                    deaths.duplicated += 1
                elif seen.passed == "gap":
                    deaths.excused += 1
                else:
                    deaths.lost += 1
                    how = {
                        "relist": "passed over by a relist that was no gap",
                        "skipped": "never reported, a later state of the domid was",
                    }.get(seen.passed or "", "never reported")
                    self.flag(LOST, f"death {how}", dom, dom.died)


def check(
    truth: Truth,
    faults: Iterable[Fault],
    subscribers: Iterable[Subscriber],
    *,
    end: int,
    margin: int = 1_000_000_000,
) -> Verdict:
    """Check every subscriber against the truth. `end` (CLOCK_MONOTONIC ns) is the end of
    churn: deaths after it are not expected; `margin` the observability margin (ns)."""
    faults = list(faults)
    classes = classify(truth, faults, margin, end)
    verdict = Verdict()
    verdict.incarnations.update(classes.values())
    for sub in subscribers:
        verdict.subscribers[sub.kind] += 1
        _Checker(truth, verdict, sub, classes).run(end)
    return verdict
