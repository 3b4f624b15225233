"""Every option of every command says what it does in `--help` (issue 16): the whole argparse
tree, `xenmux` and each command's parser with its sub-commands (sim-ctl's, bench's)."""

from __future__ import annotations

import argparse
import subprocess

from simhelpers import sim_command

from mux.cli import COMMANDS
from mux.clitree import Command, command_tree, describe


def undocumented(tree: Command) -> list[str]:
    """Options and sub-commands without a help text, by command."""
    missing = []
    for command in tree.walk():
        for option in command.options:
            if not option.help or option.help == argparse.SUPPRESS:
                missing.append(f"{command.name} {'/'.join(option.flags) or option.dest}")
        missing += [f"{sub.name} (the command)" for sub in command.subcommands if not sub.help]
    return missing


def test_every_option_of_every_command_has_help():
    tree = command_tree()
    names = {c.name for c in tree.walk()}
    # The walk reaches every command and the sub-commands below them.
    assert {f"xenmux {name}" for name in COMMANDS} <= names
    assert {"xenmux sim-ctl churn", "xenmux sim-ctl create", "xenmux sim-ctl shutdown"} <= names
    assert undocumented(tree) == []


def test_the_check_finds_an_option_without_help():
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--fine", help="it says")
    parser.add_argument("--bare")
    sub = parser.add_subparsers(dest="op")
    quiet = sub.add_parser("quiet")
    quiet.add_argument("domid", type=int)
    assert undocumented(describe(parser, ("x",))) == [
        "x --bare",
        "x quiet (the command)",
        "x quiet domid",
    ]


def test_help_shows_the_texts():
    out = subprocess.run(
        [*sim_command(), "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps lines
    assert "--max-clients N client connections open at once" in text
    assert "--log-level {debug,info,warning,error} least severe messages logged" in text
