"""Man pages and shell completion generated from the argument parsers (mux/manpages.py,
mux/completion.py): Debian's `man` renders every page without a warning, bash and zsh read
the scripts, every command and option is in them, and the copies in packaging/ that the wheel
installs (pyproject.toml's data files) are what the generators make now."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from simhelpers import REPO

from mux import completion, manpages
from mux.clitree import command_tree

TREE = command_tree()
COMMANDS = [c for c in TREE.walk() if len(c.path) == 2]


def generate(module: str, out: Path) -> None:
    """What `make man` / `make completion` run."""
    done = subprocess.run(
        [sys.executable, "-m", module, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "XENMUX_SOCKET"},
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def man_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("man")
    generate("mux.manpages", out)
    return out


@pytest.fixture(scope="module")
def completion_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("completion")
    generate("mux.completion", out)
    return out


def man(page: Path) -> str:
    """The page as `man -l` shows it; a roff warning fails."""
    done = subprocess.run(
        ["man", "--warnings=all", "-l", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MANWIDTH": "200", "MAN_KEEP_FORMATTING": "", "LC_ALL": "C.UTF-8"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"{page.name}: {done.stderr}"
    return re.sub(r".\x08", "", done.stdout)  # no overstrike, whatever the pager settings


# -- man pages -------------------------------------------------------------------------------


def test_a_page_for_xenmux_and_for_every_command(man_dir):
    names = sorted(p.name for p in man_dir.iterdir())
    assert names == sorted(["xenmux.1", *(f"xenmux-{c.path[1]}.1" for c in COMMANDS)])
    text = man(man_dir / "xenmux.1")
    for command in COMMANDS:
        assert re.search(rf"^ +{re.escape(command.path[1])}\b", text, re.M), command.name
        assert f"xenmux-{command.path[1]}(1)" in text


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.path[1])
def test_every_option_is_on_its_commands_page(man_dir, command):
    text = man(man_dir / f"xenmux-{command.path[1]}.1")
    flat = " ".join(text.split())
    assert f"xenmux-{command.path[1]} - " in flat
    for sub in command.walk():
        if sub is not command:
            assert re.search(rf"^ +{re.escape(sub.path[-1])}$", text, re.M), sub.name
        for option in sub.options:
            head = ", ".join(option.flags) if option.flags else (option.metavar or option.dest)
            assert head in flat, f"{sub.name}: {head}"
            assert " ".join(option.help.split()) in flat, f"{sub.name} {head}: its help"


def test_roff_escapes():
    assert manpages.escape("--socket") == "\\-\\-socket"
    assert manpages.escape(".not a request\n'nor this") == "\\&.not a request\n\\&'nor this"
    assert manpages.escape("a\\b") == "a\\eb"


# -- completion ------------------------------------------------------------------------------


def bash_complete(script: Path, *words: str) -> list[str]:
    """What the script offers for the last of `words` (the word being typed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"source '{script}'\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMPREPLY=()\n"
        "_xenmux\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout.split()


def test_bash_reads_the_script(completion_dir):
    script = completion_dir / completion.BASH_FILE
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_bash_completes_every_command_and_option(completion_dir):
    script = completion_dir / completion.BASH_FILE
    assert sorted(bash_complete(script, "xenmux", "")) == sorted(
        [c.path[1] for c in COMMANDS] + ["-V", "--version", "-h", "--help"]
    )
    for command in TREE.walk():
        typed = list(command.path)
        offered = set(bash_complete(script, *typed, ""))
        flags = {f for o in command.options for f in o.flags}
        assert flags <= offered, f"{command.name}: {sorted(flags - offered)}"
        assert {s.path[-1] for s in command.subcommands} <= offered, command.name
    assert bash_complete(script, "xenmux", "sim-ctl", "ch") == ["churn"]
    assert bash_complete(script, "xenmux", "serve", "--log-level", "w") == ["warning"]
    assert bash_complete(script, "xenmux", "watch", "-o", "") == ["json", "table"]
    assert bash_complete(script, "xenmux", "serve", "--max-clients", "") == []  # a number


def test_bash_completes_file_names_after_a_path_option(completion_dir, tmp_path):
    script = completion_dir / completion.BASH_FILE
    (tmp_path / "xenmux.sock").write_text("")
    offered = bash_complete(script, "xenmux", "watch", "--socket", f"{tmp_path}/xen")
    assert offered == [f"{tmp_path}/xenmux.sock"]


def zsh_complete(script: Path, *words: str) -> str:
    """What the script hands zsh's completion functions (stand-ins that print their input)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        '_describe() { local -a i; i=(${(P)2}); print -r -- "$1: ${(j:|:)i}" }\n'
        'compadd() { shift; print -r -- "compadd: $*" }\n'
        "_files() { print files }\n"
        '_message() { print -r -- "message: $1" }\n'
        f"words=({quoted}); CURRENT={len(words)}\n"
        f"source '{script}'\n"
    )
    done = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_reads_the_script_and_offers_commands_and_options(completion_dir):
    script = completion_dir / completion.ZSH_FILE
    assert script.read_text().startswith("#compdef xenmux\n")
    done = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    top = zsh_complete(script, "xenmux", "")
    for command in COMMANDS:
        assert f"{command.path[1]}:{command.help}" in top, command.name
    churn = zsh_complete(script, "xenmux", "sim-ctl", "churn", "")
    assert "--seconds:how long to go on" in churn
    assert zsh_complete(script, "xenmux", "serve", "--log-level", "").strip() == (
        "compadd: debug info warning error"
    )
    assert zsh_complete(script, "xenmux", "serve", "--socket", "").strip() == "files"


# -- what the package installs ---------------------------------------------------------------


def test_the_packaged_copies_are_current(man_dir, completion_dir):
    """packaging/ holds what the wheel installs: `make man completion` after an option changed."""
    for fresh, packaged in ((man_dir, "packaging/man"), (completion_dir, "packaging/completion")):
        want = {p.name: p.read_text() for p in fresh.iterdir()}
        have = {p.name: p.read_text() for p in (REPO / packaged).iterdir()}
        assert have == want, f"{packaged} is not current: run `make man completion`"


def test_the_wheel_installs_them_where_man_bash_and_zsh_look():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["data-files"]
    installed = {
        d: sorted(p.name for g in globs for p in REPO.glob(g)) for d, globs in data.items()
    }
    assert installed == {
        "share/man/man1": sorted(p.name for p in (REPO / "packaging/man").iterdir()),
        "share/bash-completion/completions": ["xenmux"],
        "share/zsh/site-functions": ["_xenmux"],
    }
