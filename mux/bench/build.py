"""Compile the harness's C programs (shipped inside the package) with the system's cc.

The monitor reads the simulated host's table through mux/sim/shm_layout.h, found on the
include path the package ships it in. The libxl monitor links Debian's libxenlight and
exports its wrapper of xc_domain_getinfolist, so that libxenlight's calls reach it.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess

from mux.sim.shm import LAYOUT_INCLUDE_DIR

# program -> extra link flags
PROGRAMS = {
    "monitor": ["-lxenstore"],
    "subscriber": [],
    "libxl_monitor": [
        "-lxenlight",
        "-lxentoollog",
        "-ldl",
        "-Wl,--export-dynamic-symbol=xc_domain_getinfolist",
    ],
}
# program -> what to install when it does not build, and how to do without it
NEEDS = {
    "monitor": (
        ("xenstore.h", "lxenstore"),
        "the monitors model needs Debian's libxenstore and its headers: apt-get install "
        "libxen-dev (or run with --models mux)",
    ),
    "libxl_monitor": (
        ("libxl.h", "lxenlight", "lxentoollog"),
        "the libxl model needs Debian's libxenlight and its headers: apt-get install "
        "libxen-dev xen-utils-4.17 (or run without libxl in --models)",
    ),
}
CFLAGS = ["-O2", "-g", "-std=gnu11", "-Wall", "-Wextra"]


class BuildError(RuntimeError):
    pass


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise BuildError("no C compiler: install one (Debian: apt-get install build-essential)")
    return cc


def build(outdir: str, programs: tuple[str, ...] = tuple(PROGRAMS)) -> dict[str, str]:
    """Compile each program into `outdir`; returns name -> path of the executable."""
    cc = compiler()
    out: dict[str, str] = {}
    package = importlib.resources.files("mux.bench")
    for name in programs:
        source = package / f"{name}.c"
        exe = os.path.join(outdir, name)
        with importlib.resources.as_file(source) as path:
            argv = [
                cc,
                *CFLAGS,
                "-I",
                str(LAYOUT_INCLUDE_DIR),
                "-o",
                exe,
                str(path),
                *PROGRAMS[name],
            ]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            hint = ""
            words, need = NEEDS.get(name, ((), ""))
            if any(w in proc.stderr for w in words):
                hint = f"\n{need}"
            raise BuildError(f"compiling {name}.c failed:\n{proc.stderr.strip()}{hint}")
        out[name] = exe
    return out
