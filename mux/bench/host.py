"""The simulated host of one measurement: `xenmux sim` in a private directory, its control
client, and the change stamps it writes into the shared-memory table's header.

Every operation the harness drives is one table change (a destroy is driven as two: `dying`,
then the record gone), so the stamp read right after the sim's reply is that change's stamp.
The sim replies only once the change is applied and its firings are written to every watcher.
The changes go over the sim's binary change path (mux/sim/changes.py), so that what a change
costs the host is the change, not a JSON round trip; the rest (the guest list, info) over its
control socket.
"""

from __future__ import annotations

import mmap
import os
import sys
import time
from dataclasses import dataclass

from mux.bench.procs import ProcessSet
from mux.records import parse_reason
from mux.sim._simfast import shm_change_stamp
from mux.sim.changes import FLAG_SILENT, FLAG_ZOMBIE, ChangeClient, ChangeError
from mux.sim.ctl import SimControl
from mux.sim.paths import sim_paths


class HostError(RuntimeError):
    pass


@dataclass
class Op:
    """One change the harness made: its stamp and what the sim says it fired."""

    stamp: int
    release_firings: int
    introduce_firings: int
    watch_events: int
    domid: int  # the domain a create made (0 for the other changes)


def python_command(*args: str) -> list[str]:
    """`xenmux ARGS` run by this interpreter (works from an installed package and a venv)."""
    return [sys.executable, "-m", "mux.cli", *args]


def python_env(cache_dir: str) -> dict[str, str]:
    """The harness's environment for its Python children (sims, daemons), with their
    bytecode cached in `cache_dir`, a directory of the run's own: a run starts a hundred of
    them, and where PYTHONDONTWRITEBYTECODE is set (as in many CI and container images) each
    would compile every module it imports again, about a third of its start-up. The
    installed package is not written to, and the cache goes with the run's directory."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = cache_dir
    return env


def log_tail(path: str | None, limit: int = 1500) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return f":\n{text}" if text else ""


def wait_for_socket(
    path: str, proc: ProcessSet, pid: int, what: str, timeout: float, log: str | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if not proc.alive(pid):
            raise HostError(
                f"{what} exited with status {proc.status.get(pid)} before it was ready"
                + log_tail(log)
            )
        if time.monotonic() > deadline:
            raise HostError(f"{what} was not ready after {timeout:.0f} s")
        time.sleep(0.01)


class SimHost:
    """`xenmux sim --dir DIR --domains N` and its control connection."""

    def __init__(
        self,
        procs: ProcessSet,
        directory: str,
        domains: int,
        *,
        xs_version: str = "4.17",
        seed: int = 1,
        virq_sockets: tuple[str, ...] = (),
        log: str | None = None,
    ) -> None:
        self.procs = procs
        self.dir = directory
        self.domains = domains
        self.xs_version = xs_version
        self.seed = seed
        self.virq_sockets = virq_sockets
        self.log = log
        self.pid: int | None = None
        self.ctl: SimControl | None = None
        self.changes: ChangeClient | None = None
        self._mm: mmap.mmap | None = None
        paths = sim_paths(directory)
        self.xenstored_path = paths.xenstored
        self.shm_path = paths.shm
        self.changes_path = paths.changes

    def start(self, timeout: float = 120.0) -> None:
        argv = python_command(
            "sim",
            "--dir",
            self.dir,
            "--domains",
            str(self.domains),
            "--xs-version",
            self.xs_version,
            "--seed",
            str(self.seed),
        )
        for path in self.virq_sockets:
            argv += ["--virq-socket", path]
        self.pid = self.procs.spawn(argv, name="sim", stderr=self.log)
        wait_for_socket(self.xenstored_path, self.procs, self.pid, "xenmux sim", timeout, self.log)
        self.ctl = SimControl(self.dir, timeout=300.0)
        try:
            self.changes = ChangeClient(self.changes_path, timeout=300.0)
        except ChangeError as exc:
            raise HostError(str(exc)) from None
        fd = os.open(self.shm_path, os.O_RDONLY)
        try:
            self._mm = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        self._view = memoryview(self._mm)

    def stamp(self) -> int:
        """The CLOCK_MONOTONIC ns of the latest change (one atomic 64-bit load)."""
        assert self._mm is not None
        return shm_change_stamp(self._view)

    def op(
        self, name: str, domid: int = 0, *, reason: str = "poweroff", zombie=False, silent=False
    ) -> Op:
        """One change: shutdown (reason), suspend (silent), resume, destroy (zombie), create."""
        assert self.changes is not None
        flags = (FLAG_ZOMBIE if zombie else 0) | (FLAG_SILENT if silent else 0)
        try:
            fired = self.changes.change(name, domid, parse_reason(reason), flags)
        except ChangeError as exc:
            raise HostError(f"sim change {name} {domid}: {exc}") from None
        return Op(
            self.stamp(),
            fired.release + fired.release_dom,
            fired.introduce,
            fired.events,
            fired.domid,
        )

    def guests(self) -> list[int]:
        assert self.ctl is not None
        return [row["domid"] for row in self.ctl.list() if row["domid"] != 0]

    def stop(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.changes is not None:
            self.changes.close()
            self.changes = None
        if self._mm is not None:
            self._view.release()
            self._mm.close()
            self._mm = None
        if self.pid is not None:
            self.procs.stop([self.pid])
            self.pid = None
