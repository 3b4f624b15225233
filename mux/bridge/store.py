"""The JetStream side: the pool's stream and bucket, made if missing, and read back.

The stream (`xenmux-events`, subjects `xenmux.events.>`) is the record: file storage, limits
retention by age and bytes (DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES: the oldest messages go
first), a duplicate window for Nats-Msg-Id. The bucket (`xenmux-domains`, one value per key)
is the view: every host's rows and checkpoint (mux/bridge/names.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mux.bridge import names

KV_OPERATION = "KV-Operation"  # the KV protocol's header for a delete marker
KV_DELETE = "DEL"
KV_PURGE = "PURGE"
READ_TIMEOUT = 10.0


class StoreError(Exception):
    """The stream or bucket exists but cannot serve as ours; the message says why."""


@dataclass(frozen=True)
class StoreConfig:
    stream: str = names.DEFAULT_STREAM
    bucket: str = names.DEFAULT_BUCKET
    replicas: int = 1
    max_age: float = names.DEFAULT_MAX_AGE
    max_bytes: int = names.DEFAULT_MAX_BYTES


async def ensure_stream(js: Any, cfg: StoreConfig) -> Any:
    """The stream's info; creates it (our defaults) when missing."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import BadRequestError, NotFoundError

    wanted = f"{names.SUBJECT_ROOT}.>"
    try:
        info = await js.stream_info(cfg.stream)
    except NotFoundError:
        config = StreamConfig(
            name=cfg.stream,
            description="xen-watch-mux: every host's domain events (xenmux bridge)",
            subjects=[wanted],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=cfg.max_age,
            max_bytes=cfg.max_bytes,
            num_replicas=cfg.replicas,
            duplicate_window=names.DUPLICATE_WINDOW,
        )
        try:
            info = await js.add_stream(config)
        except BadRequestError:
            # Another bridge made it meanwhile (with other limits, or we would have matched).
            info = await js.stream_info(cfg.stream)
    if wanted not in (info.config.subjects or []):
        raise StoreError(
            f"stream {cfg.stream} exists with subjects {info.config.subjects}, not {wanted}"
        )
    return info


async def ensure_bucket(js: Any, cfg: StoreConfig) -> Any:
    """The bucket's KeyValue handle; creates it when missing."""
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError

    try:
        return await js.key_value(cfg.bucket)
    except (BucketNotFoundError, NotFoundError):
        pass
    try:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=cfg.bucket,
                description="xen-watch-mux: where every domain of the pool is (xenmux bridge)",
                history=1,
                storage=StorageType.FILE,
                replicas=cfg.replicas,
            )
        )
    except BadRequestError:
        return await js.key_value(cfg.bucket)


def kv_subject(bucket: str, key: str) -> str:
    """The subject a bucket's key is written to (the KV protocol, as nats-py's put uses)."""
    return f"$KV.{bucket}.{key}"


async def read_bucket(js: Any, bucket: str, keys: str = ">") -> dict[str, dict]:
    """Every live value of the bucket under `keys` (a KV key filter), parsed from JSON.

    Values that are not JSON objects are left out: the bucket is ours, a stray value is no
    reason to stop."""
    from nats.js.errors import BucketNotFoundError, NotFoundError

    try:
        kv = await js.key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        return {}
    watcher = await kv.watch(keys)
    out: dict[str, dict] = {}
    try:
        while True:
            entry = await watcher.updates(timeout=READ_TIMEOUT)
            if entry is None:
                break
            if entry.operation in (KV_DELETE, KV_PURGE):
                out.pop(entry.key, None)
                continue
            try:
                value = json.loads(entry.value or b"")
            except ValueError:
                continue
            if isinstance(value, dict):
                out[entry.key] = value
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()
    return out


async def stream_messages_after(
    jsm: Any, stream: str, subject: str, after: int
) -> list[tuple[int, str, dict, bytes]]:
    """(stream seq, subject, headers, payload) of every message on `subject` past `after`.

    One request each (MSG.GET with next_by_subj, which 2.9 has): meant for short tails."""
    from nats.js.errors import NotFoundError

    out = []
    seq = after + 1
    while True:
        try:
            msg = await jsm.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return out
        out.append((msg.seq, msg.subject, msg.headers or {}, msg.data or b""))
        seq = msg.seq + 1


async def last_message(jsm: Any, stream: str, subject: str):
    """The last message on `subject` (a wildcard filter is fine on 2.9), or None.

    Asked of the stream's leader (not a direct get, which a replica may answer from
    behind): this is where a bridge resumes."""
    from nats.js.errors import NotFoundError

    try:
        msg = await jsm.get_msg(stream, subject=subject)
    except NotFoundError:
        return None
    return msg
