"""1,000 domains powering off at once: every one destroyed, none twice."""

from __future__ import annotations

import time
from collections import Counter


def test_a_thousand_domains_powering_off_at_once_are_each_destroyed_once(host):
    host.ctl.create(count=1000 - len(host.guests))
    act = host.act()
    guests = {(r["domid"], r["uuid"]) for r in host.ctl.list() if r["domid"]}
    assert len(guests) == 1000
    start = time.monotonic()
    host.ctl.shutdown("all", "poweroff")  # one table change, one VIRQ
    truth = host.wait_truth(lambda t: len(t.of("destroy")) >= 1000, timeout=120)
    took = time.monotonic() - start
    time.sleep(0.5)
    truth = host.truth()
    destroyed = Counter((x["domid"], x["uuid"]) for x in truth.of("destroy"))
    assert set(destroyed) == guests
    assert max(destroyed.values()) == 1
    assert [r["domid"] for r in host.ctl.list()] == [0]
    act.wait_log("outcome=ok", count=1000)
    print(f"1,000 poweroffs acted upon in {took:.2f} s")
