"""Where a simulated host keeps its files: one function names them all.

Every part of the simulator, the sim backend, the demo, the bench and the tests find a
simulated host's files through `sim_paths(DIR)`; no other module spells a file name.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

# DIR/hypercall-faults holds, at offset 0, how many failures of the domain-info call the
# simulated host has armed so far (`sim-ctl fail-hypercalls`); the sim writes it, the sim
# backend reads it.
ARMED = struct.Struct("<Q")


@dataclass(frozen=True)
class SimPaths:
    directory: str
    shm: str  # the hypervisor's domain table (docs/internals.md)
    xenstored: str  # the sim's xenstored socket; its existence means the sim is ready
    control: str  # `xenmux sim-ctl`'s socket
    changes: str  # the harness's binary change path (mux/sim/changes.py)
    state: str  # the daemon's default --state-dir for this simulated host
    truth: str  # the host's ground-truth log of lifecycle steps (docs/sim.md)
    hypercall_faults: str  # failures of the domain-info call the sim has armed (docs/sim.md)
    act_state: str  # `xenmux act --toolstack sim`'s default --state-dir
    toolstack_log: str  # what the sim's toolstack did, one JSON line per operation


def sim_paths(directory: str | os.PathLike[str]) -> SimPaths:
    d = os.fspath(directory)
    return SimPaths(
        directory=d,
        shm=os.path.join(d, "domains.shm"),
        xenstored=os.path.join(d, "xenstored.sock"),
        control=os.path.join(d, "control.sock"),
        changes=os.path.join(d, "changes.sock"),
        state=os.path.join(d, "xenmux-state"),
        truth=os.path.join(d, "truth.jsonl"),
        hypercall_faults=os.path.join(d, "hypercall-faults"),
        act_state=os.path.join(d, "act-state"),
        toolstack_log=os.path.join(d, "toolstack.log"),
    )
