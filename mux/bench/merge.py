"""One set of results from several runs of `xenmux bench` (`--merge`).

A full run takes about an hour on two cores; run in parts (by size or by xenstored), it can
be measured when the machine is quiet and still be read as one table. Ratios are only ever
taken between rows of one part: a row and the rows it is compared with come from the same
run (the same xenstored, size and scenario), so merging never pairs figures of two runs.
"""

from __future__ import annotations

import json
import os


class MergeError(Exception):
    """A part that cannot be read or that overlaps another."""


def load(directory: str) -> dict:
    """The results.json of one run in `directory`."""
    path = os.path.join(directory, "results.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise MergeError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or "rows" not in data or "meta" not in data:
        raise MergeError(f"{path} is not the results of a `xenmux bench` run")
    return data


# The acting scenario runs on the sim's xenstored; its rows (in meta) name none.
ACTING_XENSTORED = "sim"


def _same_comparison(rows: list[dict], acting: list[dict], part: str, seen: dict) -> None:
    """Every (xenstored, N, scenario) in one part only, the acting scenario's too: a row's
    models (xl's monitors and serve + act, for acting) are compared within one run."""
    mine = {(r["xenstored"], r["n"], r["scenario"]) for r in rows}
    mine |= {(ACTING_XENSTORED, r["n"], r["scenario"]) for r in acting}
    for group in sorted(mine, key=str):
        if group in seen:
            xs, n, sc = group
            raise MergeError(
                f"{part} and {seen[group]} both measured {sc} at N={n} on {xs}: "
                "merge runs that measured different sizes or xenstoreds"
            )
    for group in mine:
        seen[group] = part


def merge(parts: list[str]) -> tuple[list[dict], dict]:
    """The rows of every part and one meta: the first part's, with every part's date,
    xenstoreds, models, notes and acting rows."""
    if not parts:
        raise MergeError("--merge needs at least one results directory")
    rows: list[dict] = []
    meta: dict = {}
    seen: dict[tuple, str] = {}
    dates: list[str] = []
    for part in parts:
        data = load(part)
        part_meta = data["meta"]
        _same_comparison(data["rows"], part_meta.get("acting") or [], part, seen)
        rows += data["rows"]
        if not meta:
            meta = {k: v for k, v in part_meta.items() if k not in ("notes", "acting")}
            meta["xenstored"], meta["models"], meta["notes"], meta["acting"] = [], [], [], []
        for kind in part_meta.get("xenstored", []):
            if kind not in meta["xenstored"]:
                meta["xenstored"].append(kind)
        for model in part_meta.get("models", []):
            if model not in meta["models"]:
                meta["models"].append(model)
        sizes = sorted({r["n"] for r in data["rows"]})
        date = part_meta.get("date", "an unknown date")
        dates.append(date)
        meta["notes"].append(
            f"part {os.path.basename(os.path.normpath(part))} ({date}): "
            + ", ".join(part_meta.get("xenstored", []))
            + " at N="
            + ", ".join(f"{n:,}" for n in sizes)
            + (f"; {part_meta['mode']}" if part_meta.get("mode") else "")
        )
        meta["notes"] += part_meta.get("notes", [])
        meta["acting"] += part_meta.get("acting") or []
    meta["date"] = dates[0] if len(set(dates)) == 1 else f"{min(dates)} to {max(dates)}"
    meta["merged_from"] = len(parts)
    return rows, meta
