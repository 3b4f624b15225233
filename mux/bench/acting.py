"""The acting scenario of `xenmux bench`: guests power off and reboot by themselves at a
steady rate, and a toolstack acts, as xl's monitors do one per domain and `xenmux act` does
for the whole host.

Both models carry the actions out through the simulated host's toolstack, with the same
requests on its control socket (destroy-incarnations; then, for a reboot, create with the
same name and UUID), so the toolstack's own work is the same in both:

* `libxl`: one libxl_monitor.c --act per domain, on Debian's libxenlight under the stand-in
  libxenctrl: at its domain's poweroff it has it destroyed and exits; at a reboot destroyed
  and created again, then it watches the new domid (xl's monitor, xl's default actions).
* `mux`: `xenmux serve` and `xenmux act --toolstack sim` (its default log: a line per action).

Figures, over the window from the first guest shutdown to the last action's completion:
CPU of the model's processes per acted change (the sim's beside it: its xenstored writes a
firing to every watcher), the time from the guest's shutdown to the action's completion as
the sim's toolstack log records both (the destroy of a poweroff, the create of a reboot),
and the model's wake-ups (context switches) per acted change.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from mux.bench import procs as P
from mux.bench.host import HostError, SimHost, python_command
from mux.bench.models import LibxlModel, MuxModel
from mux.sim.ctl import control_path
from mux.sim.paths import sim_paths

ACTING = "acting"
MODELS = ("mux", "libxl")
REASONS = ("poweroff", "reboot")  # alternately
MODELS_BY = ("act", "xl")  # who asked, as the sim's toolstack log names them


@dataclass
class ActingParams:
    changes: int  # guest shutdowns, each acted upon once
    rate: float  # per second
    timeout: float  # for the last action after the last shutdown


def params_for(n: int, quick: bool) -> ActingParams:
    if quick:
        return ActingParams(changes=min(8, n // 2), rate=16.0, timeout=15.0)
    # A steady 10 shutdowns a second; 100 of them at most: at 4,000 domains each change
    # wakes 4,000 monitors several times (its firings), seconds of CPU per second.
    return ActingParams(changes=min(n // 2, 100), rate=10.0, timeout=120.0)


class ActingLibxlModel(LibxlModel):
    """xl's monitor with its actions: the domain's UUID and name are what xl holds from the
    configuration it created the domain with."""

    def __init__(self, *args, control: str, guests: dict[int, dict], **kw) -> None:
        super().__init__(*args, **kw)
        self.control = control
        self.guests = guests

    def argv(self, domid: int) -> list[str]:
        row = self.guests[domid]
        return [
            *super().argv(domid),
            "--act",
            self.control,
            row["uuid"],
            row["name"],
        ]


def _lat_summary(values_us: list[float]) -> dict:
    if not values_us:
        return {}
    v = sorted(values_us)
    return {
        "p50_ms": round(v[len(v) // 2] / 1e3, 2),
        "p99_ms": round(v[min(len(v) - 1, int(len(v) * 0.99))] / 1e3, 2),
        "max_ms": round(v[-1] / 1e3, 2),
    }


def _truth(path: str, offset: int) -> list[dict]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return []
    # a line being written is left for the next look
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def completions(lines: list[dict], shutdowns: dict[tuple[int, str], str]) -> dict:
    """For each guest shutdown of `shutdowns` ((domid, uuid) -> reason): the seconds from
    the guest's line to its action's (the destroy of a poweroff, the create of a reboot),
    and how many actions each drew (more than one is a bug of the model)."""
    shut_at: dict[tuple[int, str], float] = {}
    done: dict[tuple[int, str], float] = {}
    actions: dict[tuple[int, str], int] = {}
    for line in lines:
        key = (line["domid"], line["uuid"])
        if line["op"] == "guest" and key in shutdowns:
            shut_at[key] = line["time"]
        elif line["op"] == "destroy" and key in shut_at and line.get("by") in MODELS_BY:
            actions[key] = actions.get(key, 0) + 1
            if shutdowns[key] == "poweroff":
                done.setdefault(key, line["time"])
        elif line["op"] == "create" and line.get("by") in MODELS_BY:
            for k, reason in shutdowns.items():
                if k[1] == line["uuid"] and reason == "reboot" and k in shut_at and k not in done:
                    done[k] = line["time"]
    return {
        "seconds": {k: done[k] - shut_at[k] for k in done},
        "twice": sorted(k for k, n in actions.items() if n > 1),
    }


def _cpu_and_switches(procs: P.ProcessSet, pids: list[int]) -> tuple[dict, dict]:
    """CPU ns and context switches of each pid now: from wait4 for those that exited (the
    monitors of destroyed domains; reaped here), from the CPU clock and /proc otherwise."""
    cpu, sw = {}, {}
    for pid in pids:
        got = 0
        if pid in procs.live:
            try:
                got, status, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                got = 0
        if got == pid:
            cpu[pid] = int((usage.ru_utime + usage.ru_stime) * 1e9)
            sw[pid] = usage.ru_nvcsw + usage.ru_nivcsw
            procs.live.pop(pid, None)
            procs.status[pid] = os.waitstatus_to_exitcode(status)
            continue
        c, w = P.cpu_ns(pid), P.switches(pid)
        if c is not None:
            cpu[pid] = c
        if w is not None:
            sw[pid] = w
    return cpu, sw


def _wait_log(path: str, needle: str, pid: int, procs: P.ProcessSet, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, errors="replace") as f:
                if needle in f.read():
                    return
        except FileNotFoundError:
            pass
        if not procs.alive(pid):
            raise HostError(f"xenmux act exited before it was ready ({path})")
        if time.monotonic() > deadline:
            raise HostError(f"xenmux act not ready after {timeout:.0f} s")
        time.sleep(0.01)


def run_one(
    procs: P.ProcessSet,
    binaries: dict[str, str],
    tmp_root: str,
    n: int,
    model_name: str,
    params: ActingParams,
    seed: int = 1,
) -> dict:
    workdir = tempfile.mkdtemp(prefix="a", dir=tmp_root)  # short: socket paths
    sim_dir = os.path.join(workdir, "sim")
    os.mkdir(sim_dir)
    scale = max(1.0, n / 1000)
    row: dict = {"scenario": ACTING, "n": n, "model": model_name, "measured": True}
    host = SimHost(procs, sim_dir, n, seed=seed, log=os.path.join(workdir, "sim.log"))
    model = None
    pids: list[int] = []
    try:
        host.start()
        assert host.ctl is not None and host.pid is not None
        guests = {r["domid"]: r for r in host.ctl.list() if r["domid"]}
        common = {
            "xenstored_path": host.xenstored_path,
            "shm_path": host.shm_path,
            "xenstored_pids": [host.pid],
        }
        if model_name == "mux":
            model = MuxModel(procs, binaries, workdir, **common)
            model.start_daemon(sim_dir, max_clients=64, timeout=60 * scale)
            act_log = os.path.join(workdir, "act.log")
            argv = python_command(
                "act", "--toolstack", "sim", "--sim-dir", sim_dir, "--socket", model.socket_path
            )
            act = procs.spawn(argv, name="xenmux act", stderr=act_log)
            roles = {"serve": model.daemon_pids(), "act": [act]}
            _wait_log(act_log, "acting for every domain", act, procs, 60 * scale)
            row["processes"] = 2
        else:
            model = ActingLibxlModel(
                procs, binaries, workdir, control=control_path(sim_dir), guests=guests, **common
            )
            model.start(sorted(guests))
            model.wait_ready(timeout=60 * scale)
            roles = {"monitors": list(model.clients)}
            row["processes"] = len(model.clients)
        pids = [p for group in roles.values() for p in group]
        rng = random.Random(seed)
        victims = rng.sample(sorted(guests), params.changes)
        shutdowns = {
            (d, guests[d]["uuid"]): REASONS[i % len(REASONS)] for i, d in enumerate(victims)
        }
        truth_path = sim_paths(sim_dir).toolstack_log
        offset = os.path.getsize(truth_path) if os.path.exists(truth_path) else 0

        # -- the window ------------------------------------------------------------------
        cpu0, sw0 = _cpu_and_switches(procs, pids)
        sim0 = P.cpu_ns(host.pid) or 0
        t0 = time.monotonic()
        for i, ((domid, _), reason) in enumerate(shutdowns.items()):
            due = t0 + i / params.rate
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            host.ctl.guest(domid, reason)
        deadline = time.monotonic() + params.timeout * scale
        while True:
            done = completions(_truth(truth_path, offset), shutdowns)
            if len(done["seconds"]) == len(shutdowns) or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        t1 = time.monotonic()
        cpu1, sw1 = _cpu_and_switches(procs, pids)
        sim1 = P.cpu_ns(host.pid) or 0
        # -- end of the window -----------------------------------------------------------

        acted = max(1, len(shutdowns))
        by_role = {
            role: sum(cpu1.get(p, 0) - cpu0.get(p, 0) for p in group)
            for role, group in roles.items()
        }
        cpu = sum(by_role.values())
        sw = sum(sw1.get(p, 0) - sw0.get(p, 0) for p in pids)
        lat = [s * 1e6 for s in done["seconds"].values()]
        row.update(
            {
                "changes": len(shutdowns),
                "completed": len(done["seconds"]),
                "lost": len(shutdowns) - len(done["seconds"]),
                "twice": len(done["twice"]),
                "window_s": round(t1 - t0, 3),
                "cpu_ms": round(cpu / 1e6, 3),
                "cpu_ms_by": {role: round(c / 1e6, 3) for role, c in by_role.items()},
                "cpu_us_per_change": round(cpu / 1e3 / acted, 1),
                "sim_cpu_us_per_change": round((sim1 - sim0) / 1e3 / acted, 1),
                "switches_per_change": round(sw / acted, 1),
                "latency": _lat_summary(lat),
            }
        )
        if done["twice"]:
            row["error"] = f"acted upon twice: {done['twice'][:5]}"
    except (HostError, OSError, ValueError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        row.setdefault("lost", None)
    finally:
        procs.stop(pids)
        if model is not None:
            model.close()
        host.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return row


def run_all(
    procs: P.ProcessSet,
    binaries: dict[str, str],
    models: list[str],
    sizes: list[int],
    *,
    quick: bool,
    seed: int,
    tmp_root: str,
    say: Callable[[str], None] = print,
) -> list[dict]:
    rows = []
    for n in sizes:
        for model in [m for m in MODELS if m in models]:
            row = run_one(procs, binaries, tmp_root, n, model, params_for(n, quick), seed)
            rows.append(row)
            say(f"sim N={n} {ACTING} {model}: {summary_line(row)}")
    return rows


def summary_line(row: dict) -> str:
    if row.get("error"):
        return f"lost={row.get('lost')} error: {row['error']}"
    lat = row.get("latency") or {}
    return (
        f"lost={row['lost']} {row['cpu_us_per_change']} us CPU per acted change "
        f"(sim {row['sim_cpu_us_per_change']}), shutdown->action p50 {lat.get('p50_ms')} ms "
        f"p99 {lat.get('p99_ms')} ms, {row['switches_per_change']} wake-ups per change"
    )


def markdown(rows: list[dict]) -> list[str]:
    """The Acting section of results.md (nothing when the scenario did not run)."""
    if not rows:
        return []
    lines = [
        "",
        "## Acting (guests power off and reboot by themselves; the toolstack acts)",
        "",
        "CPU and wake-ups are the model's processes (libxl: every monitor; mux: serve + act) "
        "per acted change; the sim's CPU (its xenstored and toolstack) beside it. Latency is "
        "from the guest's shutdown to the action's completion in the sim's toolstack log.",
        "",
        "| N | model | processes | changes | CPU us/change | sim CPU us/change "
        "| wake-ups/change | shutdown->action p50 / p99 ms | lost |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['n']:,} | {r['model']} | | | | | | | {r['error']} |")
            continue
        lat = r.get("latency") or {}
        lines.append(
            f"| {r['n']:,} | {r['model']} | {r['processes']:,} | {r['changes']} "
            f"| {r['cpu_us_per_change']:,} | {r['sim_cpu_us_per_change']:,} "
            f"| {r['switches_per_change']:,} | {lat.get('p50_ms')} / {lat.get('p99_ms')} "
            f"| lost={r['lost']} |"
        )
    return lines
