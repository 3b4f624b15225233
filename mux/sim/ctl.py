"""`xenmux sim-ctl`: change a running simulated host, and the Python client behind it.

The sim answers on DIR/control.sock, one JSON object per line each way. A request is
`{"op": ..., ...}`; the reply `{"ok": true, "op": ..., ..., "virqs": n, "firings": {...},
"events": n}` comes only once the change is applied to the table and the sim's xenstored has
written its watch events (the firings) to every watcher; or `{"ok": false, "error": "..."}`.

    from mux.sim.ctl import SimControl
    with SimControl(sim_dir) as sim:
        [dom] = sim.create(name="web")
        sim.shutdown(dom["domid"], "reboot")
        sim.destroy(dom["domid"])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from typing import Any

from mux.act.policy import ACTIONS, REASON_KEYS
from mux.sim.paths import sim_paths

SETTING_KEYS = tuple(REASON_KEYS.values())  # on_poweroff ...
GUEST_ACTIONS = tuple(REASON_KEYS)  # what a guest does by itself: the reasons act acts on

DEFAULT_TIMEOUT = 60.0


class SimControlError(Exception):
    """The sim refused a request (`str()` is its message), or is not there."""


def control_path(dir_or_socket: str) -> str:
    if os.path.isdir(dir_or_socket):
        return sim_paths(dir_or_socket).control
    return dir_or_socket


def _check(reply: dict) -> dict:
    if not reply.get("ok"):
        raise SimControlError(reply.get("error", "the sim refused the request"))
    return reply


def _request(op: str, **fields: Any) -> dict:
    return {"op": op, **{k: v for k, v in fields.items() if v is not None}}


def _runs_for(op: str, fields: dict) -> float:
    """Seconds the sim works on a request before it replies (beyond the usual)."""
    if op != "churn":
        return 0.0
    # Lifecycles begun last may hold a domain for up to 1.5 * hold before they end.
    return float(fields.get("seconds") or 0) + 2 * float(fields.get("hold") or 2.0)


class _Ops:
    """The operations, shared by the blocking and the asyncio client."""

    def request(self, op: str, **fields: Any):  # pragma: no cover - overridden
        raise NotImplementedError

    def create(
        self,
        *,
        uuid=None,
        domid=None,
        name=None,
        count=None,
        introduce=True,
        paused=False,
        settings=None,
        by=None,
    ):
        """Create domains; returns their rows (domid, uuid, name, state, settings...).

        `introduce=False`: xenstored never hears of them (no @releaseDomain for them).
        `paused=True`: left paused, as Xen builds them, until `unpause` (`xl create -p`).
        `settings`: the toolstack's on_* actions for them (`{"on_crash": "preserve"}`).
        `by`: who asks, for the truth log (DIR/toolstack.log)."""
        return self._then(
            self.request(
                "create",
                uuid=uuid,
                domid=domid,
                name=name,
                count=count,
                introduce=None if introduce else False,
                settings=settings or None,
                by=by,
                paused=paused or None,
            ),
            lambda r: r["domains"],
        )

    def domains(self, domids):
        """The rows (None where no domain) of several domids at once."""
        return self._then(self.request("domains", domids=list(domids)), lambda r: r["domains"])

    def destroy_incarnations(self, incarnations, by=None):
        """Destroy each (domid, uuid) that is still that incarnation, all in one table
        change; returns, for each, whether it was there."""
        return self._then(
            self.request(
                "destroy-incarnations", incarnations=[list(i) for i in incarnations], by=by
            ),
            lambda r: r["there"],
        )

    def domain(self, domid):
        """One domain's row with its stored on_* settings."""
        return self._then(self.request("domain", domid=domid), lambda r: r["domain"])

    def guest(self, domid, action):
        """The guest itself powers off, reboots, crashes, trips its watchdog or asks for a
        soft reset: the domain stays shut down until a toolstack acts."""
        return self.request("guest", domid=domid, action=action)

    def dump_core(self, domid, path, by=None):
        return self.request("dump-core", domid=domid, path=path, by=by)

    def rename(self, domid, name, uuid, by=None):
        """Keep a domain under another name and UUID (libxl's preserve)."""
        return self._then(
            self.request("rename", domid=domid, name=name, uuid=uuid, by=by), lambda r: r["domain"]
        )

    def soft_reset(self, domid, by=None):
        return self.request("soft-reset", domid=domid, by=by)

    def pause(self, domid):
        """`xl pause`: the domain's paused flag set (nothing fires)."""
        return self.request("pause", domid=domid)

    def unpause(self, domid):
        """`xl unpause`: one pause taken back; the flag clears with the last (nothing fires)."""
        return self.request("unpause", domid=domid)

    def shutdown(self, domid, reason="poweroff"):
        """Shut a domain (or "all" running guests) down; reason by name or number."""
        return self.request("shutdown", domid=domid, reason=reason)

    def suspend(self, domid, silent=False):
        return self.request("suspend", domid=domid, silent=silent or None)

    def resume(self, domid, fast=False, xs_resume=True):
        """Resume a shut-down domain (nothing fires); `fast`: the cooperative resume of a
        suspended one; `xs_resume=False`: no XS_RESUME (a toolstack outside libxl)."""
        return self.request(
            "resume", domid=domid, fast=fast or None, xs_resume=None if xs_resume else False
        )

    def destroy(self, domid, zombie=False, by=None):
        return self.request("destroy", domid=domid, zombie=zombie or None, by=by)

    def release(self, domid):
        return self.request("release", domid=domid)

    def virq(self):
        """Raise VIRQ_DOM_EXC with no change."""
        return self.request("virq")

    def fail_hypercalls(self, count=1):
        """Make the next `count` domain-info calls of every sim backend fail (EAGAIN)."""
        return self.request("fail-hypercalls", count=count)

    def list(self):
        return self._then(self.request("list"), lambda r: r["domains"])

    def info(self):
        return self.request("info")

    def restart_xenstored(self, down=None):
        """Drop every xenstored connection and rebind after `down` seconds."""
        return self.request("restart-xenstored", down=down)

    def reintroduce(self):
        """External xenstored only: after it restarted, reconnect to it, write every domain's
        nodes and introduce the living guests again. Returns the reply (`domids`)."""
        return self.request("reintroduce")

    def churn(
        self,
        seconds,
        rate=None,
        seed=None,
        step_delay=None,
        kinds=None,
        domids=None,
        hold=None,
        guests_only=False,
    ):
        """Random lifecycles for `seconds` (docs/sim.md); `kinds` a list of names or "all",
        `domids` a range "LO-HI" for boots, `hold` the seconds zombies, same-UUID reuses
        and failed migrations wait; `guests_only`: only guests act (xenmux act does the
        rest)."""
        return self.request(
            "churn",
            seconds=seconds,
            rate=rate,
            seed=seed,
            step_delay=step_delay,
            kinds=kinds,
            domids=domids,
            hold=hold,
            guests_only=guests_only or None,
        )

    def _then(self, reply, fn):
        return fn(reply)


class SimControl(_Ops):
    """Blocking client of a sim's control socket (one connection, one request at a time)."""

    def __init__(self, dir_or_socket: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = control_path(dir_or_socket)
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except OSError as exc:
            self._sock.close()
            raise SimControlError(f"no simulated host answers at {self.path}: {exc}") from None
        self._file = self._sock.makefile("rb")

    def request(self, op: str, **fields: Any) -> dict:
        line = json.dumps(_request(op, **fields)).encode() + b"\n"
        self._sock.settimeout(self.timeout + _runs_for(op, fields))
        try:
            self._sock.sendall(line)
            reply = self._file.readline()
        except OSError as exc:
            raise SimControlError(f"the sim at {self.path} did not answer: {exc}") from None
        if not reply:
            raise SimControlError(f"the sim at {self.path} closed the connection")
        return _check(json.loads(reply))

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> SimControl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSimControl(_Ops):
    """asyncio client: `sim = await AsyncSimControl.connect(dir)`; every method is awaited."""

    def __init__(self, reader, writer, path: str, timeout: float) -> None:
        self._reader = reader
        self._writer = writer
        self.path = path
        self.timeout = timeout
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, dir_or_socket: str, timeout: float = DEFAULT_TIMEOUT):
        path = control_path(dir_or_socket)
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=1 << 26)
        except OSError as exc:
            raise SimControlError(f"no simulated host answers at {path}: {exc}") from None
        return cls(reader, writer, path, timeout)

    async def request(self, op: str, **fields: Any) -> dict:
        timeout = self.timeout + _runs_for(op, fields)
        async with self._lock:
            self._writer.write(json.dumps(_request(op, **fields)).encode() + b"\n")
            try:
                await self._writer.drain()
                reply = await asyncio.wait_for(self._reader.readline(), timeout)
            except (OSError, TimeoutError) as exc:
                raise SimControlError(f"the sim at {self.path} did not answer: {exc!r}") from None
        if not reply:
            raise SimControlError(f"the sim at {self.path} closed the connection")
        return _check(json.loads(reply))

    async def _then(self, reply, fn):
        return fn(await reply)

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


# Command line -------------------------------------------------------------------------------


def _domid_or_all(text: str):
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a domid: {text!r}") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        default=os.environ.get("XENMUX_SIM_DIR"),
        help="the sim's directory (default $XENMUX_SIM_DIR)",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait")
    sub = parser.add_subparsers(dest="op", metavar="OP", required=True)

    p = sub.add_parser("create", help="create domain(s): no VIRQ; @introduceDomain each")
    p.add_argument("--uuid", help="the domain's UUID (default: a random one)")
    p.add_argument("--domid", type=int, help="force this domid (test domid reuse)")
    p.add_argument("--name", help="the domain's name in xenstore (default: guest-DOMID)")
    p.add_argument("--count", type=int, help="create this many in one table change")
    p.add_argument(
        "--no-introduce",
        dest="introduce",
        action="store_false",
        help="never introduce them to xenstored (it then never fires for them)",
    )
    for key in SETTING_KEYS:
        p.add_argument(
            "--" + key.replace("_", "-"),
            choices=ACTIONS,
            metavar="ACTION",
            help=f"the toolstack's {key} action ({', '.join(ACTIONS)})"
            if key == "on_poweroff"
            else f"the toolstack's {key} action",
        )
    p.add_argument(
        "--paused", action="store_true", help="leave them paused, as Xen builds them (xl -p)"
    )

    p = sub.add_parser("guest", help="the guest shuts itself down: it stays so until acted on")
    p.add_argument("domid", type=int, help="the guest that shuts itself down")
    p.add_argument("action", choices=GUEST_ACTIONS, help="how it shuts down (the reason it gives)")

    p = sub.add_parser("pause", help="pause a domain (xl pause; fires nothing)")
    p.add_argument("domid", type=int, help="the domain to pause")
    p = sub.add_parser("unpause", help="unpause a domain (xl unpause; fires nothing)")
    p.add_argument("domid", type=int, help="the domain to unpause (one pause taken back)")

    p = sub.add_parser("shutdown", help="shut a domain (or all running guests) down")
    p.add_argument(
        "domid", type=_domid_or_all, metavar="DOMID|all", help="the domain, or all running guests"
    )
    p.add_argument("--reason", default="poweroff", help="name or number (default poweroff)")

    p = sub.add_parser("suspend", help="shutdown(suspend); VIRQ unless --silent")
    p.add_argument("domid", type=int, help="the domain to suspend")
    p.add_argument("--silent", action="store_true", help="suspend event channel: no VIRQ")

    p = sub.add_parser("resume", help="resume a shut-down domain (no VIRQ) and send XS_RESUME")
    p.add_argument("domid", type=int, help="the suspended domain to resume")
    p.add_argument(
        "--fast",
        action="store_true",
        help="the cooperative resume of a suspended domain (suspend cancelled, xl save -c)",
    )
    p.add_argument(
        "--no-xs-resume",
        action="store_true",
        help="send no XS_RESUME, as a toolstack resuming outside libxl: C xenstored stays "
        "latched and the domain's next shutdown fires nothing",
    )

    p = sub.add_parser("destroy", help="dying (VIRQ), then gone (VIRQ), then nodes removed")
    p.add_argument(
        "domid", type=_domid_or_all, metavar="DOMID|all", help="the domain, or all guests"
    )
    p.add_argument("--zombie", action="store_true", help="stay dying (until destroyed again)")

    p = sub.add_parser("release", help="send XS_RELEASE for a domain")
    p.add_argument("domid", type=int, help="the domain xenstored is told is released")

    sub.add_parser("virq", help="raise VIRQ_DOM_EXC with no change (a spurious one)")
    p = sub.add_parser(
        "fail-hypercalls", help="the next COUNT domain-info calls of the daemon fail (EAGAIN)"
    )
    p.add_argument("count", type=int, help="how many calls fail, 1 to 1000")
    p = sub.add_parser("restart-xenstored", help="drop every xenstored connection, rebind later")
    p.add_argument("--down", type=float, default=0.2, help="seconds without xenstored")
    sub.add_parser(
        "reintroduce",
        help="external xenstored: reconnect after its restart, rewrite nodes, introduce again",
    )
    sub.add_parser("list", help="the host's domains, one JSON line each")
    sub.add_parser("info", help="the sim's paths and counters")

    p = sub.add_parser("churn", help="random lifecycles inside the sim; prints the counts")
    p.add_argument("--seconds", type=float, required=True, help="how long to go on")
    p.add_argument("--rate", type=float, default=10.0, help="lifecycles per second (default 10)")
    p.add_argument("--seed", type=int, help="seed of the random choices (default: a new one)")
    p.add_argument("--step-delay", type=float, help="seconds between a lifecycle's steps")
    p.add_argument(
        "--kinds",
        help="lifecycles to run, comma-separated, or 'all' (default: "
        "boot,reboot,poweroff,crash,migrate,destroy; also zombie,reuse,migrate-away,"
        "migrate-failed)",
    )
    p.add_argument("--domids", metavar="LO-HI", help="boots take a free domid from this range")
    p.add_argument(
        "--hold",
        type=float,
        help="seconds a zombie stays dying, a same-UUID reuse waits, a failed migration "
        "runs before its poweroff (default 2)",
    )
    p.add_argument(
        "--guests-only",
        action="store_true",
        help="only guests act (shut down, reboot, crash, watchdog); `xenmux act` does the rest",
    )


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    if not args.dir:
        print("xenmux sim-ctl: give --dir DIR (or set XENMUX_SIM_DIR)", file=sys.stderr)
        return 2
    try:
        with SimControl(args.dir, timeout=args.timeout) as sim:
            op = args.op
            if op == "create":
                for row in sim.create(
                    uuid=args.uuid,
                    domid=args.domid,
                    name=args.name,
                    count=args.count,
                    introduce=args.introduce,
                    settings={
                        k: getattr(args, k) for k in SETTING_KEYS if getattr(args, k) is not None
                    },
                    paused=args.paused,
                ):
                    _emit(row)
            elif op in ("pause", "unpause"):
                _emit(getattr(sim, op)(args.domid))
            elif op == "list":
                for row in sim.list():
                    _emit(row)
            elif op == "shutdown":
                _emit(sim.shutdown(args.domid, args.reason))
            elif op == "guest":
                _emit(sim.guest(args.domid, args.action))
            elif op == "suspend":
                _emit(sim.suspend(args.domid, args.silent))
            elif op == "resume":
                _emit(sim.resume(args.domid, args.fast, not args.no_xs_resume))
            elif op == "destroy":
                _emit(sim.destroy(args.domid, args.zombie))
            elif op == "release":
                _emit(sim.release(args.domid))
            elif op == "virq":
                _emit(sim.virq())
            elif op == "fail-hypercalls":
                _emit(sim.fail_hypercalls(args.count))
            elif op == "restart-xenstored":
                _emit(sim.restart_xenstored(args.down))
            elif op == "reintroduce":
                _emit(sim.reintroduce())
            elif op == "info":
                _emit(sim.info())
            elif op == "churn":
                _emit(
                    sim.churn(
                        args.seconds,
                        args.rate,
                        args.seed,
                        args.step_delay,
                        kinds=args.kinds,
                        domids=args.domids,
                        hold=args.hold,
                        guests_only=args.guests_only,
                    )
                )
    except SimControlError as exc:
        print(f"xenmux sim-ctl: {exc}", file=sys.stderr)
        return 1
    return 0
