"""A connection that can replay the journal before its live stream: `start_replay`.

The connection itself is to offer `start_replay(chunks)` and `mode_latest`; until it does,
this subclass adds the smallest honest `start_replay`: the chunks are written before any
live frame, live frames that arrive meanwhile are held (and count toward the overflow
mark, replay bytes do not), and chunks are pulled only while the transport's buffer is
below its high-water mark, so a slow reader paces the replay (the transport's
`resume_writing` pulls the next) and a fast one gets it at full speed. `mode_latest` is
only remembered here: coalescing is the connection's.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator

from mux.daemon.connection import ClientConnection
from mux.daemon.fanout import Event

log = logging.getLogger("xenmux.server")

CHUNKS_PER_TURN = 4  # then the loop serves others before this replay goes on


class ReplayConnection(ClientConnection):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mode_latest = False
        self._replay: Iterator[bytes] | None = None  # the one being written
        self._queued: deque[Iterator[bytes]] = deque()  # from later subscribes, in turn
        self._held: deque[tuple[bytes, Event]] = deque()
        self._held_bytes = 0
        self._scheduled = False

    def start_replay(self, chunks: Iterator[bytes]) -> None:
        """Write `chunks` before any live frame from now on (after a replay under way)."""
        if self._replay is not None:
            self._queued.append(iter(chunks))
            return
        self._replay = iter(chunks)
        self._pump()

    def send_frame(self, frame: bytes, event: Event) -> None:
        if self._replay is None:
            super().send_frame(frame, event)
            return
        if self.closing:
            return
        self._held.append((frame, event))
        self._held_bytes += len(frame)
        if self._held_bytes > self.high_water:
            self._end_replay()
            self._overflow(event.seq)

    def resume_writing(self) -> None:
        self._pump()

    def connection_lost(self, exc) -> None:
        self._end_replay()
        super().connection_lost(exc)

    def _pump(self) -> None:
        self._scheduled = False
        t = self.transport
        if self._replay is None or t is None:
            return
        if self.closing:
            self._end_replay()
            return
        _low, high = t.get_write_buffer_limits()
        for _ in range(CHUNKS_PER_TURN):
            if t.get_write_buffer_size() > high:
                return  # the transport paused us: resume_writing() comes back here
            try:
                chunk = next(self._replay, None)
            except OSError as exc:  # the journal's file went bad under the replay
                log.error("replay to pid=%d failed (%s); closing it", self.pid, exc)
                self._end_replay()
                self.close()
                return
            if chunk is None:
                _close(self._replay)
                if self._queued:
                    self._replay = self._queued.popleft()
                    continue
                self._replay = None
                self._release_held()
                return
            if chunk:  # a step of a filter may match nothing
                t.write(chunk)
        if not self._scheduled and t.get_write_buffer_size() <= high:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _end_replay(self) -> None:
        for replay in (self._replay, *self._queued):
            _close(replay)
        self._replay = None
        self._queued.clear()

    def _release_held(self) -> None:
        held, self._held = self._held, deque()
        self._held_bytes = 0
        for frame, event in held:
            super().send_frame(frame, event)


def _close(chunks: Iterator[bytes] | None) -> None:
    """Let a journal reader's files go now, not when it is collected."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
