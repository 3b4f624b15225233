"""A domain table written by hand (tests): the stand-ins serve what it holds.

It is the simulated host's own table (mux.sim.shm, same file, same writer), driven one
domain at a time: every change republishes the whole table in one seqlock section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from mux import records
from mux.records import DomainRecord
from mux.sim import shm

_REASON_BITS = records.DOMINF_SHUTDOWNMASK << records.DOMINF_SHUTDOWNSHIFT


class ShmTable:
    """A `domains.shm` at `path` with room for `capacity` domains, empty until set."""

    def __init__(self, path: Path | str, capacity: int = 256) -> None:
        self.path = Path(path)
        self.capacity = capacity
        self._table = shm.ShmTable(str(self.path), capacity)
        self._domains: dict[int, DomainRecord] = {}

    def _publish(self) -> None:
        doms = [self._domains[d] for d in sorted(self._domains)]
        if len(doms) > self.capacity:
            raise ValueError(f"{len(doms)} domains do not fit a table of {self.capacity}")
        self._table.begin()
        try:
            self._table.rewrite(doms)
        finally:
            self._table.end()

    def set_domains(self, recs: Iterable[DomainRecord]) -> None:
        self._domains = {r.domid: r for r in recs}
        self._publish()

    def put(self, rec: DomainRecord) -> None:
        self._domains[rec.domid] = rec
        self._publish()

    def remove(self, domid: int) -> None:
        del self._domains[domid]
        self._publish()

    def get(self, domid: int) -> DomainRecord:
        return self._domains[domid]

    def update(self, domid: int, **changes) -> DomainRecord:
        rec = dataclasses.replace(self._domains[domid], **changes)
        self.put(rec)
        return rec

    # -- the lifecycle, as Xen sets the flags
    def shutdown(self, domid: int, reason: int) -> None:
        flags = self._domains[domid].flags & ~_REASON_BITS
        flags |= records.DOMINF_SHUTDOWN | (reason << records.DOMINF_SHUTDOWNSHIFT)
        self.update(domid, flags=flags)

    def resume(self, domid: int) -> None:
        """domain_resume(): the shutdown flag clears and the code goes back to 255."""
        flags = self._domains[domid].flags & ~_REASON_BITS & ~records.DOMINF_SHUTDOWN
        self.update(domid, flags=flags | (records.SHUTDOWN_NONE << records.DOMINF_SHUTDOWNSHIFT))

    def dying(self, domid: int) -> None:
        self.update(domid, flags=self._domains[domid].flags | records.DOMINF_DYING)

    def count_virq(self) -> None:
        self._table.count_virq()

    def close(self) -> None:
        """Unmap and remove the file (gone already is fine)."""
        self._table.close(unlink=True)


def guest(domid: int, **kw) -> DomainRecord:
    """A running guest as the hypervisor reports it (reason 255, a UUID from its domid)."""
    handle = kw.pop("handle", bytes(12) + domid.to_bytes(4, "big"))
    return DomainRecord(
        domid, records.make_flags(), handle=handle, cpu_time=kw.pop("cpu_time", 1), **kw
    )


def dom0() -> DomainRecord:
    return DomainRecord(0, records.make_flags(base=records.DOMINF_RUNNING), cpu_time=1)
