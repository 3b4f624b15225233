"""`xenmux demo`: a simulated host of 1000 domains, the daemon, act, live churn and a view.

Everything runs as separate processes, as on a real host: `xenmux sim` (the hypervisor and
its xenstored), `xenmux serve` (the daemon), `xenmux act --toolstack sim` (what xl's
per-domain monitors do, for the whole host) and `xenmux sim-ctl churn --guests-only`
(guests shutting down, rebooting, crashing by themselves; act does the toolstack's part).
This process subscribes to every domain, draws what arrives and act's actions (one line
each, from act's log), and plays a failed migration: a domain suspended, resumed in place,
and powered off later by its guest, which act must still destroy (xl's monitor would have
exited at the suspend). Ctrl-C stops all of it and removes what it created.
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from mux.client import Client, Subscription, Unreachable
from mux.commands.output import clock
from mux.protocol import EVENT_KINDS, TRIGGER_STARTUP
from mux.sim.ctl import SimControl, SimControlError
from mux.sim.paths import sim_paths
from mux.sim.xenstored.rules import (
    FLAVOUR_C,
    FLAVOURS,
    XEN_VERSIONS,
    XS_VERSIONS,
    xenstored_version,
)

# What stops the demo and everything it started: Ctrl-C (SIGINT, Python's own
# KeyboardInterrupt), SIGTERM, and SIGHUP when its terminal is closed.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# act's line for each action it ended (mux/act/execute.py), and for a suspend it leaves alone
ACTION_LINE = re.compile(
    r"domid=(?P<domid>\d+) name=(?P<name>\S+) reason=(?P<reason>\S+) "
    r"action=(?P<action>\S+) outcome=(?P<outcome>\S+) seconds=(?P<seconds>[\d.]+)"
)
SUSPEND_LINE = re.compile(r"domid=(?P<domid>\d+) name=(?P<name>\S+) reason=suspend: not acted")
MIGRATION_START = 1.0  # seconds into the churn the scripted failed migration begins
MIGRATION_HOLD = 0.5  # seconds the resumed domain runs before its guest powers it off
MIGRATION_AGAIN = 30.0  # seconds from one scripted failed migration's end to the next


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domains", type=int, default=1000, help="guests on the simulated host")
    p.add_argument("--rate", type=float, default=20.0, help="lifecycle changes per second")
    p.add_argument("--seconds", type=float, default=0, help="stop after S seconds (0: Ctrl-C)")
    p.add_argument(
        "--xs-version",
        choices=XS_VERSIONS,
        default=None,
        help="the xenstored rules the sim runs, as `xenmux sim --xs-version`: 4.22 has watch "
        "depth (default: those of --xen-version)",
    )
    p.add_argument(
        "--xen-version",
        choices=XEN_VERSIONS,
        default="4.17",
        help="the Xen release the sim models, as `xenmux sim --xen-version` (default: %(default)s)",
    )
    p.add_argument(
        "--xenstored",
        choices=FLAVOURS,
        default=FLAVOUR_C,
        help="the sim's xenstored flavour, as `xenmux sim --xenstored` (default: %(default)s)",
    )
    p.add_argument("--plain", action="store_true", help="plain lines, no screen redraw")


def _xenmux(*args: str) -> list[str]:
    return [sys.executable, "-m", "mux.cli", *args]


def _wait_for(path: str, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready after {timeout:.0f} s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ActLog:
    """act's log, read on a thread: its action lines are handed to the view, every other
    line goes to the demo's log (shown if something fails)."""

    def __init__(self, stream, log) -> None:
        self.lines: queue.SimpleQueue = queue.SimpleQueue()
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(stream, log), daemon=True)
        self._thread.start()

    def _read(self, stream, log) -> None:
        for raw in stream:
            text = raw.decode(errors="replace").rstrip("\n")
            if "acting for every domain" in text:
                self.ready.set()
            m = ACTION_LINE.search(text)
            if m:
                self.lines.put(
                    {**m.groupdict(), "domid": int(m["domid"]), "seconds": float(m["seconds"])}
                )
                continue
            m = SUSPEND_LINE.search(text)
            if m:
                self.lines.put(
                    {
                        "domid": int(m["domid"]),
                        "name": m["name"],
                        "reason": "suspend",
                        "action": "none",
                        "outcome": "not-acted-upon",
                        "seconds": 0.0,
                    }
                )
                continue
            log.write(raw)
            log.flush()

    def actions(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out

    def join(self) -> None:
        self._thread.join(5)


class FailedMigration:
    """The scripted failed migration. A running domain is suspended (as `xl migrate` does
    before it sends the last of its memory), then resumed in place (the migration failed)
    and `xenmux rescan` is run (a resume fires nothing in Xen); MIGRATION_HOLD s after the
    daemon told its resume, its guest powers it off, and act must destroy it. The churn's
    guests act on their own: if one takes this domain meanwhile, another plays the part."""

    def __init__(self, ctl: SimControl, client: Client, start: float) -> None:
        self.ctl = ctl
        self.client = client
        self.at = start  # when the next step is due
        self.state = "idle"
        self.domid: int | None = None
        self.name = "-"

    def _say(self, text: str) -> str:
        domid = "-" if self.domid is None else self.domid
        return f"{clock(time.time())}  migration dom {domid:>5}  {self.name[:18]:<18} {text}"

    def _again(self, why: str) -> list[str]:
        out = [self._say(f"{why}: another domain plays the failed migration")]
        self.state, self.domid, self.at = "idle", None, time.monotonic() + 0.2
        return out

    def tick(self, now: float) -> list[str]:
        """The steps due by `now` (the lines to show)."""
        if now < self.at:
            return []
        try:
            if self.state == "idle":
                running = [r for r in self.ctl.list() if r["state"] == "running" and r["domid"]]
                if not running:
                    self.at = now + 0.5
                    return []
                row = running[len(running) // 2]
                self.domid, self.name = row["domid"], row.get("name") or "-"
                self.ctl.suspend(self.domid)
                self.state, self.at = "suspending", now + 10
                return [self._say("suspended for a migration (xl migrate)")]
            if self.state == "resumed":
                self.ctl.guest(self.domid, "poweroff")
                self.state, self.at = "powered-off", now + 10
                return [self._say("its guest powers off after the resume: act must destroy it")]
        except SimControlError as exc:
            return self._again(str(exc))
        # a step that waits for an event or an action has waited 10 s
        return self._again(f"no progress while {self.state}")

    def event(self, ev: dict) -> list[str]:
        if self.domid is None or ev.get("domid") != self.domid:
            return []
        now = time.monotonic()
        if self.state == "suspending" and ev["event"] == "shutdown":
            if ev.get("reason") != "suspend":
                return self._again(f"its guest shut it down first ({ev.get('reason')})")
            try:
                self.ctl.resume(self.domid)
                self.client.rescan()
            except (SimControlError, Unreachable) as exc:
                return self._again(str(exc))
            self.state, self.at = "resuming", now + 10
            return [self._say("the migration failed: resumed in place; xenmux rescan")]
        if self.state == "resuming" and ev["event"] == "resumed":
            self.state, self.at = "resumed", now + MIGRATION_HOLD
            return [self._say("running again (the daemon told act: resumed)")]
        if ev["event"] == "death" and self.state != "powered-off":
            return self._again("gone")
        return []

    def action(self, act: dict) -> list[str]:
        if act["domid"] != self.domid or self.state != "powered-off":
            return []
        if act["reason"] != "poweroff":
            return self._again(f"its guest did {act['reason']} first")
        line = self._say(
            f"act: {act['action']} {act['outcome']}: the failed migration's poweroff was acted upon"
        )
        # played again a while later, for whoever watches a long demo
        self.state, self.domid, self.at = "idle", None, time.monotonic() + MIGRATION_AGAIN
        return [line]


class View:
    """Counts, rates over the last 10 s, the latest events and the latest actions."""

    def __init__(self, plain: bool) -> None:
        self.plain = plain or not sys.stdout.isatty()
        self.totals = collections.Counter()
        self.recent: collections.deque = collections.deque(maxlen=12)
        self.window: collections.deque = collections.deque()
        self.names: dict[int, str] = {}
        self.last_draw = 0.0
        self.missed = 0
        self.actions: collections.deque = collections.deque(maxlen=8)
        self.action_totals: collections.Counter = collections.Counter()
        self.migration: list[str] = []

    def add_action(self, act: dict) -> None:
        if act["reason"] != "suspend":
            self.action_totals[f"{act['action']} {act['outcome']}"] += 1
        done = (
            "not acted upon (the migrating toolstack owns it)"
            if act["reason"] == "suspend"
            else f"{act['action']} {act['outcome']} ({act['seconds']:.3f} s)"
        )
        line = (
            f"{clock(time.time())}  act       dom {act['domid']:>5}  {act['name'][:18]:<18} "
            f"{act['reason']:<9}-> {done}"
        )
        self.actions.append(line)
        if self.plain:
            print(line, flush=True)

    def say(self, lines: list[str]) -> None:
        self.migration.extend(lines)
        if self.plain:
            for line in lines:
                print(line, flush=True)

    def add(self, ev: dict) -> None:
        now = time.monotonic()
        self.totals[ev["event"]] += 1
        self.window.append((now, ev["event"]))
        if ev.get("missed"):
            self.missed += 1
        if ev.get("name"):
            self.names[ev["domid"]] = ev["name"]
        self.recent.append(ev)
        if self.plain:
            print(self._line(ev), flush=True)

    def _line(self, ev: dict) -> str:
        name = self.names.get(ev["domid"], "-")
        return (
            f"{clock(ev.get('time'))}  #{ev.get('seq', '-')!s:<7} dom {ev['domid']:>5}  "
            f"{name[:18]:<18} {ev['event']:<9}{ev.get('reason') or ''}"
        )

    def draw(self, stats: dict | None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < 0.5:
            return
        self.last_draw = now
        while self.window and now - self.window[0][0] > 10:
            self.window.popleft()
        rates = collections.Counter(kind for _, kind in self.window)
        if self.plain:
            if force or int(now) % 5 == 0:
                summary = "  ".join(f"{k} {rates[k] / 10:.1f}/s" for k in EVENT_KINDS)
                print(f"-- rates: {summary}", flush=True)
            return
        out = ["\x1b[H\x1b[2J", "xen-watch-mux demo: Ctrl-C stops everything\n\n"]
        if stats:
            dom = stats["domains"]
            firings = sum(stats["firings"].values())
            scans = sum(v for k, v in stats["scans"].items() if k != TRIGGER_STARTUP)
            out.append(
                f"domains: {dom.get('running', 0)} running, {dom.get('shutdown', 0)} shut down, "
                f"{dom.get('dead', 0)} dead   subscribers: {stats['subscribers']}\n"
                f"firings: {firings}   scans: {scans}"
                + (f" ({firings / scans:.1f} firings per scan)" if scans else "")
                + f"   scan p99 {_fmt(stats['scan_seconds']['p99_le'])}"
                f"   firing->frame p99 {_fmt(stats['notify_seconds']['p99_le'])}\n\n"
            )
        out.append(f"{'event':<10}{'total':>8}{'per s (10 s)':>15}\n")
        for k in EVENT_KINDS:
            out.append(f"{k:<10}{self.totals[k]:>8}{rates[k] / 10:>15.1f}\n")
        out.append("\nlatest events\n")
        out.extend(self._line(ev) + "\n" for ev in self.recent)
        done = "  ".join(f"{k} {n}" for k, n in sorted(self.action_totals.items()))
        out.append(f"\nxenmux act: {done or 'no action yet'}\n")
        out.extend(line + "\n" for line in self.actions)
        out.append("\nthe failed migration\n")
        out.extend(line + "\n" for line in self.migration[-6:])
        sys.stdout.write("".join(out))
        sys.stdout.flush()


def _fmt(v) -> str:
    if v is None:
        return "-"
    if v == "+Inf":
        return ">max"
    return f"<={v * 1e6:.0f}us" if v < 1e-3 else f"<={v * 1e3:.1f}ms"


def _sim_versions(args: argparse.Namespace) -> list[str]:
    """The sim's version options as given (checked here: a bad pair costs nothing)."""
    try:
        xenstored_version(args.xen_version, args.xs_version, args.xenstored)
    except ValueError as exc:
        raise SystemExit(f"xenmux demo: {exc}") from None
    out = ["--xen-version", args.xen_version, "--xenstored", args.xenstored]
    return out if args.xs_version is None else [*out, "--xs-version", args.xs_version]


def run(args: argparse.Namespace) -> int:
    sim_versions = _sim_versions(args)
    work = tempfile.mkdtemp(prefix="xenmux-demo-")
    sim = serve = act = churn = None
    act_log: ActLog | None = None
    ctl: SimControl | None = None
    stopping = False

    def on_term(signum, frame):  # SIGTERM, and SIGHUP (a closed terminal), as Ctrl-C
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS[1:]:
        signal.signal(sig, on_term)
    sock = os.path.join(work, "xenmux.sock")
    # The children's diagnostics go to a log that is shown only if something fails.
    log_path = os.path.join(work, "demo.log")
    log = open(log_path, "ab")  # noqa: SIM115 - closed in finally
    failed = False
    try:
        print(f"starting a simulated host of {args.domains} domains in {work} ...", flush=True)
        # Children get their own session: Ctrl-C reaches only this process, which then
        # stops them one by one, in order, by PID.
        sim = subprocess.Popen(
            _xenmux(
                "sim",
                "--dir",
                work,
                "--domains",
                str(args.domains),
                *sim_versions,
            ),
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        _wait_for(sim_paths(work).xenstored, sim, "the simulated host")
        print("starting the daemon ...", flush=True)
        serve = subprocess.Popen(
            _xenmux(
                "serve",
                "--backend",
                "sim",
                "--sim-dir",
                work,
                "--socket",
                sock,
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-level",
                "warning",
            ),
            stderr=log,
            start_new_session=True,
        )
        _wait_for(sock, serve, "the daemon")
        print("starting xenmux act ...", flush=True)
        act = subprocess.Popen(
            _xenmux(
                "act",
                "--toolstack",
                "sim",
                "--sim-dir",
                work,
                "--socket",
                sock,
            ),
            stderr=subprocess.PIPE,
            stdout=log,
            start_new_session=True,
        )
        act_log = ActLog(act.stderr, log)
        deadline = time.monotonic() + 30
        while not act_log.ready.wait(0.05):
            if act.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("xenmux act did not start")
        sub = Subscription(None, socket_path=sock, retry_timeout=10)
        view = View(args.plain)
        for row in sub.snapshot:
            if row.get("name"):
                view.names[row["domid"]] = row["name"]
        churn_args = [
            "sim-ctl",
            "--dir",
            work,
            "churn",
            "--guests-only",
            "--rate",
            str(args.rate),
            "--seconds",
            str(args.seconds or 10**9),
        ]
        churn = subprocess.Popen(
            _xenmux(*churn_args), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
        stats_client = Client(sock)
        ctl = SimControl(work)
        migration = FailedMigration(ctl, stats_client, time.monotonic() + MIGRATION_START)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        stats = None
        while deadline is None or time.monotonic() < deadline:
            ev = sub.next_event(0.05)
            if ev is not None:
                view.add(ev)
                view.say(migration.event(ev))
            for action in act_log.actions():
                view.add_action(action)
                view.say(migration.action(action))
            view.say(migration.tick(time.monotonic()))
            if time.monotonic() - view.last_draw >= 0.5:
                try:
                    stats = stats_client.stats()
                except Unreachable:
                    stats = None
                view.draw(stats)
            if churn.poll() is not None and args.seconds == 0:
                print(f"the churn stopped (status {churn.returncode})", file=sys.stderr)
                failed = True
                return 1
            if act.poll() is not None:
                print(f"xenmux act stopped (status {act.returncode})", file=sys.stderr)
                failed = True
                return 1
        view.draw(stats, force=True)
        sub.close()
        stats_client.close()
        return 0
    except KeyboardInterrupt:
        stopping = True
        return 0
    except (RuntimeError, Unreachable) as exc:
        print(f"xenmux demo: {exc}", file=sys.stderr)
        failed = True
        return 1
    finally:
        # A second signal (the terminal's SIGHUP after a Ctrl-C, an impatient SIGTERM) must
        # not cut the clean-up short and leave the children running.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if ctl is not None:
            ctl.close()
        for proc in (churn, act, serve, sim):
            _stop(proc)
        if act_log is not None:
            act_log.join()  # act's last lines are in the log before it closes
        if act is not None and act.stderr is not None:
            act.stderr.close()
        log.close()
        diagnostics = ""
        if failed:
            with open(log_path, errors="replace") as f:
                diagnostics = f.read()[-4000:]
        shutil.rmtree(work, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _tell(diagnostics, stopping)


def _tell(diagnostics: str, stopping: bool) -> None:
    """The last words, on a terminal that may be gone (SIGHUP): then there is no one to tell."""
    try:
        sys.stderr.write(diagnostics)
        if stopping:
            print("\nstopped the churn, act, the daemon and the simulated host.", flush=True)
    except OSError:
        pass
