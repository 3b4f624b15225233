"""What an operator installs: the systemd units of packaging/ and the sdist and wheel.

Every packaging/*.service (the daemon's and those of the other commands) is held to
`systemd-analyze security --offline=true` at 4.0 or below and passes `systemd-analyze
verify` once its ExecStart names the installed entry point; its dependencies are units a
Debian bookworm has. systemd is not PID 1 here, so the daemon's confinement is applied the
way the unit asks for it, without systemd (no capability, no_new_privs, W^X memory, the
system call filter of its SystemCallFilter= lines expanded by systemd-analyze itself, its
address families, its supplementary group, its umask), and the daemon must still serve a simulated
host through it. The distributions are built with PEP 517's frontend from a copy of the
checkout, the wheel from the sdist, as pip would.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from daemonhelpers import DaemonHandle, _accepts, take
from simhelpers import REPO, sim, sim_command  # noqa: F401

from mux import debpeers

PACKAGING = REPO / "packaging"
UNITS = sorted(PACKAGING.glob("*.service"))
MAX_EXPOSURE = 4.0
DOC_DIR = "/usr/share/doc/xen-watch-mux/"
SYSTEMD_UNIT_DIRS = (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
# Where Debian's xen-utils-common keeps the script systemd runs as xen.service.
XEN_INIT = "/etc/init.d/xen"
ORDERING = ("After", "Before", "Wants", "Requires", "Requisite", "BindsTo", "PartOf")


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: install systemd (Debian's; nothing is started)")
    return tool


def directives(unit: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every line, in order (keys repeat in units)."""
    out, section = [], ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(unit: Path, key: str) -> list[str]:
    return [v for _, k, v in directives(unit) if k == key]


def words(unit: Path, key: str) -> list[str]:
    return [w for v in values(unit, key) for w in v.split()]


def test_every_unit_is_found():
    assert PACKAGING / "xenmux.service" in UNITS


# -- the score and verify ----------------------------------------------------------------------


def exposure(unit: Path) -> tuple[float, str]:
    out = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert m, out.stdout + out.stderr
    return float(m.group(1)), out.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_exposure_is_at_most_4(unit):
    score, report = exposure(unit)
    assert score <= MAX_EXPOSURE, report


def test_the_score_would_catch_an_unhardened_unit(tmp_path):
    """The check above can fail: the same unit without its hardening lines is exposed."""
    bare = tmp_path / "xenmux.service"
    keep = ("Unit", "Install")
    sections: dict[str, list[str]] = {}
    for section, key, value in directives(PACKAGING / "xenmux.service"):
        if section in keep or key in ("Type", "ExecStart", "NotifyAccess"):
            sections.setdefault(section, []).append(f"{key}={value}")
    lines = [f"[{s}]\n" + "\n".join(body) + "\n" for s, body in sections.items()]
    bare.write_text("".join(lines))
    assert exposure(bare)[0] > 8.0


def installed_entry_point() -> Path:
    exe = Path(sys.executable).parent / "xenmux"
    if not exe.exists():
        pytest.fail(f"{exe} is missing: install the package (make build does)")
    return exe


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies_with_the_installed_entry_point(unit, tmp_path):
    text = unit.read_text()
    assert "ExecStart=/usr/local/bin/xenmux " in text, "the documented install links it there"
    copy = tmp_path / unit.name
    copy.write_text(text.replace("=/usr/local/bin/xenmux ", f"={installed_entry_point()} "))
    out = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys and misspelt values: any word from it is a finding.
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr


# -- Debian bookworm's conventions -------------------------------------------------------------


def xen_init_script() -> Path:
    found = debpeers.package_file("xen-utils-common", XEN_INIT)
    if found is None:
        pytest.fail(
            f"{XEN_INIT} (xen-utils-common) is neither installed nor in the cache: "
            "run `make deb-peers`"
        )
    return found


def debian_has(unit_name: str) -> bool:
    """A unit this Debian ships (systemd's own, or a peer's package's, such as
    nats-server.service, installed or in the cache), one systemd makes of an init script of
    Xen's packages, or one of ours."""
    cached = debpeers.cache_root()
    if any((d / unit_name).exists() for d in (*SYSTEMD_UNIT_DIRS, cached / "lib/systemd/system")):
        return True
    if (PACKAGING / unit_name).exists():
        return True
    name, _, kind = unit_name.rpartition(".")
    if kind == "service" and f"/etc/init.d/{name}" == XEN_INIT:
        return "Provides:          xen\n" in xen_init_script().read_text()
    return False


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_depends_only_on_what_bookworm_has(unit):
    named = [w for key in ORDERING for w in words(unit, key)]
    assert all(debian_has(n) for n in named), [n for n in named if not debian_has(n)]


def test_the_daemon_starts_after_debians_xenstored_and_xenfs():
    """Bookworm ships no xenstored.service and no proc-xen.mount: the init script of
    xen-utils-common mounts xenfs on /proc/xen and starts xenstored, as xen.service."""
    unit = PACKAGING / "xenmux.service"
    script = xen_init_script().read_text()
    assert "mount -t xenfs xenfs /proc/xen" in script and "xenstored_start" in script
    assert "xen.service" in words(unit, "After") and "xen.service" in words(unit, "Wants")
    assert values(unit, "ConditionPathExists") == ["/proc/xen/capabilities"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_paths_that_may_be_missing_are_optional(unit):
    """A ReadWritePaths=/ReadOnlyPaths= entry that is missing stops the unit unless '-'."""
    for key in ("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "BindPaths"):
        for entry in words(unit, key):
            assert entry.startswith("-"), f"{unit.name}: {key}={entry} fails if it is missing"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_documentation_points_at_installed_files(unit):
    operations = (REPO / "docs" / "operations.md").read_text()
    urls = words(unit, "Documentation")
    assert urls
    pages = [u for u in urls if u.startswith("man:")]
    assert len(pages) == 1, urls  # `systemctl help` opens the command's man page first
    name = re.fullmatch(r"man:(xenmux-[a-z-]+)\(1\)", pages[0])
    assert name and (PACKAGING / "man" / f"{name[1]}.1").is_file(), pages  # the wheel installs it
    assert name[1].removeprefix("xenmux-") in values(unit, "ExecStart")[0].split()
    for url in urls:
        if url in pages:
            continue
        assert url.startswith("file://" + DOC_DIR), url
        name = url.removeprefix("file://" + DOC_DIR)
        assert (REPO / "docs" / name).is_file(), url
    # The install steps put docs/ where the units point.
    assert f"install -D -m 0644 -t {DOC_DIR} docs/*.md" in operations


def test_state_and_runtime_directories():
    unit = PACKAGING / "xenmux.service"
    assert values(unit, "StateDirectory") == ["xenmux"]  # /var/lib/xenmux, the default
    assert values(unit, "StateDirectoryMode") == ["0750"]
    assert values(unit, "RuntimeDirectory") == ["xenmux"]
    assert "--socket /run/xenmux/xenmux.sock" in values(unit, "ExecStart")[0]


def test_the_act_unit_follows_the_daemon_and_keeps_its_own_state():
    """xenmux-act.service: after the daemon, its journal under the daemon's state directory,
    options its parser takes, and a stop that leaves the domains' device models alone."""
    import argparse

    from mux.commands import act

    unit = PACKAGING / "xenmux-act.service"
    assert "xenmux.service" in words(unit, "After") and "xenmux.service" in words(unit, "Wants")
    assert values(unit, "StateDirectory") == ["xenmux/act"]  # /var/lib/xenmux/act
    assert values(unit, "KillMode") == ["process"]
    argv = values(unit, "ExecStart")[0].split()
    assert argv[:2] == ["/usr/local/bin/xenmux", "act"]
    parser = argparse.ArgumentParser()
    act.configure(parser)
    args = parser.parse_args(argv[2:])
    assert (args.toolstack, args.state_dir) == ("xl", act.DEFAULT_STATE_DIR)
    assert args.socket == "/run/xenmux/xenmux.sock"


def test_the_devices_the_daemon_needs_are_allowed():
    """libxencall's /dev/xen/privcmd and /dev/xen/hypercall, a stub-domain xenstore's
    /dev/xen/xenbus; /dev is not replaced (PrivateDevices= would hide /dev/xen)."""
    unit = PACKAGING / "xenmux.service"
    allowed = dict(v.split() for v in values(unit, "DeviceAllow"))
    for dev in ("/dev/xen/privcmd", "/dev/xen/hypercall", "/dev/xen/xenbus"):
        assert allowed.get(dev) == "rw", dev
    assert values(unit, "PrivateDevices") in ([], ["no"])
    assert "AF_UNIX" in words(unit, "RestrictAddressFamilies")  # xenstored's socket


# -- the confinement, applied without systemd ----------------------------------------------------

PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
FAMILIES = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6}


class ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def syscall_groups() -> dict[str, list[str]]:
    """systemd's own system call groups, as `systemd-analyze syscall-filter` lists them."""
    out = subprocess.run(
        [systemd_analyze(), "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def allowed_syscalls(unit: Path) -> set[str]:
    """The allow list of the unit's SystemCallFilter= lines, combined as systemd does."""
    groups = syscall_groups()
    allowed: set[str] | None = None
    for value in values(unit, "SystemCallFilter"):
        deny = value.startswith("~")
        names = expand(value.lstrip("~").split(), groups)
        assert allowed is not None or not deny, "the first SystemCallFilter= must allow"
        allowed = (allowed or set()) - names if deny else (allowed or set()) | names
    assert allowed, "no SystemCallFilter="
    return allowed


class Confinement:
    """The unit's process restrictions, applied in the child between fork and exec."""

    def __init__(self, unit: Path, group: int | None) -> None:
        assert values(unit, "CapabilityBoundingSet") == [""]
        assert values(unit, "NoNewPrivileges") == ["yes"]
        assert values(unit, "MemoryDenyWriteExecute") == ["yes"]
        assert values(unit, "SystemCallErrorNumber") == ["EPERM"]
        self.group = group
        (umask,) = values(unit, "UMask")
        self.umask = int(umask, 8)
        self.syscalls = sorted(allowed_syscalls(unit) - {"socket"})
        self.families = [FAMILIES[f] for f in words(unit, "RestrictAddressFamilies")]
        self.last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.seccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        self.seccomp.seccomp_init.restype = ctypes.c_void_p
        self.seccomp.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(ArgCmp),
        ]
        self.seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
        self.seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

    def _prctl(self, *args: int) -> None:
        if self.libc.prctl(*(ctypes.c_ulong(a) for a in args)) != 0:
            raise OSError(ctypes.get_errno(), f"prctl{args}")

    def __call__(self) -> None:
        os.umask(self.umask)
        # SupplementaryGroups= (root, so the gid and groups stay as they are otherwise).
        os.setgroups([self.group] if self.group is not None else [])
        # CapabilityBoundingSet= (empty): exec then gives root no capability at all.
        for cap in range(self.last_cap + 1):
            self._prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        self._prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        self._prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)
        sc = self.seccomp
        ctx = sc.seccomp_init(0x00050000 | errno.EPERM)  # SCMP_ACT_ERRNO(EPERM)
        for name in self.syscalls:
            nr = sc.seccomp_syscall_resolve_name(name.encode())
            if nr >= 0:  # names of other architectures resolve to nothing here
                sc.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None)
        nr = sc.seccomp_syscall_resolve_name(b"socket")
        for family in self.families:
            cmp = ArgCmp(0, SCMP_CMP_EQ, family, 0)
            sc.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 1, ctypes.pointer(cmp))
        if sc.seccomp_load(ctx) != 0:
            raise OSError("seccomp_load failed")


def other_group() -> grp.struct_group:
    """A group root is not in, to stand for xenmux (which this machine need not have)."""
    mine = set(os.getgroups()) | {os.getgid()}
    for g in grp.getgrall():
        if g.gr_gid not in mine and g.gr_gid != 0:
            return g
    pytest.skip("no group here that root is not a member of")


def serve_confined(host, group: int | None, socket_group: int, log: Path) -> subprocess.Popen:
    unit = PACKAGING / "xenmux.service"
    sock = str(host.dir / "x.sock")
    args = [
        *sim_command(),
        "serve",
        "--backend",
        "sim",
        "--sim-dir",
        str(host.dir),
        "--socket",
        sock,
        "--socket-group",
        str(socket_group),
        "--metrics-addr",
        "127.0.0.1:0",
    ]
    with open(log, "wb") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            preexec_fn=Confinement(unit, group),
        )


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


PROBE = """
import os, socket, sys, tempfile
def refused(call):
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0
f = tempfile.NamedTemporaryFile()
print(refused(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))),  # @resources
      refused(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),  # not a family of it
      refused(lambda: os.chown(f.name, -1, int(sys.argv[1]))),  # @chown is in, CAP_CHOWN out
      refused(lambda: socket.socket(socket.AF_INET6).close()))
"""


def test_the_confinement_is_the_units():
    """What the emulation refuses, as systemd would: a call the filter drops, a family the
    unit does not list, a privilege the bounding set removed; what it lists works."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(other_group().gr_gid)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=Confinement(PACKAGING / "xenmux.service", None),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(errno.EPERM)] * 3 + ["0"], out.stdout


def test_the_daemon_serves_under_the_units_confinement(sim, tmp_path):  # noqa: F811
    group = other_group()
    log = tmp_path / "serve.log"
    proc = serve_confined(sim, group.gr_gid, group.gr_gid, log)
    d = DaemonHandle(proc, str(sim.dir / "x.sock"), log, [])
    try:
        deadline = time.monotonic() + 30
        while not _accepts(d.sock):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.02)
        st = status(proc.pid)
        assert st["CapEff"] == st["CapPrm"] == st["CapBnd"] == "0" * 16
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
        sock = os.stat(d.sock)
        assert sock.st_gid == group.gr_gid and stat.S_IMODE(sock.st_mode) == 0o660
        with d.subscribe(None) as sub:
            sim.ctl.shutdown(3, "crash")
            (event,) = take(sub, 1)
            assert (event["event"], event["domid"], event["reason"]) == ("shutdown", 3, "crash")
        port = d.stats()["metrics_port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"xenmux_scans_total" in r.read()
    finally:
        code = d.stop()
    assert code == 0, log.read_text(errors="replace")


def test_without_its_group_the_capless_daemon_cannot_hand_over_its_socket(sim, tmp_path):  # noqa: F811
    """Why SupplementaryGroups=xenmux: root without CAP_CHOWN may give its file only to a
    group it is in."""
    group = other_group()
    log = tmp_path / "serve.log"
    proc = serve_confined(sim, None, group.gr_gid, log)
    try:
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text(errors="replace")
    assert code != 0 and "Operation not permitted" in text, text
    assert "Traceback" not in text


# -- the sdist and the wheel ---------------------------------------------------------------------


def copy_of_checkout(dest: Path) -> Path:
    """The sources only: what git tracks, or everything but what builds and runs leave."""
    try:
        listed = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        listed = []
    files = [f.decode() for f in listed if f]
    if not files:
        ignore = shutil.ignore_patterns(".*", "build", "*.egg-info", "*.so", "__pycache__")
        shutil.copytree(REPO, dest, ignore=ignore)
        return dest
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def pep517_build(src: Path, out: Path) -> tuple[Path, Path]:
    """`python -m build`: the sdist, then the wheel built from that sdist."""
    python = "/usr/bin/python3"
    probe = subprocess.run([python, "-m", "build", "--version"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.fail("python3 -m build is missing: install python3-build (make test does)")
    done = subprocess.run(
        [python, "-m", "build", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def generated_by_cython(data: bytes) -> bool:
    return b"Generated by Cython" in data[:400]


@pytest.mark.slow
@pytest.mark.timeout(900)  # two isolated builds compiling every extension: minutes on a busy box
def test_sdist_and_wheel_contents():
    with tempfile.TemporaryDirectory(prefix="xenmux-dist-") as tmp:
        src = copy_of_checkout(Path(tmp) / "src")
        sdist, wheel = pep517_build(src, Path(tmp) / "dist")

        with tarfile.open(sdist) as tar:
            top = tar.getnames()[0].split("/")[0]
            names = {n.removeprefix(top + "/") for n in tar.getnames()}
            c_files = {n: tar.extractfile(n).read() for n in tar.getnames() if n.endswith(".c")}
        for needed in (
            "LICENSE",
            "README.md",
            "Makefile",
            "pyproject.toml",
            "setup.py",
            "packaging/xenmux.service",
            "packaging/xenmux-act.service",
            "grafana/xenmux.json",
            "mux/py.typed",
            "mux/_fast.pyx",
        ):
            assert needed in names, needed
        for tree in ("docs", "packaging", "grafana", "tests", "mux"):
            tracked = {str(p.relative_to(src)) for p in (src / tree).rglob("*") if p.is_file()}
            assert tracked <= names, sorted(tracked - names)
        assert not any(generated_by_cython(data) for data in c_files.values()), list(c_files)
        assert not any(n.endswith(".so") for n in names)

        with zipfile.ZipFile(wheel) as whl:
            wnames = set(whl.namelist())
            generated = [n for n in wnames if n.endswith(".c") and generated_by_cython(whl.read(n))]
            license_text = next(whl.read(n).decode() for n in wnames if n.endswith("/LICENSE"))
            metadata = next(whl.read(n).decode() for n in wnames if n.endswith("/METADATA"))
        assert not generated, generated
        # every package of the checkout, with every one of its modules
        modules = {str(p.relative_to(src)) for p in (src / "mux").rglob("*.py")}
        assert modules <= wnames, sorted(modules - wnames)
        assert not {"mux/_fast.c", "mux/sim/_simfast.c", "mux/bench/_floor.c"} & wnames
        assert "mux/py.typed" in wnames and "mux/_fast.pyi" in wnames
        assert any(n.startswith("mux/_fast.") and n.endswith(".so") for n in wnames)
        # run-time data: the bench's C programs and the stand-ins are built from these
        for data in ("mux/bench/monitor.c", "mux/realxen/xenstub/hvstub.c", "mux/sim/shm_layout.h"):
            assert data in wnames, data
        # what the wheel installs beside the packages: man pages and shell completion
        shared = {n.split(".data/data/", 1)[1] for n in wnames if ".data/data/" in n}
        man = {f"share/man/man1/{p.name}" for p in (src / "packaging" / "man").glob("*.1")}
        assert man and man <= shared, sorted(man - shared)
        for completion in (
            "share/bash-completion/completions/xenmux",
            "share/zsh/site-functions/_xenmux",
        ):
            assert completion in shared, completion
        assert "MIT License" in license_text and "2026" in license_text
        assert re.search(r"^License: MIT$", metadata, re.M), metadata[:800]


def test_license_file():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 The xen-watch-mux maintainers" in text
    assert (REPO / "mux" / "py.typed").is_file()
