"""Cursors against a running daemon (docs/protocol.md, "Cursors"): `hello` names the history
and the oldest seq; `subscribe` with `since` replays exactly what the subscription would
have got, then goes on live with no gap and no duplicate at the seam; a cursor the journal
cannot serve gets a gap and a snapshot; a malformed one is `bad-cursor`. The state dir is
locked, private, bounded, and counted in the metrics.
"""

from __future__ import annotations

import os
import stat
import subprocess

from daemonhelpers import brief, until
from resumehelpers import Cursor
from simhelpers import sim_command

from mux.protocol import ERR_BAD_CURSOR, ERR_BAD_REQUEST


def churn_some(sim, c: Cursor, rounds: int) -> list[dict]:
    """Create and destroy domains; returns the frames the wildcard cursor `c` got. (Each is
    seen before it goes: one that comes and goes between two scans is seen by neither.)"""
    got = []
    for _ in range(rounds):
        (dom,) = sim.ctl.create()
        got += c.take(1)
        sim.ctl.destroy(dom["domid"])
        got += c.take(2)
    return got


def test_hello_names_the_history_and_since_replays_exactly(sim, daemon_factory):
    d = daemon_factory(sim)
    with Cursor(d.sock) as live:
        hello = live.request("hello")
        assert hello["protocol"] == 2 and len(hello["history"]) == 32
        assert hello["oldest_seq"] == hello["seq"] + 1 == 1  # a new history, nothing yet
        sub = live.subscribe("*")
        assert sub["history"] == hello["history"] and sub["seq"] == 0 and "snapshot" in sub
        sim.ctl.shutdown(3, "crash")
        sim.ctl.shutdown(5, "reboot")
        stream = live.take(2)
        stream += churn_some(sim, live, 2)
        sim.ctl.destroy(3)
        stream += live.take(2)
        assert [e["seq"] for e in stream] == list(range(1, 11))

        # Every cursor replays the same frames the live subscriber got after it.
        for since in (0, 1, 4, 9):
            with Cursor(d.sock) as c:
                reply = c.subscribe("*", since=since, history=hello["history"])
                assert reply == {
                    "id": 1,
                    "ok": True,
                    "history": hello["history"],
                    "seq": 10,
                    "since": since,
                }
                assert c.take(10 - since) == stream[since:]
                assert c.quiet(0.2) == []
        # A domid and kind subscription replays its part only; history may be left out.
        with Cursor(d.sock) as c:
            reply = c.subscribe([3], since=0, events=["death", "released"])
            assert reply["since"] == 0 and reply["seq"] == 10
            assert brief(c.take(2)) == [("death", 3, "crash"), ("released", 3, None)]
            assert c.quiet(0.2) == []
        # At the seam: replay up to `seq`, then the live stream from seq + 1, nothing twice.
        with Cursor(d.sock) as c:
            reply = c.subscribe("*", since=8)
            sim.ctl.shutdown(6, "poweroff")
            got = c.take(3)
            assert [e["seq"] for e in got] == [9, 10, 11]
            assert brief(got[2:]) == [("shutdown", 6, "poweroff")]
            assert got[2] == live.take(1)[0]
            assert c.quiet(0.2) == []
        stats = d.stats()
        assert stats["journal"]["replayed_events"] == 10 + 9 + 6 + 1 + 2 + 2
        assert stats["journal"]["history"] == hello["history"]


def test_cursors_that_cannot_be_served_get_a_gap_and_bad_ones_an_error(sim, daemon_factory):
    d = daemon_factory(sim, "--journal-max-bytes", "16384", "--checkpoint-interval", "0.2")
    with Cursor(d.sock) as c:
        history = c.subscribe("*")["history"]
        churn_some(sim, c, 40)  # 120 events, about 25 KB: more than the journal keeps
        hello = c.request("hello")
        oldest = hello["oldest_seq"]
        assert 1 < oldest <= hello["seq"]
        assert hello["seq"] == 120

        stats = d.stats()["journal"]
        assert stats["bytes"] <= 16384 and stats["segments"] > 1 and stats["oldest_seq"] == oldest
        assert stats["gaps"] == 0

    # Below the journal: a gap, with a snapshot to relist from (Kubernetes' 410 Gone).
    for since, hist in ((oldest - 2, history), (5, "0" * 32)):
        with Cursor(d.sock) as c:
            reply = c.subscribe("*", since=since, history=hist)
            assert reply["ok"] and reply["gap"] is True and reply["history"] == history
            assert reply["seq"] == 120 and "since" not in reply
            assert {r["domid"] for r in reply["snapshot"]} == set(range(9))
            assert reply["absent"] == []
            assert c.quiet(0.2) == []
    # The oldest journaled event is still there for a cursor just before it.
    with Cursor(d.sock) as c:
        reply = c.subscribe("*", since=oldest - 1, history=history)
        assert "gap" not in reply
        assert [e["seq"] for e in c.take(121 - oldest)] == list(range(oldest, 121))

    with Cursor(d.sock) as c:
        for bad in (True, -1, "7", 1.5, 121):
            reply = c.subscribe("*", since=bad)
            assert reply["ok"] is False and reply["error"]["code"] == ERR_BAD_CURSOR, (bad, reply)
        reply = c.subscribe("*", since=121, history="f" * 32)  # another history: a gap
        assert reply["gap"] is True
        for field, bad in (("mode", "fast"), ("mode", 3), ("history", 5)):
            reply = c.subscribe("*", **{field: bad})
            assert reply["ok"] is False and reply["error"]["code"] == ERR_BAD_REQUEST
        assert c.subscribe([1], mode="latest")["ok"] is True
        assert c.subscribe([2], mode="events")["ok"] is True
        assert c.request("ping")["ok"] is True
    stats = d.stats()
    assert stats["journal"]["gaps"] == 3
    assert stats["client_errors"][ERR_BAD_CURSOR] == 5


def test_one_daemon_per_state_dir_and_it_is_private(sim, daemon_factory):
    d = daemon_factory(sim)
    state = sim.dir / "xenmux-state"  # the sim backend's default --state-dir
    assert d.stats()["journal"]["state_dir"] == str(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    for f in state.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f
        assert f.stat().st_uid == os.geteuid() and f.stat().st_gid == os.getegid()
    serve = ["serve", "--backend", "sim", "--sim-dir", str(sim.dir), "--metrics-addr", ""]
    second = subprocess.run(
        [*sim_command(), *serve, "--socket", str(sim.dir / "other.sock")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1 and second.stdout == ""
    assert second.stderr.splitlines() == [
        f"xenmux serve: another daemon is serving from the state dir {state} "
        f"(pid {d.pid}); stop it or choose another --state-dir"
    ]
    assert not (sim.dir / "other.sock").exists()
    with Cursor(d.sock) as c:
        assert c.request("ping")["ok"]


def test_journal_metrics(sim, daemon_factory):
    from test_metrics import metrics_port, parse, scrape, value

    d = daemon_factory(sim, "--metrics-addr", "127.0.0.1:0")
    with Cursor(d.sock) as c:
        c.subscribe("*")
        sim.ctl.shutdown(2, "crash")
        c.take(1)
        with Cursor(d.sock) as again:
            again.subscribe("*", since=0)
            again.take(1)
            again.subscribe([4], since=0, history="a" * 32)
    until(lambda: d.stats()["journal"]["gaps"] == 1)
    s = parse(scrape(metrics_port(d))[0])
    assert value(s, "xenmux_journal_appends_total") == 1
    assert value(s, "xenmux_journal_appended_events_total") == 1
    assert value(s, "xenmux_journal_replayed_events_total") == 1
    assert value(s, "xenmux_journal_oldest_seq") == 1
    assert value(s, "xenmux_journal_segments") == 1
    assert value(s, "xenmux_journal_bytes") > 0
    assert value(s, "xenmux_subscribe_gaps_total") == 1
    assert value(s, "xenmux_journal_write_errors_total") == 0
    assert value(s, "xenmux_checkpoint_errors_total") == 0
    assert 0 <= value(s, "xenmux_checkpoint_age_seconds") < 60


def test_protocol_md_documents_the_cursor_words():
    from pathlib import Path

    from mux.protocol import PROTOCOL_VERSION, SUBSCRIBE_MODES

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    cursors = doc.partition("## Cursors and restarts\n")[2].partition("\n## ")[0]
    assert cursors, "docs/protocol.md has no section on cursors"
    for word in ("since", "history", "gap", "late", "oldest_seq", ERR_BAD_CURSOR):
        assert f"`{word}`" in cursors or f'"{word}"' in cursors, word
    subscribe = doc.partition("### `subscribe`\n")[2].partition("\n### ")[0]
    assert " | ".join(f'"{m}"' for m in SUBSCRIBE_MODES) in subscribe
    assert f"Protocol version: {PROTOCOL_VERSION}" in doc
