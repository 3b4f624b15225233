"""`sim-ctl fail-hypercalls N`: the sim backend fails the next N domain-info calls."""

from __future__ import annotations

import errno
import json
import os

import pytest

from mux.hypervisor.base import HypervisorError
from mux.sim.backend import SimBackend
from mux.sim.ctl import SimControlError
from mux.sim.paths import sim_paths

pytest_plugins = ("simhelpers",)


def test_armed_failures_hit_the_backends_open_at_the_time(sim):
    early = SimBackend(sim_dir=str(sim.dir))
    assert early.scan_all()[1] == 9  # dom0 and 8 guests
    assert sim.ctl.fail_hypercalls(2)["armed"] == 2
    late = SimBackend(sim_dir=str(sim.dir))  # opened after: not its failures
    try:
        assert late.scan_all()[1] == 9
        for _ in range(2):
            with pytest.raises(HypervisorError) as err:
                early.scan_all()
            assert err.value.errno == errno.EAGAIN and err.value.retryable
            assert "fail-hypercalls" in str(err.value)
        assert early.scan_all()[1] == 9  # the third call is served
        assert sim.ctl.fail_hypercalls(1)["armed"] == 3
        with pytest.raises(HypervisorError):
            late.query_one(3)  # one domain's call is a call too
        assert late.query_one(3)[1] == 1
    finally:
        early.close()
        late.close()


def test_bad_counts_are_refused_and_the_file_goes_with_the_sim(sim_factory):
    handle = sim_factory(domains=1)
    for bad in ("0", "1001"):
        out = handle.sim_ctl("fail-hypercalls", bad)
        assert out.returncode == 1 and "count must be 1..1000" in out.stderr
    with pytest.raises(SimControlError, match="count must be"):
        handle.ctl.fail_hypercalls(-3)
    out = handle.sim_ctl("fail-hypercalls", "4")
    assert out.returncode == 0 and json.loads(out.stdout)["armed"] == 4
    path = sim_paths(handle.dir).hypercall_faults
    assert os.path.exists(path)
    handle.stop()
    assert not os.path.exists(path)
