"""`xenmux bench`: the daemon against per-domain monitors (the `xl` model) on one simulated host.

Every scenario runs for every model on the same host state (a fresh simulated host with the
same seed each time), one model at a time: the mux (one `xenmux serve`, one C subscriber per
domain), the monitors (one lean C monitor per domain, each with its own xenstore connection
and @releaseDomain watch, querying its domain on every firing) and libxl (the same on
Debian's libxenlight, as xl runs it). Results go to --out DIR as JSON and Markdown, with PNG
plots when matplotlib is installed; `lost=N` is printed for every scenario and model. Exit
status 1 when any notification was lost or a run failed.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time

from mux.bench.acting import ACTING
from mux.bench.scenarios import PER_DOMAIN, QUADRATIC, SCENARIOS, TITLES
from mux.options import count, option, seconds
from mux.sim.xenstored.rules import XEN_VERSIONS

XENSTORED_KINDS = ("sim", "c-xenstored", "oxenstored")
REAL_KINDS = XENSTORED_KINDS[1:]
MODELS = ("host", "mux", "monitors", "libxl")


def _sizes(text: str) -> list[int]:
    if not text:
        return []
    try:
        return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of sizes: {text!r}") from None


@option
def _rate(text: str) -> float:
    """Changes per second: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of changes per second") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a rate: give 0 or more changes per second")
    return value


def _names(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        for n in names:
            if n not in allowed:
                raise argparse.ArgumentTypeError(f"{n!r} is not one of {', '.join(allowed)}")
        return names

    return parse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small run of every scenario (under a minute; `make test` runs it)",
    )
    p.add_argument("--out", default="xenmux-bench", help="results directory (default: %(default)s)")
    p.add_argument(
        "--sizes",
        type=_sizes,
        help="domain counts for both models (default 100,1000,4000; --quick: 16)",
    )
    p.add_argument(
        "--daemon-sizes",
        type=_sizes,
        help="domain counts for the mux model alone (default 32000; --quick: none)",
    )
    p.add_argument(
        "--scenarios",
        type=_names((*SCENARIOS, ACTING)),
        default=[*SCENARIOS, ACTING],
        help=f"comma-separated, of {','.join(SCENARIOS)},{ACTING} (default: all; {ACTING}: "
        "guests power off and reboot by themselves, xl's monitors or serve + act act, on the "
        "sim's xenstored)",
    )
    p.add_argument(
        "--models",
        type=_names(MODELS),
        default=list(MODELS),
        help=f"comma-separated, of {','.join(MODELS)} (default: all; host is the simulated "
        "host with no watcher at all: the floor under every model; libxl is xl's monitor on "
        "Debian's libxenlight, monitors its lean lower bound)",
    )
    p.add_argument(
        "--xenstored",
        type=_names(("auto", "all", "both", *XENSTORED_KINDS)),
        default=["auto"],
        help=f"comma-separated, of {','.join(XENSTORED_KINDS)}: the sim's xenstored and "
        "Debian's under the stand-in; all: the three; auto (default): the sim and each of "
        "Debian's that is found; both: sim,c-xenstored",
    )
    p.add_argument(
        "--c-xenstored-sizes",
        type=_sizes,
        help="domain counts measured on Debian's C xenstored (default: the --sizes)",
    )
    p.add_argument(
        "--oxenstored-sizes",
        type=_sizes,
        help="domain counts measured on Debian's oxenstored (default: the --sizes up to 1000)",
    )
    p.add_argument(
        "--monitors-mass-max",
        type=int,
        default=1000,
        metavar="N",
        help="above this many domains the monitors' mass scenarios (N x N firings) are "
        "extrapolated from their cost per firing (default: %(default)s)",
    )
    p.add_argument(
        "--xen-version",
        choices=XEN_VERSIONS,
        default="4.17",
        help="the Xen release the sim models, as `xenmux sim --xen-version` (default: %(default)s)",
    )
    p.add_argument(
        "--xs-version",
        choices=("4.17", "4.22"),
        default=None,
        help="which C xenstored rules the sim runs, overriding those of --xen-version: 4.22 has "
        "watch depth",
    )
    p.add_argument("--one-count", type=int, help="lifecycles in the one-lifecycle run (50)")
    p.add_argument("--churn-seconds", type=float, help="length of the churn (10 s)")
    p.add_argument("--churn-rate", type=float, help="lifecycles per second in the churn (10)")
    p.add_argument(
        "--mass-rate",
        type=_rate,
        default=5000.0,
        metavar="PER_S",
        help="changes per second raised in the mass shutdown; 0: each as soon as the host "
        "applied the one before (default: %(default)s)",
    )
    p.add_argument(
        "--burst-window",
        type=seconds(positive=False),
        metavar="S",
        help="the daemon's serve --burst-window (default: serve's own)",
    )
    p.add_argument(
        "--burst-window-max",
        type=seconds(positive=False),
        metavar="S",
        help="the daemon's serve --burst-window-max (default: serve's own)",
    )
    p.add_argument(
        "--burst-firings",
        type=count(0),
        metavar="N",
        help="the daemon's serve --burst-firings (default: serve's own)",
    )
    p.add_argument("--migrate-fraction", type=float, help="share of the domains migrated (0.10)")
    p.add_argument(
        "--per-conn",
        type=int,
        default=8,
        help="domids per connection at the daemon-only sizes (default: %(default)s)",
    )
    p.add_argument(
        "--conns-per-proc",
        type=int,
        default=500,
        help="connections per subscriber process at the daemon-only sizes (default: %(default)s)",
    )
    p.add_argument(
        "--jobs",
        type=count(1),
        metavar="N",
        help="runs at once, each on its own simulated host (default: 3 with --quick, which "
        "times nothing, else 1: a run beside others is timed under their load)",
    )
    p.add_argument("--seed", type=int, default=1, help="the simulated hosts' seed")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rebuild results.md and the plots from --out DIR/results.json",
    )
    p.add_argument(
        "--merge",
        type=_dirs,
        metavar="DIR,...",
        help="measure nothing: write into --out the results of several runs, each of other "
        "sizes or xenstoreds (a full run measured in parts)",
    )
    p.add_argument(
        "--keep-temp",
        action="store_true",
        help="keep the temporary directory of the run, for debugging the harness",
    )
    from mux.bench.pool_args import add_pool_arguments

    add_pool_arguments(p)


def _settings(args: argparse.Namespace):
    from mux.bench.scenarios import Params

    quick = args.quick
    params = Params(
        one_count=args.one_count or (4 if quick else 50),
        migrate_fraction=args.migrate_fraction or (0.25 if quick else 0.10),
        churn_seconds=args.churn_seconds or (0.6 if quick else 10.0),
        churn_rate=args.churn_rate or 10.0,
        mass_rate=args.mass_rate,
        wait_timeout=15.0 if quick else 60.0,
        # Nothing is timed in a quick run: a shorter look at the machine before each window.
        quiet_interval=0.02 if quick else 0.1,
    )
    sizes = args.sizes if args.sizes is not None else ([16] if quick else [100, 1000, 4000])
    daemon_sizes = (
        args.daemon_sizes if args.daemon_sizes is not None else ([] if quick else [32000])
    )
    real_sizes = {
        "c-xenstored": args.c_xenstored_sizes if args.c_xenstored_sizes is not None else sizes,
        "oxenstored": (
            args.oxenstored_sizes
            if args.oxenstored_sizes is not None
            else [n for n in sizes if n <= 1000]
        ),
    }
    return params, sizes, daemon_sizes, real_sizes


def _kinds(wanted: list[str]) -> tuple[list[str], bool]:
    """The xenstoreds asked for, and whether each must be there (not auto)."""
    if "auto" in wanted:
        return list(XENSTORED_KINDS), False
    if "all" in wanted:
        return list(XENSTORED_KINDS), True
    if "both" in wanted:
        wanted = [*wanted, "sim", "c-xenstored"]
    return [k for k in XENSTORED_KINDS if k in wanted], True


def _machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu or platform.machine()}), Linux {platform.release()}"


def _dirs(text: str) -> list[str]:
    dirs = [d for d in text.split(",") if d]
    if not dirs:
        raise argparse.ArgumentTypeError("expected results directories, comma-separated")
    return dirs


def _report_only(args: argparse.Namespace) -> int:
    from mux.bench import report
    from mux.bench.merge import MergeError, load, merge

    try:
        if args.merge:
            rows, meta = merge(args.merge)
        else:
            data = load(args.out)
            rows, meta = data["rows"], data["meta"]
    except MergeError as exc:
        print(f"xenmux bench: {exc}", file=sys.stderr)
        return 1
    written = report.write(args.out, rows, meta)
    if not args.no_plots:
        pngs, skipped = report.plots(args.out, rows)
        written += pngs
        if skipped:
            print(f"xenmux bench: {skipped}", file=sys.stderr)
    print(f"results: {', '.join(written)}", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.report_only or args.merge:
        return _report_only(args)
    if args.pool:
        from mux.bench.pool import run as run_pool

        return run_pool(args, _machine())
    from mux.bench import jobs, realxs, report, runner
    from mux.bench.build import BuildError
    from mux.bench.host import python_env
    from mux.bench.procs import ProcessSet
    from mux.bench.progress import Progress

    params, sizes, daemon_sizes, real_sizes = _settings(args)
    # The acting scenario runs apart (mux/bench/acting.py): its own models and figures.
    acting_wanted = ACTING in args.scenarios
    args.scenarios = [s for s in args.scenarios if s != ACTING]
    notes: list[str] = []
    meta: dict = {
        "machine": _machine(),
        "mode": "quick" if args.quick else "full",
        "xenstored": [],
        "xen_version": args.xen_version,
        "xs_version": args.xs_version,
        "seed": args.seed,
        "params": vars(params),
        "monitors_mass_max": args.monitors_mass_max,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "notes": notes,
    }

    # SIGTERM unwinds through the clean-up below, like Ctrl-C.
    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    tmp_root = tempfile.mkdtemp(prefix="xmb-")
    procs = ProcessSet(env=python_env(os.path.join(tmp_root, "pycache")))
    rows: list[dict] = []
    failed = 0
    try:
        try:
            binaries, models = _build(
                args.models, tmp_root, notes, stand_in_too=_kinds(args.xenstored)[0] != ["sim"]
            )
        except BuildError as exc:
            print(f"xenmux bench: {exc}", file=sys.stderr)
            return 1
        try:
            kinds, factories = _xenstoreds(args.xenstored, tmp_root, notes)
        except BuildError as exc:
            print(f"xenmux bench: {exc}", file=sys.stderr)
            return 1
        meta["xenstored"] = kinds
        meta["models"] = models

        plans: list[runner.Plan] = []
        extrapolate: list[tuple[str, int, str, str]] = []
        for xs in kinds:
            xs_sizes = sizes if xs == "sim" else real_sizes[xs]
            skipped = [n for n in sizes + daemon_sizes if n not in xs_sizes]
            if xs != "sim" and skipped:
                notes.append(
                    f"{realxs.TITLES[xs]}: measured at "
                    + (", ".join(f"{n:,}" for n in xs_sizes) or "no size")
                    + f" domains only (--{xs}-sizes)"
                )
            for n in xs_sizes:
                for sc in args.scenarios:
                    for model in models:
                        if model in PER_DOMAIN and sc in QUADRATIC and n > args.monitors_mass_max:
                            extrapolate.append((xs, n, sc, model))
                            continue
                        plans.append(runner.Plan(xs, n, sc, model))
            for n in daemon_sizes if xs == "sim" else []:
                for sc in args.scenarios:
                    if "host" in models:
                        plans.append(runner.Plan(xs, n, sc, "host"))
                    if "mux" in models:
                        plans.append(
                            runner.Plan(xs, n, sc, "mux", args.per_conn, args.conns_per_proc)
                        )

        env = runner.Env(
            procs=procs,
            binaries=binaries,
            params=params,
            xen_version=args.xen_version,
            xs_version=args.xs_version,
            seed=args.seed,
            tmp_root=tmp_root,
            burst_window=args.burst_window,
            burst_window_max=args.burst_window_max,
            burst_firings=args.burst_firings,
        )
        progress = Progress(len(plans))
        order = {id(plan): i for i, plan in enumerate(plans)}
        finished: list[tuple[int, dict]] = []
        for plan, row in jobs.run_all(
            env,
            plans,
            factories.get,
            jobs=args.jobs or (3 if args.quick else 1),
            started=lambda plan: progress.start(_label(plan)),
        ):
            finished.append((order[id(plan)], row))
            rows[:] = [r for _, r in sorted(finished, key=lambda f: f[0])]  # in the plans' order
            bad = row.get("error") or row.get("lost") != 0 or row.get("errors")
            failed += bool(bad)
            line = row.get("error") or report.summary_line(row)
            progress.label = _label(plan)
            progress.step(line)
            print(
                f"{plan.xenstored} N={plan.n} {plan.scenario} {plan.model}: "
                + (f"lost={row.get('lost')} error: {row['error']}" if row.get("error") else line),
                flush=True,
            )
            report.write(args.out, rows, meta)  # an interrupted run keeps what it measured
        progress.finish()
        if acting_wanted:
            from mux.bench import acting

            meta["acting"] = acting.run_all(
                procs, binaries, models, sizes, quick=args.quick, seed=args.seed, tmp_root=tmp_root
            )
            failed += sum(bool(r.get("error") or r.get("lost")) for r in meta["acting"])
            report.write(args.out, rows, meta)

        _extrapolate(rows, extrapolate, notes)
        _validate(rows, notes)
        written = report.write(args.out, rows, meta)
        if not args.no_plots:
            pngs, skipped = report.plots(args.out, rows)
            written += pngs
            if skipped:
                print(f"xenmux bench: {skipped}", file=sys.stderr)
                meta["notes"].append(skipped)
                report.write(args.out, rows, meta)
        print(f"results: {', '.join(written)}", flush=True)
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("xenmux bench: interrupted; stopping every process it started", file=sys.stderr)
        if rows:
            notes.append(f"interrupted after {len(rows)} runs")
            report.write(args.out, rows, meta)
            print(f"xenmux bench: the runs so far are in {args.out}", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep_temp:
            print(f"xenmux bench: kept {tmp_root}", file=sys.stderr)
        else:
            shutil.rmtree(tmp_root, ignore_errors=True)


def _label(plan) -> str:
    label = f"{plan.xenstored} N={plan.n:,} {TITLES[plan.scenario]} · {plan.model}"
    if plan.per_conn:
        label += f" ({plan.per_conn} domids/conn)"
    return label


def _build(
    wanted: list[str], tmp_root: str, notes: list[str], *, stand_in_too: bool
) -> tuple[dict[str, str], list[str]]:
    """Compile what the models need; (binaries, the models that can run). The libxl model is
    left out, with a note, where Debian's libxenlight or the stand-in cannot be had.

    The programs compile side by side, and the stand-in (the libxl model's, and Debian's
    xenstoreds', built once into `tmp_root`) beside them, in a thread: the run waits for the
    slowest compiler, not for the sum of them."""
    from concurrent.futures import ThreadPoolExecutor

    from mux.bench.build import build_each
    from mux.bench.realxs import RealXenError, stand_in

    programs = ("subscriber",)
    if "monitors" in wanted:
        programs += ("monitor",)
    if "host" in wanted:
        programs += ("probe",)
    if "libxl" in wanted:
        programs += ("libxl_monitor",)
    libs = stubs_error = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        stubs = pool.submit(stand_in, tmp_root) if stand_in_too or "libxl" in wanted else None
        binaries, failed = build_each(tmp_root, programs)
        try:
            libs = stubs.result() if stubs is not None else None
        except RealXenError as exc:
            stubs_error = exc
    models = list(wanted)
    why = failed.pop("libxl_monitor", None) or ("libxl" in wanted and stubs_error)
    if failed:
        raise next(iter(failed.values()))
    if "libxl" in wanted:
        if why:
            models.remove("libxl")
            # the compiler's last word, or what to install
            notes.append(f"the libxl model: not measured ({str(why).splitlines()[-1]})")
        else:
            binaries["libxenctrl_stub"] = str(libs.xenctrl)
    return binaries, models


def _xenstoreds(wanted: list[str], tmp_root: str, notes: list[str]):
    """(the xenstoreds to measure, a factory for each of Debian's). BuildError when one that
    was asked for by name cannot be had; with auto, a note says why it is left out."""
    from mux.bench import realxs
    from mux.bench.build import BuildError

    kinds, required = _kinds(wanted)
    factories = {}
    for xs in [k for k in kinds if k in REAL_KINDS]:
        make, why = realxs.factory(xs, tmp_root)
        if make is None:
            msg = f"{realxs.TITLES[xs]}: not measured ({why})"
            if required:
                raise BuildError(msg)
            notes.append(msg)
            kinds.remove(xs)
        else:
            factories[xs] = make
    return kinds, factories


def _extrapolate(
    rows: list[dict], wanted: list[tuple[str, int, str, str]], notes: list[str]
) -> None:
    from mux.bench.runner import extrapolate

    for xs, n, sc, model in wanted:
        one = _find(rows, xs, n, "one", model)
        template = _find(rows, xs, n, sc, "mux")
        if one is None or template is None or one.get("error") or template.get("error"):
            notes.append(
                f"{model}, {TITLES[sc]} at N={n} ({xs}): not extrapolated (needs the "
                f"{model} one-lifecycle run and the mux run of it at the same N)"
            )
            continue
        row = extrapolate(one, template)
        rows.append(row)
        notes.append(f"{model}, {TITLES[sc]} at N={n:,} ({xs}) is extrapolated: {row['basis']}")


def _validate(rows: list[dict], notes: list[str]) -> None:
    """Where a per-domain model ran a mass scenario, how far the extrapolation would have
    been."""
    from mux.bench.runner import extrapolate

    for row in rows:
        if row["model"] not in PER_DOMAIN or row["scenario"] not in QUADRATIC:
            continue
        if not row.get("measured", True) or row.get("error"):
            continue
        one = _find(rows, row["xenstored"], row["n"], "one", row["model"])
        template = _find(rows, row["xenstored"], row["n"], row["scenario"], "mux")
        if not one or not template or one.get("error") or template.get("error"):
            continue
        est = extrapolate(one, template)["cpu_ms_total"]
        row["extrapolated_cpu_ms"] = est
        if row.get("cpu_ms_total"):
            notes.append(
                f"check of the extrapolation: {row['model']}, {TITLES[row['scenario']]} at "
                f"N={row['n']:,} ({row['xenstored']}): measured {row['cpu_ms_total']:,.0f} ms, "
                f"extrapolated {est:,.0f} ms ({est / row['cpu_ms_total']:.2f}x)"
            )


def _find(rows: list[dict], xs: str, n: int, sc: str, model: str) -> dict | None:
    for r in rows:
        if (
            r["xenstored"] == xs
            and r["n"] == n
            and r["scenario"] == sc
            and r["model"] == model
            and r.get("measured", True)
            and not r.get("per_conn")
        ):
            return r
    return None
