"""The typed events of mux.client describe what subscribers really receive."""

from __future__ import annotations

import typing

from daemonhelpers import take

from mux.client import Event
from mux.client.events import EVENT_TYPES, keys_of
from mux.protocol import EVENT_KINDS, PAUSED, UNPAUSED


def conforms(event: dict) -> bool:
    required, optional = keys_of(event["event"])
    return required <= event.keys() <= required | optional


def test_every_kind_has_its_type_and_each_type_names_its_kind():
    assert set(EVENT_KINDS) <= set(EVENT_TYPES)
    assert set(EVENT_TYPES) - set(EVENT_KINDS) <= {PAUSED, UNPAUSED}  # until they land
    for kind, cls in EVENT_TYPES.items():
        assert typing.get_type_hints(cls)["event"] == typing.Literal[kind]
    assert set(typing.get_args(Event)) == set(EVENT_TYPES.values())


def test_the_daemons_frames_and_the_missed_events_have_the_declared_keys(sim, daemon_factory):
    d = daemon_factory(sim, "--shutdown-poll", "0.05")
    with d.subscribe(None, retry_timeout=30) as sub:
        # Each step once the last one was seen: a suspend and a resume within one scan
        # would be no event at all.
        (new,) = sim.ctl.create(name="typed")
        events = take(sub, 1)
        sim.ctl.suspend(new["domid"])
        events += take(sub, 1)
        sim.ctl.resume(new["domid"])
        events += take(sub, 1)
        sim.ctl.shutdown(3, "crash")
        events += take(sub, 1)
        sim.ctl.destroy(3)
        events += take(sub, 2)
        d.stop()
        sim.ctl.destroy(4)  # missed while away
        daemon_factory(sim, sock=d.sock)
        events += take(sub, 2, timeout=30)
    kinds = {e["event"] for e in events}
    assert kinds == {"new", "shutdown", "resumed", "death", "released"}
    assert [e for e in events if not conforms(e)] == []
    # The two from across the restart: synthesised after a gap (missed) or replayed (late).
    assert all(e.get("missed") or e.get("late") for e in events[-2:])
