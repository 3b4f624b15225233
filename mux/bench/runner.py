"""One measurement: a fresh simulated host, one model on it, one scenario, one window.

    host up -> model up (every process ready) -> quiet -> counters -> scenario -> every due
    notification in (or the time is up) -> quiet -> counters -> everything stopped by PID

The window's CPU and context switches are those of every process of the model, the
simulated host (xenstored) included; processes started inside the window (boot storm,
churn) count from zero, and those that exit inside it (the libxl monitors, at a domain's
death) count until their exit.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field

from mux.bench import procs as P
from mux.bench import scenarios as S
from mux.bench.host import SimHost
from mux.bench.models import HostModel, LibxlModel, Model, MonitorsModel, MuxModel
from mux.bench.results import (
    CREATED,
    FIRED,
    RESUMED,
    match,
    percentile,
    probe_latencies,
    probe_latencies_isolated,
)
from mux.bench.scenarios import PER_DOMAIN


@dataclass
class Plan:
    """One row of the results: where, which scenario, which model."""

    xenstored: str  # "sim", "c-xenstored" or "oxenstored"
    n: int
    scenario: str
    model: str  # "mux", "monitors", "libxl" or "host" (no watcher: the floor)
    per_conn: int = 0  # mux: domids per connection (0: a process per domain)
    conns_per_proc: int = 0


@dataclass
class Env:
    """What every measurement shares."""

    procs: P.ProcessSet
    binaries: dict[str, str]
    params: S.Params
    xen_version: str = "4.17"
    xs_version: str | None = None  # None: the rules of xen_version
    seed: int = 1
    real: object | None = None  # realxs.RealXenstored factory, when measuring against one
    tmp_root: str | None = None
    burst_window: float | None = None  # the daemon's serve --burst-window (None: its default)
    burst_window_max: float | None = None  # and its --burst-window-max
    burst_firings: int | None = None  # and its --burst-firings
    notes: list[str] = field(default_factory=list)


def _exited_switches(procs: P.ProcessSet, pids: list[int]) -> dict[int, int]:
    """Context switches of the processes that exited inside the window, every thread's, from
    wait4 (a zombie's /proc keeps only its main thread's); they are reaped here."""
    out = {}
    for pid in pids:
        if pid not in procs.live:
            continue
        try:
            got, status, usage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if got == pid:
            out[pid] = usage.ru_nvcsw + usage.ru_nivcsw
            procs.live.pop(pid, None)
            procs.status[pid] = os.waitstatus_to_exitcode(status)
    return out


def _lat_summary(values: list[int]) -> dict:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_us": round(percentile(values, 50) / 1000, 1),
        "p99_us": round(percentile(values, 99) / 1000, 1),
        "max_us": round(max(values) / 1000, 1),
    }


def _delta_dict(after: dict, before: dict) -> dict:
    out = {}
    for k, v in after.items():
        b = before.get(k, 0) if isinstance(before, dict) else 0
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            out[k] = v - (b if isinstance(b, int | float) else 0)
    return out


def run(env: Env, plan: Plan) -> dict:
    t_start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="r", dir=env.tmp_root)  # short: socket paths
    sim_dir = os.path.join(workdir, "sim")
    os.mkdir(sim_dir)
    procs = env.procs
    host: SimHost | None = None
    real = None
    model: Model | None = None
    n_start = 0 if plan.scenario == "boot" else plan.n
    scale = max(1.0, plan.n / 1000)
    row: dict = {
        "xenstored": plan.xenstored,
        "n": plan.n,
        "scenario": plan.scenario,
        "model": plan.model,
        "measured": True,
    }
    try:
        virq = ()
        if env.real is not None:
            real = env.real(workdir)
            virq = (real.virq_path,)
        host = SimHost(
            procs,
            sim_dir,
            n_start,
            xen_version=env.xen_version,
            xs_version=env.xs_version,
            seed=env.seed,
            virq_sockets=virq,
            log=os.path.join(workdir, "sim.log"),
        )
        host.start()
        xs_pids = [host.pid]
        xs_path = host.xenstored_path
        toolstack = S.Toolstack()
        if real is not None:
            real.start(host)
            xs_pids.append(real.pid)
            xs_path = real.socket_path
            toolstack = real.toolstack()
        common = {
            "xenstored_path": xs_path,
            "shm_path": host.shm_path,
            "xenstored_pids": xs_pids,
        }
        if plan.model == "mux":
            model = MuxModel(
                procs,
                env.binaries,
                workdir,
                per_conn=plan.per_conn,
                conns_per_proc=plan.conns_per_proc,
                burst_window=env.burst_window,
                burst_window_max=env.burst_window_max,
                burst_firings=env.burst_firings,
                **common,
            )
            model.start_daemon(sim_dir, max_clients=plan.n + 256, timeout=60 * scale)
        elif plan.model == "monitors":
            model = MonitorsModel(procs, env.binaries, workdir, **common)
        elif plan.model == "libxl":
            model = LibxlModel(procs, env.binaries, workdir, **common)
        else:
            model = HostModel(procs, env.binaries, workdir, **common)
        ctx = S.Ctx(host, model, env.params, random.Random(env.seed), toolstack=toolstack)
        ctx.guests = host.guests()
        future: list[int] = []
        if not model.spawn_after_create:
            # Subscribed beforehand to the domids the host will hand out (Xen's rover).
            if plan.scenario == "boot":
                future = list(range(1, plan.n + 1))
            elif plan.scenario == "churn":
                rover = host.ctl.info()["rover"]
                boots = round(env.params.churn_seconds * env.params.churn_rate) // 2 + 2
                future = [rover + 1 + i for i in range(boots)]
        model.start(ctx.guests, future)
        model.wait_ready(timeout=60 * scale)
        row["variant"] = model.variant
        row["connections"] = model.connections
        row["processes"] = len(model.clients)
        row["settled_before"] = env.params.quiet(model.all_pids())

        # -- the window ------------------------------------------------------------------
        stats0 = model.daemon_stats() if plan.model == "mux" else None
        mark = model.results.mark()
        before = P.sample(model.all_pids())
        busy0, self0 = P.machine_busy_ns(), time.process_time_ns()
        t0 = time.monotonic()
        scenario_fn = getattr(S, plan.scenario)
        if plan.scenario == "boot":
            scenario_fn(ctx, plan.n)
        else:
            scenario_fn(ctx)
        complete = ctx.wait(timeout=env.params.wait_timeout * scale)
        row["settled_after"] = env.params.quiet(model.all_pids())
        t1 = time.monotonic()
        roles = model.roles()
        after = P.sample(model.all_pids())
        after.sw.update(_exited_switches(procs, model.clients))
        busy1, self1 = P.machine_busy_ns(), time.process_time_ns()
        stats1 = model.daemon_stats() if plan.model == "mux" else None
        mem = model.daemon_memory()
        # -- end of the window -----------------------------------------------------------

        cpu: dict[str, float] = {}
        sw: dict[str, int] = {}
        for role, pids in roles.items():
            c, s = P.delta(before, after, pids)
            cpu[role] = c
            sw[role] = s
        total_cpu = sum(cpu.values())
        total_sw = sum(sw.values())
        notes = model.results.notes[mark:]
        outcome = match(ctx.expect, notes)
        changes = max(1, ctx.changes)
        # Noise: CPU the machine spent on anything but this model and the harness.
        other = (busy1 - busy0) - total_cpu - (self1 - self0)
        row.update(
            {
                "other_cpu_ms": round(other / 1e6, 1),
                "harness_cpu_ms": round((self1 - self0) / 1e6, 1),
                "complete": complete,
                "window_s": round(t1 - t0, 3),
                "changes": ctx.changes,
                "release_firings": ctx.release_firings,
                "introduce_firings": ctx.introduce_firings,
                "watch_events": ctx.watch_events,
                "cpu_ms": {k: round(v / 1e6, 3) for k, v in cpu.items()},
                "cpu_ms_total": round(total_cpu / 1e6, 3),
                "switches": sw,
                "switches_total": total_sw,
                "cpu_us_per_change": round(total_cpu / 1e3 / changes, 2),
                "switches_per_change": round(total_sw / changes, 2),
                "latency": {
                    "fired": _lat_summary(outcome.latencies.get(FIRED, [])),
                    "created": _lat_summary(outcome.latencies.get(CREATED, [])),
                    "resumed": _lat_summary(outcome.latencies.get(RESUMED, [])),
                },
                "expected": outcome.expected,
                "lost": outcome.lost,
                "extra": outcome.extra,
                "negative_latencies": outcome.negative,
                "released_seen": sum(1 for n in notes if n.kind == "released"),
            }
        )
        if plan.scenario == "mass":
            applied = ctx.applied_rate()
            row["mass_rate"] = {
                "target": env.params.mass_rate or None,
                "applied": round(applied) if applied else None,
            }
        if plan.model == "host" and plan.xenstored == "sim":
            # The sim's firing counts are exact: the probe's i-th receipt is the i-th firing.
            row["latency"]["fired"] = _lat_summary(probe_latencies(ctx.fired_ops, notes))
            row["latency_basis"] = "the probe: a watcher that does nothing else"
        elif plan.model == "host" and plan.scenario == "one":
            # Another xenstored may fire differently; one change at a time, match by time.
            row["latency"]["fired"] = _lat_summary(probe_latencies_isolated(ctx.fired_ops, notes))
            row["latency_basis"] = "the probe, first firing after each isolated change"
        if stats0 is not None and stats1 is not None:
            scans = _delta_dict(stats1.get("scans", {}), stats0.get("scans", {}))
            firings = _delta_dict(stats1.get("firings", {}), stats0.get("firings", {}))
            total_scans = sum(scans.values())
            total_firings = sum(firings.values())
            row["daemon"] = {
                "firings": firings,
                "scans": scans,
                "targeted_scans": stats1.get("targeted_scans", 0) - stats0.get("targeted_scans", 0),
                "scans_total": total_scans,
                "firings_total": total_firings,
                "scans_per_firing": (
                    round(total_scans / total_firings, 4) if total_firings else None
                ),
                "firings_per_scan": (
                    round(total_firings / total_scans, 2) if total_scans else None
                ),
                "events": _delta_dict(stats1.get("events", {}), stats0.get("events", {})),
                "frames_sent": stats1.get("frames_sent", 0) - stats0.get("frames_sent", 0),
                "overflows": stats1.get("overflows", 0) - stats0.get("overflows", 0),
                "notify_seconds": stats1.get("notify_seconds"),
                "rss_kib": mem.get("VmRSS"),
                "hwm_kib": mem.get("VmHWM"),
            }
        model.stop()
        finals = model.results.finals
        if plan.model in PER_DOMAIN:
            row["monitor_firings"] = sum(f.a for f in finals)
            row["monitor_queries"] = sum(f.b for f in finals)
        elif plan.model == "mux":
            row["subscriber_frames"] = sum(f.a for f in finals)
        # @releaseDomain firings as the watchers saw them. The sim's replies count its own
        # xenstored's; another xenstored coalesces VIRQs its own way.
        seen = None
        if plan.model == "host":
            seen = sum(1 for n in notes if n.kind == "fire")
        elif plan.model == "mux" and "daemon" in row:
            seen = row["daemon"]["firings"].get("@releaseDomain")
        elif plan.model in PER_DOMAIN and finals:
            seen = max(f.a for f in finals) - 1  # a monitor that lived through the window
        row["release_firings_seen"] = seen
        if plan.xenstored != "sim" and seen is not None:
            row["release_firings"] = seen
        firings = row["release_firings"]
        row["cpu_us_per_firing"] = round(total_cpu / 1e3 / firings, 2) if firings else None
        row["switches_per_firing"] = round(total_sw / firings, 2) if firings else None
        row["overflows_seen"] = model.results.overflows
        row["disconnects_seen"] = model.results.closed_conns
        row["errors"] = model.results.errors[:5]
    finally:
        if model is not None:
            model.stop()
            model.close()
        if host is not None:
            host.stop()
        if real is not None:
            real.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    row["wall_s"] = round(time.monotonic() - t_start, 2)
    return row


def extrapolate(one_row: dict, template: dict) -> dict:
    """A per-domain model's cost of a scenario too big to run (every firing reaches every
    watcher: N x N), from its cost per firing measured in its one-lifecycle run at the same N
    and the firings the scenario raised (the same operations in the mux run)."""
    firings = template.get("release_firings", 0)
    changes = max(1, template.get("changes", 1))
    per_firing_us = one_row.get("cpu_us_per_firing") or 0.0
    per_firing_sw = one_row.get("switches_per_firing") or 0.0
    cpu_ms = per_firing_us * firings / 1000
    sw = per_firing_sw * firings
    return {
        "xenstored": template["xenstored"],
        "n": template["n"],
        "scenario": template["scenario"],
        "model": one_row["model"],
        "measured": False,
        "variant": "one process per domain (extrapolated)",
        "basis": (
            f"{firings} @releaseDomain firings x {per_firing_us:.0f} us and "
            f"{per_firing_sw:.0f} switches per firing, measured with {template['n']} "
            f"{one_row['model']} processes (one-lifecycle run)"
        ),
        "changes": template.get("changes"),
        "release_firings": firings,
        "cpu_ms_total": round(cpu_ms, 3),
        "cpu_us_per_change": round(cpu_ms * 1000 / changes, 2),
        "switches_total": round(sw),
        "switches_per_change": round(sw / changes, 2),
        "latency": {"fired": {"n": 0}, "created": {"n": 0}, "resumed": {"n": 0}},
        "expected": one_row.get("expected"),
        "lost": one_row.get("lost"),
        "lost_basis": "one-lifecycle run at the same N",
    }
