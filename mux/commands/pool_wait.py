"""`xenmux pool wait --uuid U`: return when the VM is dead and not living on another host.

The exit statuses are `xenmux wait`'s. A death after a `suspend` is how a VM leaves a host
when it migrates, so such a death is held for a grace period (--grace, 10 s) in case the
same UUID appears elsewhere; if it does, the wait goes on there.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from mux.bridge.natsconn import NatsOptions, NatsUnavailable, connect
from mux.bridge.reader import Follower, Inbox, Start, load_pool
from mux.bridge.vms import is_live, rows_of
from mux.commands.output import emit, fail
from mux.commands.wait import EXIT_ERROR, EXIT_NO_SUCH_DOMAIN, exit_status
from mux.protocol import DEAD, DEATH

SUSPEND = "suspend"
RETRY = 0.5


def configure(p: argparse.ArgumentParser) -> None:
    from mux.commands.pool import add_bucket_argument, add_stream_argument

    p.add_argument("--uuid", required=True, help="the VM's UUID")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 1)")
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="S",
        help="how long a death after a suspend waits for the VM to appear elsewhere (10)",
    )
    add_bucket_argument(p)
    add_stream_argument(p)
    p.epilog = (
        "exit status: as xenmux wait: 0 poweroff, 11 reboot, 12 suspend, 13 crash, 14 watchdog, "
        "15 soft_reset, 20 died with no shutdown seen, 21 died while unseen (reason unknown), "
        "22 no such VM in the pool, 1 error or timeout, 2 usage"
    )


class _Verdict:
    """What the pool says of one VM, event by event."""

    def __init__(self, uuid: str, grace: float) -> None:
        self.uuid = uuid
        self.grace = grace
        self.death: dict | None = None
        self.held_until: float | None = None  # a death after a suspend, held

    def update(self, rows: list[dict]) -> dict | None:
        """The death to report now, or None (still living somewhere, or held)."""
        if any(is_live(r) for r in rows):
            self.death = None
            self.held_until = None
            return None
        if self.death is None:
            dead = [r for r in rows if r.get("state") == DEAD]
            row = dead[-1] if dead else {}
            self.death = {"event": DEATH, "uuid": self.uuid, **_where(row)}
            if row.get("reason"):
                self.death["reason"] = row["reason"]
            if not dead:
                self.death["missed"] = True  # gone without a death we saw
        if self.death.get("reason") == SUSPEND:
            if self.held_until is None:
                self.held_until = time.monotonic() + self.grace
            if time.monotonic() < self.held_until:
                return None
        return self.death

    def saw_death(self, event: dict, pool_seq: int) -> None:
        self.death = {**event, "pool_seq": pool_seq}
        self.held_until = None


def _where(row: dict) -> dict:
    return {k: row[k] for k in ("host", "domid", "name") if row.get(k) is not None}


async def main(args: argparse.Namespace, opts: NatsOptions) -> int:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout

    def left() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    pool = None
    said = False
    while pool is None:
        try:
            conn = await connect(opts, "xenmux pool wait")
            try:
                pool = await load_pool(conn, args.stream, args.bucket)
            finally:
                await conn.close()
        except (NatsUnavailable, Exception) as exc:
            from mux.bridge.natsconn import NatsRejected

            if isinstance(exc, NatsRejected):
                raise
            if not said:
                fail("pool wait", f"{exc}; retrying")
                said = True
            if (t := left()) is not None and t <= RETRY:
                return fail("pool wait", f"timed out waiting for VM {args.uuid}", EXIT_ERROR)
            await asyncio.sleep(RETRY)
    if not rows_of(pool.rows(), args.uuid):
        emit({"uuid": args.uuid, "event": "absent"})
        return fail("pool wait", f"no VM {args.uuid} in the pool", EXIT_NO_SUCH_DOMAIN)
    verdict = _Verdict(args.uuid, args.grace)
    follower = Follower(
        opts, args.stream, "xenmux.events.>", Start("seq", seq=pool.stream_last + 1)
    )
    inbox = Inbox(follower)
    try:
        while True:
            death = verdict.update(rows_of(pool.rows(), args.uuid))
            if death is not None:
                emit(death)
                return exit_status(death)
            t_left = left()
            if t_left is not None and t_left <= 0:
                return fail("pool wait", f"timed out waiting for VM {args.uuid}", EXIT_ERROR)
            waits = [t for t in (t_left, _until(verdict.held_until)) if t is not None]
            msg = await inbox.get(min(waits) if waits else None)
            if msg is None or not pool.apply(msg):
                continue
            if msg.event.get("uuid") == args.uuid and msg.event.get("event") == DEATH:
                verdict.saw_death(msg.event, msg.stream_seq)
    finally:
        await inbox.close()


def _until(when: float | None) -> float | None:
    return None if when is None else max(0.0, when - time.monotonic())
