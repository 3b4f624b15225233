"""`xenmux bench --quick` as a smoke test of the harness (no timing is asserted).

Every scenario must complete for every model (the mux, the lean monitors, xl's monitor on
Debian's libxenlight) on every xenstored (the sim's, Debian's C xenstored and oxenstored) with
lost=0, the results must be written, and nothing the harness started may be left behind: no
process, no temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from daemonhelpers import processes_mentioning

from mux.bench.scenarios import SCENARIOS

pytestmark = pytest.mark.slow


@pytest.fixture
def short_tmp():
    # The harness puts its sockets in here: keep the paths well under 107 bytes.
    d = tempfile.mkdtemp(prefix="xmbt-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_quick_bench_runs_every_scenario_for_every_model(short_tmp, tmp_path):
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
    # The acting scenario: both models acted on every guest's shutdown, none twice.
    acting = data["meta"]["acting"]
    assert {(r["model"], r["lost"]) for r in acting} == {("mux", 0), ("libxl", 0)}, acting
    rows = data["rows"]
    kinds = data["meta"]["xenstored"]
    # make test installs Debian's xenstoreds and libxenlight (xen-utils-4.17, libxen-dev)
    assert kinds == ["sim", "c-xenstored", "oxenstored"], data["meta"]["notes"]
    assert data["meta"]["models"] == ["host", "mux", "monitors", "libxl"], data["meta"]["notes"]
    for xs in kinds:
        for scenario in SCENARIOS:
            for model in ("mux", "monitors", "libxl"):
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
        # The mass shutdown is raised at --mass-rate (5,000/s by default), and each of its
        # rows says what rate the host's stamps show it applied.
        for r in rows:
            if r["xenstored"] == xs and r["scenario"] == "mass":
                assert r["mass_rate"]["target"] == 5000, r
                assert r["mass_rate"]["applied"] > 0, r
                (said,) = [
                    line
                    for line in proc.stdout.splitlines()
                    if line.startswith(f"{xs} N=16 mass {r['model']}: ")
                ]
                assert "/5,000/s" in said, said

    # The plots exist exactly when matplotlib does; otherwise the run says why not.
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plots skipped" in proc.stderr
    else:
        assert list(Path(out).glob("cpu-*.png")) and list(Path(out).glob("latency-*.png"))

    assert os.listdir(short_tmp) == [], "the harness left files behind"
    assert processes_mentioning(short_tmp) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--mass-rate", "-5"], "'-5' is not a rate: give 0 or more changes per second"),
        (["--mass-rate", "fast"], "'fast' is not a number of changes per second"),
        (["--jobs", "0"], "0 is below 1"),
    ],
)
def test_a_bad_rate_or_job_count_is_refused_before_anything_runs(args, says, short_tmp):
    proc = subprocess.run(
        [sys.executable, "-m", "mux.cli", "bench", *args, "--out", f"{short_tmp}/out"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, TMPDIR=short_tmp),
    )
    assert proc.returncode == 2
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert os.listdir(short_tmp) == []


def test_a_process_that_exits_in_the_window_counts_every_thread_s_switches():
    """The libxl monitors exit at their domain's death, inside the window; a zombie's /proc
    shows only its main thread's switches, so they are taken from wait4 as it is reaped."""
    from mux.bench import procs as P
    from mux.bench.runner import _exited_switches

    ps = P.ProcessSet()
    script = (
        "import threading, time\n"
        "t = threading.Thread(target=lambda: [time.sleep(0.001) for _ in range(300)])\n"
        "t.start(); t.join()\n"
    )
    pid = ps.spawn([sys.executable, "-c", script], name="two threads")
    try:
        deadline = time.monotonic() + 30
        stat = Path(f"/proc/{pid}/stat")
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        zombie = P.switches(pid)
        got = _exited_switches(ps, [pid])
        assert got[pid] >= zombie + 300  # the helper thread's sleeps
        assert pid not in ps.live and ps.status[pid] == 0  # reaped: never signalled again
        assert _exited_switches(ps, [pid]) == {}
    finally:
        ps.stop_all()
