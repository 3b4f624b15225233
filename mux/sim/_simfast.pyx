# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The simulated host's hot path in C: its shared-memory domain table read as the hypercall,
and its xenstored's domain pass on VIRQ_DOM_EXC.

`shm_getinfolist` is `getinfolist(first, max)` over `DIR/domains.shm`, copied under the
table's seqlock with the memory order C readers use (the table's layout and its one
reading rule are in mux/sim/shm_layout.h, also included by the C stand-ins and the bench's
monitors). The layout's numbers are exported here for mux/sim/shm.py, so Python takes them
from the same declaration.

`DomainPass` is the sim xenstored's introduced-domain list (mux/sim/xenstored/domains.py):
the order C xenstored keeps it in and each domain's shutdown latch, and the pass over all of
them that C xenstored runs on every VIRQ_DOM_EXC, in C: a VIRQ costs Python only the domains
that changed.

Support code of the simulator: the daemon's `sim` backend reads the table through it; the
product side never imports it.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memmove, memset
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
        XM_SHM_OFF_XEN_VERSION
        XM_SHM_OFF_UNIQUE_IDS
        XM_SHM_OFF_RECORDS
    void xm_cpu_relax() noexcept nogil
    long xm_shm_try_copy(const unsigned char *shm, uint32_t capacity, uint32_t first,
                         uint32_t max, unsigned char *out) noexcept nogil
    uint64_t xm_shm_change_stamp(const unsigned char *shm) noexcept nogil
    void xm_shm_write_begin(unsigned char *shm, uint64_t odd_seq) noexcept nogil
    void xm_shm_write_end(unsigned char *shm, uint64_t even_seq, uint32_t count, uint64_t stamp,
                          uint64_t changes) noexcept nogil
    void xm_shm_put_state(unsigned char *shm, uint32_t index, uint32_t flags,
                          uint64_t cpu_time) noexcept nogil


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
SHM_OFF_XEN_VERSION = XM_SHM_OFF_XEN_VERSION
SHM_OFF_UNIQUE_IDS = XM_SHM_OFF_UNIQUE_IDS
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


def shm_write_states(unsigned char[::1] shm, uint64_t seq, uint32_t count, uint64_t changes,
                     states):
    """One whole seqlock section of the sim's writer, in C: for each (index, flags,
    cpu_time) of `states` the record at `index` (< `count`) gets those flags and that CPU
    time (a lifecycle change); then the header's count, stamp and `changes`. `seq` is the
    even sequence number before; the section leaves it at seq + 2. Returns the stamp (the
    CLOCK_MONOTONIC ns of the change)."""
    cdef unsigned char *base
    cdef uint32_t cap
    cdef Py_ssize_t i, n = len(states)
    cdef uint32_t *idx
    cdef uint32_t *flg
    cdef uint64_t *cpu
    cdef timespec ts
    cdef uint64_t stamp
    base = <unsigned char *>_shm_header(shm)
    cap = xm_ld32(base + XM_SHM_OFF_CAPACITY)
    if seq & 1:
        raise ValueError(f"a section opens from an even sequence number, not {seq}")
    if count > cap or cap > (shm.shape[0] - XM_SHM_HEADER_SIZE) // XM_RECORD_SIZE:
        raise ValueError(f"{count} records do not fit the table ({cap} records)")
    idx = <uint32_t *>PyMem_Malloc((n + 1) * sizeof(uint32_t))
    flg = <uint32_t *>PyMem_Malloc((n + 1) * sizeof(uint32_t))
    cpu = <uint64_t *>PyMem_Malloc((n + 1) * sizeof(uint64_t))
    try:
        if idx == NULL or flg == NULL or cpu == NULL:
            raise MemoryError()
        for i in range(n):  # every state checked before the section opens
            index, flags, cpu_time = states[i]
            if not 0 <= index < count:
                raise IndexError(f"record {index} is not in the table ({count} records)")
            idx[i] = index
            flg[i] = flags
            cpu[i] = cpu_time
        with nogil:
            xm_shm_write_begin(base, seq + 1)
            for i in range(n):
                xm_shm_put_state(base, idx[i], flg[i], cpu[i])
            clock_gettime(CLOCK_MONOTONIC, &ts)
            stamp = <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec
            xm_shm_write_end(base, seq + 2, count, stamp, changes)
        return stamp
    finally:
        PyMem_Free(idx)
        PyMem_Free(flg)
        PyMem_Free(cpu)


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


# -- the sim xenstored's domain pass ----------------------------------------------------------

# Every domid_t: the flags table the pass reads (Hypervisor.flags_table) has one slot each.
cdef enum:
    _SLOTS = 65536
DOMID_SLOTS = _SLOTS


cdef class DomainPass:
    """The introduced domains in the order C xenstored keeps them (oldest first here; the
    pass walks newest first, as C adds to the head of its list), with their shutdown
    latches; `run` is check_domains() over a flags table indexed by domid.

    Only order and latches live here: what a domain's introduction or removal fires stays
    with the caller (mux/sim/xenstored/domains.py), which `run` tells what changed.
    """

    cdef uint16_t *order  # introduced domids, oldest first
    cdef int32_t *pos  # domid -> its index in order, or -1
    cdef uint8_t *latch  # domid -> the shutdown latch
    cdef Py_ssize_t n

    def __cinit__(self):
        self.order = <uint16_t *>PyMem_Malloc(_SLOTS * sizeof(uint16_t))
        self.pos = <int32_t *>PyMem_Malloc(_SLOTS * sizeof(int32_t))
        self.latch = <uint8_t *>PyMem_Malloc(_SLOTS)
        if self.order == NULL or self.pos == NULL or self.latch == NULL:
            raise MemoryError()
        memset(self.pos, 0xFF, _SLOTS * sizeof(int32_t))
        memset(self.latch, 0, _SLOTS)
        self.n = 0

    def __dealloc__(self):
        PyMem_Free(self.order)
        PyMem_Free(self.pos)
        PyMem_Free(self.latch)

    def __len__(self):
        return self.n

    cdef inline uint16_t _slot(self, domid) except? 0:
        if not 0 <= domid < _SLOTS:
            raise ValueError(f"not a domid: {domid}")
        return <uint16_t>domid

    def __contains__(self, domid):
        return isinstance(domid, int) and 0 <= domid < _SLOTS and self.pos[<uint16_t>domid] >= 0

    def add(self, domid):
        """Introduce `domid` (newest); False if it already was."""
        cdef uint16_t d = self._slot(domid)
        if self.pos[d] >= 0:
            return False
        self.order[self.n] = d
        self.pos[d] = <int32_t>self.n
        self.latch[d] = 0
        self.n += 1
        return True

    def remove(self, domid):
        """Forget `domid`; False if it was not introduced."""
        cdef uint16_t d = self._slot(domid)
        cdef Py_ssize_t i = self.pos[d], j
        if i < 0:
            return False
        memmove(&self.order[i], &self.order[i + 1], (self.n - i - 1) * sizeof(uint16_t))
        self.n -= 1
        for j in range(i, self.n):
            self.pos[self.order[j]] = <int32_t>j
        self.pos[d] = -1
        self.latch[d] = 0
        return True

    def latched(self, domid):
        cdef uint16_t d = self._slot(domid)
        return self.pos[d] >= 0 and self.latch[d] != 0

    def set_latched(self, domid, bint value):
        cdef uint16_t d = self._slot(domid)
        if self.pos[d] < 0:
            raise KeyError(domid)
        self.latch[d] = value

    def run(self, const int64_t[::1] flags):
        """One check_domains() pass over every introduced domain, newest first, reading each
        one's XEN_DOMINF_* flags from `flags[domid]` (negative: the domid is free).

        A domain newly shut down is latched here. Returns (steps, notify): steps are, in
        the pass's order, (domid, False) for each newly latched domain and (domid, True) for
        each dying or vanished one the caller must destroy (dom0 never is); notify says
        whether @releaseDomain fires at the end of the pass (a latch sets it, a destroy,
        which fires the watch itself, clears it)."""
        cdef Py_ssize_t i
        cdef uint16_t d
        cdef int64_t f
        cdef bint notify = False
        if flags.shape[0] < _SLOTS:
            raise ValueError(f"the flags table has {flags.shape[0]} slots, not {_SLOTS}")
        steps = []
        i = self.n - 1
        while i >= 0:
            d = self.order[i]
            f = flags[d]
            i -= 1
            if f >= 0:
                if f & XM_DOMINF_SHUTDOWN and not self.latch[d]:
                    self.latch[d] = 1
                    steps.append((d, False))
                    notify = True
                if not f & XM_DOMINF_DYING:
                    continue
            if d == 0:
                continue
            steps.append((d, True))
            notify = False
        return steps, notify
