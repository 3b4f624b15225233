"""Where domain records come from: backends found by name.

`xenctrl` (the real hypercall through libxenctrl) and `sim` (the simulated host's table) are
the entry points of the group `xenmux.backends` (pyproject.toml); `open_backend` looks the
name up there, so the daemon never imports a backend's module, the simulator's least of all.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points

from mux.hypervisor.base import Backend, Capabilities, HypervisorError

PRIVCMD = "/dev/xen/privcmd"
ENTRY_POINT_GROUP = "xenmux.backends"

__all__ = [
    "Backend",
    "Capabilities",
    "HypervisorError",
    "NotADom0Error",
    "backend_names",
    "open_backend",
]


class NotADom0Error(RuntimeError):
    pass


def backend_names() -> list[str]:
    """The backends this installation offers."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def open_backend(
    name: str, *, sim_dir: str | None = None, xenctrl_lib: str | None = None
) -> Backend:
    """Open the backend named on the command line (`auto`, or one of `backend_names()`)."""
    if name == "auto":
        if os.path.exists(PRIVCMD):
            name = "xenctrl"
        elif sim_dir:
            name = "sim"
        else:
            raise NotADom0Error(
                f"this is not a Xen dom0 ({PRIVCMD} is missing): to run against the simulator, "
                "start `xenmux sim --dir DIR --domains N` and use `xenmux serve --backend sim "
                "--sim-dir DIR`"
            )
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        names = ", ".join(["auto", *backend_names()])
        raise ValueError(f"unknown backend {name!r}: use {names}")
    factory = next(iter(found)).load()
    return factory(sim_dir=sim_dir, xenctrl_lib=xenctrl_lib)
