"""`xenmux pool domains`: every VM of the pool, on the host it is at."""

from __future__ import annotations

import argparse
import sys

from mux.bridge.natsconn import NatsOptions, NatsUnavailable, connect
from mux.bridge.reader import load_pool
from mux.bridge.vms import placements
from mux.commands.output import emit, fail, table


def configure(p: argparse.ArgumentParser) -> None:
    from mux.commands.pool import add_bucket_argument, add_stream_argument

    add_bucket_argument(p)
    add_stream_argument(p)
    p.add_argument("--json", action="store_true", help="JSON lines, one per VM")


def vm_line(row: dict) -> dict:
    out = {
        "uuid": row["uuid"],
        "host": row.get("host"),
        "domid": row.get("domid"),
        "state": row.get("state"),
        "name": row.get("name"),
    }
    if row.get("reason"):
        out["reason"] = row["reason"]
    return out


async def main(args: argparse.Namespace, opts: NatsOptions) -> int:
    try:
        conn = await connect(opts, "xenmux pool domains")
    except NatsUnavailable as exc:
        return fail("pool domains", str(exc))
    try:
        pool = await load_pool(conn, args.stream, args.bucket)
    except Exception as exc:
        return fail("pool domains", f"reading the pool failed: {exc or type(exc).__name__}")
    finally:
        await conn.close()
    vms = [vm_line(r) for r in placements(pool.rows())]
    if args.json:
        for vm in vms:
            emit(vm)
        return 0
    table(
        ("UUID", "HOST", "DOMID", "STATE", "REASON", "NAME"),
        [
            (v["uuid"], v["host"], v["domid"], v["state"], v.get("reason") or "", v["name"] or "-")
            for v in vms
        ],
        out=sys.stdout,
    )
    return 0
