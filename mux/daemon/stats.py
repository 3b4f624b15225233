"""The daemon's counters: plain integers on the hot path, read by `stats` and by Prometheus.

Recording takes no lock and runs no Python function: a counter is one integer addition, a
histogram observation one deque append (sorted into buckets later, see `Histogram`). The
Prometheus collector (metrics.py) turns these numbers into metric families only when it is
scraped, in the exporter's thread, while the event loop goes on counting: readers copy
first and never assume two numbers were taken at the same instant. What recording costs
the hot path is measured in docs/metrics.md.
"""

from __future__ import annotations

import threading
import time
import weakref
from bisect import bisect_right
from collections import deque
from collections.abc import Callable

# Label values, all exported at zero from start-up (docs/metrics.md says what each means).
TRIGGERS = ("watch", "depth", "poll", "full", "rescan", "reconnect", "subscribe", "startup")
EVENT_KINDS = ("new", "shutdown", "resumed", "death", "released")
CLIENT_ERROR_CODES = (
    "bad-json",
    "line-too-long",
    "unknown-op",
    "bad-request",
    "bad-domid",
    "too-many-subscriptions",
    "permission-denied",
    "too-many-clients",
    "busy",
)
WATCH_PATHS = ("@releaseDomain", "@introduceDomain")
DOMAIN_STATES = ("running", "shutdown", "dead")

# Seconds; fit for a targeted hypercall (a microsecond), a scan of 1000 domains (tens of
# microseconds), 32,000 domains (hundreds) and a firing-to-frame latency under load (tens of
# milliseconds). The last finite bucket covers a slow xenstored holding back names.
DURATION_BUCKETS = (
    1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0,
)  # fmt: skip


class Histogram:
    """Bucket counts (non-cumulative; cumulated when read) and the sum of observations.

    `observe` is on the hot path, so it is the bound `append` of a deque: one C call, no
    Python frame, no lock. Observations are sorted into the buckets later by `fold`, which
    every reader calls first and a background thread calls every FOLD_INTERVAL seconds (so
    that the deque stays short when nobody reads). Folding takes a lock; observing never
    does (deque.append and popleft are atomic).
    """

    __slots__ = ("__weakref__", "_lock", "_pending", "_sum", "bounds", "counts", "observe")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is (largest bound, +Inf)
        self._sum = 0.0
        self._pending: deque[float] = deque()
        self._lock = threading.Lock()
        self.observe: Callable[[float], None] = self._pending.append
        _folder.add(self)

    def fold(self) -> None:
        """Sort the pending observations into the buckets (any thread)."""
        with self._lock:
            pending = self._pending
            n = len(pending)  # what is there now; later ones wait for the next fold
            if not n:
                return
            pop = pending.popleft
            values = sorted([pop() for _ in range(n)])
            counts = self.counts
            below = 0
            for i, bound in enumerate(self.bounds):
                upto = bisect_right(values, bound)  # observations <= bound (le)
                counts[i] += upto - below
                below = upto
            counts[-1] += n - below
            self._sum += sum(values)

    @property
    def sum(self) -> float:
        self.fold()
        return self._sum

    @property
    def count(self) -> int:
        return sum(self.snapshot()[0])

    def snapshot(self) -> tuple[list[int], float]:
        """(bucket counts, sum), consistent with each other; any thread."""
        self.fold()
        with self._lock:
            return list(self.counts), self._sum

    def cumulative(self, counts: list[int] | None = None) -> list[tuple[float, int]]:
        """[(upper bound, observations <= it), ..., (inf, all of them)]."""
        if counts is None:
            counts = self.snapshot()[0]
        out = []
        acc = 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            acc += n
            out.append((bound, acc))
        return out

    def quantile(self, q: float, counts: list[int] | None = None) -> float | None:
        """An upper bound of the q-quantile (the bucket edge), for `xenmux stats`."""
        cumulative = self.cumulative(counts)
        total = cumulative[-1][1]
        if not total:
            return None
        rank = q * total
        for bound, acc in cumulative:
            if acc >= rank:
                return bound
        return float("inf")  # pragma: no cover - the last bucket holds every observation


class _Folder:
    """One daemon thread per process folding every live histogram now and then."""

    def __init__(self) -> None:
        self._histograms: weakref.WeakSet[Histogram] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, h: Histogram) -> None:
        with self._lock:
            self._histograms.add(h)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="xenmux-histograms", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(FOLD_INTERVAL)
            with self._lock:
                histograms = list(self._histograms)
            for h in histograms:
                h.fold()
            del histograms


FOLD_INTERVAL = 2.0  # seconds; bounds the pending observations when nobody reads
_folder = _Folder()


class Stats:
    def __init__(self) -> None:
        self.started = time.time()
        self.firings: dict[str, int] = dict.fromkeys(WATCH_PATHS, 0)
        self.scans: dict[str, int] = dict.fromkeys(TRIGGERS, 0)
        self.targeted_scans = 0
        self.scan_domains = 0
        self.events: dict[str, int] = dict.fromkeys(EVENT_KINDS, 0)
        self.frames_sent = 0
        self.overflows = 0
        self.client_errors: dict[str, int] = dict.fromkeys(CLIENT_ERROR_CODES, 0)
        self.clients_total = 0
        self.xenstore_reconnects = 0
        self.hypercall_errors = 0
        self.scan_seconds = Histogram()
        self.hypercall_seconds = Histogram()
        self.notify_seconds = Histogram()

    def as_dict(self, *, subscribers: int, domains: dict[str, int]) -> dict:
        return {
            "uptime_seconds": round(time.time() - self.started, 3),
            "firings": dict(self.firings),
            "scans": dict(self.scans),
            "targeted_scans": self.targeted_scans,
            "scanned_domains": self.scan_domains,
            "events": dict(self.events),
            "frames_sent": self.frames_sent,
            "subscribers": subscribers,
            "clients_total": self.clients_total,
            "overflows": self.overflows,
            "client_errors": {k: v for k, v in self.client_errors.items() if v},
            "xenstore_reconnects": self.xenstore_reconnects,
            "hypercall_errors": self.hypercall_errors,
            "domains": domains,
            "scan_seconds": _summary(self.scan_seconds),
            "hypercall_seconds": _summary(self.hypercall_seconds),
            "notify_seconds": _summary(self.notify_seconds),
        }


def _summary(h: Histogram) -> dict:
    counts, total = h.snapshot()
    return {
        "count": sum(counts),
        "sum": round(total, 6),
        "p50_le": h.quantile(0.5, counts),
        "p99_le": h.quantile(0.99, counts),
    }
