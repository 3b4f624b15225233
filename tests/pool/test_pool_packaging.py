"""The bridge's systemd unit: hardened as every unit of the project, and runnable as written."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from simhelpers import REPO, sim_command

UNIT = REPO / "packaging" / "xenmux-bridge.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_unit_scores_4_or_below_on_systemd_analyze_security():
    got = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", got.stdout)
    assert m, got.stdout + got.stderr
    assert float(m.group(1)) <= 4.0, got.stdout


def test_the_units_command_line_is_one_the_bridge_takes():
    text = UNIT.read_text()
    [exec_start] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    options = re.findall(r"(--[a-z-]+)", exec_start)
    helptext = subprocess.run(
        [*sim_command(), "bridge", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert options and all(o in helptext for o in options), (options, helptext)
    # It runs with no privilege: a user of its own, in the daemon's socket group.
    assert "DynamicUser=yes" in text and "SupplementaryGroups=xenmux" in text
    assert "--socket /run/xenmux/xenmux.sock" in exec_start
