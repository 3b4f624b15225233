"""The simulated hypervisor's domain table in shared memory (`DIR/domains.shm`).

The layout is declared once, in mux/sim/shm_layout.h (described in docs/internals.md); its
numbers come from there through mux.sim._simfast. A header, then `capacity` records of
`xc_domaininfo_t` (see mux.records), the first `count` valid and sorted by domid. The host
is the only writer. Every change happens inside a seqlock section: the sequence number is
odd while the table is being written, and readers retry when it was odd or moved while
they copied.

From Xen 4.20 on the hypervisor also has a 64-bit unique id per domain incarnation; the
table keeps them beside the records (never inside: the record layout is the real one), one
u64 per domid, where the header's `unique ids` offset says, written in the same seqlock
section as the record they belong to. The header's Xen version says which release the sim
models, so a reader can tell whether dom0 could read those ids (4.21+) or not (4.20).

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
    SHM_OFF_UNIQUE_IDS,
    SHM_OFF_VERSION,
    SHM_OFF_VIRQS,
    SHM_OFF_XEN_VERSION,
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


# The first Xen release whose hypervisor draws unique ids, and the first that lets dom0 read
# them through a stable interface (XEN_DOMCTL_get_domain_state, libxenmanage).
UNIQUE_IDS_SINCE = (4, 20)
UNIQUE_IDS_READABLE_SINCE = (4, 21)
UNIQUE_ID_SIZE = 8


def xen_version_code(version: str) -> int:
    """The header's code of a Xen release "MAJOR.MINOR" (XM_SHM_XEN in shm_layout.h)."""
    major, minor = (int(x) for x in version.split("."))
    return major << 16 | minor


def file_size(capacity: int, unique_ids: bool = False) -> int:
    size = SHM_OFF_RECORDS + capacity * RECORD_SIZE
    return size + DOMID_FIRST_RESERVED * UNIQUE_ID_SIZE if unique_ids else size


class ShmTable:
    """The writer's side: create the file, then change records inside seqlock sections.

    ``begin()`` makes the sequence odd; ``end()`` stores the change stamp and counters and
    makes it even again. Record helpers may only be called between the two.
    """

    def __init__(self, path: str, capacity: int = CAPACITY, *, xen_version: str = "4.17") -> None:
        self.path = path
        self.capacity = capacity
        code = xen_version_code(xen_version)
        self.has_unique_ids = (code >> 16, code & 0xFFFF) >= UNIQUE_IDS_SINCE
        # Right behind the records (112 bytes each: 8-byte aligned).
        self._ids_at = file_size(capacity) if self.has_unique_ids else 0
        size = file_size(capacity, self.has_unique_ids)
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
        _U32.pack_into(self._mm, SHM_OFF_XEN_VERSION, code)
        _U64.pack_into(self._mm, SHM_OFF_UNIQUE_IDS, self._ids_at)

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

    def mapping(self) -> mmap.mmap:
        """The writable mapping, for the change thread (mux/sim/hostpath.py), which writes
        sections of its own under the host's lock."""
        return self._mm

    def unique_ids_offset(self) -> int:
        """The byte offset of the unique ids, 0 when this Xen has none."""
        return self._ids_at

    def resync(self) -> None:
        """Take the sequence, the record count and the change and VIRQ counters from the
        header, after the change thread's sections."""
        if self._open:
            raise RuntimeError("seqlock section open")
        self._count = _U32.unpack_from(self._mm, SHM_OFF_COUNT)[0]
        self._seq = _U64.unpack_from(self._mm, SHM_OFF_SEQLOCK)[0]
        self._changes = _U64.unpack_from(self._mm, SHM_OFF_CHANGES)[0]
        self._virqs = _U64.unpack_from(self._mm, SHM_OFF_VIRQS)[0]

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

    def set_unique_id(self, domid: int, unique_id: int) -> None:
        """The unique id of the incarnation `domid` now holds (0: none holds it). Only on a
        table of Xen 4.20+, in the section that writes (or removes) its record."""
        self._check()
        if not self.has_unique_ids:
            raise RuntimeError("this Xen release has no unique domain ids")
        _U64.pack_into(self._mm, self._ids_at + domid * UNIQUE_ID_SIZE, unique_id)

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


class UniqueIds:
    """The unique ids of a mapped table (any buffer of the whole file), read under its
    seqlock; `xen_version` is the (major, minor) the sim models."""

    def __init__(self, mm) -> None:
        code = _U32.unpack_from(mm, SHM_OFF_XEN_VERSION)[0]
        self.xen_version = (code >> 16, code & 0xFFFF)
        self._at = _U64.unpack_from(mm, SHM_OFF_UNIQUE_IDS)[0]
        if self._at and self._at + DOMID_FIRST_RESERVED * UNIQUE_ID_SIZE > len(mm):
            raise ValueError("the table's unique ids lie beyond its end")
        self._mm = mm

    @property
    def present(self) -> bool:
        """Whether the hypervisor modelled has them (Xen 4.20+)."""
        return self._at != 0

    @property
    def readable(self) -> bool:
        """Whether dom0 could read them on that release (4.21+: libxenmanage)."""
        return self.present and self.xen_version >= UNIQUE_IDS_READABLE_SINCE

    def get(self, domid: int, timeout: float = 2.0) -> int | None:
        """The unique id of `domid`'s incarnation, None when no domain holds the domid."""
        if not self._at:
            raise LookupError("this table has no unique ids (Xen before 4.20)")
        if not 0 <= domid < DOMID_FIRST_RESERVED:
            return None
        mm = self._mm
        at = self._at + domid * UNIQUE_ID_SIZE
        deadline = time.monotonic() + timeout
        while True:
            s1 = _U64.unpack_from(mm, SHM_OFF_SEQLOCK)[0]
            if not s1 & 1:
                value = _U64.unpack_from(mm, at)[0]
                if _U64.unpack_from(mm, SHM_OFF_SEQLOCK)[0] == s1:
                    return value or None
            if time.monotonic() > deadline:
                raise TimeoutError("the table's seqlock stayed busy")
            time.sleep(0 if not s1 & 1 else 0.00005)


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
        self.unique_ids = UniqueIds(self._mm)

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
