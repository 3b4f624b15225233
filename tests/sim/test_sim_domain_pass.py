"""The sim xenstored's domain pass in C (mux.sim._simfast.DomainPass): C xenstored's
check_domains() over the introduced domains, newest first, with their shutdown latches."""

from __future__ import annotations

from array import array

import pytest

from mux import records
from mux.sim._simfast import DOMID_SLOTS, DomainPass

RUNNING = records.DOMINF_RUNNING
SHUTDOWN = records.DOMINF_SHUTDOWN | records.DOMINF_RUNNING
DYING = records.DOMINF_DYING


def table(**flags_by_domid: int) -> array:
    t = array("q", [-1]) * DOMID_SLOTS
    for name, flags in flags_by_domid.items():
        t[int(name[1:])] = flags
    return t


def test_a_newly_shut_down_domain_is_latched_once_and_fires_at_the_end():
    p = DomainPass()
    for d in (0, 1, 2, 3):
        assert p.add(d)
    flags = table(d0=RUNNING, d1=RUNNING, d2=SHUTDOWN, d3=RUNNING)
    assert p.run(flags) == ([(2, False)], True)
    assert p.latched(2) and not p.latched(1)
    assert p.run(flags) == ([], False)  # latched: nothing until XS_RESUME
    p.set_latched(2, False)
    assert p.run(flags) == ([(2, False)], True)


def test_the_pass_walks_newest_first_and_a_destroy_cancels_the_end_firing():
    p = DomainPass()
    for d in (0, 5, 3, 9):  # introduction order, not domid order
        p.add(d)
    # 9 and 5 shut down, 3 dying: newest first is 9, 3, 5
    flags = table(d0=RUNNING, d5=SHUTDOWN, d3=DYING, d9=SHUTDOWN)
    assert p.run(flags) == ([(9, False), (3, True), (5, False)], True)
    p.remove(3)
    p.remove(9)
    p.add(9)  # introduced again: the newest, unlatched
    flags = table(d0=RUNNING, d5=SHUTDOWN, d9=SHUTDOWN | DYING)
    assert p.run(flags) == ([(9, False), (9, True)], False)


def test_a_vanished_domain_is_destroyed_but_dom0_never_is():
    p = DomainPass()
    p.add(0)
    p.add(7)
    assert p.run(table()) == ([(7, True)], False)
    assert p.run(table(d0=DYING)) == ([(7, True)], False)


def test_membership_order_and_bad_input():
    p = DomainPass()
    assert p.add(4) and not p.add(4)
    assert 4 in p and 5 not in p and "4" not in p and len(p) == 1
    assert p.remove(4) and not p.remove(4) and len(p) == 0
    with pytest.raises(ValueError):
        p.add(DOMID_SLOTS)
    with pytest.raises(KeyError):
        p.set_latched(4, True)
    with pytest.raises(ValueError, match="slots"):
        p.run(array("q", [-1]) * 16)
