# cython: language_level=3
# C-level declarations of the scanner core (mux/_fast.pyx). The numbers are those of
# mux/records.py; _fast checks at import that the two agree.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef enum:
    # xc_domaininfo_t (struct xen_domctl_getdomaininfo), x86-64
    XC_RECORD_SIZE = 112
    XC_OFF_DOMAIN = 0
    XC_OFF_FLAGS = 4
    XC_OFF_CPU_TIME = 56
    XC_OFF_HANDLE = 76
    # XEN_DOMINF_*
    XEN_DOMINF_dying = 0x1
    XEN_DOMINF_shutdown = 0x4
    XEN_DOMINF_shutdownshift = 16
    XEN_DOMINF_shutdownmask = 0xff
    SHUTDOWN_CODE_NONE = 0xff
    DOMID_FIRST_RESERVED = 0x7FF0
    # The flag bits that can make an event: everything else (running, blocked, paused...)
    # changes all the time and is only copied.
    EVENT_FLAGS_MASK = XEN_DOMINF_dying | XEN_DOMINF_shutdown | (XEN_DOMINF_shutdownmask << XEN_DOMINF_shutdownshift)

    # The shared-memory table of the simulated host (docs/internals.md)
    SHM_HEADER_SIZE = 128
    SHM_OFF_VERSION = 8
    SHM_OFF_RECORD_SIZE = 12
    SHM_OFF_CAPACITY = 16
    SHM_OFF_COUNT = 20
    SHM_OFF_SEQLOCK = 24
    SHM_OFF_CHANGE_STAMP = 32


# Entry states; ST_ABSENT marks a free slot.
cdef enum:
    ST_ABSENT = 0
    ST_RUNNING = 1
    ST_SHUTDOWN = 2
    ST_DEAD = 3


# Event kinds, in the order one domain's events can follow each other.
cdef enum:
    EV_NEW = 0
    EV_SHUTDOWN = 1
    EV_RESUMED = 2
    EV_DEATH = 3
    EV_RELEASED = 4


# One slot of the domain table: 32 bytes, two to a cache line, what an unchanged domain's
# record is compared with. Everything else (incarnation numbers, batch stamps, names) lives
# in side arrays that the common scan does not touch.
ctypedef struct dom_entry:
    uint64_t h0           # the 16-byte handle (UUID) as two native words
    uint64_t h1
    uint64_t cpu_time     # of the latest record
    uint32_t flags        # XEN_DOMINF_* of the latest record
    uint8_t state         # ST_*
    uint8_t reason        # shutdown in force (while shut down) or of the death, else 0xff
    uint16_t _pad


# What a diff's first pass overwrote in place (an unchanged domain's new cpu_time and
# volatile flags), so that a corrupt batch found later in the pass can be undone.
ctypedef struct undo_entry:
    uint32_t domid
    uint32_t flags
    uint64_t cpu_time


cdef class Event:
    cdef readonly unsigned long long seq
    cdef readonly int domid
    cdef readonly double time
    cdef int _kind
    cdef int _reason
    cdef unsigned char _handle[16]
    cdef object _name
    cdef object _frame

    cdef bytes _encode(self)


cdef class DomainTable:
    cdef dom_entry *_dom
    cdef uint32_t *_gen        # incarnation number per domid
    cdef uint32_t *_stamp      # epoch of the last batch that held the domid (duplicates)
    cdef uint64_t *_touched    # scratch: (domid << 32 | record index + 1) of one diff
    cdef undo_entry *_undo     # scratch: see undo_entry
    cdef uint32_t _epoch
    cdef unsigned int _hi      # every present domid is below this
    cdef unsigned int _n_present
    cdef unsigned int _n_state[4]
    cdef uint32_t _gen_counter
    cdef unsigned long long _seq
    cdef dict _names

    cdef uint32_t _next_epoch(self) noexcept
    cdef uint32_t _validate(self, const unsigned char *base, Py_ssize_t size,
                            Py_ssize_t count) except 0
    cdef void _stamp_all(self, const unsigned char *base, Py_ssize_t count,
                         uint32_t epoch) noexcept
    cdef void _clear(self) noexcept
    cdef list _diff(self, const unsigned char *base, Py_ssize_t size, Py_ssize_t count,
                    object now)
    cdef list _diff_one(self, object domid, const unsigned char *base, Py_ssize_t size,
                        Py_ssize_t count, object now)
    cdef int _prime(self, const unsigned char *base, Py_ssize_t size,
                    Py_ssize_t count) except -1
    cdef void _set_state(self, dom_entry *e, uint8_t state) noexcept
    cdef int _apply(self, uint32_t domid, const unsigned char *rec, double now,
                    list events) except -1
    cdef Event _emit(self, int kind, uint32_t domid, const dom_entry *e, int reason,
                     double now, list events)


# libxenctrl, resolved at run time (dlopen/dlsym): no Xen header is needed to build _fast.
# The three calls the `xenctrl` backend makes, with their xenctrl.h prototypes; the handle
# and the loggers are opaque here.
ctypedef void *(*xc_interface_open_fn)(void *logger, void *dombuild_logger,
                                       unsigned int open_flags) noexcept nogil
ctypedef int (*xc_interface_close_fn)(void *xch) noexcept nogil
ctypedef int (*xc_domain_getinfolist_fn)(void *xch, uint32_t first_domain,
                                         unsigned int max_domains, void *info) noexcept nogil


cdef class Xenctrl:
    cdef void *_dl                 # dlopen handle of the library
    cdef void *_xch                # xc_interface *, NULL once closed
    cdef xc_interface_close_fn _close
    cdef xc_domain_getinfolist_fn _getinfolist
    cdef unsigned int _busy        # calls running with the GIL released
    cdef readonly str library

    cdef long _call(self, uint32_t first, unsigned int max_domains,
                    unsigned char *dst) except -1
