"""`xenmux bench --pool --quick` as a smoke test of the pool harness (no timing asserted).

Two simulated hosts with their daemons and bridges on one nats-server, the bench as the
pool consumer: every event a daemon sent must reach the consumer once (through the churn,
the NATS outage and the burst), the results must be written, and nothing the harness
started may be left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from daemonhelpers import processes_mentioning
from poolhelpers import Pool


@pytest.fixture
def short_tmp():
    # The harness puts the daemons' sockets in here: keep the paths well under 107 bytes.
    d = tempfile.mkdtemp(prefix="xmpb-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_quick_pool_bench_delivers_every_event_once(short_tmp, tmp_path):
    Pool.need_nats_server()
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "mux.cli", "bench", "--pool", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TMPDIR=short_tmp),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads((out / "pool.json").read_text())
    assert (out / "pool.md").read_text().startswith("# xenmux bench --pool")
    [row] = data["rows"]
    assert not row.get("error"), row
    assert (row["hosts"], row["domains"]) == (2, 50)
    # Every event of every daemon through the pool consumer, once; none made up.
    assert (row["lost"], row["duplicates"], row["missed"]) == (0, 0, 0), row
    assert row["latency"]["events"] > 0 and row["churn"]["events"] > 0, row
    assert row["outage"]["events_during"] > 0, row  # the outage had events to catch up
    assert row["burst"]["events"] > 0, row  # every guest shut down and destroyed
    assert "2 x 50:" in proc.stdout and "lost=0 duplicates=0" in proc.stdout, proc.stdout
    assert os.listdir(short_tmp) == [], "the harness left files behind"
    assert processes_mentioning(short_tmp) == []
