"""The sim's xenstored keeps C xenstored 4.17's transaction rules between two connections.

The cases and the real server's answers are in tests/xsconformance.py (TX_CASES,
TX_EXPECTED); tests/real_xen/test_real_xenstored.py holds Debian's real C xenstored to
the same answers, so a case that passes here and there agrees with the real server.
"""

from __future__ import annotations

import shutil

import pytest
from simhelpers import short_dir, start_sim
from xsconformance import TX_CASES, TX_EXPECTED, run_tx_case

from mux.realxen import XsConnection


class _Target:
    def __init__(self, path: str) -> None:
        self.path = path

    def connect(self) -> XsConnection:
        return XsConnection(self.path)


@pytest.fixture(scope="module")
def sim_target(tmp_path_factory):
    """One sim for every case (each case cleans up the nodes it made)."""
    base = tmp_path_factory.mktemp("txsim")
    directory = short_dir(base, "s")
    handle = start_sim(directory, domains=0)
    try:
        yield _Target(handle.xenstored)
    finally:
        handle.stop()
        if not str(directory).startswith(str(base)):
            shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("case", sorted(TX_CASES))
def test_transaction_case_as_c_xenstored(sim_target, case):
    assert run_tx_case(sim_target, TX_CASES[case]) == TX_EXPECTED[case]
