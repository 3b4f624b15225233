"""The subscriber protocol's vocabulary, defined once: the project's own `xs_wire.h`.

Every name that crosses the daemon's socket (event kinds, snapshot states, request ops,
error codes, the scan triggers counted in `stats`), the default socket and the protocol
version live here and are imported by the daemon, the client library, the commands, the
scanner twins, the metrics and the demo.
`mux._fast` checks its C enum of event kinds against `EVENT_KINDS` at import, as it checks
its record layout against `mux.records`. docs/protocol.md documents each name (the scan
triggers: docs/metrics.md); tests check that the docs name every one of them, so a new name
cannot go undocumented.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

PROTOCOL_VERSION = 2  # 2: the journal (history, since, gap, bad-cursor, mode, late)
SERVER_NAME = "xen-watch-mux"

DEFAULT_SOCKET = "/run/xenmux/xenmux.sock"
SOCKET_ENV = "XENMUX_SOCKET"  # what the commands and the client library read first


def default_socket(environ: Mapping[str, str] | None = None) -> str:
    """The daemon's socket as clients find it: `$XENMUX_SOCKET`, else DEFAULT_SOCKET."""
    env = os.environ if environ is None else environ
    return env.get(SOCKET_ENV) or DEFAULT_SOCKET


# -- events ----------------------------------------------------------------------------------

# Event kinds. A kind's bit in a subscription mask is 1 << its index here, so the order is
# part of the C core's ABI (mux/_fast checks its enum against this tuple at import) and new
# kinds are appended: the first five follow one domain incarnation's life in their order;
# `paused` and `unpaused` (the record's paused flag, as `xl pause` sets it) come in between.
NEW = "new"
SHUTDOWN = "shutdown"
RESUMED = "resumed"
DEATH = "death"
RELEASED = "released"
PAUSED = "paused"
UNPAUSED = "unpaused"
EVENT_KINDS: tuple[str, ...] = (NEW, SHUTDOWN, RESUMED, DEATH, RELEASED, PAUSED, UNPAUSED)

KIND_BITS: dict[str, int] = {kind: 1 << i for i, kind in enumerate(EVENT_KINDS)}
ALL_KINDS_MASK = (1 << len(EVENT_KINDS)) - 1
# What a subscription that names no kinds gets: the kinds there were before `paused` and
# `unpaused`, so that an existing subscriber gets what it always got.
DEFAULT_KINDS: tuple[str, ...] = (NEW, SHUTDOWN, RESUMED, DEATH, RELEASED)
DEFAULT_KINDS_MASK = sum(KIND_BITS[kind] for kind in DEFAULT_KINDS)

# Not an event of a domain: the frame that tells a subscriber it was cut off.
OVERFLOW = "overflow"

# Not an event kind either (not subscribable): the newest-state frame a `latest`-mode
# subscriber gets, in a slow period, in place of a domid's pending event frames. Its `state`
# is one of DOMAIN_STATES, or ABSENT once the domain was released.
LATEST_STATE = "state"
ABSENT = "absent"

# The key of an event frame and of a snapshot row that names the domain's incarnation by the
# hypervisor's unique id (Xen 4.21+), as 16 lowercase hex digits; absent where the backend
# has no unique ids. It follows `uuid`.
INCARNATION = "incarnation"

# -- snapshot rows ---------------------------------------------------------------------------

# `state` of a snapshot row; `shutdown` is also the event kind that leads to it.
RUNNING = "running"
DEAD = "dead"  # dying, or dead and not yet released
DOMAIN_STATES: tuple[str, ...] = (RUNNING, SHUTDOWN, DEAD)

# -- requests --------------------------------------------------------------------------------

OP_HELLO = "hello"
OP_SUBSCRIBE = "subscribe"
OP_UNSUBSCRIBE = "unsubscribe"
OP_LIST = "list"
OP_RESCAN = "rescan"
OP_STATS = "stats"
OP_PING = "ping"
OPS: tuple[str, ...] = (
    OP_HELLO,
    OP_SUBSCRIBE,
    OP_UNSUBSCRIBE,
    OP_LIST,
    OP_RESCAN,
    OP_STATS,
    OP_PING,
)

# `mode` of a subscribe: every event, or (for level-triggered consumers) the newest state of
# each domain once the subscriber falls behind; it applies to the whole connection.
MODE_EVENTS = "events"
MODE_LATEST = "latest"
SUBSCRIBE_MODES: tuple[str, ...] = (MODE_EVENTS, MODE_LATEST)

# -- the `stats` reply ------------------------------------------------------------------------

# What asked for a scan: the keys of `scans` in the `stats` reply and the `trigger` label of
# xenmux_scans_total (docs/metrics.md says what each means).
TRIGGER_WATCH = "watch"  # a firing of @releaseDomain or @introduceDomain
TRIGGER_DEPTH = "depth"  # a firing naming a domid (Xen 4.22), or a backend's changed domid
TRIGGER_POLL = "poll"  # something fires nothing: a domain shut down, a dead one not released
TRIGGER_FULL = "full"  # the periodic safety scan, or the retry after a failed scan
TRIGGER_RESCAN = "rescan"  # a client's `rescan` request
TRIGGER_RECONNECT = "reconnect"  # xenstored came back: firings were missed
TRIGGER_SUBSCRIBE = "subscribe"  # a subscriber named a domid the table lacks
TRIGGER_STARTUP = "startup"  # the initial scan
SCAN_TRIGGERS: tuple[str, ...] = (
    TRIGGER_WATCH,
    TRIGGER_DEPTH,
    TRIGGER_POLL,
    TRIGGER_FULL,
    TRIGGER_RESCAN,
    TRIGGER_RECONNECT,
    TRIGGER_SUBSCRIBE,
    TRIGGER_STARTUP,
)

# -- error codes -----------------------------------------------------------------------------

ERR_BAD_JSON = "bad-json"
ERR_LINE_TOO_LONG = "line-too-long"
ERR_UNKNOWN_OP = "unknown-op"
ERR_BAD_REQUEST = "bad-request"
ERR_BAD_DOMID = "bad-domid"
ERR_TOO_MANY_SUBSCRIPTIONS = "too-many-subscriptions"
ERR_PERMISSION_DENIED = "permission-denied"
ERR_TOO_MANY_CLIENTS = "too-many-clients"
ERR_TOO_MANY_CONNECTIONS = "too-many-connections"
ERR_INTERNAL = "internal-error"
ERR_BAD_CURSOR = "bad-cursor"
ERROR_CODES: tuple[str, ...] = (
    ERR_BAD_JSON,
    ERR_LINE_TOO_LONG,
    ERR_UNKNOWN_OP,
    ERR_BAD_REQUEST,
    ERR_BAD_DOMID,
    ERR_TOO_MANY_SUBSCRIPTIONS,
    ERR_PERMISSION_DENIED,
    ERR_TOO_MANY_CLIENTS,
    ERR_TOO_MANY_CONNECTIONS,
    ERR_INTERNAL,
    ERR_BAD_CURSOR,
)


def kinds_mask(kinds: Iterable[str] | None) -> int:
    """The subscription mask of some event kinds (None: DEFAULT_KINDS).

    Raises ValueError naming the first unknown kind and the known ones, or when `kinds`
    is not a collection of kinds (a request's `"events": 5` or `"events": "death"`).
    """
    if kinds is None:
        return DEFAULT_KINDS_MASK
    if not isinstance(kinds, (list, tuple, set, frozenset)):  # "death" or 5 from a request
        raise ValueError(f"events must be a list of event kinds, not {kinds!r}")
    mask = 0
    for kind in kinds:
        try:
            mask |= KIND_BITS[kind]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown event kind {kind!r}: use some of {', '.join(EVENT_KINDS)}"
            ) from None
    return mask
