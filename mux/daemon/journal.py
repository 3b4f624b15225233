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

A daemon killed in the middle of a write leaves a torn last batch: `open` checks the last
segment, batch by batch, and cuts it off. It was never sent: the fan-out comes after the
write. A segment of another history is `CorruptState`. The older segments are only checked
when first read (so that a restart does not read the whole journal): one found damaged
then is dropped with the segments before it, so that a cursor there gets a gap, and the
reader that found it fails rather than skip events.

Bound: a segment is closed at `segment_bytes`; when the segments total more than
`max_bytes` the oldest are deleted, except those holding events after the latest
checkpoint (a restart needs them): then the journal asks for a checkpoint (`on_pressure`).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
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
_LENCRC = struct.Struct("<II")
_CRC_FROM = _LENCRC.size  # the crc covers the batch header from its first seq on
_TAIL = struct.Struct("<QIHH")  # the header from `first seq` on
_TAIL_ONE = struct.Struct("<QIHHHBxI")  # that and the index of a batch of one event
_DOM = struct.Struct("<H")
_TAIL_SIZE = _TAIL.size
_pack_one = _TAIL_ONE.pack
_pack_lencrc = _LENCRC.pack
_crc32 = zlib.crc32
SEG_HEAD_SIZE = _SEG_HEAD.size
HEAD_SIZE = _HEAD.size
IDX_SIZE = _IDX.size

CHUNK = 256 * 1024  # bytes of frames a reader hands over at a time (at most 1.5 times that)
MIN_MAX_BYTES = 16 * 1024
SEGMENT_MIN = 4 * 1024
SEGMENT_MAX = 8 * 1024 * 1024

_KIND_CODES = {kind: code for code, kind in enumerate(EVENT_KINDS)}
_KNOWN_KINDS = (1 << len(EVENT_KINDS)) - 1
MANY = 0xFFFF  # the domid of a batch whose events are of several domids


def segment_name(first_seq: int) -> str:
    return f"{JOURNAL_PREFIX}{first_seq:020d}"


def segment_bytes_for(max_bytes: int) -> int:
    """Segments of an eighth of the bound (within limits): dropping one frees little, and a
    full journal is a handful of files."""
    return max(SEGMENT_MIN, min(SEGMENT_MAX, max_bytes // 8))


class _Segment:
    """One segment file and, in memory, what a reader needs of each batch without reading
    it: where it starts, where its frames start, its first seq, its kinds and its domid
    (MANY if several), so that a wildcard replay is a list of slices and a filtered one
    skips most batches unread. The writer only counts bytes (`size`, `last_seq`): the
    batches it wrote, or an older segment's, are indexed when a reader first needs them
    (`index_more`); those of a segment not yet `checked` are checked then."""

    __slots__ = ("checked", "doms", "first_seq", "frames", "indexed", "indexed_last", "kinds")
    __slots__ += ("last_seq", "offs", "path", "seqs", "size", "union")

    def __init__(self, path: str, first_seq: int) -> None:
        self.path = path
        self.first_seq = first_seq
        self.last_seq = first_seq - 1  # no event yet
        self.size = SEG_HEAD_SIZE
        self.indexed = SEG_HEAD_SIZE  # the batches before this offset are in the arrays
        self.indexed_last = first_seq - 1  # the last seq of those
        self.checked = True  # each batch's checksum and seq (False: to do when indexed)
        self.seqs = array("Q")  # first seq of each batch
        self.offs = array("I")  # file offset of each batch (a segment is far below 4 GiB)
        self.frames = array("I")  # file offset of its frames
        self.kinds = array("H")  # bit i: EVENT_KINDS[i] occurs in it
        self.doms = array("H")
        self.union = 0  # of the kinds of every batch

    @property
    def empty(self) -> bool:
        return self.last_seq < self.first_seq

    def add(self, off: int, first: int, count: int, kinds: int, dom: int) -> None:
        self.seqs.append(first)
        self.offs.append(off)
        self.frames.append(off + HEAD_SIZE + count * IDX_SIZE)
        self.kinds.append(kinds)
        self.doms.append(dom)
        self.union |= kinds
        self.indexed_last = first + count - 1

    def index_more(self, fd: int) -> None:
        """Index about CHUNK bytes more of the segment (at least one batch; `fd` reads
        the file). Raises CorruptState for a damaged batch of a segment not yet checked."""
        at = self.indexed
        data = os.pread(fd, min(self.size - at, CHUNK), at)
        if len(data) >= HEAD_SIZE:
            need = HEAD_SIZE + _HEAD.unpack_from(data)[0]
            if len(data) < need <= self.size - at:  # one batch larger than a chunk
                data = os.pread(fd, need, at)
        complete = at + len(data) >= self.size
        why = _index_batches(memoryview(data), self, at, check=not self.checked, whole=complete)
        if why is None and self.indexed >= self.size and self.indexed_last != self.last_seq:
            why = f"it ends at seq {self.indexed_last} where {self.last_seq} was due"
        if why is not None:
            raise CorruptState(f"{self.path} is damaged at byte {self.indexed} ({why})")
        if self.indexed >= self.size:
            self.checked = True

    def batch_of(self, seq: int) -> int:
        """Index of the batch that holds `seq` (first_seq <= seq <= indexed_last)."""
        return bisect_right(self.seqs, seq) - 1

    def last_of(self, k: int) -> int:
        """The last seq of batch k."""
        seqs = self.seqs
        return seqs[k + 1] - 1 if k + 1 < len(seqs) else self.indexed_last


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
        self._first_last_seq = self.last_seq  # where this daemon's appends began
        self.lost_events = 0  # not journaled: the disk refused them
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
        segments = [
            _scan_segment(directory, name, hist, last=i == len(names) - 1)
            for i, name in enumerate(names)
        ]
        for seg, later in itertools.pairwise(segments):
            # Not read yet: it holds what comes before the next one.
            seg.last_seq = later.first_seq - 1
            if seg.last_seq < seg.first_seq or seg.size <= SEG_HEAD_SIZE:
                raise CorruptState(f"its journal segment {seg.path} is empty")
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
        starts again after them, and cursors from before get a gap (logged, counted).
        This is on every firing's path: the usual batch of one event takes the shortest
        way, everything unusual `_append`."""
        n = len(events)
        if n == 1:
            ev = events[0]
            first = last = ev.seq
            frame = ev.frame()
            code = _KIND_CODES[ev.kind]
            body = _pack_one(first, 1, 1 << code, 0, ev.domid, code, len(frame)) + frame
            record = _pack_lencrc(len(body) - _TAIL_SIZE, _crc32(body)) + body
        elif n:
            first = events[0].seq
            last = first + n - 1
            record = _batch(events, first, n)
        else:
            return
        seg = self._segments[-1] if self._segments else None
        size = len(record)
        if (
            seg is None
            or self._failing
            or first != self.last_seq + 1
            or (seg.size + size > self.segment_bytes and seg.last_seq >= seg.first_seq)
        ):
            self._append(record, first, last)
            return
        try:
            written = os.write(self._fd, record)
        except OSError as exc:
            self._lost(first, last, exc, seg)
            return
        if written != size:
            self._lost(first, last, OSError(28, f"short write ({written} of {size} bytes)"), seg)
            return
        seg.size += size
        seg.last_seq = self.last_seq = last
        self.bytes += size
        self.appends += 1
        if self.bytes > self.max_bytes:
            self._trim()

    def _append(self, record: bytes, first: int, last: int) -> None:
        """`append` when it is not the usual: a hole to restart after, a segment to
        rotate, a disk that refused the last write."""
        seg = None
        try:
            if first != self.last_seq + 1:
                log.error(
                    "journal: events %d-%d do not follow seq %d; starting the journal again",
                    first,
                    last,
                    self.last_seq,
                )
                self._restart(first)
            if not self._segments or self._fd is None:
                self._restart(first)
            seg = self._segments[-1]
            if seg.size + len(record) > self.segment_bytes and not seg.empty:
                seg = self._rotate(first)
            written = os.write(self._fd, record)
            if written != len(record):
                raise OSError(28, f"short write ({written} of {len(record)} bytes)")
        except OSError as exc:
            self._lost(first, last, exc, seg)
            return
        seg.size += len(record)
        seg.last_seq = self.last_seq = last
        self.bytes += len(record)
        self.appends += 1
        if self._failing:
            self._failing = False
            log.warning("journal: writing again from seq %d", first)
        if self.bytes > self.max_bytes:
            self._trim()

    @property
    def appended_events(self) -> int:
        return self.last_seq - self._first_last_seq - self.lost_events

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

    def _lost(self, first: int, last: int, exc: OSError, seg: _Segment | None) -> None:
        if seg is not None and self._fd is not None:
            # A short write (a full disk): undo it, so that the file ends on a whole batch.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, seg.size)
        self.write_errors += 1
        self.lost_events += last - first + 1
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

    def _damaged(self, seg: _Segment, exc: CorruptState) -> None:
        """An older segment turned out damaged: it goes, with those before it."""
        if seg not in self._segments:
            return
        n = self._segments.index(seg) + 1
        log.error(
            "journal: %s; events up to seq %d can no longer be replayed (cursors before "
            "them get a gap)",
            exc,
            seg.last_seq,
        )
        for old in self._segments[:n]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old.path)
            self.bytes -= old.size
        del self._segments[:n]

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
        try:
            for chunk in JournalReader(self, seq, None, _KNOWN_KINDS, counted=False):
                out.extend(json.loads(line) for line in chunk.splitlines())
        except OSError as exc:
            raise CorruptState(f"its journal cannot be read back: {exc}") from None
        return out


class JournalReader:
    """An iterator of chunks of frames (whole lines, at most about CHUNK bytes each) from a
    journal, fixed when made: later events are not in it, and segments deleted meanwhile
    are still read (their files stay open here). Each step reads or indexes about CHUNK
    bytes of journal, so a chunk may be empty (a filter that matched nothing there): the
    caller's loop serves others between steps. `close()` (or the end) lets the files go."""

    def __init__(
        self,
        journal: Journal,
        after_seq: int,
        domids: Collection[int] | None,
        mask: int,
        *,
        counted: bool = True,
    ) -> None:
        # (fd, segment, next batch or -1 (not yet found), end offset) of each segment.
        self._todo: deque[list] = deque()
        self._ready: deque[bytes] = deque()
        self._owner = journal
        self._journal = journal if counted else None  # counts what it replays
        self._after = after_seq
        self._domids = None if domids is None else frozenset(domids)
        self._mask = mask
        try:
            for seg in journal._segments:
                if seg.last_seq > after_seq:
                    fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
                    self._todo.append([fd, seg, -1, seg.size])
        except OSError:
            self.close()
            raise

    def __iter__(self) -> JournalReader:
        return self

    def __next__(self) -> bytes:
        if not self._ready:
            if not self._todo:
                self.close()
                raise StopIteration
            self._step()
        return self._ready.popleft() if self._ready else b""

    def close(self) -> None:
        while self._todo:
            os.close(self._todo.popleft()[0])

    def __del__(self) -> None:
        self.close()

    def _step(self) -> None:
        """Index, or read and select, about CHUNK bytes of the next segment."""
        todo = self._todo[0]
        fd, seg, i, end_off = todo
        offs = seg.offs
        if seg.indexed < end_off and (
            i >= len(offs) or (i < 0 and (not offs or seg.indexed_last <= self._after))
        ):
            try:
                seg.index_more(fd)  # the writer only counted these bytes, or not yet read
            except CorruptState as exc:
                self._owner._damaged(seg, exc)
                self.close()
                raise OSError(errno.EIO, str(exc)) from None
            return
        if i < 0:
            i = max(seg.batch_of(self._after + 1), 0)
        start = offs[i]
        hi = bisect_left(offs, end_off, i)
        j = max(bisect_left(offs, start + CHUNK, i + 1, hi) - 1, i)
        stop = offs[j + 1] if j + 1 < len(offs) else seg.indexed
        data = os.pread(fd, stop - start, start)
        if stop >= end_off:
            self._todo.popleft()
            os.close(fd)
        else:
            todo[2] = j + 1
        if len(data) != stop - start:  # pragma: no cover - our own file, never shortened
            raise OSError(5, f"{seg.path}: read {len(data)} of {stop - start} bytes")
        pieces: list[memoryview] = []
        sent = self._select(memoryview(data), start, seg, i, j, stop, pieces)
        if pieces:
            _chunk(b"".join(pieces), self._ready)
        if self._journal is not None:
            self._journal.replayed_events += sent

    def _select(
        self,
        mv: memoryview,
        base: int,
        seg: _Segment,
        i: int,
        j: int,
        stop: int,
        pieces: list[memoryview],
    ) -> int:
        """Append to `pieces` the frames of batches i..j that match (their bytes from
        offset `base` on are `mv`); returns how many frames."""
        after, domids, mask = self._after, self._domids, self._mask
        seqs, frames, offs = seg.seqs, seg.frames, seg.offs
        sent = 0
        if seqs[i] <= after:  # the cursor is inside batch i: only its later events
            sent += self._walk(mv, offs[i] - base, after, pieces)
            i += 1
            if i > j:
                return sent
        if domids is None and not seg.union & ~mask:
            # Every frame from batch i on: the frame regions, sliced.
            ends = offs[i + 1 : j + 1]
            ends.append(stop)
            pieces += [
                mv[a - base : b - base] for a, b in zip(frames[i : j + 1], ends, strict=True)
            ]
            return sent + seg.last_of(j) - seqs[i] + 1
        kinds, doms = seg.kinds, seg.doms
        for k in range(i, j + 1):
            if not kinds[k] & mask:
                continue
            dom = doms[k]
            if dom == MANY:
                sent += self._walk(mv, offs[k] - base, after, pieces)
            elif domids is None or dom in domids:
                if kinds[k] & ~mask:
                    sent += self._walk(mv, offs[k] - base, after, pieces)
                else:
                    b = offs[k + 1] if k < j else stop
                    pieces.append(mv[frames[k] - base : b - base])
                    sent += seg.last_of(k) - seqs[k] + 1
        return sent

    def _walk(self, mv: memoryview, p: int, after: int, pieces: list[memoryview]) -> int:
        """One batch at `p`, event by event: those after `after` that match."""
        domids, mask = self._domids, self._mask
        _len, _crc, seq, count, _kinds, _ = _HEAD.unpack_from(mv, p)
        index = p + HEAD_SIZE
        pos = index + count * IDX_SIZE
        sent = 0
        for domid, kind, length in _IDX.iter_unpack(mv[index : index + count * IDX_SIZE]):
            if seq > after and (1 << kind) & mask and (domids is None or domid in domids):
                pieces.append(mv[pos : pos + length])
                sent += 1
            pos += length
            seq += 1
        return sent


def _chunk(data: bytes, ready: deque[bytes]) -> None:
    """`data` into `ready`, cut at line ends into pieces of about CHUNK bytes when it is
    much longer (only a mass event's batch makes it so)."""
    start = 0
    while len(data) - start > CHUNK + CHUNK // 2:
        cut = data.find(b"\n", start + CHUNK - 1) + 1
        ready.append(data[start:cut])
        start = cut
    ready.append(data[start:] if start else data)


def _batch(events: Sequence[Event], first: int, n: int) -> bytes:
    """The record of a batch of several events."""
    parts = [b""]  # the header's tail goes first
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
    parts[0] = _TAIL.pack(first, n, kinds, 0)
    parts += frames
    body = b"".join(parts)
    return _LENCRC.pack(len(body) - _TAIL.size, zlib.crc32(body)) + body


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
    """A segment's header checked and, for the last one, every batch: it may end in a torn
    batch (the daemon died in its write), which is cut off. Older ones are checked when
    first read."""
    path = os.path.join(directory, name)
    try:
        first_seq = int(name[len(JOURNAL_PREFIX) :])
    except ValueError:
        raise CorruptState(f"it holds {name}, which is not a journal segment") from None
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        seg = _Segment(path, first_seq)
        head = os.pread(fd, SEG_HEAD_SIZE, 0)
        if len(head) < SEG_HEAD_SIZE and last:
            # Died before the header was written: an empty segment.
            os.ftruncate(fd, 0)
            os.pwrite(fd, _SEG_HEAD.pack(MAGIC, history, first_seq), 0)
            return seg
        fields = _SEG_HEAD.unpack(head) if len(head) == SEG_HEAD_SIZE else None
        if fields is None or fields[0] != MAGIC:
            raise CorruptState(f"{name} is not a journal segment")
        if fields[1] != history or fields[2] != first_seq:
            raise CorruptState(f"{name} belongs to another history")
        if not last:
            seg.size = os.fstat(fd).st_size
            seg.checked = False
            return seg
        with os.fdopen(fd, "rb", closefd=False) as f:
            f.seek(SEG_HEAD_SIZE)
            body = f.read()
        bad = _index_batches(memoryview(body), seg, SEG_HEAD_SIZE, check=True, whole=True)
        seg.size = seg.indexed
        seg.last_seq = seg.indexed_last
        if bad is not None:
            log.warning(
                "journal: cut off %d bytes of a torn write at the end of %s (after seq %d)",
                SEG_HEAD_SIZE + len(body) - seg.size,
                path,
                seg.last_seq,
            )
            os.ftruncate(fd, seg.size)
        return seg
    finally:
        os.close(fd)


def _index_batches(
    view: memoryview, seg: _Segment, base: int, *, check: bool, whole: bool
) -> str | None:
    """Add each whole batch of `view` (the segment's bytes from offset `base` on) to the
    index of `seg`; with `check`, only sound ones. `whole`: `view` reaches the end of the
    segment, so a batch it cuts short is a problem, not the end of a read. At the first
    problem, stop and say what it is."""
    size = len(view)
    p = 0
    expect = seg.indexed_last + 1
    crc32 = zlib.crc32
    unpack_head = _HEAD.unpack_from
    unpack_dom = _DOM.unpack_from
    iter_index = _IDX.iter_unpack
    why = None
    while p < size:
        if size - p < HEAD_SIZE:
            why = "a batch header cut short" if whole else None
            break
        body_len, crc, first, count, kinds, _ = unpack_head(view, p)
        index = p + HEAD_SIZE
        nxt = index + body_len
        if nxt > size:
            why = "a batch cut short" if whole else None
            break
        if check:
            if crc32(view[p + _CRC_FROM : nxt]) != crc:
                why = "a checksum that does not match"
                break
            if first != expect or count == 0 or count * IDX_SIZE > body_len:
                why = f"a batch of seq {first} where {expect} was due"
                break
            if kinds & ~_KNOWN_KINDS:
                why = "an event kind this daemon does not know"
                break
            expect = first + count
        if count == 1:
            dom = unpack_dom(view, index)[0]
        else:
            domids = {d for d, _kind, _len in iter_index(view[index : index + count * IDX_SIZE])}
            dom = domids.pop() if len(domids) == 1 else MANY
        seg.add(base + p, first, count, kinds, dom)
        p = nxt
    seg.indexed = base + p
    return why
