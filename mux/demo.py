"""`xenmux demo`: a simulated host of 1000 domains, the daemon, live churn and a live view.

Everything runs as separate processes, as on a real host: `xenmux sim` (the hypervisor and
its xenstored), `xenmux serve` (the daemon) and `xenmux sim-ctl churn` (a toolstack booting,
rebooting, crashing, migrating and destroying domains). This process subscribes to every
domain and draws what arrives. Ctrl-C stops all of it and removes what it created.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from mux.client import Client, Subscription, Unreachable
from mux.commands.output import clock
from mux.protocol import EVENT_KINDS, TRIGGER_STARTUP
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


class View:
    """Counts, rates over the last 10 s, and the latest events."""

    def __init__(self, plain: bool) -> None:
        self.plain = plain or not sys.stdout.isatty()
        self.totals = collections.Counter()
        self.recent: collections.deque = collections.deque(maxlen=18)
        self.window: collections.deque = collections.deque()
        self.names: dict[int, str] = {}
        self.last_draw = 0.0
        self.missed = 0

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
        sys.stdout.write("".join(out))
        sys.stdout.flush()


def _fmt(v) -> str:
    if v is None:
        return "-"
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
    sim = serve = churn = None
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
            "--rate",
            str(args.rate),
            "--seconds",
            str(args.seconds or 10**9),
        ]
        churn = subprocess.Popen(
            _xenmux(*churn_args), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
        stats_client = Client(sock)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        stats = None
        while deadline is None or time.monotonic() < deadline:
            ev = sub.next_event(0.25)
            if ev is not None:
                view.add(ev)
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
        for proc in (churn, serve, sim):
            _stop(proc)
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
            print("\nstopped the churn, the daemon and the simulated host.", flush=True)
    except OSError:
        pass
