"""Processes of the harness: started with posix_spawn, measured from /proc, stopped by PID.

CPU time is read from each process's CPU-time clock (`clock_gettime` on the clock id
`clock_getcpuclockid(pid)` returns): nanoseconds for the whole process, every thread
included, also threads that have already exited. /proc/PID/stat has only clock ticks
(10 ms), too coarse for a process that spends 20 us per firing.

Context switches are summed over the threads in /proc/PID/task/*/status (voluntary and
non-voluntary): every wake-up of a blocked thread is one voluntary switch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CPUCLOCK_SCHED = 2


def cpu_clock_id(pid: int) -> int:
    """What glibc's clock_getcpuclockid(pid) returns: the process's CPU clock."""
    return ((~pid) << 3) | CPUCLOCK_SCHED


def cpu_ns(pid: int) -> int | None:
    try:
        return time.clock_gettime_ns(cpu_clock_id(pid))
    except OSError:
        return None


def switches(pid: int) -> int | None:
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith((b"voluntary_ctxt_switches", b"nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            continue  # a thread that just exited
    return total


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"VmRSS:", b"VmHWM:")):
                    key, value = line.split()[:2]
                    out[key[:-1].decode()] = int(value)
    except OSError:
        pass
    return out


@dataclass
class Sample:
    """CPU ns and context switches of a set of processes, by role."""

    cpu: dict[int, int] = field(default_factory=dict)
    sw: dict[int, int] = field(default_factory=dict)


def sample(pids: Iterable[int], *, with_switches: bool = True) -> Sample:
    s = Sample()
    for pid in pids:
        c = cpu_ns(pid)
        if c is not None:
            s.cpu[pid] = c
        if with_switches:
            w = switches(pid)
            if w is not None:
                s.sw[pid] = w
    return s


def machine_busy_ns() -> int:
    """CPU time the whole machine spent outside idle and iowait (/proc/stat, in ticks)."""
    with open("/proc/stat", "rb") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    busy = sum(values[:8]) - values[3] - values[4]  # guest time is already in user
    return busy * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


def total_cpu(pids: Iterable[int]) -> int:
    return sum(cpu_ns(p) or 0 for p in pids)


def delta(before: Sample, after: Sample, pids: Iterable[int]) -> tuple[int, int]:
    """(CPU ns, switches) used by `pids` between two samples. A process started between the
    two has no `before`: it counts from zero, as its clocks do."""
    cpu = sw = 0
    for pid in pids:
        if pid in after.cpu:
            cpu += after.cpu[pid] - before.cpu.get(pid, 0)
        if pid in after.sw:
            sw += after.sw[pid] - before.sw.get(pid, 0)
    return cpu, sw


class ProcessSet:
    """Children started with posix_spawn; each is stopped by its PID, none is left behind."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.live: dict[int, str] = {}  # pid -> name (for messages)
        self.status: dict[int, int] = {}
        # The environment of a child spawned without one (the harness's own, by default).
        self.env = env

    def spawn(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: dict[str, str] | None = None,
        stdout: str | None = None,
        stderr: str | None = None,
    ) -> int:
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        out = stdout or os.devnull
        err = stderr or os.devnull
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        actions.append((os.POSIX_SPAWN_OPEN, 1, out, flags, 0o644))
        actions.append((os.POSIX_SPAWN_OPEN, 2, err, flags, 0o644))
        pid = os.posix_spawn(
            argv[0],
            list(argv),
            env if env is not None else (self.env or dict(os.environ)),
            file_actions=actions,
            # Python ignores SIGPIPE and SIGXFSZ; a child gets the defaults back, as with
            # subprocess's restore_signals.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
        self.live[pid] = name
        return pid

    def alive(self, pid: int) -> bool:
        if pid not in self.live:
            return False
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            got, status = pid, 0
        if got == pid:
            self.live.pop(pid, None)
            self.status[pid] = os.waitstatus_to_exitcode(status)
            return False
        return True

    def reap(self, pids: Iterable[int] | None = None) -> list[tuple[int, str, int]]:
        """Collect children (of `pids`, or all) that exited by themselves: (pid, name, exit
        code). With runs side by side (--jobs), each collects only its own."""
        gone = []
        live = self.live if pids is None else {p: self.live[p] for p in pids if p in self.live}
        for pid, name in list(live.items()):
            if not self.alive(pid):
                gone.append((pid, name, self.status[pid]))
        return gone

    def stop(self, pids: Iterable[int], *, timeout: float = 5.0) -> None:
        """SIGTERM each, wait, SIGKILL what is left after `timeout`; all reaped."""
        pids = [p for p in pids if p in self.live]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        pending = set(pids)
        while pending and time.monotonic() < deadline:
            for pid in list(pending):
                if not self.alive(pid):
                    pending.discard(pid)
            if pending:
                time.sleep(0.005)
        for pid in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pending:
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(pid, 0)
                self.status[pid] = os.waitstatus_to_exitcode(status)
            self.live.pop(pid, None)

    def stop_all(self) -> None:
        self.stop(list(self.live))
