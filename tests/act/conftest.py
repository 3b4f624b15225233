"""Fixtures for `xenmux act` tests: a sim, its daemon, and act driving the sim's toolstack.

    def test_x(host):                       # sim (8 guests) + daemon + act, no policy
        host.ctl.guest(3, "poweroff")
        host.wait_truth(lambda t: ("destroy", 3) in t.ops())

Every process is stopped by its PID; `host.act_proc(...)` starts more acts (each stopped at
teardown). The sim's truth log (DIR/toolstack.log) says what was done, and by whom.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from daemonhelpers import start_daemon
from simhelpers import REPO, sim_command, terminate

from mux.sim.paths import sim_paths


class Truth:
    def __init__(self, lines: list[dict]) -> None:
        self.lines = lines

    def ops(self, by: str | None = None) -> list[tuple[str, int]]:
        return [(x["op"], x["domid"]) for x in self.lines if by is None or x.get("by") == by]

    def of(self, op: str, by: str | None = "act") -> list[dict]:
        return [x for x in self.lines if x["op"] == op and (by is None or x.get("by") == by)]


class ActHandle:
    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log = log

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 20.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if text.count(needle) >= count:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"act exited with {self.proc.returncode}: {text}")
            assert time.monotonic() < deadline, f"no {needle!r} in act's log: {text[-3000:]}"
            time.sleep(0.02)

    def metrics(self) -> str:
        """The act's /metrics text (started with --metrics-addr 127.0.0.1:0)."""
        import re
        import urllib.request

        port = re.search(r"metrics on [^:]+:(\d+)/metrics", self.text())[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        terminate(self.proc, "act", 15)
        return self.proc.returncode


def act_command(sim_dir: Path, sock: str, *extra: str) -> list[str]:
    return [
        *sim_command(),
        "act",
        "--toolstack",
        "sim",
        "--sim-dir",
        str(sim_dir),
        "--socket",
        sock,
        *extra,
    ]


class Host:
    """A sim, its daemon and the acts started on it."""

    def __init__(self, sim, daemon, tmp: Path, daemons: list) -> None:
        self.sim = sim
        self.ctl = sim.ctl
        self.daemon = daemon
        self.daemons = daemons  # every daemon started, stopped at teardown
        self.tmp = tmp
        self.acts: list[ActHandle] = []
        self.truth_path = Path(sim_paths(sim.dir).toolstack_log)

    def policy(self, text: str, name: str = "policy.toml") -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def act(self, *extra: str, ready: bool = True) -> ActHandle:
        log = self.tmp / f"act-{len(self.acts)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                act_command(self.sim.dir, self.daemon.sock, *extra),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        handle = ActHandle(proc, log)
        self.acts.append(handle)
        if ready:
            handle.wait_log("acting for every domain")
        return handle

    def kill_daemon_and_restart(self) -> None:
        """SIGKILL the daemon, then start another on the same socket and state dir."""
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(10)
        self.daemon = start_daemon(
            self.sim, *self.daemon.args[self.daemon.args.index("debug") + 1 :]
        )
        self.daemons.append(self.daemon)

    def truth(self) -> Truth:
        try:
            text = self.truth_path.read_text()
        except FileNotFoundError:
            text = ""
        return Truth([json.loads(x) for x in text.splitlines() if x.strip()])

    def wait_truth(self, predicate, timeout: float = 20.0) -> Truth:
        deadline = time.monotonic() + timeout
        while True:
            truth = self.truth()
            if predicate(truth):
                return truth
            assert time.monotonic() < deadline, f"not in the truth log: {truth.lines[-10:]}"
            time.sleep(0.02)

    def domain(self, domid: int) -> dict | None:
        for row in self.ctl.list():
            if row["domid"] == domid:
                return row
        return None

    def by_name(self, name: str) -> list[dict]:
        return [r for r in self.ctl.list() if r["name"] == name]

    def stop(self) -> list[str]:
        errors = []
        for act in self.acts:
            try:
                act.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        return errors


@pytest.fixture
def host_factory(sim_factory, tmp_path):
    made: list[Host] = []
    daemons = []

    def make(domains: int = 8, daemon_args: tuple[str, ...] = ("--shutdown-poll", "0.1")) -> Host:
        sim = sim_factory(domains=domains)
        daemon = start_daemon(sim, *daemon_args)
        daemons.append(daemon)
        h = Host(sim, daemon, tmp_path, daemons)
        made.append(h)
        return h

    yield make
    errors = []
    for h in made:
        errors += h.stop()
    for d in reversed(daemons):
        try:
            d.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, errors


@pytest.fixture
def host(host_factory) -> Host:
    return host_factory()
