# The xenstore client's reading half in C: frames cut out of the byte stream and watch events
# dispatched, as asyncpg keeps its wire state machine in Cython. mux/xenstore/wire.py's
# FrameReader is the reference (the same frames, callbacks and errors:
# tests/unit/test_xswire.py); whatever is not the usual case (a bad header, a watch event
# that is not two or more NUL-terminated ASCII strings) is handed to the reference's own
# decoders, so an error is raised with the reference's exact words.

from cpython.unicode cimport PyUnicode_DecodeASCII

from mux.xenstore import wire as _wire

cdef inline bint _xs_type_valid(uint32_t t) noexcept nogil:
    # XsdSockmsgType: 0-19, 21-26 and XS_INVALID (checked against it at import).
    return (t <= 26 and t != 20) or t == 0xFFFF


def _check_xs_types(valid) -> None:
    """Refuse to load when the C check of message types and wire.XsdSockmsgType differ."""
    cdef uint32_t t
    mine = {t for t in range(0x10000) if _xs_type_valid(t)}
    if mine != set(valid):
        raise ImportError(
            f"mux._fast: its xenstore message types {sorted(mine ^ set(valid))} differ from "
            "mux.xenstore.wire.XsdSockmsgType"
        )


_check_xs_types(_wire._VALID_TYPES)


@cython.final
cdef class XsReader:
    """mux.xenstore.wire.FrameReader in C: `feed(data)` hands each whole frame of the
    stream on, `on_watch(path, token)` for a watch event (an exception goes to
    `on_watch_error(path, token)`), `on_reply(type, req_id, payload)` for the rest; a bad
    frame raises wire.WireError; `stop()` drops the rest; `dispatched` counts watch events."""

    cdef bytes _buf
    cdef public object on_watch
    cdef object _on_reply
    cdef object _on_watch_error
    cdef bint _stopped
    cdef public unsigned long long dispatched

    def __init__(self, on_watch, on_reply, on_watch_error):
        self.on_watch = on_watch
        self._on_reply = on_reply
        self._on_watch_error = on_watch_error
        self._buf = b""
        self._stopped = False
        self.dispatched = 0

    @property
    def buffered(self) -> bytes:
        return self._buf

    def stop(self):
        self._stopped = True
        self._buf = b""

    def feed(self, data):
        cdef bytes buf
        cdef const unsigned char *p
        cdef Py_ssize_t n, off, end
        cdef uint32_t head[4]
        if self._stopped:
            return
        if type(data) is not bytes:
            data = bytes(data)
        buf = (self._buf + data) if self._buf else data
        p = <const unsigned char *>PyBytes_AS_STRING(buf)
        n = PyBytes_GET_SIZE(buf)
        off = 0
        while n - off >= XS_HEADER_SIZE:
            memcpy(head, p + off, XS_HEADER_SIZE)
            if head[3] > XS_PAYLOAD_MAX or not _xs_type_valid(head[0]):
                _wire.decode_header(buf[off : off + XS_HEADER_SIZE])  # raises its WireError
            end = off + XS_HEADER_SIZE + head[3]
            if end > n:
                break
            if head[0] == XS_TYPE_WATCH_EVENT:
                path, token = _watch_strings(buf, p + off + XS_HEADER_SIZE, head[3], off)
                off = end
                self.dispatched += 1
                cb = self.on_watch
                if cb is not None:
                    try:
                        cb(path, token)
                    except Exception:
                        self._on_watch_error(path, token)
            else:
                payload = buf[off + XS_HEADER_SIZE : end]
                off = end
                self._on_reply(head[0], head[1], payload)
            if self._stopped:  # a callback took the connection down
                self._buf = b""
                return
        self._buf = buf[off:] if off else buf


cdef tuple _watch_strings(bytes buf, const unsigned char *q, Py_ssize_t length, Py_ssize_t off):
    """(path, token) of a watch event's payload at q: the usual case (two or more
    NUL-terminated ASCII strings) here, anything else by the reference decoder."""
    cdef Py_ssize_t i, first = -1, second = -1
    cdef unsigned char c = 0
    if length == 0 or q[length - 1] != 0:
        return _reference_watch(buf, off, length)
    for i in range(length):
        c |= q[i]
        if q[i] == 0:
            if first < 0:
                first = i
            elif second < 0:
                second = i
    if c >= 0x80 or second < 0:
        return _reference_watch(buf, off, length)
    return (
        PyUnicode_DecodeASCII(<const char *>q, first, NULL),
        PyUnicode_DecodeASCII(<const char *>q + first + 1, second - first - 1, NULL),
    )


cdef tuple _reference_watch(bytes buf, Py_ssize_t off, Py_ssize_t length):
    start = off + XS_HEADER_SIZE
    return tuple(_wire.decode_watch_event(buf[start : start + length]))
