"""Signals as a terminal and an operator send them (docs/operations.md, "Signals"): a closed
terminal's SIGHUP stops the demo and all it started, as Ctrl-C does; `serve` outlives a
SIGHUP with its socket; the sim and `sim-ctl churn` stop in the middle of a churn without a
traceback, the sim leaving no socket or shared memory."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from daemonhelpers import until
from simhelpers import sim_command

STOPS = [signal.SIGHUP, signal.SIGTERM, signal.SIGINT]


def children(pid: int) -> set[int]:
    """The PIDs whose parent is `pid` (read from /proc)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.add(int(entry))
    return out


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGHUP,), (signal.SIGINT,), (signal.SIGHUP, signal.SIGTERM)],
    ids=["hangup", "ctrl-c", "hangup-then-term"],
)
def test_demo_stops_everything_it_started(procs, signals):
    demo = procs.start(
        [*sim_command(), "demo", "--plain", "--domains", "50", "--rate", "40"],
        stderr=subprocess.PIPE,
    )
    (first,) = procs.read_lines(demo, 1, 60)
    work = re.search(r" in (/\S+) \.\.\.$", first).group(1)
    # Running: the churn's events are printed, so the sim, the daemon and the churn are up.
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while not any(" new " in line or " death " in line for line in seen):
        assert time.monotonic() < deadline, seen[-20:]
        seen += procs.read_lines(demo, 1, 5)
    started = children(demo.pid)
    try:
        assert len(started) == 4, started  # xenmux sim, serve, act, sim-ctl churn
        for sig in signals:
            demo.send_signal(sig)
            time.sleep(0.05)
        assert demo.wait(30) in (0, 130)
        assert demo.stderr.read() == b""
        left = [pid for pid in started if alive(pid)]
        assert not left, f"the demo left {left} running"
        assert not os.path.exists(work), f"the demo left {work}"
    finally:
        stop_orphans(started, work)


def stop_orphans(pids: set[int], work: str) -> None:
    """What a failing demo left: each process stopped by its PID, then its directory."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(work, ignore_errors=True)


def test_serve_outlives_sighup_with_its_socket(sim, daemon_factory):
    d = daemon_factory(sim)
    os.kill(d.pid, signal.SIGHUP)
    until(lambda: "SIGHUP ignored" in d.log_text(), timeout=10)
    assert d.proc.poll() is None
    assert d.stats()["domains"]["running"] == 9
    assert d.stop() == 0  # and the socket is gone (DaemonHandle.stop checks)


def churn(sim, procs, seconds: int = 60):
    before = sim.ctl.list()
    proc = procs.start(
        [
            *sim_command(),
            "sim-ctl",
            "--dir",
            str(sim.dir),
            "churn",
            "--seconds",
            str(seconds),
            "--rate",
            "100",
        ],
        # As from a terminal: SIGHUP at its default, even when the suite runs under nohup
        # (which sim-ctl, relying on the default action, then rightly honours).
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    # Under way: lifecycles have changed the host.
    until(lambda: sim.ctl.list() != before, timeout=20)
    return proc


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_sim_stopped_during_a_churn_says_no_traceback(sim, procs, sig):
    ctl = churn(sim, procs)
    sim.proc.send_signal(sig)
    assert sim.proc.wait(20) == 0
    err = sim.proc.stderr.read().decode()
    assert "Traceback" not in err and "Exception" not in err, err
    for path in (sim.xenstored, sim.control_path, sim.shm):
        assert not os.path.lexists(path), f"the sim left {path}"
    # The churn's client is told in one line.
    assert ctl.wait(20) == 1
    assert ctl.stderr.read().decode().splitlines() == [
        f"xenmux sim-ctl: the sim at {sim.control_path} closed the connection"
    ]


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_sim_ctl_churn_stopped_says_no_traceback(sim, procs, sig):
    ctl = churn(sim, procs)
    ctl.send_signal(sig)
    status = ctl.wait(20)
    assert status == (130 if sig == signal.SIGINT else -sig), status
    assert ctl.stderr.read() == b""
    assert sim.ctl.info()  # the sim goes on
