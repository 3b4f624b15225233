"""The whole command line as data: every command's parser, every option and sub-command.

`xenmux` builds only the parser of the command it runs (mux.cli). The help test, the man
pages and the shell completion (mux/manpages.py, mux/completion.py) need all of them, built
the same way: `command_tree()` walks the argparse parsers into plain `Command` records.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]  # ("-o", "--output"); () for a positional argument
    dest: str
    help: str | None
    metavar: str | None  # what follows the flag (None: a flag without a value)
    choices: tuple[str, ...] | None
    required: bool

    @property
    def positional(self) -> bool:
        return not self.flags

    @property
    def takes_value(self) -> bool:
        return self.metavar is not None


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]  # ("xenmux", "sim-ctl", "create")
    help: str | None  # the one line the parent's list shows
    description: str | None
    usage: str
    options: tuple[Option, ...]
    subcommands: tuple[Command, ...] = field(default=())

    @property
    def name(self) -> str:
        return " ".join(self.path)

    def walk(self):
        """This command, then every sub-command below it, depth first."""
        yield self
        for sub in self.subcommands:
            yield from sub.walk()


def _metavar(action: argparse.Action) -> str | None:
    if action.nargs == 0:
        return None
    if action.metavar is not None:
        m = action.metavar
        return " ".join(m) if isinstance(m, tuple) else str(m)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    formatter = parser._get_formatter()
    out = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        choices = None if action.choices is None else tuple(map(str, action.choices))
        out.append(
            Option(
                flags=tuple(action.option_strings),
                dest=action.dest,
                # As --help shows it: %(default)s and the like filled in.
                help=formatter._expand_help(action) if action.help else action.help,
                metavar=_metavar(action),
                choices=choices,
                required=bool(action.required) or not action.option_strings,
            )
        )
    return tuple(out)


def describe(
    parser: argparse.ArgumentParser, path: tuple[str, ...], help: str | None = None
) -> Command:
    """`parser` and everything under it as a Command."""
    subs = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help for a in action._choices_actions}
        for name, sub in action.choices.items():
            subs.append(describe(sub, (*path, name), helps.get(name)))
    return Command(
        path=path,
        help=help,
        description=parser.description,
        usage=parser.format_usage().removeprefix("usage: ").strip(),
        options=_options(parser),
        subcommands=tuple(subs),
    )


# Variables some defaults are read from when a parser is built: a generated page shows the
# documented default, not the one of the machine that built it.
ENVIRONMENT_DEFAULTS = ("XENMUX_SOCKET", "XENMUX_SIM_DIR")


@contextlib.contextmanager
def _documented_defaults():
    saved = {var: os.environ.pop(var) for var in ENVIRONMENT_DEFAULTS if var in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def command_tree() -> Command:
    """`xenmux` with every command (each module imported, as running it would), with the
    defaults an unset environment gives."""
    from mux.cli import COMMANDS, build_parser, command_parser

    top = build_parser()
    with _documented_defaults():
        commands = tuple(
            describe(command_parser(name), ("xenmux", name), help_text)
            for name, (_module, help_text) in COMMANDS.items()
        )
    return Command(
        path=("xenmux",),
        help=None,
        description=top.description,
        usage=top.format_usage().removeprefix("usage: ").strip(),
        options=_options(top),
        subcommands=commands,
    )


# -- the generators' common part (mux/manpages.py, mux/completion.py) ------------------------


def write_generated(
    directory: str | os.PathLike[str], files: dict[str, str], *, stale: str | None = None
) -> list[Path]:
    """Write name -> text into `directory`; first remove the files matching the glob `stale`
    that are not among them (what a command that is gone left)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    if stale:
        for old in target.glob(stale):
            if old.name not in files:
                old.unlink()
    written = []
    for name, text in files.items():
        path = target / name
        path.write_text(text)
        written.append(path)
    return written


def generator_main(module: str, write: Callable[[str], list[Path]], argv: list[str] | None) -> int:
    """`python -m MODULE DIR`: write into DIR, say what was written."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m {module} DIR", file=sys.stderr)
        return 2
    written = write(argv[0])
    print(f"{', '.join(p.name for p in written)} in {argv[0]}")
    return 0
