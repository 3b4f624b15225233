"""The Grafana dashboard against a real Prometheus server (Debian's `prometheus`).

A daemon serves a simulated host under churn; Prometheus, on loopback with a temporary
database, scrapes it every second; then every query of every panel of grafana/xenmux.json
(its variables substituted as Grafana would) must return data through the HTTP API. The
dashboard's and the provisioning files' structure is checked without a server.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from simhelpers import sim_command

from mux import debpeers

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "grafana" / "xenmux.json"
PROVISIONING = REPO / "grafana" / "provisioning"
SCRAPE_INTERVAL = 1  # seconds
# What Grafana would put in for the time variables at this scrape interval.
TIME_VARIABLES = {"__rate_interval": "10s", "__interval": "2s", "__range": "1m"}


# -- the dashboard ---------------------------------------------------------------------------


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every target of every panel."""
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, host: str, act: str = "") -> str:
    """Grafana's variable interpolation, for one selected host (and act instance):
    regex-escaped, and the backslashes doubled inside the PromQL string, as Grafana's
    Prometheus data source does."""
    values = {
        "host": re.escape(host).replace("\\", "\\\\"),
        "act": re.escape(act).replace("\\", "\\\\"),
        **TIME_VARIABLES,
    }

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def test_dashboard_is_a_current_grafana_dashboard():
    d = load_dashboard()
    assert d["uid"] == "xenmux" and d["title"]
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 39
    assert d["id"] is None  # so that import and provisioning assign one
    assert d["graphTooltip"] in (0, 1, 2) and isinstance(d["editable"], bool)
    assert set(d["time"]) == {"from", "to"} and isinstance(d["refresh"], str)
    assert {"list"} <= set(d["annotations"]) and {"list"} == set(d["templating"])

    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("host", "act"):  # act's endpoint is an instance of its own
        host = variables[name]
        assert host["type"] == "query" and host["multi"] and host["includeAll"]
        assert host["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert host["query"]["query"] == host["definition"]
        assert re.fullmatch(r"label_values\(xenmux_\w+, *instance\)", host["definition"])
    assert variables["act"]["definition"].startswith("label_values(xenmux_act_")
    for v in variables.values():
        assert v["type"] in {"query", "adhoc", "constant", "datasource", "interval", "textbox"}
        assert v["hide"] in (0, 1, 2)

    panels = all_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["h"] > 0 and 0 < g["w"] <= 24 and 0 <= g["x"] < 24 and g["x"] + g["w"] <= 24
        xs, ys = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        area = {(x, y) for x in xs for y in ys}
        assert not cells & area, f"panel {p['title']!r} overlaps another"
        cells |= area
        if p["type"] == "row":
            assert p["gridPos"]["h"] == 1 and p["gridPos"]["w"] == 24
            continue
        assert p["type"] in {"timeseries", "stat", "table", "gauge", "bargauge"}, p["type"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert p["description"], f"panel {p['title']!r} says nothing about what it shows"
        assert set(p["fieldConfig"]) == {"defaults", "overrides"}
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]

    # Every selector of every query is limited to the chosen hosts (act's to the chosen acts).
    for title, ref, expr in queries(d):
        selectors = re.findall(r"\b((?:xenmux|process)_\w+)(\{[^}]*\})?", expr)
        assert selectors, (title, expr)
        for metric, matchers in selectors:
            wanted = "$act" if metric.startswith("xenmux_act_") else "$host"
            assert f'instance=~"{wanted}"' in matchers, f"{title}/{ref}: {metric} is not filtered"


# Everything the issue asks an operator to see at a glance, by the metric behind it.
WANTED = {
    "scan rate": "xenmux_scans_total",
    "coalescing ratio": "xenmux_watch_firings_total",
    "scan latency": "xenmux_scan_duration_seconds_bucket",
    "hypercall latency": "xenmux_hypercall_duration_seconds_bucket",
    "events by kind": "xenmux_events_total",
    "notify latency": "xenmux_notify_latency_seconds_bucket",
    "subscribers": "xenmux_subscribers",
    "domains by state": "xenmux_domains",
    "client errors": "xenmux_client_errors_total",
    "overflows": "xenmux_subscriber_overflows_total",
    "hypercall errors": "xenmux_hypercall_errors_total",
    "xenstore reconnects": "xenmux_xenstore_reconnects_total",
    "build info": "xenmux_build_info",
    "act's actions by action and outcome": "xenmux_act_actions_total",
    "act's action latency": "xenmux_act_action_seconds_bucket",
    "act's failures": "xenmux_act_failures_total",
    "act's jobs in flight": "xenmux_act_in_flight",
}


def test_dashboard_shows_what_an_operator_wants():
    exprs = " ".join(e for _, _, e in queries(load_dashboard()))
    missing = [what for what, metric in WANTED.items() if metric not in exprs]
    assert not missing
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs


def _yaml(path: Path):
    try:
        import yaml
    except ImportError:  # the venv need not have it; Debian's python3-yaml will do
        out = subprocess.run(
            [
                "/usr/bin/python3",
                "-c",
                "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode != 0:
            pytest.skip(f"no YAML parser here: {out.stderr.strip()}")
        return json.loads(out.stdout)
    return yaml.safe_load(path.read_text())


def test_provisioning_files():
    (ds_file,) = (PROVISIONING / "datasources").glob("*.yaml")
    ds = _yaml(ds_file)
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["url"].startswith("http")

    (db_file,) = (PROVISIONING / "dashboards").glob("*.yaml")
    db = _yaml(db_file)
    assert db["apiVersion"] == 1
    (provider,) = db["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    docs = (REPO / "docs" / "metrics.md").read_text()
    assert provider["options"]["path"] in docs, "docs/metrics.md must say where xenmux.json goes"


# -- a real Prometheus -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusError(Exception):
    pass


class Prometheus:
    def __init__(self, directory: Path, targets: list[str]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}s\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}s\n"
            f"  evaluation_interval: {SCRAPE_INTERVAL}s\n"
            "scrape_configs:\n"
            "  - job_name: xenmux\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        self.log = self.dir / "prometheus.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> None:
        # Debian's, or the one `make deb-peers` extracted (mux.debpeers).
        prometheus = debpeers.locate("prometheus")
        for _ in range(3):  # another process may take the free port before we bind it
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        str(prometheus.path),
                        f"--config.file={self.config}",
                        f"--storage.tsdb.path={self.dir / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--storage.tsdb.retention.time=1h",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    env=prometheus.environ(),
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
                time.sleep(0.1)
            self.stop()
            if "address already in use" not in self.log.read_text(errors="replace"):
                break
        raise AssertionError(f"prometheus did not start:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def api(self, path: str, **params: str):
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:  # a bad query: Prometheus says why
            body = json.load(exc)
        if body["status"] != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list:
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]


@pytest.fixture
def prometheus_factory(tmp_path):
    started: list[Prometheus] = []

    def make(targets: list[str]) -> Prometheus:
        p = Prometheus(tmp_path / f"prometheus{len(started)}", targets)
        started.append(p)
        p.start()
        return p

    yield make
    for p in started:
        pid = p.proc.pid if p.proc is not None else None
        p.stop()
        if pid is not None:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # gone, and reaped
        shutil.rmtree(p.dir, ignore_errors=True)


def _bad_request(sock_path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(sock_path)
        s.sendall(b"this is not json\n")
        assert b'"bad-json"' in s.recv(65536)


def _start_act(procs, sim, d, tmp_path: Path) -> str:
    """act on the churned host; its endpoint's instance. Its crash action is a command that
    fails, so that the failures panel has data too."""
    policy = tmp_path / "act.toml"
    policy.write_text(
        '[defaults]\non_crash = "rename-restart"\n[commands]\nrename-restart = "false"\n'
    )
    log = tmp_path / "act.log"
    argv = [*sim_command(), "act", "--toolstack", "sim", "--sim-dir", str(sim.dir)]
    argv += ["--socket", d.sock, "--policy", str(policy), "--metrics-addr", "127.0.0.1:0"]
    with open(log, "wb") as out:
        act = procs.start(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not (m := re.search(r"metrics on [^:]+:(\d+)/metrics", log.read_text(errors="replace"))):
        assert act.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return f"127.0.0.1:{m[1]}"


def test_every_dashboard_query_returns_data(
    sim_factory, daemon_factory, procs, prometheus_factory, tmp_path
):
    sim = sim_factory(domains=40)
    d = daemon_factory(sim, "--metrics-addr", "127.0.0.1:0", "--shutdown-poll", "0.05")
    port = d.stats()["metrics_port"]
    instance = f"127.0.0.1:{port}"
    procs.start(
        [
            *sim_command(),
            "sim-ctl",
            "--dir",
            str(sim.dir),
            "churn",
            "--seconds",
            "120",
            "--rate",
            "20",
            "--seed",
            "7",
        ]
    )
    act_instance = _start_act(procs, sim, d, tmp_path)
    with d.subscribe(None) as sub:
        prom = prometheus_factory([instance, act_instance])
        _bad_request(d.sock)

        # Enough scrapes for every window the panels use (the longest is $__range).
        deadline = time.monotonic() + 60
        while True:
            while sub.next_event(0) is not None:  # keep reading: no overflow
                pass
            up = prom.query(
                f'min(count_over_time(up{{instance=~"{instance}|{act_instance}"}}[1m]))'
            )
            if up and float(up[0]["value"][1]) >= 6:
                break
            assert time.monotonic() < deadline, f"too few scrapes: {up}\n{prom.log_tail()}"
            time.sleep(0.5)
        assert prom.query(f'up{{instance="{instance}"}}')[0]["value"][1] == "1"
        assert prom.query(f'up{{instance="{act_instance}"}}')[0]["value"][1] == "1"

        # The host variable's values, as Grafana asks for them.
        hosts = prom.api("label/instance/values", **{"match[]": "xenmux_build_info"})
        assert hosts == [instance]
        acts = prom.api("label/instance/values", **{"match[]": "xenmux_act_in_flight"})
        assert acts == [act_instance]

        failures = []
        for title, ref, expr in queries(load_dashboard()):
            q = substitute(expr, instance, act_instance)
            try:
                result = prom.query(q)
            except PrometheusError as exc:
                failures.append(f"{title} [{ref}]: {exc} in {q}")
                continue
            values = [float(r["value"][1]) for r in result]
            if not result:
                failures.append(f"{title} [{ref}]: no data from {q}")
            elif not any(math.isfinite(v) for v in values):
                failures.append(f"{title} [{ref}]: only {values} from {q}")
        assert not failures, "\n".join(failures)
