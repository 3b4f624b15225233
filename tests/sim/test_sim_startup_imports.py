"""A sim process imports only what it serves with: `xenmux bench` starts a sim for every run,
and each module a sim never uses is start-up paid again and again (docs/sim.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Modules a sim serving the harness never uses: the churn, mux.act's policy (only guest actions
# and create settings need its names), the daemon's backend lookup (mux.hypervisor and its
# importlib.metadata entry points) and the sim backend the daemon opens.
NOT_AT_START = (
    "mux.sim.churn",
    "mux.sim.ctl",
    "mux.act.policy",
    "mux.sim.backend",
    "mux.hypervisor",
    "importlib.metadata",
)


def _imported_by(statement: str) -> list[str]:
    probe = (
        f"import json, sys; {statement}; "
        f"print(json.dumps([m for m in {list(NOT_AT_START)!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout)


def test_the_sim_runtime_leaves_unused_modules_unimported():
    assert _imported_by("import mux.sim.runtime") == []


def test_create_settings_still_find_the_action_names():
    from mux.sim.guests import check_settings
    from mux.sim.host import SimError

    assert check_settings({"on_poweroff": "destroy"}) == {"on_poweroff": "destroy"}
    with pytest.raises(SimError, match="is not an action"):
        check_settings({"on_poweroff": "explode"})
