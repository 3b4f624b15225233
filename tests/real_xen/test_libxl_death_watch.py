"""Debian's libxenlight 4.17, unchanged, watching a domain's death as xl does: the bench's libxl
model (mux/bench/libxl_monitor.c) under the stand-in libxenctrl, against the real xenstoreds.

What libxl's death watch tells a toolstack: a shutdown once per watch (a suspend, a resume
and a second suspend are one shutdown), nothing at a resume, and the death at `dying`, after
which the monitor exits as xl's does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import realxen

from mux import records
from mux.bench.build import build, libxenlight
from mux.realxen import dom0, guest, private_dir, running

xenstub_libs = realxen.xenstub_libs

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def libxl_monitor():
    with private_dir() as d:
        yield build(str(d), ("libxl_monitor",))["libxl_monitor"]


class Monitor:
    """One libxl_monitor process and the lines it appended to its results file."""

    def __init__(self, exe: str, libs, xsd, domid: int, results: Path) -> None:
        self.results = results
        results.write_text("")
        env = {
            # libxenlight from the Debian cache (mux.debpeers) needs its library directories
            **libxenlight().environ({"PATH": os.environ.get("PATH", "/usr/bin:/bin")}),
            "XENSTORED_PATH": str(xsd.socket_path),
            "LD_PRELOAD": str(libs.xenctrl),
            "XENMUX_STUB_SHM": str(xsd.table.path),
        }
        self.proc = subprocess.Popen(
            [exe, str(results), str(domid)], env=env, stderr=subprocess.PIPE, text=True
        )

    def lines(self) -> list[list[str]]:
        return [line.split() for line in self.results.read_text().splitlines()]

    def kinds(self) -> list[str]:
        return [parts[0] for parts in self.lines() if parts[0] not in ("F",)]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.kinds()) < count:
            assert self.proc.poll() is None, self.proc.stderr.read()
            assert time.monotonic() < deadline, self.lines()
            time.sleep(0.01)
        return self.kinds()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        self.proc.stderr.close()


def settle(xsd) -> None:
    """Until the server handled what was sent (a round trip) and the monitor its firing."""
    xsd.control.sync()
    time.sleep(0.3)


@pytest.mark.parametrize("kind", ["xenstored", "oxenstored"])
def test_libxl_reports_one_shutdown_per_watch_and_exits_at_death(
    kind, xenstub_libs, libxl_monitor, tmp_path
):
    doms = [dom0(), guest(1), guest(2)]
    with running(kind, xenstub_libs, doms, introduce=(1, 2)) as xsd:
        mon = Monitor(libxl_monitor, xenstub_libs, xsd, 1, tmp_path / "results")
        try:
            assert mon.wait_for(1) == ["R"]
            assert mon.lines()[0][3] == "1"  # running at its first query

            xsd.shutdown_domain(1, records.SHUTDOWN_SUSPEND)
            assert mon.wait_for(2) == ["R", "shutdown"]
            assert mon.lines()[1][3] == str(records.SHUTDOWN_SUSPEND)

            xsd.table.resume(1)  # the domain runs again, and the toolstack says so
            xsd.control.resume(1)
            xsd.raise_virq()
            settle(xsd)
            xsd.shutdown_domain(1, records.SHUTDOWN_SUSPEND)  # a second suspend
            settle(xsd)
            xsd.shutdown_domain(2, records.SHUTDOWN_POWEROFF)  # another domain's firing
            settle(xsd)
            # Nothing of the resume, and the second suspend of the same watch is not reported.
            assert mon.kinds() == ["R", "shutdown"]

            xsd.kill_domain(1)
            assert mon.wait_for(3) == ["R", "shutdown", "death"]
            assert mon.proc.wait(timeout=10) == 0, "xl's monitor exits at the death"
            final = mon.lines()[-1]
            assert final[0] == "F" and final[1] == "1"
            firings, queries = int(final[2]), int(final[3])
            # one query per firing: the first, both suspends, domain 2's poweroff, dying
            assert firings == queries >= 5
        finally:
            mon.stop()
