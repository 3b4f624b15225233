"""What an operator sees of a running daemon without asking it (docs/operations.md): its log
lines as journald wants them, systemd's STATUS= line, and the time of its newest scan as a
metric, for an alert on a stuck daemon."""

from __future__ import annotations

import io
import itertools
import logging
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from daemonhelpers import until
from simhelpers import REPO, sim_command, terminate

from mux.daemon.sdnotify import STATUS_INTERVAL, status_line
from mux.logsetup import setup_logging, stream_is_journal, syslog_priority

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def serve(sim, tmp_path: Path, *extra: str, env: dict, stderr):
    """`xenmux serve` on the sim with its stderr a file given before it starts (as the
    journal's is), which daemon_factory cannot do; (process, socket) once it accepts."""
    sock = str(sim.dir / "o.sock")
    cmd = [
        *sim_command(),
        "serve",
        "--backend",
        "sim",
        "--sim-dir",
        str(sim.dir),
        "--socket",
        sock,
        "--state-dir",
        str(tmp_path / "state"),
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO, env={**os.environ, **(env or {})}
    )

    def accepts() -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(sock)
                return True
            except OSError:
                return proc.poll() is not None

    try:
        until(accepts, timeout=30)
        assert proc.poll() is None, f"xenmux serve exited with {proc.returncode}"
    except BaseException:
        terminate(proc, "daemon")
        raise
    return proc, sock


def journal_of(path: Path) -> str:
    """$JOURNAL_STREAM for a stderr that is `path`: its device and inode, as systemd sets."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


# -- logs ------------------------------------------------------------------------------------


def test_lines_for_the_journal_carry_a_priority_and_no_time(tmp_path, monkeypatch):
    out = tmp_path / "stderr"
    with open(out, "w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_of(out))
        setup_logging("debug", stream)
        log = logging.getLogger("xenmux.test")
        log.debug("a client")
        log.info("serving")
        log.warning("xenstored is not answering")
        log.error("a hypercall failed")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("scan failed")
        stream.flush()
    lines = out.read_text().splitlines()
    assert lines[:4] == [
        "<7>xenmux.test DEBUG a client",
        "<6>xenmux.test INFO serving",
        "<4>xenmux.test WARNING xenstored is not answering",
        "<3>xenmux.test ERROR a hypercall failed",
    ]
    # journald makes an entry of every line: a traceback's lines all keep the priority.
    trace = lines[4:]
    assert trace[0] == "<3>xenmux.test ERROR scan failed"
    assert len(trace) >= 4 and all(line.startswith("<3>") for line in trace), trace
    assert trace[-1] == "<3>ValueError: boom"
    assert not any(TIMESTAMP.search(line) for line in lines)


def test_lines_elsewhere_keep_their_time_even_under_a_unit(tmp_path, monkeypatch):
    # A unit's child with its stderr sent to a file inherits JOURNAL_STREAM: not the journal.
    journal = tmp_path / "journal"
    journal.write_text("")
    monkeypatch.setenv("JOURNAL_STREAM", journal_of(journal))
    stream = io.StringIO()
    setup_logging("info", stream)
    logging.getLogger("xenmux.test").warning("slow")
    line = stream.getvalue().rstrip("\n")
    assert TIMESTAMP.match(line) and line.endswith(" xenmux.test WARNING slow"), line
    assert not line.startswith("<")


def test_a_commands_own_format_loses_only_its_time_in_the_journal(tmp_path, monkeypatch):
    out = tmp_path / "stderr"
    with open(out, "w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_of(out))
        setup_logging("info", stream, fmt="%(asctime)s xenmux act: %(message)s")
        logging.getLogger("xenmux.act").warning("would restart domain 1")
    assert out.read_text() == "<4>xenmux act: would restart domain 1\n"


def test_journal_stream_is_matched_by_device_and_inode(tmp_path):
    path = tmp_path / "f"
    path.write_text("")
    with open(path) as f:
        assert stream_is_journal(f, {"JOURNAL_STREAM": journal_of(path)})
        assert not stream_is_journal(f, {})
        assert not stream_is_journal(f, {"JOURNAL_STREAM": "garbage"})
        st = os.stat(path)
        assert not stream_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert [syslog_priority(n) for n in (10, 20, 30, 40, 50, 25)] == [7, 6, 4, 3, 2, 6]


def test_serve_logs_for_the_journal_and_client_connections_at_debug(sim, tmp_path):
    err = tmp_path / "serve.err"
    with open(err, "wb") as stderr:
        env = {"JOURNAL_STREAM": journal_of(err)}
        proc, sock = serve(sim, tmp_path, "--metrics-addr", "", env=env, stderr=stderr)
        try:
            from mux.client import Client

            with Client(sock) as c:
                c.list()
        finally:
            terminate(proc, "daemon")
    text = err.read_text()
    assert re.search(r"^<6>xenmux INFO serving 9 domains on ", text, re.M), text
    assert "client connected" not in text  # debug, and the level is info
    assert not TIMESTAMP.search(text), text
    assert all(line.startswith("<") for line in text.splitlines()), text


def test_serve_with_debug_logs_client_connections_at_debug(sim, tmp_path):
    err = tmp_path / "serve.err"
    with open(err, "wb") as stderr:
        env = {"JOURNAL_STREAM": journal_of(err)}
        proc, sock = serve(
            sim, tmp_path, "--metrics-addr", "", "--log-level", "debug", env=env, stderr=stderr
        )
        try:
            from mux.client import Client

            with Client(sock) as c:
                c.list()
            until(lambda: "client connected" in err.read_text(), timeout=10)
        finally:
            terminate(proc, "daemon")
    assert re.search(r"^<7>xenmux\.server DEBUG client connected: pid=\d+ ", err.read_text(), re.M)


def seconds_ago(clock: str) -> float:
    """How long ago the local time of day HH:MM:SS was (within the last day)."""
    h, m, s = map(int, clock.split(":"))
    now = time.localtime()
    return ((now.tm_hour - h) * 3600 + (now.tm_min - m) * 60 + now.tm_sec - s) % 86400


# -- STATUS= ---------------------------------------------------------------------------------


def test_status_line_words():
    assert status_line({"running": 9, "shutdown": 0, "dead": 0}, 1, None) == (
        "9 domains (9 running), 1 subscriber, last scan never"
    )
    when = time.mktime((2026, 12, 2, 3, 4, 5, 0, 0, -1))
    assert status_line({"running": 7, "shutdown": 2, "dead": 1}, 3, when) == (
        "10 domains (7 running, 2 shut down, 1 dead), 3 subscribers, last scan 03:04:05"
    )


def test_ready_then_status_from_a_timer_then_stopping(sim, daemon_factory, tmp_path, monkeypatch):
    addr = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(addr)
    listener.settimeout(30)
    started = time.time()
    monkeypatch.setenv("NOTIFY_SOCKET", addr)  # what the daemon inherits
    d = daemon_factory(sim, "--full-scan", "0")
    try:
        ready = listener.recv(4096).decode()
        ready_at = time.monotonic()
        lines = ready.split("\n")
        assert lines[0] == "READY=1"
        m = re.fullmatch(
            r"STATUS=9 domains \(9 running\), 0 subscribers, last scan (\d\d:\d\d:\d\d)", lines[1]
        )
        assert m, ready
        assert seconds_ago(m.group(1)) <= time.time() - started + 1

        # Three changes at once: STATUS= lines come from the timer, never one per firing or
        # scan. (Destroyed: a domain left shut down is polled, a scan each time.)
        for domid in (3, 4, 5):
            sim.ctl.destroy(domid)
        sent = [ready_at]
        status = ""
        while not status.startswith("STATUS=6 domains"):
            # Under load a tick may come between two of the changes and show part of them.
            assert len(sent) < 4, f"{len(sent) - 1} STATUS= lines and still not 6 domains"
            listener.settimeout(STATUS_INTERVAL + 10)
            status = listener.recv(4096).decode()
            sent.append(time.monotonic())
            assert re.fullmatch(
                r"STATUS=\d domains \(\d running\), 0 subscribers, last scan \d\d:\d\d:\d\d",
                status,
            ), status
        gaps = [b - a for a, b in itertools.pairwise(sent)]
        assert min(gaps) >= STATUS_INTERVAL - 0.5, f"STATUS= lines {gaps} s apart"

        # Nothing changed since: the next tick sends nothing.
        listener.settimeout(STATUS_INTERVAL + 1)
        with pytest.raises(TimeoutError):
            listener.recv(4096)
        assert d.stop() == 0
        listener.settimeout(5)
        assert listener.recv(4096).decode() == "STOPPING=1\nSTATUS=stopping"
    finally:
        listener.close()


# -- xenmux_last_scan_timestamp_seconds ----------------------------------------------------------


def last_scan_metric(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "# TYPE xenmux_last_scan_timestamp_seconds gauge" in text
    (value,) = re.findall(r"^xenmux_last_scan_timestamp_seconds (\S+)$", text, re.M)
    return float(value)


def test_last_scan_metric_moves_with_every_scan_and_stops_with_them(sim, daemon_factory):
    before = time.time()
    d = daemon_factory(sim, "--metrics-addr", "127.0.0.1:0", "--full-scan", "0")
    with d.client() as c:
        port = c.stats()["metrics_port"]
        first = last_scan_metric(port)
        assert before <= first <= time.time()
        # The watches' first firings may cost a scan just after start-up; then, with no
        # firing and no safety scan (--full-scan 0), the time stays.
        readings = [first]
        while len(readings) < 2 or readings[-1] != readings[-2]:
            assert len(readings) < 20, readings
            time.sleep(0.5)
            readings.append(last_scan_metric(port))
        first = readings[-1]
        time.sleep(0.5)
        assert last_scan_metric(port) == first
        c.rescan()
        after = last_scan_metric(port)
        assert first < after <= time.time()


def test_the_documented_stuck_daemon_alert_is_a_valid_rule(tmp_path):
    from mux import debpeers

    docs = (REPO / "docs" / "operations.md").read_text()
    (rules,) = [
        block for block in re.findall(r"```yaml\n(.*?)```", docs, re.S) if "XenmuxStuck" in block
    ]
    assert "xenmux_last_scan_timestamp_seconds" in rules
    path = tmp_path / "rules.yml"
    path.write_text(rules)
    promtool = debpeers.locate("promtool")
    done = subprocess.run(
        [str(promtool.path), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=promtool.environ(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 2 rules found" in done.stdout, done.stdout
