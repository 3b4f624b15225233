"""The bucket as the pool's table: a host's rows written from the bridge's view, coalesced.

Rows change with every event, but the bucket is the view, not the record: a flush writes
each changed row once, however often it changed (when to flush is the bridge's:
mux/bridge/service.py), and ends with the host's checkpoint, `<host>.checkpoint` =
`{"history", "seq", "stream_seq"}`: every event of this host up to that stream message is in
the rows. A reader that wants the table exactly as of now replays the host's stream
messages after the checkpoint onto the rows (mux/bridge/position.py, mux/bridge/reader.py).

Only the checkpoint is acknowledged: the rows before it go out without a reply subject, so
that a flush costs one ack, not one per row (each is a wake-up and a parse, and under churn
there are nearly as many rows as events). Its ack says the rows are stored too: JetStream
stores one connection's messages to a stream in the order sent, and a row is lost only
with the connection or the stream's leader, within microseconds of the checkpoint sent
after it, which is then lost too (the same argument as the events': mux/bridge/publisher.py).
A flush does not wait for that ack either: the next flush takes it first (a wake-up saved
per flush). An unacknowledged checkpoint ends the session, and every session starts by
writing the host's whole table.
"""

from __future__ import annotations

import time

from mux.bridge import names
from mux.bridge.encode import compact
from mux.bridge.natsconn import Connection, NatsUnavailable, pub_command
from mux.bridge.publisher import Publisher
from mux.bridge.stats import BridgeStats
from mux.bridge.store import KV_DELETE, KV_OPERATION, kv_subject


def _encode(value: dict) -> bytes:
    return compact(value).encode()


class TableWriter:
    """Writes one host's rows and checkpoint; `flush` only what changed, `rewrite` all."""

    def __init__(
        self, conn: Connection, bucket: str, host: str, host_name: str, stats: BridgeStats
    ) -> None:
        self.conn = conn
        self.bucket = bucket
        self.host = host
        self.host_name = host_name
        self.publisher = Publisher(conn)
        self.stats = stats
        self.last_flush = time.monotonic()

    async def flush(self, rows: dict[int, dict], dirty: set[int], checkpoint: dict) -> None:
        """Write the rows of `dirty` (one gone from `rows` is deleted), then the checkpoint."""
        await self._write({domid: rows.get(domid) for domid in sorted(dirty)}, checkpoint)

    async def rewrite(self, rows: dict[int, dict], present: set[int], checkpoint: dict) -> None:
        """Write every row, delete the host's keys in `present` that have no row, checkpoint."""
        values: dict[int, dict | None] = {domid: None for domid in present if domid not in rows}
        values.update(rows)
        await self._write(dict(sorted(values.items())), checkpoint)

    async def _write(self, values: dict[int, dict | None], checkpoint: dict) -> None:
        # The last flush's checkpoint first: its ack has long been in (a failed one ends the
        # session here); this flush's is taken by the next one, or by settle().
        await self.settle()
        self.last_flush = time.monotonic()
        commands = []
        for domid, row in values.items():
            subject = kv_subject(self.bucket, names.row_key(self.host, domid))
            if row is None:
                commands.append(pub_command(subject, b"", headers={KV_OPERATION: KV_DELETE}))
            else:
                commands.append(pub_command(subject, _encode(row)))
        if commands:
            try:
                await self.conn.send(b"".join(commands))  # one buffer, however many rows
            except Exception as exc:
                raise NatsUnavailable(
                    f"a bucket write failed: {exc or type(exc).__name__}"
                ) from None
            self.stats.kv_writes += len(commands)
        await self.publisher.send(
            kv_subject(self.bucket, names.checkpoint_key(self.host)),
            _encode({"host": self.host_name, **checkpoint, "time": time.time()}),
        )
        self.stats.kv_writes += 1

    async def settle(self) -> None:
        """Wait for the last checkpoint's ack: the flushes so far are stored."""
        await self.publisher.drain()

    def close(self) -> None:
        self.publisher.close()
