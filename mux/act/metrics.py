"""act's Prometheus families (docs/metrics.md names them), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 120.0)


class ActMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.actions = Counter(
            "xenmux_act_actions",
            "Actions and hooks act carried out, by action and outcome",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "xenmux_act_action_seconds",
            "Time from an action's start to its end (retries included)",
            ["action"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.failures = Counter(
            "xenmux_act_failures",
            "Attempts of an action or hook that failed (each retry counts)",
            ["action"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "xenmux_act_in_flight", "Actions started and not finished", registry=self.registry
        )
        self.reloads = Counter(
            "xenmux_act_policy_reloads",
            "SIGHUP reloads of the policy, by result",
            ["result"],
            registry=self.registry,
        )
        self.metrics_refused = 0  # the endpoint's count of refused connections
