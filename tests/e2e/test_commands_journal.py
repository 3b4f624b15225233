"""watch --since and wait across a restart of the real daemon, once it keeps a journal.

Skipped until the daemon speaks protocol 2 (docs/protocol.md: history, since, late
events); tests/e2e/test_commands_cursor.py checks the same commands against a test double
of that protocol meanwhile.
"""

from __future__ import annotations

import pytest
from daemonhelpers import json_lines, until
from simhelpers import sim_command

from mux.protocol import PROTOCOL_VERSION

pytestmark = pytest.mark.skipif(
    PROTOCOL_VERSION < 2, reason="the daemon keeps no journal before protocol 2"
)


def _cursor(stderr: str) -> str:
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("xenmux watch: resume with --since "), stderr
    return last.rsplit(" ", 1)[1]


def test_watch_since_resumes_across_a_daemon_restart(sim, daemon_factory, procs):
    d = daemon_factory(sim)
    first = procs.start([*sim_command(), "watch", "3", "--count", "1", "--socket", d.sock])
    until(lambda: d.stats()["subscribers"] == 1)
    sim.ctl.shutdown(3, "crash")
    assert first.wait(20) == 0
    (shutdown,) = json_lines(first.stdout.read().decode())
    cursor = _cursor(first.stderr.read().decode())
    assert cursor.endswith(f":{shutdown['seq']}")
    d.stop()
    sim.ctl.destroy(3)  # while no daemon runs
    daemon_factory(sim, sock=d.sock)
    again = procs.start(
        [*sim_command(), "watch", "--since", cursor, "--count", "2", "--socket", d.sock]
    )
    assert again.wait(20) == 0
    events = json_lines(again.stdout.read().decode())
    assert [(e["event"], e["domid"], e.get("reason"), e.get("late")) for e in events] == [
        ("death", 3, "crash", True),
        ("released", 3, None, True),
    ]
    assert [e["seq"] for e in events] == [shutdown["seq"] + 1, shutdown["seq"] + 2]
    assert _cursor(again.stderr.read().decode()).split(":")[0] == cursor.split(":")[0]


@pytest.mark.parametrize(("reason", "status"), [("crash", 13), (None, 20)])
def test_wait_through_a_daemon_restart_returns_what_the_journal_says(
    sim, daemon_factory, procs, reason, status
):
    d = daemon_factory(sim)
    waiter = procs.start([*sim_command(), "wait", "4", "--socket", d.sock])
    until(lambda: d.stats()["subscribers"] == 1)
    if reason:
        sim.ctl.shutdown(4, reason)
        until(lambda: d.stats()["events"]["shutdown"] == 1)
    d.stop()
    sim.ctl.destroy(4)
    daemon_factory(sim, sock=d.sock)
    assert waiter.wait(30) == status  # never 21: the daemon replayed what happened
    (death,) = json_lines(waiter.stdout.read().decode())
    assert death["late"] is True and "missed" not in death
    assert death.get("reason") == reason
