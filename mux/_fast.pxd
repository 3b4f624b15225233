# cython: language_level=3
# C-level declarations of the scanner core (mux/_fast.pyx). The record layout's numbers are
# those of fastcore/xm_record.h, checked against mux/records.py at import; the event kinds'
# enum is checked against mux.protocol.EVENT_KINDS at import.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

include "fastcore/xm_helpers.pxi"


# Entry states; ST_ABSENT marks a free slot. The others are mux.protocol.DOMAIN_STATES, in order.
cdef enum:
    ST_ABSENT = 0
    ST_RUNNING = 1
    ST_SHUTDOWN = 2
    ST_DEAD = 3
    N_STATES = 4


# Event kinds: mux.protocol.EVENT_KINDS, in its order (a kind's subscription bit is its index).
cdef enum:
    EV_NEW = 0
    EV_SHUTDOWN = 1
    EV_RESUMED = 2
    EV_DEATH = 3
    EV_RELEASED = 4
    EV_PAUSED = 5
    EV_UNPAUSED = 6
    N_EVENT_KINDS = 7


# Event._flags: the optional `true` keys of a frame, in the frame's order.
cdef enum:
    EVF_PAUSED = 1
    EVF_LATE = 2
    EVF_TRANSIENT = 4


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
    uint16_t mark         # 1: this scan read the domain's unique id (in _uid_read): apply it


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
    cdef int _flags                 # EVF_*
    cdef unsigned char _handle[XM_HANDLE_SIZE]
    cdef uint64_t _uid              # the incarnation's unique id; 0: not known
    cdef object _name
    cdef object _frame

    cdef bytes _encode(self)
    cdef void _set_flag(self, int flag, object value, str what) except *


cdef class DomainTable:
    cdef dom_entry *_dom
    cdef uint32_t *_gen        # incarnation number per domid
    cdef uint64_t *_uid        # the hypervisor's unique id per domid (0: not known)
    cdef uint64_t *_uid_read   # scratch: the id a check read, where the slot's mark is set
    cdef uint32_t *_stamp      # epoch of the last batch that held the domid (duplicates)
    # When a domain shut down with a resumable reason was last seen so: the time and number
    # of the scan that did it, unless a full scan since (_last_full_*) is the later one.
    # Its cpu_time then is the slot's (a quiet record of it is one of a suspended domain).
    cdef double *_susp_seen
    cdef uint64_t *_susp_scan  # 0: no scan of this table saw it (loaded without one)
    cdef uint64_t *_touched    # scratch: (domid << 32 | record index + 1) of one diff
    cdef undo_entry *_undo     # scratch: see undo_entry
    cdef uint32_t _epoch
    cdef unsigned int _hi      # every present domid is below this
    cdef unsigned int _n_present
    cdef unsigned int _n_state[N_STATES]
    cdef uint32_t _gen_counter
    cdef unsigned long long _seq
    cdef dict _names
    cdef unsigned int _n_paused    # held paused and not dead
    cdef uint64_t _scan_no         # scans of this table, numbered from 2 (1: its making)
    cdef uint64_t _last_full_scan  # the last full scan (or prime) that had shut-down domains
    cdef double _last_full_time
    cdef double _window            # suspend_window

    cdef uint32_t _next_epoch(self) noexcept
    cdef uint32_t _validate(self, const unsigned char *base, Py_ssize_t size,
                            Py_ssize_t count) except 0
    cdef void _stamp_all(self, const unsigned char *base, Py_ssize_t count,
                         uint32_t epoch) noexcept
    cdef void _clear(self) noexcept
    cdef list _diff(self, const unsigned char *base, Py_ssize_t size, Py_ssize_t count,
                    object now, object unique_id, bint check_ids)
    cdef int _check_id(self, uint32_t domid, object unique_id) except -1
    cdef void _saw_all(self, double now) noexcept
    cdef list _diff_one(self, object domid, const unsigned char *base, Py_ssize_t size,
                        Py_ssize_t count, object now, object unique_id, bint check_ids)
    cdef int _prime(self, const unsigned char *base, Py_ssize_t size,
                    Py_ssize_t count) except -1
    cdef void _set_state(self, dom_entry *e, uint8_t state) noexcept
    cdef bint _suspended_seen(self, uint32_t domid, const dom_entry *e,
                              double *seen) noexcept
    cdef bint _ran_since_suspended(self, uint32_t domid, const dom_entry *e,
                                   uint64_t cpu) noexcept
    cdef bint _resumed(self, uint32_t domid, const dom_entry *e, uint32_t flags,
                       uint64_t cpu) noexcept
    cdef int _reason_dying(self, uint32_t domid, const dom_entry *e, uint32_t flags,
                           uint64_t cpu) noexcept
    cdef int _reason_gone(self, uint32_t domid, const dom_entry *e, double now) noexcept
    cdef object _suspend_fields(self, uint32_t domid, const dom_entry *e)
    cdef DomainTable _frozen(self)
    cdef list _dump_rows(self, unsigned int first, Py_ssize_t limit)
    cdef void _load_rows(self, list rows) except *
    cdef int _apply(self, uint32_t domid, const unsigned char *rec, double now,
                    list events, object unique_id) except -1
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


# The xenstore wire (fastcore/xswire.pxi): xs_wire.h's header size and payload limit, and
# XS_WATCH_EVENT's number (mux/xenstore/wire.py, checked against xs_wire.h by its tests).
cdef enum:
    XS_HEADER_SIZE = 16
    XS_PAYLOAD_MAX = 4096
    XS_TYPE_WATCH_EVENT = 15
