"""Man pages in roff, generated from the argument parsers (mux/clitree.py).

xenmux(1) lists the commands; xenmux-COMMAND(1) gives one command's synopsis, description and
options, with its sub-commands (sim-ctl's) as sections of their own. What they say is what
`--help` says, so they cannot drift from the code; docs/ has the long story.

    python -m mux.manpages DIR     # writes DIR/xenmux.1 and DIR/xenmux-COMMAND.1 (`make man`)

`make man` writes them to packaging/man/, from where the wheel installs them in
PREFIX/share/man/man1 (pyproject.toml's data files); a test keeps them current.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mux import __version__
from mux.clitree import Command, Option, command_tree, generator_main, write_generated

SECTION = "1"


def escape(text: str) -> str:
    """Text safe in roff: backslashes and hyphens escaped, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def page_name(command: Command) -> str:
    return "-".join(command.path[:2])  # xenmux, xenmux-serve; sub-commands share the page


def _option_item(option: Option) -> list[str]:
    if option.positional:
        head = f"\\fI{escape(option.metavar or option.dest)}\\fR"
    else:
        flags = ", ".join(f"\\fB{escape(flag)}\\fR" for flag in option.flags)
        value = f" \\fI{escape(option.metavar)}\\fR" if option.takes_value else ""
        head = flags + value
    return [".TP", head, escape(option.help or "")]


def _options_section(title: str, command: Command) -> list[str]:
    out = []
    positionals = [o for o in command.options if o.positional]
    flags = [o for o in command.options if not o.positional]
    if positionals:
        out += [f".SS {title}Arguments" if title else ".SH ARGUMENTS"]
        for option in positionals:
            out += _option_item(option)
    if flags:
        out += [f".SS {title}Options" if title else ".SH OPTIONS"]
        out += _option_item(
            Option(("-h", "--help"), "help", "show the help and exit", None, None, False)
        )
        for option in flags:
            out += _option_item(option)
    return out


def render(command: Command) -> str:
    """The page of `command` (xenmux itself, or one of its commands)."""
    name = page_name(command)
    summary = command.help or command.description or ""
    lines = [
        f'.TH {name.upper()} {SECTION} "" "xenmux {__version__}" "xen-watch-mux"',
        ".nh",  # no hyphenation: option and page names must stay whole
        ".ad l",
        ".SH NAME",
        f"{escape(name)} \\- {escape(summary)}",
        ".SH SYNOPSIS",
        ".nf",
        escape(command.usage),
        ".fi",
    ]
    if command.description:
        lines += [".SH DESCRIPTION", escape(command.description)]
    if len(command.path) == 1:
        lines += [".SH COMMANDS"]
        for sub in command.subcommands:
            lines += [".TP", f"\\fB{escape(sub.path[-1])}\\fR", escape(sub.help or "")]
            lines += [".br", f"See \\fB{escape(page_name(sub))}\\fR({SECTION})."]
        lines += _options_section("", command)
    else:
        lines += _options_section("", command)
        if command.subcommands:
            lines += [".SH COMMANDS"]
            for sub in command.subcommands:
                lines += [
                    f".SS {escape(sub.path[-1])}",
                    escape(sub.help or ""),
                    ".PP",
                    ".nf",
                    escape(sub.usage),
                    ".fi",
                ]
                for option in sub.options:
                    lines += _option_item(option)
    see_also = ["xenmux"] if len(command.path) > 1 else []
    see_also += [page_name(sub) for sub in command.subcommands] if len(command.path) == 1 else []
    lines += [".SH SEE ALSO"]
    lines += [", ".join(f"\\fB{escape(page)}\\fR({SECTION})" for page in see_also)]
    lines += ["The documentation in docs/ of the source (commands.md, operations.md, protocol.md)."]
    return "\n".join(line for line in lines if line != "") + "\n"


def pages(tree: Command | None = None) -> dict[str, str]:
    """File name -> roff text, for xenmux and every command."""
    tree = tree or command_tree()
    out = {f"{page_name(tree)}.{SECTION}": render(tree)}
    for command in tree.subcommands:
        out[f"{page_name(command)}.{SECTION}"] = render(command)
    return out


def write(directory: str | os.PathLike[str]) -> list[Path]:
    return write_generated(directory, pages(), stale=f"xenmux*.{SECTION}")


def main(argv: list[str] | None = None) -> int:
    return generator_main("mux.manpages", write, argv)


if __name__ == "__main__":
    sys.exit(main())
