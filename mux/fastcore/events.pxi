# The events of the event model (docs/architecture.md) and their JSON frames
# (docs/protocol.md), encoded in C: the same bytes as mux.reference.Event.frame().
# Part of mux/_fast.pyx.

from mux import protocol as _protocol
from mux.reference import parse_incarnation as _parse_incarnation


def _check_event_kinds(kinds):
    """ImportError naming the difference between the C enum of event kinds (EV_* in
    mux/_fast.pxd) and `kinds` (mux.protocol.EVENT_KINDS): a kind's code is its index there."""
    kinds = tuple(kinds)
    ours = tuple(_C_EVENT_KINDS[code] for code in range(N_EVENT_KINDS))
    if kinds == ours:
        return
    if len(kinds) != len(ours):
        missing = [k for k in kinds if k not in ours]
        extra = [k for k in ours if k not in kinds]
        detail = (f"mux.protocol has {len(kinds)} event kinds, the C enum {len(ours)}"
                  + (f"; not in the C enum: {', '.join(missing)}" if missing else "")
                  + (f"; only in the C enum: {', '.join(extra)}" if extra else ""))
    else:
        i = next(i for i in range(len(kinds)) if kinds[i] != ours[i])
        detail = (f"event kind {i} is {kinds[i]!r} in mux.protocol but {ours[i]!r} "
                  "in the C enum")
    raise ImportError(
        f"{__name__}: {detail}: the EV_* enum of mux/_fast.pxd (and _C_EVENT_KINDS in "
        "mux/fastcore/events.pxi) must follow mux.protocol.EVENT_KINDS, in order; a new kind "
        "also needs its rules in the table's diff. Change them, then rebuild"
    )


# What each member of the EV_* enum stands for.
_C_EVENT_KINDS = {
    EV_NEW: _protocol.NEW,
    EV_SHUTDOWN: _protocol.SHUTDOWN,
    EV_RESUMED: _protocol.RESUMED,
    EV_DEATH: _protocol.DEATH,
    EV_RELEASED: _protocol.RELEASED,
    EV_PAUSED: _protocol.PAUSED,
    EV_UNPAUSED: _protocol.UNPAUSED,
}
_check_event_kinds(_protocol.EVENT_KINDS)

_KINDS = _protocol.EVENT_KINDS
_KIND_CODES = {k: i for i, k in enumerate(_KINDS)}
# The kinds' names as C strings for the encoder, kept alive by _KIND_BYTES.
_KIND_BYTES = tuple(k.encode("ascii") for k in _KINDS)
cdef const char *_KIND_C[N_EVENT_KINDS]
for _i in range(N_EVENT_KINDS):
    _KIND_C[_i] = _KIND_BYTES[_i]
# Indexed by reason code: the name (None for 255 and codes Xen does not define) and the
# piece of frame that carries it.
_REASON_NAMES = tuple(_records.reason_name(code) for code in range(256))
_REASON_PIECES = tuple(
    b"" if n is None else (', "reason": "%s"' % n).encode("ascii") for n in _REASON_NAMES
)


# The piece of frame that opens an incarnation's text: its key is mux.protocol's.
cdef bytes _INCARNATION_PIECE = (', "%s": "' % _protocol.INCARNATION).encode("ascii")


cdef inline char *_put_hex16(char *p, uint64_t v) noexcept:
    """`v` as 16 lowercase hex digits (an incarnation's text)."""
    cdef int i
    for i in range(16):
        p[15 - i] = b"0123456789abcdef"[v & 15]
        v >>= 4
    return p + 16


cdef inline str _uuid_text(const unsigned char *handle):
    cdef char text[36]
    xm_uuid_format(handle, text)
    return text[:36].decode("ascii")



cdef inline bint _flag_value(object value, str what) except -1:
    if not isinstance(value, bool):
        raise TypeError(f"Event.{what} must be a bool")
    return value


@cython.freelist(512)
@cython.no_gc  # holds only str, bytes and None: no cycles, so no GC tracking (mass events)
cdef class Event:
    """One change of one domain incarnation. `frame()` is its JSON line, encoded once."""

    def __init__(self, seq, kind, domid, uuid, reason, time, name=None, *, paused=False,
                 late=False, transient=False, incarnation=None):
        import uuid as _uuid_mod

        if kind not in _KIND_CODES:
            raise ValueError(f"unknown event kind {kind!r}")
        if _flag_value(paused, "paused") and kind != _protocol.NEW:
            raise ValueError("only a `new` event carries paused")
        self.seq = seq
        self._kind = _KIND_CODES[kind]
        self.domid = domid
        cdef bytes handle = _uuid_mod.UUID(uuid).bytes
        memcpy(self._handle, <const char *>handle, XM_HANDLE_SIZE)
        self._reason = XM_SHUTDOWN_NONE if reason is None else _records.REASON_CODES[reason]
        self.time = time
        self._flags = EVF_PAUSED if paused else 0
        self._uid = 0 if incarnation is None else _parse_incarnation(incarnation)
        self.name = name
        self.late = late
        self.transient = transient

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

    @property
    def paused(self):
        """On `new`: the domain was paused when first seen (as every domain is built)."""
        return (self._flags & EVF_PAUSED) != 0

    @property
    def incarnation(self):
        """The hypervisor's unique id of the incarnation (16 hex digits), where known."""
        return None if self._uid == 0 else f"{self._uid:016x}"

    @property
    def late(self):
        """Found by the first scan after a restart: it happened while the daemon was down."""
        return (self._flags & EVF_LATE) != 0

    @late.setter
    def late(self, value):
        self._set_flag(EVF_LATE, value, "late")

    @property
    def transient(self):
        """Half of a `new` + `death` pair for a domain that came and went between two scans."""
        return (self._flags & EVF_TRANSIENT) != 0

    @transient.setter
    def transient(self, value):
        self._set_flag(EVF_TRANSIENT, value, "transient")

    cdef void _set_flag(self, int flag, object value, str what) except *:
        if self._frame is not None:
            raise AttributeError(f"Event.{what} cannot change once frame() has been taken")
        if _flag_value(value, what):
            self._flags |= flag
        else:
            self._flags &= ~flag

    def to_dict(self):
        """The frame's fields as a dict (same keys, same order; `time` unrounded)."""
        d = {"seq": self.seq, "event": _KINDS[self._kind], "domid": self.domid,
             "uuid": _uuid_text(self._handle)}
        if self._uid:
            d[_protocol.INCARNATION] = f"{self._uid:016x}"
        if _REASON_NAMES[self._reason] is not None:
            d["reason"] = _REASON_NAMES[self._reason]
        if self._name is not None:
            d["name"] = self._name
        if self._flags & EVF_PAUSED:
            d["paused"] = True
        if self._flags & EVF_LATE:
            d["late"] = True
        if self._flags & EVF_TRANSIENT:
            d["transient"] = True
        d["time"] = self.time
        return d

    def frame(self):
        """The event's JSON line (ending in a newline), encoded on first use and cached."""
        if self._frame is None:
            self._frame = self._encode()
        return self._frame

    cdef bytes _encode(self):
        # {"seq": N, "event": "K", "domid": D, "uuid": "U"[, "incarnation": "I"]
        #  [, "reason": "R"][, "name": J]
        #  [, "paused": true][, "late": true][, "transient": true], "time": T.TTTTTT}\n
        # -- the same bytes as reference.Event.frame().
        cdef char head[192]
        cdef char tail[480]
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
        p += 1
        if self._uid:
            p = xm_put(p, PyBytes_AS_STRING(_INCARNATION_PIECE),
                       PyBytes_GET_SIZE(_INCARNATION_PIECE))
            p = _put_hex16(p, self._uid)
            p[0] = b'"'
            p += 1
        nhead = p - head
        if self._flags:
            if self._flags & EVF_PAUSED:
                q = xm_put(q, b', "paused": true', 16)
            if self._flags & EVF_LATE:
                q = xm_put(q, b', "late": true', 14)
            if self._flags & EVF_TRANSIENT:
                q = xm_put(q, b', "transient": true', 19)
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
