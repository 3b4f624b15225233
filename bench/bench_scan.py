"""Micro-benchmarks of the scanner's diff: mux._fast against mux.reference and a plain C loop.

Run:  .venv/bin/python -m pytest bench/bench_scan.py --benchmark-only
A table of ns per domain and the ratios is printed at the end (see bench/conftest.py).

Cases, at 1,000 / 4,000 / 32,000 domains:
- unchanged: the table already holds every domain as the batch says (the common firing);
- changed_1pct: 1% of the domains shut down since the last scan (table reset every round);
- mass_shutdown: every domain shut down since the last scan (table reset every round);
- mass_shutdown_framed: the same, plus each event's frame() (what the fan-out needs);
- floor: `mux.bench._floor.floor_scan`, a plain C loop reading the same fields of the same
  records.
"""

from __future__ import annotations

import random

import pytest

from mux import _fast, reference
from mux.bench import _floor
from mux.records import (
    DOMINF_BLOCKED,
    DOMINF_HVM_GUEST,
    SHUTDOWN_POWEROFF,
    SHUTDOWN_SUSPEND,
    DomainRecord,
    make_flags,
    pack_all,
)

SIZES = [1000, 4000, 32000]
IMPLS = {"fast": _fast, "reference": reference}
NOW = 1764090000.0


def host(n: int, seed: int = 1) -> list[DomainRecord]:
    """dom0 plus n-1 guests, as getinfolist returns them (sorted by domid)."""
    rng = random.Random(seed)
    base = DOMINF_BLOCKED | DOMINF_HVM_GUEST
    return [
        DomainRecord(d, make_flags(base=base), rng.randbytes(16), rng.randrange(10**12))
        for d in range(n)
    ]


def shut_down(records, every: int, reason: int) -> bytes:
    out = []
    for r in records:
        if r.domid % every == every - 1:
            flags = make_flags(shutdown_reason=reason, base=r.flags & 0xFFFF)
            r = DomainRecord(r.domid, flags, r.handle, r.cpu_time + 1000)
        out.append(r)
    return pack_all(out)


def rounds(impl: str, n: int) -> int:
    """Enough rounds for a stable median without minutes of pure-Python reference."""
    return 200 if impl == "fast" else max(3, 40_000 // n)


def record(results, benchmark, case, impl, n):
    """Keep (median, min) for the summary table of bench/conftest.py."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        results[(case, impl, n)] = (stats.stats.median, stats.stats.min)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_unchanged(benchmark, scan_results, impl, n):
    benchmark.group = f"unchanged-{n}"
    benchmark.extra_info["domains"] = n
    records = host(n)
    buf = pack_all(records)
    table = IMPLS[impl].DomainTable()
    table.prime(buf, n)
    events = benchmark(table.diff, buf, n, NOW)
    assert events == []
    record(scan_results, benchmark, "unchanged", impl, n)


def _reset_and_diff(benchmark, impl, n, before: bytes, after: bytes, framed=False):
    module = IMPLS[impl]

    def setup():
        table = module.DomainTable()
        table.prime(before, n)
        return (table,), {}

    if framed:

        def run(table):
            events = table.diff(after, n, NOW)
            for e in events:
                e.frame()
            return events
    else:

        def run(table):
            return table.diff(after, n, NOW)

    return benchmark.pedantic(run, setup=setup, rounds=rounds(impl, n), warmup_rounds=1)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_changed_1pct(benchmark, scan_results, impl, n):
    benchmark.group = f"changed_1pct-{n}"
    records = host(n)
    events = _reset_and_diff(
        benchmark, impl, n, pack_all(records), shut_down(records, 100, SHUTDOWN_SUSPEND)
    )
    assert len(events) == n // 100 and {e.kind for e in events} == {"shutdown"}
    record(scan_results, benchmark, "changed_1pct", impl, n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_mass_shutdown(benchmark, scan_results, impl, n):
    benchmark.group = f"mass_shutdown-{n}"
    records = host(n)
    events = _reset_and_diff(
        benchmark, impl, n, pack_all(records), shut_down(records, 1, SHUTDOWN_POWEROFF)
    )
    assert len(events) == n
    record(scan_results, benchmark, "mass_shutdown", impl, n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_mass_shutdown_framed(benchmark, scan_results, impl, n):
    benchmark.group = f"mass_shutdown_framed-{n}"
    records = host(n)
    events = _reset_and_diff(
        benchmark,
        impl,
        n,
        pack_all(records),
        shut_down(records, 1, SHUTDOWN_POWEROFF),
        framed=True,
    )
    assert len(events) == n
    record(scan_results, benchmark, "mass_shutdown_framed", impl, n)


@pytest.mark.parametrize("n", SIZES)
def test_floor(benchmark, scan_results, n):
    """The plain C loop over the same records: what the unchanged scan is measured against."""
    benchmark.group = f"unchanged-{n}"
    buf = pack_all(host(n))
    assert benchmark(_floor.floor_scan, buf, n) != 0
    record(scan_results, benchmark, "unchanged", "floor", n)
