"""Compile the harness's C programs (shipped inside the package) with the system's cc.

The monitor reads the simulated host's table through mux/sim/shm_layout.h, found on the
include path the package ships it in. The libxl monitor links Debian's libxenlight (where
mux.debpeers finds it: installed, or extracted by `make deb-peers`) and exports its wrapper of
xc_domain_getinfolist, so that libxenlight's calls reach it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

from mux import debpeers
from mux.sim.shm import LAYOUT_INCLUDE_DIR

# program -> extra link flags
PROGRAMS = {
    "monitor": ["-lxenstore"],
    "subscriber": [],
    "probe": [],
    "libxl_monitor": [
        # and libxenlight itself, where libxenlight() finds it
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
# libxenlight's package (libxen-dev depends on it) and where it installs the library
LIBXENLIGHT_PACKAGE = "libxenmisc4.17"
LIBXENLIGHT = "/usr/lib/{}/libxenlight.so.4.17"


class BuildError(RuntimeError):
    pass


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise BuildError("no C compiler: install one (Debian: apt-get install build-essential)")
    return cc


@functools.cache
def libxenlight() -> debpeers.Located:
    """Debian's libxenlight 4.17: the system's, else the one `make deb-peers` extracted (run
    with the cache's library directories). BuildError says what to install."""
    path = LIBXENLIGHT.format(sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu")
    found = debpeers.package_file(LIBXENLIGHT_PACKAGE, path)
    if found is None:
        raise BuildError(
            f"the libxl model needs Debian's libxenlight ({path}, package "
            f"{LIBXENLIGHT_PACKAGE}): apt-get install libxen-dev, or run without libxl in --models"
        )
    if found == Path(path):
        return debpeers.Located("libxenlight", found, "system")
    return debpeers.Located(
        "libxenlight", found, "cache", debpeers.library_dirs(debpeers.cache_root())
    )


def _link_flags(name: str) -> list[str]:
    if name != "libxl_monitor":
        return PROGRAMS[name]
    lib = libxenlight()
    # The file itself (its soname is what the executable needs), and its directories for
    # the libraries it brings.
    dirs = [flag for d in lib.library_path for flag in (f"-L{d}", f"-Wl,-rpath-link,{d}")]
    return [str(lib.path), *dirs, *PROGRAMS[name]]


def build(outdir: str, programs: tuple[str, ...] = tuple(PROGRAMS)) -> dict[str, str]:
    """Compile each program into `outdir`; returns name -> path of the executable."""
    out, failed = build_each(outdir, programs)
    if failed:
        raise next(iter(failed.values()))
    return out


def build_each(
    outdir: str, programs: tuple[str, ...]
) -> tuple[dict[str, str], dict[str, BuildError]]:
    """Compile the programs side by side (a compiler each: they are independent, and the
    harness waits for all of them before its first run); (name -> executable, name -> why
    it did not build)."""
    cc = compiler()
    out: dict[str, str] = {}
    failed: dict[str, BuildError] = {}
    package = importlib.resources.files("mux.bench")
    with contextlib.ExitStack() as stack:
        running = []
        for name in programs:
            try:
                flags = _link_flags(name)
            except BuildError as exc:
                failed[name] = exc
                continue
            path = stack.enter_context(importlib.resources.as_file(package / f"{name}.c"))
            exe = os.path.join(outdir, name)
            argv = [cc, *CFLAGS, "-I", str(LAYOUT_INCLUDE_DIR), "-o", exe, str(path), *flags]
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            stack.callback(_reap, proc)
            running.append((name, exe, proc))
        for name, exe, proc in running:
            try:
                _, stderr = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                failed[name] = BuildError(f"compiling {name}.c took over 120 s")
                continue
            if proc.returncode != 0:
                hint = ""
                words, need = NEEDS.get(name, ((), ""))
                if any(w in stderr for w in words):
                    hint = f"\n{need}"
                failed[name] = BuildError(f"compiling {name}.c failed:\n{stderr.strip()}{hint}")
                continue
            out[name] = exe
    return out, failed


def _reap(proc: subprocess.Popen) -> None:
    """A compiler still running when the build is left (an error, Ctrl-C) is stopped."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
