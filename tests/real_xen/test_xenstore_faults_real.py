"""Debian's real xenstored 4.17, C and OCaml, under the stand-in hypervisor (docs/real-xen.md),
when xenstored hangs under the daemon or the daemon stalls (issue 11 items 9 and 3).

- A SIGSTOPped xenstored still accepts connections and answers nothing: the daemon's probe
  of the silent connection gets no answer, the daemon stops showing as connected, and once
  xenstored runs again it has its watches back and a full scan reports what happened.
- A domain created and destroyed while the daemon is SIGSTOPped: 4.17's @introduceDomain
  names no domid, so it can only be counted (and logged once); nothing is sent.

The same faults scripted in front of the sim's xenstored, and watch depth:
tests/daemon/test_xenstore_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import signal

import pytest
import realxen
import test_xenctrl_backend
from daemonhelpers import quiet, take, until
from test_real_xen_e2e import KINDS, _need, real_host

xenstub_libs = realxen.xenstub_libs
serve_factory = test_xenctrl_backend.serve_factory


@contextlib.contextmanager
def sigstopped(pid: int):
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("kind", KINDS)
def test_a_hung_real_xenstored_is_noticed_and_left_behind(kind, xenstub_libs, serve_factory):
    _need(kind)
    with real_host(kind, xenstub_libs, domains=4) as host:
        d = host.serve(
            serve_factory, "--full-scan", "0", "--xenstore-timeout", "0.5",
            "--xenstore-idle", "0.5",
        )  # fmt: skip
        # Idle, the real server is probed, and answers.
        until(lambda: d.stats()["xenstore"]["liveness_probes"] >= 2, timeout=20)
        assert d.stats()["xenstore_connected"]
        assert d.stats()["xenstore"]["disconnects"]["liveness"] == 0
        with d.subscribe(None) as sub:
            with sigstopped(host.xsd.pid):
                until(lambda: not d.stats()["xenstore_connected"], timeout=20)
                xs = d.stats()["xenstore"]
                assert xs["disconnects"]["liveness"] == 1
                assert xs["request_timeouts"]["XS_GET_DOMAIN_PATH"] == 1
                host.sim.ctl.shutdown(2, "crash")  # the VIRQ waits for the stopped server
                assert quiet(sub, 0.5) == []
            (ev,) = take(sub, 1, timeout=30)
            assert (ev["event"], ev["domid"], ev["reason"]) == ("shutdown", 2, "crash")
            until(lambda: d.stats()["xenstore_connected"], timeout=20)
            # The watches work again on the server that was hung.
            host.sim.ctl.destroy(2)
            (ev,) = take(sub, 1, timeout=30)
            assert (ev["event"], ev["domid"]) == ("death", 2)
        stats = d.stats()
    assert stats["scans"]["reconnect"] >= 1 and stats["xenstore_reconnects"] == 1
    assert stats["xenstore"]["disconnects"]["liveness"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_417_a_domain_that_came_and_went_in_a_stall_is_counted(kind, xenstub_libs, serve_factory):
    _need(kind)
    with real_host(kind, xenstub_libs, domains=4) as host:
        ctl = host.sim.ctl
        d = host.serve(serve_factory, "--full-scan", "0")
        with d.subscribe(None) as sub:
            ctl.create(name="seen")
            assert [e["event"] for e in take(sub, 1, timeout=30)] == ["new"]
            assert d.stats()["firings_without_change"]["@introduceDomain"] == 0
            with sigstopped(d.pid):
                (dom,) = ctl.create(name="blink")
                ctl.destroy(dom["domid"])
            until(lambda: d.stats()["firings_without_change"]["@introduceDomain"] == 1)
            assert quiet(sub, 0.5) == []
            stats = d.stats()
        log = d.log_text()
    assert stats["transient_pairs"] == 0
    assert log.count("@introduceDomain fired but its scan found no new domain") == 1
