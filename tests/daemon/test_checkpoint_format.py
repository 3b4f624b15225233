"""The checkpoint across the change from the daemon's own table dump to the twins' `dump()`:
one written before (its rows without `gen`, nothing seen suspended) is restored and goes on;
one whose rows contradict their flags is moved aside as corrupt, and a new history starts.
"""

from __future__ import annotations

import logging

import pytest
from scannerhelpers import IMPLS, NOW, batch, rec, summary, uuid_of

from mux.daemon.durable import open_state
from mux.records import DOMINF_SHUTDOWN, SHUTDOWN_NONE, SHUTDOWN_SUSPEND, make_flags


def old_checkpoint() -> dict:
    """What the daemon's dump_table wrote of a table without `dump()`: domid 1 running,
    domid 2 suspended, at seq 0 (the journal of a new history holds no event before it)."""
    running, suspended = make_flags(), make_flags(shutdown_reason=SHUTDOWN_SUSPEND)
    row = {"suspend_cpu": None, "suspend_seen": None, "reason_code": SHUTDOWN_NONE, "name": None}
    return {
        "seq": 0,
        "gen": 2,
        "rows": [
            {**row, "domid": 1, "uuid": uuid_of(1), "flags": running, "cpu_time": 0,
             "state": "running", "name": "web"},
            {**row, "domid": 2, "uuid": uuid_of(2), "flags": suspended, "cpu_time": 0,
             "state": "shutdown", "reason_code": SHUTDOWN_SUSPEND},
        ],
    }  # fmt: skip


def test_a_checkpoint_from_dump_batches_is_the_same_file_as_from_the_whole_dump(tmp_path):
    from mux import _fast

    table = _fast.DomainTable.load(old_checkpoint())
    files = []
    for i, dump in enumerate((table.dump(), table.dump_batches(1))):
        state = open_state(str(tmp_path / f"state{i}"))
        history = state.history.history
        state.statedir.write_checkpoint(history, 0, dump)
        state.close()
        with open(tmp_path / f"state{i}" / "checkpoint", "rb") as f:
            files.append(f.read().replace(history.encode(), b"H"))
    assert files[0] == files[1] and b'"name":"web"' in files[0]


def written(tmp_path, table: dict):
    path = str(tmp_path / "state")
    state = open_state(path)
    history = state.history.history
    state.statedir.write_checkpoint(history, table["seq"], table)
    state.close()
    return path, history


@pytest.mark.parametrize("impl", IMPLS)
def test_a_checkpoint_of_the_old_dump_is_restored_and_goes_on(tmp_path, impl):
    path, history = written(tmp_path, old_checkpoint())
    state = open_state(path)
    try:
        assert state.history.history == history and state.restored is not None
        table = impl.DomainTable.load(state.restored)
    finally:
        state.close()
    assert table.seq == 0
    assert [(r["domid"], r["state"], r["name"]) for r in table.rows()] == [
        (1, "running", "web"),
        (2, "shutdown", None),
    ]
    # Nothing seen suspended by the old dump: 2's death has no reason (the daemon cannot
    # tell, though its flags still say suspend).
    events = table.diff(*batch(rec(1, reason=SHUTDOWN_SUSPEND), rec(2, dying=True)), NOW)
    assert summary(events) == [("shutdown", 1, "suspend"), ("death", 2, None)]
    assert [e.seq for e in events] == [1, 2]


def test_a_checkpoint_whose_rows_contradict_their_flags_is_moved_aside(tmp_path, caplog):
    bad = old_checkpoint()
    bad["rows"][1]["flags"] &= ~DOMINF_SHUTDOWN  # "shutdown", but its flags say running
    path, history = written(tmp_path, bad)
    with caplog.at_level(logging.INFO, "xenmux.state"):
        state = open_state(path)
    try:
        assert state.history.history != history and state.restored is None
        (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("state.corrupt-")]
        (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert str(aside) in error.getMessage()
        assert "shut down" in error.getMessage()  # what is wrong with it, by name
    finally:
        state.close()
