"""The faults a chaos run injects, each recorded as a window of CLOCK_MONOTONIC time.

A fault is *blind* when the daemon cannot see the host while it lasts (the oracle does not
expect it to have seen what lived only then): the daemon killed or terminated until it
answers again, stopped until continued, xenstored away until the daemon is connected to it
again, hypercalls failing. A stalled subscriber or a flooding member blind nobody.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable

from mux.chaos.members import Daemon, ask, python_module
from mux.chaos.oracle import Fault
from mux.client import Client, XenmuxError
from mux.sim.ctl import SimControl

FAULT_KINDS = ("kill", "term", "stop", "xenstored", "hypercall", "stall", "flood")
ENDS_DAEMON = ("kill", "term")
STALL_MAX = 20.0  # seconds a stalled subscriber waits for its overflow at most
STALL_BURST = 200  # domains booted at once while subscribers are stalled


def now() -> int:
    return time.monotonic_ns()


class Injector:
    """Injects one fault at a time (a stall runs beside the others) and logs each one."""

    def __init__(
        self,
        *,
        rng: random.Random,
        daemon: Daemon,
        sim_dir: str,
        socket_path: str,
        stalled: Callable[[], list[int]],
        spawn: Callable[[list[str], str], int],
        stop_pid: Callable[[int], None],
        log_path: str,
        flood_count: int,
        rss_cap_kib: int,
    ) -> None:
        self.rng = rng
        self.daemon = daemon
        self.sim_dir = sim_dir
        self.socket_path = socket_path
        self.stalled = stalled
        self.spawn = spawn
        self.stop_pid = stop_pid
        self.flood_count = flood_count
        self.rss_cap_kib = rss_cap_kib
        self.faults: list[Fault] = []
        self.details: list[dict] = []
        self._log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()
        self._stall_thread: threading.Thread | None = None

    def record(self, kind: str, start: int, end: int, blind: bool, **detail) -> None:
        fault = Fault(kind, start, end, blind)
        entry = {"kind": kind, "start": start, "end": end, "blind": blind, **detail}
        with self._lock:
            self.faults.append(fault)
            self.details.append(entry)
            self._log.write(json.dumps(entry) + "\n")

    def inject(self, kind: str) -> None:
        getattr(self, "_" + kind)()

    # -- the daemon ----------------------------------------------------------------------

    def _restart(self, kind: str, sig: int, down: float) -> None:
        start = now()
        obeyed = self.daemon.end(sig)
        time.sleep(down)
        self.daemon.start()
        self.record(kind, start, now(), True, down=round(down, 3), obeyed=obeyed)

    def _kill(self) -> None:
        self._restart("kill", signal.SIGKILL, self.rng.uniform(0.2, 1.5))

    def _term(self) -> None:
        self._restart("term", signal.SIGTERM, self.rng.uniform(0.2, 1.0))

    def _stop(self) -> None:
        pause = self.rng.uniform(1.0, 4.0)
        start = now()
        self.daemon.signal(signal.SIGSTOP)
        time.sleep(pause)
        self.daemon.signal(signal.SIGCONT)
        self.record("stop", start, now(), True, seconds=round(pause, 3))

    # -- xenstored -----------------------------------------------------------------------

    def _xenstored(self) -> None:
        down = self.rng.uniform(0.2, 2.0)
        start = now()
        with SimControl(self.sim_dir, timeout=30) as ctl:
            ctl.restart_xenstored(down)
        # Blind until the daemon has its watches again.
        deadline = time.monotonic() + 10
        connected = False
        while time.monotonic() < deadline:
            stats = ask(self.socket_path, "stats")
            if stats is not None and stats.get("xenstore_connected"):
                connected = True
                break
            time.sleep(0.05)
        self.record("xenstored", start, now(), True, down=round(down, 3), reconnected=connected)

    # -- the hypervisor ------------------------------------------------------------------

    def _hypercall(self) -> None:
        count = self.rng.randint(1, 6)
        before = (ask(self.socket_path, "stats") or {}).get("hypercall_errors", 0)
        start = now()
        with SimControl(self.sim_dir, timeout=30) as ctl:
            ctl.fail_hypercalls(count)
        # Blind until a full scan has worked again: a rescan answers only then (the daemon
        # retries with backoff, 6 failures take it about 3 s).
        served = True
        try:
            with Client(self.socket_path, timeout=30) as client:
                client.rescan()
        except (OSError, XenmuxError):
            served = False
        end = now()
        after = (ask(self.socket_path, "stats") or {}).get("hypercall_errors", 0)
        self.record(
            "hypercall", start, end, True, armed=count, errors=after - before, rescanned=served
        )

    # -- subscribers and members ---------------------------------------------------------

    def _stall(self) -> None:
        if self.stalling():
            return
        self._stall_thread = threading.Thread(target=self._stall_until_overflow, daemon=True)
        self._stall_thread.start()

    def _stall_until_overflow(self) -> None:
        pids = self.stalled()
        start = now()
        base = ask(self.socket_path, "stats") or {}
        overflowed = False
        for pid in pids:
            _signal(pid, signal.SIGSTOP)
        try:
            # A boot storm while they sleep: a wildcard subscriber's socket holds a few
            # hundred frames before the daemon's own buffer (--high-water) starts to fill.
            with SimControl(self.sim_dir, timeout=30) as ctl:
                ctl.create(count=STALL_BURST)
            deadline = time.monotonic() + STALL_MAX
            while time.monotonic() < deadline:
                time.sleep(0.25)
                stats = ask(self.socket_path, "stats")
                if stats is None:
                    continue
                if stats.get("instance") != base.get("instance"):
                    base = stats  # another daemon: count its overflows from here
                elif stats.get("overflows", 0) > base.get("overflows", 0):
                    overflowed = True
                    break
        finally:
            for pid in pids:
                _signal(pid, signal.SIGCONT)
        self.record("stall", start, now(), False, overflowed=overflowed, booted=STALL_BURST)

    def _flood(self) -> None:
        seconds = self.rng.uniform(2.0, 4.0)
        argv = python_module(
            "mux.chaos.flood", "--socket", self.socket_path, "--count", str(self.flood_count)
        )
        start = now()
        pid = self.spawn(argv, "flood")
        cut = False
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            # A daemon that buffers every reply could take the machine down with it.
            if self.daemon.sample() > self.rss_cap_kib:
                cut = True
                break
            time.sleep(0.1)
        self.stop_pid(pid)
        self.record("flood", start, now(), False, requests=self.flood_count, cut_at_cap=cut)

    def stalling(self) -> bool:
        return self._stall_thread is not None and self._stall_thread.is_alive()

    def wait_stall(self) -> None:
        if self._stall_thread is not None:
            self._stall_thread.join(timeout=STALL_MAX + 5)

    def close(self) -> None:
        self.wait_stall()
        self._log.close()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def parse_faults(text: str) -> tuple[str, ...]:
    """Fault kinds by name, comma-separated; "all" or "none"."""
    if text == "all":
        return FAULT_KINDS
    if text == "none":
        return ()
    kinds = tuple(dict.fromkeys(k for k in text.split(",") if k))
    for kind in kinds:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}: use some of {', '.join(FAULT_KINDS)}")
    return kinds


def schedule(rng: random.Random, kinds: tuple[str, ...] = FAULT_KINDS):
    """Fault kinds in rounds: each round every kind once, in a random order."""
    while True:
        round_ = list(kinds)
        rng.shuffle(round_)
        yield from round_
