"""Where the Debian programs the tests and the bench run against (the "peers") are.

Support code: the product never imports it. The peers are Debian's real C xenstored and
oxenstored 4.17, Prometheus with promtool, and nats-server. Their packages would start or
enable a service when installed (and on a dom0, xen-utils' maintainer scripts start the
host's Xen daemons), so they are never installed for the tests: a peer is

- the system's own file, there when its package is installed (it is used as it is); else
- the same file inside a cache where the package was extracted with `apt-get download` +
  `dpkg-deb -x` (no maintainer script runs, nothing is registered with dpkg or systemd).
  The cache is `.cache/deb/root` in the checkout, or `$XENMUX_DEB_CACHE`. A program from
  the cache is run with LD_LIBRARY_PATH into the cache's library directories, where the
  library packages it needs were extracted too (those the system lacks).

`XENMUX_DEB_IGNORE_SYSTEM=1` makes every peer come from the cache, to test that path on a
machine that has the packages installed.

    python -m mux.debpeers fetch     # what `make deb-peers` runs: extract what is missing
    python -m mux.debpeers where     # where each peer is found

    peer = locate("promtool")
    subprocess.run([str(peer.path), "check", "metrics"], env=peer.environ(), ...)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = CHECKOUT / ".cache" / "deb" / "root"
CACHE_ENV = "XENMUX_DEB_CACHE"
IGNORE_SYSTEM_ENV = "XENMUX_DEB_IGNORE_SYSTEM"
# Under the cache's root: one file per extracted package, holding its version.
MARKERS = ".debpeers"


@dataclasses.dataclass(frozen=True)
class Package:
    name: str
    # Extracted with it when the system lacks them: the library packages its programs load
    # (beyond what every Debian system has), and what the tests read of its kin.
    companions: tuple[str, ...] = ()


PACKAGES: dict[str, Package] = {
    p.name: p
    for p in (
        Package(
            "xen-utils-4.17",
            (
                "libxenmisc4.17",  # libxenctrl.so.4.17, libxenguest.so.4.17
                "libxenstore4",
                "libxencall1",
                "libxenevtchn1",
                "libxengnttab1",
                "libxenforeignmemory1",
                "libxendevicemodel1",
                "libxentoolcore1",
                "libxentoollog1",
                # /etc/init.d/xen, which starts xenstored: what packaging/xenmux.service
                # orders itself after (tests/e2e/test_packaging.py reads it).
                "xen-utils-common",
            ),
        ),
        Package("prometheus"),
        Package("nats-server"),
    )
}

# program -> (its package, where the package installs it)
PROGRAMS: dict[str, tuple[str, str]] = {
    "xenstored": ("xen-utils-4.17", "/usr/lib/xen-4.17/bin/xenstored"),
    "oxenstored": ("xen-utils-4.17", "/usr/lib/xen-4.17/bin/oxenstored"),
    "prometheus": ("prometheus", "/usr/bin/prometheus"),
    "promtool": ("prometheus", "/usr/bin/promtool"),
    "nats-server": ("nats-server", "/usr/sbin/nats-server"),
}


class PeerMissing(Exception):
    """A peer is neither installed nor in the cache; the message says what to run."""


class FetchError(Exception):
    """`fetch` could not download or extract a package; the message says why."""


@dataclasses.dataclass(frozen=True)
class Located:
    program: str
    path: Path
    source: str  # "system" or "cache"
    library_path: tuple[str, ...] = ()  # directories for LD_LIBRARY_PATH (cache only)

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with what the program needs to
        find its libraries."""
        env = dict(os.environ if base is None else base)
        if self.library_path:
            old = env.get("LD_LIBRARY_PATH")
            env["LD_LIBRARY_PATH"] = ":".join([*self.library_path, *([old] if old else [])])
        return env


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def ignore_system() -> bool:
    return os.environ.get(IGNORE_SYSTEM_ENV, "") not in ("", "0")


def library_dirs(root: Path) -> tuple[str, ...]:
    """The cache's directories that hold shared libraries (Debian's multiarch layout)."""
    triplet = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    dirs = [root / base / triplet for base in ("lib", "usr/lib")]
    return tuple(str(d) for d in dirs if d.is_dir())


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _program(program: str) -> tuple[str, str]:
    try:
        return PROGRAMS[program]
    except KeyError:
        raise ValueError(f"unknown Debian peer {program!r}: one of {', '.join(PROGRAMS)}") from None


def locate(program: str) -> Located:
    """Where `program` is: the system's copy, else the cache's. PeerMissing if neither."""
    package, system_path = _program(program)
    if not ignore_system() and _executable(Path(system_path)):
        return Located(program, Path(system_path), "system")
    root = cache_root()
    cached = root / system_path.lstrip("/")
    if _executable(cached):
        return Located(program, cached, "cache", library_dirs(root))
    places = f"in the cache {root}"
    if not ignore_system():
        places = f"at {system_path} nor {places}"
    raise PeerMissing(
        f"{program} (Debian package {package}) is not {places}: run `make deb-peers`, which "
        f"extracts it there without installing the package"
    )


def package_file(package: str, path: str) -> Path | None:
    """`path` as `package` installs it: the system's when the package is installed, else
    the cache's (with `XENMUX_DEB_IGNORE_SYSTEM`, the cache's only); None if neither."""
    if not ignore_system() and installed(package) and Path(path).exists():
        return Path(path)
    cached = cache_root() / path.lstrip("/")
    return cached if extracted(package, cache_root()) and cached.exists() else None


def where(program: str) -> Path:
    """The path `locate` finds, or the system's path when the peer is nowhere (for messages
    and `.exists()` checks)."""
    try:
        return locate(program).path
    except PeerMissing:
        return Path(_program(program)[1])


# -- fetching ---------------------------------------------------------------------------------


def installed(package: str) -> bool:
    """Whether dpkg has `package` installed (a machine without dpkg has nothing installed)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        return False
    return out.returncode == 0 and out.stdout.strip().endswith("ok installed")


def _run(argv: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise FetchError(
            f"{argv[0]} is missing: fetching Debian peers needs apt-get and dpkg-deb (Debian)"
        ) from None


def _download(package: str, into: Path) -> Path:
    """`apt-get download`, once more after `apt-get update` if the lists are stale (root only)."""
    argv = ["apt-get", "download", "-q", package]
    if os.geteuid() == 0:
        # The download goes into a private directory that apt's sandbox user cannot write.
        argv[1:1] = ["-o", "APT::Sandbox::User=root"]
    out = _run(argv, cwd=into)
    if out.returncode != 0 and os.geteuid() == 0:
        _run(["apt-get", "update", "-q"])
        out = _run(argv, cwd=into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if out.returncode != 0 or not debs:
        hint = "" if os.geteuid() == 0 else " (if the package lists are stale: apt-get update)"
        raise FetchError(f"apt-get download {package} failed{hint}: {out.stderr.strip()}")
    return debs[-1]


def _extract(deb: Path, root: Path, package: str) -> str:
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
    root.mkdir(parents=True, exist_ok=True)
    if root == DEFAULT_CACHE:
        # As pytest does for its cache: the checkout's git never lists what is extracted.
        (CHECKOUT / ".cache" / ".gitignore").write_text("# made by mux/debpeers.py\n*\n")
    out = _run(["dpkg-deb", "-x", str(deb), str(root)])
    if out.returncode != 0:
        raise FetchError(f"dpkg-deb -x {deb.name} failed: {out.stderr.strip()}")
    markers = root / MARKERS
    markers.mkdir(parents=True, exist_ok=True)
    (markers / package).write_text(version + "\n")
    return version


def extracted(package: str, root: Path) -> str | None:
    """The version of `package` extracted into `root`, or None."""
    marker = root / MARKERS / package
    return marker.read_text().strip() if marker.is_file() else None


def _unresolved(program: Path, root: Path) -> list[str]:
    """The libraries `program` would not find, run with the cache's LD_LIBRARY_PATH."""
    located = Located(program.name, program, "cache", library_dirs(root))
    out = subprocess.run(
        ["ldd", str(program)], capture_output=True, text=True, env=located.environ(), timeout=60
    )
    return [line.split()[0] for line in out.stdout.splitlines() if "not found" in line]


def fetch(
    packages: Sequence[str] | None = None,
    root: Path | None = None,
    ignore_installed: bool = False,
    say=print,
) -> None:
    """Extract into `root` each of `packages` (default: all peers) and its companions,
    unless installed (or `ignore_installed`) or already extracted. FetchError if a download
    or an extraction fails, or a program would not find its libraries."""
    root = Path(root) if root is not None else cache_root()
    names = list(packages) if packages else list(PACKAGES)
    for name in names:
        if name not in PACKAGES:
            raise FetchError(f"unknown peer package {name!r}: one of {', '.join(PACKAGES)}")
    for name in names:
        package = PACKAGES[name]
        if not ignore_installed and installed(name):
            say(f"{name}: installed, used as it is")
            continue
        for member in (name, *package.companions):
            if not ignore_installed and member != name and installed(member):
                continue
            version = extracted(member, root)
            if version is None:
                with tempfile.TemporaryDirectory(prefix="xenmux-deb-") as tmp:
                    version = _extract(_download(member, Path(tmp)), root, member)
                say(f"{member} {version}: extracted into {root}")
            elif member == name:
                say(f"{name} {version}: in {root}")
        for program, (owner, path) in PROGRAMS.items():
            if owner != name:
                continue
            binary = root / path.lstrip("/")
            if not _executable(binary):
                raise FetchError(f"{name} was extracted but holds no {path}")
            missing = _unresolved(binary, root)
            if missing:
                raise FetchError(f"{program} from the cache would not find {', '.join(missing)}")


# -- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mux.debpeers",
        description="Debian peers of the tests, used without installing their packages",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="extract the peers' packages the system lacks")
    f.add_argument("packages", nargs="*", help=f"default: {' '.join(PACKAGES)}")
    f.add_argument("--root", type=Path, help=f"default: ${CACHE_ENV} or {DEFAULT_CACHE}")
    f.add_argument("--ignore-installed", action="store_true", help="extract even what is installed")
    sub.add_parser("where", help="where each peer is found")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch(args.packages, args.root, args.ignore_installed)
        else:
            for program in PROGRAMS:
                try:
                    peer = locate(program)
                    print(f"{program}: {peer.path} ({peer.source})")
                except PeerMissing as exc:
                    print(f"{program}: {exc}")
    except FetchError as exc:
        print(f"debpeers: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
