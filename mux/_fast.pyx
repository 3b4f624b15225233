# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The hot path of xen-watch-mux: the scanner's domain table and its diff, in C.

`DomainTable.diff` walks one batch of `xc_domaininfo_t` records once and returns the events
of the event model (DESIGN.md); for an unchanged domain it touches only that domain's slot
of a C array indexed by domid and allocates nothing. `mux/reference.py` is the pure-Python
twin and the specification: same API, same events, same frame bytes.

Also here, because C readers must see the same memory order: `shm_getinfolist`, the
simulated host's `getinfolist` over its shared-memory table, copied under the seqlock.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc, qsort
from libc.string cimport memcmp, memcpy, memset

import time as _time
from json.encoder import encode_basestring_ascii as _json_string

from mux import records as _records

cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    #include <sched.h>
    #include <time.h>

    static inline uint16_t xm_ld16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
    static inline uint32_t xm_ld32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline uint64_t xm_ld64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

    static inline void xm_cpu_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }

    /* The canonical 8-4-4-4-12 text of a 16-byte handle, lowercase, 36 chars, no NUL. */
    static inline void xm_uuid_format(const unsigned char *h, char *out) {
        static const char hex[] = "0123456789abcdef";
        int i, o = 0;
        for (i = 0; i < 16; i++) {
            if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
            out[o++] = hex[h[i] >> 4];
            out[o++] = hex[h[i] & 15];
        }
    }

    static int xm_cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return (x > y) - (x < y);
    }

    /* The plain C loop the diff is measured against: read what the diff reads (domid,
       flags, cpu_time, handle) from every record and fold it into a sum. */
    static uint64_t xm_floor_scan(const unsigned char *p, size_t count) {
        uint64_t acc = 0;
        size_t i;
        for (i = 0; i < count; i++, p += 112)
            acc += xm_ld16(p) ^ xm_ld32(p + 4) ^ xm_ld64(p + 56) ^ xm_ld64(p + 76) ^ xm_ld64(p + 84);
        return acc;
    }

    static double xm_monotonic(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    }

    /* getinfolist(first, max) over the sim's shared-memory table, under its seqlock:
       read seq with acquire (retry while odd), copy, fence, re-read seq, retry if it moved.
       Returns the number of records copied, or -1 if the lock stayed busy for `timeout` s. */
    static long xm_shm_copy(const unsigned char *shm, uint32_t cap, uint32_t first,
                            uint32_t max, unsigned char *out, double timeout) {
        const unsigned char *recs = shm + 128;
        const uint64_t *seqp = (const uint64_t *)(shm + 24);
        const uint32_t *countp = (const uint32_t *)(shm + 20);
        unsigned long spins = 0;
        double deadline = 0.0;
        for (;;) {
            uint64_t s1 = __atomic_load_n(seqp, __ATOMIC_ACQUIRE);
            if (!(s1 & 1)) {
                uint32_t count = __atomic_load_n(countp, __ATOMIC_RELAXED);
                uint32_t lo = 0, hi, n;
                if (count > cap) count = cap;
                hi = count;
                while (lo < hi) {  /* first record with domid >= first */
                    uint32_t mid = lo + (hi - lo) / 2;
                    if (xm_ld16(recs + (size_t)mid * 112) < first) lo = mid + 1; else hi = mid;
                }
                n = count - lo;
                if (n > max) n = max;
                memcpy(out, recs + (size_t)lo * 112, (size_t)n * 112);
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                if (__atomic_load_n(seqp, __ATOMIC_RELAXED) == s1) return (long)n;
            }
            if (++spins < 128) { xm_cpu_relax(); continue; }
            if (deadline == 0.0) deadline = xm_monotonic() + timeout;
            else if (xm_monotonic() > deadline) return -1;
            sched_yield();
        }
    }

    static inline uint64_t xm_load_acquire_u64(const unsigned char *p) {
        return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE);
    }
    """
    uint16_t xm_ld16(const unsigned char *p) noexcept nogil
    uint32_t xm_ld32(const unsigned char *p) noexcept nogil
    uint64_t xm_ld64(const unsigned char *p) noexcept nogil
    void xm_uuid_format(const unsigned char *h, char *out) noexcept nogil
    int xm_cmp_u64(const void *a, const void *b) noexcept nogil
    uint64_t xm_floor_scan(const unsigned char *p, size_t count) noexcept nogil
    long xm_shm_copy(const unsigned char *shm, uint32_t cap, uint32_t first, uint32_t max,
                     unsigned char *out, double timeout) noexcept nogil
    uint64_t xm_load_acquire_u64(const unsigned char *p) noexcept nogil


# The C numbers in _fast.pxd must be those of records.py (and of Xen).
for _name, _ours in (
    ("RECORD_SIZE", XC_RECORD_SIZE),
    ("OFF_DOMAIN", XC_OFF_DOMAIN),
    ("OFF_FLAGS", XC_OFF_FLAGS),
    ("OFF_CPU_TIME", XC_OFF_CPU_TIME),
    ("OFF_HANDLE", XC_OFF_HANDLE),
    ("HANDLE_SIZE", 16),
    ("DOMINF_DYING", XEN_DOMINF_dying),
    ("DOMINF_SHUTDOWN", XEN_DOMINF_shutdown),
    ("DOMINF_SHUTDOWNSHIFT", XEN_DOMINF_shutdownshift),
    ("DOMINF_SHUTDOWNMASK", XEN_DOMINF_shutdownmask),
    ("SHUTDOWN_NONE", SHUTDOWN_CODE_NONE),
    ("DOMID_FIRST_RESERVED", DOMID_FIRST_RESERVED),
):
    if getattr(_records, _name) != _ours:
        raise ImportError(f"mux._fast was built with {_name}={_ours}, records.py says "
                          f"{getattr(_records, _name)}: rebuild the extension")

SHM_MAGIC = b"XMUXSHM1"
SHM_VERSION = 1
SHM_LOCK_TIMEOUT = 1.0  # seconds a reader waits for the sim's writer before giving up

_KINDS = ("new", "shutdown", "resumed", "death", "released")
_KIND_CODES = {k: i for i, k in enumerate(_KINDS)}
_STATES = (None, "running", "shutdown", "dead")
# Indexed by reason code: the name (None for 255 and codes Xen does not define) and the
# piece of frame that carries it.
_REASON_NAMES = tuple(_records.reason_name(code) for code in range(256))
_REASON_PIECES = tuple(
    b"" if n is None else (', "reason": "%s"' % n).encode("ascii") for n in _REASON_NAMES
)
cdef const char *_KIND_C[5]
_KIND_C[:] = [b"new", b"shutdown", b"resumed", b"death", b"released"]


cdef inline str _uuid_text(const unsigned char *handle):
    cdef char text[36]
    xm_uuid_format(handle, text)
    return text[:36].decode("ascii")


cdef inline const unsigned char *_data(const unsigned char[::1] buf) noexcept:
    return &buf[0] if buf.shape[0] > 0 else NULL


cdef inline int _check_count(Py_ssize_t size, Py_ssize_t count) except -1:
    if count < 0:
        raise ValueError(f"corrupt batch: negative record count {count}")
    if count > size // XC_RECORD_SIZE:
        raise ValueError(
            f"corrupt batch: count {count} needs {count * XC_RECORD_SIZE} bytes "
            f"but the buffer holds {size} ({size // XC_RECORD_SIZE} records)"
        )
    return 0


cdef object _reserved_domid(Py_ssize_t i, unsigned int domid):
    return ValueError(
        f"corrupt batch: record {i} has domid {domid} "
        f"(>= DOMID_FIRST_RESERVED {DOMID_FIRST_RESERVED:#x})"
    )


cdef object _duplicate_domid(Py_ssize_t i, unsigned int domid):
    return ValueError(f"corrupt batch: record {i} repeats domid {domid}")


cdef class Event:
    """One change of one domain incarnation. `frame()` is its JSON line, encoded once."""

    def __init__(self, seq, kind, domid, uuid, reason, time, name=None):
        import uuid as _uuid_mod

        if kind not in _KIND_CODES:
            raise ValueError(f"unknown event kind {kind!r}")
        self.seq = seq
        self._kind = _KIND_CODES[kind]
        self.domid = domid
        cdef bytes handle = _uuid_mod.UUID(uuid).bytes
        memcpy(self._handle, <const char *>handle, 16)
        self._reason = SHUTDOWN_CODE_NONE if reason is None else _records.REASON_CODES[reason]
        self.time = time
        self.name = name

    @property
    def kind(self):
        return _KINDS[self._kind]

    @property
    def uuid(self):
        return _uuid_text(self._handle)

    @property
    def reason(self):
        return _REASON_NAMES[self._reason]

    @property
    def name(self):
        return self._name

    @name.setter
    def name(self, value):
        if self._frame is not None:
            raise AttributeError("Event.name cannot change once frame() has been taken")
        if value is not None and not isinstance(value, str):
            raise TypeError("Event.name must be a str or None")
        self._name = value

    def to_dict(self):
        """The frame's fields as a dict (same keys, same order; `time` unrounded)."""
        d = {"seq": self.seq, "event": _KINDS[self._kind], "domid": self.domid,
             "uuid": _uuid_text(self._handle)}
        if _REASON_NAMES[self._reason] is not None:
            d["reason"] = _REASON_NAMES[self._reason]
        if self._name is not None:
            d["name"] = self._name
        d["time"] = self.time
        return d

    def frame(self):
        """The event's JSON line (ending in a newline), encoded on first use and cached."""
        if self._frame is None:
            self._frame = self._encode()
        return self._frame

    cdef bytes _encode(self):
        cdef char head[128]
        cdef char tail[400]
        cdef int nhead, ntail
        cdef bytes reason = <bytes>_REASON_PIECES[self._reason]
        cdef bytes name = b""
        cdef Py_ssize_t nreason, nname, at
        cdef bytes out
        cdef char *dst
        nhead = snprintf(head, sizeof(head),
                         b'{"seq": %llu, "event": "%s", "domid": %d, "uuid": "',
                         self.seq, _KIND_C[self._kind], self.domid)
        xm_uuid_format(self._handle, head + nhead)
        nhead += 36
        head[nhead] = b'"'
        nhead += 1
        ntail = snprintf(tail, sizeof(tail), b', "time": %.6f}\n', self.time)
        if ntail < 0 or ntail >= <int>sizeof(tail):
            raise ValueError(f"event time {self.time!r} cannot be framed")
        if self._name is not None:
            name = b', "name": ' + (<str>_json_string(self._name)).encode("ascii")
        nreason = PyBytes_GET_SIZE(reason)
        nname = PyBytes_GET_SIZE(name)
        out = PyBytes_FromStringAndSize(NULL, nhead + nreason + nname + ntail)
        dst = PyBytes_AS_STRING(out)
        memcpy(dst, head, nhead)
        at = nhead
        memcpy(dst + at, PyBytes_AS_STRING(reason), nreason)
        at += nreason
        memcpy(dst + at, PyBytes_AS_STRING(name), nname)
        at += nname
        memcpy(dst + at, tail, ntail)
        return out

    def __repr__(self):
        return f"Event({self.to_dict()!r})"


cdef class DomainTable:
    """The scanner's table of domains: one C slot per domid, diffed against each batch."""

    def __cinit__(self, *args, **kwargs):
        self._dom = <dom_entry *>calloc(DOMID_FIRST_RESERVED, sizeof(dom_entry))
        self._gen = <uint32_t *>calloc(DOMID_FIRST_RESERVED, sizeof(uint32_t))
        # A diff touches at most every valid domid once.
        self._touched = <uint64_t *>malloc(DOMID_FIRST_RESERVED * sizeof(uint64_t))
        if self._dom is NULL or self._gen is NULL or self._touched is NULL:
            raise MemoryError()
        self._names = {}

    def __dealloc__(self):
        free(self._dom)
        free(self._gen)
        free(self._touched)

    def __init__(self, seq=0):
        self._seq = seq

    # -- the table ----------------------------------------------------------------------

    @property
    def seq(self):
        """The last seq handed out."""
        return self._seq

    @property
    def n_shutdown(self):
        """Domains shut down but not dead: while any exist, the daemon polls."""
        return self._n_state[ST_SHUTDOWN]

    def counts(self):
        return {
            "running": self._n_state[ST_RUNNING],
            "shutdown": self._n_state[ST_SHUTDOWN],
            "dead": self._n_state[ST_DEAD],
        }

    def __len__(self):
        return self._n_present

    def __contains__(self, domid):
        if not isinstance(domid, int) or not 0 <= domid < DOMID_FIRST_RESERVED:
            return False
        return self._dom[<unsigned int>domid].state != ST_ABSENT

    def set_name(self, domid, name):
        """Names come from xenstore; the events of this incarnation carry them from now on."""
        if name is not None and not isinstance(name, str):
            raise TypeError("name must be a str or None")
        if domid not in self:
            raise KeyError(domid)
        if name is None:
            self._names.pop(domid, None)
        else:
            self._names[domid] = name

    def get_name(self, domid):
        return self._names.get(domid)

    def snapshot(self, domids=None):
        """Subscribers' view of the known domains among `domids` (all when None)."""
        cdef unsigned int d
        cdef dom_entry *e
        out = []
        if domids is None:
            wanted = range(self._hi)
        else:
            wanted = sorted({int(x) for x in domids
                             if isinstance(x, int) and 0 <= x < DOMID_FIRST_RESERVED})
        for x in wanted:
            d = x
            e = &self._dom[d]
            if e.state == ST_ABSENT:
                continue
            out.append({
                "domid": d,
                "uuid": _uuid_text(<const unsigned char *>&e.h0),
                "state": _STATES[e.state],
                "reason": _REASON_NAMES[e.reason],
                "name": self._names.get(d),
            })
        return out

    def rows(self):
        """Every field of every entry, in domid order (for tests and debugging)."""
        cdef unsigned int d
        cdef dom_entry *e
        out = []
        for d in range(self._hi):
            e = &self._dom[d]
            if e.state == ST_ABSENT:
                continue
            out.append({
                "domid": d,
                "uuid": _uuid_text(<const unsigned char *>&e.h0),
                "flags": e.flags[self._cur],
                "cpu_time": e.cpu_time[self._cur],
                "gen": self._gen[d],
                "state": _STATES[e.state],
                "reason": _REASON_NAMES[e.reason],
                "reason_code": e.reason,
                "name": self._names.get(d),
            })
        return out

    # -- internals ----------------------------------------------------------------------

    cdef uint32_t _next_epoch(self) noexcept:
        cdef unsigned int d
        self._epoch += 1
        if self._epoch == 0:  # wrapped: forget every old stamp
            for d in range(DOMID_FIRST_RESERVED):
                self._dom[d].stamp = 0
            self._epoch = 1
        return self._epoch

    cdef uint32_t _validate(self, const unsigned char *base, Py_ssize_t size,
                            Py_ssize_t count) except 0:
        """Check a whole batch (count, domid range, duplicates) before anything changes."""
        cdef Py_ssize_t i
        cdef unsigned int domid
        cdef uint32_t epoch
        _check_count(size, count)
        epoch = self._next_epoch()
        for i in range(count):
            domid = xm_ld16(base + i * XC_RECORD_SIZE)
            if domid >= DOMID_FIRST_RESERVED:
                raise _reserved_domid(i, domid)
            if self._dom[domid].stamp == epoch:
                raise _duplicate_domid(i, domid)
            self._dom[domid].stamp = epoch
        return epoch

    cdef void _clear(self) noexcept:
        cdef unsigned int d
        for d in range(self._hi):
            self._dom[d].state = ST_ABSENT
        self._hi = 0
        self._n_present = 0
        memset(self._n_state, 0, sizeof(self._n_state))
        self._names.clear()

    cdef Event _emit(self, int kind, uint32_t domid, const dom_entry *e, int reason,
                     double now, list events):
        cdef Event ev = Event.__new__(Event)
        self._seq += 1
        ev.seq = self._seq
        ev._kind = kind
        ev.domid = domid
        memcpy(ev._handle, &e.h0, 16)
        ev._reason = reason
        ev.time = now
        if self._names:
            ev._name = self._names.get(domid)
        events.append(ev)
        return ev

    cdef void _set_state(self, dom_entry *e, uint8_t state) noexcept:
        self._n_state[e.state] -= 1
        self._n_state[state] += 1
        e.state = state

    cdef int _apply(self, uint32_t domid, const unsigned char *rec, unsigned int wslot,
                    double now, list events) except -1:
        """One domain's events for this scan, in their order; its slot is updated.

        `rec` is its record, or NULL when it is gone. Previous values are read from the
        committed slot `self._cur`; this record's flags and cpu_time go to slot `wslot`.
        """
        cdef dom_entry *e = &self._dom[domid]
        cdef uint32_t flags = 0
        cdef uint64_t cpu = 0, h0 = 0, h1 = 0
        cdef int reason
        cdef uint8_t rreason
        if rec is not NULL:
            flags = xm_ld32(rec + XC_OFF_FLAGS)
            cpu = xm_ld64(rec + XC_OFF_CPU_TIME)
            h0 = xm_ld64(rec + XC_OFF_HANDLE)
            h1 = xm_ld64(rec + XC_OFF_HANDLE + 8)

        if e.state != ST_ABSENT and (
            rec is NULL or h0 != e.h0 or h1 != e.h1 or cpu < e.cpu_time[self._cur]
            or (e.state == ST_DEAD and not (flags & XEN_DOMINF_dying))
        ):
            # The incarnation we knew is over: it dies (unless it already did) and its
            # record has left the list (even if the domid is already back).
            if e.state != ST_DEAD:
                reason = e.reason if e.state == ST_SHUTDOWN else SHUTDOWN_CODE_NONE
                self._emit(EV_DEATH, domid, e, reason, now, events)
            self._emit(EV_RELEASED, domid, e, SHUTDOWN_CODE_NONE, now, events)
            self._n_state[e.state] -= 1
            self._n_present -= 1
            e.state = ST_ABSENT
            if self._names:
                self._names.pop(domid, None)
        if rec is NULL:
            return 0

        if e.state == ST_ABSENT:
            e.h0 = h0
            e.h1 = h1
            e.state = ST_RUNNING
            e.reason = SHUTDOWN_CODE_NONE
            self._n_state[ST_RUNNING] += 1
            self._n_present += 1
            if domid >= self._hi:
                self._hi = domid + 1
            self._gen_counter += 1
            self._gen[domid] = self._gen_counter
            self._emit(EV_NEW, domid, e, SHUTDOWN_CODE_NONE, now, events)

        if e.state != ST_DEAD:
            rreason = (flags >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask
            if flags & XEN_DOMINF_shutdown:
                if e.state != ST_SHUTDOWN or e.reason != rreason:
                    self._set_state(e, ST_SHUTDOWN)
                    e.reason = rreason
                    self._emit(EV_SHUTDOWN, domid, e, rreason, now, events)
            elif e.state == ST_SHUTDOWN and not (flags & XEN_DOMINF_dying):
                self._set_state(e, ST_RUNNING)
                e.reason = SHUTDOWN_CODE_NONE
                self._emit(EV_RESUMED, domid, e, SHUTDOWN_CODE_NONE, now, events)
            if flags & XEN_DOMINF_dying:
                # Dies with the shutdown still in force: the record's if its shutdown flag
                # is set (just copied into the entry), else the one of the last scan.
                reason = e.reason if e.state == ST_SHUTDOWN else SHUTDOWN_CODE_NONE
                self._set_state(e, ST_DEAD)
                e.reason = <uint8_t>reason
                self._emit(EV_DEATH, domid, e, reason, now, events)

        e.flags[wslot] = flags
        e.cpu_time[wslot] = cpu
        return 0

    # -- loading and diffing --------------------------------------------------------------

    def prime(self, const unsigned char[::1] buffer, Py_ssize_t count):
        """Replace the table with the batch, without events (the start-up scan)."""
        cdef const unsigned char *base = _data(buffer)
        cdef const unsigned char *p
        cdef Py_ssize_t i
        cdef unsigned int domid, cur = self._cur
        cdef uint32_t flags
        cdef dom_entry *e
        self._validate(base, buffer.shape[0], count)
        self._clear()
        for i in range(count):
            p = base + i * XC_RECORD_SIZE
            domid = xm_ld16(p)
            flags = xm_ld32(p + XC_OFF_FLAGS)
            e = &self._dom[domid]
            e.h0 = xm_ld64(p + XC_OFF_HANDLE)
            e.h1 = xm_ld64(p + XC_OFF_HANDLE + 8)
            e.flags[cur] = flags
            e.cpu_time[cur] = xm_ld64(p + XC_OFF_CPU_TIME)
            if flags & XEN_DOMINF_dying:
                e.state = ST_DEAD
            elif flags & XEN_DOMINF_shutdown:
                e.state = ST_SHUTDOWN
            else:
                e.state = ST_RUNNING
            if flags & XEN_DOMINF_shutdown:
                e.reason = (flags >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask
            else:
                e.reason = SHUTDOWN_CODE_NONE
            self._n_state[e.state] += 1
            self._n_present += 1
            if domid >= self._hi:
                self._hi = domid + 1
        # Incarnation numbers in domid order, whatever the order of the records.
        for domid in range(self._hi):
            if self._dom[domid].state != ST_ABSENT:
                self._gen_counter += 1
                self._gen[domid] = self._gen_counter

    def diff(self, const unsigned char[::1] buffer, Py_ssize_t count, now=None):
        """A full scan: the batch holds every domain; those missing from it are gone.

        Returns the events in domid order (one domain's in their own order), with seq
        numbers following `self.seq`. A corrupt batch raises ValueError and changes nothing.
        """
        cdef const unsigned char *base = _data(buffer)
        cdef const unsigned char *p = base
        cdef Py_ssize_t i, i_rec
        cdef unsigned int domid, d, seen = 0, n = 0
        cdef unsigned int cur = self._cur, nxt = self._cur ^ 1
        cdef uint32_t flags, epoch
        cdef uint64_t cpu, key, last = 0
        cdef bint ordered = True
        cdef dom_entry *dom = self._dom
        cdef dom_entry *e
        cdef uint64_t *touched = self._touched
        cdef double t
        cdef list events

        _check_count(buffer.shape[0], count)
        epoch = self._next_epoch()
        # One pass: validate, stage this batch's flags/cpu_time in slot nxt, and note the
        # domains that need more than that. Nothing committed changes until it is done.
        for i in range(count):
            domid = xm_ld16(p)
            if domid >= DOMID_FIRST_RESERVED:
                raise _reserved_domid(i, domid)
            e = &dom[domid]
            if e.stamp == epoch:
                raise _duplicate_domid(i, domid)
            e.stamp = epoch
            flags = xm_ld32(p + XC_OFF_FLAGS)
            cpu = xm_ld64(p + XC_OFF_CPU_TIME)
            e.flags[nxt] = flags
            e.cpu_time[nxt] = cpu
            if e.state != ST_ABSENT:
                seen += 1
                if (((flags ^ e.flags[cur]) & EVENT_FLAGS_MASK) == 0
                        and cpu >= e.cpu_time[cur]
                        and xm_ld64(p + XC_OFF_HANDLE) == e.h0
                        and xm_ld64(p + XC_OFF_HANDLE + 8) == e.h1):
                    p += XC_RECORD_SIZE
                    continue
            key = (<uint64_t>domid << 32) | <uint64_t>(i + 1)
            if key < last:
                ordered = False
            last = key
            touched[n] = key
            n += 1
            p += XC_RECORD_SIZE

        if seen != self._n_present:
            # Some known domains were not in the batch: they are gone.
            for d in range(self._hi):
                if dom[d].state != ST_ABSENT and dom[d].stamp != epoch:
                    key = <uint64_t>d << 32
                    if key < last:
                        ordered = False
                    last = key
                    touched[n] = key
                    n += 1

        if n == 0:
            self._cur = nxt
            return []
        if not ordered:
            qsort(touched, n, sizeof(uint64_t), xm_cmp_u64)
        t = _time.time() if now is None else now
        events = []
        for i in range(n):
            key = touched[i]
            domid = <unsigned int>(key >> 32)
            i_rec = <Py_ssize_t>(key & 0xFFFFFFFF)
            self._apply(domid, base + (i_rec - 1) * XC_RECORD_SIZE if i_rec else NULL,
                        nxt, t, events)
        if self._n_present == 0:
            self._hi = 0
        self._cur = nxt
        return events

    def diff_one(self, domid, const unsigned char[::1] buffer, Py_ssize_t count, now=None):
        """A targeted scan of one domid, from getinfolist(first=domid, max>=1).

        Records of other domids in the batch are ignored; if none has `domid`, it is gone.
        """
        cdef const unsigned char *base = _data(buffer)
        cdef const unsigned char *rec = NULL
        cdef Py_ssize_t i
        cdef unsigned int target
        cdef list events = []
        if not 0 <= domid < DOMID_FIRST_RESERVED:
            raise ValueError(f"domid {domid} out of range 0..{DOMID_FIRST_RESERVED - 1}")
        target = domid
        self._validate(base, buffer.shape[0], count)
        for i in range(count):
            if xm_ld16(base + i * XC_RECORD_SIZE) == target:
                rec = base + i * XC_RECORD_SIZE
                break
        if rec is NULL and self._dom[target].state == ST_ABSENT:
            return events
        self._apply(target, rec, self._cur, _time.time() if now is None else now, events)
        return events


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
    cap = xm_ld32(base + SHM_OFF_CAPACITY)
    if cap > (shm.shape[0] - SHM_HEADER_SIZE) // XC_RECORD_SIZE:
        raise ValueError(
            f"shared-memory table claims {cap} records but the buffer holds only "
            f"{(shm.shape[0] - SHM_HEADER_SIZE) // XC_RECORD_SIZE}"
        )
    if first < 0 or max < 0:
        raise ValueError(f"first ({first}) and max ({max}) must not be negative")
    if max * XC_RECORD_SIZE > out.shape[0]:
        raise ValueError(
            f"out holds {out.shape[0]} bytes, {max} records need {max * XC_RECORD_SIZE}"
        )
    if max == 0 or first > 0xFFFF:
        return 0
    c_first = first
    c_max = max
    dst = &out[0]
    with nogil:
        n = xm_shm_copy(base, cap, c_first, c_max, dst, timeout)
    if n < 0:
        raise TimeoutError(
            f"shared-memory table stayed locked for over {SHM_LOCK_TIMEOUT} s "
            "(is the simulated host's writer stuck?)"
        )
    return n


def shm_change_stamp(const unsigned char[::1] shm):
    """The CLOCK_MONOTONIC ns at which the sim applied its latest change (offset 32)."""
    return xm_load_acquire_u64(_shm_header(shm) + SHM_OFF_CHANGE_STAMP)


cdef const unsigned char *_shm_header(const unsigned char[::1] shm) except NULL:
    cdef const unsigned char *base
    if shm.shape[0] < SHM_HEADER_SIZE:
        raise ValueError(
            f"shared-memory table too small: {shm.shape[0]} bytes, header is {SHM_HEADER_SIZE}"
        )
    base = &shm[0]
    if memcmp(base, b"XMUXSHM1", 8) != 0:
        raise ValueError(f"not a xen-watch-mux table: magic {bytes(shm[:8])!r}, "
                         f"expected {SHM_MAGIC!r}")
    if xm_ld32(base + SHM_OFF_RECORD_SIZE) != XC_RECORD_SIZE:
        raise ValueError(f"shared-memory table has record size "
                         f"{xm_ld32(base + SHM_OFF_RECORD_SIZE)}, expected {XC_RECORD_SIZE}")
    if (<size_t>base) & 7:
        raise ValueError("shared-memory table must be 8-byte aligned (map the whole file)")
    return base


def _floor_scan(const unsigned char[::1] buffer, Py_ssize_t count):
    """The benchmark's floor: a plain C loop reading domid, flags, cpu_time and handle
    of `count` records (what the diff reads), returning a checksum."""
    _check_count(buffer.shape[0], count)
    return xm_floor_scan(_data(buffer), count)
