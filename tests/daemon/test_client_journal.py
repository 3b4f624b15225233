"""mux.client across a restart of the real daemon, once it keeps a journal: the stream
resumes from the cursor, the same history, nothing missed and nothing repeated.

Skipped until the daemon speaks protocol 2; tests/daemon/test_client_cursor.py checks the
library against a test double of that protocol meanwhile.
"""

from __future__ import annotations

import pytest
from daemonhelpers import take

from mux.protocol import PROTOCOL_VERSION

pytestmark = pytest.mark.skipif(
    PROTOCOL_VERSION < 2, reason="the daemon keeps no journal before protocol 2"
)


def test_a_subscription_resumes_across_a_daemon_restart(sim, daemon_factory):
    d = daemon_factory(sim)
    with d.subscribe([2, 5]) as sub:
        history = sub.hello["history"]
        sim.ctl.shutdown(2, "crash")
        (shutdown,) = take(sub, 1)
        assert sub.cursor == f"{history}:{shutdown['seq']}"
        d.stop()
        sim.ctl.destroy(2)  # while the daemon is away
        sim.ctl.create(domid=2)  # and the domid is reused
        daemon_factory(sim, sock=d.sock)
        events = take(sub, 3, timeout=30)
        assert sub.next_event(0.5) is None
        sim.ctl.destroy(5)
        events += take(sub, 2)
    assert [(e["event"], e["domid"], e.get("reason"), bool(e.get("late"))) for e in events] == [
        ("death", 2, "crash", True),
        ("released", 2, None, True),
        ("new", 2, None, True),
        ("death", 5, None, False),
        ("released", 5, None, False),
    ]
    assert not any(e.get("missed") for e in events)
    assert [e["seq"] for e in events] == list(range(shutdown["seq"] + 1, shutdown["seq"] + 6))
    assert sub.hello["history"] == history and sub.gap is False
