"""Fixtures for `xenmux act` tests: a sim, its daemon, and act driving the sim's toolstack.

    def test_x(host):                       # sim (8 guests) + daemon; host.act() starts act
        act = host.act()
        host.ctl.guest(3, "poweroff")
        host.wait_truth(lambda t: ("destroy", 3) in t.ops())

`host` is one sim and daemon for all of tests/act, handed to each test as it was at the start:
guests 1-8 running (named guest-N), no act, no act state, and a truth log (DIR/toolstack.log:
what was done, and by whom) that shows only the test's own lines. Every process is stopped
by its PID: the acts a test starts at its end, the sim and the daemon(s) at the session's.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from acthelpers import act_command
from daemonhelpers import start_daemon, until
from simhelpers import REPO, short_dir, start_sim, terminate

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
        self.truth_start = 0  # where this test's part of the truth log begins
        self.guests: dict[int, str] = {}  # the guests each test starts with: domid -> uuid

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
            with open(self.truth_path, "rb") as f:
                f.seek(self.truth_start)
                text = f.read().decode()
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

    def begin(self, tmp: Path) -> None:
        """A test starts: its files in `tmp`, its truth from here on."""
        self.tmp = tmp
        self.acts = []
        self.truth_start = self.truth_path.stat().st_size if self.truth_path.exists() else 0

    def end(self) -> list[str]:
        """A test ends: its acts stopped, then the host as the next test must find it (one
        table change, and the daemon seen to agree, so that no act takes a leftover for a
        shutdown it found at its first start)."""
        errors = self.stop()
        self.acts = []
        rows = [r for r in self.ctl.list() if r["domid"]]
        keep = {
            r["domid"]
            for r in rows
            if self.guests.get(r["domid"]) == r["uuid"] and r["state"] == "running"
        }
        self.ctl.destroy_incarnations(
            [(r["domid"], r["uuid"]) for r in rows if r["domid"] not in keep], by="test"
        )
        for domid in sorted(set(self.guests) - keep):
            [row] = self.ctl.create(domid=domid, name=f"guest-{domid}")
            self.guests[domid] = row["uuid"]
        shutil.rmtree(sim_paths(self.sim.dir).act_state, ignore_errors=True)
        wanted = {(d, u, "running") for d, u in self.guests.items()}
        with self.daemon.client() as client:
            until(
                lambda: (
                    {(r["domid"], r["uuid"], r["state"]) for r in client.list() if r["domid"]}
                    == wanted
                ),
                20,
            )
        return errors


@pytest.fixture(scope="session")
def shared_host(tmp_path_factory):
    """The sim (8 guests) and daemon of tests/act: `host` hands it to each test as it began
    (a sim and a daemon cost more CPU to start than most of these tests)."""
    base = tmp_path_factory.mktemp("act-host")
    directory = short_dir(base)
    sim = start_sim(directory, 8)
    daemons: list = []
    errors = []
    try:
        daemons.append(start_daemon(sim, "--shutdown-poll", "0.1"))
        h = Host(sim, daemons[0], base, daemons)
        h.guests = {r["domid"]: r["uuid"] for r in sim.ctl.list() if r["domid"]}
        yield h
    finally:
        for d in reversed(daemons):  # a restarted daemon reuses its predecessor's socket
            try:
                d.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        try:
            sim.stop()
        except AssertionError as exc:
            errors.append(str(exc))
        if not str(directory).startswith(str(base)):
            shutil.rmtree(directory, ignore_errors=True)
    assert not errors, errors


@pytest.fixture
def host(shared_host, tmp_path) -> Host:
    shared_host.begin(tmp_path)
    yield shared_host
    errors = shared_host.end()
    assert not errors, errors
