"""`xenmux bench --quick` as a smoke test of the harness (no timing is asserted).

Every scenario must complete for both models with lost=0, the results must be written, and
nothing the harness started may be left behind: no process, no temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mux.bench.scenarios import SCENARIOS

pytestmark = pytest.mark.slow


def _processes_under(path: str) -> list[str]:
    """Command lines of live processes that mention `path` (a leak of the harness)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmd:
            found.append(f"{pid}: {cmd}")
    return found


@pytest.fixture
def short_tmp():
    # The harness puts its sockets in here: keep the paths well under 107 bytes.
    d = tempfile.mkdtemp(prefix="xmbt-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_quick_bench_runs_every_scenario_for_both_models(short_tmp, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, TMPDIR=short_tmp)
    proc = subprocess.run(
        [sys.executable, "-m", "mux.cli", "bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    data = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("# xenmux bench")
    rows = data["rows"]
    kinds = data["meta"]["xenstored"]
    assert "sim" in kinds
    for xs in kinds:
        for scenario in SCENARIOS:
            for model in ("mux", "monitors"):
                got = [
                    r
                    for r in rows
                    if r["xenstored"] == xs and r["scenario"] == scenario and r["model"] == model
                ]
                assert got, f"no {model} row for {scenario} on {xs}"
                for r in got:
                    assert not r.get("error"), r
                    assert r["lost"] == 0, r
                    assert r["measured"], r
                    assert r["expected"] > 0, r
                # the line a person reads
                assert f"{xs} N=16 {scenario} {model}: lost=0" in proc.stdout

    # The plots exist exactly when matplotlib does; otherwise the run says why not.
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plots skipped" in proc.stderr
    else:
        assert list(Path(out).glob("cpu-*.png")) and list(Path(out).glob("latency-*.png"))

    assert os.listdir(short_tmp) == [], "the harness left files behind"
    assert _processes_under(short_tmp) == []
