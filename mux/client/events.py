"""The events a subscription yields, typed per kind.

Each event is the daemon's frame parsed: a plain dict, so `ev["event"] == "death"` and
`json.dumps(ev)` work as they always did. The TypedDicts below say which keys each kind
carries, so that a type checker narrows `Event` on `ev["event"]`:

    ev = sub.next_event()
    if ev is not None and ev["event"] == "death":
        ev.get("reason")      # DeathEvent: a reason when a shutdown was in force

Keys every kind may carry: `seq` (absent only on events the library synthesised after a
gap), `incarnation` (the hypervisor's unique id of the incarnation, 16 hex digits, where
the daemon's backend has them: Xen 4.21+), `name`, `late` (found by the first scan after a
daemon restart), `transient` (a domain that came and went between two scans) and `missed`
(synthesised by this library after a gap: the daemon could not replay what happened
meanwhile).
"""

from typing import Literal, NotRequired, TypedDict

from mux.protocol import PAUSED, UNPAUSED


class _Common(TypedDict):
    domid: int
    uuid: str
    time: float
    seq: NotRequired[int]
    incarnation: NotRequired[str]
    name: NotRequired[str]
    late: NotRequired[bool]
    transient: NotRequired[bool]
    missed: NotRequired[bool]


class NewEvent(_Common):
    event: Literal["new"]
    paused: NotRequired[bool]  # first seen paused: no `paused` event follows


class ShutdownEvent(_Common):
    event: Literal["shutdown"]
    reason: str


class ResumedEvent(_Common):
    event: Literal["resumed"]


class DeathEvent(_Common):
    event: Literal["death"]
    reason: NotRequired[str]  # the shutdown in force when it died; absent when none was known


class ReleasedEvent(_Common):
    event: Literal["released"]


class PausedEvent(_Common):
    event: Literal["paused"]


class UnpausedEvent(_Common):
    event: Literal["unpaused"]


Event = (
    NewEvent
    | ShutdownEvent
    | ResumedEvent
    | DeathEvent
    | ReleasedEvent
    | PausedEvent
    | UnpausedEvent
)

# kind -> its TypedDict, for code that checks frames at run time (a test keeps it in step
# with mux.protocol's EVENT_KINDS).
EVENT_TYPES: dict[str, type] = {
    "new": NewEvent,
    "shutdown": ShutdownEvent,
    "resumed": ResumedEvent,
    "death": DeathEvent,
    "released": ReleasedEvent,
    PAUSED: PausedEvent,
    UNPAUSED: UnpausedEvent,
}


def keys_of(kind: str) -> tuple[frozenset[str], frozenset[str]]:
    """(required, optional) keys of an event of `kind`."""
    cls = EVENT_TYPES[kind]
    return frozenset(cls.__required_keys__), frozenset(cls.__optional_keys__)
