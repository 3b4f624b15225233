"""The notifications the C processes append to a shared results file, and what was expected.

Every line is `KIND DOMID A B` (see monitor.c and subscriber.c): for a notification A is the
CLOCK_MONOTONIC ns of its receipt; `R` lines say a process is ready, `F` lines carry its
counters at exit, `X` lines a failure.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

NOTIFY_KINDS = frozenset({"new", "shutdown", "resumed", "death", "released", "fire"})

# Latency categories: what raised the notification.
FIRED = "fired"  # a @releaseDomain firing (shutdown, death, released)
CREATED = "created"  # a creation: the new domain's process starts and learns of it
RESUMED = "resumed"  # a resume: nothing fires; found by the daemon's shutdown poll


@dataclass(slots=True)
class Note:
    kind: str
    domid: int
    a: int
    b: int


@dataclass(slots=True)
class Expect:
    kind: str
    domid: int
    stamp: int  # CLOCK_MONOTONIC ns of the change (the sim's header stamp)
    category: str


class ResultsFile:
    """Tails one results file (created empty here; the C processes open it O_APPEND)."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "wb"):
            pass
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._rest = b""
        self.notes: list[Note] = []
        self.ready = 0
        self.ready_domids: list[int] = []
        self.finals: list[Note] = []
        self.errors: list[str] = []
        self.closed_conns = 0
        self.overflows = 0
        self.received: Counter[tuple[str, int]] = Counter()

    def poll(self) -> int:
        """Read what was appended; returns how many notifications came."""
        data = self._f.read()
        if not data:
            return 0
        data = self._rest + data
        end = data.rfind(b"\n")
        if end < 0:
            self._rest = data
            return 0
        self._rest = data[end + 1 :]
        n = 0
        for line in data[:end].split(b"\n"):
            parts = line.split()
            if len(parts) < 4:
                if line.strip():
                    self.errors.append(line.decode(errors="replace"))
                continue
            kind = parts[0].decode()
            if kind == "X":
                self.errors.append(line.decode(errors="replace"))
                continue
            try:
                note = Note(kind, int(parts[1]), int(parts[2]), int(parts[3]))
            except ValueError:
                self.errors.append(line.decode(errors="replace"))
                continue
            if kind == "R":
                self.ready += 1
                self.ready_domids.append(note.domid)
            elif kind == "F":
                self.finals.append(note)
            elif kind == "E":
                self.closed_conns += 1
            elif kind == "overflow":
                self.overflows += 1
            elif kind in NOTIFY_KINDS:
                self.notes.append(note)
                self.received[(kind, note.domid)] += 1
                n += 1
        return n

    def mark(self) -> int:
        """The index of the next notification: the start of a measurement window."""
        self.poll()
        return len(self.notes)

    def close(self) -> None:
        self._f.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@dataclass
class Expectations:
    """What a scenario expects one model to be told, with the stamps of the changes."""

    items: list[Expect] = field(default_factory=list)
    want: Counter[tuple[str, int]] = field(default_factory=Counter)

    def add(self, kind: str, domid: int, stamp: int, category: str = FIRED) -> None:
        self.items.append(Expect(kind, domid, stamp, category))
        self.want[(kind, domid)] += 1

    def missing(self, got: Counter[tuple[str, int]]) -> int:
        return sum(max(0, n - got.get(key, 0)) for key, n in self.want.items())


@dataclass
class Outcome:
    expected: int
    lost: int
    extra: int
    latencies: dict[str, list[int]]  # category -> ns, in expectation order
    negative: int  # receipts stamped before the change (must not happen)


def match(expect: Expectations, notes: list[Note]) -> Outcome:
    """Pair the i-th expectation of (kind, domid) with the i-th such notification."""
    by_key: dict[tuple[str, int], list[Note]] = {}
    for note in notes:
        by_key.setdefault((note.kind, note.domid), []).append(note)
    used: Counter[tuple[str, int]] = Counter()
    lat: dict[str, list[int]] = {}
    lost = negative = 0
    for e in expect.items:
        key = (e.kind, e.domid)
        got = by_key.get(key, ())
        i = used[key]
        if i >= len(got):
            lost += 1
            continue
        used[key] += 1
        d = got[i].a - e.stamp
        if d < 0:
            negative += 1
        lat.setdefault(e.category, []).append(d)
    extra = sum(len(v) - used[k] for k, v in by_key.items())
    return Outcome(len(expect.items), lost, extra, lat, negative)


def probe_latencies(fired_ops: list[tuple[int, int]], notes: list[Note]) -> list[int]:
    """Latency of each firing at the probe (a watcher that does nothing else): the i-th
    firing the host reported is the i-th the probe received; an op's latency is that of the
    first of its firings."""
    fires = [n.a for n in notes if n.kind == "fire"]
    out = []
    i = 0
    for stamp, k in fired_ops:
        if k <= 0:
            continue
        if i >= len(fires):
            break
        out.append(fires[i] - stamp)
        i += k
    return out


def probe_latencies_isolated(fired_ops: list[tuple[int, int]], notes: list[Note]) -> list[int]:
    """For changes made one at a time on a quiet host (the one-lifecycle run), where the
    host's firing count may differ from the sim's (another xenstored): each change's
    latency is that of the first probe receipt after its stamp."""
    fires = sorted(n.a for n in notes if n.kind == "fire")
    out = []
    i = 0
    for stamp, k in fired_ops:
        if k <= 0:
            continue
        while i < len(fires) and fires[i] < stamp:
            i += 1
        if i >= len(fires):
            break
        out.append(fires[i] - stamp)
        i += 1
    return out


def percentile(values: list[int], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    rank = max(1, -(-len(s) * q // 100))
    return float(s[int(min(rank, len(s))) - 1])
