"""Prometheus metrics, read from the daemon's plain counters only when scraped.

The hot path only increments integers (stats.py); this collector turns them into metric
families at scrape time in the exporter's thread, so recording costs no locks or objects.
Names follow Prometheus conventions: prefix `xenmux_`, base units, `_total` counters; label
values are all present (at zero) from start-up.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from mux import __version__

if TYPE_CHECKING:
    from mux.daemon.service import Daemon
    from mux.daemon.stats import Histogram

log = logging.getLogger("xenmux.metrics")


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum)


class DaemonCollector:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def describe(self):
        return []  # collected lazily; describing would scrape at registration

    def collect(self):
        d = self.daemon
        st = d.stats
        info = GaugeMetricFamily(
            "xenmux_build_info",
            "Version, backend and xenstored features of this daemon (always 1).",
            labels=["version", "backend", "watch_depth", "xenstored"],
        )
        info.add_metric(
            [
                __version__,
                d.backend.name,
                "true" if d.watcher.depth else "false",
                d.config.xenstore_path,
            ],
            1,
        )
        yield info
        start = GaugeMetricFamily(
            "xenmux_start_time_seconds", "Unix time at which the daemon started."
        )
        start.add_metric([], st.started)
        yield start

        firings = CounterMetricFamily(
            "xenmux_watch_firings", "Firings of the special watches, by path.", labels=["path"]
        )
        for path, n in st.firings.items():
            firings.add_metric([path], n)
        yield firings

        scans = CounterMetricFamily(
            "xenmux_scans",
            "Scans by what triggered them (depth: targeted Xen 4.22 scans and their collapse).",
            labels=["trigger"],
        )
        for trigger, n in st.scans.items():
            scans.add_metric([trigger], n)
        yield scans
        scanned = CounterMetricFamily(
            "xenmux_scanned_domains", "Domain records walked by full scans."
        )
        scanned.add_metric([], st.scan_domains)
        yield scanned

        yield _histogram(
            "xenmux_scan_duration_seconds",
            "Time of one scan: hypercall plus diff.",
            st.scan_seconds,
        )
        yield _histogram(
            "xenmux_hypercall_duration_seconds",
            "Time of the domain-info hypercall(s) of one scan.",
            st.hypercall_seconds,
        )
        yield _histogram(
            "xenmux_notify_latency_seconds",
            "From a watch firing to its events written to every subscriber.",
            st.notify_seconds,
        )

        domains = GaugeMetricFamily(
            "xenmux_domains", "Domains in the table, by state.", labels=["state"]
        )
        for state, n in d.table.counts().items():
            domains.add_metric([state], n)
        yield domains

        events = CounterMetricFamily(
            "xenmux_events", "Lifecycle events produced, by kind.", labels=["event"]
        )
        for kind, n in st.events.items():
            events.add_metric([kind], n)
        yield events

        frames = CounterMetricFamily(
            "xenmux_frames_sent", "Event frames written to subscribers (one per recipient)."
        )
        frames.add_metric([], d.fanout.frames_sent)
        yield frames

        subs = GaugeMetricFamily("xenmux_subscribers", "Connections with a subscription.")
        subs.add_metric([], d.fanout.subscriber_count)
        yield subs
        clients = GaugeMetricFamily("xenmux_clients", "Open client connections.")
        clients.add_metric([], len(d.clients))
        yield clients

        overflows = CounterMetricFamily(
            "xenmux_subscriber_overflows", "Subscribers cut off because they stopped reading."
        )
        overflows.add_metric([], st.overflows)
        yield overflows

        errors = CounterMetricFamily(
            "xenmux_client_errors", "Bad requests from clients, by error code.", labels=["code"]
        )
        for code, n in st.client_errors.items():
            errors.add_metric([code], n)
        yield errors

        reconnects = CounterMetricFamily(
            "xenmux_xenstore_reconnects", "Times the xenstored connection was lost."
        )
        reconnects.add_metric([], st.xenstore_reconnects)
        yield reconnects
        connected = GaugeMetricFamily(
            "xenmux_xenstore_connected", "1 while the daemon holds its watches on xenstored."
        )
        connected.add_metric([], 1 if d.watcher.connected.is_set() else 0)
        yield connected

        hc_errors = CounterMetricFamily(
            "xenmux_hypercall_errors", "Failed domain-info hypercalls (retried with backoff)."
        )
        hc_errors.add_metric([], st.hypercall_errors)
        yield hc_errors


class MetricsServer:
    def __init__(self, server, thread, registry: CollectorRegistry, port: int) -> None:
        self.server = server
        self.thread = thread
        self.registry = registry
        self.port = port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def parse_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics-addr {addr!r} is not HOST:PORT (use '' to turn it off)")
    return host.strip("[]") or "0.0.0.0", int(port)


def start_metrics(addr: str, daemon: Daemon) -> MetricsServer:
    host, port = parse_addr(addr)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    server, thread = start_http_server(port, addr=host, registry=registry)
    port = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, port)
    daemon.metrics_port = port
    return MetricsServer(server, thread, registry, port)


def scrape_once(daemon: Daemon) -> bytes:
    """The exposition text, without HTTP (for `promtool check metrics` and tests)."""
    from prometheus_client import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    return generate_latest(registry)
