"""Records, batches and tables for the scanner twins' tests (tests/unit/test_scanner*.py).

IMPLS are the twins, mux._fast and mux.reference: tests/unit/conftest.py's `impl` fixture
runs a test on each.
"""

from __future__ import annotations

import uuid

import pytest

from mux import _fast, reference
from mux.records import DOMINF_BLOCKED, DomainRecord, make_flags, pack_all

IMPLS = [pytest.param(_fast, id="fast"), pytest.param(reference, id="reference")]
NOW = 1764090000.123456


def handle(n: int) -> bytes:
    return uuid.UUID(int=(0x1B4E28BA << 96) | n).bytes


def rec(domid, *, reason=None, dying=False, inc=0, cpu=0, base=DOMINF_BLOCKED):
    """A record of `domid`; `inc` picks the incarnation (another UUID)."""
    flags = make_flags(shutdown_reason=reason, dying=dying, base=base)
    return DomainRecord(domid, flags, handle(domid * 1000 + inc), cpu)


def batch(*records):
    return pack_all(records), len(records)


def uuid_of(domid, inc=0):
    return str(uuid.UUID(bytes=handle(domid * 1000 + inc)))


def primed(impl, *records, seq=0, now=None, **table_args):
    table = impl.DomainTable(seq=seq, **table_args)
    table.prime(*batch(*records), now)
    return table


def summary(events):
    return [(e.kind, e.domid, e.reason) for e in events]
