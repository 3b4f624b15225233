"""`xenmux chaos --seconds 30`: the daemon under churn and every kind of fault, checked by
the oracle against the simulated host's truth. The target is 0 violations.

This fails until the journal of issue 12 (cursors, replay, gaps) and the hardening of
issue 11 have landed: the daemon before them loses the deaths of subscribers that were
away, and the oracle says so (`cursor-ignored`, `lost`, `needless-gap`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from mux.chaos.faults import FAULT_KINDS
from mux.chaos.streams import SUBSCRIBER_KINDS

pytestmark = pytest.mark.slow


@pytest.fixture
def short_tmp():
    with tempfile.TemporaryDirectory(prefix="xmct-", dir="/tmp") as d:  # short socket paths
        yield d


def test_a_30_second_chaos_run_has_no_violations(short_tmp):
    env = dict(os.environ, TMPDIR=short_tmp)
    proc = subprocess.run(
        [sys.executable, "-m", "mux.cli", "chaos", "--seconds", "30", "--json"],
        capture_output=True,
        text=True,
        timeout=85,
        env=env,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    figures = json.loads(proc.stdout)
    # The run did what it says: every fault, events for every kind of subscriber.
    assert set(figures["faults"]) == set(FAULT_KINDS), figures["faults"]
    assert figures["events_checked"] > 1000
    for kind in SUBSCRIBER_KINDS:
        assert figures["deaths"][kind]["expected"] > 50, (kind, figures["deaths"])
    assert figures["incarnations"]["observable"] > 1000
    assert figures["settled"], "the daemon's table never agreed with the host"
    assert os.listdir(short_tmp) == [], "the run left files behind"
    left = subprocess.run(["pgrep", "-af", short_tmp], capture_output=True, text=True)
    assert left.stdout == "", f"processes left behind: {left.stdout}"
    # The verdict.
    assert figures["violations"] == 0, (
        f"{figures['violations_by_kind']}: {figures['violation_examples'][:8]}"
    )
    assert proc.returncode == 0
