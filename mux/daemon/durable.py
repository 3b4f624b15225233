"""What makes the stream outlive the daemon: the state dir, its journal and checkpoints.

`open_state` takes the state dir and restores what a previous daemon of this boot left:
the checkpoint (the table's dump at some seq) plus the journal's events after it, replayed
onto it, give the table as it stood after the last event any subscriber could have seen.
The daemon's first scan is then diffed against that table, so what happened while no
daemon ran comes out as ordinary events, flagged late. A state of another boot is
discarded; a state that cannot be read is moved aside with one log line, and a new history
starts. Only a state dir that is in use or not ours stops the daemon (StateDirError).

The `Checkpointer` dumps the table on the event loop when no scan is between its diff and
its publication (so the dump and the journal agree on `seq`), and writes it off the loop:
every `interval` seconds, when the journal needs room, and at a clean stop. No full-table
write sits on the per-firing path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass

from mux.daemon.aio import cancel_and_wait
from mux.daemon.journal import Journal
from mux.daemon.statedir import (
    BOOT_ID_PATH,
    CorruptState,
    History,
    StateDir,
    StateDirError,
    read_boot_id,
)
from mux.reference import DumpBatches, replay

log = logging.getLogger("xenmux.state")

DEFAULT_JOURNAL_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_CHECKPOINT_INTERVAL = 60.0
CONSISTENT_WAIT = 0.01  # how often to look again while a scan waits for names


@dataclass
class DurableState:
    """A locked state dir, its history and journal, and the table to go on from."""

    statedir: StateDir
    history: History
    journal: Journal
    restored: dict | None  # the table's dump to load (None: a new history, prime it)
    checkpoint_seq: int | None  # of the checkpoint on disk (None: none yet)
    checkpoint_time: float | None  # when it was written (Unix time)
    temporary: bool = False  # the directory goes at close

    def close(self) -> None:
        self.journal.close()
        self.statedir.close()
        if self.temporary:
            shutil.rmtree(self.statedir.path, ignore_errors=True)


def open_state(
    path: str | None,
    *,
    journal_max_bytes: int = DEFAULT_JOURNAL_MAX_BYTES,
    boot_id_path: str = BOOT_ID_PATH,
) -> DurableState:
    """Lock the state dir at `path` and restore it (None: a private temporary directory,
    removed at close, for a daemon embedded in a test). Raises StateDirError."""
    temporary = path is None
    if path is None:
        path = tempfile.mkdtemp(prefix="xenmux-state-")
    boot_id = read_boot_id(boot_id_path)
    for _attempt in range(3):
        statedir = StateDir.lock(path)
        try:
            state = _restore(statedir, boot_id, journal_max_bytes)
        except CorruptState as exc:
            aside = statedir.move_aside()
            log.error(
                "the state dir %s cannot be continued (%s): moved aside to %s; "
                "a new history starts",
                path,
                exc,
                aside,
            )
            continue
        except OSError as exc:
            statedir.close()
            raise StateDirError(f"cannot read the state dir {path}: {exc}") from None
        except BaseException:
            statedir.close()
            raise
        state.temporary = temporary
        return state
    raise StateDirError(f"the state dir {path} keeps turning out corrupt")  # pragma: no cover


def _restore(statedir: StateDir, boot_id: str | None, max_bytes: int) -> DurableState:
    history = statedir.read_history()
    if history is not None and (boot_id is None or history.boot_id != boot_id):
        log.info(
            "the state in %s is of another boot (%s): its table and journal are dropped",
            statedir.path,
            history.boot_id,
        )
        history = None
    if history is not None:
        checkpoint = statedir.read_checkpoint(history.history)
        if checkpoint is not None:
            journal = Journal.open(statedir.path, history.history, max_bytes, checkpoint.seq)
            try:
                tail = journal.events_after(checkpoint.seq)
                table = replay(checkpoint.table, tail)
            except (ValueError, KeyError, TypeError) as exc:
                journal.close()
                raise CorruptState(f"its journal does not replay ({exc!r})") from None
            log.info(
                "history %s goes on from seq %d (checkpoint at %d, %d events after it)",
                history.history,
                journal.last_seq,
                checkpoint.seq,
                len(tail),
            )
            return DurableState(
                statedir, history, journal, table, checkpoint.seq, checkpoint.written_at
            )
        # Killed before its first checkpoint: nothing was served from this history (the
        # socket opens after it), unless its journal says otherwise.
        journal = Journal.open(statedir.path, history.history, max_bytes, 0)
        events = journal.last_seq
        journal.close()
        if events:
            raise CorruptState("its journal has events but there is no checkpoint")
    history = statedir.new_history(boot_id)
    journal = Journal.create(statedir.path, history.history, max_bytes)
    # Said once the daemon serves ("new history" in its serving line): a start that fails
    # before that (a busy metrics port) then prints only why.
    log.debug("new history %s in %s", history.history, statedir.path)
    return DurableState(statedir, history, journal, None, None, None)


class Checkpointer:
    """Writes the table's dump to the state dir, so that a restart replays little."""

    def __init__(self, state: DurableState, table, *, interval: float) -> None:
        self.state = state
        self.table = table
        self.interval = interval
        self.seq = state.checkpoint_seq  # of the newest checkpoint written
        self.written_at = state.checkpoint_time  # Unix time of it
        self.errors = 0
        self.ready = False  # the table is complete: primed or restored and caught up
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        state.journal.on_pressure = self._wake.set

    def write_now(self) -> None:
        """A checkpoint on the loop, written before this returns (start-up and stop)."""
        if not self.ready or self.table.seq != self.state.journal.last_seq:
            return
        if self.seq == self.table.seq and self.seq is not None:
            return
        self._write(self.table.seq, self.table.dump_batches())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="checkpoints")

    async def stop(self) -> None:
        """Stop the periodic checkpoints and write the last one (the scans have stopped)."""
        await cancel_and_wait(self._task)
        self._task = None
        try:
            self.write_now()
        except OSError as exc:
            log.warning("could not write the last checkpoint: %s", exc)

    def age(self) -> float | None:
        return None if self.written_at is None else time.time() - self.written_at

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for loses a stop's cancellation that
            # meets a wake-up, and this loop would then never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._checkpoint()
            except OSError as exc:
                self.errors += 1
                log.warning("could not write a checkpoint: %s; trying again later", exc)

    async def _checkpoint(self) -> None:
        journal = self.state.journal
        # A scan may be between its diff and its publication (waiting for names): the
        # table is then ahead of the journal, and a dump of it would be too.
        while self.table.seq != journal.last_seq:
            await asyncio.sleep(CONSISTENT_WAIT)
        seq = self.table.seq
        if seq == self.seq:
            journal.checkpointed(seq)
            return
        dump = self.table.dump_batches()
        state = self.state
        await asyncio.to_thread(state.statedir.write_checkpoint, state.history.history, seq, dump)
        self._written(seq)

    def _write(self, seq: int, dump: dict | DumpBatches) -> None:
        self.state.statedir.write_checkpoint(self.state.history.history, seq, dump)
        self._written(seq)

    def _written(self, seq: int) -> None:
        self.seq = seq
        self.written_at = time.time()
        self.state.journal.checkpointed(seq)
