"""The journal: every event on disk before any subscriber can see it, for replay by cursor.

Segments `journal-<first seq, 20 digits>` in the state dir (statedir.py), each:

    segment header, 32 bytes: magic b"XMJRNL01", the history (16 bytes), the first seq (u64)
    one batch per `append` (one write(2) each), little endian:
        header, 24 bytes: body length u32, crc32 u32, first seq u64, count u32,
                          kinds u16 (bit i set: EVENT_KINDS[i] occurs in the batch), 0 u16
        index: count x (domid u16, kind u8, 0 u8, frame length u32)
        frames: the events' frames, the very bytes subscribers get, back to back

The crc32 covers the header from `first seq` on, and the body. A batch's frames lie back to
back, so replaying to a wildcard subscriber copies whole frame regions; other subscriptions
walk the index. The journal only has to outlive the daemon, not the host (a reboot starts
a new history), so nothing is fsynced.

A daemon killed in the middle of a write leaves a torn last batch: `open` cuts it off. It
was never sent: the fan-out comes after the write. Anything else that does not check (a bad
batch before the tail, segments that do not follow each other, another history's segment)
is `CorruptState`.

Bound: a segment is closed at `segment_bytes`; when the segments total more than
`max_bytes` the oldest are deleted, except those holding events after the latest
checkpoint (a restart needs them): then the journal asks for a checkpoint (`on_pressure`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Collection, Sequence

from mux.daemon.fanout import Event
from mux.daemon.statedir import JOURNAL_PREFIX, CorruptState
from mux.protocol import EVENT_KINDS

log = logging.getLogger("xenmux.journal")

MAGIC = b"XMJRNL01"
_SEG_HEAD = struct.Struct("<8s16sQ")
_HEAD = struct.Struct("<IIQIHH")
_IDX = struct.Struct("<HBxI")
_CRC_FROM = 8  # the crc covers the batch header from its first seq on
SEG_HEAD_SIZE = _SEG_HEAD.size
HEAD_SIZE = _HEAD.size
IDX_SIZE = _IDX.size

CHUNK = 256 * 1024  # bytes of frames a reader hands over at a time (about)
MIN_MAX_BYTES = 16 * 1024
SEGMENT_MIN = 4 * 1024
SEGMENT_MAX = 8 * 1024 * 1024

_KIND_CODES = {kind: code for code, kind in enumerate(EVENT_KINDS)}
_KNOWN_KINDS = (1 << len(EVENT_KINDS)) - 1


def segment_name(first_seq: int) -> str:
    return f"{JOURNAL_PREFIX}{first_seq:020d}"


def segment_bytes_for(max_bytes: int) -> int:
    """Segments of an eighth of the bound (within limits): dropping one frees little, and a
    full journal is a handful of files."""
    return max(SEGMENT_MIN, min(SEGMENT_MAX, max_bytes // 8))


class _Segment:
    """One segment file and, in memory, where each of its batches starts."""

    __slots__ = ("first_seq", "last_seq", "offs", "path", "seqs", "size")

    def __init__(self, path: str, first_seq: int) -> None:
        self.path = path
        self.first_seq = first_seq
        self.last_seq = first_seq - 1  # no event yet
        self.size = SEG_HEAD_SIZE
        self.seqs = array("q")  # first seq of each batch
        self.offs = array("q")  # file offset of each batch

    def add(self, first: int, count: int, length: int) -> None:
        self.seqs.append(first)
        self.offs.append(self.size)
        self.last_seq = first + count - 1
        self.size += length

    def batch_of(self, seq: int) -> int:
        """Index of the batch that holds `seq` (first_seq <= seq <= last_seq)."""
        return bisect_right(self.seqs, seq) - 1


class Journal:
    def __init__(
        self,
        directory: str,
        history: str,
        max_bytes: int,
        segments: list[_Segment],
        checkpoint_seq: int,
    ) -> None:
        self.directory = directory
        self.history = history
        self._history_bytes = bytes.fromhex(history)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes_for(max_bytes)
        self._segments = segments
        self._checkpoint_seq = checkpoint_seq
        self.last_seq = segments[-1].last_seq if segments else checkpoint_seq
        self.bytes = sum(s.size for s in segments)
        self._fd: int | None = None
        self.on_pressure: Callable[[], None] | None = None  # set by the checkpointer
        self.appends = 0  # batches written
        self.appended_events = 0
        self.replayed_events = 0  # frames handed to readers for subscribers
        self.write_errors = 0
        self._failing = False
        if segments:
            self._fd = _open_for_append(segments[-1].path)

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str, history: str, max_bytes: int, first_seq: int = 1) -> Journal:
        """An empty journal whose first event will be `first_seq` (a new history)."""
        _check_max_bytes(max_bytes)
        seg = _new_segment(directory, bytes.fromhex(history), first_seq)
        return cls(directory, history, max_bytes, [seg], first_seq - 1)

    @classmethod
    def open(cls, directory: str, history: str, max_bytes: int, checkpoint_seq: int) -> Journal:
        """The journal of `history` as the last daemon left it, its torn tail cut off.

        Raises CorruptState if it cannot continue from `checkpoint_seq` (the seq of the
        table's checkpoint): every event after it must be here."""
        _check_max_bytes(max_bytes)
        hist = bytes.fromhex(history)
        names = sorted(n for n in os.listdir(directory) if n.startswith(JOURNAL_PREFIX))
        segments: list[_Segment] = []
        for i, name in enumerate(names):
            seg = _scan_segment(directory, name, hist, last=i == len(names) - 1)
            if segments and segments[-1].last_seq < segments[-1].first_seq:
                raise CorruptState(f"its journal segment {names[i - 1]} is empty")
            if segments and seg.first_seq != segments[-1].last_seq + 1:
                raise CorruptState(
                    f"its journal jumps from seq {segments[-1].last_seq} to {seg.first_seq} "
                    f"at {name}"
                )
            segments.append(seg)
        if not segments:
            raise CorruptState("it has a checkpoint but no journal")
        if segments[0].first_seq > checkpoint_seq + 1:
            raise CorruptState(
                f"its journal starts at seq {segments[0].first_seq}, after its checkpoint "
                f"at seq {checkpoint_seq}: the events between are gone"
            )
        if segments[-1].last_seq < checkpoint_seq:
            raise CorruptState(
                f"its journal ends at seq {segments[-1].last_seq}, before its checkpoint "
                f"at seq {checkpoint_seq}"
            )
        return cls(directory, history, max_bytes, segments, checkpoint_seq)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- what it holds -----------------------------------------------------------------------

    @property
    def oldest_seq(self) -> int:
        """The oldest seq that can be replayed (last_seq + 1 when there is none)."""
        return self._segments[0].first_seq if self._segments else self.last_seq + 1

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    # -- appending ---------------------------------------------------------------------------

    def append(self, events: Sequence[Event]) -> None:
        """Write one batch of events (seqs following `last_seq`) with one write(2).

        Never raises: if the disk refuses, the events go out all the same, the journal
        starts again after them, and cursors from before get a gap (logged, counted)."""
        n = len(events)
        if not n:
            return
        first = events[0].seq
        last = first + n - 1
        parts = []
        frames = []
        kinds = 0
        pack = _IDX.pack
        codes = _KIND_CODES
        for ev in events:
            frame = ev.frame()
            code = codes[ev.kind]
            kinds |= 1 << code
            parts.append(pack(ev.domid, code, len(frame)))
            frames.append(frame)
        parts += frames
        body = b"".join(parts)
        tail = _HEAD.pack(0, 0, first, n, kinds, 0)[_CRC_FROM:]
        crc = zlib.crc32(body, zlib.crc32(tail))
        record = struct.pack("<II", len(body), crc) + tail + body
        try:
            if first != self.last_seq + 1:
                log.error(
                    "journal: events %d-%d do not follow seq %d; starting the journal again",
                    first,
                    last,
                    self.last_seq,
                )
                self._restart(first)
            self._write(record, first, n)
        except OSError as exc:
            self._lost(first, last, exc)
            return
        self.appends += 1
        self.appended_events += n
        if self._failing:
            self._failing = False
            log.warning("journal: writing again from seq %d", first)
        if self.bytes > self.max_bytes:
            self._trim()

    def _write(self, record: bytes, first: int, n: int) -> None:
        if not self._segments or self._fd is None:
            self._restart(first)
        seg = self._segments[-1]
        if seg.seqs and seg.size + len(record) > self.segment_bytes:
            seg = self._rotate(first)
        written = os.write(self._fd, record)
        if written != len(record):
            # Only a full disk writes short: undo it, so the file ends on a whole batch.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, seg.size)
            raise OSError(28, f"short write ({written} of {len(record)} bytes)")
        seg.add(first, n, len(record))
        self.last_seq = seg.last_seq
        self.bytes += len(record)

    def _rotate(self, first: int) -> _Segment:
        seg = _new_segment(self.directory, self._history_bytes, first)
        self.close()
        self._fd = _open_for_append(seg.path)
        self._segments.append(seg)
        self.bytes += seg.size
        return seg

    def _restart(self, first: int) -> None:
        """Drop every segment and start again at `first` (after a hole: no cursor from
        before it can be served)."""
        self.close()
        for seg in self._segments:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(seg.path)
        self._segments = []
        self.bytes = 0
        self.last_seq = first - 1
        seg = _new_segment(self.directory, self._history_bytes, first)
        self._fd = _open_for_append(seg.path)
        self._segments.append(seg)
        self.bytes = seg.size

    def _lost(self, first: int, last: int, exc: OSError) -> None:
        self.write_errors += 1
        if not self._failing:
            log.error(
                "journal: cannot write to %s (%s): events %d-%d are not journaled, and a "
                "subscriber resuming from before them gets a gap",
                self.directory,
                exc.strerror or exc,
                first,
                last,
            )
        self._failing = True
        self.last_seq = last
        try:
            self._restart(last + 1)
        except OSError:
            self.close()
            self._segments = []
            self.bytes = 0
        if self.on_pressure is not None:
            self.on_pressure()  # a checkpoint at the new start lets a restart begin there

    # -- the bound ---------------------------------------------------------------------------

    def checkpointed(self, seq: int) -> None:
        """The table is checkpointed at `seq`: segments up to it may go."""
        self._checkpoint_seq = max(self._checkpoint_seq, seq)
        if self.bytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        segs = self._segments
        while self.bytes > self.max_bytes and len(segs) > 1:
            oldest = segs[0]
            if oldest.last_seq > self._checkpoint_seq:
                if self.on_pressure is not None:
                    self.on_pressure()
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(oldest.path)
            del segs[0]
            self.bytes -= oldest.size

    # -- reading -----------------------------------------------------------------------------

    def reader(self, after_seq: int, domids: Collection[int] | None, mask: int) -> JournalReader:
        """The frames of the events after `after_seq`, up to `last_seq` as it is now, that
        match `domids` (None: every domain) and the kinds in `mask`, in seq order."""
        return JournalReader(self, after_seq, domids, mask)

    def events_after(self, seq: int) -> list[dict]:
        """Every journaled event after `seq`, parsed (the restart's replay)."""
        out = []
        for chunk in JournalReader(self, seq, None, _KNOWN_KINDS, counted=False):
            out.extend(json.loads(line) for line in chunk.splitlines())
        return out


class JournalReader:
    """An iterator of chunks of frames (whole lines, about CHUNK bytes each) from a
    journal, fixed when made: later events are not in it, and segments deleted meanwhile
    are still read (their files stay open here). `close()` (or the end) lets them go."""

    def __init__(
        self,
        journal: Journal,
        after_seq: int,
        domids: Collection[int] | None,
        mask: int,
        *,
        counted: bool = True,
    ) -> None:
        # (fd, segment, first batch, last batch, end offset of the last batch) to read.
        self._todo: deque[tuple[int, _Segment, int, int, int]] = deque()
        self._ready: deque[bytes] = deque()
        self._journal = journal if counted else None
        self._after = after_seq
        self._domids = None if domids is None else frozenset(domids)
        self._mask = mask
        try:
            for seg in journal._segments:
                if seg.last_seq <= after_seq or not seg.seqs:
                    continue
                first_batch = max(seg.batch_of(after_seq + 1), 0)
                fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
                self._todo.append((fd, seg, first_batch, len(seg.seqs) - 1, seg.size))
        except OSError:
            self.close()
            raise

    def __iter__(self) -> JournalReader:
        return self

    def __next__(self) -> bytes:
        while not self._ready:
            if not self._todo:
                self.close()
                raise StopIteration
            self._read_some()
        return self._ready.popleft()

    def close(self) -> None:
        while self._todo:
            os.close(self._todo.popleft()[0])

    def __del__(self) -> None:
        self.close()

    def _read_some(self) -> None:
        """Read up to about CHUNK bytes of whole batches of the next segment and turn them
        into chunks of matching frames."""
        fd, seg, i, last, end_off = self._todo[0]
        offs = seg.offs
        start = offs[i]
        # The last batch that still fits (at least one).
        j = max(bisect_left(offs, start + CHUNK, i + 1, last + 1) - 1, i)
        stop = offs[j + 1] if j < last else end_off
        data = os.pread(fd, stop - start, start)
        if j < last:
            self._todo[0] = (fd, seg, j + 1, last, end_off)
        else:
            self._todo.popleft()
            os.close(fd)
        if len(data) != stop - start:  # pragma: no cover - our own file, never shortened
            raise OSError(5, f"{seg.path}: read {len(data)} of {stop - start} bytes")
        self._select(data)

    def _select(self, data: bytes) -> None:
        after, domids, mask = self._after, self._domids, self._mask
        out = _Chunks(self._ready, data)
        sent = 0
        p = 0
        end = len(data)
        unpack_head = _HEAD.unpack_from
        iter_index = _IDX.iter_unpack
        mv = out.view
        while p < end:
            body_len, _crc, first, count, kinds, _ = unpack_head(data, p)
            index = p + HEAD_SIZE
            frames = index + count * IDX_SIZE
            nxt = index + body_len
            if domids is None and not kinds & ~mask and first > after:
                out.add_lines(frames, nxt)
                sent += count
            else:
                seq = first
                pos = frames
                for domid, kind, length in iter_index(mv[index:frames]):
                    if seq > after and (1 << kind) & mask and (domids is None or domid in domids):
                        out.add(pos, pos + length)
                        sent += 1
                    pos += length
                    seq += 1
            p = nxt
        out.flush()
        if self._journal is not None:
            self._journal.replayed_events += sent


class _Chunks:
    """Frames of one read gathered into chunks of about CHUNK bytes, appended to `ready`."""

    __slots__ = ("data", "pieces", "ready", "size", "view")

    def __init__(self, ready: deque[bytes], data: bytes) -> None:
        self.ready = ready
        self.data = data
        self.view = memoryview(data)
        self.pieces: list[memoryview] = []
        self.size = 0

    def add(self, start: int, stop: int) -> None:
        self.pieces.append(self.view[start:stop])
        self.size += stop - start
        if self.size >= CHUNK:
            self.flush()

    def add_lines(self, start: int, stop: int) -> None:
        """A run of whole frames, cut at line ends when it alone is over CHUNK."""
        while stop - start > CHUNK:
            cut = self.data.find(b"\n", start + CHUNK - 1, stop) + 1
            if cut <= 0 or cut >= stop:
                break
            self.add(start, cut)
            start = cut
        self.add(start, stop)

    def flush(self) -> None:
        if self.pieces:
            self.ready.append(b"".join(self.pieces))
            self.pieces = []
            self.size = 0


# -- files ---------------------------------------------------------------------------------------


def _check_max_bytes(max_bytes: int) -> None:
    if max_bytes < MIN_MAX_BYTES:
        raise ValueError(f"--journal-max-bytes must be at least {MIN_MAX_BYTES} (got {max_bytes})")


def _open_for_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)


def _new_segment(directory: str, history: bytes, first_seq: int) -> _Segment:
    path = os.path.join(directory, segment_name(first_seq))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, _SEG_HEAD.pack(MAGIC, history, first_seq))
    finally:
        os.close(fd)
    return _Segment(path, first_seq)


def _scan_segment(directory: str, name: str, history: bytes, *, last: bool) -> _Segment:
    """Check every batch of a segment and note where each starts. The last segment may end
    in a torn batch (the daemon died in its write): it is cut off."""
    path = os.path.join(directory, name)
    try:
        first_seq = int(name[len(JOURNAL_PREFIX) :])
    except ValueError:
        raise CorruptState(f"it holds {name}, which is not a journal segment") from None
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
        seg = _Segment(path, first_seq)
        if len(data) < SEG_HEAD_SIZE and last:
            # Died before the header was written: an empty segment.
            os.ftruncate(fd, 0)
            os.pwrite(fd, _SEG_HEAD.pack(MAGIC, history, first_seq), 0)
            return seg
        head = _SEG_HEAD.unpack_from(data, 0) if len(data) >= SEG_HEAD_SIZE else None
        if head is None or head[0] != MAGIC:
            raise CorruptState(f"{name} is not a journal segment")
        if head[1] != history or head[2] != first_seq:
            raise CorruptState(f"{name} belongs to another history")
        bad = _check_batches(data, seg)
        if bad is not None:
            if not last:
                raise CorruptState(f"{name} is damaged at byte {seg.size} ({bad})")
            log.warning(
                "journal: cut off %d bytes of a torn write at the end of %s (after seq %d)",
                len(data) - seg.size,
                path,
                seg.last_seq,
            )
            os.ftruncate(fd, seg.size)
        return seg
    finally:
        os.close(fd)


def _check_batches(data: bytes, seg: _Segment) -> str | None:
    """Add each whole, sound batch of `data` to `seg`; at the first that is not, say why."""
    view = memoryview(data)
    size = len(data)
    p = SEG_HEAD_SIZE
    expect = seg.first_seq
    crc32 = zlib.crc32
    unpack_head = _HEAD.unpack_from
    while p < size:
        if size - p < HEAD_SIZE:
            return "a batch header cut short"
        body_len, crc, first, count, kinds, _ = unpack_head(data, p)
        nxt = p + HEAD_SIZE + body_len
        if nxt > size:
            return "a batch cut short"
        if crc32(view[p + HEAD_SIZE : nxt], crc32(view[p + _CRC_FROM : p + HEAD_SIZE])) != crc:
            return "a checksum that does not match"
        if first != expect or count == 0 or count * IDX_SIZE > body_len:
            return f"a batch of seq {first} where {expect} was due"
        if kinds & ~_KNOWN_KINDS:
            return "an event kind this daemon does not know"
        seg.add(first, count, nxt - p)
        expect = first + count
        p = nxt
    return None
