"""The sim's two xenstored flavours against Debian's real ones: the firing rule, XS_RESUME
and the resume that leaves C xenstored's latch set (issue 17, items 4-5).

One scenario of lifecycle steps on guest 1 runs on the real server (under the stand-in,
driven through its table and VIRQ) and on the sim of the same flavour (driven through
sim-ctl); after each step the firings of @releaseDomain seen on one connection must be the
same. The scenario's own expectations pin the rules themselves, so that the sim and the real
server cannot agree on something else.
"""

from __future__ import annotations

import pytest
import realxen

from mux import records
from mux.realxen import XsConnection

xenstub_libs = realxen.xenstub_libs
real_xenstored = realxen.real_xenstored

RELEASE = ("@releaseDomain", "rel")

pytestmark = pytest.mark.timeout(60)

# (step, firings on C xenstored, firings on oxenstored)
SCENARIO: list[tuple[str, int, int]] = [
    ("suspend", 1, 1),
    ("virq", 0, 1),  # C: latched; oxenstored: every VIRQ while shut down
    ("xs-resume", 0, 0),  # XS_RESUME alone fires nothing...
    ("virq", 1, 1),  # ... but re-arms C's latch: still shut down in the hypervisor
    ("resume", 0, 0),  # as libxl: the hypervisor's resume, then XS_RESUME; then a VIRQ
    ("poweroff", 1, 1),
    ("resume-without-xs-resume", 0, 0),  # a toolstack outside libxl; then a VIRQ
    ("crash", 0, 1),  # the trap: C is still latched, its next shutdown fires nothing
    ("dying", 1, 1),
]


def _on_real(xsd, step: str) -> None:
    if step == "suspend":
        xsd.shutdown_domain(1, records.SHUTDOWN_SUSPEND)
    elif step == "virq":
        xsd.raise_virq()
    elif step == "xs-resume":
        xsd.control.resume(1)
    elif step == "resume":
        xsd.table.resume(1)
        xsd.control.resume(1)
        xsd.raise_virq()
    elif step == "poweroff":
        xsd.shutdown_domain(1, records.SHUTDOWN_POWEROFF)
    elif step == "resume-without-xs-resume":
        xsd.table.resume(1)
        xsd.raise_virq()
    elif step == "crash":
        xsd.shutdown_domain(1, records.SHUTDOWN_CRASH)
    elif step == "dying":
        xsd.kill_domain(1)
    else:
        raise AssertionError(step)


def _on_sim(sim, control: XsConnection, step: str) -> None:
    ctl = sim.ctl
    if step == "suspend":
        ctl.suspend(1)
    elif step == "virq":
        ctl.virq()
    elif step == "xs-resume":
        control.resume(1)
    elif step == "resume":
        ctl.resume(1)
        ctl.virq()
    elif step == "poweroff":
        ctl.shutdown(1, "poweroff")
    elif step == "resume-without-xs-resume":
        ctl.resume(1, xs_resume=False)
        ctl.virq()
    elif step == "crash":
        ctl.shutdown(1, "crash")
    elif step == "dying":
        ctl.destroy(1, zombie=True)
    else:
        raise AssertionError(step)


def test_the_sims_flavour_fires_as_the_real_one(real_xenstored, sim_factory):
    kind = real_xenstored.kind
    flavour = "c" if kind == "xenstored" else "oxenstored"
    sim = sim_factory(domains=4, extra_args=("--xenstored", flavour))
    assert sim.ready["flavour"] == flavour
    column = 1 if flavour == "c" else 2
    with (
        real_xenstored.connect() as real,
        XsConnection(sim.xenstored) as simulated,
        XsConnection(sim.xenstored) as control,
    ):
        for w in (real, simulated):
            w.watch(*RELEASE)
            assert w.sync() == [RELEASE]
        for row in SCENARIO:
            step = row[0]
            _on_real(real_xenstored, step)
            _on_sim(sim, control, step)
            from_real, from_sim = real.sync(), simulated.sync()
            assert from_real == [RELEASE] * row[column], (kind, step, from_real)
            assert from_sim == from_real, (flavour, step, from_sim)
    assert not real_xenstored.control.is_introduced(1)
    assert not next(r for r in sim.ctl.list() if r["domid"] == 1)["introduced"]
