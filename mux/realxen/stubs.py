"""Building the hypervisor stand-ins (the C sources in `xenstub/`, shipped with the package)
with the system's C compiler, into a directory the caller owns (never into the package).

- `hvstub.so`: the LD_PRELOAD hypervisor under which Debian's xenstored/oxenstored run;
- `libxenctrl_stub.so`: a stand-in libxenctrl for `xenmux serve --xenctrl-lib`;
- `build_xen_stubs(DIR, VERSION)`: that stand-in as another Xen release's libxenctrl
  (`xc_version`, `xc_domain_getinfo_single` from 4.18), with a stand-in
  `libxenmanage.so.1` beside it from 4.21 (the arity of `xenmanage_get_domain_info` that
  version has: docs/xen-versions.md).

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


# The Xen a variant stands in for -> (XEN_SUBVERSION, XEN_EXTRAVERSION, the arity of its
# libxenmanage's xenmanage_get_domain_info, or None: no libxenmanage). "4.21-unstable" is a
# master build from before the `caps` argument (xen.git e995055d69..d885b9daf4).
XEN_STUB_VERSIONS: dict[str, tuple[int, str, int | None]] = {
    "4.17": (17, ".0", None),
    "4.18": (18, ".0", None),
    "4.20": (20, ".0", None),
    "4.21": (21, ".0", 5),
    "4.22": (22, ".0", 5),
    "4.21-unstable": (21, "-unstable", 4),
}


# libxenmanage.map of xen.git: every symbol under the one node VERS_1.0 (written next to the
# library at build time, so that an installed package needs no file besides the C sources).
XENMANAGE_VERSION_SCRIPT = """VERS_1.0 {
	global:
		xenmanage_open;
		xenmanage_close;
		xenmanage_get_domain_info;
		xenmanage_poll_changed_domain;
		xenmux_manage_calls;
	local: *;
};
"""


@dataclasses.dataclass(frozen=True)
class XenStubs:
    xenctrl: Path  # pass as --xenctrl-lib; libxenmanage.so.1 (if any) is beside it
    xenmanage: Path | None


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RealXenError("no C compiler: install build-essential")
    if not XENCTRL_H.exists():
        raise RealXenError(f"{XENCTRL_H} is missing: install libxen-dev (make test does)")
    return cc


def _compile(cc: str, target: Path, sources: tuple[str, ...], flags: list[str]) -> None:
    argv = [
        cc,
        *CFLAGS,
        "-shared",
        "-I",
        str(LAYOUT_INCLUDE_DIR),
        "-o",
        str(target),
        *(str(SOURCES / name) for name in sources),
        *flags,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RealXenError(f"building the stand-in {target.name} failed:\n{proc.stderr.strip()}")


def build_xen_stubs(out: Path, version: str) -> XenStubs:
    """The libxenctrl stand-in as Xen `version`'s (a key of XEN_STUB_VERSIONS), in
    `out/xen-VERSION/`, with libxenmanage.so.1 beside it where that Xen has one."""
    if version not in XEN_STUB_VERSIONS:
        raise RealXenError(f"no stand-in for Xen {version}: use one of {list(XEN_STUB_VERSIONS)}")
    minor, extra, arity = XEN_STUB_VERSIONS[version]
    cc = _compiler()
    where = Path(out) / f"xen-{version}"
    where.mkdir(parents=True, exist_ok=True)
    xenctrl = where / "libxenctrl_stub.so"
    defines = [f"-DXENMUX_STUB_XEN_MINOR={minor}", f'-DXENMUX_STUB_XEN_EXTRA="{extra}"']
    sources, ldflags = LIBRARIES["libxenctrl_stub.so"]
    _compile(cc, xenctrl, sources, [*defines, *ldflags])
    if arity is None:
        return XenStubs(xenctrl, None)
    manage = where / "libxenmanage.so.1"
    script = where / "libxenmanage.map"
    script.write_text(XENMANAGE_VERSION_SCRIPT)
    _compile(
        cc,
        manage,
        ("libxenmanage_stub.c", "shmtable.c"),
        [
            f"-DXENMUX_MANAGE_ARITY={arity}",
            "-Wl,-soname,libxenmanage.so.1",
            f"-Wl,--version-script,{script}",
            "-lpthread",
        ],
    )
    return XenStubs(xenctrl, manage)


def build_stubs(out: Path) -> StubLibs:
    """Compile both stand-ins into `out` (created if needed). RealXenError says what is
    missing (a C compiler, Debian's libxen-dev) or why the compiler failed."""
    cc = _compiler()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for library, (sources, ldflags) in LIBRARIES.items():
        _compile(cc, out / library, sources, ldflags)
    return StubLibs(out / "hvstub.so", out / "libxenctrl_stub.so")
