"""Prometheus metrics, read from the daemon's plain counters only when scraped.

The hot path only increments integers (stats.py); this collector turns them into metric
families at scrape time, so recording costs no locks or objects. The endpoint is served from
the event loop (metrics_http.py), so a scrape reads the counters between two callbacks.
It knows nothing of the daemon's parts: it calls a function that returns a
`DaemonSnapshot`, which the composition root (service.py) builds.
Names follow Prometheus conventions: prefix `xenmux_`, base units (seconds), `_total` on
counters, `_info` for the constant-1 description; every label value is present (at zero)
from start-up, so `rate()` and `increase()` see the first event. docs/metrics.md lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString

from mux import __version__
from mux.daemon.metrics_http import MetricsHTTP
from mux.daemon.stats import (
    DISCONNECT_CAUSES,
    WATCH_PATHS,
    XENSTORE_REQUESTS,
    CounterReading,
    DaemonSnapshot,
    HistogramReading,
    JournalReading,
    Stats,
)
from mux.protocol import DOMAIN_STATES, ERROR_CODES, EVENT_KINDS, SCAN_TRIGGERS

log = logging.getLogger("xenmux.metrics")

Snapshot = Callable[[], DaemonSnapshot]


def _histogram(name: str, doc: str, h: HistogramReading) -> HistogramMetricFamily:
    buckets = [(floatToGoString(le), n) for le, n in h.cumulative()]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum)


def _counter(name: str, doc: str, value: int) -> CounterMetricFamily:
    # prometheus_client appends `_total` to a counter's name in the exposition.
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _by_label(family, label_values, values: dict) -> None:
    """One sample per known label value (zero when never counted), then any others."""
    for v in label_values:
        family.add_metric([v], values.get(v, 0))
    for v, n in values.items():
        if v not in label_values:
            family.add_metric([v], n)


def features_label(features: int | None) -> str:
    """xenstored's XS_GET_FEATURE answer: the bitmask in hex, or `none` (ENOSYS, timeout)."""
    return "none" if features is None else f"{features:#x}"


class DaemonCollector:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def describe(self):
        return []  # collected lazily; describing would scrape at registration

    def collect(self):
        # One copy first: the event loop goes on counting in its own thread.
        d = self.snapshot()
        st = d.counters

        info = GaugeMetricFamily(
            "xenmux_build_info",
            "Version, backend and xenstored features of this daemon (always 1).",
            labels=["version", "backend", "watch_depth", "xenstored_features", "xenstore_path"],
        )
        info.add_metric(
            [
                __version__,
                d.backend,
                "true" if d.watch_depth else "false",
                features_label(d.server_features),
                d.xenstore_path,
            ],
            1,
        )
        yield info
        yield _gauge(
            "xenmux_start_time_seconds",
            "Unix time at which the daemon started.",
            st.started,
        )

        family = CounterMetricFamily(
            "xenmux_watch_firings",
            "Firings of the special xenstore watches, by watch path.",
            labels=["path"],
        )
        _by_label(family, WATCH_PATHS, st.firings)
        yield family

        family = CounterMetricFamily(
            "xenmux_scans",
            "Scans of the domain list by what triggered them; depth: Xen 4.22 targeted "
            "scans of one named domid and their collapse into one full scan.",
            labels=["trigger"],
        )
        _by_label(family, SCAN_TRIGGERS, st.scans)
        yield family
        yield _counter(
            "xenmux_targeted_scans",
            "One-domid hypercalls: Xen 4.22 firings that name a domid, and subscribe probes.",
            st.targeted_scans,
        )
        yield _counter(
            "xenmux_scanned_domains",
            "Domain records walked by full scans.",
            st.scanned_domains,
        )

        yield _histogram(
            "xenmux_scan_duration_seconds",
            "Time of one scan: the domain-info hypercall(s) plus the diff.",
            st.scan_seconds,
        )
        yield _histogram(
            "xenmux_hypercall_duration_seconds",
            "Time of the domain-info hypercall(s) of one scan.",
            st.hypercall_seconds,
        )
        yield _histogram(
            "xenmux_notify_latency_seconds",
            "From a watch firing to the events of the scan it caused queued to every subscriber.",
            st.notify_seconds,
        )

        family = GaugeMetricFamily(
            "xenmux_domains",
            "Domains in the table by state (dead: dying, not yet released).",
            labels=["state"],
        )
        _by_label(family, DOMAIN_STATES, d.domains)
        yield family

        family = CounterMetricFamily(
            "xenmux_events",
            "Lifecycle events produced, by kind (each sent once to every interested subscriber).",
            labels=["event"],
        )
        _by_label(family, EVENT_KINDS, d.events)
        yield family
        yield _counter(
            "xenmux_frames_sent",
            "Event frames queued to subscribers (one per event per recipient).",
            d.frames_sent,
        )

        yield _gauge("xenmux_subscribers", "Connections with a subscription.", d.subscribers)
        yield _gauge("xenmux_clients", "Open client connections.", d.clients)
        yield _counter(
            "xenmux_client_connections",
            "Client connections accepted (including those refused at --max-clients).",
            st.clients_total,
        )
        yield _counter(
            "xenmux_subscriber_overflows",
            "Subscribers cut off because their unsent output passed the high-water mark.",
            st.overflows,
        )
        family = CounterMetricFamily(
            "xenmux_client_errors",
            "Requests refused with an error, by error code (docs/protocol.md).",
            labels=["code"],
        )
        _by_label(family, ERROR_CODES, st.client_errors)
        yield family

        # What one client may cost is bounded (connection.py, metrics_http.py).
        yield _gauge(
            "xenmux_client_output_bytes",
            "Bytes queued for clients and not yet in their sockets.",
            d.output_bytes,
        )
        yield _counter(
            "xenmux_client_reads_paused",
            "Times a client's requests stopped being read: its output was not being taken, "
            "or too many of its requests waited.",
            st.reads_paused,
        )
        yield _counter(
            "xenmux_clients_aborted",
            "Connections aborted with output unsent: an overflowed subscriber or a refused "
            "client that read nothing of its last frame for a grace period.",
            st.clients_aborted,
        )
        yield _counter(
            "xenmux_latest_folded_events",
            "Events sent to slow latest-mode subscribers as part of a newest-state frame.",
            st.latest_folded,
        )
        yield _counter(
            "xenmux_metrics_connections_refused",
            "Connections to this endpoint dropped at its cap (idle ones first).",
            st.metrics_refused,
        )

        yield _counter(
            "xenmux_xenstore_reconnects",
            "Times the xenstored connection was lost (each followed by a full scan).",
            st.xenstore_reconnects,
        )
        yield _gauge(
            "xenmux_xenstore_connected",
            "1 while the daemon holds its watches on xenstored.",
            1 if d.xenstore_connected else 0,
        )
        yield _counter(
            "xenmux_hypercall_errors",
            "Failed domain-info hypercalls (retried with backoff).",
            st.hypercall_errors,
        )
        yield from _xenstore_health(st)
        yield from _journal_families(d.journal)
        yield from _liveness(st)


def _labelled(name: str, doc: str, label: str, known, values: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    _by_label(family, known, values)
    return family


def _xenstore_health(st: CounterReading):
    """xenstored's faults and the firings that found nothing (issue 11 items 3 and 9)."""
    xs = st.xenstore
    yield _labelled(
        "xenmux_xenstore_disconnects",
        "xenstored connections given up or lost, by cause (each followed by a new connection "
        "and a full scan).",
        "cause",
        DISCONNECT_CAUSES,
        xs.disconnects,
    )
    yield _labelled(
        "xenmux_xenstore_request_timeouts",
        "xenstored requests that missed their deadline (--xenstore-timeout), by request type; "
        "each gave the connection up.",
        "request",
        XENSTORE_REQUESTS,
        xs.request_timeouts,
    )
    yield _counter(
        "xenmux_xenstore_liveness_probes",
        "Probes of a xenstored connection silent for --xenstore-idle seconds.",
        xs.liveness_probes,
    )
    yield _counter(
        "xenmux_xenstore_depth_fallbacks",
        "Connections on which xenstored claimed watch depth but refused a depth watch "
        "(plain watches and full scans instead).",
        xs.depth_fallbacks,
    )
    yield _labelled(
        "xenmux_firings_without_change",
        "Watch firings whose scan found nothing to show for them (a domain that came and went "
        "between two scans, or a change an earlier scan had already reported).",
        "path",
        WATCH_PATHS,
        st.firings_without_change,
    )
    yield _counter(
        "xenmux_transient_pairs",
        "new + death pairs flagged transient: a domain that came and went between two scans, "
        "known from a watch-depth firing and the name and UUID xenstore still held.",
        st.transient_pairs,
    )


def _journal_families(j: JournalReading):
    """The durable stream: the journal, its checkpoints and the cursors it could not serve."""
    yield _gauge("xenmux_journal_bytes", "Size of the journal's segments on disk.", j.bytes)
    yield _gauge("xenmux_journal_segments", "Segment files of the journal.", j.segments)
    yield _gauge(
        "xenmux_journal_oldest_seq",
        "The oldest seq still in the journal: a cursor below it minus one gets a gap.",
        j.oldest_seq,
    )
    yield _counter(
        "xenmux_journal_appends",
        "Batches of events appended to the journal, before the fan-out sees them.",
        j.appends,
    )
    yield _counter(
        "xenmux_journal_appended_events", "Events written to the journal.", j.appended_events
    )
    yield _counter(
        "xenmux_journal_replayed_events",
        "Events sent from the journal to subscribers resuming from a cursor.",
        j.replayed_events,
    )
    yield _counter(
        "xenmux_journal_write_errors",
        "Journal writes that failed (the events went out; cursors before them get a gap).",
        j.write_errors,
    )
    yield _gauge(
        "xenmux_checkpoint_age_seconds",
        "Seconds since the table was last checkpointed (-1: not yet).",
        -1 if j.checkpoint_age is None else j.checkpoint_age,
    )
    yield _counter(
        "xenmux_checkpoint_errors",
        "Checkpoints that could not be written (tried again at the next interval).",
        j.checkpoint_errors,
    )
    yield _counter(
        "xenmux_subscribe_gaps",
        "Subscribes whose cursor the journal could not serve (they got a snapshot).",
        j.gaps,
    )


def _liveness(st: CounterReading):
    """Whether the scans go on: a safety full scan completes every --full-scan seconds."""
    yield _gauge(
        "xenmux_last_scan_timestamp_seconds",
        "Unix time at which the newest scan of the domain list completed (0: none yet).",
        0 if st.last_scan_time is None else st.last_scan_time,
    )


def make_registry(snapshot: Snapshot, *, process: bool = True) -> CollectorRegistry:
    """The daemon's metrics, plus the standard process_* ones (CPU, memory, open fds)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(snapshot))
    if process:
        ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """The endpoint as the daemon holds it: `.port` is the one bound."""

    def __init__(self, http: MetricsHTTP, registry: CollectorRegistry, host: str) -> None:
        self.http = http
        self.registry = registry
        self.port = http.port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    def close(self) -> None:
        self.http.close()


def parse_addr(addr: str) -> tuple[str, int]:
    """--metrics-addr: HOST:PORT (an empty HOST: every address; [V6]:PORT for IPv6)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{addr!r} is not HOST:PORT (use '' to turn it off)")
    return host.strip("[]") or "0.0.0.0", int(port)


async def start_metrics(addr: str, snapshot: Snapshot, stats: Stats) -> MetricsServer:
    """Serve /metrics on `addr` (HOST:PORT; port 0: any free one, see `.port`)."""
    host, port = parse_addr(addr)
    registry = make_registry(snapshot)
    http = MetricsHTTP(registry, stats)
    await http.start(host, port, addr)
    return MetricsServer(http, registry, host)


def scrape_once(snapshot: Snapshot) -> bytes:
    """The exposition text, without HTTP (for `promtool check metrics` and tests)."""
    from prometheus_client import generate_latest

    return generate_latest(make_registry(snapshot))
