"""The xenstore wire protocol (xen/io/xs_wire.h), shared by our client and the sim's server.

A message is a 16-byte header `u32 type, req_id, tx_id, len` in native byte order followed by
`len` bytes of payload (at most XENSTORE_PAYLOAD_MAX). Payloads are NUL-separated strings.
"""

from __future__ import annotations

import enum
import errno as _errno
import struct
from dataclasses import dataclass


class XsdSockmsgType(enum.IntEnum):
    """`enum xsd_sockmsg_type`, numbered as in xs_wire.h (XS_RESTRICT, 20, was removed)."""

    XS_CONTROL = 0
    XS_DIRECTORY = 1
    XS_READ = 2
    XS_GET_PERMS = 3
    XS_WATCH = 4
    XS_UNWATCH = 5
    XS_TRANSACTION_START = 6
    XS_TRANSACTION_END = 7
    XS_INTRODUCE = 8
    XS_RELEASE = 9
    XS_GET_DOMAIN_PATH = 10
    XS_WRITE = 11
    XS_MKDIR = 12
    XS_RM = 13
    XS_SET_PERMS = 14
    XS_WATCH_EVENT = 15
    XS_ERROR = 16
    XS_IS_DOMAIN_INTRODUCED = 17
    XS_RESUME = 18
    XS_SET_TARGET = 19
    XS_RESET_WATCHES = 21
    XS_DIRECTORY_PART = 22
    # Added after 4.17 (Xen 4.19+): live-update features and quotas.
    XS_GET_FEATURE = 23
    XS_SET_FEATURE = 24
    XS_GET_QUOTA = 25
    XS_SET_QUOTA = 26

    XS_INVALID = 0xFFFF


globals().update(XsdSockmsgType.__members__)
XS_DEBUG = XsdSockmsgType.XS_CONTROL

XS_TYPE_COUNT_4_17 = 23  # number of valid types a 4.17 server knows

XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

# Watch depth (Xen 4.22): server feature bit answered by XS_GET_FEATURE.
XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2
XENSTORE_SERVER_FEATURE_WATCHDEPTH = 4

XS_WRITE_NONE = "NONE"
XS_WRITE_CREATE = "CREATE"
XS_WRITE_CREATE_EXCL = "CREATE|EXCL"

HEADER = struct.Struct("=IIII")
HEADER_SIZE = HEADER.size

# The errors xenstored sends by name, in the order of xs_wire.h's xsd_errors[].
XSD_ERRORS = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
)

SPECIAL_RELEASE = "@releaseDomain"
SPECIAL_INTRODUCE = "@introduceDomain"


class WireError(ValueError):
    """A frame that does not follow the protocol; the connection that sent it cannot go on."""


class XenstoreError(OSError):
    """An XS_ERROR reply: `errno` and the name the server sent."""

    def __init__(self, name: str, request: str = "") -> None:
        code = getattr(_errno, name, _errno.EIO)
        where = f" ({request})" if request else ""
        super().__init__(code, f"xenstored answered {name}{where}")
        self.name = name


@dataclass(frozen=True, slots=True)
class Message:
    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def encode(self) -> bytes:
        return encode(self.type, self.req_id, self.tx_id, self.payload)


def encode(msg_type: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    if len(payload) > XENSTORE_PAYLOAD_MAX:
        raise WireError(
            f"payload of {len(payload)} bytes is over the {XENSTORE_PAYLOAD_MAX}-byte limit"
        )
    return HEADER.pack(msg_type, req_id, tx_id, len(payload)) + payload


def decode_header(data: bytes) -> tuple[int, int, int, int]:
    """(type, req_id, tx_id, len) of a 16-byte header; rejects what no server may send."""
    if len(data) < HEADER_SIZE:
        raise WireError(f"short header: {len(data)} of {HEADER_SIZE} bytes")
    msg_type, req_id, tx_id, length = HEADER.unpack_from(data)
    if length > XENSTORE_PAYLOAD_MAX:
        raise WireError(f"payload length {length} is over the {XENSTORE_PAYLOAD_MAX}-byte limit")
    if msg_type not in _VALID_TYPES:
        raise WireError(f"unknown message type {msg_type}")
    return msg_type, req_id, tx_id, length


def decode(data: bytes) -> tuple[Message, int]:
    """Decode one message from the front of `data`: (message, bytes used).

    Raises WireError for a malformed frame, and `IncompleteError` when more bytes are needed.
    """
    if len(data) < HEADER_SIZE:
        raise IncompleteError(HEADER_SIZE - len(data))
    msg_type, req_id, tx_id, length = decode_header(data)
    end = HEADER_SIZE + length
    if len(data) < end:
        raise IncompleteError(end - len(data))
    return Message(msg_type, req_id, tx_id, bytes(data[HEADER_SIZE:end])), end


class IncompleteError(Exception):
    """More bytes are needed to decode a whole message."""

    def __init__(self, missing: int) -> None:
        super().__init__(f"{missing} more bytes needed")
        self.missing = missing


_VALID_TYPES = frozenset(int(t) for t in XsdSockmsgType)
_WATCH_EVENT = int(XsdSockmsgType.XS_WATCH_EVENT)


class FrameReader:
    """The reading half of a connection's wire state machine: frames out of a byte stream.

    `feed(data)` takes the bytes of one read, keeps an incomplete frame for the next, and
    hands each whole frame on in order: an XS_WATCH_EVENT to `on_watch(path, token)` (an
    exception it raises goes to `on_watch_error(path, token)`, called inside the handler,
    and the next frame is read), any other to `on_reply(type, req_id, payload)`, whose
    exceptions propagate. A malformed frame raises WireError. After `stop()` (the
    connection went down, maybe in a callback) the rest of the read is dropped.
    `dispatched` counts the watch events read so far.

    This is the reference, the executable specification of `mux._fast.XsReader`, which the
    client uses (the same frames, callbacks and errors: tests/unit/test_xswire.py).
    """

    __slots__ = ("_buf", "_on_reply", "_on_watch_error", "_stopped", "dispatched", "on_watch")

    def __init__(self, on_watch, on_reply, on_watch_error) -> None:
        self.on_watch = on_watch
        self._on_reply = on_reply
        self._on_watch_error = on_watch_error
        self._buf = b""
        self._stopped = False
        self.dispatched = 0

    @property
    def buffered(self) -> bytes:
        """The bytes of an incomplete frame, kept for the next read."""
        return self._buf

    def stop(self) -> None:
        self._stopped = True
        self._buf = b""

    def feed(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._buf:
            data = self._buf + data
        n = len(data)
        off = 0
        while n - off >= HEADER_SIZE:
            msg_type, req_id, _tx, length = decode_header(data[off : off + HEADER_SIZE])
            end = off + HEADER_SIZE + length
            if end > n:
                break
            payload = data[off + HEADER_SIZE : end]
            off = end
            if msg_type == _WATCH_EVENT:
                path, token = decode_watch_event(payload)
                self.dispatched += 1
                cb = self.on_watch
                if cb is not None:
                    try:
                        cb(path, token)
                    except Exception:
                        self._on_watch_error(path, token)
            else:
                self._on_reply(msg_type, req_id, payload)
            if self._stopped:  # a callback took the connection down
                self._buf = b""
                return
        self._buf = data[off:] if off else data


# Payload codecs -----------------------------------------------------------------------------


def join(*parts: str | bytes) -> bytes:
    """Strings each terminated by NUL, as most requests are sent."""
    out = bytearray()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        if b"\0" in b:
            raise WireError(f"a NUL inside a string field: {b!r}")
        out += b + b"\0"
    return bytes(out)


def split(payload: bytes, count: int | None = None) -> list[str]:
    """The NUL-terminated strings of a payload; with `count`, exactly that many are required."""
    if not payload.endswith(b"\0"):
        raise WireError(f"payload is not NUL-terminated: {payload[:40]!r}")
    parts = payload[:-1].split(b"\0")
    if count is not None and len(parts) != count:
        raise WireError(f"expected {count} NUL-terminated strings, got {len(parts)}")
    try:
        return [p.decode() for p in parts]
    except UnicodeDecodeError as exc:
        raise WireError(f"payload is not UTF-8: {exc}") from None


def encode_watch_event(path: str, token: str) -> bytes:
    return join(path, token)


def decode_watch_event(payload: bytes) -> tuple[str, str]:
    """(path, token) of a WATCH_EVENT; servers may append extra NUL-separated fields."""
    parts = split(payload)
    if len(parts) < 2:
        raise WireError("a watch event needs a path and a token")
    return parts[0], parts[1]


def encode_directory(names: list[str]) -> bytes:
    return b"".join(n.encode() + b"\0" for n in names)


def decode_directory(payload: bytes) -> list[str]:
    if not payload:
        return []
    return split(payload)


def encode_error(name: str) -> bytes:
    if name not in XSD_ERRORS:
        raise WireError(f"{name} is not an xsd error name")
    return join(name)


def decode_error(payload: bytes) -> str:
    name = split(payload, 1)[0]
    if name not in XSD_ERRORS:
        raise WireError(f"unknown error name {name!r}")
    return name


def decode_value(payload: bytes) -> bytes:
    """A READ reply is the raw value, with no terminating NUL."""
    return payload


def decode_ok(payload: bytes) -> None:
    if payload != b"OK\0":
        raise WireError(f"expected OK, got {payload[:40]!r}")


def decode_directory_part(payload: bytes) -> tuple[int, list[str], bool]:
    """(generation, names, complete) of a DIRECTORY_PART reply.

    The reply is `generation\\0name\\0name\\0...`; the final part ends with an extra NUL
    (an empty name), which marks the listing complete.
    """
    if not payload.endswith(b"\0"):
        raise WireError("DIRECTORY_PART reply is not NUL-terminated")
    gen_end = payload.index(b"\0")
    try:
        generation = int(payload[:gen_end])
    except ValueError:
        raise WireError(f"bad DIRECTORY_PART generation {payload[:gen_end]!r}") from None
    rest = payload[gen_end + 1 :]
    complete = rest.endswith(b"\0\0") or rest == b"\0"
    if complete:
        rest = rest[:-1]
    names = [n.decode() for n in rest[:-1].split(b"\0")] if rest else []
    return generation, names, complete


def encode_directory_part(generation: int, names: list[str], complete: bool) -> bytes:
    body = str(generation).encode() + b"\0" + encode_directory(names)
    if complete:
        body += b"\0"
    return body
