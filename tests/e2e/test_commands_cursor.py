"""`xenmux watch --since`, the cursor printed at exit, and `wait` resuming through outages.

Against ContractDouble (tests/contract_double.py), a test double speaking protocol 2's
frames; tests/e2e/test_commands_journal.py runs the same commands against the real daemon
once its journal has landed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from contract_double import doubles
from daemonhelpers import json_lines, until
from simhelpers import sim_command

from mux.protocol import EVENT_KINDS


@pytest.fixture
def double():
    with doubles() as make:
        d = make()
        d.add_guests(4)
        yield d


def xenmux(double, *args: str) -> list[str]:
    return [*sim_command(), *args, "--socket", double.path]


def _subscribed(double, count: int = 1) -> bool:
    return len(double.subscribes()) >= count


def _cursor_line(stderr: str) -> str:
    last = stderr.strip().splitlines()[-1]
    prefix = "xenmux watch: resume with --since "
    assert last.startswith(prefix), stderr
    return last[len(prefix) :]


def test_watch_since_replays_then_follows_and_prints_the_cursor_at_exit(double, procs):
    double.event("shutdown", 2, reason="reboot")  # seq 1
    double.event("death", 2)  # seq 2
    double.event("released", 2)  # seq 3
    watcher = procs.start(xenmux(double, "watch", "--since", f"{double.history}:1", "--count", "3"))
    until(lambda: _subscribed(double))
    double.event("shutdown", 4, reason="crash")  # seq 4: live
    assert watcher.wait(20) == 0
    events = json_lines(watcher.stdout.read().decode())
    assert [(e["seq"], e["event"], e["domid"]) for e in events] == [
        (2, "death", 2),
        (3, "released", 2),
        (4, "shutdown", 4),
    ]
    stderr = watcher.stderr.read().decode()
    assert stderr.count("\n") == 1  # the cursor and nothing else
    cursor = _cursor_line(stderr)
    assert cursor == f"{double.history}:4"
    # The printed cursor resumes exactly there (a bare SEQ means the current history).
    double.event("death", 4)
    again = procs.start(xenmux(double, "watch", "--since", cursor, "--count", "1"))
    assert again.wait(20) == 0
    assert [e["seq"] for e in json_lines(again.stdout.read().decode())] == [5]
    bare = procs.start(xenmux(double, "watch", "--since", "5", "--timeout", "0.3"))
    assert bare.wait(20) == 0 and bare.stdout.read() == b""
    assert _cursor_line(bare.stderr.read().decode()) == f"{double.history}:5"
    assert double.subscribes()[-1]["since"] == 5 and "history" not in double.subscribes()[-1]


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_watch_prints_the_cursor_when_stopped_by_a_signal(double, procs, sig, status):
    # With the signal's default disposition, as from a terminal or systemd: a suite started
    # in the background (`cmd &` in a script) would hand its children SIGINT ignored.
    watcher = procs.start(
        xenmux(double, "watch", "-o", "table"),
        preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL),
    )
    until(lambda: _subscribed(double))
    double.event("shutdown", 3, reason="crash")
    assert procs.read_lines(watcher, 2, timeout=10)[1].split()[1] == "1"  # header, row
    watcher.send_signal(sig)
    try:
        code = watcher.wait(20)
    except subprocess.TimeoutExpired:
        watcher.kill()
        watcher.wait(10)
        pytest.fail(f"watch ignored {sig.name} for 20 s; stderr: {watcher.stderr.read()!r}")
    assert code == status
    stderr = watcher.stderr.read().decode()
    assert _cursor_line(stderr) == f"{double.history}:1"
    assert "Traceback" not in stderr


def test_watch_since_a_cursor_the_daemon_no_longer_holds(double, procs):
    for _ in range(3):
        double.event("paused", 1)
    double.trim(3)
    watcher = procs.start(xenmux(double, "watch", "--since", f"{double.history}:1", "--count", "1"))
    until(lambda: _subscribed(double))
    double.event("shutdown", 1, reason="poweroff")
    assert watcher.wait(20) == 0
    lines = json_lines(watcher.stdout.read().decode())
    assert [(x.get("snapshot"), x.get("gap"), x["domid"]) for x in lines[:4]] == [
        (True, True, 1),
        (True, True, 2),
        (True, True, 3),
        (True, True, 4),
    ]
    assert lines[4]["event"] == "shutdown" and lines[4]["seq"] == 4
    stderr = watcher.stderr.read().decode().splitlines()
    assert stderr[0] == (
        f"xenmux watch: cannot resume from {double.history}:1: the daemon's journal no longer "
        "holds it, or it belongs to another history; the current state follows"
    )
    assert _cursor_line(stderr[-1]) == f"{double.history}:4"


def test_watch_refuses_a_bad_cursor_with_one_line(double):
    import subprocess

    for cursor, words in (
        ("yesterday", "--since: a cursor is SEQ or HISTORY:SEQ"),
        (f"{double.history}:99", "since 99 is not a seq of this history"),
    ):
        out = subprocess.run(
            xenmux(double, "watch", "--since", cursor),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2, out.stderr
        assert out.stderr.count("\n") == 1 and words in out.stderr
    assert [r["since"] for r in double.subscribes()] == [99]


def test_wait_resumes_through_an_outage_and_returns_the_reason(double, procs):
    waiter = procs.start(xenmux(double, "wait", "3"))
    until(lambda: _subscribed(double))
    double.down()
    double.event("shutdown", 3, reason="crash")  # all while the daemon is away
    double.event("death", 3)
    time.sleep(0.3)
    assert waiter.poll() is None
    double.up()
    assert waiter.wait(20) == 13  # the reason's status, not 21
    (death,) = json_lines(waiter.stdout.read().decode())
    assert death["event"] == "death" and death["reason"] == "crash" and "missed" not in death
    notice = waiter.stderr.read().decode().splitlines()
    assert len(notice) == 1 and notice[0].startswith("xenmux wait: cannot reach xenmux at ")
    assert notice[0].endswith("; retrying until it answers")


@pytest.mark.parametrize(
    ("before", "status", "reason"),
    [(None, 21, None), ("crash", 13, "crash"), ("suspend", 21, None)],
)
def test_wait_after_a_gap_reports_the_death_as_missed(double, procs, before, status, reason):
    if before:
        double.event("shutdown", 3, reason=before)
    waiter = procs.start(xenmux(double, "wait", "3"))
    until(lambda: _subscribed(double))
    double.down()
    double.event("death", 3)
    double.event("released", 3)
    double.trim(double.seq + 1)  # the journal does not reach back: a gap
    double.up()
    assert waiter.wait(20) == status
    (death,) = json_lines(waiter.stdout.read().decode())
    assert death["missed"] is True and death.get("reason") == reason
    assert json.loads(json.dumps(death))["domid"] == 3


def test_watch_refuses_an_unknown_kind_with_one_line(double):
    import subprocess

    out = subprocess.run(
        xenmux(double, "watch", "--events", "death,bogus"), capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr == (
        f"xenmux watch: unknown event kind 'bogus': use some of {', '.join(EVENT_KINDS)}\n"
    )
    assert double.subscribes() == []


def test_watch_shows_paused_and_unpaused_only_when_asked(double, procs):
    asked = procs.start(xenmux(double, "watch", "2", "--events", "paused,unpaused", "--count", "2"))
    plain = procs.start(xenmux(double, "watch", "2", "--count", "1"))
    until(lambda: _subscribed(double, 2))
    double.event("paused", 2)
    double.event("unpaused", 2)
    double.event("shutdown", 2, reason="poweroff")
    assert asked.wait(20) == 0 and plain.wait(20) == 0
    assert [e["event"] for e in json_lines(asked.stdout.read().decode())] == ["paused", "unpaused"]
    assert [e["event"] for e in json_lines(plain.stdout.read().decode())] == ["shutdown"]
