"""`xenmux wait DOMAIN...`: return when the domains are dead, with a shutdown reason as status.

Act on death, not on shutdown: a domain suspended for a migration can be resumed in place
(nothing fires for that), so `wait` keeps waiting through `shutdown` and `resumed`. It
keeps waiting through daemon outages too: on reconnecting it resumes from its cursor, so
a death that happened meanwhile arrives with its reason, as if nothing had been down. Only
when the daemon cannot replay (a gap) is the death reported as missed (21, unless the
reason was final before the outage: then that reason's status).

Several domains: `--all` (the default) returns when every one has died, with 0 when all
statuses were 0, else the first non-zero one in the order they died; `--any` returns at
the first death, with its status.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mux.cli import add_socket_argument
from mux.client import Subscription, XenmuxError
from mux.client.wire import Deadline
from mux.commands.eventview import EventPrinter
from mux.commands.failure import EXIT_ERROR, CommandError
from mux.commands.output import JSON, add_output_arguments, emit, fail
from mux.commands.subscribe import start
from mux.commands.targets import add_target_arguments
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

STATUSES = (
    "exit status: 0 poweroff, 11 reboot, 12 suspend, 13 crash, 14 watchdog, 15 soft_reset, "
    "20 died with no shutdown seen, 21 died during a gap in the daemon's record (reason "
    "unknown), 22 no such domain (or an unknown or ambiguous name), 1 error or timeout, "
    "2 usage. With several domains: --all (default) gives 0 when every status was 0, else "
    "the first non-zero one in the order they died; --any gives the first death's status."
)


def configure(p: argparse.ArgumentParser) -> None:
    add_target_arguments(p, "the domains to wait for", required=False)
    p.add_argument(
        "--until",
        choices=(DEATH, RELEASED),
        default=DEATH,
        help="death (default), or released: the record finally left the hypervisor",
    )
    several = p.add_mutually_exclusive_group()
    several.add_argument(
        "--all",
        dest="mode",
        action="store_const",
        const="all",
        default="all",
        help="with several domains, return when all have died (the default)",
    )
    several.add_argument(
        "--any",
        dest="mode",
        action="store_const",
        const="any",
        help="with several domains, return at the first death, with its status",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="give up after S seconds (exit 1), also when no subscribe reply came within them",
    )
    add_output_arguments(p, JSON, times=True)
    add_socket_argument(p)
    p.epilog = STATUSES


def exit_status(death: dict) -> int:
    if death.get("missed") and not death.get("reason"):
        return EXIT_MISSED
    reason = death.get("reason")
    if reason is None:
        return EXIT_NO_SHUTDOWN
    return EXIT_BY_REASON.get(reason, EXIT_ERROR)


@dataclass
class Waited:
    """One domain waited for: the incarnation (its UUID at start) and its death."""

    domid: int
    uuid: str
    death: dict | None = None
    status: int | None = None  # set once it is done (dead, or released with --until)


def run(args: argparse.Namespace) -> int:
    if not (args.domains or args.uuid or args.name):
        raise CommandError("name at least one domain (a domid, a name or a UUID)", 2)
    deadline = Deadline.after(args.timeout)
    sub = start("wait", args, unknown_status=EXIT_NO_SUCH_DOMAIN)
    with sub:
        if sub.absent:
            for domid in sub.absent:
                emit({"domid": domid, "event": "absent"})
            missing = ", ".join(str(d) for d in sub.absent)
            return fail("wait", f"no domain {missing}", EXIT_NO_SUCH_DOMAIN)
        printer = EventPrinter.for_snapshot(args, sub.snapshot)
        waited = {r["domid"]: Waited(r["domid"], r["uuid"]) for r in sub.snapshot}
        order: list[Waited] = []  # in the order they were done

        def done(w: Waited, shown: dict, status: int) -> bool:
            """Record one domain done; True when the wait is over."""
            w.status = status
            order.append(w)
            printer.event(shown)
            return args.mode == "any" or all(x.status is not None for x in waited.values())

        for row in sub.snapshot:
            if row["state"] == DEAD:
                w = waited[row["domid"]]
                w.death = {"event": DEATH, "domid": w.domid, "uuid": w.uuid}
                if row.get("reason"):
                    w.death["reason"] = row["reason"]
                if args.until == DEATH and done(w, w.death, exit_status(w.death)):
                    return _status(order, args.mode)
        while True:
            if deadline.passed():
                left = [str(w.domid) for w in waited.values() if w.status is None]
                return fail("wait", f"timed out waiting for domain {', '.join(left)}", 1)
            ev = _next(sub, deadline)
            w = waited.get(ev["domid"]) if ev is not None else None
            if w is None or w.status is not None or ev["uuid"] != w.uuid:
                continue  # a later incarnation on the same domid is not the one we wait for
            if ev["event"] == DEATH:
                w.death = ev
                if args.until == DEATH and done(w, ev, exit_status(ev)):
                    return _status(order, args.mode)
            elif ev["event"] == RELEASED and args.until == RELEASED:
                shown = {**(w.death or ev), "released": True}
                if done(w, shown, exit_status(w.death or {"missed": True})):
                    return _status(order, args.mode)


def _next(sub: Subscription, deadline: Deadline) -> dict | None:
    try:
        return sub.next_event(deadline.left())
    except XenmuxError as exc:
        raise CommandError(str(exc)) from None


def _status(order: list[Waited], mode: str) -> int:
    if mode == "any":
        return order[0].status or 0
    return next((w.status for w in order if w.status), 0)
