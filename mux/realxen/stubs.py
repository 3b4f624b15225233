"""Building the hypervisor stand-ins (the C sources in `xenstub/`, shipped with the package)
with the system's C compiler, into a directory the caller owns (never into the package).

- `hvstub.so`: the LD_PRELOAD hypervisor under which Debian's xenstored/oxenstored run;
- `libxenctrl_stub.so`: a stand-in libxenctrl for `xenmux serve --xenctrl-lib`.

Both serve the domain list from a table laid out as `mux/sim/shm_layout.h` declares it, and
include that header.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

from mux.realxen.errors import RealXenError
from mux.sim.shm import LAYOUT_INCLUDE_DIR

SOURCES = Path(__file__).resolve().parent / "xenstub"
XENCTRL_H = Path("/usr/include/xenctrl.h")
CFLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-std=gnu11", "-fPIC", "-fvisibility=hidden"]
# library -> (its sources in xenstub/, its link flags)
LIBRARIES = {
    "hvstub.so": (("hvstub.c", "hvpaths.c", "shmtable.c"), ["-ldl", "-lpthread"]),
    "libxenctrl_stub.so": (("libxenctrl_stub.c", "shmtable.c"), ["-lpthread"]),
}


@dataclasses.dataclass(frozen=True)
class StubLibs:
    hvstub: Path  # LD_PRELOAD for xenstored / oxenstored
    xenctrl: Path  # libxenctrl stand-in for `xenmux serve --xenctrl-lib`


def build_stubs(out: Path) -> StubLibs:
    """Compile both stand-ins into `out` (created if needed). RealXenError says what is
    missing (a C compiler, Debian's libxen-dev) or why the compiler failed."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RealXenError("no C compiler: install build-essential")
    if not XENCTRL_H.exists():
        raise RealXenError(f"{XENCTRL_H} is missing: install libxen-dev (make test does)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for library, (sources, ldflags) in LIBRARIES.items():
        argv = [
            cc,
            *CFLAGS,
            "-shared",
            "-I",
            str(LAYOUT_INCLUDE_DIR),
            "-o",
            str(out / library),
            *(str(SOURCES / name) for name in sources),
            *ldflags,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RealXenError(f"building the stand-in {library} failed:\n{proc.stderr.strip()}")
    return StubLibs(out / "hvstub.so", out / "libxenctrl_stub.so")
