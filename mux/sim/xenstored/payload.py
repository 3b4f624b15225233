"""A request's payload read as C xenstored reads it, and the error a handler raises.

C parses arguments with get_strings(), onearg(), atoi() and strtol(); the sim keeps their
quirks (bytes after the last NUL ignored, atoi's leading-number rule) because clients and
the conformance recording see them.
"""

from __future__ import annotations

import re

OK = b"OK\0"

_ATOI = re.compile(rb"\s*([+-]?\d+)")
_STRTOL = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)")


class XsError(Exception):
    """A request failed: the reply is XS_ERROR with this errno name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def c_atoi(text: bytes) -> int:
    m = _ATOI.match(text)
    return int(m.group(1)) if m else 0


def c_strtol(text: str) -> int | None:
    """strtol(text, &end, 0) requiring the whole text to be consumed, as xs_strings_to_perms."""
    m = _STRTOL.fullmatch(text)
    if not m:
        return None
    digits = m.group(2)
    if digits[:2] in ("0x", "0X"):
        value = int(digits, 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if m.group(1) == "-" else value


def strings(payload: bytes) -> list[bytes]:
    """get_strings(): the NUL-terminated strings; bytes after the last NUL are ignored."""
    return payload.split(b"\0")[:-1]


def onearg(payload: bytes) -> bytes | None:
    """onearg(): exactly one NUL, at the end."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1]


def text(raw: bytes) -> str:
    # latin-1 maps bytes one to one, so odd input round-trips and fails validation cleanly.
    return raw.decode("latin-1")
