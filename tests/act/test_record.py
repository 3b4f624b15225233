"""The state dir on its own: what a restart of act finds of its jobs, steps and incarnations."""

from __future__ import annotations

import pytest

from mux.act import record as record_mod
from mux.act.record import JOURNAL, Record, StateError

U1 = "00000000-0000-4000-8000-000000000001"
U2 = "00000000-0000-4000-8000-000000000002"


def test_unfinished_jobs_come_back_with_their_steps_and_finished_ones_do_not(tmp_path):
    rec = Record(str(tmp_path))
    done = rec.new_job("shutdown", 1, U1, "a", "poweroff", 10)
    rec.step(done, "destroy", True)
    rec.done(done, "ok", "destroy")
    cut = rec.new_job("shutdown", 2, U2, "b", "reboot", 11)
    rec.step(cut, "action", "restart")
    rec.step(cut, "destroy", True)
    rec.save_cursor("h:11")
    rec.close()  # as a SIGKILL leaves it: no finish for the second job

    again = Record(str(tmp_path))
    assert again.cursor == "h:11"
    assert list(again.pending) == [cut.id]
    assert again.pending[cut.id].steps == {"action": "restart", "destroy": True}
    assert again.acted == {(1, U1), (2, U2)}  # both shutdowns have had their job
    again.close()


def test_resumed_rearms_and_death_forgets_an_incarnation(tmp_path):
    rec = Record(str(tmp_path))
    rec.done(rec.new_job("shutdown", 1, U1, "a", "crash", 1), "ok", "preserve")
    rec.done(rec.new_job("shutdown", 2, U2, "b", "crash", 2), "ok", "preserve")
    rec.rearm(1, U1)
    rec.dead(2, U2)
    rec.close()
    again = Record(str(tmp_path))
    assert again.acted == set()
    assert (2, U2) in again.died
    again.close()


def test_restarts_are_counted_across_restarts_of_act(tmp_path):
    rec = Record(str(tmp_path))
    for n in range(3):
        rec.done(
            rec.new_job("shutdown", n + 1, U1, "a", "reboot", n), "ok", "restart", restarted=True
        )
    rec.close()
    again = Record(str(tmp_path))
    assert again.recent_restarts(U1, 60) == 3
    again.close()


def test_the_journal_is_compacted_as_it_grows_and_keeps_what_is_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(record_mod, "COMPACT_AFTER", 10)
    rec = Record(str(tmp_path))
    kept = rec.new_job("shutdown", 1, U1, "a", "poweroff", 1)
    rec.step(kept, "settings", {"on_poweroff": "destroy"})
    for n in range(40):
        job = rec.new_job("on_death", 100 + n, U2, "x", None, n)
        rec.done(job, "ok", "on_death")
    lines = (tmp_path / JOURNAL).read_text().splitlines()
    assert len(lines) < 20, lines
    rec.close()
    again = Record(str(tmp_path))
    assert list(again.pending) == [kept.id]
    assert again.pending[kept.id].steps == {"settings": {"on_poweroff": "destroy"}}
    assert again.acted == {(1, U1)}
    again.close()


def test_a_line_cut_short_by_a_sigkill_is_ignored(tmp_path):
    rec = Record(str(tmp_path))
    job = rec.new_job("shutdown", 1, U1, "a", "poweroff", 1)
    rec.close()
    with open(tmp_path / JOURNAL, "a") as f:
        f.write('{"t": "done", "id": "' + job.id)  # no end, no newline
    again = Record(str(tmp_path))
    assert list(again.pending) == [job.id]
    again.close()


def test_one_state_dir_one_act(tmp_path):
    rec = Record(str(tmp_path))
    with pytest.raises(StateError, match="another xenmux act runs with the state dir"):
        Record(str(tmp_path))
    rec.close()
    Record(str(tmp_path)).close()


def test_a_state_dir_others_can_write_is_refused_with_one_line(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(StateError, match=r"act's state directory \(--state-dir\) .* others"):
        Record(str(shared))
    with pytest.raises(StateError, match="above act's state directory"):
        Record(str(shared / "act"))
    assert not (shared / "act").exists()
    private = tmp_path / "private" / "act"
    Record(str(private)).close()
    assert private.stat().st_mode & 0o777 == 0o700


def test_dry_run_keeps_nothing(tmp_path):
    rec = Record(str(tmp_path / "state"), durable=False)
    rec.new_job("shutdown", 1, U1, "a", "poweroff", 1)
    rec.save_cursor("h:1")
    rec.close()
    assert not (tmp_path / "state").exists()
