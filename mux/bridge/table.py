"""The bucket as the pool's table: a host's rows written from the bridge's view, coalesced.

Rows change with every event, but the bucket is the view, not the record: a flush writes
each changed row once, however often it changed (when to flush is the bridge's:
mux/bridge/service.py), and ends with the host's checkpoint, `<host>.checkpoint` =
`{"history", "seq", "stream_seq"}`: every event of this host up to that stream message is in
the rows. A reader that wants the table exactly as of now replays the host's stream
messages after the checkpoint onto the rows (mux/bridge/position.py, mux/bridge/reader.py).
"""

from __future__ import annotations

import json
import time

from mux.bridge import names
from mux.bridge.natsconn import Connection
from mux.bridge.publisher import Publisher
from mux.bridge.stats import BridgeStats
from mux.bridge.store import KV_DELETE, KV_OPERATION, kv_subject


def _encode(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class TableWriter:
    """Writes one host's rows and checkpoint; `flush` only what changed, `rewrite` all."""

    def __init__(
        self, conn: Connection, bucket: str, host: str, host_name: str, stats: BridgeStats
    ) -> None:
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
        self.last_flush = time.monotonic()
        for domid, row in values.items():
            subject = kv_subject(self.bucket, names.row_key(self.host, domid))
            if row is None:
                await self._put(subject, b"", {KV_OPERATION: KV_DELETE})
            else:
                await self._put(subject, _encode(row), None)
        await self.publisher.drain()
        await self._put(
            kv_subject(self.bucket, names.checkpoint_key(self.host)),
            _encode({"host": self.host_name, **checkpoint, "time": time.time()}),
            None,
        )
        await self.publisher.drain()

    async def _put(self, subject: str, payload: bytes, headers: dict | None) -> None:
        await self.publisher.send(subject, payload, headers)
        self.stats.kv_writes += 1

    def close(self) -> None:
        self.publisher.close()
