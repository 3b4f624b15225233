"""The daemon's counters: plain integers on the hot path, read by `stats` and by Prometheus.

Recording takes no lock and, but for one frame per scan, runs no Python function: a counter
is one integer addition, a histogram observation one deque append (sorted into buckets later,
see `Histogram`); a scan's observation also stamps the scan's time (`_stamping`). The daemon
copies them into a `DaemonSnapshot` for the `stats` reply and for the Prometheus
collector (metrics.py), which builds its metric families only when it is scraped, in the
exporter's thread, while the event loop goes on counting: a snapshot copies first and never
assumes two numbers were taken at the same instant. What recording costs the hot path is
measured by bench/bench_recording.py (docs/metrics.md).
"""

from __future__ import annotations

import threading
import time
import weakref
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mux.protocol import ERROR_CODES, SCAN_TRIGGERS
from mux.xenstore import wire

# The watches whose firings are counted, by path (the `path` label of the firings).
WATCH_PATHS = (wire.SPECIAL_RELEASE, wire.SPECIAL_INTRODUCE)

# Why a xenstored connection was given up or lost (the `cause` label of the disconnects):
# xenstored closed it or the socket failed; it broke the protocol; a request missed its
# deadline; the probe of a silent connection missed it; it refused the watches.
CAUSE_LOST = "lost"
CAUSE_PROTOCOL = "protocol"
CAUSE_TIMEOUT = "timeout"
CAUSE_LIVENESS = "liveness"
CAUSE_REFUSED = "refused"
DISCONNECT_CAUSES = (CAUSE_LOST, CAUSE_PROTOCOL, CAUSE_TIMEOUT, CAUSE_LIVENESS, CAUSE_REFUSED)
# The request that probes a silent connection (any xenstored answers it without its store).
PROBE_REQUEST = wire.XS_GET_DOMAIN_PATH.name
# The requests the daemon sends with a deadline (the `request` label of the timeouts).
XENSTORE_REQUESTS = (
    wire.XS_WATCH.name,
    wire.XS_UNWATCH.name,
    wire.XS_READ.name,
    PROBE_REQUEST,
)

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

    def read(self) -> HistogramReading:
        """The bucket counts and the sum, consistent with each other; any thread."""
        self.fold()
        with self._lock:
            return HistogramReading(self.bounds, tuple(self.counts), self._sum)

    @property
    def sum(self) -> float:
        return self.read().sum

    @property
    def count(self) -> int:
        return self.read().count

    def cumulative(self) -> list[tuple[float, int]]:
        return self.read().cumulative()

    def quantile(self, q: float) -> float | None:
        return self.read().quantile(q)


@dataclass(frozen=True)
class HistogramReading:
    """A histogram as read at one moment: plain numbers, safe to hand to another thread."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # non-cumulative; the last one is (largest bound, +Inf)
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """[(upper bound, observations <= it), ..., (inf, all of them)]."""
        out = []
        acc = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += n
            out.append((bound, acc))
        return out

    def quantile(self, q: float) -> float | None:
        """An upper bound of the q-quantile (the bucket edge), for `xenmux stats`."""
        cumulative = self.cumulative()
        total = cumulative[-1][1]
        if not total:
            return None
        rank = q * total
        for bound, acc in cumulative:
            if acc >= rank:
                return bound
        return float("inf")  # pragma: no cover - the last bucket holds every observation

    def summary(self) -> dict:
        """What the `stats` reply shows of a histogram. A quantile above the largest bound
        is "+Inf", Prometheus's name for that bucket: JSON has no infinity, and the reply
        must encode (a stalled scan of a SIGSTOPped daemon made `stats` fail)."""
        return {
            "count": self.count,
            "sum": round(self.sum, 6),
            "p50_le": _json_bound(self.quantile(0.5)),
            "p99_le": _json_bound(self.quantile(0.99)),
        }


def _json_bound(bound: float | None) -> float | str | None:
    return "+Inf" if bound == float("inf") else bound


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
    """The counters the daemon's parts record into. Events by kind and frames sent are the
    fan-out's own (counted in its loop)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.firings: dict[str, int] = dict.fromkeys(WATCH_PATHS, 0)
        self.scans: dict[str, int] = dict.fromkeys(SCAN_TRIGGERS, 0)
        self.targeted_scans = 0
        self.scan_domains = 0
        self.overflows = 0
        self.client_errors: dict[str, int] = dict.fromkeys(ERROR_CODES, 0)
        self.clients_total = 0
        self.xenstore_reconnects = 0
        self.hypercall_errors = 0
        self.subscribe_gaps = 0  # subscribes with a cursor the journal could not serve
        # The bounds on what one client may cost (connection.py, metrics_http.py).
        self.reads_paused = 0  # a client's requests stopped being read
        self.clients_aborted = 0  # closed with output unsent: it read nothing for a grace
        self.latest_folded = 0  # events sent to latest-mode subscribers as state frames
        self.metrics_refused = 0  # metrics connections dropped at the endpoint's cap
        self.scan_seconds = Histogram()
        self.hypercall_seconds = Histogram()
        self.notify_seconds = Histogram()
        # xenstored's health (watcher.py) and the firings that found nothing (scanloop.py).
        self.xenstore_disconnects: dict[str, int] = dict.fromkeys(DISCONNECT_CAUSES, 0)
        self.xenstore_request_timeouts: dict[str, int] = dict.fromkeys(XENSTORE_REQUESTS, 0)
        self.xenstore_liveness_probes = 0
        self.xenstore_depth_fallbacks = 0
        self.firings_without_change: dict[str, int] = dict.fromkeys(WATCH_PATHS, 0)
        self.transient_pairs = 0
        # The Unix time the newest scan completed (xenmux_last_scan_timestamp_seconds), so
        # that a stuck daemon shows: see `_stamping`.
        self.last_scan_time: float | None = None
        self.scan_seconds.observe = _stamping(self.scan_seconds.observe, self)

    def read(self) -> CounterReading:
        """A copy of every counter, taken now (any thread)."""
        return CounterReading(
            started=self.started,
            firings=dict(self.firings),
            scans=dict(self.scans),
            targeted_scans=self.targeted_scans,
            scanned_domains=self.scan_domains,
            clients_total=self.clients_total,
            overflows=self.overflows,
            client_errors=dict(self.client_errors),
            xenstore_reconnects=self.xenstore_reconnects,
            hypercall_errors=self.hypercall_errors,
            reads_paused=self.reads_paused,
            clients_aborted=self.clients_aborted,
            latest_folded=self.latest_folded,
            metrics_refused=self.metrics_refused,
            scan_seconds=self.scan_seconds.read(),
            hypercall_seconds=self.hypercall_seconds.read(),
            notify_seconds=self.notify_seconds.read(),
            xenstore=XenstoreReading(
                disconnects=dict(self.xenstore_disconnects),
                request_timeouts=dict(self.xenstore_request_timeouts),
                liveness_probes=self.xenstore_liveness_probes,
                depth_fallbacks=self.xenstore_depth_fallbacks,
            ),
            firings_without_change=dict(self.firings_without_change),
            transient_pairs=self.transient_pairs,
            last_scan_time=self.last_scan_time,
        )


def _stamping(observe: Callable[[float], None], stats: Stats) -> Callable[[float], None]:
    """`observe` of scan_seconds that also stamps `stats.last_scan_time`.

    Every scan (the initial one, each full and each targeted one) ends with its scan_seconds
    observation, after the diff, so this is the one place that sees each complete. It costs
    one Python frame and a clock read per scan, not per event or frame: a tenth of a
    microsecond against the tens of a scan of 1000 domains."""
    clock = time.time

    def observe_scan(seconds: float) -> None:
        observe(seconds)
        stats.last_scan_time = clock()

    return observe_scan


@dataclass(frozen=True)
class XenstoreReading:
    """How xenstored behaved: connections dropped by cause, requests past their deadline by
    type, probes of a silent connection, depth watches refused by a server claiming depth."""

    disconnects: dict[str, int]
    request_timeouts: dict[str, int]
    liveness_probes: int
    depth_fallbacks: int

    def reply(self) -> dict:
        return {
            "disconnects": dict(self.disconnects),
            "request_timeouts": dict(self.request_timeouts),
            "liveness_probes": self.liveness_probes,
            "depth_fallbacks": self.depth_fallbacks,
        }


@dataclass(frozen=True)
class CounterReading:
    started: float  # Unix time
    firings: dict[str, int]  # by watch path
    scans: dict[str, int]  # by trigger
    targeted_scans: int
    scanned_domains: int
    clients_total: int
    overflows: int
    client_errors: dict[str, int]  # by error code, every code present
    xenstore_reconnects: int
    hypercall_errors: int
    reads_paused: int
    clients_aborted: int
    latest_folded: int
    metrics_refused: int
    scan_seconds: HistogramReading
    hypercall_seconds: HistogramReading
    notify_seconds: HistogramReading
    xenstore: XenstoreReading
    firings_without_change: dict[str, int]  # by watch path
    transient_pairs: int
    last_scan_time: float | None = None  # Unix time; None: no scan completed yet


@dataclass(frozen=True)
class JournalReading:
    """The durable stream: the journal (journal.py) and the checkpoints (durable.py)."""

    history: str
    state_dir: str
    bytes: int  # the segments' size on disk
    segments: int
    oldest_seq: int  # the oldest seq still journaled (a cursor of oldest_seq - 1 resumes)
    appends: int  # batches appended (a copy into the mapped segment, or one write if large)
    appended_events: int
    replayed_events: int  # frames sent from the journal to resuming subscribers
    write_errors: int
    checkpoint_age: float | None  # seconds since the newest checkpoint (None: none yet)
    checkpoint_errors: int
    gaps: int  # subscribes whose cursor could not be served (they got a snapshot)

    def stats_reply(self) -> dict:
        age = self.checkpoint_age
        return {
            "history": self.history,
            "state_dir": self.state_dir,
            "bytes": self.bytes,
            "segments": self.segments,
            "oldest_seq": self.oldest_seq,
            "appends": self.appends,
            "appended_events": self.appended_events,
            "replayed_events": self.replayed_events,
            "write_errors": self.write_errors,
            "checkpoint_age_seconds": None if age is None else round(age, 3),
            "checkpoint_errors": self.checkpoint_errors,
            "gaps": self.gaps,
        }


@dataclass(frozen=True)
class DaemonSnapshot:
    """What the daemon reports, copied from its parts by the composition root: plain data
    for the `stats` reply and for the Prometheus collector."""

    counters: CounterReading
    events: dict[str, int]  # by kind, every kind present
    frames_sent: int
    subscribers: int
    clients: int
    output_bytes: int  # queued for clients, not yet in their sockets
    domains: dict[str, int]  # by state, every state present
    backend: str
    xenstore_path: str
    xenstore_connected: bool
    watch_depth: bool
    server_features: int | None
    instance: str
    seq: int
    metrics_port: int | None
    journal: JournalReading

    @property
    def features(self) -> dict:
        return {"watch_depth": self.watch_depth, "server_features": self.server_features}

    def stats_reply(self) -> dict:
        """The `stats` reply's `stats` object (docs/protocol.md)."""
        c = self.counters
        return {
            "uptime_seconds": round(time.time() - c.started, 3),
            "firings": dict(c.firings),
            "scans": dict(c.scans),
            "targeted_scans": c.targeted_scans,
            "scanned_domains": c.scanned_domains,
            "events": dict(self.events),
            "frames_sent": self.frames_sent,
            "subscribers": self.subscribers,
            "clients_total": c.clients_total,
            "overflows": c.overflows,
            "client_errors": {k: v for k, v in c.client_errors.items() if v},
            "xenstore_reconnects": c.xenstore_reconnects,
            "hypercall_errors": c.hypercall_errors,
            "xenstore": c.xenstore.reply(),
            "firings_without_change": dict(c.firings_without_change),
            "transient_pairs": c.transient_pairs,
            "reads_paused": c.reads_paused,
            "clients_aborted": c.clients_aborted,
            "latest_folded": c.latest_folded,
            "metrics_refused": c.metrics_refused,
            "output_bytes": self.output_bytes,
            "domains": dict(self.domains),
            "scan_seconds": c.scan_seconds.summary(),
            "hypercall_seconds": c.hypercall_seconds.summary(),
            "notify_seconds": c.notify_seconds.summary(),
            "clients": self.clients,
            "backend": self.backend,
            "xenstored": self.xenstore_path,
            "xenstore_connected": self.xenstore_connected,
            "features": self.features,
            "instance": self.instance,
            "seq": self.seq,
            "metrics_port": self.metrics_port,
            "journal": self.journal.stats_reply(),
        }
