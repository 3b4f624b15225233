"""The processes of a chaos run besides the sim: the daemon (restarted at will), the
subscribers, the flooding member; and the two watchers in the runner itself, the pinger
and the memory sampler."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from mux.bench.host import HostError, log_tail, python_command
from mux.bench.procs import ProcessSet, memory_kib
from mux.client import Client, XenmuxError


def answers(path: str, timeout: float = 0.5) -> bool:
    """Whether a daemon serves at `path` (a stale socket file of a killed one does not)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(b'{"op": "ping", "id": 1}\n')
        return b'"ok"' in s.recv(4096)
    except OSError:
        return False
    finally:
        s.close()


def ask(path: str, op: str) -> dict | None:
    """One request on a fresh connection (`hello`, `stats`...): the reply's fields it
    names, or None if the daemon does not answer now."""
    try:
        with Client(path, timeout=2.0) as client:
            reply = client.call(op)
    except (OSError, XenmuxError):
        return None
    return reply.get("stats", reply) if op == "stats" else reply


class Daemon:
    """`xenmux serve --backend sim`, started again after every fault that ends it."""

    def __init__(self, procs: ProcessSet, sim_dir: str, socket_path: str, log: str, **opts):
        self.procs = procs
        self.socket_path = socket_path
        self.log = log
        self.argv = python_command(
            "serve",
            "--backend",
            "sim",
            "--sim-dir",
            sim_dir,
            "--socket",
            socket_path,
            "--metrics-addr",
            "",
            "--high-water",
            str(opts.get("high_water", 65536)),
            "--log-level",
            "warning",
        )
        self.pid: int | None = None
        self.pids: list[int] = []
        self.peak_kib = 0  # the highest VmHWM/VmRSS seen of any of its pids
        self.exits: list[int] = []  # statuses of daemons that ended other than by our kill

    def start(self, timeout: float = 60.0) -> None:
        self.pid = self.procs.spawn(self.argv, name="xenmux serve", stderr=self.log)
        self.pids.append(self.pid)
        deadline = time.monotonic() + timeout
        while not answers(self.socket_path):
            if not self.procs.alive(self.pid):
                raise HostError(
                    f"xenmux serve exited with status {self.procs.status.get(self.pid)} "
                    "before it answered" + log_tail(self.log)
                )
            if time.monotonic() > deadline:
                raise HostError(f"xenmux serve did not answer within {timeout:.0f} s")
            time.sleep(0.02)

    def sample(self) -> int:
        """VmRSS now (KiB), and the peak so far."""
        pid = self.pid  # the sampler thread reads it while the runner restarts the daemon
        if pid is None:
            return 0
        mem = memory_kib(pid)
        self.peak_kib = max(self.peak_kib, mem.get("VmHWM", 0), mem.get("VmRSS", 0))
        return mem.get("VmRSS", 0)

    def signal(self, sig: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def end(self, sig: int, timeout: float = 10.0) -> bool:
        """Send `sig` and reap it; SIGKILL after `timeout`. False if it had to be killed."""
        pid = self.pid
        if pid is None:
            return True
        self.sample()
        self.signal(signal.SIGCONT)  # a stopped daemon cannot act on SIGTERM
        self.signal(sig)
        deadline = time.monotonic() + timeout
        while self.procs.alive(pid):
            if time.monotonic() > deadline:
                self.procs.stop([pid], timeout=0)
                self.pid = None
                return False
            time.sleep(0.005)
        self.pid = None
        return True


@dataclass
class Pings:
    """Ping round trips of a steady client, as (start ns, latency ns or None if failed)."""

    samples: list[tuple[int, int | None]] = field(default_factory=list)


class Pinger(threading.Thread):
    """A steady client that pings the daemon every `period`, reconnecting when it must."""

    def __init__(self, path: str, period: float = 0.05, timeout: float = 10.0) -> None:
        super().__init__(name="pinger", daemon=True)
        self.path = path
        self.period = period
        self.timeout = timeout
        self.pings = Pings()
        self._halt = threading.Event()

    def run(self) -> None:
        sock: socket.socket | None = None
        n = 0
        while not self._halt.is_set():
            start = time.monotonic_ns()
            try:
                if sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(self.timeout)
                    sock.connect(self.path)
                n += 1
                sock.sendall(b'{"op": "ping", "id": %d}\n' % n)
                buf = b""
                while b"\n" not in buf:
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    buf += chunk
                self.pings.samples.append((start, time.monotonic_ns() - start))
            except OSError:
                if sock is not None:
                    sock.close()
                    sock = None
                self.pings.samples.append((start, None))
            self._halt.wait(self.period)
        if sock is not None:
            sock.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self.timeout + 1)


class Sampler(threading.Thread):
    """The daemon's memory every `period` (whichever pid is the daemon now)."""

    def __init__(self, daemon: Daemon, period: float = 0.2) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.daemon_proc = daemon
        self.period = period
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.daemon_proc.sample()
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
