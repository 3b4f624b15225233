"""One chaos run: the sim, the daemon, the subscribers, churn and faults, then the oracle.

    figures = run(Settings(seconds=30), workdir)

The work directory holds everything the run wrote: the sim's directory (with the truth log
and the daemon's state dir), the subscribers' logs, `faults.jsonl` and `run.json`, from
which `check_dir(workdir)` computes the verdict again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass

from mux.bench.build import BuildError, build
from mux.bench.host import HostError, SimHost
from mux.bench.procs import ProcessSet
from mux.chaos.faults import ENDS_DAEMON, FAULT_KINDS, STALL_MAX, Injector, schedule
from mux.chaos.members import Daemon, Pinger, Sampler, python_module
from mux.chaos.oracle import Fault, check
from mux.chaos.streams import (
    LATEST,
    PER_DOMID,
    WILDCARD,
    StreamError,
    read_client_log,
    read_follow_log,
)
from mux.chaos.truth import Truth, TruthError
from mux.client import Client, XenmuxError
from mux.sim.ctl import SimControl, SimControlError
from mux.sim.paths import sim_paths

LEAD = 3.0  # seconds of churn before the first fault
TAIL = 3.0  # seconds of churn after the last fault has ended
SETTLE = 20.0  # seconds the daemon gets to agree with the host once churn has stopped
DELIVERY = 1.5  # seconds for the last frames to reach the subscribers after that
FLOOD_AFTER = 2_000_000_000  # ns after a flooder is killed that still count as its flood

# The subscribers: log name, format, kind.
C_LOG, CLIENT_LOG = "follow", "client"
SUBSCRIBERS = (
    ("per-domid", C_LOG, PER_DOMID),
    ("latest", C_LOG, LATEST),
    ("steady", CLIENT_LOG, WILDCARD),
    ("stall", CLIENT_LOG, WILDCARD),
    ("resume", CLIENT_LOG, WILDCARD),
)


class RunError(RuntimeError):
    """The run could not be made (the message says why); not a verdict on the daemon."""


@dataclass
class Settings:
    seconds: float = 300.0
    domains: int = 1000
    seed: int = 1
    rate: float = 20.0  # lifecycles per second
    margin: float = 0.5  # the oracle's observability margin, seconds
    hold: float = 2.0  # zombies, same-UUID reuses and failed migrations wait this long
    faults: tuple[str, ...] = FAULT_KINDS
    # The daemon's --high-water: low, so that a stalled subscriber overflows within seconds
    # (the kernel's socket buffer holds ~250 frames before the daemon's own buffer grows).
    high_water: int = 16384
    flood_count: int = 5000
    rss_cap_mb: int = 1024  # a flood is cut short once the daemon passes this


class Run:
    def __init__(self, settings: Settings, workdir: str, say=lambda text: None) -> None:
        self.s = settings
        self.dir = workdir
        self.say = say
        self.sim_dir = os.path.join(workdir, "sim")
        self.socket = os.path.join(workdir, "xenmux.sock")
        self.logs = {name: os.path.join(workdir, f"{name}.log") for name, _, _ in SUBSCRIBERS}
        self.procs = ProcessSet()
        self.rng = random.Random(settings.seed)
        self.sim = SimHost(
            self.procs,
            self.sim_dir,
            settings.domains,
            seed=settings.seed,
            log=os.path.join(workdir, "sim.err"),
        )
        self.daemon = Daemon(
            self.procs,
            self.sim_dir,
            self.socket,
            os.path.join(workdir, "daemon.err"),
            high_water=settings.high_water,
        )
        self.members: dict[str, int] = {}
        self.crashes = 0
        self.pinger = Pinger(self.socket)
        self.sampler = Sampler(self.daemon)
        self.injector: Injector | None = None
        self.churn_result: dict | None = None
        self.injected: set[str] = set()
        self.churn_error: str | None = None

    # -- set-up --------------------------------------------------------------------------

    def _spawn(self, argv: list[str], name: str, env: dict | None = None) -> int:
        err = os.path.join(self.dir, "members.err")
        pid = self.procs.spawn(argv, name=name, env=env, stderr=err)
        self.members[name] = pid
        return pid

    def start(self) -> None:
        if len(sim_paths(self.sim_dir).xenstored) > 100 or len(self.socket) > 100:
            raise RunError(f"{self.dir} is too long a path for Unix sockets: choose a shorter one")
        os.makedirs(self.sim_dir, exist_ok=True)
        try:
            exe = build(self.dir, ("subscriber",))["subscriber"]
        except BuildError as exc:
            raise RunError(str(exc)) from None
        self.say(f"starting the sim ({self.s.domains} domains) and the daemon")
        self.sim.start()
        self.daemon.start()
        for path in self.logs.values():
            open(path, "wb").close()
        domids = [str(d) for d in range(1, self.s.domains + 1)]
        self._spawn(
            [exe, self.socket, self.logs["per-domid"], "--follow", "--per-conn", "1", *domids],
            "per-domid",
            env={},
        )
        self._spawn(
            [exe, self.socket, self.logs["latest"], "--follow", "--mode", "latest", "*"],
            "latest",
            env={},
        )
        for name in ("steady", "stall", "resume"):
            argv = python_module("mux.chaos.wildsub", "--socket", self.socket)
            argv += ["--log", self.logs[name], "--seed", str(self.s.seed)]
            if name == "resume":
                argv += ["--drop-every", "2", "6"]
            self._spawn(argv, name)
        self._wait_ready()
        self.pinger.start()
        self.sampler.start()

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        want = {"per-domid": self.s.domains, "latest": 1}
        while True:
            ready = all(_replies(self.logs[n]) >= k for n, k in want.items()) and all(
                _started(self.logs[n]) for n in ("steady", "stall", "resume")
            )
            if ready:
                return
            self._check_members()
            if time.monotonic() > deadline:
                raise RunError(f"the subscribers were not all subscribed after {timeout:.0f} s")
            time.sleep(0.1)

    def _check_members(self) -> None:
        for name, pid in self.members.items():
            if name != "flood" and not self.procs.alive(pid):
                raise RunError(
                    f"the {name} subscriber exited with status {self.procs.status.get(pid)} "
                    f"(see {os.path.join(self.dir, 'members.err')})"
                )

    # -- the chaos -----------------------------------------------------------------------

    def _churn(self) -> None:
        try:
            with SimControl(self.sim_dir, timeout=60) as ctl:
                self.churn_result = ctl.churn(
                    self.s.seconds,
                    rate=self.s.rate,
                    seed=self.s.seed,
                    kinds="all",
                    domids=f"1-{self.s.domains}",
                    hold=self.s.hold,
                )
        except SimControlError as exc:
            self.churn_error = str(exc)

    def _daemon_alive(self) -> None:
        """A daemon that died by itself is a crash: recorded, counted, started again."""
        pid = self.daemon.pid
        if pid is None or self.procs.alive(pid):
            return
        start = time.monotonic_ns()
        self.crashes += 1
        self.say(f"the daemon died by itself (status {self.procs.status.get(pid)}): restarting")
        self.daemon.pid = None
        self.daemon.start()
        assert self.injector is not None
        self.injector.record("crash", start, time.monotonic_ns(), True)

    def _inject(self, kind: str) -> None:
        assert self.injector is not None
        self.injector.inject(kind)
        self.injected.add(kind)
        self._daemon_alive()

    def _wait(self, until: float, churn: threading.Thread) -> None:
        while time.monotonic() < until and churn.is_alive():
            self._daemon_alive()
            self._check_members()
            time.sleep(0.1)

    def chaos(self) -> int:
        self.injector = Injector(
            rng=self.rng,
            daemon=self.daemon,
            sim_dir=self.sim_dir,
            socket_path=self.socket,
            stalled=lambda: [self.members["stall"], self.members["latest"]],
            spawn=lambda argv, name: self._spawn(argv, name),
            stop_pid=lambda pid: self.procs.stop([pid], timeout=2),
            log_path=os.path.join(self.dir, "faults.jsonl"),
            flood_count=self.s.flood_count,
            rss_cap_kib=self.s.rss_cap_mb * 1024,
        )
        self.say(f"chaos for {self.s.seconds:.0f} s")
        churn = threading.Thread(target=self._churn, name="churn", daemon=True)
        start = time.monotonic()
        churn.start()
        last_fault = start + self.s.seconds - TAIL
        # A 30 s run fits every kind of fault once; longer runs space them out (up to 5x),
        # so that the daemon spends most of a 5-minute run up, as a host's would.
        spacing = min(max(self.s.seconds / 30, 1.0), 5.0)
        next_at = start + min(LEAD, self.s.seconds / 10)
        # A daemon that ends drops the stalled subscribers' connections, and so their
        # overflow: the faults that end it wait until a stall is over, if there is time.
        deferred: list[str] = []
        kinds = schedule(self.rng, self.s.faults) if self.s.faults else iter(())
        for kind in kinds:
            stalled = self.injector.stalling()
            if kind in ENDS_DAEMON and stalled and last_fault - time.monotonic() > STALL_MAX:
                if kind not in deferred:
                    deferred.append(kind)
                continue
            if deferred and not stalled:
                deferred.append(kind)
                kind = deferred.pop(0)
            self._wait(next_at, churn)
            if time.monotonic() > last_fault or not churn.is_alive():
                break
            self._inject(kind)
            next_at = time.monotonic() + self.rng.uniform(0.5, 1.5) * spacing
        # Every kind at least once, even in a run too short for a round.
        for kind in self.s.faults:
            if kind not in self.injected:
                self._inject(kind)
        self.injector.wait_stall()
        while churn.is_alive():
            self._wait(time.monotonic() + 1, churn)
        churn.join()
        if self.churn_error is not None:
            raise RunError(f"churn failed: {self.churn_error}")
        return time.monotonic_ns()

    def settle(self) -> bool:
        """Wait until the daemon's table agrees with the host, then for the last frames."""
        deadline = time.monotonic() + SETTLE
        agreed = False
        while time.monotonic() < deadline:
            self._daemon_alive()
            if _tables_agree(self.socket, self.sim_dir):
                agreed = True
                break
            time.sleep(0.2)
        time.sleep(DELIVERY)
        return agreed

    def stop_members(self) -> None:
        self._check_members()
        self.procs.stop(list(self.members.values()))
        self.pinger.stop()
        self.sampler.stop()
        self.daemon.end(signal.SIGTERM)
        self.sim.stop()

    def close(self) -> None:
        """Stop everything the run started, by PID, whatever state it is in: the process
        set is stopped last and always, even if a step before it fails."""
        try:
            for pid in self.members.values():
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            if self.injector is not None:
                self.injector.close()
            if self.pinger.is_alive():
                self.pinger.stop()
            if self.sampler.is_alive():
                self.sampler.stop()
            self.daemon.end(signal.SIGTERM)
        finally:
            try:
                self.procs.stop_all()
            finally:
                self.sim.stop()

    # -- figures -------------------------------------------------------------------------

    def figures(self, end: int, settled: bool) -> dict:
        assert self.injector is not None
        faults = list(self.injector.faults)
        meta = {
            "settings": asdict(self.s),
            "end": end,
            "settled": settled,
            "faults": self.injector.details,
            "churn": self.churn_result,
            "daemon": {
                "starts": len(self.daemon.pids),
                "crashes": self.crashes,
                "peak_rss_mb": round(self.daemon.peak_kib / 1024, 1),
            },
            "ping": ping_figures(self.pinger.pings.samples, faults),
        }
        with open(os.path.join(self.dir, "run.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f)
        return verdict_figures(self.dir, meta)


def run(settings: Settings, workdir: str, say=lambda text: None) -> dict:
    """Make the run in `workdir`; returns its figures (see `verdict_figures`)."""
    r = Run(settings, workdir, say)
    try:
        r.start()
        end = r.chaos()
        say("churn over: letting the daemon settle")
        settled = r.settle()
        r.stop_members()
        say("checking what every subscriber got against the truth")
        return r.figures(end, settled)
    except (HostError, SimControlError, XenmuxError, OSError) as exc:
        raise RunError(str(exc)) from None
    finally:
        r.close()


def check_dir(workdir: str) -> dict:
    """The figures of a run kept with --keep, computed again from its files."""
    try:
        with open(os.path.join(workdir, "run.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise RunError(f"{workdir} holds no finished chaos run: {exc}") from None
    return verdict_figures(workdir, meta)


def verdict_figures(workdir: str, meta: dict) -> dict:
    faults = [Fault(f["kind"], f["start"], f["end"], f["blind"]) for f in meta["faults"]]
    try:
        truth = Truth.load(sim_paths(os.path.join(workdir, "sim")).truth)
        subscribers = []
        for name, fmt, kind in SUBSCRIBERS:
            path = os.path.join(workdir, f"{name}.log")
            if fmt == C_LOG:
                subscribers += read_follow_log(path, kind, name)
            else:
                subscribers.append(read_client_log(path, kind, name))
    except (OSError, TruthError, StreamError) as exc:
        raise RunError(f"cannot read the run's logs: {exc}") from None
    settings = meta["settings"]
    verdict = check(
        truth, faults, subscribers, end=meta["end"], margin=int(settings["margin"] * 1e9)
    )
    figures = verdict.figures()
    crashes = meta["daemon"]["crashes"]
    if crashes:
        figures["violations_by_kind"]["daemon-crash"] = crashes
        figures["violations"] += crashes
    figures.update(
        seconds=settings["seconds"],
        domains=settings["domains"],
        seed=settings["seed"],
        faults=dict(Counter(f["kind"] for f in meta["faults"])),
        daemon=meta["daemon"],
        ping=meta["ping"],
        churn=meta["churn"],
        settled=meta["settled"],
    )
    return figures


# -- helpers -----------------------------------------------------------------------------


def _replies(path: str) -> int:
    """How many connections of a --follow log got a subscribe reply."""
    ready = set()
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"J ") and b'"id"' in line[:64]:
                _, idx, _, data = line.split(b" ", 3)
                try:
                    reply = json.loads(data)
                except ValueError:
                    continue
                if reply.get("id") == 1 and reply.get("ok"):
                    ready.add(idx)
    return len(ready)


def _started(path: str) -> bool:
    with open(path, "rb") as f:
        return any(b'"start"' in line[:40] for line in f)


def _tables_agree(socket_path: str, sim_dir: str) -> bool:
    """The daemon's table names the host's domains, with their UUIDs, dead where dying."""
    try:
        with Client(socket_path, timeout=5) as client:
            theirs = {r["domid"]: (r["uuid"], r["state"] == "dead") for r in client.list()}
        with SimControl(sim_dir, timeout=10) as ctl:
            ours = {r["domid"]: (r["uuid"], r["state"] == "dying") for r in ctl.list()}
    except (OSError, XenmuxError, SimControlError):
        return False
    return theirs == ours


def ping_figures(samples: list[tuple[int, int | None]], faults: list[Fault]) -> dict:
    """Worst and p99 ping round trips outside blind faults; the worst during floods."""
    blind = [(f.start, f.end) for f in faults if f.blind]
    # What the daemon holds for a flooder it frees after it is gone: that is the flood too.
    floods = [(f.start, f.end + FLOOD_AFTER) for f in faults if f.kind == "flood"]
    clean: list[tuple[int, int]] = []
    failed = 0
    for start, lat in samples:
        if lat is None:
            failed += not any(a <= start <= b for a, b in blind)
            continue
        if not any(start <= b and start + lat >= a for a, b in blind):
            clean.append((start, lat))
    lats = sorted(lat for _, lat in clean)
    during = [lat for start, lat in clean if any(a <= start <= b for a, b in floods)]

    def ms(ns: int | None) -> float | None:
        return None if ns is None else round(ns / 1e6, 2)

    return {
        "samples": len(samples),
        "failed_outside_faults": failed,
        "worst_ms": ms(lats[-1] if lats else None),
        "p99_ms": ms(lats[int(len(lats) * 0.99) - 1] if len(lats) >= 100 else None),
        "worst_during_floods_ms": ms(max(during) if during else None),
    }
