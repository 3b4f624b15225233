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
from collections import deque
from collections.abc import Iterator

from mux.daemon.connection import ClientConnection
from mux.daemon.fanout import Event

CHUNKS_PER_TURN = 4  # then the loop serves others before this replay goes on


class ReplayConnection(ClientConnection):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mode_latest = False
        self._replay: Iterator[bytes] | None = None
        self._held: deque[tuple[bytes, Event]] = deque()
        self._held_bytes = 0
        self._scheduled = False

    def start_replay(self, chunks: Iterator[bytes]) -> None:
        """Write `chunks` before any live frame from now on."""
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
            chunk = next(self._replay, None)
            if chunk is None:
                self._end_replay()
                self._release_held()
                return
            t.write(chunk)
        if not self._scheduled and t.get_write_buffer_size() <= high:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _end_replay(self) -> None:
        replay, self._replay = self._replay, None
        close = getattr(replay, "close", None)
        if close is not None:
            close()

    def _release_held(self) -> None:
        held, self._held = self._held, deque()
        self._held_bytes = 0
        for frame, event in held:
            super().send_frame(frame, event)
