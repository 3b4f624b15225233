"""The bridge's systemd unit runs the bridge as written (tests/e2e/test_packaging.py holds it,
as every unit of the project, to an exposure of 4.0 or below and to `systemd-analyze verify`)."""

from __future__ import annotations

import re
import subprocess

from simhelpers import REPO, sim_command

UNIT = REPO / "packaging" / "xenmux-bridge.service"


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
