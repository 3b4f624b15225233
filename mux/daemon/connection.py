"""One client connection: line framing, the request loop, and everything about its output.

A connection knows who its peer is and what it may ask; what a request line means is the
business of `handle_line` (mux.daemon.requests), which the composition root hands over in
the connection's `ConnectionContext`. Whatever one peer does costs the daemon a bounded
amount and holds no other client back:

- Output goes straight to the transport while its buffer is below TRANSPORT_HIGH. Past it
  (`pause_writing`), frames and replies wait in a Backlog whose bytes count toward the
  high-water mark. A subscriber past the mark is cut off: its backlog is dropped, the
  `overflow` frame queued, and the connection aborted if the peer reads nothing of it for
  OVERFLOW_GRACE seconds. A `latest`-mode subscriber is coalesced instead (backlog.py).
- Requests are answered one at a time, with a turn of the event loop between two, and only
  while nothing is held back: a peer that does not read its replies gets no more of them,
  and its requests stop being read (reading also pauses past PAUSE_LINES lines or
  MAX_PENDING_INPUT bytes not yet answered).
- A replay (`start_replay`) is written as the socket drains, before any live frame.
- A peer that half-closes still gets the replies to what it sent, then the connection ends.
- A refusal or a last error goes out, then the write side is shut and the peer has LINGER
  seconds to read it: it reads the error, not a reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from mux.daemon.admission import Clients
from mux.daemon.backlog import Backlog, Replay
from mux.daemon.fanout import Event, Fanout
from mux.daemon.listener import peer_credentials, peer_groups
from mux.daemon.stats import Stats
from mux.protocol import ERR_LINE_TOO_LONG, OVERFLOW

log = logging.getLogger("xenmux.server")

MAX_LINE = 64 * 1024
PAUSE_LINES = 256  # requests read but not yet answered before reading pauses...
RESUME_LINES = 64  # ...until fewer than this many wait
MAX_PENDING_INPUT = 256 * 1024  # the same, in bytes
TRANSPORT_HIGH = 64 * 1024  # the transport's own buffer, beyond which output is held
TRANSPORT_LOW = 16 * 1024
REPLAY_CHUNKS_PER_TURN = 4  # a fast reader's replay yields to the loop every ~1 MiB
OVERFLOW_GRACE = 5.0  # seconds without progress before an overflowed subscriber is aborted
LINGER = 2.0  # the same for a peer given its last error
MAX_LINGERING = 32  # refused peers closed gently at once; beyond, at once (fds are finite)
LATEST_LIMIT = 8  # a latest-mode subscriber is cut off past this many high-water marks
# (of deaths, which are never coalesced away)


def encode_line(obj: dict) -> bytes:
    """One frame: valid JSON (no NaN or Infinity), ASCII, newline-terminated."""
    return json.dumps(obj, separators=(", ", ": "), allow_nan=False).encode() + b"\n"


@dataclass
class ConnectionContext:
    """What a connection works with, besides its transport."""

    stats: Stats  # clients_total, client_errors, overflows, reads_paused...
    fanout: Fanout  # a closed connection is dropped from it
    clients: Clients  # the open connections and who may open one more
    handle_line: Callable[[ClientConnection, bytes], Awaitable[None]]
    high_water: int  # held bytes before a subscriber is cut off (or coalesced)
    allow_rescan_gid: int | None


class ClientConnection(asyncio.Protocol):
    """One subscriber or tool. Also the Fanout's subscriber: `send_frame` is the hot path."""

    # Thousands of these live for as long as their subscribers: no instance dict.
    __slots__ = (
        "_drained",
        "_finishing",
        "_flush_due",
        "_folded_seen",
        "_linger",
        "_lingering",
        "bad_lines",
        "buf",
        "closing",
        "ctx",
        "direct",
        "eof",
        "gid",
        "held",
        "high_water",
        "last_out",
        "lines",
        "lost",
        "may_rescan",
        "mode_latest",
        "pending_in",
        "pid",
        "privileged",
        "reading",
        "replay",
        "task",
        "transport",
        "uid",
        "wild_mask",
        "write_paused",
    )

    def __init__(self, ctx: ConnectionContext) -> None:
        self.ctx = ctx
        self.high_water = ctx.high_water
        self.transport: asyncio.Transport | None = None
        self.wild_mask = 0
        self.mode_latest = False  # set by subscribe: coalesce rather than cut off
        self.closing = False
        self.lost = False
        # Output waiting for the peer; None while it goes straight to the transport, which
        # is then `direct` too (where the fan-out writes frames itself): see _set_held.
        self.held: Backlog | None = None
        self.direct: asyncio.Transport | None = None
        self.write_paused = False
        self.replay: Replay | None = None  # the replay being written
        self.last_out: object = None  # what the last event written carried: its seq
        self.buf = bytearray()
        # Lines read and not yet answered: a deque only while there are some (a subscriber
        # sends one request and then only reads; an idle deque is 600 bytes).
        self.lines: deque[bytes] | tuple[()] = ()
        self.pending_in = 0  # bytes of the lines read and not yet answered
        self.reading = True
        self.eof = False
        self.task: asyncio.Task | None = None
        self.bad_lines = 0  # malformed lines in a row (requests.py closes after too many)
        self.pid = self.uid = self.gid = -1
        self.privileged = False
        self.may_rescan = False
        self._drained: asyncio.Future | None = None
        self._flush_due = False
        self._linger: asyncio.TimerHandle | None = None
        self._finishing = False
        self._lingering = False  # counted in ctx.clients.lingering
        self._folded_seen = 0

    # -- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.direct = transport
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH, low=TRANSPORT_LOW)
        ctx = self.ctx
        try:
            self.pid, self.uid, self.gid = peer_credentials(transport.get_extra_info("socket"))
        except OSError:
            pass
        self.privileged = self.uid == 0 or self.uid == os.geteuid()
        rescan_gid = ctx.allow_rescan_gid
        self.may_rescan = self.privileged or (
            rescan_gid is not None and rescan_gid in peer_groups(self.pid, self.gid)
        )
        ctx.stats.clients_total += 1
        refusal = ctx.clients.admit(self, self.uid, self.privileged)
        if refusal is not None:
            code, message = refusal
            ctx.stats.client_errors[code] += 1
            log.warning("refusing client pid=%d uid=%d: %s", self.pid, self.uid, message)
            self.reply_error(None, code, message)
            if ctx.clients.lingering >= MAX_LINGERING:
                self.closing = True
                transport.abort()  # the frame is in the peer's socket already
                return
            ctx.clients.lingering += 1
            self._lingering = True
            self._finish(LINGER)
            return
        log.debug("client connected: pid=%d uid=%d gid=%d", self.pid, self.uid, self.gid)

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.lost = True
        ctx = self.ctx
        if self._lingering:
            ctx.clients.lingering -= 1
            self._lingering = False
        ctx.clients.remove(self)
        ctx.fanout.drop(self)
        self._release_output()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.lines = ()
        self.buf = bytearray()
        self.pending_in = 0
        log.debug("client gone: pid=%d", self.pid)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # what a peer sends while we close is read and dropped: no reset
        buf = self.buf
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if nl - start >= MAX_LINE:
                self._too_long()
                return
            self._queue_line(bytes(buf[start:nl]))
            start = nl + 1
        del buf[:start]
        if len(buf) >= MAX_LINE:
            self._too_long()
            return
        self._serve_lines()
        self._update_reading()

    def eof_received(self) -> bool:
        """The peer shut its write side: answer what it sent, then close (we keep the
        transport open for that by returning True)."""
        if self.closing:
            return False
        self.eof = True
        if self.buf.strip():  # a last line without its newline
            self._queue_line(bytes(self.buf))
        self.buf = bytearray()
        if not self.lines and self.task is None and self.held is None:
            self.closing = True  # nothing left to answer: the transport closes now
            self.ctx.fanout.drop(self)
            return False
        self._serve_lines()
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.held is None:
            self._set_held(Backlog())
            self._folded_seen = 0
            self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._flush()

    # -- requests ------------------------------------------------------------------------

    def _queue_line(self, line: bytes) -> None:
        if not self.lines:
            self.lines = deque()
        self.lines.append(line)
        self.pending_in += len(line)

    def _serve_lines(self) -> None:
        if self.task is None and (self.lines or self.eof):
            self.task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        try:
            while self.lines and not self.closing:
                if self.held is not None:  # its output is not being taken: wait
                    await self._output_drained()
                    continue
                line = self.lines.popleft()
                self.pending_in -= len(line)
                self._update_reading()
                await self.ctx.handle_line(self, line)
                if self.lines:
                    await asyncio.sleep(0)  # the scan loop and the other clients, between two
            if self.eof:
                while self.held is not None and not self.closing:
                    await self._output_drained()
                self._finish(LINGER)  # half-closed: every request it sent is answered
        finally:
            self.task = None
            if not self.lines:
                self.lines = ()

    async def _output_drained(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        await self._drained

    def _wake(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _update_reading(self) -> None:
        """Read while the peer takes its output and its requests do not pile up."""
        t = self.transport
        if self.closing or t is None:
            return
        if self.reading:
            if (
                self.held is not None
                or len(self.lines) > PAUSE_LINES
                or self.pending_in > MAX_PENDING_INPUT
            ):
                t.pause_reading()
                self.reading = False
                self.ctx.stats.reads_paused += 1
        elif (
            self.held is None
            and len(self.lines) < RESUME_LINES
            and self.pending_in < MAX_PENDING_INPUT // 4
        ):
            t.resume_reading()
            self.reading = True

    def _too_long(self) -> None:
        self.ctx.stats.client_errors[ERR_LINE_TOO_LONG] += 1
        log.warning("client pid=%d sent a line over %d bytes; closing it", self.pid, MAX_LINE)
        self.reply_error(None, ERR_LINE_TOO_LONG, f"a request line is limited to {MAX_LINE} bytes")
        self.close()

    # -- output --------------------------------------------------------------------------

    def send_frame(self, frame: bytes, event: Event) -> None:
        if self.held is None:
            self.transport.write(frame)
            self.last_out = event
        else:
            self._hold(frame, event)

    def _set_held(self, held: Backlog | None) -> None:
        """Output held back from here (None: straight to the transport again)."""
        self.held = held
        self.direct = self.transport if held is None else None

    def write_obj(self, obj: dict) -> None:
        """A reply (or any frame that is not an event), after what is already queued."""
        if self.closing or self.transport is None:
            return
        data = encode_line(obj)
        if self.held is None:
            self.transport.write(data)
        else:
            self._hold(data, None)

    def reply_error(self, req_id, code: str, message: str) -> None:
        self.write_obj({"id": req_id, "ok": False, "error": {"code": code, "message": message}})

    def start_replay(self, chunks: Iterable[bytes]) -> None:
        """Write `chunks` (whole NDJSON lines) after what is queued and before any live frame
        to come; they are pulled only as the socket drains, and do not count toward the
        high-water mark (the live frames held meanwhile do)."""
        replay = iter(chunks)
        if self.closing:
            Replay(replay).close()
            return
        if self.held is None:
            self._set_held(Backlog())
            self._folded_seen = 0
            self._update_reading()
        self.held.add_replay(replay)
        if not self.write_paused:
            self._flush()

    def unsent(self) -> int:
        """Bytes queued for this peer and not yet in its socket."""
        if self.lost or self.transport is None:
            return 0
        held = self.held.nbytes if self.held is not None else 0
        return held + self.transport.get_write_buffer_size()

    def _hold(self, data: bytes, event: Event | None) -> None:
        if self.closing:
            return
        held = self.held
        held.append(data, event)
        if held.nbytes > self.high_water:
            self._past_mark(held)
        if held.coalesced:
            self.ctx.stats.latest_folded += held.folded_events - self._folded_seen
            self._folded_seen = held.folded_events

    def _past_mark(self, held: Backlog) -> None:
        if self.mode_latest:
            if not held.coalesced:
                log.info(
                    "subscriber pid=%d is slow: newest state per domid until it catches up",
                    self.pid,
                )
                held.coalesce()
            if held.nbytes <= self.high_water * LATEST_LIMIT:
                return
        self._overflow()

    def _flush(self) -> None:
        """Move held output (and the replay) into the transport until it is full again."""
        t = self.transport
        held = self.held
        turns = 0
        while not self.write_paused and not self.closing:
            if self.replay is not None:
                if turns == REPLAY_CHUNKS_PER_TURN:
                    self._flush_soon()  # a fast reader's replay must not hold the loop
                    return
                turns += 1
                self._write_chunk()
                continue
            if not held:
                break
            data, out = held.popleft()
            if type(data) is Replay:
                self.replay = data
                continue
            t.write(data)
            if out is not None:
                self.last_out = out
        caught_up = held is not None and not held and self.replay is None
        if caught_up and not self.write_paused and not self.closing:
            self._set_held(None)  # straight to the transport again
            self._wake()
            self._update_reading()

    def _flush_soon(self) -> None:
        if self._flush_due:
            return
        self._flush_due = True

        def later() -> None:
            self._flush_due = False
            self._flush()

        asyncio.get_running_loop().call_soon(later)

    def _write_chunk(self) -> None:
        try:
            chunk = next(self.replay.chunks)
        except StopIteration:
            self.replay = None
            return
        except Exception:
            log.exception("replay to client pid=%d failed; closing it", self.pid)
            self._finish(LINGER, drop=True)
            return
        if chunk:
            self.transport.write(chunk)
            self.last_out = _last_seq(chunk, self.last_out)

    def _sent_seq(self) -> int | None:
        """The seq of the last event this peer was sent (its resume point)."""
        out = self.last_out
        return out if out is None or isinstance(out, int) else out.seq

    def _overflow(self) -> None:
        """Cut off a subscriber that stopped reading, telling it the last seq it was sent."""
        self.ctx.stats.overflows += 1
        log.warning(
            "subscriber pid=%d uid=%d stopped reading (%d bytes held); cutting it off",
            self.pid,
            self.uid,
            self.unsent(),
        )
        frame = encode_line({"event": OVERFLOW, "seq": self._sent_seq()})
        self._finish(OVERFLOW_GRACE, drop=True, last=frame)

    def _release_output(self) -> None:
        if self.held is not None:
            self.held.clear()
        if self.replay is not None:
            self.replay.close()
            self.replay = None
        self._set_held(Backlog())  # closed: nothing more is held (see _hold)
        self._wake()

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Send what is queued, shut the write side, and end the connection once the peer
        has read it (or after LINGER seconds without progress)."""
        self._finish(LINGER)

    def _finish(self, grace: float, *, drop: bool = False, last: bytes | None = None) -> None:
        t = self.transport
        if self._finishing:
            return
        self._finishing = True
        self.closing = True
        self.ctx.fanout.drop(self)
        if t is None or self.lost:
            return
        held = self.held
        if held is not None and not drop:
            while held:  # bounded by the high-water mark
                data, _out = held.popleft()
                if type(data) is bytes:
                    t.write(data)
                else:
                    data.close()
        self._release_output()
        if not self.reading:  # read what it still sends, and drop it: no reset for that
            t.resume_reading()
            self.reading = True
        if last is not None:
            t.write(last)
        if self.eof or not t.can_write_eof():
            t.close()  # the peer's side is shut already: flush, then close
        else:
            t.write_eof()  # the peer reads what is left, then EOF, and closes
        self._arm_linger(grace, t.get_write_buffer_size())

    def _arm_linger(self, grace: float, before: int) -> None:
        self._linger = asyncio.get_running_loop().call_later(
            grace, self._linger_over, grace, before
        )

    def _linger_over(self, grace: float, before: int) -> None:
        self._linger = None
        if self.lost:
            return
        size = self.transport.get_write_buffer_size()
        if 0 < size < before:
            self._arm_linger(grace, size)  # it reads, slowly: give it the time
            return
        if size:
            self.ctx.stats.clients_aborted += 1
            log.warning(
                "client pid=%d read nothing for %.1f s (%d bytes unsent); aborting it",
                self.pid,
                grace,
                size,
            )
        self.transport.abort()


def _last_seq(chunk: bytes, default: object) -> object:
    """The seq of the last line of a replay chunk (whole NDJSON lines)."""
    last = chunk.rstrip(b"\n").rpartition(b"\n")[2]
    try:
        return int(json.loads(last)["seq"])
    except (ValueError, KeyError, TypeError):
        return default
