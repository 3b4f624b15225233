"""Fixtures for tests that run `xenmux serve` against a simulated host.

    from simhelpers import sim, sim_factory, procs  # noqa: F401
    from daemonhelpers import daemon_factory         # noqa: F401

    def test_x(sim, daemon_factory):
        d = daemon_factory(sim, "--shutdown-poll", "0.1")
        with d.client() as c: ...

Each daemon is a subprocess stopped by its PID (SIGTERM, then SIGKILL); teardown asserts it
exited cleanly and removed its socket.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from simhelpers import REPO, SimHandle, sim_command, terminate

from mux.client import Client, Subscription


class DaemonHandle:
    def __init__(self, proc: subprocess.Popen, sock: str, log: Path, args: list[str]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.sock = sock
        self.log = log
        self.args = args

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.sock, timeout=timeout)

    def subscribe(self, domids=None, **kw) -> Subscription:
        kw.setdefault("retry_timeout", 30.0)
        return Subscription(domids, socket_path=self.sock, **kw)

    def stats(self) -> dict:
        with self.client() as c:
            return c.stats()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        terminate(self.proc, "daemon", timeout)
        assert not os.path.lexists(self.sock), f"the daemon left {self.sock} behind"
        return self.proc.returncode


def start_daemon(
    sim: SimHandle, *extra: str, sock: str | None = None, timeout: float = 30.0
) -> DaemonHandle:
    sock = sock or str(sim.dir / "x.sock")
    log = Path(sim.dir) / f"daemon-{time.monotonic_ns()}.log"
    args = [
        *sim_command(),
        "serve",
        "--backend",
        "sim",
        "--sim-dir",
        str(sim.dir),
        "--socket",
        sock,
        "--metrics-addr",
        "",
        "--log-level",
        "debug",
        *extra,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + timeout
    while not _accepts(sock):
        if proc.poll() is not None:
            raise AssertionError(
                f"xenmux serve exited with {proc.returncode}: {log.read_text(errors='replace')}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"xenmux serve not ready after {timeout} s")
        time.sleep(0.02)
    return DaemonHandle(proc, sock, log, args)


def _accepts(path: str) -> bool:
    """Ready means connectable: a stale file may sit at the path before the daemon binds."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture
def daemon_factory():
    started: list[DaemonHandle] = []

    def make(sim: SimHandle, *extra: str, **kw) -> DaemonHandle:
        d = start_daemon(sim, *extra, **kw)
        started.append(d)
        return d

    yield make
    errors = []
    for d in reversed(started):  # a restarted daemon reuses its predecessor's socket
        try:
            d.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, errors


def take(sub: Subscription, count: int, timeout: float = 20.0) -> list[dict]:
    """Exactly `count` events (fails if fewer arrive within `timeout`)."""
    deadline = time.monotonic() + timeout
    out: list[dict] = []
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {count} events arrived: {out[-5:]}"
        ev = sub.next_event(left)
        if ev is not None:
            out.append(ev)
    return out


def quiet(sub: Subscription, seconds: float = 0.5) -> list[dict]:
    """Whatever arrives within `seconds` (to show that nothing more does)."""
    deadline = time.monotonic() + seconds
    out = []
    while (left := deadline - time.monotonic()) > 0:
        ev = sub.next_event(left)
        if ev is not None:
            out.append(ev)
    return out


def until(predicate, timeout: float = 30.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


def brief(events: list[dict]) -> list[tuple]:
    return [(e["event"], e["domid"], e.get("reason")) for e in events]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def processes_mentioning(path: str) -> list[str]:
    """Command lines of live processes that mention `path` (a leak of the harness)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmd:
            found.append(f"{pid}: {cmd}")
    return found
