# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The simulated host's hot path in C: its shared-memory domain table read as the hypercall.

`shm_getinfolist` is `getinfolist(first, max)` over `DIR/domains.shm`, copied under the
table's seqlock with the memory order C readers use (the table's layout and its one
reading rule are in mux/sim/shm_layout.h, also included by the C stand-ins and the bench's
monitors). The layout's numbers are exported here for mux/sim/shm.py, so Python takes them
from the same declaration.

Support code of the simulator: the daemon's `sim` backend reads the table through it; the
product side never imports it.
"""

from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

include "fastcore/xm_helpers.pxi"
include "fastcore/records.pxi"


cdef extern from "sim/shm_layout.h":
    const char *XM_SHM_MAGIC
    enum:
        XM_SHM_MAGIC_SIZE
        XM_SHM_VERSION
        XM_SHM_HEADER_SIZE
        XM_SHM_OFF_MAGIC
        XM_SHM_OFF_VERSION
        XM_SHM_OFF_RECORD_SIZE
        XM_SHM_OFF_CAPACITY
        XM_SHM_OFF_COUNT
        XM_SHM_OFF_SEQLOCK
        XM_SHM_OFF_CHANGE_STAMP
        XM_SHM_OFF_CHANGES
        XM_SHM_OFF_VIRQS
        XM_SHM_OFF_RECORDS
    void xm_cpu_relax() noexcept nogil
    long xm_shm_try_copy(const unsigned char *shm, uint32_t capacity, uint32_t first,
                         uint32_t max, unsigned char *out) noexcept nogil
    uint64_t xm_shm_change_stamp(const unsigned char *shm) noexcept nogil


cdef extern from "<sched.h>":
    int sched_yield() noexcept nogil


# The layout of mux/sim/shm_layout.h (docs/internals.md).
SHM_MAGIC = XM_SHM_MAGIC[:XM_SHM_MAGIC_SIZE]
SHM_VERSION = XM_SHM_VERSION
SHM_HEADER_SIZE = XM_SHM_HEADER_SIZE
SHM_OFF_MAGIC = XM_SHM_OFF_MAGIC
SHM_OFF_VERSION = XM_SHM_OFF_VERSION
SHM_OFF_RECORD_SIZE = XM_SHM_OFF_RECORD_SIZE
SHM_OFF_CAPACITY = XM_SHM_OFF_CAPACITY
SHM_OFF_COUNT = XM_SHM_OFF_COUNT
SHM_OFF_SEQLOCK = XM_SHM_OFF_SEQLOCK
SHM_OFF_CHANGE_STAMP = XM_SHM_OFF_CHANGE_STAMP
SHM_OFF_CHANGES = XM_SHM_OFF_CHANGES
SHM_OFF_VIRQS = XM_SHM_OFF_VIRQS
SHM_OFF_RECORDS = XM_SHM_OFF_RECORDS

SHM_LOCK_TIMEOUT = 1.0  # seconds a reader waits for the sim's writer before giving up

cdef enum:
    # Busy-waits on a held seqlock before the reader starts yielding its CPU to the writer.
    _SPINS = 128


cdef inline double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + ts.tv_nsec * 1e-9


cdef long _copy(const unsigned char *shm, uint32_t cap, uint32_t first, uint32_t max,
                unsigned char *out, double timeout) noexcept nogil:
    """xm_shm_try_copy until it gets a consistent copy: spin a little (a change takes
    microseconds), then yield; -1 once the lock stayed busy for `timeout` seconds."""
    cdef unsigned long spins = 0
    cdef double deadline = 0.0
    cdef long n
    while True:
        n = xm_shm_try_copy(shm, cap, first, max, out)
        if n >= 0:
            return n
        spins += 1
        if spins < _SPINS:
            xm_cpu_relax()
            continue
        if deadline == 0.0:
            deadline = _monotonic() + timeout
        elif _monotonic() > deadline:
            return -1
        sched_yield()


def shm_getinfolist(const unsigned char[::1] shm, first, max, unsigned char[::1] out):
    """`getinfolist(first, max)` over the sim's shared-memory table (docs/internals.md).

    Copies, under the table's seqlock, the records with domid >= `first` (at most `max`)
    into `out` and returns how many. Raises ValueError on a table that is not ours or an
    `out` too small, TimeoutError if the writer holds the lock for over a second.
    """
    cdef const unsigned char *base
    cdef uint32_t cap, c_first, c_max
    cdef unsigned char *dst
    cdef long n
    cdef double timeout = SHM_LOCK_TIMEOUT
    base = _shm_header(shm)
    cap = xm_ld32(base + XM_SHM_OFF_CAPACITY)
    if cap > (shm.shape[0] - XM_SHM_HEADER_SIZE) // XM_RECORD_SIZE:
        raise ValueError(
            f"shared-memory table claims {cap} records but the buffer holds only "
            f"{(shm.shape[0] - XM_SHM_HEADER_SIZE) // XM_RECORD_SIZE}"
        )
    if first < 0 or max < 0:
        raise ValueError(f"first ({first}) and max ({max}) must not be negative")
    if max * XM_RECORD_SIZE > out.shape[0]:
        raise ValueError(
            f"out holds {out.shape[0]} bytes, {max} records need {max * XM_RECORD_SIZE}"
        )
    if max == 0 or first > 0xFFFF:  # beyond domid_t: no record can match
        return 0
    c_first = first
    c_max = max
    dst = &out[0]
    with nogil:
        n = _copy(base, cap, c_first, c_max, dst, timeout)
    if n < 0:
        raise TimeoutError(
            f"shared-memory table stayed locked for over {SHM_LOCK_TIMEOUT} s "
            "(is the simulated host's writer stuck?)"
        )
    return n


def shm_change_stamp(const unsigned char[::1] shm):
    """The CLOCK_MONOTONIC ns at which the sim applied its latest change."""
    return xm_shm_change_stamp(_shm_header(shm))


cdef const unsigned char *_shm_header(const unsigned char[::1] shm) except NULL:
    cdef const unsigned char *base
    if shm.shape[0] < XM_SHM_HEADER_SIZE:
        raise ValueError(
            f"shared-memory table too small: {shm.shape[0]} bytes, header is "
            f"{XM_SHM_HEADER_SIZE}"
        )
    base = &shm[0]
    if memcmp(base + XM_SHM_OFF_MAGIC, XM_SHM_MAGIC, XM_SHM_MAGIC_SIZE) != 0:
        raise ValueError(f"not a xen-watch-mux table: magic {bytes(shm[:XM_SHM_MAGIC_SIZE])!r}, "
                         f"expected {SHM_MAGIC!r}")
    if xm_ld32(base + XM_SHM_OFF_RECORD_SIZE) != XM_RECORD_SIZE:
        raise ValueError(f"shared-memory table has record size "
                         f"{xm_ld32(base + XM_SHM_OFF_RECORD_SIZE)}, expected {XM_RECORD_SIZE}")
    if (<size_t>base) & 7:
        raise ValueError("shared-memory table must be 8-byte aligned (map the whole file)")
    return base
