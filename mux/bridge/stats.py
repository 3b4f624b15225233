"""The bridge's counters, and their Prometheus form (read only when scraped)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("xenmux.bridge")


@dataclass
class BridgeStats:
    published: int = 0  # events JetStream acknowledged as new
    duplicates: int = 0  # events JetStream already had (acknowledged as duplicates)
    missed: int = 0  # events made up after a gap, published
    resyncs: int = 0  # snapshots taken: at a start without a cursor the daemon serves, gaps
    outages: int = 0  # times NATS became unreachable
    kv_writes: int = 0  # bucket values written (rows, deletions, checkpoints)
    connected: bool = False  # to NATS, with the stream and bucket in hand
    daemon_seq: int = 0  # the last seq the daemon handed the bridge
    acked_seq: int = 0  # the seq of the last event JetStream acknowledged

    @property
    def lag(self) -> int:
        return max(0, self.daemon_seq - self.acked_seq)


class BridgeCollector:
    def __init__(self, stats: BridgeStats, host: str) -> None:
        self.stats = stats
        self.host = host

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.stats
        for name, doc, value in (
            ("published", "Events JetStream acknowledged as new.", s.published),
            ("duplicates", "Events JetStream already held (dropped by Nats-Msg-Id).", s.duplicates),
            ("missed", "Events made up after a gap in the daemon's stream, published.", s.missed),
            ("resyncs", "Snapshots of the daemon written to the bucket.", s.resyncs),
            ("outages", "Times NATS became unreachable.", s.outages),
            ("kv_writes", "Bucket values written: rows, deletions, checkpoints.", s.kv_writes),
        ):
            family = CounterMetricFamily(f"xenmux_bridge_{name}", doc, labels=["host"])
            family.add_metric([self.host], value)
            yield family
        for name, doc, value in (
            ("lag_events", "The daemon's seq minus the last acknowledged seq.", s.lag),
            ("connected", "1 while NATS, the stream and the bucket are reachable.", s.connected),
        ):
            family = GaugeMetricFamily(f"xenmux_bridge_{name}", doc, labels=["host"])
            family.add_metric([self.host], float(value))
            yield family


def serve_metrics(stats: BridgeStats, host: str, addr: str) -> None:
    """Start the Prometheus endpoint on HOST:PORT. Raises ValueError/OSError."""
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

    where, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics-addr {addr!r}: give HOST:PORT, or '' for none")
    registry = CollectorRegistry()
    registry.register(BridgeCollector(stats, host))
    ProcessCollector(registry=registry)
    start_http_server(int(port), addr=where or "127.0.0.1", registry=registry)
    log.info("metrics on http://%s/metrics", addr)
