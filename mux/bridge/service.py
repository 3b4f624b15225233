"""`xenmux bridge`'s loop: the daemon's stream into JetStream, the view into the bucket.

One session per NATS connection: make sure of the stream and bucket, read back where the
host stands (mux/bridge/position.py), then publish every event and keep the bucket current.
Any NATS failure ends the session; the next one starts from what JetStream holds. The
daemon subscription outlives sessions: the events it handed over that JetStream had not
acknowledged are kept, and published again (same Nats-Msg-Id) past the stream's last one,
so an outage loses nothing even where the daemon cannot replay. Only when the stream and
the subscription disagree (another history, a gap being filled, a stream that lost
messages) is the subscription opened again from the stream's position. An outage is logged
once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass

from mux.bridge import names, view
from mux.bridge.encode import compact
from mux.bridge.feed import DaemonFeed, Resync
from mux.bridge.natsconn import Connection, NatsOptions, NatsUnavailable, connect
from mux.bridge.position import Position, load_position
from mux.bridge.publisher import ACK_TIMEOUT, Ack, Publisher
from mux.bridge.stats import BridgeStats
from mux.bridge.store import StoreConfig, StoreError, ensure_bucket, ensure_stream
from mux.bridge.table import TableWriter
from mux.bridge.tasks import cancel

log = logging.getLogger("xenmux.bridge")

# The bucket is flushed IDLE_FLUSH after the events pause, and while they flow at most
# BUSY_FLUSH after a change; but never sooner than FLUSH_GAP after the last flush: a row
# changed many times is written once, and a host with sparse events (each a wake-up of its
# own) does not pay a flush, its wake-up and its ack for every one (the stream is the
# record, the bucket the view).
IDLE_FLUSH = 0.2
BUSY_FLUSH = 1.0
FLUSH_GAP = 1.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
STOP_GRACE = 2.0  # on SIGTERM: how long to wait for acks and the last bucket flush


@dataclass
class BridgeConfig:
    nats: NatsOptions
    host_name: str  # as given (payloads, the bucket's rows)
    socket_path: str
    store: StoreConfig
    replicas: int | None = None  # None: 3 on a cluster, else 1

    @property
    def host(self) -> str:
        return names.encode_host(self.host_name)


class Bridge:
    def __init__(self, cfg: BridgeConfig, stats: BridgeStats | None = None) -> None:
        self.cfg = cfg
        self.host = cfg.host
        self.stats = stats or BridgeStats()
        self.feed = DaemonFeed(cfg.socket_path)
        self.feed_open = False
        self.resyncing = False  # a snapshot is being written: a new session does it again
        # Events the feed handed over that JetStream has not acknowledged, oldest first.
        self.unacked: list[tuple[str, dict]] = []
        self.backlog: collections.deque[tuple[str, dict]] = collections.deque()  # to publish again
        # Where the host stands in the stream: the last acknowledged message's cursor.
        self.history: str | None = None
        self.seq: int | None = None
        self.stream_seq = 0
        self.rows: dict[int, dict] = {}  # the host's table as the acknowledged stream says
        self.present: set[int] = set()  # the host's row keys in the bucket
        self._dirty: set[int] = set()  # rows changed since the last bucket flush
        self._changed_at = 0.0  # time.monotonic() of the first change since that flush
        self._last_event = 0.0  # time.monotonic() of the last event from the daemon
        # The payload's end: the event's JSON with `"host"` spliced in before its last brace.
        self._host_tail = f',"host":{json.dumps(cfg.host_name)}}}'
        self._table_lock = asyncio.Lock()  # one writer of the bucket at a time
        self._activity = asyncio.Event()  # set at every event: the keeper has work again

    def cursor_text(self) -> str:
        if self.history is None:
            return "no position yet"
        return f"{self.history}:{self.seq}" if self.seq is not None else f"{self.history}:gap"

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set. Raises NatsRejected (a server refused us) and StoreError (the
        stream is not one the bridge can use): retrying would not help."""
        delay = BACKOFF_MIN
        outage: float | None = None
        try:
            while not stop.is_set():
                try:
                    conn = await connect(self.cfg.nats, name=f"xenmux-bridge {self.cfg.host_name}")
                except NatsUnavailable as exc:
                    outage = self._outage(outage, str(exc))
                    await _sleep_or_stop(stop, delay)
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
                server = conn.server
                self.stats.connected = False
                try:
                    await self._session(conn, stop, outage)
                    outage = None
                except NatsUnavailable as exc:
                    # A session that never got going is the same outage going on.
                    since = None if self.stats.connected else outage
                    outage = self._outage(since, f"lost NATS at {server}: {exc}")
                finally:
                    self.stats.connected = False
                    await conn.close()
                delay = BACKOFF_MIN
        finally:
            await self.feed.close()

    def _outage(self, since: float | None, why: str) -> float:
        if since is not None:
            return since
        self.stats.outages += 1
        log.warning("%s; keeping the place (%s) and retrying", why, self.cursor_text())
        return time.monotonic()

    async def _session(self, conn: Connection, stop: asyncio.Event, outage: float | None) -> None:
        store = self.cfg.store
        replicas = self.cfg.replicas or (3 if conn.clustered else 1)
        cfg = StoreConfig(store.stream, store.bucket, replicas, store.max_age, store.max_bytes)
        try:
            await ensure_stream(conn.js, cfg)
            await ensure_bucket(conn.js, cfg)
            pos = await load_position(conn, cfg.stream, cfg.bucket, self.host)
        except StoreError:
            raise
        except Exception as exc:
            raise NatsUnavailable(_describe(exc)) from None
        self.rows, self.present = pos.rows, pos.present
        self.history, self.seq, self.stream_seq = pos.history, pos.seq, pos.stream_seq
        self.stats.connected = True
        if outage is not None:
            log.info(
                "NATS at %s reachable again after %.1f s; resuming from %s",
                conn.server,
                time.monotonic() - outage,
                self.cursor_text(),
            )
        else:
            log.info("publishing to %s at %s from %s", cfg.stream, conn.server, self.cursor_text())
        pub = Publisher(conn)
        table = TableWriter(conn, cfg.bucket, self.host, self.cfg.host_name, self.stats)
        try:
            if self._continues(pos):
                await self._write_table(table)
                await self._republish(pub, pos)
            elif not await self._reopen(pos, pub, table, stop) and not stop.is_set():
                await self._write_table(table)
            if not stop.is_set():
                await self._pump(pub, table, stop)
        finally:
            # What is still in flight may or may not be stored: the next session sees which.
            self.unacked = [item for item in pub.close() if not item[1].get("missed")]
            self.unacked.extend(self.backlog)
            self.backlog.clear()

    def _continues(self, pos: Position) -> bool:
        """Whether the open subscription carries on from where the stream stands: the same
        history, and every event it handed over past the stream's last one still at hand."""
        if not self.feed_open or self.resyncing:
            return False
        if pos.seq is None or pos.history != self.feed.history:
            return False
        if self.unacked:
            return self.unacked[0][0] == pos.history and self.unacked[0][1]["seq"] <= pos.seq + 1
        return pos.seq == self.feed.handed

    async def _republish(self, pub: Publisher, pos: Position) -> None:
        self.backlog.extend(item for item in self.unacked if item[1]["seq"] > (pos.seq or 0))
        self.unacked = []
        if self.backlog:
            log.info("publishing again %d events JetStream had not acknowledged", len(self.backlog))
        while self.backlog:
            history, event = self.backlog.popleft()  # if the send fails, pub.close() has it
            self._acked(await self._publish(pub, history, event))

    async def _write_table(self, table: TableWriter) -> None:
        """The host's whole table as the stream says, at a session's start: rows a crashed
        flush left behind, or the stream's messages after the checkpoint, made good."""
        async with self._table_lock:
            await table.rewrite(self.rows, self.present, self._checkpoint())
            self.present = set(self.rows)
            self._dirty.clear()

    async def _reopen(
        self, pos: Position, pub: Publisher, table: TableWriter, stop: asyncio.Event
    ) -> bool:
        """Subscribe to the daemon again from the stream's cursor; True when that took a
        snapshot (a Resync, which writes the table itself)."""
        if self.feed_open:
            await self.feed.close()
            self.feed_open = False
        self.unacked = []
        known = view.known_states(self.rows) if pos.recorded else None
        resync = await _until_stop(stop, self.feed.open(pos.cursor(), known))
        if stop.is_set():
            return False
        self.feed_open = True
        if resync is None:
            return False
        await self._resync(resync, pub, table)
        return True

    async def _pump(self, pub: Publisher, table: TableWriter, stop: asyncio.Event) -> None:
        """Events in (the pump), acks and bucket flushes on the side (the keeper), until
        `stop` or a failure of either."""
        tasks = [
            asyncio.ensure_future(self._take_events(pub, table)),
            asyncio.ensure_future(self._keep(pub, table)),
        ]
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait((*tasks, stopper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            await cancel(*tasks)
        for task in tasks:
            if task in done and task.exception() is not None:
                raise task.exception()
        # Stopping: what is acknowledged within the grace goes into the bucket; the rest is
        # found again in the stream at the next start.
        with contextlib.suppress(NatsUnavailable, TimeoutError):
            self._acked(await asyncio.wait_for(pub.drain(), STOP_GRACE))
            async with self._table_lock:
                await asyncio.wait_for(self._flush(table), STOP_GRACE)
                await asyncio.wait_for(table.settle(), STOP_GRACE)

    async def _take_events(self, pub: Publisher, table: TableWriter) -> None:
        while True:
            item = await self.feed.next(None)
            self._last_event = time.monotonic()
            self._activity.set()
            if isinstance(item, Resync):
                async with self._table_lock:
                    self._acked(await pub.drain())
                    await self._resync(item, pub, table)
            elif item is not None:
                self._acked(await self._publish(pub, self.feed.history, item))

    async def _keep(self, pub: Publisher, table: TableWriter) -> None:
        """Acks taken while events are quiet, a lost connection noticed, the bucket flushed
        when _flush_due says. It sleeps until the next of those deadlines (or an ack's
        timeout), and with nothing to do until the next event: every wake-up of a Python
        process costs CPU, so acks in flight are taken only when a flush could be due."""
        flushed_seq = self.stream_seq
        lost = asyncio.ensure_future(pub.conn.lost.wait())
        try:
            while True:
                now = time.monotonic()
                deadline = None
                if self._dirty or self.stream_seq != flushed_seq:
                    deadline = self._flush_due(table, self._changed_at)
                elif pub.pending:
                    # Nothing to flush until the acks come: wait until a flush could be due,
                    # then for the oldest ack.
                    due = self._flush_due(table, pub.oldest_sent)
                    if due <= now:
                        await pub.wait_oldest_ack()
                        self._acked(pub.check())
                        continue
                    deadline = due
                if pub.pending:
                    deadline = min(deadline or math.inf, pub.oldest_sent + ACK_TIMEOUT)
                if deadline is None:
                    # Asleep until the next event: nothing may wait in the kernel meanwhile
                    # (the last checkpoint's ack, the PONGs nats-py counts to call the
                    # connection stale).
                    pub.conn.release_replies()
                    self._activity.clear()
                    woke = asyncio.ensure_future(self._activity.wait())
                    await asyncio.wait((woke, lost), return_when=asyncio.FIRST_COMPLETED)
                    woke.cancel()
                elif pub.pending and deadline >= pub.oldest_sent + ACK_TIMEOUT:
                    # The oldest ack's timeout comes first: it is judged with the socket read.
                    await pub.wait_oldest_ack()
                else:
                    await asyncio.wait((lost,), timeout=max(0.0, deadline - now))
                self._acked(pub.check())
                self.stats.daemon_seq = self.feed.handed
                if not self._dirty and self.stream_seq == flushed_seq:
                    continue
                if time.monotonic() >= self._flush_due(table, self._changed_at):
                    async with self._table_lock:
                        await self._flush(table)
                    flushed_seq = self.stream_seq
        finally:
            lost.cancel()

    def _flush_due(self, table: TableWriter, changed_at: float) -> float:
        """When the bucket should be flushed for changes since `changed_at`: IDLE_FLUSH after
        the last event, BUSY_FLUSH after the change if events keep coming, and not before
        FLUSH_GAP after the last flush."""
        settle = min(self._last_event + IDLE_FLUSH, changed_at + BUSY_FLUSH)
        return max(settle, table.last_flush + FLUSH_GAP)

    async def _publish(self, pub: Publisher, history: str, event: dict) -> list[Ack]:
        if event.get("missed"):
            msg_id = names.missed_msg_id(history, event)
            row = self.rows.get(event["domid"])
            if not event.get("name") and row and row["uuid"] == event["uuid"] and row.get("name"):
                event = {**event, "name": row["name"]}
        else:
            msg_id = names.event_msg_id(history, event["seq"])
        if "host" in event:  # not a daemon's frame: no key may appear twice
            payload = compact({**event, "host": self.cfg.host_name})
        else:
            payload = compact(event)[:-1] + self._host_tail
        return await pub.send(
            names.event_subject(self.host, event["domid"], event["event"]),
            payload.encode(),
            {"Nats-Msg-Id": msg_id},
            (history, event),
        )

    def _acked(self, acks: list[Ack]) -> None:
        for ack in acks:
            history, event = ack.item
            if ack.duplicate:
                self.stats.duplicates += 1
            elif event.get("missed"):
                self.stats.missed += 1
            else:
                self.stats.published += 1
            view.apply(self.rows, self.cfg.host_name, event)
            self.history = history
            self.stream_seq = ack.stream_seq
            if not event.get("missed"):
                self.seq = event["seq"]
                self.stats.acked_seq = event["seq"]
            if not self._dirty:
                self._changed_at = time.monotonic()
            self._dirty.add(event["domid"])

    async def _resync(self, resync: Resync, pub: Publisher, table: TableWriter) -> None:
        """Publish what the stream missed, then write the snapshot as the host's table."""
        log.info(
            "daemon snapshot at %s:%d (%d domains); %d events made up for what the stream missed",
            resync.history,
            resync.seq,
            len(resync.rows),
            len(resync.missed),
        )
        self.resyncing = True
        for event in resync.missed:
            self._acked(await self._publish(pub, resync.history, event))
        self._acked(await pub.drain())
        now = time.time()
        rows = {
            r["domid"]: view.row_from_snapshot(self.cfg.host_name, r, resync.seq, now)
            for r in resync.rows
        }
        self.history, self.seq = resync.history, resync.seq
        self.stats.acked_seq = resync.seq
        await table.rewrite(rows, self.present, self._checkpoint())
        await table.settle()  # stored before the resync counts as done
        self.rows, self.present = rows, set(rows)
        self._dirty.clear()
        self.resyncing = False
        self.stats.resyncs += 1

    async def _flush(self, table: TableWriter) -> None:
        dirty, self._dirty = self._dirty, set()
        write = set()
        for domid in dirty:
            if domid in self.rows:
                self.present.add(domid)
                write.add(domid)
            elif domid in self.present:
                self.present.discard(domid)
                write.add(domid)
            # else: a domain that came and went between two flushes: nothing to delete
        await table.flush(self.rows, write, self._checkpoint())

    def _checkpoint(self) -> dict:
        return {"history": self.history, "seq": self.seq, "stream_seq": self.stream_seq}


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


async def _until_stop(stop: asyncio.Event, coro):
    """Await `coro` unless `stop` is set first (then it is cancelled and None returned)."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    await cancel(task)
    return None
