"""`xenmux demo` (what `make run` starts) brings the chain up, shows events, and cleans up."""

from __future__ import annotations

import glob
import subprocess

from simhelpers import sim_command


def test_demo_runs_and_leaves_nothing_behind():
    before = set(glob.glob("/tmp/xenmux-demo-*"))
    out = subprocess.run(
        [*sim_command(), "demo", "--seconds", "4", "--plain", "--domains", "100", "--rate", "40"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(" new " in line or " shutdown " in line for line in lines), out.stdout[-2000:]
    assert any(line.startswith("-- rates:") for line in lines)
    assert set(glob.glob("/tmp/xenmux-demo-*")) == before
