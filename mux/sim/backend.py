"""The `sim` backend: the simulated host's shared-memory table, read like the hypercall.

This is the one place where the daemon meets the simulator. It lives on the sim's side and
the daemon finds it by name, through the `xenmux.backends` entry point (pyproject.toml), so
no daemon module imports the simulator.

Unique ids: a sim of Xen 4.20+ keeps one per incarnation beside its records (mux/sim/shm.py).
On 4.21+ dom0 reads them through XEN_DOMCTL_get_domain_state (libxenmanage), and this
backend offers them (`unique_ids`, `unique_id(domid)`) as the xenctrl backend does through
the library. On 4.20 the hypervisor has them but no stable interface hands them to dom0
(the domctl came with 4.21), so this backend offers none there, as on 4.17.
"""

from __future__ import annotations

import errno
import mmap
import os

from mux.hypervisor.base import Capabilities, ChangedCallback, HypervisorError
from mux.records import RECORD_SIZE
from mux.sim import _simfast
from mux.sim.paths import ARMED, sim_paths
from mux.sim.shm import UniqueIds

_OFF_COUNT = _simfast.SHM_OFF_COUNT
_SLACK = 256  # records of room the scan buffer keeps beyond the table's count


class ArmedFailures:
    """The calls this backend must fail: one for each failure armed after it opened (so a
    daemon started later does not pay for failures meant for an earlier one)."""

    def __init__(self, path: str) -> None:
        self._mm: mmap.mmap | None = None
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return  # a sim that arms none
        try:
            self._mm = mmap.mmap(fd, ARMED.size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._taken = self.armed()

    def armed(self) -> int:
        return ARMED.unpack_from(self._mm, 0)[0] if self._mm is not None else 0

    def take(self) -> bool:
        """True when this call is to fail."""
        if self._mm is None or self.armed() <= self._taken:
            return False
        self._taken += 1
        return True

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None


class SimBackend:
    name = "sim"
    # The whole table is copied under one seqlock read: a consistent full scan with no
    # paging, and an exact lookup of one domid (a binary search of the sorted table).
    capabilities = Capabilities(full_scan=True, one_domain=True, changed_feed=False)

    def __init__(self, sim_dir: str | None = None, **_options: object) -> None:
        if not sim_dir:
            raise ValueError("--backend sim needs --sim-dir DIR (the directory of `xenmux sim`)")
        paths = sim_paths(sim_dir)
        try:
            fd = os.open(paths.shm, os.O_RDONLY)
        except FileNotFoundError:
            raise HypervisorError(
                errno.ENOENT,
                f"no simulated host at {sim_dir}: {paths.shm} is missing "
                f"(start one with `xenmux sim --dir {sim_dir} --domains N`)",
            ) from None
        try:
            self._mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._shm = memoryview(self._mm)
        try:
            ids = UniqueIds(self._mm)
        except ValueError as exc:
            self._shm.release()
            self._mm.close()
            raise HypervisorError(errno.EINVAL, f"{paths.shm}: {exc}") from None
        self._ids = ids if ids.readable else None
        if self._ids is not None:
            self.capabilities = Capabilities(
                full_scan=True, one_domain=True, changed_feed=False, unique_ids=True
            )
        self.path = paths.shm
        self.xenstore_path: str | None = paths.xenstored
        self.state_dir: str | None = paths.state
        self._buf = bytearray((self.domain_count_hint() + _SLACK) * RECORD_SIZE)
        self._one = bytearray(RECORD_SIZE)
        self._failures = ArmedFailures(paths.hypercall_faults)

    def getinfolist(self, first: int, max_domains: int, out: bytearray, offset: int = 0) -> int:
        if self._failures.take():
            raise HypervisorError(
                errno.EAGAIN,
                "domain-info call failed (EAGAIN, armed by `sim-ctl fail-hypercalls`)",
                retryable=True,
            )
        view = memoryview(out)[offset:]
        try:
            return _simfast.shm_getinfolist(self._shm, first, max_domains, view)
        finally:
            view.release()

    def scan_all(self) -> tuple[bytearray, int]:
        while True:
            room = len(self._buf) // RECORD_SIZE
            n = self.getinfolist(0, room, self._buf)
            if n < room:
                return self._buf, n
            # The table filled the buffer: it may hold more. Grow and copy again, so that
            # the scan stays one consistent read.
            self._buf = bytearray((n + _SLACK) * RECORD_SIZE * 2)

    def query_one(self, domid: int) -> tuple[bytearray, int]:
        n = self.getinfolist(domid, 1, self._one)
        if n and int.from_bytes(self._one[0:2], "little") != domid:
            n = 0  # the table is sorted: the next domid is not this one
        return self._one, n

    def unique_id(self, domid: int) -> int | None:
        """The unique id of `domid`'s incarnation (XEN_DOMCTL_get_domain_state on a 4.21+
        host), None when no domain holds it. Only with `unique_ids`."""
        if self._ids is None:
            raise NotImplementedError("this simulated Xen gives dom0 no unique domain ids")
        try:
            return self._ids.get(domid)
        except TimeoutError as exc:
            raise HypervisorError(errno.EAGAIN, str(exc), retryable=True) from None

    def watch_changed(self, callback: ChangedCallback) -> None:
        raise NotImplementedError("the simulated host has no changed-domain feed")

    def domain_count_hint(self) -> int:
        return int.from_bytes(self._shm[_OFF_COUNT : _OFF_COUNT + 4], "little")

    def change_stamp(self) -> int:
        """CLOCK_MONOTONIC ns of the sim's latest change (for latency measurements)."""
        return _simfast.shm_change_stamp(self._shm)

    def close(self) -> None:
        self._failures.close()
        self._shm.release()
        self._mm.close()
