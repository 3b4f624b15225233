"""A checkpoint is never ahead of the journal. While a scan waits for the names of the
domains it found (between its diff and its publication) the table holds events that no
subscriber got and the journal does not hold: a checkpoint of it, restored after a kill,
would hold a domain whose `new` was never sent, and its `death` would be the first any
subscriber heard of it (a candidate the chaos run's "death of an incarnation never
announced" ruled out). The checkpoint waits; a kill meanwhile costs nothing: the
restarted daemon's first scan finds the domain again and announces it.
"""

from __future__ import annotations

import asyncio

import pytest
from scannerhelpers import IMPLS, NOW, batch, primed, rec, summary

from mux.daemon.durable import Checkpointer, open_state


@pytest.mark.parametrize("impl", IMPLS)
def test_no_checkpoint_of_a_table_whose_events_are_not_journaled(tmp_path, impl):
    path = str(tmp_path / "state")
    state = open_state(path)
    history = state.history.history
    try:
        table = primed(impl, rec(0), now=NOW)
        checkpointer = Checkpointer(state, table, interval=3600)
        checkpointer.ready = True
        checkpointer.write_now()
        events = table.diff(*batch(rec(0), rec(7)), NOW + 1)  # found, names being read
        assert summary(events) == [("new", 7, None)]
        checkpointer.write_now()  # a stop now
        assert state.statedir.read_checkpoint(history).seq == 0

        async def periodic() -> None:
            task = asyncio.ensure_future(checkpointer._checkpoint())
            await asyncio.sleep(0.1)
            assert not task.done()
            assert state.statedir.read_checkpoint(history).seq == 0
            state.journal.append(events)  # published
            await asyncio.wait_for(task, 5)

        asyncio.run(periodic())
        checkpoint = state.statedir.read_checkpoint(history)
        assert checkpoint.seq == 1 and [r["domid"] for r in checkpoint.table["rows"]] == [0, 7]
    finally:
        state.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_a_kill_while_a_scan_waits_for_names_loses_no_new(tmp_path, impl):
    path = str(tmp_path / "state")
    state = open_state(path)
    table = primed(impl, rec(0), now=NOW)
    checkpointer = Checkpointer(state, table, interval=3600)
    checkpointer.ready = True
    checkpointer.write_now()
    assert summary(table.diff(*batch(rec(0), rec(7)), NOW + 1)) == [("new", 7, None)]
    checkpointer.write_now()
    state.close()  # killed: nothing more is written
    again = open_state(path)
    try:
        restored = impl.DomainTable.load(again.restored)
        assert again.journal.last_seq == restored.seq == 0
        late = restored.diff(*batch(rec(0), rec(7)), NOW + 5)
        assert summary(late) == [("new", 7, None)] and late[0].seq == 1
    finally:
        again.close()
