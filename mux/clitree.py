"""The whole command line as data: every command's parser, every option and sub-command.

`xenmux` builds only the parser of the command it runs (mux.cli). The help test, the man
pages and the shell completion (mux/manpages.py, mux/completion.py) need all of them, built
the same way: `command_tree()` walks the argparse parsers into plain `Command` records.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field


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
    out = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        choices = None if action.choices is None else tuple(map(str, action.choices))
        out.append(
            Option(
                flags=tuple(action.option_strings),
                dest=action.dest,
                help=action.help,
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


def command_tree() -> Command:
    """`xenmux` with every command (each module imported, as running it would)."""
    from mux.cli import COMMANDS, build_parser, command_parser

    top = build_parser()
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
