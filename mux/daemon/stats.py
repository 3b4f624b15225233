"""The daemon's counters: plain integers on the hot path, read by `stats` and by Prometheus.

Nothing here takes a lock or allocates per event: the Prometheus collector (metrics.py)
turns these numbers into metric families only when it is scraped.
"""

from __future__ import annotations

import bisect
import time

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

# Seconds; fit for microseconds (a scan of 1000 domains) to tens of milliseconds.
DURATION_BUCKETS = (
    5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0,
)  # fmt: skip


class Histogram:
    """Cumulative-on-read bucket counts, as Prometheus wants them."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out = []
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            out.append((repr(bound), acc))
        out.append(("+Inf", self.count))
        return out

    def quantile(self, q: float) -> float | None:
        """An upper bound of the q-quantile (the bucket edge), for `xenmux stats`."""
        if not self.count:
            return None
        rank = q * self.count
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            if acc >= rank:
                return bound
        return float("inf")


class Stats:
    def __init__(self) -> None:
        self.started = time.time()
        self.firings: dict[str, int] = {"@releaseDomain": 0, "@introduceDomain": 0}
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
    return {
        "count": h.count,
        "sum": round(h.sum, 6),
        "p50_le": h.quantile(0.5),
        "p99_le": h.quantile(0.99),
    }
