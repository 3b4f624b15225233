"""A domid reused with its UUID while no scan could run, without unique ids (Xen before 4.21):
the one way a daemon tells a `death` whose `new` it never sent (docs/protocol.md,
"Incarnations"). The chaos run saw it once (domid 872): a guest built just before the
daemon was killed, destroyed and built again with its UUID while the daemon was down. These
pin the daemon's side of it on both twins; the oracle's is in tests/unit/test_chaos_oracle.py.
"""

from __future__ import annotations

import json

from scannerhelpers import NOW, batch, primed, rec, summary

from mux import reference


def frames(events) -> list[dict]:
    return [json.loads(e.frame()) for e in events]


def test_a_rebirth_behind_a_table_replayed_from_the_journal_is_not_seen(impl):
    """Announced after the last checkpoint, the guest comes back from the journal with
    cpu_time 0 (no record can make a false event of it): whatever cpu_time the rebirth
    was built with, the first scan after the restart takes it for the one announced."""
    table = primed(impl, rec(0), seq=10, now=NOW)
    checkpoint = table.dump()
    born = table.diff(*batch(rec(0), rec(872, cpu=4_000_000)), NOW + 1)
    assert summary(born) == [("new", 872, None)]
    # Killed; meanwhile 872 is destroyed and built again with its UUID (a boot cpu_time
    # below the one the daemon saw: a table that still had it would tell them apart).
    restored = impl.DomainTable.load(reference.replay(checkpoint, frames(born)))
    rebirth = rec(872, cpu=1_500_000)
    assert restored.diff(*batch(rec(0), rebirth), NOW + 5) == []
    gone = restored.diff(*batch(rec(0)), NOW + 30)
    assert summary(gone) == [("death", 872, None), ("released", 872, None)]
    assert table.diff(*batch(rec(0), rebirth), NOW + 5) != []  # the live table sees it


def test_a_rebirth_between_two_scans_of_a_live_table_needs_its_cpu_time_behind(impl):
    """A stopped daemon, or one whose firings were lost with xenstored: the records of the
    two scans differ only in cpu_time, which tells the rebirth only when it went back."""
    for cpu, seen in ((3_000_000, True), (6_000_000, False)):
        table = primed(impl, rec(0), rec(872, cpu=4_000_000), now=NOW)
        events = table.diff(*batch(rec(0), rec(872, cpu=cpu)), NOW + 3)
        expected = [("death", 872, None), ("released", 872, None), ("new", 872, None)]
        assert summary(events) == (expected if seen else [])
