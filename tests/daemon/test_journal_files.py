"""The journal and the state dir on their own (mux/daemon/journal.py, statedir.py, durable.py):
what is written comes back byte for byte and in order, filtered as a subscription asks; a
torn tail is cut off and never served; the bound drops the oldest segments, never one a
restart needs; a full disk costs a gap, not an event; a corrupt or foreign state dir is
moved aside with one log line; a second daemon cannot take a locked one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import stat

import pytest

from mux.daemon import journal as journal_module
from mux.daemon.durable import open_state
from mux.daemon.journal import CHUNK, HEAD_SIZE, SEG_HEAD_SIZE, Journal
from mux.daemon.statedir import CorruptState, StateDir, StateDirError, new_history_id
from mux.protocol import ALL_KINDS_MASK, DEATH, EVENT_KINDS, KIND_BITS, NEW, RELEASED, SHUTDOWN
from mux.reference import Event

UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def events(first: int, count: int, *, domids=(1, 2, 3), name: str | None = None) -> list[Event]:
    kinds = (NEW, SHUTDOWN, DEATH, RELEASED)
    return [
        Event(s, kinds[s % 4], domids[s % len(domids)], UUID, None, 1000.0 + s, name)
        for s in range(first, first + count)
    ]


def lines(chunks) -> list[dict]:
    return [json.loads(line) for chunk in chunks for line in chunk.splitlines()]


def fill(j: Journal, batches: list[int], **kw) -> list[Event]:
    """Append batches of the given sizes; returns every event written."""
    out = []
    for n in batches:
        evs = events(j.last_seq + 1, n, **kw)
        j.append(evs)
        out += evs
    return out


@pytest.fixture
def journal(tmp_path):
    j = Journal.create(str(tmp_path), new_history_id(), 1 << 20)
    yield j
    j.close()


def reopen(j: Journal, checkpoint_seq: int = 0) -> Journal:
    j.close()
    return Journal.open(j.directory, j.history, j.max_bytes, checkpoint_seq)


def segment_files(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("journal-"))


def file_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def killed(j: Journal) -> None:
    """What a kill -9 leaves of `j`: its files as they are, the last one still at the size
    it was allocated (a clean stop cuts it to what it holds)."""
    j._map.close()
    os.close(j._fd)
    j._map = j._fd = j._tail = None


# -- what goes in comes out --------------------------------------------------------------------


def test_a_wildcard_reader_gets_the_very_frames_in_order(journal):
    written = fill(journal, [1, 3, 1, 7, 2])
    assert (journal.oldest_seq, journal.last_seq) == (1, 14)
    assert b"".join(journal.reader(0, None, ALL_KINDS_MASK)) == b"".join(e.frame() for e in written)
    # From inside a batch: the batch of seqs 6-12 is cut at 8.
    assert [e["seq"] for e in lines(journal.reader(8, None, ALL_KINDS_MASK))] == list(range(9, 15))
    assert list(journal.reader(14, None, ALL_KINDS_MASK)) == []
    assert journal.replayed_events == 14 + 6


def test_a_reader_filters_by_domid_and_kind_and_ends_where_it_was_made(journal):
    written = fill(journal, [5, 5, 5])
    reader = journal.reader(2, [2, 3], KIND_BITS[SHUTDOWN] | KIND_BITS[DEATH])
    fill(journal, [5])  # after the reader was made: not in it
    got = lines(reader)
    want = [
        e.to_dict()["seq"]
        for e in written
        if e.seq > 2 and e.domid in (2, 3) and e.kind in (SHUTDOWN, DEATH)
    ]
    assert [e["seq"] for e in got] == want and want
    assert all(e["domid"] in (2, 3) and e["event"] in (SHUTDOWN, DEATH) for e in got)


@pytest.mark.parametrize("seed", range(6))
def test_every_reader_gets_what_a_filter_of_all_events_would(tmp_path, seed):
    """Batches of one or several events, of one domid or several, of kinds in and out of
    the mask, over several segments: each reader's frames are those of a plain filter.
    Names that quote a frame's keys do not fool the filters that read frames."""
    rng = random.Random(seed)
    j = Journal.create(str(tmp_path), new_history_id(), 64 * 1024)
    written: list[Event] = []
    while j.last_seq < 600:
        n = rng.choice([1, 1, 1, 2, 3, 7])
        one = rng.choice([None, rng.randrange(6)])
        batch = [
            Event(
                j.last_seq + 1 + k,
                rng.choice(EVENT_KINDS),
                rng.randrange(6) if one is None else one,
                UUID,
                None,
                5.0,
                rng.choice([None, 'vm", "domid": 2, "uuid": "x', 'vm\n{"domid": 3,']),
            )
            for k in range(n)
        ]
        j.append(batch)
        written += batch
    assert j.segment_count > 3 and j.oldest_seq == 1
    for _ in range(40):
        after = rng.randrange(0, j.last_seq + 1)
        few = set(rng.sample(range(6), rng.randint(1, 3)))
        domids = rng.choice([None, few, few | set(range(100, 106))])  # found, or read
        mask = rng.choice([ALL_KINDS_MASK, rng.randrange(1, ALL_KINDS_MASK + 1)])
        want = [
            e.frame()
            for e in written
            if e.seq > after and (domids is None or e.domid in domids) and KIND_BITS[e.kind] & mask
        ]
        before = j.replayed_events
        assert b"".join(j.reader(after, domids, mask)) == b"".join(want), (after, domids, mask)
        assert j.replayed_events - before == len(want)
    j.close()


def test_chunks_are_whole_lines_of_about_chunk_bytes(journal):
    # One batch far larger than a chunk (a mass event), then many small ones.
    written = fill(journal, [6000, *([1] * 3000)], name="x" * 40)
    chunks = [c for c in journal.reader(0, None, ALL_KINDS_MASK) if c]  # b"": an index step
    assert b"".join(chunks) == b"".join(e.frame() for e in written)
    assert len(chunks) > 3
    longest = max(len(e.frame()) for e in written)
    for chunk in chunks:
        assert chunk.endswith(b"\n") and len(chunk) <= CHUNK * 3 // 2 + longest


def test_each_step_of_a_reader_is_bounded(tmp_path):
    """A subscriber of one domid resuming from the start of a journal of 30,000 events
    does not hold the loop: each step handles about a chunk of journal, matching or not."""
    j = Journal.create(str(tmp_path), new_history_id(), 1 << 30)
    fill(j, [1] * 30_000, domids=tuple(range(1, 301)))
    steps = list(j.reader(0, [7], ALL_KINDS_MASK))
    assert [e["domid"] for e in lines(steps)] == [7] * 100
    # 5 MB of journal: indexed once (what the writer only counted), then read, a chunk a step
    assert len(steps) >= j.bytes // CHUNK
    j.close()


def test_a_reader_still_reads_a_segment_dropped_meanwhile(tmp_path):
    j = Journal.create(str(tmp_path), new_history_id(), 16 * 1024)
    written = fill(j, [4] * 10)
    reader = j.reader(0, None, ALL_KINDS_MASK)
    j.checkpointed(j.last_seq)
    fill(j, [4] * 60)  # the bound drops the first segments
    assert j.oldest_seq > 1
    assert [e["seq"] for e in lines(reader)] == [e.seq for e in written]
    j.close()


# -- torn tails and damage ---------------------------------------------------------------------


def test_a_torn_last_batch_is_cut_off_and_never_served(journal, caplog):
    written = fill(journal, [2, 3, 1])
    path = os.path.join(journal.directory, segment_files(journal.directory)[-1])
    assert len(segment_files(journal.directory)) == 1
    size = journal.bytes
    last_len = HEAD_SIZE + len(written[-1].frame())
    # The daemon died half-way through its copy: the rest of the batch is still zeros.
    journal._map[size - last_len // 2 : size] = bytes(last_len // 2)
    killed(journal)
    assert os.path.getsize(path) > size
    with caplog.at_level(logging.WARNING, "xenmux.journal"):
        j = Journal.open(journal.directory, journal.history, journal.max_bytes, 0)
    assert j.last_seq == 5 and j.bytes == size - last_len
    assert not file_bytes(path)[size - last_len :].strip(b"\0")  # the torn part is gone
    assert "cut off" in caplog.text and path in caplog.text
    assert [e["seq"] for e in lines(j.reader(0, None, ALL_KINDS_MASK))] == [1, 2, 3, 4, 5]
    j.append(events(6, 2))  # and it goes on from there
    assert [e["seq"] for e in lines(j.reader(4, None, ALL_KINDS_MASK))] == [5, 6, 7]
    j.close()


def test_what_a_kill_leaves_after_the_last_batch_is_cut_off_without_a_word(journal, caplog):
    written = fill(journal, [2, 3, 1])
    path = os.path.join(journal.directory, segment_files(journal.directory)[-1])
    size = journal.bytes
    killed(journal)
    assert os.path.getsize(path) > size  # the room the segment was allocated
    with caplog.at_level(logging.DEBUG, "xenmux.journal"):
        j = Journal.open(journal.directory, journal.history, journal.max_bytes, 0)
    assert j.last_seq == 6 and j.bytes == size
    assert not caplog.records
    assert b"".join(j.reader(0, None, ALL_KINDS_MASK)) == b"".join(e.frame() for e in written)
    j.append(events(7, 2))
    assert [e["seq"] for e in lines(j.reader(5, None, ALL_KINDS_MASK))] == [6, 7, 8]
    j.close()
    assert os.path.getsize(path) == j.bytes  # a clean stop cuts the file to what it holds


def test_mass_batches_and_one_larger_than_a_segment_survive_a_kill(journal):
    """A batch over COPY_MAX is written rather than copied; one over a segment's room gets
    a segment of its own, as large as it needs."""
    written = fill(journal, [2, 300, 1500, 1])
    assert sum(len(e.frame()) for e in written[2:302]) > journal_module.COPY_MAX
    assert sum(len(e.frame()) for e in written[302:1802]) > journal.segment_bytes
    assert b"".join(journal.reader(0, None, ALL_KINDS_MASK)) == b"".join(e.frame() for e in written)
    size = journal.bytes
    killed(journal)
    j = Journal.open(journal.directory, journal.history, journal.max_bytes, 0)
    assert (j.last_seq, j.bytes) == (1803, size)
    assert b"".join(j.reader(0, None, ALL_KINDS_MASK)) == b"".join(e.frame() for e in written)
    assert [e["seq"] for e in lines(j.reader(1700, [2], KIND_BITS[DEATH]))] == [
        e.seq for e in written[1700:] if e.domid == 2 and e.kind == DEATH
    ]
    j.close()


def test_garbage_after_the_last_batch_is_cut_off(journal):
    written = fill(journal, [2, 2])
    journal.close()
    path = os.path.join(journal.directory, segment_files(journal.directory)[-1])
    good = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b'{"seq": 5, "event": "death"}\n' + os.urandom(300))
    j = Journal.open(journal.directory, journal.history, journal.max_bytes, 0)
    assert j.bytes == good and j.last_seq == 4
    assert not file_bytes(path)[good:].strip(b"\0")
    assert b"".join(j.reader(0, None, ALL_KINDS_MASK)) == b"".join(e.frame() for e in written)
    j.close()


def test_damage_before_the_tail_is_found_when_read_and_costs_a_gap(tmp_path, caplog):
    """Only the last segment is read at open; an older one is checked when a reader first
    needs it. Damaged, it goes with those before it: the reader fails rather than skip
    events, and a cursor from before it gets a gap."""
    j = Journal.create(str(tmp_path), new_history_id(), 16 * 1024)
    written = fill(j, [3] * 40)
    names = segment_files(tmp_path)
    assert len(names) > 2
    second = tmp_path / names[1]
    with open(second, "r+b") as f:
        f.seek(SEG_HEAD_SIZE + HEAD_SIZE + 30)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    j = reopen(j)
    assert (j.oldest_seq, j.last_seq) == (1, 120)
    reader = j.reader(0, None, ALL_KINDS_MASK)
    got = []
    with caplog.at_level(logging.ERROR, "xenmux.journal"), pytest.raises(OSError, match="damaged"):
        for chunk in reader:
            got += lines([chunk])
    assert [e["seq"] for e in got] == list(range(1, len(got) + 1))  # nothing skipped
    third = int(names[2].split("-")[1])
    assert j.oldest_seq == third and segment_files(tmp_path) == names[2:]
    assert caplog.text.count("can no longer be replayed") == 1 and names[1] in caplog.text
    after = [e.frame() for e in written if e.seq >= third]
    assert b"".join(j.reader(third - 1, None, ALL_KINDS_MASK)) == b"".join(after)
    j.close()


def test_a_segment_of_another_history_is_corruption(tmp_path):
    j = Journal.create(str(tmp_path), new_history_id(), 1 << 20)
    fill(j, [2])
    j.close()
    with pytest.raises(CorruptState, match="another history"):
        Journal.open(str(tmp_path), new_history_id(), 1 << 20, 0)


def test_a_segment_of_an_older_format_is_corruption_that_names_it(tmp_path):
    history = new_history_id()
    j = Journal.create(str(tmp_path), history, 1 << 20)
    fill(j, [2])
    j.close()
    (path,) = (tmp_path / name for name in segment_files(tmp_path))
    with open(path, "r+b") as f:
        f.write(b"XMJRNL01")  # the first format, which had an index after each header
    with pytest.raises(CorruptState, match=r"another format .*XMJRNL01"):
        Journal.open(str(tmp_path), history, 1 << 20, 0)


def test_a_journal_that_ends_before_its_checkpoint_is_corruption(journal):
    fill(journal, [3])
    with pytest.raises(CorruptState, match="before its checkpoint"):
        reopen(journal, checkpoint_seq=9)


# -- the bound ---------------------------------------------------------------------------------


def test_the_bound_drops_the_oldest_segments_but_never_one_a_restart_needs(tmp_path):
    asked = []
    j = Journal.create(str(tmp_path), new_history_id(), 16 * 1024)
    j.on_pressure = lambda: asked.append(j.last_seq)
    fill(j, [3] * 80)
    # No checkpoint after seq 0: every event is needed, nothing may go; a checkpoint is asked.
    assert j.oldest_seq == 1 and j.bytes > j.max_bytes and asked
    j.checkpointed(j.last_seq)
    assert j.bytes <= j.max_bytes and j.oldest_seq > 1
    files = segment_files(tmp_path)
    assert len(files) == j.segment_count and int(files[0].split("-")[1]) == j.oldest_seq
    oldest = j.oldest_seq
    fill(j, [3] * 80)
    j.checkpointed(j.last_seq)
    assert j.oldest_seq > oldest and j.bytes <= j.max_bytes
    assert [e["seq"] for e in lines(j.reader(0, None, ALL_KINDS_MASK))] == list(
        range(j.oldest_seq, j.last_seq + 1)
    )
    j.close()


def test_a_full_disk_costs_a_gap_not_an_event(journal, monkeypatch, caplog):
    """A segment is given all its room when it is opened, so a full disk is found there,
    by the first batch that needs another segment, and never in an append's copy."""
    fill(journal, [2])

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module.os, "posix_fallocate", full)
    monkeypatch.setattr(journal_module.os, "write", full)
    with caplog.at_level(logging.ERROR, "xenmux.journal"):
        while not journal.write_errors:  # does not raise: the events still go out
            journal.append(events(journal.last_seq + 1, 2))
        refused = journal.last_seq  # that batch: refused - 1 and refused
        assert refused > 100  # the segment's room took the batches before it
        journal.append(events(refused + 1, 1))
    assert journal.write_errors == 2 and journal.last_seq == refused + 1
    assert caplog.text.count("cannot write") == 1  # once per episode
    assert segment_files(journal.directory) == []  # no segment left without its room
    monkeypatch.undo()
    journal.append(events(refused + 2, 2))
    # Nothing before the hole can be replayed any more: a cursor there gets a gap.
    assert journal.oldest_seq == refused + 2
    assert [e["seq"] for e in lines(journal.reader(refused + 1, None, ALL_KINDS_MASK))] == [
        refused + 2,
        refused + 3,
    ]


# -- the state dir -----------------------------------------------------------------------------


def test_the_state_dir_is_private_and_locked(tmp_path):
    path = str(tmp_path / "state")
    state = open_state(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o750
        for name in os.listdir(path):
            st = os.stat(os.path.join(path, name))
            assert stat.S_IMODE(st.st_mode) == 0o640, name
            assert st.st_uid == os.geteuid() and st.st_gid == os.getegid(), name
        with pytest.raises(StateDirError, match=f"another daemon is serving from .* {path}"):
            open_state(path)
    finally:
        state.close()
    open_state(path).close()  # free again


def test_a_state_dir_owned_by_someone_else_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory away")
    path = tmp_path / "state"
    path.mkdir()
    os.chown(path, 4242, 4242)
    with pytest.raises(
        StateDirError, match=r"state directory \(--state-dir\) .* is owned by uid 4242"
    ):
        StateDir.lock(str(path))


def test_a_state_dir_others_can_write_is_refused_with_one_line(tmp_path):
    # The socket directory's rule (mux/daemon/paths.py): whoever can write the state dir
    # can forge the history a restarted daemon replays.
    path = tmp_path / "state"
    path.mkdir()
    path.chmod(0o770)
    with pytest.raises(
        StateDirError, match=r"state directory \(--state-dir\) .* writable by group"
    ):
        StateDir.lock(str(path))
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    with pytest.raises(StateDirError, match="above the state directory"):
        StateDir.lock(str(open_parent / "state"))
    assert not (open_parent / "state").exists()  # nothing made under a directory others write


@pytest.mark.parametrize(
    "damage",
    ["garbage history", "history of another format", "strangers", "garbage checkpoint",
     "checkpoint of another history"],
)  # fmt: skip
def test_a_corrupt_or_foreign_state_dir_is_moved_aside_with_one_line(tmp_path, caplog, damage):
    path = tmp_path / "state"
    state = open_state(str(path))
    history = state.history.history
    state.statedir.write_checkpoint(history, 0, {"seq": 0, "gen": 0, "rows": []})
    state.close()
    if damage == "garbage history":
        (path / "history").write_bytes(os.urandom(64))
    elif damage == "history of another format":
        doc = json.loads((path / "history").read_text())
        (path / "history").write_text(json.dumps({**doc, "format": 99}))
    elif damage == "strangers":
        (path / "history").unlink()
        (path / "photos.tar").write_bytes(b"x")
    elif damage == "garbage checkpoint":
        (path / "checkpoint").write_bytes(b'{"format": 1, "seq": ')
    else:
        doc = json.loads((path / "checkpoint").read_text())
        (path / "checkpoint").write_text(json.dumps({**doc, "history": new_history_id()}))
    with caplog.at_level(logging.INFO, "xenmux.state"):
        again = open_state(str(path))
    try:
        assert again.history.history != history and again.restored is None
        (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("state.corrupt-")]
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert str(path) in errors[0].getMessage() and str(aside) in errors[0].getMessage()
        assert sorted(os.listdir(aside)) != []  # kept for a post-mortem
    finally:
        again.close()


def test_another_boot_drops_the_state_quietly(tmp_path, caplog):
    boot = tmp_path / "boot_id"
    boot.write_text("11111111-1111-1111-1111-111111111111\n")
    path = str(tmp_path / "state")
    state = open_state(path, boot_id_path=str(boot))
    history = state.history.history
    state.journal.append(events(1, 3))
    state.statedir.write_checkpoint(history, 3, {"seq": 3, "gen": 0, "rows": []})
    state.close()
    same = open_state(path, boot_id_path=str(boot))
    assert same.history.history == history and same.journal.last_seq == 3
    same.close()
    boot.write_text("22222222-2222-2222-2222-222222222222\n")
    with caplog.at_level(logging.INFO, "xenmux.state"):
        other = open_state(path, boot_id_path=str(boot))
    try:
        assert other.history.history != history and other.restored is None
        assert (other.journal.oldest_seq, other.journal.last_seq) == (1, 0)
        assert "another boot" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    finally:
        other.close()


def test_kinds_fit_the_batch_header():
    # The batch header keeps a 16-bit set of the kinds in it.
    assert len(EVENT_KINDS) <= 16
