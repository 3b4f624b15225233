"""What tests/act's fixtures and tests share: the command line of an act on a sim.

A module of its own, not tests/act/conftest.py: a test that imported from `conftest` got
whichever conftest module pytest had loaded first, so tests/act and tests/pool could not
be collected in one run."""

from __future__ import annotations

from pathlib import Path

from simhelpers import sim_command


def act_command(sim_dir: Path, sock: str, *extra: str) -> list[str]:
    return [
        *sim_command(),
        "act",
        "--toolstack",
        "sim",
        "--sim-dir",
        str(sim_dir),
        "--socket",
        sock,
        *extra,
    ]
