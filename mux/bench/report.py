"""Results: JSON, a Markdown table (absolute figures and ratios between the models), plots."""

from __future__ import annotations

import json
import os

from mux.bench.acting import markdown as acting_markdown
from mux.bench.scenarios import SCENARIOS, TITLES

TARGET_N = 1000
# Issue 15: the mux alone at 32,000 domains, 4,000 subscriber connections.
MEMORY_TARGET_N = 32000
MEMORY_TARGET_MB = 80


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _ratio(a, b) -> str:
    if a is None or b is None or not b:
        return "—"
    r = a / b
    if r >= 10:
        return f"{r:,.0f}x"
    return f"{r:.2f}x"


def _lat(row: dict, key: str = "fired") -> dict:
    return (row.get("latency") or {}).get(key) or {}


MODELS = ("host", "mux", "monitors", "libxl")
# The per-domain models compared with the mux, each in a row of the ratios.
COMPARED = ("libxl", "monitors")


def _order(row: dict) -> tuple:
    return (
        row["xenstored"],
        row["n"],
        SCENARIOS.index(row["scenario"]) if row["scenario"] in SCENARIOS else 99,
        MODELS.index(row["model"]) if row["model"] in MODELS else 9,
    )


def _net(row: dict | None, host: dict | None):
    """CPU of a model above the bare host's own cost of the same changes."""
    if not row or row.get("cpu_ms_total") is None:
        return None
    if not host or host.get("cpu_ms_total") is None:
        return None
    return row["cpu_ms_total"] - host["cpu_ms_total"]


def _net_ratio(model_net, mux_net) -> str:
    """The ratio of two costs above the bare host. A cost at or under the host's own is
    within the noise of the host's run (measured apart, on a shared machine): no ratio."""
    if model_net is None or mux_net is None:
        return "—"
    if mux_net <= 0:
        return "— (mux within the host's noise)"
    if model_net <= 0:
        return "— (within the host's noise)"
    return _ratio(model_net, mux_net)


def _pairs(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    out: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        out.setdefault((row["xenstored"], row["n"], row["scenario"]), {})[row["model"]] = row
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# xenmux bench",
        "",
        f"{meta.get('machine', '')}; xenstored: {', '.join(meta.get('xenstored', []))}; "
        f"{meta.get('mode', '')}.",
        "",
        "CPU is every process of the model (xenstored included) over the window; "
        "switches are context switches (wake-ups) of all of them; latency is from the "
        "sim's change stamp to the receipt at the interested process (`fired`: changes "
        "that fire @releaseDomain). `x` = extrapolated (see notes). `host` is the "
        "simulated host with no watcher: its own cost of the same changes (change "
        "request, table, xenstored's domain pass, and one probe watcher that only stamps "
        "each firing), a floor every model pays; 'above the bare host' compares what each "
        "model adds to it. 'other CPU' is what the rest of the machine used during the "
        "window: noise.",
        "",
        "## Ratios (per-domain model / mux, same scenario, same host)",
        "",
        "`libxl` is xl's monitor on Debian's libxenlight, `monitors` its lean lower bound.",
        "",
        "| xenstored | N | scenario | model / mux | CPU | CPU above the bare host | switches "
        "| p99 latency | lost (mux / model) |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for (xs, n, sc), models in sorted(
        _pairs(rows).items(),
        key=lambda kv: (kv[0][0], kv[0][1], SCENARIOS.index(kv[0][2])),
    ):
        mux = models.get("mux")
        for name in COMPARED:
            mon = models.get(name)
            if not mux or not mon:
                continue
            x = "" if mon.get("measured", True) else " x"
            host = models.get("host")
            net = "—"
            if mon.get("measured", True):
                net = _net_ratio(_net(mon, host), _net(mux, host))
                if not net.startswith("—"):
                    net += x
            lines.append(
                f"| {xs} | {n:,} | {TITLES.get(sc, sc)} | {name} / mux | "
                f"{_ratio(mon.get('cpu_ms_total'), mux.get('cpu_ms_total'))}{x} | {net} | "
                f"{_ratio(mon.get('switches_total'), mux.get('switches_total'))}{x} | "
                f"{_ratio(_lat(mon).get('p99_us'), _lat(mux).get('p99_us'))} | "
                f"lost={mux.get('lost')} / lost={mon.get('lost')} |"
            )
    lines += [
        "",
        "## Measurements",
        "",
        "| xenstored | N | scenario | model | changes | firings "
        "| CPU ms (xenstored+daemon+clients) | CPU us/change | switches/change "
        "| fired p50/p99 us | created p50/p99 us | scans/firings | daemon RSS/HWM MB | lost "
        "| other CPU ms |",
        "| --- | ---: | --- | --- | ---: | ---: | --- | ---: | ---: "
        "| --- | --- | --- | --- | --- | ---: |",
    ]
    for row in sorted(rows, key=_order):
        cpu = row.get("cpu_ms") or {}
        if cpu:
            split = (
                f"{_fmt(row.get('cpu_ms_total'))} ({_fmt(cpu.get('xenstored'))}"
                f"+{_fmt(cpu.get('daemon'))}+{_fmt(cpu.get('clients'))})"
            )
        else:
            split = f"{_fmt(row.get('cpu_ms_total'))} x"
        fired = _lat(row)
        created = _lat(row, "created")
        d = row.get("daemon") or {}
        scans = "—"
        if d:
            scans = f"{_fmt(d.get('scans_total'))}/{_fmt(d.get('firings_total'))}"
        mem = "—"
        if d.get("rss_kib"):
            mem = f"{d['rss_kib'] / 1024:.0f}/{(d.get('hwm_kib') or 0) / 1024:.0f}"
        model = row["model"] if row.get("measured", True) else f"{row['model']} (x)"
        if row.get("per_conn"):
            model += f" ({row['per_conn']}/conn)"
        lines.append(
            f"| {row['xenstored']} | {row['n']:,} | {TITLES.get(row['scenario'], row['scenario'])} "
            f"| {model} | {_fmt(row.get('changes'))} | {_fmt(row.get('release_firings'))} "
            f"| {split} | {_fmt(row.get('cpu_us_per_change'))} "
            f"| {_fmt(row.get('switches_per_change'))} "
            f"| {_fmt(fired.get('p50_us'))} / {_fmt(fired.get('p99_us'))} "
            f"| {_fmt(created.get('p50_us'))} / {_fmt(created.get('p99_us'))} "
            f"| {scans} | {mem} | lost={row.get('lost')} | {_fmt(row.get('other_cpu_ms'))} |"
        )
    lines += ["", "## Targets (docs/architecture.md) at N = 1,000", ""]
    lines += targets(rows)
    memory = memory_target(rows)
    if memory:
        lines += ["", f"## The daemon's memory at N = {MEMORY_TARGET_N:,}", ""]
        lines += memory
    lines += acting_markdown(meta.get("acting") or [])
    notes = meta.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def targets(rows: list[dict]) -> list[str]:
    out = []
    pairs = _pairs(rows)
    for xs in sorted({r["xenstored"] for r in rows}):
        one = pairs.get((xs, TARGET_N, "one"), {})
        mass = pairs.get((xs, TARGET_N, "mass"), {})
        mux, host = one.get("mux"), one.get("host")
        for name in COMPARED:
            mon = one.get(name)
            if not mux or not mon or not mux.get("cpu_us_per_change"):
                continue
            r = mon["cpu_us_per_change"] / mux["cpu_us_per_change"]
            line = (
                f"- [{xs}] CPU per lifecycle change, {name} / mux: {r:,.0f}x "
                f"({mon['cpu_us_per_change']:,.0f} us vs {mux['cpu_us_per_change']:,.1f} us): "
                f"{'met' if r >= 100 else 'NOT met'} (target 100x)"
            )
            net_mon, net_mux = _net(mon, host), _net(mux, host)
            if net_mon is not None and net_mux and net_mux > 0:
                line += (
                    f"; above the bare host's own {host['cpu_us_per_change']:,.0f} us per "
                    f"change: {net_mon / net_mux:,.0f}x"
                )
            out.append(line)
        if mux:
            lat = _lat(mux)
            p99 = lat.get("p99_us")
            if p99 is not None:
                out.append(
                    f"- [{xs}] change -> frame at the interested subscriber, p99: {p99:,.0f} us "
                    f"(p50 {lat.get('p50_us'):,.0f} us, {lat.get('n')} changes): "
                    f"{'met' if p99 < 1000 else 'NOT met'} (target < 1 ms)"
                )
        m = mass.get("mux")
        if m and not m.get("error"):
            d = m.get("daemon") or {}
            rss = (d.get("hwm_kib") or 0) / 1024
            ok = m.get("lost") == 0 and rss < 100
            out.append(
                f"- [{xs}] mass shutdown of {TARGET_N:,}: lost={m.get('lost')}, "
                f"{d.get('firings_total')} firings -> {d.get('scans_total')} scans "
                f"({d.get('firings_per_scan')} firings per scan), daemon peak RSS "
                f"{rss:.0f} MB: {'met' if ok else 'NOT met'} (every event, RSS < 100 MB)"
            )
        b = pairs.get((xs, TARGET_N, "boot"), {}).get("mux")
        if b and not b.get("error"):
            d = b.get("daemon") or {}
            out.append(
                f"- [{xs}] boot storm of {TARGET_N:,}: lost={b.get('lost')}, "
                f"{d.get('firings_total')} firings -> {d.get('scans_total')} scans "
                f"({d.get('firings_per_scan')} firings per scan)"
            )
    return out or ["- no run at N = 1,000 in this set"]


def memory_target(rows: list[dict]) -> list[str]:
    """The daemon's highest VmHWM over the mux-alone rows at MEMORY_TARGET_N, per xenstored:
    the peak, so that a start-up or checkpoint that touched more counts even when the RSS
    read at the end of the window is lower."""
    out = []
    by_xs: dict[str, list[dict]] = {}
    for r in rows:
        if (
            r["model"] == "mux"
            and r["n"] == MEMORY_TARGET_N
            and (r.get("daemon") or {}).get("hwm_kib")
        ):
            by_xs.setdefault(r["xenstored"], []).append(r)
    for xs, found in sorted(by_xs.items()):
        top = max(found, key=lambda r: r["daemon"]["hwm_kib"])
        hwm = top["daemon"]["hwm_kib"] / 1024
        rss = max(r["daemon"].get("rss_kib") or 0 for r in found) / 1024
        out.append(
            f"- [{xs}] daemon peak RSS (VmHWM) {hwm:.0f} MB, RSS at the end of a window at most "
            f"{rss:.0f} MB, with {top.get('connections', 0):,} connections (the highest of "
            f"{len(found)} rows: {TITLES.get(top['scenario'], top['scenario'])}): "
            f"{'met' if hwm < MEMORY_TARGET_MB else 'NOT met'} (target < {MEMORY_TARGET_MB} MB)"
        )
    return out


def write(out_dir: str, rows: list[dict], meta: dict) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    path = os.path.join(out_dir, "results.json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": sorted(rows, key=_order)}, f, indent=1)
        f.write("\n")
    written.append(path)
    path = os.path.join(out_dir, "results.md")
    with open(path, "w") as f:
        f.write(markdown(rows, meta))
    written.append(path)
    return written


def plots(out_dir: str, rows: list[dict]) -> tuple[list[str], str | None]:
    """PNG plots of CPU and latency against N; (files, note when skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], (
            "plots skipped: matplotlib is not installed "
            "(pip install 'xen-watch-mux[bench]' or pip install matplotlib)"
        )
    written = []
    styles = {
        "mux": ("tab:blue", "-"),
        "monitors": ("tab:red", "--"),
        "libxl": ("tab:orange", "-."),
        "host": ("tab:gray", ":"),
    }
    for xs in sorted({r["xenstored"] for r in rows}):
        fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(4 * len(SCENARIOS), 3.6))
        for ax, sc in zip(axes, SCENARIOS, strict=True):
            for model, (color, ls) in styles.items():
                pts = sorted(
                    (r["n"], r.get("cpu_us_per_change"), r.get("measured", True))
                    for r in rows
                    if r["xenstored"] == xs
                    and r["scenario"] == sc
                    and r["model"] == model
                    and r.get("cpu_us_per_change")
                )
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, color=color, label=model)
                for n, v, measured in pts:
                    ax.plot(n, v, "o", color=color, fillstyle="full" if measured else "none")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(TITLES[sc])
            ax.set_xlabel("domains")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("CPU us per change (all processes)")
        for ax in axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
                break
        fig.suptitle(
            f"CPU per lifecycle change, all processes ({xs}; hollow: extrapolated; "
            "host: no watcher)"
        )
        fig.tight_layout()
        path = os.path.join(out_dir, f"cpu-{xs}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, q in zip(axes, ("p50_us", "p99_us"), strict=True):
            for sc, marker in (("one", "o"), ("mass", "s"), ("churn", "^")):
                for model in ("mux", *COMPARED):
                    color, ls = styles[model]
                    pts = sorted(
                        (r["n"], _lat(r).get(q))
                        for r in rows
                        if r["xenstored"] == xs
                        and r["scenario"] == sc
                        and r["model"] == model
                        and _lat(r).get(q) is not None
                    )
                    if pts:
                        ax.plot(
                            [p[0] for p in pts],
                            [p[1] for p in pts],
                            ls,
                            marker=marker,
                            color=color,
                            label=f"{model}, {TITLES[sc]}",
                        )
            pts = sorted(
                (r["n"], _lat(r).get(q))
                for r in rows
                if r["xenstored"] == xs
                and r["scenario"] == "one"
                and r["model"] == "host"
                and _lat(r).get(q) is not None
            )
            if pts:
                color, ls = styles["host"]
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    ls,
                    marker="o",
                    color=color,
                    label="host floor: a watcher doing nothing (one lifecycle)",
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("domains")
            ax.set_ylabel(f"change -> notification, {q[:3]} (us)")
            ax.axhline(1000, color="grey", lw=0.8, ls=":")
            ax.grid(True, which="both", alpha=0.3)
        if axes[1].get_legend_handles_labels()[0]:
            axes[1].legend(fontsize=7)
        fig.suptitle(f"Firing-to-notification latency ({xs})")
        fig.tight_layout()
        path = os.path.join(out_dir, f"latency-{xs}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written, None


def summary_line(row: dict) -> str:
    fired = _lat(row)
    parts = [
        f"lost={row.get('lost')}",
        f"cpu={_fmt(row.get('cpu_ms_total'))}ms",
        f"{_fmt(row.get('cpu_us_per_change'))}us/change",
        f"{_fmt(row.get('switches_per_change'))}sw/change",
    ]
    if fired.get("n"):
        parts.append(f"p50={_fmt(fired.get('p50_us'))}us p99={_fmt(fired.get('p99_us'))}us")
    d = row.get("daemon")
    if d:
        parts.append(f"scans={d.get('scans_total')}/firings={d.get('firings_total')}")
    rate = row.get("mass_rate") or {}
    if rate.get("applied"):
        target = f"/{_fmt(rate['target'])}" if rate.get("target") else ""
        parts.append(f"rate={_fmt(rate['applied'])}{target}/s")
    if not row.get("measured", True):
        parts.append("(extrapolated)")
    return " ".join(parts)
