"""Where domain records come from: the real hypercall (`xenctrl`) or the simulated host."""

from __future__ import annotations

import os

from mux.hypervisor.base import Backend, HypervisorError, ScanBuffer

PRIVCMD = "/dev/xen/privcmd"

__all__ = ["Backend", "HypervisorError", "NotADom0Error", "ScanBuffer", "open_backend"]


class NotADom0Error(RuntimeError):
    pass


def open_backend(
    name: str, *, sim_dir: str | None = None, xenctrl_lib: str | None = None
) -> Backend:
    """Open the backend named on the command line (`auto`, `xenctrl` or `sim`)."""
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
    if name == "sim":
        if not sim_dir:
            raise ValueError("--backend sim needs --sim-dir DIR (the directory of `xenmux sim`)")
        from mux.hypervisor.sim import SimBackend

        return SimBackend(sim_dir)
    if name == "xenctrl":
        from mux.hypervisor.xenctrl import XenctrlBackend

        return XenctrlBackend(xenctrl_lib)
    raise ValueError(f"unknown backend {name!r}: use auto, xenctrl or sim")
