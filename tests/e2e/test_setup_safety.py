"""`make run` and `make test` are safe on a dom0 (docs/operations.md, "What make run and make
test do to the machine"): they never stop, start, enable or disable a service of the host,
apt-get installs only packages that ship none, and the peers whose packages would install
one are extracted into a cache (mux/debpeers.py) and run from there.

The Makefile's commands are read (`make -n`), and run against a bare bookworm made of
stand-ins on PATH: dpkg knows no package, apt-get records what it is asked and downloads
small packages built on the spot, and systemctl and its kin only record that they were
called. A real peer is then extracted into a temporary cache and run from it with its
libraries, the system's copy hidden.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from simhelpers import REPO

from mux import debpeers

# Commands that change the state of a service; none may ever run.
SERVICE_COMMANDS = (
    "systemctl",
    "service",
    "invoke-rc.d",
    "update-rc.d",
    "deb-systemd-invoke",
    "deb-systemd-helper",
)
DEBPEERS = (sys.executable, "-m", "mux.debpeers")
SETUP_TARGETS = ("run", "test", "bench", "build", "build-deps", "test-deps", "deb-peers", "lint")
# Where a package would put a service.
SERVICE_PLACES = ("/lib/systemd/system/", "/usr/lib/systemd/system/", "/etc/init.d/")


def make_variable(name: str, tmp_path: Path) -> list[str]:
    printer = tmp_path / "print.mk"
    printer.write_text("print-%:\n\t@echo $($*)\n")
    out = subprocess.run(
        ["make", "-s", "-C", str(REPO), "-f", "Makefile", "-f", str(printer), f"print-{name}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.split()


def test_no_setup_command_touches_a_service():
    """Every command `make` would run for the set-up targets, read without running them."""
    out = subprocess.run(
        ["make", "-n", "-B", "-C", str(REPO), *SETUP_TARGETS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    commands = out.stdout
    assert "apt-get install" in commands and "mux.debpeers fetch" in commands, commands
    word = "|".join(re.escape(c) for c in SERVICE_COMMANDS)
    # a command word: at the start, after a separator, or after sudo
    found = re.findall(rf"(?:^|[;&|(`]|\bsudo|SUDO)\s*({word})\b", commands, re.M)
    assert not found, found


def test_the_packages_apt_installs_ship_no_service(tmp_path):
    packages = make_variable("BUILD_PKGS", tmp_path) + make_variable("TEST_PKGS", tmp_path)
    assert {"python3-venv", "python3-dev", "gcc", "xenstore-utils", "libxen-dev"} <= set(packages)
    assert not set(packages) & {*debpeers.PACKAGES, "xen-utils-common"}
    for package in packages:
        listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
        if listed.returncode != 0:
            pytest.fail(f"{package} is not installed: make test installs it")
        services = [f for f in listed.stdout.splitlines() if f.startswith(SERVICE_PLACES)]
        assert not services, (package, services)


# -- a bare bookworm, made of stand-ins ------------------------------------------------------

RECORDER = """\
#!/bin/sh
echo "$(basename "$0") $*" >> "$SETUP_LOG"
"""

DPKG_QUERY = RECORDER + "exit 1\n"  # no package is installed

APT_GET = f"""\
#!{sys.executable}
# apt-get: records every call; `download PKG` builds a small PKG with the files the
# peers' table says it holds (programs as scripts), as the real package would hold them.
import os, subprocess, sys, tempfile
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
from mux import debpeers
with open(os.environ["SETUP_LOG"], "a") as log:
    log.write("apt-get " + " ".join(sys.argv[1:]) + "\\n")
args = [a for a in sys.argv[1:] if not a.startswith("-") and "::" not in a]
if args and args[0] == "download":
    for package in args[1:]:
        with tempfile.TemporaryDirectory() as tree:
            tree = Path(tree)
            (tree / "DEBIAN").mkdir()
            (tree / "DEBIAN" / "control").write_text(
                f"Package: {{package}}\\nVersion: 1.0\\nArchitecture: all\\n"
                "Maintainer: test <test@example.invalid>\\nDescription: stand-in\\n"
            )
            doc = tree / "usr/share/doc" / package
            doc.mkdir(parents=True)
            (doc / "copyright").write_text("stand-in\\n")
            for program, (owner, path) in debpeers.PROGRAMS.items():
                if owner == package:
                    exe = tree / path.lstrip("/")
                    exe.parent.mkdir(parents=True, exist_ok=True)
                    exe.write_text(f"#!/bin/sh\\necho {{program}} from the cache\\n")
                    exe.chmod(0o755)
            subprocess.run(["dpkg-deb", "-b", str(tree), f"{{package}}_1.0_all.deb"],
                           check=True, capture_output=True)
"""


def bare_bookworm(bin_dir: Path) -> None:
    bin_dir.mkdir()
    scripts = {"apt-get": APT_GET, "dpkg-query": DPKG_QUERY, "sudo": RECORDER + 'exec "$@"\n'}
    for name in (*SERVICE_COMMANDS, "dpkg"):
        scripts[name] = RECORDER  # recorded, and nothing happens
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_on_a_bare_bookworm_the_setup_installs_only_serviceless_packages(tmp_path):
    bare_bookworm(tmp_path / "bin")
    log = tmp_path / "setup.log"
    log.touch()
    cache = tmp_path / "cache" / "root"
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "SETUP_LOG": str(log),
        debpeers.CACHE_ENV: str(cache),
    }
    env.pop(debpeers.IGNORE_SYSTEM_ENV, None)
    out = subprocess.run(
        ["make", "-C", str(REPO), "build-deps", "test-deps", "deb-peers"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    calls = [line.split() for line in log.read_text().splitlines()]
    touched = [c for c in calls if c[0] in (*SERVICE_COMMANDS, "dpkg")]
    assert not touched, touched

    installs = [c for c in calls if c[0] == "apt-get" and "install" in c]
    installed = {w for c in installs for w in c[c.index("install") + 1 :] if not w.startswith("-")}
    wanted = make_variable("BUILD_PKGS", tmp_path) + make_variable("TEST_PKGS", tmp_path)
    assert installed == set(wanted)

    downloads = {c[-1] for c in calls if c[0] == "apt-get" and "download" in c}
    every = {m for p in debpeers.PACKAGES.values() for m in (p.name, *p.companions)}
    assert downloads == every
    assert not downloads & installed

    # The tests would now find every peer in the cache (this machine's own copies hidden,
    # as a bare bookworm has none), and run it from there.
    probe = (
        "from mux import debpeers; import json, subprocess; print(json.dumps({p: ["
        "str(debpeers.locate(p).path), subprocess.run([str(debpeers.locate(p).path)], "
        "capture_output=True, text=True).stdout.strip()] for p in debpeers.PROGRAMS}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**env, debpeers.IGNORE_SYSTEM_ENV: "1"},
        cwd=REPO,
        timeout=60,
    )
    assert found.returncode == 0, found.stderr
    for program, (path, said) in json.loads(found.stdout).items():
        assert path == str(cache / debpeers.PROGRAMS[program][1].lstrip("/")), program
        assert said == f"{program} from the cache"


def test_an_installed_peer_is_used_as_it_is():
    for program, (package, path) in debpeers.PROGRAMS.items():
        try:
            peer = debpeers.locate(program)
        except debpeers.PeerMissing as exc:
            pytest.fail(str(exc))
        if debpeers.installed(package) and Path(path).exists():
            assert (peer.path, peer.source, peer.library_path) == (Path(path), "system", ())
        else:
            assert peer.source == "cache" and peer.path.is_relative_to(debpeers.cache_root())


def test_a_missing_peer_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(debpeers.CACHE_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv(debpeers.IGNORE_SYSTEM_ENV, "1")
    with pytest.raises(debpeers.PeerMissing) as exc:
        debpeers.locate("xenstored")
    assert str(exc.value) == (
        f"xenstored (Debian package xen-utils-4.17) is not in the cache {tmp_path / 'empty'}: "
        "run `make deb-peers`, which extracts it there without installing the package"
    )
    bad = subprocess.run(
        [*DEBPEERS, "fetch", "--root", str(tmp_path), "no-such"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("debpeers: unknown peer package 'no-such'"), bad.stderr


# -- a real peer from a temporary cache ------------------------------------------------------

SERVE_FROM_CACHE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from mux import records
    from mux.realxen import build_stubs, dom0, guest, running

    libs = build_stubs(Path(sys.argv[1]))
    seen = {}
    for kind in ("xenstored", "oxenstored"):
        with running(kind, libs, [dom0(), guest(1)], introduce=[1]) as xsd:
            maps = Path(f"/proc/{xsd.pid}/maps").read_text().split()
            xs = xsd.connect()
            xs.watch("@releaseDomain", "t")
            first = xs.sync()
            xsd.shutdown_domain(1, records.SHUTDOWN_POWEROFF)
            second = xs.sync()
            xs.close()
            seen[kind] = {
                "binary": str(xsd.binary),
                "libxenctrl": sorted({m for m in maps if "libxenctrl.so" in m}),
                "events": [first, second],
            }
    print(json.dumps(seen))
    """
)


@pytest.mark.slow
def test_the_real_xenstored_runs_from_a_cache_with_its_libraries(tmp_path):
    """`fetch` into a fresh cache, as on a machine without xen-utils-4.17 and its libraries;
    then Debian's C xenstored and oxenstored run from it under the stand-in, with the
    cache's libxenctrl, the system's copies hidden."""
    root = tmp_path / "root"
    done = subprocess.run(
        [*DEBPEERS, "fetch", "--root", str(root), "--ignore-installed", "xen-utils-4.17"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "libxenmisc4.17" in done.stdout and "xen-utils-common" in done.stdout

    env = {**os.environ, debpeers.CACHE_ENV: str(root), debpeers.IGNORE_SYSTEM_ENV: "1"}
    ran = subprocess.run(
        [sys.executable, "-c", SERVE_FROM_CACHE, str(tmp_path / "xenstub")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    seen = json.loads(ran.stdout)
    for kind in ("xenstored", "oxenstored"):
        got = seen[kind]
        assert got["binary"] == str(root / f"usr/lib/xen-4.17/bin/{kind}")
        lib = root / "usr/lib/x86_64-linux-gnu/libxenctrl.so.4.17.0"
        assert got["libxenctrl"] == [str(lib)], got
        assert got["events"] == [[["@releaseDomain", "t"]]] * 2
