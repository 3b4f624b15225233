# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The hot path of xen-watch-mux: the scanner's domain table and its diff, in C.

`DomainTable.diff` walks one batch of `xc_domaininfo_t` records once and returns the events
of the event model (DESIGN.md); for an unchanged domain it touches only that domain's slot
of a C array indexed by domid and allocates nothing. `mux/reference.py` is the pure-Python
twin and the specification: same API, same events, same frame bytes.

Also here, because C readers must see the same memory order: `shm_getinfolist`, the
simulated host's `getinfolist` over its shared-memory table, copied under the seqlock.

And the real hypercall: `Xenctrl` loads libxenctrl with dlopen (so building _fast needs no
Xen header) and calls `xc_domain_getinfolist` with the GIL released, straight into the
caller's buffer; `Xenctrl.scan_all` pages through every domain in one C loop.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EIO, ENOENT, ENOSYS
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort
from libc.string cimport memcmp, memcpy, memset, strlen
from posix.dlfcn cimport RTLD_LOCAL, RTLD_NOW, dlclose, dlerror, dlopen, dlsym

import os as _os
import time as _time
from json.encoder import encode_basestring_ascii as _json_string

from mux import records as _records

cdef extern from *:
    """
    #include <stdio.h>
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

    static inline char *xm_put(char *p, const char *s, size_t n) { memcpy(p, s, n); return p + n; }
    #define XM_PUT_LIT(p, lit) xm_put((p), (lit), sizeof(lit) - 1)

    static inline char *xm_put_u64(char *p, uint64_t v) {
        char tmp[20];
        int n = 0;
        do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
        while (n) *p++ = tmp[--n];
        return p;
    }

    /* printf's "%.6f" of x (the exact binary value rounded half-to-even to 6 decimals, as
       glibc and Python both do it), without printf's multi-precision path for the values
       an event time takes. `p` must have room for 400 chars. */
    static char *xm_put_fixed6(char *p, double x) {
        uint64_t bits, m, ip = 0, fp = 0;
        int e, s;
        memcpy(&bits, &x, 8);
        e = (int)((bits >> 52) & 0x7ff);
        m = bits & ((1ULL << 52) - 1);
        if (e == 0x7ff) {  /* spelt as Python spells them, whatever the sign of a NaN */
            if (m) return xm_put(p, "nan", 3);
            return (bits >> 63) ? xm_put(p, "-inf", 4) : xm_put(p, "inf", 3);
        }
        if (e - 1075 > 10)  /* 2^63 and beyond: let printf do it */
            return p + snprintf(p, 400, "%.6f", x);
        if (e == 0) e = 1; else m |= 1ULL << 52;   /* x = m * 2^(e - 1075) */
        s = 1075 - e;
        if (s <= 0) {
            ip = m << -s;
        } else if (s < 100) {
            unsigned __int128 num = (unsigned __int128)m * 1000000u;   /* < 2^73 */
            unsigned __int128 q = num >> s;
            unsigned __int128 rem = num - (q << s);
            unsigned __int128 half = (unsigned __int128)1 << (s - 1);
            if (rem > half || (rem == half && (q & 1))) q++;
            if ((q >> 64) == 0) {  /* 64-bit division: the 128-bit one is a library call */
                ip = (uint64_t)q / 1000000u;
                fp = (uint64_t)q % 1000000u;
            } else {
                ip = (uint64_t)(q / 1000000u);
                fp = (uint64_t)(q % 1000000u);
            }
        }  /* else below 2^-46: 0.000000 */
        if (bits >> 63) *p++ = '-';
        p = xm_put_u64(p, ip);
        *p++ = '.';
        for (s = 5; s >= 0; s--) { p[s] = (char)('0' + fp % 10); fp /= 10; }
        return p + 6;
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
    char *xm_put(char *p, const char *s, size_t n) noexcept nogil
    char *xm_put_u64(char *p, uint64_t v) noexcept nogil
    char *xm_put_fixed6(char *p, double x) noexcept nogil
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


# What the diff's pass found: the domains to look at after it, and where it stopped if the
# batch was corrupt.
cdef struct pass_result:
    unsigned int n          # entries written to `touched`
    unsigned int n_new      # of which for domids not in the table
    bint stamped            # the batch's domids were stamped (it was out of order)
    bint ordered            # `touched` is in domid order
    uint64_t last           # the last key written to `touched`
    Py_ssize_t bad_index    # the corrupt record
    unsigned int bad_domid

cdef enum:
    PASS_OK = 0
    PASS_RESERVED = 1
    PASS_DUPLICATE = 2


cdef inline bint _quiet(dom_entry *e, const unsigned char *p, undo_entry *undo,
                        unsigned int *n_undo) noexcept nogil:
    """Whether the record `p` says nothing new about the known domain `e`.

    If so, its new cpu_time and volatile flags are copied in (the old ones logged in
    `undo`); if not (or the domain is not known), nothing is touched.
    """
    cdef uint32_t flags = xm_ld32(p + XC_OFF_FLAGS)
    cdef uint64_t cpu = xm_ld64(p + XC_OFF_CPU_TIME)
    cdef unsigned int k
    if e.state == ST_ABSENT:
        return False
    if ((((flags ^ e.flags) & EVENT_FLAGS_MASK)
            | (xm_ld64(p + XC_OFF_HANDLE) ^ e.h0)
            | (xm_ld64(p + XC_OFF_HANDLE + 8) ^ e.h1)) != 0
            or cpu < e.cpu_time):
        return False
    if cpu != e.cpu_time or flags != e.flags:
        k = n_undo[0]
        undo[k].domid = xm_ld16(p)
        undo[k].flags = e.flags
        undo[k].cpu_time = e.cpu_time
        n_undo[0] = k + 1
        e.flags = flags
        e.cpu_time = cpu
    return True


cdef void _note(pass_result *r, uint64_t *touched, const dom_entry *e, unsigned int domid,
                Py_ssize_t i) noexcept nogil:
    """Note record `i` (of `domid`) for after the pass."""
    cdef uint64_t key = (<uint64_t>domid << 32) | <uint64_t>(i + 1)
    if e.state == ST_ABSENT:
        r.n_new += 1
    if key < r.last:
        r.ordered = False
    r.last = key
    touched[r.n] = key
    r.n += 1


cdef int _diff_pass(const unsigned char *base, Py_ssize_t count, dom_entry *dom,
                    uint32_t *stamp, uint32_t epoch, uint64_t *touched, undo_entry *undo,
                    pass_result *r) noexcept nogil:
    """The one walk over a batch, in plain C.

    A domain whose record says nothing new only has its cpu_time and volatile flags brought
    up to date (see _quiet); the others are noted in `touched` as (domid << 32 | record
    index + 1). Duplicates cannot occur while domids rise (the order getinfolist returns),
    so domids are stamped only from the first record out of order on. On a corrupt record
    everything is put back and PASS_RESERVED or PASS_DUPLICATE returned.
    """
    cdef const unsigned char *p = base
    cdef const unsigned char *end = base + count * XC_RECORD_SIZE
    cdef const unsigned char *q
    cdef unsigned int domid = 0, n_undo = 0, k
    cdef int prev = -1
    cdef int status = PASS_OK
    cdef dom_entry *e
    r.n = 0
    r.n_new = 0
    r.stamped = False
    r.ordered = True
    r.last = 0
    # In domid order (the common case): no stamps.
    while p < end:
        domid = xm_ld16(p)
        if domid >= DOMID_FIRST_RESERVED:
            status = PASS_RESERVED
            break
        if <int>domid <= prev:
            r.stamped = True
            q = base
            while q < p:
                stamp[xm_ld16(q)] = epoch
                q += XC_RECORD_SIZE
            break
        prev = domid
        e = &dom[domid]
        if not _quiet(e, p, undo, &n_undo):
            _note(r, touched, e, domid, (p - base) // XC_RECORD_SIZE)
        p += XC_RECORD_SIZE
    # From the first record out of order on: stamped.
    if status == PASS_OK and r.stamped:
        while p < end:
            domid = xm_ld16(p)
            if domid >= DOMID_FIRST_RESERVED:
                status = PASS_RESERVED
                break
            if stamp[domid] == epoch:
                status = PASS_DUPLICATE
                break
            stamp[domid] = epoch
            e = &dom[domid]
            if not _quiet(e, p, undo, &n_undo):
                _note(r, touched, e, domid, (p - base) // XC_RECORD_SIZE)
            p += XC_RECORD_SIZE
    if status != PASS_OK:
        r.bad_index = (p - base) // XC_RECORD_SIZE
        r.bad_domid = domid
        for k in range(n_undo):
            e = &dom[undo[k].domid]
            e.flags = undo[k].flags
            e.cpu_time = undo[k].cpu_time
    return status


@cython.freelist(512)
@cython.no_gc  # holds only str, bytes and None: no cycles, so no GC tracking (mass events)
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
        # {"seq": N, "event": "K", "domid": D, "uuid": "U"[, "reason": "R"][, "name": J],
        #  "time": T.TTTTTT}\n  -- the same bytes as reference.Event.frame().
        cdef char head[160]
        cdef char tail[420]
        cdef char *p = head
        cdef char *q = tail
        cdef bytes reason = <bytes>_REASON_PIECES[self._reason]
        cdef bytes name = b""
        cdef Py_ssize_t nhead, ntail, nreason, nname
        cdef bytes out
        cdef char *dst
        p = xm_put(p, b'{"seq": ', 8)
        p = xm_put_u64(p, self.seq)
        p = xm_put(p, b', "event": "', 12)
        p = xm_put(p, _KIND_C[self._kind], strlen(_KIND_C[self._kind]))
        p = xm_put(p, b'", "domid": ', 12)
        p = xm_put_u64(p, <uint64_t>self.domid)
        p = xm_put(p, b', "uuid": "', 11)
        xm_uuid_format(self._handle, p)
        p += 36
        p[0] = b'"'
        nhead = p + 1 - head
        q = xm_put(q, b', "time": ', 10)
        q = xm_put_fixed6(q, self.time)
        q = xm_put(q, b'}\n', 2)
        ntail = q - tail
        if self._name is not None:
            name = b', "name": ' + (<str>_json_string(self._name)).encode("ascii")
        nreason = PyBytes_GET_SIZE(reason)
        nname = PyBytes_GET_SIZE(name)
        out = PyBytes_FromStringAndSize(NULL, nhead + nreason + nname + ntail)
        dst = PyBytes_AS_STRING(out)
        memcpy(dst, head, nhead)
        dst += nhead
        memcpy(dst, PyBytes_AS_STRING(reason), nreason)
        dst += nreason
        memcpy(dst, PyBytes_AS_STRING(name), nname)
        dst += nname
        memcpy(dst, tail, ntail)
        return out

    def __repr__(self):
        return f"Event({self.to_dict()!r})"


cdef class DomainTable:
    """The scanner's table of domains: one C slot per domid, diffed against each batch."""

    def __cinit__(self, *args, **kwargs):
        self._dom = <dom_entry *>calloc(DOMID_FIRST_RESERVED, sizeof(dom_entry))
        self._gen = <uint32_t *>calloc(DOMID_FIRST_RESERVED, sizeof(uint32_t))
        self._stamp = <uint32_t *>calloc(DOMID_FIRST_RESERVED, sizeof(uint32_t))
        # A diff touches (or overwrites) at most every valid domid once.
        self._touched = <uint64_t *>malloc(DOMID_FIRST_RESERVED * sizeof(uint64_t))
        self._undo = <undo_entry *>malloc(DOMID_FIRST_RESERVED * sizeof(undo_entry))
        if (self._dom is NULL or self._gen is NULL or self._stamp is NULL
                or self._touched is NULL or self._undo is NULL):
            raise MemoryError()
        self._names = {}

    def __dealloc__(self):
        free(self._dom)
        free(self._gen)
        free(self._stamp)
        free(self._touched)
        free(self._undo)

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
                "flags": e.flags,
                "cpu_time": e.cpu_time,
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
            memset(self._stamp, 0, DOMID_FIRST_RESERVED * sizeof(uint32_t))
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
            if self._stamp[domid] == epoch:
                raise _duplicate_domid(i, domid)
            self._stamp[domid] = epoch
        return epoch

    cdef void _stamp_all(self, const unsigned char *base, Py_ssize_t count,
                         uint32_t epoch) noexcept:
        """Mark the domids of `count` records (valid, distinct) as seen in batch `epoch`."""
        cdef Py_ssize_t i
        for i in range(count):
            self._stamp[xm_ld16(base + i * XC_RECORD_SIZE)] = epoch

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

    cdef int _apply(self, uint32_t domid, const unsigned char *rec, double now,
                    list events) except -1:
        """One domain's events for this scan, in their order; its slot is updated.

        `rec` is its record, or NULL when it is gone.
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
            rec is NULL or h0 != e.h0 or h1 != e.h1 or cpu < e.cpu_time
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

        e.flags = flags
        e.cpu_time = cpu
        return 0

    # -- loading and diffing --------------------------------------------------------------

    def prime(self, buffer, Py_ssize_t count):
        """Replace the table with the batch, without events (the start-up scan)."""
        cdef Py_buffer view
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        try:
            self._prime(<const unsigned char *>view.buf, view.len, count)
        finally:
            PyBuffer_Release(&view)

    cdef int _prime(self, const unsigned char *base, Py_ssize_t size,
                    Py_ssize_t count) except -1:
        cdef const unsigned char *p
        cdef Py_ssize_t i
        cdef unsigned int domid
        cdef uint32_t flags
        cdef dom_entry *e
        self._validate(base, size, count)
        self._clear()
        for i in range(count):
            p = base + i * XC_RECORD_SIZE
            domid = xm_ld16(p)
            flags = xm_ld32(p + XC_OFF_FLAGS)
            e = &self._dom[domid]
            e.h0 = xm_ld64(p + XC_OFF_HANDLE)
            e.h1 = xm_ld64(p + XC_OFF_HANDLE + 8)
            e.flags = flags
            e.cpu_time = xm_ld64(p + XC_OFF_CPU_TIME)
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
        return 0

    def diff(self, buffer, Py_ssize_t count, now=None):
        """A full scan: the batch holds every domain; those missing from it are gone.

        Returns the events in domid order (one domain's in their own order), with seq
        numbers following `self.seq`. A corrupt batch raises ValueError and changes nothing.
        """
        cdef Py_buffer view
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        try:
            return self._diff(<const unsigned char *>view.buf, view.len, count, now)
        finally:
            PyBuffer_Release(&view)

    cdef list _diff(self, const unsigned char *base, Py_ssize_t size, Py_ssize_t count,
                    object now):
        cdef pass_result r
        cdef int status
        cdef unsigned int d, domid, i
        cdef uint32_t epoch
        cdef uint64_t key
        cdef Py_ssize_t i_rec
        cdef dom_entry *dom = self._dom
        cdef uint64_t *touched = self._touched
        cdef double t
        cdef list events

        _check_count(size, count)
        epoch = self._next_epoch()
        status = _diff_pass(base, count, dom, self._stamp, epoch, touched, self._undo, &r)
        if status == PASS_RESERVED:
            raise _reserved_domid(r.bad_index, r.bad_domid)
        if status == PASS_DUPLICATE:
            raise _duplicate_domid(r.bad_index, r.bad_domid)

        # The batch is valid: from here on, nothing can fail half-way.
        if count - r.n_new != self._n_present:
            # Some known domains were not in the batch: they are gone.
            if not r.stamped:
                self._stamp_all(base, count, epoch)
            for d in range(self._hi):
                if dom[d].state != ST_ABSENT and self._stamp[d] != epoch:
                    key = <uint64_t>d << 32
                    if key < r.last:
                        r.ordered = False
                    r.last = key
                    touched[r.n] = key
                    r.n += 1

        if r.n == 0:
            return []
        if not r.ordered:
            qsort(touched, r.n, sizeof(uint64_t), xm_cmp_u64)
        t = _time.time() if now is None else now
        events = []
        for i in range(r.n):
            key = touched[i]
            domid = <unsigned int>(key >> 32)
            i_rec = <Py_ssize_t>(key & 0xFFFFFFFF)
            self._apply(domid, base + (i_rec - 1) * XC_RECORD_SIZE if i_rec else NULL, t, events)
        if self._n_present == 0:
            self._hi = 0
        return events

    def diff_one(self, domid, buffer, Py_ssize_t count, now=None):
        """A targeted scan of one domid, from getinfolist(first=domid, max>=1).

        Records of other domids in the batch are ignored; if none has `domid`, it is gone.
        """
        cdef Py_buffer view
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        try:
            return self._diff_one(domid, <const unsigned char *>view.buf, view.len, count, now)
        finally:
            PyBuffer_Release(&view)

    cdef list _diff_one(self, object domid, const unsigned char *base, Py_ssize_t size,
                        Py_ssize_t count, object now):
        cdef const unsigned char *rec = NULL
        cdef Py_ssize_t i
        cdef unsigned int target
        cdef list events = []
        if not 0 <= domid < DOMID_FIRST_RESERVED:
            raise ValueError(f"domid {domid} out of range 0..{DOMID_FIRST_RESERVED - 1}")
        target = domid
        self._validate(base, size, count)
        for i in range(count):
            if xm_ld16(base + i * XC_RECORD_SIZE) == target:
                rec = base + i * XC_RECORD_SIZE
                break
        if rec is NULL and self._dom[target].state == ST_ABSENT:
            return events
        self._apply(target, rec, _time.time() if now is None else now, events)
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


def _floor_scan(buffer, Py_ssize_t count):
    """The benchmark's floor: a plain C loop reading domid, flags, cpu_time and handle
    of `count` records (what the diff reads), returning a checksum. Takes its buffer
    the way diff does, so that the two differ only in the loop."""
    cdef Py_buffer view
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    try:
        _check_count(view.len, count)
        return xm_floor_scan(<const unsigned char *>view.buf, count)
    finally:
        PyBuffer_Release(&view)


# -- libxenctrl ---------------------------------------------------------------------------

cdef extern from *:
    """
    #include <errno.h>
    /* errno, read and cleared from Cython (an assignment there would make a local). */
    static inline void xm_clear_errno(void) { errno = 0; }
    static inline int xm_errno(void) { return errno; }

    /* A batch as xc_domain_getinfolist hands it over must hold domids >= first, rising,
       below DOMID_FIRST_RESERVED: the index of the first record that breaks this, or -1. */
    static long xm_check_batch(const unsigned char *p, long n, uint32_t first) {
        long i;
        uint32_t d, lo = first;
        for (i = 0; i < n; i++, p += 112) {
            d = xm_ld16(p);
            if (d < lo || d >= 0x7FF0) return i;
            lo = d + 1;
        }
        return -1;
    }
    """
    long xm_check_batch(const unsigned char *p, long n, uint32_t first) noexcept nogil
    void xm_clear_errno() noexcept nogil
    int xm_errno() noexcept nogil


GETINFOLIST_BATCH = _records.GETINFOLIST_BATCH  # domains per call, as libxl asks for them
SCAN_SLACK = 256  # records of room a growing scan buffer gets beyond what it needs

cdef unsigned int _BATCH = _records.GETINFOLIST_BATCH
cdef Py_ssize_t _SLACK = SCAN_SLACK


class XenctrlError(OSError):
    """A libxenctrl step failed. `errno` as the library left it; `call` is the step
    (dlopen, dlsym, xc_interface_open, xc_domain_getinfolist, check) and `library` the
    path or soname that was loaded."""

    call = None
    library = None


cdef object _xc_error(int err, str message, str call, str library):
    exc = XenctrlError(err, message)
    exc.call = call
    exc.library = library
    return exc


cdef class Xenctrl:
    """libxenctrl, loaded with dlopen, and one `xc_interface_open(NULL, NULL, 0)` handle.

    `Xenctrl(library)` takes a path or a soname (as dlopen does) and raises XenctrlError
    when the library cannot be loaded, lacks one of the three functions, or the handle
    cannot be opened (no /dev/xen/privcmd, no privilege). Calls run with the GIL released.
    """

    def __cinit__(self, library):
        cdef bytes name = _os.fsencode(library)
        cdef const char *err
        cdef void *sym
        cdef void *xch = NULL
        cdef xc_interface_open_fn open_fn
        cdef int saved = 0
        self.library = _os.fsdecode(name)
        dlerror()
        self._dl = dlopen(name, RTLD_NOW | RTLD_LOCAL)
        if self._dl is NULL:
            err = dlerror()
            raise _xc_error(ENOENT, (<bytes>err).decode("utf-8", "replace") if err is not NULL
                            else f"cannot load {self.library}", "dlopen", self.library)
        syms = {}
        for sym_name in (b"xc_interface_open", b"xc_interface_close", b"xc_domain_getinfolist"):
            dlerror()
            sym = dlsym(self._dl, sym_name)
            if sym is NULL:
                dlclose(self._dl)
                self._dl = NULL
                raise _xc_error(ENOSYS, f"{self.library} has no {sym_name.decode()}(): "
                                "it is not a libxenctrl", "dlsym", self.library)
            syms[sym_name] = <size_t>sym
        open_fn = <xc_interface_open_fn><void *><size_t>syms[b"xc_interface_open"]
        self._close = <xc_interface_close_fn><void *><size_t>syms[b"xc_interface_close"]
        self._getinfolist = (
            <xc_domain_getinfolist_fn><void *><size_t>syms[b"xc_domain_getinfolist"])
        with nogil:
            xm_clear_errno()
            xch = open_fn(NULL, NULL, 0)
            saved = xm_errno()
        if xch is NULL:
            dlclose(self._dl)
            self._dl = NULL
            saved = saved or EIO
            raise _xc_error(saved, f"xc_interface_open(NULL, NULL, 0) failed: "
                            f"{_os.strerror(saved)}", "xc_interface_open", self.library)
        self._xch = xch

    def __dealloc__(self):
        if self._xch is not NULL:
            self._close(self._xch)
            self._xch = NULL
        if self._dl is not NULL:
            dlclose(self._dl)
            self._dl = NULL

    @property
    def closed(self):
        return self._xch is NULL

    def close(self):
        """xc_interface_close and dlclose; a second close does nothing."""
        if self._busy:
            raise RuntimeError("Xenctrl.close() while a call is running in another thread")
        if self._xch is not NULL:
            with nogil:
                self._close(self._xch)
            self._xch = NULL
        if self._dl is not NULL:
            dlclose(self._dl)
            self._dl = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<Xenctrl {self.library!r}{' closed' if self._xch is NULL else ''}>"

    cdef long _call(self, uint32_t first, unsigned int max_domains,
                    unsigned char *dst) except -1:
        """One xc_domain_getinfolist into `dst` (room for max_domains), checked."""
        cdef void *xch = self._xch
        cdef xc_domain_getinfolist_fn fn = self._getinfolist
        cdef int n = 0, saved = 0
        cdef long bad
        if xch is NULL:
            raise ValueError(f"{self.library}: the libxenctrl handle is closed")
        self._busy += 1
        with nogil:
            xm_clear_errno()
            n = fn(xch, first, max_domains, dst)
            saved = xm_errno()
        self._busy -= 1
        if n < 0:
            saved = saved or EIO
            raise _xc_error(
                saved,
                f"xc_domain_getinfolist(first={first}, max={max_domains}) failed: "
                f"{_os.strerror(saved)}",
                "xc_domain_getinfolist",
                self.library,
            )
        if <unsigned int>n > max_domains:
            raise _xc_error(EIO, f"xc_domain_getinfolist(first={first}, max={max_domains}) "
                            f"returned {n} records", "check", self.library)
        bad = xm_check_batch(dst, n, first)
        if bad >= 0:
            raise _xc_error(
                EIO,
                f"xc_domain_getinfolist(first={first}, max={max_domains}) returned domid "
                f"{xm_ld16(dst + bad * XC_RECORD_SIZE)} at record {bad}: domids must rise "
                f"from {first} and stay below {DOMID_FIRST_RESERVED:#x} (a libxenctrl of "
                "another Xen version?)",
                "check",
                self.library,
            )
        return n

    def getinfolist(self, first, max_domains, out, Py_ssize_t offset=0):
        """Copy at most `max_domains` records with domid >= `first`, in domid order, into the
        writable buffer `out` at byte `offset`; return how many. XenctrlError on failure."""
        cdef Py_buffer view
        cdef long n
        if first < 0 or max_domains < 0 or offset < 0:
            raise ValueError(f"first ({first}), max_domains ({max_domains}) and offset "
                             f"({offset}) must not be negative")
        PyObject_GetBuffer(out, &view, PyBUF_WRITABLE)
        try:
            if offset + max_domains * XC_RECORD_SIZE > view.len:
                raise ValueError(
                    f"out holds {view.len} bytes: {max_domains} records at offset {offset} "
                    f"need {offset + max_domains * XC_RECORD_SIZE}"
                )
            if max_domains == 0 or first >= DOMID_FIRST_RESERVED:
                return 0
            n = self._call(first, max_domains, <unsigned char *>view.buf + offset)
        finally:
            PyBuffer_Release(&view)
        return n

    def scan_all(self, bytearray buf):
        """Every domain into `buf` from its start: batches of GETINFOLIST_BATCH (libxl's
        1024), each asked from the domid after the last one seen, until a batch comes back
        short. `buf` grows (by SCAN_SLACK records beyond the need) when a batch might not
        fit, so it must not be exported (no live memoryview) then. Returns the count."""
        cdef Py_buffer view
        cdef Py_ssize_t count = 0
        cdef uint32_t first = 0
        cdef long got
        cdef unsigned char *dst
        while True:
            if PyByteArray_GET_SIZE(buf) < (count + _BATCH) * XC_RECORD_SIZE:
                PyByteArray_Resize(buf, (count + _BATCH + _SLACK) * XC_RECORD_SIZE)
            # Exported for the call: no other thread can resize it under the hypercall.
            PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
            try:
                dst = <unsigned char *>view.buf + count * XC_RECORD_SIZE
                got = self._call(first, _BATCH, dst)
            finally:
                PyBuffer_Release(&view)
            count += got
            if got < _BATCH:
                return count
            first = xm_ld16(<unsigned char *>PyByteArray_AS_STRING(buf)
                            + (count - 1) * XC_RECORD_SIZE) + 1
            if first >= DOMID_FIRST_RESERVED:
                return count
