"""The words of protocol 2 that the client needs, taken from mux.protocol.

They are defined there (the kinds `paused`/`unpaused`, the kinds a subscriber gets unasked,
the `bad-cursor` and `too-many-connections` error codes). Against a vocabulary from before
them, the same words stand in, with the meaning they had then: every kind was sent unasked.
"""

from __future__ import annotations

from mux.protocol import EVENT_KINDS

try:
    from mux.protocol import DEFAULT_KINDS, PAUSED, UNPAUSED
except ImportError:
    DEFAULT_KINDS = EVENT_KINDS
    PAUSED, UNPAUSED = "paused", "unpaused"

try:
    from mux.protocol import ERR_BAD_CURSOR
except ImportError:
    ERR_BAD_CURSOR = "bad-cursor"

try:
    from mux.protocol import ERR_TOO_MANY_CONNECTIONS
except ImportError:
    ERR_TOO_MANY_CONNECTIONS = "too-many-connections"

__all__ = ["DEFAULT_KINDS", "ERR_BAD_CURSOR", "ERR_TOO_MANY_CONNECTIONS", "PAUSED", "UNPAUSED"]
