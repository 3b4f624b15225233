"""The `sim` backend: the simulated host's shared-memory table, read like the hypercall."""

from __future__ import annotations

import errno
import mmap
import os

from mux import _fast
from mux.hypervisor.base import HypervisorError

SHM_NAME = "domains.shm"
_HEADER = 128
_OFF_COUNT = 20


class SimBackend:
    name = "sim"

    def __init__(self, sim_dir: str) -> None:
        path = os.path.join(sim_dir, SHM_NAME)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise HypervisorError(
                errno.ENOENT,
                f"no simulated host at {sim_dir}: {path} is missing "
                f"(start one with `xenmux sim --dir {sim_dir} --domains N`)",
            ) from None
        try:
            self._mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._shm = memoryview(self._mm)
        self.path = path

    def getinfolist(self, first: int, max_domains: int, out: bytearray, offset: int = 0) -> int:
        view = memoryview(out)[offset:]
        try:
            return _fast.shm_getinfolist(self._shm, first, max_domains, view)
        finally:
            view.release()

    def domain_count_hint(self) -> int:
        return int.from_bytes(self._shm[_OFF_COUNT : _OFF_COUNT + 4], "little")

    def change_stamp(self) -> int:
        """CLOCK_MONOTONIC ns of the sim's latest change (for latency measurements)."""
        return _fast.shm_change_stamp(self._shm)

    def close(self) -> None:
        self._shm.release()
        self._mm.close()
