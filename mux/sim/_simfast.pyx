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

cimport cython
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


# -- the change path's thread (mux/sim/hostpath.h) ----------------------------------------

cdef extern from "sim/hostpath.h" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef unsigned long pthread_t
    ctypedef struct xh_writer:
        int fd
        int closed
        int dropped
        uint64_t id
        unsigned char *buf
        size_t start, end
    ctypedef struct xh_entry:
        uint8_t kind
        uint16_t domid
        uint32_t flags
        uint64_t value
    ctypedef struct xh_engine:
        pthread_mutex_t lock
        pthread_cond_t cond
        unsigned char *shm
        int64_t *flags
        int truth_fd
        char *truth_ids[65536]
        char *reasons[256]
        uint64_t rng
        int enabled
        int watch_depth
        long foreign
        long node_watches
        uint64_t ids_at
        uint16_t *order
        int32_t *pos
        uint8_t *latch
        long *n
        uint32_t watch_event
        size_t payload_max
        size_t hard_limit
        char release[64]
        xh_writer **writers
        size_t nwriters
        size_t nwatches
        void *watches
        xh_entry *journal
        size_t njournal
        int notified
        int dirty
        uint64_t c_release, c_release_dom, c_events, c_passes, c_virqs, c_changes
        pthread_t thread
        int running, stopping
        int wake_fd, notify_fd, listener
        int hand_state
        unsigned char hand_msg[4096]
        size_t hand_len
        unsigned char hand_reply[4096]
        size_t hand_reply_len
    enum:
        XH_SLOTS
        XH_MSG_MAX
        XH_J_STATE
        XH_J_ZOMBIE
        XH_J_FORGET
        XH_J_DROP
        XH_J_REMOVE
        XH_OP_SHUTDOWN
        XH_OP_SUSPEND
        XH_OP_RESUME
        XH_OP_DESTROY
        XH_OP_CREATE
        XH_OP_VIRQ
        XH_FLAG_ZOMBIE
        XH_FLAG_SILENT
        XH_SHUTDOWN_SUSPEND
        XH_DOMINF_RUNNING
        XH_DOMINF_BLOCKED
        PTHREAD_MUTEX_RECURSIVE
        EFD_NONBLOCK
        EFD_CLOEXEC
    ctypedef struct pthread_mutexattr_t:
        pass
    int pthread_mutexattr_init(pthread_mutexattr_t *)
    int pthread_mutexattr_settype(pthread_mutexattr_t *, int)
    int pthread_mutexattr_destroy(pthread_mutexattr_t *)
    int pthread_mutex_init(pthread_mutex_t *, const pthread_mutexattr_t *)
    int pthread_mutex_destroy(pthread_mutex_t *)
    int pthread_mutex_lock(pthread_mutex_t *)
    int pthread_mutex_unlock(pthread_mutex_t *)
    int pthread_cond_init(pthread_cond_t *, const void *)
    int pthread_cond_destroy(pthread_cond_t *)
    int pthread_cond_broadcast(pthread_cond_t *)
    int pthread_create(pthread_t *, const void *, void *(*)(void *) noexcept nogil, void *)
    int pthread_join(pthread_t, void **)
    void *xh_main(void *) noexcept nogil
    int eventfd(unsigned int, int)
    void xh_notify(int fd)
    size_t xh_write(xh_writer *w, const unsigned char *data, size_t n)
    size_t xh_flush(xh_writer *w)
    int xh_add_writer(xh_engine *e, xh_writer *w)
    void xh_remove_writer(xh_engine *e, xh_writer *w)
    int xh_watch_add(xh_engine *e, xh_writer *w, const char *node, size_t node_len,
                     const char *token, size_t token_len, int depth, uint64_t serial)
    void xh_watch_remove(xh_engine *e, uint64_t serial)
    void xh_unwatch_writer(xh_engine *e, xh_writer *w)
    void xh_free_watches(xh_engine *e)

from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, strdup, strncpy
from posix.unistd cimport close as c_close, read as c_read

# The ops the thread applies itself, and the journal's kinds, for mux/sim/hostpath.py.
HP_OPS = {"shutdown": XH_OP_SHUTDOWN, "suspend": XH_OP_SUSPEND, "resume": XH_OP_RESUME,
          "destroy": XH_OP_DESTROY, "create": XH_OP_CREATE, "virq": XH_OP_VIRQ}
HP_FLAGS = {"zombie": XH_FLAG_ZOMBIE, "silent": XH_FLAG_SILENT}
HP_NUMBERS = {"SHUTDOWN_SUSPEND": XH_SHUTDOWN_SUSPEND, "DOMINF_RUNNING": XH_DOMINF_RUNNING,
              "DOMINF_BLOCKED": XH_DOMINF_BLOCKED}
J_STATE = XH_J_STATE
J_ZOMBIE = XH_J_ZOMBIE
J_FORGET = XH_J_FORGET
J_DROP = XH_J_DROP
J_REMOVE = XH_J_REMOVE

cdef uint64_t _writer_ids = 0


# Not cleared by the cycle collector (the engine's drain callback leads back to the writers):
# the thread uses the domain pass's arrays, and a writer's close its engine, until they end.
@cython.no_gc_clear
cdef class HostEngine:
    """The C state the change thread and Python share (hostpath.h), and the thread.

    Used as a context manager by every Python operation on the host: it takes the shared
    lock (recursive) and, when the thread changed anything since, first calls `on_drain`,
    which brings Python's objects up to date from `take()`."""

    cdef xh_engine *e
    cdef unsigned char[::1] _shm
    cdef int64_t[::1] _flags
    cdef object _pass  # the DomainPass whose arrays the thread walks
    cdef bint _draining
    cdef public object on_drain

    def __cinit__(self):
        cdef pthread_mutexattr_t attr
        self.e = <xh_engine *>calloc(1, sizeof(xh_engine))
        if self.e == NULL:
            raise MemoryError()
        pthread_mutexattr_init(&attr)
        pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE)
        pthread_mutex_init(&self.e.lock, &attr)
        pthread_mutexattr_destroy(&attr)
        pthread_cond_init(&self.e.cond, NULL)
        self.e.truth_fd = -1
        self.e.listener = -1
        self.e.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        self.e.notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.e.wake_fd < 0 or self.e.notify_fd < 0:
            raise OSError("cannot create the change thread's eventfds")
        self.on_drain = None

    def __dealloc__(self):
        cdef int i
        if self.e == NULL:
            return
        self._stop()
        for i in range(XH_SLOTS):
            free(self.e.truth_ids[i])
        for i in range(256):
            free(self.e.reasons[i])
        xh_free_watches(self.e)
        free(self.e.writers)
        free(self.e.journal)
        c_close(self.e.wake_fd)
        c_close(self.e.notify_fd)
        pthread_cond_destroy(&self.e.cond)
        pthread_mutex_destroy(&self.e.lock)
        free(self.e)
        self.e = NULL

    def configure(self, DomainPass domain_pass, uint32_t watch_event, size_t payload_max,
                  size_t hard_limit, str release, bint watch_depth):
        """The xenstored side: its domain pass, the wire's numbers, its firing rules."""
        raw = release.encode()
        if len(raw) >= 64:
            raise ValueError(f"special watch name too long: {release!r}")
        with self:
            self._pass = domain_pass
            self.e.order = domain_pass.order
            self.e.pos = domain_pass.pos
            self.e.latch = domain_pass.latch
            self.e.n = <long *>&domain_pass.n
            self.e.watch_event = watch_event
            self.e.payload_max = payload_max
            self.e.hard_limit = hard_limit
            strncpy(self.e.release, raw, 63)
            self.e.watch_depth = watch_depth

    def bind_host(self, shm, flags, int truth_fd, reasons, uint64_t seed, uint64_t ids_at):
        """The hypervisor side: the table's mapping, the flags by domid, the truth log's fd,
        each valid shutdown reason's JSON name, the CPU-time generator's seed, the byte
        offset of the unique ids (0: none)."""
        cdef unsigned char[::1] shm_view = shm
        cdef int64_t[::1] flags_view = flags
        if flags_view.shape[0] < XH_SLOTS:
            raise ValueError(f"the flags table has {flags_view.shape[0]} slots, not {XH_SLOTS}")
        with self:
            self._shm = shm_view
            self._flags = flags_view
            self.e.shm = &shm_view[0]
            self.e.flags = &flags_view[0]
            self.e.truth_fd = truth_fd
            self.e.rng = seed
            self.e.ids_at = ids_at
            for code, name in reasons.items():
                free(self.e.reasons[code])
                self.e.reasons[code] = strdup(name.encode())

    def release_host(self):
        """Forget the table and the truth log (before they close)."""
        with self:
            self.e.enabled = 0
            self.e.shm = NULL
            self.e.flags = NULL
            self.e.truth_fd = -1
            self._shm = None
            self._flags = None

    @property
    def enabled(self):
        return bool(self.e.enabled)

    @enabled.setter
    def enabled(self, bint value):
        with self:
            if value and (self.e.shm == NULL or self.e.order == NULL):
                raise RuntimeError("the change thread needs a table and a domain pass")
            self.e.enabled = value

    def set_identity(self, uint16_t domid, str truth_id):
        """A domain's part of a truth-log line, or None once the domid is free."""
        with self:
            free(self.e.truth_ids[domid])
            self.e.truth_ids[domid] = NULL if truth_id is None else strdup(truth_id.encode())

    # the shared lock ---------------------------------------------------------------------

    def __enter__(self):
        with nogil:
            pthread_mutex_lock(&self.e.lock)
        if self.e.dirty and not self._draining and self.on_drain is not None:
            self._draining = True
            try:
                self.on_drain()
            except BaseException:
                pthread_mutex_unlock(&self.e.lock)
                raise
            finally:
                self._draining = False
        return self

    def __exit__(self, *exc):
        pthread_mutex_unlock(&self.e.lock)
        return False

    def take(self):
        """The journal since the last take (emptied) and the thread's counters, cumulative:
        (entries, (release, release_dom, events, passes, virqs, changes)). Call holding the
        lock."""
        cdef size_t i
        cdef xh_entry *j = self.e.journal
        entries = [(j[i].kind, j[i].domid, j[i].flags, j[i].value) for i in range(self.e.njournal)]
        self.e.njournal = 0
        self.e.dirty = 0
        self.e.notified = 0
        return entries, (self.e.c_release, self.e.c_release_dom, self.e.c_events,
                         self.e.c_passes, self.e.c_virqs, self.e.c_changes)

    def take_now(self):
        """`take()` under the lock, which is let go at once: for a drain the thread asked
        for, whose entries Python applies while the thread goes on."""
        with nogil:
            pthread_mutex_lock(&self.e.lock)
        try:
            return self.take()
        finally:
            pthread_mutex_unlock(&self.e.lock)

    # the special watches -----------------------------------------------------------------

    def watch_add(self, ConnWriter writer, bytes node, bytes token, int depth, uint64_t serial):
        with self:
            if writer is None:
                self.e.foreign += 1
            elif xh_watch_add(self.e, writer.w, node, len(node), token, len(token), depth,
                              serial) < 0:
                raise MemoryError()

    def watch_remove(self, ConnWriter writer, uint64_t serial):
        with self:
            if writer is None:
                self.e.foreign -= 1
            else:
                xh_watch_remove(self.e, serial)

    def count_node_watches(self, long delta):
        """Watches on nodes come and go: while there are any, a whole destroy (its nodes'
        removal may fire them) is Python's."""
        with self:
            self.e.node_watches += delta

    @property
    def special_watches(self):
        return self.e.nwatches

    # the thread --------------------------------------------------------------------------

    @property
    def notify_fd(self):
        """Readable when the thread hands Python a change or asks it to drain."""
        return self.e.notify_fd

    def clear_notify(self):
        cdef uint64_t v
        c_read(self.e.notify_fd, &v, sizeof(v))

    def handoff(self):
        """The change request the thread waits on Python for, or None. Call holding the lock."""
        if self.e.hand_state != 1:
            return None
        return bytes(self.e.hand_msg[:self.e.hand_len])

    def answer(self, bytes reply):
        """Python's reply to the change `handoff()` gave. Call holding the lock."""
        if self.e.hand_state != 1:
            raise RuntimeError("no change waits for an answer")
        if len(reply) > XH_MSG_MAX:
            reply = reply[:XH_MSG_MAX]
        memcpy(self.e.hand_reply, <const char *>reply, len(reply))
        self.e.hand_reply_len = len(reply)
        self.e.hand_state = 2
        pthread_cond_broadcast(&self.e.cond)

    @property
    def running(self):
        return bool(self.e.running)

    def start(self, int listener):
        """The thread takes the listening SOCK_SEQPACKET `listener` (the caller closes it after
        stop())."""
        if self.e.running:
            raise RuntimeError("the change thread runs already")
        self.e.listener = listener
        self.e.stopping = 0
        if pthread_create(&self.e.thread, NULL, xh_main, self.e) != 0:
            raise OSError("cannot start the change thread")
        self.e.running = 1

    def stop(self):
        """End the thread (its clients are closed) and wait for it."""
        self._stop()

    cdef void _stop(self) noexcept:
        if not self.e.running:
            return
        with nogil:
            pthread_mutex_lock(&self.e.lock)
            self.e.stopping = 1
            pthread_cond_broadcast(&self.e.cond)
            pthread_mutex_unlock(&self.e.lock)
            xh_notify(self.e.wake_fd)
            pthread_join(self.e.thread, NULL)
        self.e.running = 0
        self.e.listener = -1


@cython.no_gc_clear
cdef class ConnWriter:
    """All output of one xenstored connection, whoever writes it (Python's replies, the
    change thread's events): one queue under the engine's lock, written in order."""

    cdef xh_writer *w
    cdef HostEngine engine

    def __cinit__(self, HostEngine engine, int fd):
        global _writer_ids
        self.w = <xh_writer *>calloc(1, sizeof(xh_writer))
        if self.w == NULL:
            raise MemoryError()
        self.engine = engine
        _writer_ids += 1
        self.w.id = _writer_ids
        self.w.fd = fd
        with engine:
            if xh_add_writer(engine.e, self.w) < 0:
                raise MemoryError()

    def __dealloc__(self):
        if self.w == NULL:
            return
        self.close()
        free(self.w.buf)
        free(self.w)
        self.w = NULL

    @property
    def id(self):
        return self.w.id

    @property
    def dropped(self):
        """The thread found it over the hard limit (its connection is to be closed)."""
        return bool(self.w.dropped)

    def write(self, const unsigned char[::1] data):
        """Write or queue `data`; returns how many bytes stay queued."""
        cdef size_t left
        if data.shape[0] == 0:
            return self.w.end - self.w.start
        with self.engine:
            left = xh_write(self.w, &data[0], data.shape[0])
        return left

    def flush(self):
        """Write what is queued; returns how many bytes stay queued."""
        cdef size_t left
        with self.engine:
            left = xh_flush(self.w)
        return left

    @property
    def queued(self):
        return self.w.end - self.w.start

    def close(self):
        """No more output (the socket is about to close): out of the engine's lists."""
        if self.w.closed:
            return
        with nogil:
            pthread_mutex_lock(&self.engine.e.lock)
        self.w.closed = 1
        xh_remove_writer(self.engine.e, self.w)
        pthread_mutex_unlock(&self.engine.e.lock)
