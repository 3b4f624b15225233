"""Metrics (docs/metrics.md): the exposition passes `promtool check metrics`, every label value
is there at zero from start-up, and the counters agree with what a subscriber received and
with `stats`. What recording them costs the hot path is measured by bench/bench_recording.py.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from daemonhelpers import quiet, take, until
from simhelpers import sim_command

from mux import debpeers
from mux.daemon.metrics import _histogram, features_label, parse_addr
from mux.daemon.stats import DURATION_BUCKETS, WATCH_PATHS, Histogram
from mux.protocol import DOMAIN_STATES, ERROR_CODES, EVENT_KINDS, SCAN_TRIGGERS

REPO = Path(__file__).resolve().parents[2]


# -- reading /metrics ------------------------------------------------------------------------


def metrics_port(d) -> int:
    port = d.stats()["metrics_port"]
    assert isinstance(port, int) and port > 0, port
    return port


def scrape(port: int) -> tuple[str, str]:
    """(exposition text, Content-Type) of http://127.0.0.1:port/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode(), r.headers["Content-Type"]


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted label items: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in samples[name].items()}


def value(samples: dict, name: str) -> float:
    (v,) = samples[name].values()
    return v


def promtool_check(text: str) -> subprocess.CompletedProcess:
    # Debian's, or the one `make deb-peers` extracted (mux.debpeers).
    promtool = debpeers.locate("promtool")
    return subprocess.run(
        [str(promtool.path), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        env=promtool.environ(),
    )


# -- the daemon's exposition -------------------------------------------------------------------


def test_exposition_passes_promtool(sim, daemon_factory):
    d = daemon_factory(sim, "--metrics-addr", "127.0.0.1:0")
    port = metrics_port(d)
    with d.subscribe(None) as sub:  # something in every histogram
        sim.ctl.shutdown(3, "crash")
        assert sub.next_event(20)["event"] == "shutdown"
    text, ctype = scrape(port)
    assert ctype.startswith("text/plain; version=0.0.4")
    checked = promtool_check(text)
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), (
        checked.stdout + checked.stderr
    )
    families = set(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert families, text
    docs = (REPO / "docs" / "metrics.md").read_text()
    for name, kind in families:
        assert name.startswith(("xenmux_", "process_")), name
        assert (kind == "counter") == name.endswith("_total"), (name, kind)
        assert f"`{name}`" in docs, f"docs/metrics.md does not describe {name}"


def test_promtool_would_catch_a_bad_exposition():
    """The check above can fail: promtool objects to what our names avoid."""
    bad = "# HELP xenmux_scans Scans.\n# TYPE xenmux_scans counter\nxenmux_scans 1\n"
    out = promtool_check(bad)
    assert out.returncode != 0 or (out.stdout + out.stderr).strip()


def test_every_label_value_is_there_at_zero_from_startup(sim, daemon_factory):
    d = daemon_factory(sim, "--metrics-addr", "127.0.0.1:0", "--full-scan", "0")
    port = metrics_port(d)
    text, _ = scrape(port)
    s = parse(text)

    scans = by_label(s, "xenmux_scans_total", "trigger")
    assert list(scans) == list(SCAN_TRIGGERS)
    assert scans["startup"] == 1
    # The watches' first firings (xenstored fires each new watch once) may cost one scan.
    assert {k: v for k, v in scans.items() if k not in ("startup", "watch")} == dict.fromkeys(
        set(SCAN_TRIGGERS) - {"startup", "watch"}, 0
    )
    assert list(by_label(s, "xenmux_watch_firings_total", "path")) == list(WATCH_PATHS)
    assert by_label(s, "xenmux_events_total", "event") == dict.fromkeys(EVENT_KINDS, 0)
    assert by_label(s, "xenmux_client_errors_total", "code") == dict.fromkeys(ERROR_CODES, 0)
    assert by_label(s, "xenmux_domains", "state") == {"running": 9, "shutdown": 0, "dead": 0}
    assert list(by_label(s, "xenmux_domains", "state")) == list(DOMAIN_STATES)
    for name in (
        "xenmux_frames_sent_total",
        "xenmux_subscriber_overflows_total",
        "xenmux_xenstore_reconnects_total",
        "xenmux_hypercall_errors_total",
        "xenmux_targeted_scans_total",
        "xenmux_subscribers",
    ):
        assert value(s, name) == 0, name
    assert value(s, "xenmux_xenstore_connected") == 1
    bounds = [*(float(b) for b in DURATION_BUCKETS), float("inf")]
    for h in ("scan_duration", "hypercall_duration", "notify_latency"):
        les = [float(dict(k)["le"]) for k in s[f"xenmux_{h}_seconds_bucket"]]
        assert les == bounds, h
    assert set(by_label(s, "xenmux_notify_latency_seconds_bucket", "le").values()) == {0}
    ((labels, one),) = s["xenmux_build_info"].items()
    info = dict(labels)
    assert one == 1 and info["backend"] == "sim" and info["watch_depth"] == "false"
    assert info["xenstored_features"] == "none"  # C xenstored 4.17: XS_GET_FEATURE is ENOSYS
    assert info["xenstore_path"] == sim.xenstored

    # `xenmux stats` has the same label values (client errors: only those that happened).
    st = d.stats()
    assert list(st["scans"]) == list(SCAN_TRIGGERS)
    assert st["events"] == dict.fromkeys(EVENT_KINDS, 0)
    assert list(st["firings"]) == list(WATCH_PATHS)
    assert st["domains"] == {"running": 9, "shutdown": 0, "dead": 0}
    assert st["client_errors"] == {}


def test_depth_mode_build_info(sim422, daemon_factory):
    d = daemon_factory(sim422, "--metrics-addr", "127.0.0.1:0")
    s = parse(scrape(metrics_port(d))[0])
    ((labels, _),) = s["xenmux_build_info"].items()
    assert dict(labels)["watch_depth"] == "true"
    assert dict(labels)["xenstored_features"] != "none"


def _raw_request(sock_path: str, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(sock_path)
        s.sendall(line)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, "the daemon closed the connection without a reply"
            buf += chunk
    return json.loads(buf)


def test_counters_agree_with_what_a_subscriber_received(sim, daemon_factory):
    d = daemon_factory(sim, "--metrics-addr", "127.0.0.1:0", "--shutdown-poll", "0.05")
    port = metrics_port(d)
    received: list[dict] = []
    with d.subscribe(None) as sub:
        sim.ctl.shutdown(1, "reboot")
        sim.ctl.shutdown(2, "poweroff")
        received += take(sub, 2)
        sim.ctl.destroy(1)
        sim.ctl.destroy(2)
        received += take(sub, 4)  # death, released each
        created = sim.ctl.create(count=2)
        received += take(sub, 2)
        sim.ctl.destroy(3, zombie=True)
        received += take(sub, 1)  # death only: a zombie is never released
        sim.ctl.suspend(4)
        received += take(sub, 1)
        sim.ctl.resume(4)  # fires nothing: the shutdown poll sees it
        received += take(sub, 1)
        assert quiet(sub, 0.3) == []
        got = Counter(e["event"] for e in received)
        assert got == {"shutdown": 3, "death": 3, "released": 2, "new": 2, "resumed": 1}
        assert {e["domid"] for e in received if e["event"] == "new"} == {
            c["domid"] for c in created
        }

        # Bad requests are counted by code.
        assert _raw_request(d.sock, b"{nope\n")["error"]["code"] == "bad-json"
        assert _raw_request(d.sock, b'{"op": "frobnicate", "id": 1}\n')["error"]["code"] == (
            "unknown-op"
        )
        # A subscriber asking for a domid the table lacks costs a one-domid query.
        with d.subscribe([4000]) as absent:
            assert absent.absent == [4000]

        # Only the wildcard subscription is left.
        until(lambda: value(parse(scrape(port)[0]), "xenmux_clients") == 1)
        s = parse(scrape(port)[0])
        st = d.stats()

    want = {k: got.get(k, 0) for k in EVENT_KINDS}
    assert by_label(s, "xenmux_events_total", "event") == want
    assert st["events"] == want
    assert value(s, "xenmux_frames_sent_total") == st["frames_sent"] == len(received)
    assert value(s, "xenmux_subscribers") == 1

    errors = by_label(s, "xenmux_client_errors_total", "code")
    assert errors["bad-json"] == errors["unknown-op"] == 1
    assert sum(errors.values()) == 2
    assert st["client_errors"] == {"bad-json": 1, "unknown-op": 1}

    scans = by_label(s, "xenmux_scans_total", "trigger")
    assert scans["subscribe"] == 1 and scans["depth"] == 0  # no watch depth on 4.17
    assert value(s, "xenmux_targeted_scans_total") == st["targeted_scans"] == 1
    for trigger, n in scans.items():  # polls go on (the zombie): stats comes later
        assert st["scans"][trigger] >= n, trigger
    assert by_label(s, "xenmux_watch_firings_total", "path") == st["firings"]
    # Every scan is timed (a poll may fall between the two reads of one scrape).
    assert abs(value(s, "xenmux_scan_duration_seconds_count") - sum(scans.values())) <= 1
    assert value(s, "xenmux_notify_latency_seconds_count") >= 1
    assert (
        by_label(s, "xenmux_domains", "state")
        == st["domains"]
        == {
            "running": 8,  # dom0, 4 (resumed), 5-8 and the two new ones
            "shutdown": 0,
            "dead": 1,  # the zombie
        }
    )

    # The command shows the same numbers.
    out = subprocess.run(
        [*sim_command(), "stats", "--json", "--socket", d.sock],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["events"] == want
    table = subprocess.run(
        [*sim_command(), "stats", "--socket", d.sock], capture_output=True, text=True, timeout=30
    )
    assert table.returncode == 0, table.stderr
    assert "shutdown 3, resumed 1, death 3, released 2" in table.stdout
    assert "bad-json 1, unknown-op 1" in table.stdout


# -- pieces ------------------------------------------------------------------------------------


def test_histogram_buckets_are_le_and_cumulative():
    h = Histogram((1e-6, 1e-5, 1e-4))
    for v in (0.5e-6, 1e-6, 2e-6, 1e-5, 3e-4, 2.0):
        h.observe(v)
    assert h.count == 6
    assert h.cumulative() == [(1e-6, 2), (1e-5, 4), (1e-4, 4), (float("inf"), 6)]
    assert h.quantile(0.5) == 1e-5 and h.quantile(1.0) == float("inf")
    assert Histogram().quantile(0.5) is None
    family = _histogram("xenmux_x_seconds", "x", h.read())
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("xenmux_x_seconds_bucket", "1e-06")] == 2
    assert samples[("xenmux_x_seconds_bucket", "+Inf")] == 6
    assert samples[("xenmux_x_seconds_count", None)] == 6
    assert samples[("xenmux_x_seconds_sum", None)] == pytest.approx(h.sum)


def test_small_parts():
    assert features_label(None) == "none" and features_label(1) == "0x1"
    assert parse_addr("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_addr(":9877") == ("0.0.0.0", 9877)
    assert parse_addr("[::1]:9877") == ("::1", 9877)
    with pytest.raises(ValueError):
        parse_addr("localhost")
    assert DURATION_BUCKETS[0] <= 1e-6 and DURATION_BUCKETS[-1] >= 50e-3
    assert list(DURATION_BUCKETS) == sorted(DURATION_BUCKETS)


def test_a_quantile_above_the_largest_bucket_still_encodes():
    h = Histogram()
    h.observe(DURATION_BUCKETS[-1] * 10)  # a scan stalled past every bucket
    summary = h.read().summary()
    assert summary["p50_le"] == summary["p99_le"] == "+Inf"
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    h.observe(DURATION_BUCKETS[0] / 2)
    h.observe(DURATION_BUCKETS[0] / 2)
    assert h.read().summary()["p50_le"] == DURATION_BUCKETS[0]
