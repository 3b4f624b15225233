"""The client library: talk to `xenmux serve` over its Unix socket, sync or async.

    from mux.client import Subscription
    with Subscription([12]) as sub:          # or: async with AsyncSubscription([12]) as sub
        for event in sub:                     #     async for event in sub
            if event["event"] == "death":
                break
    print(sub.cursor)                         # "HISTORY:SEQ": since= resumes from here

A subscription survives the daemon. On a lost connection (or an `overflow` frame) it
reconnects with backoff capped at 1 s and resubscribes with `since`: the last seq it
received, in the daemon's `history`. The daemon replays what was missed, so nothing is
lost and nothing repeats. Only when it cannot (its journal no longer reaches back, or a
new history began: a gap) does the library compare the new snapshot with what it knew and
report what happened meanwhile, each event marked `"missed": true`: a domain that died
meanwhile still gets its `death`, and none is reported twice.

Every wait is bounded: `request_timeout` for hello and subscribe, `retry_timeout` for
reaching the daemon at all, `timeout` for each `next_event` and each Client call. A daemon
that cannot be reached is said at once, in words (`on_retry`, a logging warning by default).
"""

from mux.client.aio import AsyncClient, AsyncSubscription
from mux.client.cursor import Cursor
from mux.client.errors import TimedOut, Unreachable, XenmuxError
from mux.client.events import (
    DeathEvent,
    Event,
    NewEvent,
    PausedEvent,
    ReleasedEvent,
    ResumedEvent,
    ShutdownEvent,
    UnpausedEvent,
)
from mux.client.sync import Client, Subscription

__all__ = [
    "AsyncClient",
    "AsyncSubscription",
    "Client",
    "Cursor",
    "DeathEvent",
    "Event",
    "NewEvent",
    "PausedEvent",
    "ReleasedEvent",
    "ResumedEvent",
    "ShutdownEvent",
    "Subscription",
    "TimedOut",
    "UnpausedEvent",
    "Unreachable",
    "XenmuxError",
]
