"""The README's examples work as written: its simulated-host flow, a few of its client
commands, and its Python example, run from the README's own text (only the directory and
the host's size are changed)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from simhelpers import sim_command

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _block_with(language: str, needle: str) -> str:
    (block,) = [b for b in _blocks(language) if needle in b]
    return block


def _shell_lines(block: str) -> list[str]:
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_the_readme_sim_flow_and_python_example_work_as_written(tmp_path, procs):
    here = tmp_path / "xm"  # tmp_path's parents are root's alone, as /tmp/xm of mode 0700 is
    setup = _block_with("sh", "xenmux sim --dir").replace("/tmp/xm", str(here))
    setup = setup.replace("--domains 1000", "--domains 20")
    env = dict(os.environ)
    xenmux = sim_command()
    for line in _shell_lines(setup):
        for part in (p.strip() for p in line.split("&&")):
            words = shlex.split(part.rstrip("&").strip())
            if words[0] == "mkdir":
                subprocess.run(words, check=True)
            elif words[0] == "export":
                name, value = words[1].split("=", 1)
                env[name] = value
            else:
                assert words[0] == "xenmux" and part.endswith("&"), part
                procs.start(
                    [*xenmux, *words[1:]],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                if words[1] == "sim":
                    wait_for(here / "host" / "xenstored.sock")
    sock = Path(env["XENMUX_SOCKET"])
    wait_for(sock)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*xenmux, *args], env=env, capture_output=True, text=True, timeout=30)

    table = run("domains", "-o", "table")
    assert table.returncode == 0 and table.stdout.split()[:5] == [
        "DOMID",
        "NAME",
        "STATE",
        "REASON",
        "UUID",
    ]
    assert "guest-12" in table.stdout

    example = _block_with("python", "Subscription").replace("/tmp/xm", str(here))
    py = procs.start([sys.executable, "-c", example], env=env, text=True)
    time.sleep(1.0)  # the example subscribes before the domain dies (or it would wait on)
    sim_dir = str(here / "host")
    assert run("sim-ctl", "--dir", sim_dir, "shutdown", "12", "--reason", "crash").returncode == 0
    assert run("sim-ctl", "--dir", sim_dir, "destroy", "12").returncode == 0
    out, err = py.communicate(timeout=30)
    assert py.returncode == 0, err
    assert out == "crash False False\n"

    # A domain by name, as the README's `wait guest-12`: a live one times out (status 1).
    assert run("wait", "guest-13", "--timeout", "1").returncode == 1
    assert run("rescan").returncode == 0


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)
