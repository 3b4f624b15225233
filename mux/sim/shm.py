"""The simulated hypervisor's domain table in shared memory (`DIR/domains.shm`).

The layout is declared once, in mux/sim/shm_layout.h (described in docs/internals.md); its
numbers come from there through mux.sim._simfast. A header, then `capacity` records of
`xc_domaininfo_t` (see mux.records), the first `count` valid and sorted by domid. The host
is the only writer. Every change happens inside a seqlock section: the sequence number is
odd while the table is being written, and readers retry when it was odd or moved while
they copied.

The file keeps its inode and size for the whole life of the sim, so a reader may map it once.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from mux.records import DOMID_FIRST_RESERVED, RECORD_SIZE, DomainRecord, unpack_all
from mux.sim._simfast import (
    SHM_MAGIC,
    SHM_OFF_CAPACITY,
    SHM_OFF_CHANGE_STAMP,
    SHM_OFF_CHANGES,
    SHM_OFF_COUNT,
    SHM_OFF_MAGIC,
    SHM_OFF_RECORD_SIZE,
    SHM_OFF_RECORDS,
    SHM_OFF_SEQLOCK,
    SHM_OFF_VERSION,
    SHM_OFF_VIRQS,
    SHM_VERSION,
    shm_write_states,
)

SHM_NAME = "domains.shm"

# The directory of shm_layout.h, for the C programs that read the table (compile with -I).
LAYOUT_INCLUDE_DIR = Path(__file__).resolve().parent

# Every valid domid (0 .. DOMID_FIRST_RESERVED-1) fits, which is more than 32,768 + dom0.
CAPACITY = max(32768 + 1, DOMID_FIRST_RESERVED)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def file_size(capacity: int) -> int:
    return SHM_OFF_RECORDS + capacity * RECORD_SIZE


class ShmTable:
    """The writer's side: create the file, then change records inside seqlock sections.

    ``begin()`` makes the sequence odd; ``end()`` stores the change stamp and counters and
    makes it even again. Record helpers may only be called between the two.
    """

    def __init__(self, path: str, capacity: int = CAPACITY) -> None:
        self.path = path
        self.capacity = capacity
        size = file_size(capacity)
        # A table left behind by a killed sim is replaced, never reused: its readers would
        # otherwise see a half-initialised header.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._seq = 0
        self._count = 0
        self._changes = 0
        self._virqs = 0
        self._open = False
        self._mm[SHM_OFF_MAGIC : SHM_OFF_MAGIC + len(SHM_MAGIC)] = SHM_MAGIC
        _U32.pack_into(self._mm, SHM_OFF_VERSION, SHM_VERSION)
        _U32.pack_into(self._mm, SHM_OFF_RECORD_SIZE, RECORD_SIZE)
        _U32.pack_into(self._mm, SHM_OFF_CAPACITY, capacity)

    # seqlock ----------------------------------------------------------------------------

    def begin(self) -> None:
        if self._open:
            raise RuntimeError("seqlock section already open")
        self._open = True
        self._seq += 1
        _U64.pack_into(self._mm, SHM_OFF_SEQLOCK, self._seq)

    def end(self, *, changed: bool = True, virq: bool = False) -> int:
        """Close the section; returns the CLOCK_MONOTONIC stamp written (0 if unchanged)."""
        if not self._open:
            raise RuntimeError("no seqlock section open")
        stamp = 0
        _U32.pack_into(self._mm, SHM_OFF_COUNT, self._count)
        if changed:
            stamp = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            self._changes += 1
            _U64.pack_into(self._mm, SHM_OFF_CHANGE_STAMP, stamp)
            _U64.pack_into(self._mm, SHM_OFF_CHANGES, self._changes)
        if virq:
            self.count_virq()
        self._seq += 1
        _U64.pack_into(self._mm, SHM_OFF_SEQLOCK, self._seq)
        self._open = False
        return stamp

    def write_states(self, states: list[tuple[int, int, int]]) -> int:
        """A whole section in one C call (the per-change path of a lifecycle step): each
        (index, flags, cpu_time) sets the flags and CPU time of the record at index.
        Returns the stamp written."""
        if self._open:
            raise RuntimeError("seqlock section already open")
        stamp = shm_write_states(self._mm, self._seq, self._count, self._changes + 1, states)
        self._seq += 2
        self._changes += 1
        return stamp

    def count_virq(self) -> None:
        """Count one VIRQ_DOM_EXC (a counter readers may watch; not part of the records)."""
        self._virqs += 1
        _U64.pack_into(self._mm, SHM_OFF_VIRQS, self._virqs)

    # records (inside a section) ------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._count

    def _check(self) -> None:
        if not self._open:
            raise RuntimeError("table written outside a seqlock section")

    def put(self, index: int, record: DomainRecord) -> None:
        """Overwrite the record at `index` (< count)."""
        self._check()
        record.pack_into(self._mm, SHM_OFF_RECORDS + index * RECORD_SIZE)

    def insert(self, index: int, record: DomainRecord) -> None:
        """Insert a record at `index`, moving the ones behind it up by one."""
        self._check()
        if self._count >= self.capacity:
            raise OverflowError("the domain table is full")
        start = SHM_OFF_RECORDS + index * RECORD_SIZE
        tail = (self._count - index) * RECORD_SIZE
        if tail:
            self._mm.move(start + RECORD_SIZE, start, tail)
        record.pack_into(self._mm, start)
        self._count += 1

    def remove(self, index: int) -> None:
        """Remove the record at `index`, moving the ones behind it down by one."""
        self._check()
        start = SHM_OFF_RECORDS + index * RECORD_SIZE
        tail = (self._count - index - 1) * RECORD_SIZE
        if tail:
            self._mm.move(start, start + RECORD_SIZE, tail)
        self._count -= 1
        end = SHM_OFF_RECORDS + self._count * RECORD_SIZE
        self._mm[end : end + RECORD_SIZE] = bytes(RECORD_SIZE)

    def rewrite(self, records: list[DomainRecord]) -> None:
        """Replace the whole table (records already sorted by domid): one batch change."""
        self._check()
        if len(records) > self.capacity:
            raise OverflowError("the domain table is full")
        packed = b"".join(r.pack() for r in records)
        self._mm[SHM_OFF_RECORDS : SHM_OFF_RECORDS + len(packed)] = packed
        old_end = SHM_OFF_RECORDS + self._count * RECORD_SIZE
        new_end = SHM_OFF_RECORDS + len(packed)
        if old_end > new_end:
            self._mm[new_end:old_end] = bytes(old_end - new_end)
        self._count = len(records)

    def close(self, unlink: bool = True) -> None:
        try:
            self._mm.close()
        finally:
            if unlink:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass


# Readers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent copy of the table."""

    seq: int
    count: int
    records: bytes  # count * RECORD_SIZE bytes
    stamp: int  # CLOCK_MONOTONIC ns of the latest change
    changes: int
    virqs: int

    def domains(self) -> list[DomainRecord]:
        return unpack_all(self.records, self.count)


class ShmReader:
    """Map a table read-only and copy it out under the seqlock (tests and tools)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._mm = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        magic = self._mm[SHM_OFF_MAGIC : SHM_OFF_MAGIC + len(SHM_MAGIC)]
        version = _U32.unpack_from(self._mm, SHM_OFF_VERSION)[0]
        rsize = _U32.unpack_from(self._mm, SHM_OFF_RECORD_SIZE)[0]
        capacity = _U32.unpack_from(self._mm, SHM_OFF_CAPACITY)[0]
        if magic != SHM_MAGIC or version != SHM_VERSION or rsize != RECORD_SIZE:
            self._mm.close()
            raise ValueError(f"{path} is not a version {SHM_VERSION} domain table")
        if len(self._mm) < file_size(capacity):
            self._mm.close()
            raise ValueError(f"{path} is shorter than its capacity of {capacity} records")
        self.capacity = capacity

    def snapshot(self, timeout: float = 2.0) -> Snapshot:
        mm = self._mm
        deadline = time.monotonic() + timeout
        while True:
            s1 = _U64.unpack_from(mm, SHM_OFF_SEQLOCK)[0]
            if not s1 & 1:
                count = min(_U32.unpack_from(mm, SHM_OFF_COUNT)[0], self.capacity)
                records = mm[SHM_OFF_RECORDS : SHM_OFF_RECORDS + count * RECORD_SIZE]
                stamp = _U64.unpack_from(mm, SHM_OFF_CHANGE_STAMP)[0]
                changes = _U64.unpack_from(mm, SHM_OFF_CHANGES)[0]
                virqs = _U64.unpack_from(mm, SHM_OFF_VIRQS)[0]
                if _U64.unpack_from(mm, SHM_OFF_SEQLOCK)[0] == s1:
                    return Snapshot(s1, count, records, stamp, changes, virqs)
            if time.monotonic() > deadline:
                raise TimeoutError("the table's seqlock stayed busy")
            time.sleep(0 if not s1 & 1 else 0.00005)

    def close(self) -> None:
        self._mm.close()

    def __enter__(self) -> ShmReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_table(path: str) -> Snapshot:
    """A consistent copy of the table at `path`."""
    with ShmReader(path) as reader:
        return reader.snapshot()
