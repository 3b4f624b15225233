# The scanner's domain table and its diff (docs/protocol.md, "Event model"): one C slot
# per domid; an unchanged domain costs one compare of its slot and allocates nothing.
# Part of mux/_fast.pyx, after fastcore/events.pxi.

# The checks of a dump and of a suspend_window are the specification's own.
from mux import reference as _reference

# Snapshot states by ST_* code (ST_ABSENT has none), and back.
_STATES = (None, _protocol.RUNNING, _protocol.SHUTDOWN, _protocol.DEAD)
_STATE_CODES = {_STATES[i]: i for i in range(1, N_STATES)}


cdef inline bint _resumable(int reason) noexcept nogil:
    """A shutdown a resume can undo (mux.reference.RESUMABLE)."""
    return reason == XM_SHUTDOWN_SUSPEND or reason == XM_SHUTDOWN_SOFT_RESET


cdef inline bint _live_paused(const dom_entry *e) noexcept nogil:
    return (e.state == ST_RUNNING or e.state == ST_SHUTDOWN) and (e.flags & XM_DOMINF_PAUSED)


cdef object _reserved_domid(Py_ssize_t i, unsigned int domid):
    return ValueError(
        f"corrupt batch: record {i} has domid {domid} "
        f"(>= DOMID_FIRST_RESERVED {XM_DOMID_FIRST_RESERVED:#x})"
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
    cdef uint32_t flags = xm_ld32(p + XM_OFF_FLAGS)
    cdef uint64_t cpu = xm_ld64(p + XM_OFF_CPU_TIME)
    cdef unsigned int k
    if e.state == ST_ABSENT:
        return False
    if ((((flags ^ e.flags) & XM_EVENT_FLAGS_MASK)
            | (xm_ld64(p + XM_OFF_HANDLE) ^ e.h0)
            | (xm_ld64(p + XM_OFF_HANDLE + 8) ^ e.h1)
            | e.mark) != 0
            or cpu < e.cpu_time):
        return False
    if cpu != e.cpu_time or flags != e.flags:
        k = n_undo[0]
        undo[k].domid = xm_domid(p)
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
    cdef const unsigned char *end = base + count * XM_RECORD_SIZE
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
        domid = xm_domid(p)
        if domid >= XM_DOMID_FIRST_RESERVED:
            status = PASS_RESERVED
            break
        if <int>domid <= prev:
            r.stamped = True
            q = base
            while q < p:
                stamp[xm_domid(q)] = epoch
                q += XM_RECORD_SIZE
            break
        prev = domid
        e = &dom[domid]
        if not _quiet(e, p, undo, &n_undo):
            _note(r, touched, e, domid, (p - base) // XM_RECORD_SIZE)
        p += XM_RECORD_SIZE
    # From the first record out of order on: stamped.
    if status == PASS_OK and r.stamped:
        while p < end:
            domid = xm_domid(p)
            if domid >= XM_DOMID_FIRST_RESERVED:
                status = PASS_RESERVED
                break
            if stamp[domid] == epoch:
                status = PASS_DUPLICATE
                break
            stamp[domid] = epoch
            e = &dom[domid]
            if not _quiet(e, p, undo, &n_undo):
                _note(r, touched, e, domid, (p - base) // XM_RECORD_SIZE)
            p += XM_RECORD_SIZE
    if status != PASS_OK:
        r.bad_index = (p - base) // XM_RECORD_SIZE
        r.bad_domid = domid
        for k in range(n_undo):
            e = &dom[undo[k].domid]
            e.flags = undo[k].flags
            e.cpu_time = undo[k].cpu_time
    return status



cdef class DomainTable:
    """The scanner's table of domains: one C slot per domid, diffed against each batch."""

    def __cinit__(self, *args, **kwargs):
        self._dom = <dom_entry *>calloc(XM_DOMID_FIRST_RESERVED, sizeof(dom_entry))
        self._gen = <uint32_t *>calloc(XM_DOMID_FIRST_RESERVED, sizeof(uint32_t))
        self._uid = <uint64_t *>calloc(XM_DOMID_FIRST_RESERVED, sizeof(uint64_t))
        self._uid_read = <uint64_t *>calloc(XM_DOMID_FIRST_RESERVED, sizeof(uint64_t))
        self._stamp = <uint32_t *>calloc(XM_DOMID_FIRST_RESERVED, sizeof(uint32_t))
        # A diff touches (or overwrites) at most every valid domid once.
        self._touched = <uint64_t *>malloc(XM_DOMID_FIRST_RESERVED * sizeof(uint64_t))
        self._undo = <undo_entry *>malloc(XM_DOMID_FIRST_RESERVED * sizeof(undo_entry))
        self._susp_seen = <double *>calloc(XM_DOMID_FIRST_RESERVED, sizeof(double))
        self._susp_scan = <uint64_t *>calloc(XM_DOMID_FIRST_RESERVED, sizeof(uint64_t))
        if (self._dom is NULL or self._gen is NULL or self._stamp is NULL
                or self._touched is NULL or self._undo is NULL or self._susp_seen is NULL
                or self._susp_scan is NULL or self._uid is NULL or self._uid_read is NULL):
            raise MemoryError()
        self._names = {}
        self._scan_no = 1

    def __dealloc__(self):
        free(self._dom)
        free(self._gen)
        free(self._stamp)
        free(self._touched)
        free(self._undo)
        free(self._susp_seen)
        free(self._susp_scan)
        free(self._uid)
        free(self._uid_read)

    def __init__(self, seq=0, *, suspend_window=_reference.DEFAULT_SUSPEND_WINDOW):
        self._window = _reference.check_suspend_window(suspend_window)
        self._seq = seq

    # -- the table ----------------------------------------------------------------------

    @property
    def seq(self):
        """The last seq handed out."""
        return self._seq

    @property
    def suspend_window(self):
        return self._window

    @property
    def n_shutdown(self):
        """Domains shut down but not dead: while any exist, the daemon polls."""
        return self._n_state[ST_SHUTDOWN]

    @property
    def n_paused(self):
        """Domains held paused and not dead: an unpause fires nothing either."""
        return self._n_paused

    def counts(self):
        return {
            _STATES[ST_RUNNING]: self._n_state[ST_RUNNING],
            _STATES[ST_SHUTDOWN]: self._n_state[ST_SHUTDOWN],
            _STATES[ST_DEAD]: self._n_state[ST_DEAD],
        }

    def __len__(self):
        return self._n_present

    def __contains__(self, domid):
        if not isinstance(domid, int) or not 0 <= domid < XM_DOMID_FIRST_RESERVED:
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
                             if isinstance(x, int) and 0 <= x < XM_DOMID_FIRST_RESERVED})
        for x in wanted:
            d = x
            e = &self._dom[d]
            if e.state == ST_ABSENT:
                continue
            row = {"domid": d, "uuid": _uuid_text(<const unsigned char *>&e.h0)}
            if self._uid[d]:
                row[_protocol.INCARNATION] = f"{self._uid[d]:016x}"
            row["state"] = _STATES[e.state]
            row["reason"] = _REASON_NAMES[e.reason]
            row["name"] = self._names.get(d)
            row["paused"] = _live_paused(e)
            out.append(row)
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
            suspend_cpu, suspend_seen = self._suspend_fields(d, e)
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
                "suspend_cpu": suspend_cpu,
                "suspend_seen": suspend_seen,
                "unique_id": self._uid[d] or None,
            })
        return out

    # -- the journal's checkpoint ---------------------------------------------------------

    def dump(self):
        """Everything the diff needs to go on exactly as this table would, as JSON values."""
        return {"seq": self._seq, "gen": self._gen_counter,
                "rows": self._dump_rows(0, XM_DOMID_FIRST_RESERVED)}

    def dump_batches(self, Py_ssize_t batch=_reference.DUMP_BATCH):
        """`dump()` as it is now, its rows `batch` at a time, from a copy of the slots (about
        60 bytes a domain) rather than every row at once (about 500): the checkpoint is
        encoded in a thread while scans go on, and at 32,000 domains a whole dump was 16 MB
        of the daemon's peak."""
        if batch < 1:
            raise ValueError(f"a dump batch holds at least one row, not {batch}")
        return _reference.DumpBatches(
            {"seq": self._seq, "gen": self._gen_counter},
            _dump_batches_of(self._frozen(), batch))

    cdef DomainTable _frozen(self):
        """What dump() reads of this table, copied: the slots below _hi and the names."""
        cdef DomainTable t = DomainTable.__new__(DomainTable)
        cdef size_t n = self._hi
        memcpy(t._dom, self._dom, n * sizeof(dom_entry))
        memcpy(t._gen, self._gen, n * sizeof(uint32_t))
        memcpy(t._uid, self._uid, n * sizeof(uint64_t))
        memcpy(t._susp_seen, self._susp_seen, n * sizeof(double))
        memcpy(t._susp_scan, self._susp_scan, n * sizeof(uint64_t))
        t._hi = self._hi
        t._seq = self._seq
        t._gen_counter = self._gen_counter
        t._names = dict(self._names)
        t._scan_no = self._scan_no
        t._last_full_scan = self._last_full_scan
        t._last_full_time = self._last_full_time
        t._window = self._window
        return t

    cdef list _dump_rows(self, unsigned int first, Py_ssize_t limit):
        """dump()'s rows of the present domids from `first` on, at most `limit` of them."""
        cdef unsigned int d
        cdef dom_entry *e
        rows = []
        for d in range(first, self._hi):
            e = &self._dom[d]
            if e.state == ST_ABSENT:
                continue
            if len(rows) == limit:
                break
            suspend_cpu, suspend_seen = self._suspend_fields(d, e)
            rows.append(_reference.dump_row(
                d, _uuid_text(<const unsigned char *>&e.h0), e.flags, e.cpu_time,
                self._gen[d], _STATES[e.state], e.reason, self._names.get(d), suspend_cpu,
                suspend_seen, self._uid[d]))
        return rows

    @classmethod
    def load(cls, dump, *, suspend_window=_reference.DEFAULT_SUSPEND_WINDOW):
        """The table a `dump()` was taken of (ValueError naming what is wrong with a bad one)."""
        seq, gen, rows = _reference.parse_dump(dump)
        cdef DomainTable table = cls(seq, suspend_window=suspend_window)
        table._gen_counter = gen
        table._load_rows(rows)
        return table

    cdef void _load_rows(self, list rows) except *:
        cdef unsigned int d
        cdef dom_entry *e
        cdef bytes handle
        for row in rows:
            d = row.domid
            e = &self._dom[d]
            handle = row.handle
            memcpy(&e.h0, <const char *>handle, 8)
            memcpy(&e.h1, (<const char *>handle) + 8, 8)
            e.flags = row.flags
            e.cpu_time = row.cpu_time
            e.state = _STATE_CODES[row.state]
            e.reason = row.reason_code
            self._gen[d] = row.gen
            self._uid[d] = row.unique_id
            if row.name is not None:
                self._names[d] = row.name
            if row.suspend_seen is not None:
                # Seen suspended before this table was made (scan 1).
                self._susp_seen[d] = row.suspend_seen
                self._susp_scan[d] = 1
            self._n_state[e.state] += 1
            self._n_present += 1
            self._n_paused += _live_paused(e)
            if d >= self._hi:
                self._hi = d + 1

    def transient(self, domid, uuid, name, now=None):
        """`new` and `death`, both flagged transient, for a domain that came and went between
        two scans (known only from xenstore). They take the next seqs; the table is unchanged.
        """
        _reference.check_domid(domid)
        if name is not None and not isinstance(name, str):
            raise TypeError("name must be a str or None")
        if not isinstance(uuid, str):
            raise TypeError("uuid must be a str")
        t = _time.time() if now is None else now
        born = Event(self._seq + 1, _protocol.NEW, domid, uuid, None, t, name, transient=True)
        died = Event(self._seq + 2, _protocol.DEATH, domid, uuid, None, t, name, transient=True)
        self._seq += 2
        return [born, died]

    # -- internals ----------------------------------------------------------------------

    cdef uint32_t _next_epoch(self) noexcept:
        cdef unsigned int d
        self._epoch += 1
        if self._epoch == 0:  # wrapped: forget every old stamp
            memset(self._stamp, 0, XM_DOMID_FIRST_RESERVED * sizeof(uint32_t))
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
            domid = xm_domid(base + i * XM_RECORD_SIZE)
            if domid >= XM_DOMID_FIRST_RESERVED:
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
            self._stamp[xm_domid(base + i * XM_RECORD_SIZE)] = epoch

    cdef void _clear(self) noexcept:
        cdef unsigned int d
        for d in range(self._hi):
            self._dom[d].state = ST_ABSENT
        self._hi = 0
        self._n_present = 0
        self._n_paused = 0
        memset(self._n_state, 0, sizeof(self._n_state))
        self._names.clear()

    cdef Event _emit(self, int kind, uint32_t domid, const dom_entry *e, int reason,
                     double now, list events):
        cdef Event ev = Event.__new__(Event)
        self._seq += 1
        ev.seq = self._seq
        ev._kind = kind
        ev.domid = domid
        memcpy(ev._handle, &e.h0, XM_HANDLE_SIZE)
        ev._reason = reason
        ev._flags = 0
        ev._uid = self._uid[domid]
        ev.time = now
        if self._names:
            ev._name = self._names.get(domid)
        events.append(ev)
        return ev

    cdef void _set_state(self, dom_entry *e, uint8_t state) noexcept:
        self._n_state[e.state] -= 1
        self._n_state[state] += 1
        e.state = state

    # -- the rules of the event model (mux/reference.py says them in Python) ---------------

    cdef bint _suspended_seen(self, uint32_t domid, const dom_entry *e,
                              double *seen) noexcept:
        """Whether a scan saw `e` shut down as it is now (resumable), and when: the scan
        that last applied its record, or the last full scan if later (quiet records are
        not applied: being quiet, they showed it just so)."""
        cdef uint64_t scan = self._susp_scan[domid]
        if e.state != ST_SHUTDOWN or not _resumable(e.reason):
            return False
        if scan >= self._last_full_scan:
            if scan == 0:
                return False
            seen[0] = self._susp_seen[domid]
        else:
            seen[0] = self._last_full_time
        return True

    cdef bint _ran_since_suspended(self, uint32_t domid, const dom_entry *e,
                                   uint64_t cpu) noexcept:
        """A dying record's cpu_time past the one seen while suspended (the slot's)."""
        cdef double seen
        return self._suspended_seen(domid, e, &seen) and cpu > e.cpu_time

    cdef bint _resumed(self, uint32_t domid, const dom_entry *e, uint32_t flags,
                       uint64_t cpu) noexcept:
        """Whether the record of a shut-down domain proves a resume since the last scan."""
        cdef int rreason = (flags >> XM_DOMINF_SHUTDOWNSHIFT) & XM_DOMINF_SHUTDOWNMASK
        if flags & XM_DOMINF_SHUTDOWN:
            # Xen keeps the first reason until a resume resets it.
            if rreason != e.reason:
                return True
            return (flags & XM_DOMINF_DYING) != 0 and self._ran_since_suspended(domid, e, cpu)
        if flags & XM_DOMINF_DYING:
            return self._ran_since_suspended(domid, e, cpu)
        return True

    cdef int _reason_dying(self, uint32_t domid, const dom_entry *e, uint32_t flags,
                           uint64_t cpu) noexcept:
        """The reason a domain dies with, its record (dying) at hand."""
        cdef double seen
        if e.state != ST_SHUTDOWN:
            return XM_SHUTDOWN_NONE
        if not _resumable(e.reason) or (flags & XM_DOMINF_SHUTDOWN):
            return e.reason
        if self._suspended_seen(domid, e, &seen) and cpu == e.cpu_time:
            return e.reason
        return XM_SHUTDOWN_NONE

    cdef int _reason_gone(self, uint32_t domid, const dom_entry *e, double now) noexcept:
        """The reason a domain dies with, its record gone."""
        cdef double seen
        if e.state != ST_SHUTDOWN:
            return XM_SHUTDOWN_NONE
        if not _resumable(e.reason):
            return e.reason
        if self._suspended_seen(domid, e, &seen) and now - seen <= self._window:
            return e.reason
        return XM_SHUTDOWN_NONE

    cdef object _suspend_fields(self, uint32_t domid, const dom_entry *e):
        """(suspend_cpu, suspend_seen) as rows() and dump() give them."""
        cdef double seen
        if self._suspended_seen(domid, e, &seen):
            return e.cpu_time, seen
        return None, None

    cdef int _apply(self, uint32_t domid, const unsigned char *rec, double now,
                    list events, object unique_id) except -1:
        """One domain's events for this scan, in their order; its slot is updated.

        `rec` is its record, or NULL when it is gone.
        """
        cdef dom_entry *e = &self._dom[domid]
        cdef uint32_t flags = 0
        cdef uint64_t cpu = 0, h0 = 0, h1 = 0
        cdef int reason
        cdef uint8_t rreason
        cdef bint was_paused = _live_paused(e)
        cdef uint64_t uid = 0
        cdef Event ev
        if e.mark:
            uid = self._uid_read[domid]
            e.mark = 0
        if rec is not NULL:
            flags = xm_ld32(rec + XM_OFF_FLAGS)
            cpu = xm_ld64(rec + XM_OFF_CPU_TIME)
            h0 = xm_ld64(rec + XM_OFF_HANDLE)
            h1 = xm_ld64(rec + XM_OFF_HANDLE + 8)

        if e.state != ST_ABSENT and (
            rec is NULL or (uid != 0 and self._uid[domid] != 0 and uid != self._uid[domid])
            or h0 != e.h0 or h1 != e.h1 or cpu < e.cpu_time
            or (e.state == ST_DEAD and not (flags & XM_DOMINF_DYING))
        ):
            # The incarnation we knew is over: it dies (unless it already did) and its
            # record has left the list (even if the domid is already back).
            if e.state != ST_DEAD:
                self._emit(EV_DEATH, domid, e, self._reason_gone(domid, e, now), now, events)
            self._emit(EV_RELEASED, domid, e, XM_SHUTDOWN_NONE, now, events)
            self._n_state[e.state] -= 1
            self._n_present -= 1
            e.state = ST_ABSENT
            if self._names:
                self._names.pop(domid, None)
        if rec is NULL:
            self._n_paused -= was_paused
            return 0

        if e.state != ST_ABSENT and uid != 0 and self._uid[domid] == 0:
            self._uid[domid] = uid  # the same incarnation, its id first read now
        if e.state == ST_ABSENT:
            if uid == 0 and unique_id is not None:
                uid = _reference._read_id(unique_id, domid)
            self._uid[domid] = uid
            e.h0 = h0
            e.h1 = h1
            e.flags = flags
            e.cpu_time = cpu
            e.state = ST_RUNNING
            e.reason = XM_SHUTDOWN_NONE
            self._n_state[ST_RUNNING] += 1
            self._n_present += 1
            if domid >= self._hi:
                self._hi = domid + 1
            self._gen_counter += 1
            self._gen[domid] = self._gen_counter
            ev = self._emit(EV_NEW, domid, e, XM_SHUTDOWN_NONE, now, events)
            if flags & XM_DOMINF_PAUSED:
                ev._flags = EVF_PAUSED

        if e.state != ST_DEAD:
            if e.state == ST_SHUTDOWN and self._resumed(domid, e, flags, cpu):
                self._set_state(e, ST_RUNNING)
                e.reason = XM_SHUTDOWN_NONE
                self._emit(EV_RESUMED, domid, e, XM_SHUTDOWN_NONE, now, events)
            if (flags & XM_DOMINF_SHUTDOWN) and e.state != ST_SHUTDOWN:
                rreason = (flags >> XM_DOMINF_SHUTDOWNSHIFT) & XM_DOMINF_SHUTDOWNMASK
                self._set_state(e, ST_SHUTDOWN)
                e.reason = rreason
                self._emit(EV_SHUTDOWN, domid, e, rreason, now, events)
            if flags & XM_DOMINF_DYING:
                reason = self._reason_dying(domid, e, flags, cpu)
                self._set_state(e, ST_DEAD)
                e.reason = <uint8_t>reason
                self._emit(EV_DEATH, domid, e, reason, now, events)
            elif (flags ^ e.flags) & XM_DOMINF_PAUSED:
                self._emit(EV_PAUSED if flags & XM_DOMINF_PAUSED else EV_UNPAUSED, domid, e,
                           XM_SHUTDOWN_NONE, now, events)

        e.flags = flags
        e.cpu_time = cpu
        if e.state == ST_SHUTDOWN and _resumable(e.reason):
            self._susp_seen[domid] = now
            self._susp_scan[domid] = self._scan_no
        self._n_paused += <int>_live_paused(e) - <int>was_paused
        return 0

    # -- loading and diffing --------------------------------------------------------------

    def prime(self, buffer, Py_ssize_t count, now=None, *, unique_id=None):
        """Replace the table with the batch, without events (the start-up scan); with
        `unique_id`, every domain's id is read (in domid order)."""
        cdef Py_buffer view
        cdef double t = _time.time() if now is None else now
        cdef unsigned int d
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        try:
            self._prime(<const unsigned char *>view.buf, view.len, count)
        finally:
            PyBuffer_Release(&view)
        for d in range(self._hi):
            if self._dom[d].state != ST_ABSENT:
                self._uid[d] = 0 if unique_id is None else _reference._read_id(unique_id, d)
        # Every domain was seen: those suspended, at `t`.
        self._scan_no += 1
        self._last_full_scan = self._scan_no
        self._last_full_time = t

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
            p = base + i * XM_RECORD_SIZE
            domid = xm_domid(p)
            flags = xm_ld32(p + XM_OFF_FLAGS)
            e = &self._dom[domid]
            e.h0 = xm_ld64(p + XM_OFF_HANDLE)
            e.h1 = xm_ld64(p + XM_OFF_HANDLE + 8)
            e.flags = flags
            e.cpu_time = xm_ld64(p + XM_OFF_CPU_TIME)
            if flags & XM_DOMINF_DYING:
                e.state = ST_DEAD
            elif flags & XM_DOMINF_SHUTDOWN:
                e.state = ST_SHUTDOWN
            else:
                e.state = ST_RUNNING
            if flags & XM_DOMINF_SHUTDOWN:
                e.reason = (flags >> XM_DOMINF_SHUTDOWNSHIFT) & XM_DOMINF_SHUTDOWNMASK
            else:
                e.reason = XM_SHUTDOWN_NONE
            self._n_state[e.state] += 1
            self._n_present += 1
            self._n_paused += _live_paused(e)
            if domid >= self._hi:
                self._hi = domid + 1
        # Incarnation numbers in domid order, whatever the order of the records.
        for domid in range(self._hi):
            if self._dom[domid].state != ST_ABSENT:
                self._gen_counter += 1
                self._gen[domid] = self._gen_counter
        return 0

    def diff(self, buffer, Py_ssize_t count, now=None, *, unique_id=None, check_ids=False):
        """A full scan: the batch holds every domain; those missing from it are gone.

        Returns the events in domid order (one domain's in their own order), with seq
        numbers following `self.seq`. A corrupt batch raises ValueError and changes nothing.
        With `unique_id`, the id of every incarnation taken in is read; with `check_ids`
        too, first the ids of the batch's domains the table holds (in the batch's order).
        """
        cdef Py_buffer view
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        try:
            return self._diff(<const unsigned char *>view.buf, view.len, count, now,
                              unique_id, check_ids)
        finally:
            PyBuffer_Release(&view)

    cdef int _check_id(self, uint32_t domid, object unique_id) except -1:
        """Read the id of a domain the table holds; the diff applies it (the slot's mark
        takes it off the quiet path)."""
        cdef uint64_t uid = _reference._read_id(unique_id, domid)
        if uid != 0:
            self._uid_read[domid] = uid
            self._dom[domid].mark = 1
        return 0

    cdef list _diff(self, const unsigned char *base, Py_ssize_t size, Py_ssize_t count,
                    object now, object unique_id, bint check_ids):
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

        if check_ids and unique_id is not None:
            # Checked before any id is read, as the reference does (and rarely: the scans
            # that may find a domid reused behind an unchanged record).
            self._validate(base, size, count)
            try:
                for i in range(count):
                    domid = xm_domid(base + i * XM_RECORD_SIZE)
                    if dom[domid].state != ST_ABSENT:
                        self._check_id(domid, unique_id)
            except BaseException:
                for i in range(count):
                    dom[xm_domid(base + i * XM_RECORD_SIZE)].mark = 0
                raise
        _check_count(size, count)
        epoch = self._next_epoch()
        status = _diff_pass(base, count, dom, self._stamp, epoch, touched, self._undo, &r)
        if status == PASS_RESERVED:
            raise _reserved_domid(r.bad_index, r.bad_domid)
        if status == PASS_DUPLICATE:
            raise _duplicate_domid(r.bad_index, r.bad_domid)

        # The batch is valid: from here on, nothing can fail half-way.
        self._scan_no += 1
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
            if self._n_state[ST_SHUTDOWN]:
                self._saw_all(_time.time() if now is None else now)
            return []
        if not r.ordered:
            qsort(touched, r.n, sizeof(uint64_t), xm_cmp_u64)
        t = _time.time() if now is None else now
        events = []
        for i in range(r.n):
            key = touched[i]
            domid = <unsigned int>(key >> 32)
            i_rec = <Py_ssize_t>(<uint32_t>key)
            self._apply(domid, base + (i_rec - 1) * XM_RECORD_SIZE if i_rec else NULL, t, events,
                        unique_id)
        if self._n_present == 0:
            self._hi = 0
        if self._n_state[ST_SHUTDOWN]:
            self._saw_all(t)
        return events

    cdef void _saw_all(self, double now) noexcept:
        """A full scan at `now` saw every domain shut down (the quiet ones as they were)."""
        self._last_full_scan = self._scan_no
        self._last_full_time = now

    def diff_one(self, domid, buffer, Py_ssize_t count, now=None, *, unique_id=None,
                 check_ids=False):
        """A targeted scan of one domid, from getinfolist(first=domid, max>=1).

        Records of other domids in the batch are ignored; if none has `domid`, it is gone.
        `unique_id` and `check_ids` as for `diff`, for `domid` alone.
        """
        cdef Py_buffer view
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        try:
            return self._diff_one(domid, <const unsigned char *>view.buf, view.len, count, now,
                                  unique_id, check_ids)
        finally:
            PyBuffer_Release(&view)

    cdef list _diff_one(self, object domid, const unsigned char *base, Py_ssize_t size,
                        Py_ssize_t count, object now, object unique_id, bint check_ids):
        cdef const unsigned char *rec = NULL
        cdef Py_ssize_t i
        cdef unsigned int target
        cdef list events = []
        if not 0 <= domid < XM_DOMID_FIRST_RESERVED:
            raise ValueError(f"domid {domid} out of range 0..{XM_DOMID_FIRST_RESERVED - 1}")
        target = domid
        self._validate(base, size, count)
        self._scan_no += 1
        for i in range(count):
            if xm_domid(base + i * XM_RECORD_SIZE) == target:
                rec = base + i * XM_RECORD_SIZE
                break
        if rec is NULL and self._dom[target].state == ST_ABSENT:
            return events
        if (check_ids and unique_id is not None and rec is not NULL
                and self._dom[target].state != ST_ABSENT):
            self._check_id(target, unique_id)
        self._apply(target, rec, _time.time() if now is None else now, events, unique_id)
        return events


def _dump_batches_of(DomainTable frozen, Py_ssize_t batch):
    """The rows of a frozen copy's dump, `batch` at a time (DomainTable.dump_batches)."""
    cdef unsigned int first = 0
    while True:
        rows = frozen._dump_rows(first, batch)
        if not rows:
            return
        first = rows[len(rows) - 1]["domid"] + 1  # no wraparound in this module
        yield rows
