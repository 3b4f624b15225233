"""Fixtures for tests that need a simulated Xen host (`xenmux sim`) running in a subprocess.

A test module asks for them with `pytest_plugins = ("simhelpers",)` (or tests/conftest.py
does it for every module), then:

    def test_something(sim):            # dom0 + 8 guests, xenstored 4.17
        sim.ctl.shutdown(3, "reboot")   # mux.sim.ctl.SimControl, already connected
        subprocess.run(["xenstore-ls"], env=sim.env(), timeout=10)

    def test_other(sim_factory):
        big = sim_factory(domains=4000, xs_version="4.22")

Every process is stopped by its PID: the sim with SIGTERM (then SIGKILL), and the teardown
asserts that it removed its sockets and its shared-memory file. `procs` starts helper
processes (xenstore-watch...) and kills each one by PID at teardown.
"""

from __future__ import annotations

import atexit
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mux.sim.ctl import SimControl
from mux.sim.paths import sim_paths

REPO = Path(__file__).resolve().parent.parent
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for the sim's temporary names


def sim_command() -> list[str]:
    exe = REPO / ".venv" / "bin" / "xenmux"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "mux.cli"]


def terminate(proc: subprocess.Popen, what: str, timeout: float = 10.0) -> None:
    """Stop a process by its PID: SIGTERM, then SIGKILL (and fail: it should have obeyed)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
        raise AssertionError(f"{what} {proc.pid} ignored SIGTERM for {timeout} s") from None


class SimHandle:
    """A running `xenmux sim`: its directory, sockets, control client and process."""

    def __init__(self, directory: Path, proc: subprocess.Popen, ready: dict) -> None:
        self.dir = directory
        self.proc = proc
        self.pid = proc.pid
        self.ready = ready
        paths = sim_paths(directory)
        self.xenstored = paths.xenstored
        self.control_path = paths.control
        self.shm = paths.shm
        self.ctl = SimControl(str(directory))

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for xenstore clients: XENSTORED_PATH pointed at this sim."""
        env = dict(os.environ)
        env["XENSTORED_PATH"] = self.xenstored
        env.update(extra)
        return env

    def sim_ctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run `xenmux sim-ctl --dir DIR ARGS...` as a subprocess."""
        return subprocess.run(
            [*sim_command(), "sim-ctl", "--dir", str(self.dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL; asserts the sim left no socket or table behind."""
        try:
            self.ctl.close()
        except OSError:
            pass
        terminate(self.proc, "sim", timeout)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        left = [p for p in (self.xenstored, self.control_path, self.shm) if os.path.lexists(p)]
        assert not left, f"the sim left {left} behind"
        return self.proc.returncode


def start_sim(
    directory: Path,
    domains: int = 8,
    xs_version: str = "4.17",
    extra_args: tuple[str, ...] | list[str] = (),
    timeout: float = 60.0,
) -> SimHandle:
    """Start `xenmux sim` and wait (at most `timeout`) until its xenstored socket exists."""
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [
        *sim_command(),
        "sim",
        "--dir",
        str(directory),
        "--domains",
        str(domains),
        "--xs-version",
        xs_version,
        *extra_args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    sock = Path(sim_paths(directory).xenstored)
    deadline = time.monotonic() + timeout
    try:
        while not sock.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")
                raise AssertionError(f"xenmux sim exited with {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                raise AssertionError(f"xenmux sim not ready after {timeout} s")
            time.sleep(0.02)
        ready_fd = proc.stdout.fileno()
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([ready_fd], [], [], left)[0]:
                raise AssertionError("xenmux sim printed no ready line")
            chunk = os.read(ready_fd, 4096)
            if not chunk:
                raise AssertionError("xenmux sim closed stdout before its ready line")
            line += chunk
        import json

        ready = json.loads(line.splitlines()[0])
        assert ready["ready"] is True
        return SimHandle(directory, proc, ready)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        raise


def short_dir(tmp_path: Path, name: str = "sim") -> Path:
    """tmp_path/name, or a shorter directory when socket paths there would be too long.

    A shorter one is outside pytest's temporary tree, so it is removed when the test process
    exits, whether or not its caller removes it sooner."""
    directory = tmp_path / name
    if len(sim_paths(directory).xenstored) + 16 <= SOCKET_PATH_MAX:
        return directory
    short = Path(tempfile.mkdtemp(prefix="xmsim-"))
    atexit.register(shutil.rmtree, short, True)
    return short


@pytest.fixture
def sim_factory(tmp_path):
    """Call with (domains=8, xs_version="4.17", extra_args=()) to start a sim."""
    started: list[SimHandle] = []
    made: list[Path] = []

    def make(domains: int = 8, xs_version: str = "4.17", extra_args=(), timeout=60.0):
        directory = short_dir(tmp_path, f"sim{len(started)}")
        if not str(directory).startswith(str(tmp_path)):
            made.append(directory)
        handle = start_sim(directory, domains, xs_version, extra_args, timeout)
        started.append(handle)
        return handle

    yield make
    errors = []
    for handle in started:
        try:
            handle.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)
    assert not errors, errors


@pytest.fixture
def sim(sim_factory) -> SimHandle:
    """dom0 + 8 guests, xenstored modelled on C xenstored 4.17."""
    return sim_factory(domains=8)


@pytest.fixture
def sim422(sim_factory) -> SimHandle:
    """dom0 + 8 guests, xenstored 4.22 (watch depth)."""
    return sim_factory(domains=8, xs_version="4.22")


class Procs:
    """Helper processes of one test, each killed by its PID at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self._pending: dict[int, bytes] = {}

    def start(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(cmd, **kwargs)
        self.procs.append(proc)
        return proc

    def read_lines(self, proc: subprocess.Popen, count: int, timeout: float) -> list[str]:
        """Up to `count` more lines of proc's stdout within `timeout` seconds."""
        fd = proc.stdout.fileno()
        buf = self._pending.pop(proc.pid, b"")
        deadline = time.monotonic() + timeout
        while buf.count(b"\n") < count:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
        lines = buf.split(b"\n")
        done, rest = lines[:count], lines[count:]
        if len(lines) <= count:  # fewer than asked: the last piece is a partial line
            done, rest = lines[:-1], lines[-1:]
        self._pending[proc.pid] = b"\n".join(rest)
        return [line.decode(errors="replace") for line in done]

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream:
                    stream.close()


@pytest.fixture
def procs():
    group = Procs()
    yield group
    group.kill_all()
