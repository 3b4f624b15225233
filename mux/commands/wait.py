"""`xenmux wait DOMID`: return when the domain is dead, with its shutdown reason as status.

Act on death, not on shutdown: a domain suspended for a migration can be resumed in place
(nothing fires for that), so `wait` keeps waiting through `shutdown` and `resumed`.
"""

from __future__ import annotations

import argparse
import time

from mux.cli import add_socket_argument
from mux.client import Subscription, Unreachable, XenmuxError
from mux.commands.output import emit, fail
from mux.protocol import DEAD, DEATH, RELEASED

EXIT_BY_REASON = {
    "poweroff": 0,
    "reboot": 11,
    "suspend": 12,
    "crash": 13,
    "watchdog": 14,
    "soft_reset": 15,
}
EXIT_NO_SHUTDOWN = 20
EXIT_MISSED = 21
EXIT_NO_SUCH_DOMAIN = 22
EXIT_ERROR = 1


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("domid", type=int, metavar="DOMID")
    p.add_argument(
        "--until",
        choices=(DEATH, RELEASED),
        default=DEATH,
        help="death (default), or released: the record finally left the hypervisor",
    )
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 1)")
    add_socket_argument(p)
    p.epilog = (
        "exit status: 0 poweroff, 11 reboot, 12 suspend, 13 crash, 14 watchdog, 15 soft_reset, "
        "20 died with no shutdown seen, 21 died while the daemon was unreachable, "
        "22 no such domain, 1 error or timeout, 2 usage"
    )


def exit_status(death: dict) -> int:
    if death.get("missed") and not death.get("reason"):
        return EXIT_MISSED
    reason = death.get("reason")
    if reason is None:
        return EXIT_NO_SHUTDOWN
    return EXIT_BY_REASON.get(reason, EXIT_ERROR)


def run(args: argparse.Namespace) -> int:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        sub = Subscription([args.domid], socket_path=args.socket, retry_timeout=args.timeout)
    except (Unreachable, XenmuxError) as exc:
        return fail("wait", str(exc), EXIT_ERROR)
    with sub:
        if args.domid in sub.absent:
            emit({"domid": args.domid, "event": "absent"})
            return fail("wait", f"no domain {args.domid}", EXIT_NO_SUCH_DOMAIN)
        row = sub.snapshot[0]
        uuid = row["uuid"]
        death: dict | None = None
        if row["state"] == DEAD:
            death = {
                "event": DEATH,
                "domid": args.domid,
                "uuid": uuid,
                **({"reason": row["reason"]} if row.get("reason") else {}),
            }
            if args.until == DEATH:
                emit(death)
                return exit_status(death)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return fail("wait", f"timed out waiting for domain {args.domid}", EXIT_ERROR)
            try:
                ev = sub.next_event(left)
            except (Unreachable, XenmuxError) as exc:
                return fail("wait", str(exc), EXIT_ERROR)
            if ev is None:
                continue
            if ev["uuid"] != uuid:
                continue  # a later incarnation on the same domid is not the one we wait for
            if ev["event"] == DEATH:
                death = ev
                if args.until == DEATH:
                    emit(ev)
                    return exit_status(ev)
            elif ev["event"] == RELEASED and args.until == RELEASED:
                out = dict(death or ev)
                out["released"] = True
                emit(out)
                return exit_status(death or {"missed": True})
