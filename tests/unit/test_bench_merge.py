"""`xenmux bench --merge`: a full run measured in parts reads as one set of results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "bench" / "results" / "results.json"


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mux.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _part(directory: Path, meta: dict, rows: list[dict]) -> None:
    directory.mkdir()
    (directory / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}))


def _split_by_xenstored(tmp_path: Path) -> tuple[dict, list[Path]]:
    data = json.loads(COMMITTED.read_text())
    kinds = sorted({r["xenstored"] for r in data["rows"]})
    assert len(kinds) >= 2, "the committed results have one xenstored: nothing to split"
    parts = []
    for kind in kinds:
        part = tmp_path / kind
        meta = dict(data["meta"], xenstored=[kind], date=f"2026-01-0{len(parts) + 1} 00:00")
        # The acting scenario runs on the sim's xenstored: its rows go with the sim's part.
        meta["acting"] = data["meta"].get("acting") if kind == "sim" else []
        _part(part, meta, [r for r in data["rows"] if r["xenstored"] == kind])
        parts.append(part)
    return data, parts


def test_parts_merge_into_the_table_of_one_run(tmp_path):
    whole, parts = _split_by_xenstored(tmp_path)
    out = tmp_path / "merged"
    done = _bench("--merge", ",".join(map(str, parts)), "--out", str(out), "--no-plots")
    assert done.returncode == 0, done.stderr
    merged = json.loads((out / "results.json").read_text())
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, merged["rows"])) == sorted(map(key, whole["rows"]))
    assert sorted(merged["meta"]["xenstored"]) == sorted(p.name for p in parts)
    assert merged["meta"]["date"] == f"2026-01-01 00:00 to 2026-01-0{len(parts)} 00:00"
    for part in parts:
        assert any(n.startswith(f"part {part.name} (") for n in merged["meta"]["notes"])
    table = (out / "results.md").read_text()
    for part in parts:
        assert f"| {part.name} | 1,000 | one lifecycle |" in table


def test_two_parts_measuring_the_same_thing_are_refused(tmp_path):
    _, parts = _split_by_xenstored(tmp_path)
    out = tmp_path / "merged"
    done = _bench("--merge", f"{parts[0]},{parts[0]}", "--out", str(out))
    assert done.returncode == 1
    assert "both measured" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_a_directory_without_results_is_named(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    done = _bench("--merge", str(empty), "--out", str(tmp_path / "merged"))
    assert done.returncode == 1
    assert f"cannot read {empty}/results.json" in done.stderr
    assert "Traceback" not in done.stderr


def test_two_parts_measuring_acting_at_one_size_are_refused(tmp_path):
    _, parts = _split_by_xenstored(tmp_path)
    acting = [
        {"scenario": "acting", "n": 100, "model": m, "measured": True} for m in ("mux", "libxl")
    ]
    for part in parts[:2]:
        data = json.loads((part / "results.json").read_text())
        data["meta"]["acting"] = acting
        (part / "results.json").write_text(json.dumps(data))
    out = tmp_path / "merged"
    done = _bench("--merge", f"{parts[0]},{parts[1]}", "--out", str(out))
    assert done.returncode == 1
    assert f"{parts[1]} and {parts[0]} both measured acting at N=100" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
