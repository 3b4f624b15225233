"""Shell completion for bash and zsh, generated from the argument parsers (mux/clitree.py).

Each script finds the command being typed (`xenmux`, `xenmux serve`, `xenmux sim-ctl
churn`...) from the words before the cursor, then offers that command's sub-commands and
options, an option's choices after it, file names after an option that names a path, and
nothing after one whose value cannot be guessed (a count, a number of seconds).

    python -m mux.completion DIR   # writes DIR/xenmux (bash) and DIR/_xenmux (`make completion`)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mux.clitree import Command, Option, command_tree, generator_main, write_generated

# Installed (pyproject.toml's data files) as PREFIX/share/bash-completion/completions/xenmux,
# where bash-completion loads it when `xenmux` is first completed, and as
# PREFIX/share/zsh/site-functions/_xenmux, a directory of zsh's $fpath.
BASH_FILE = "xenmux"
ZSH_FILE = "_xenmux"
HELP_FLAGS = ("-h", "--help")
# Values that are file names: by their destination's name.
PATH_WORDS = ("dir", "socket", "path", "file", "lib", "out", "xenstore", "xenstored")


def names_a_path(option: Option) -> bool:
    return (
        option.takes_value
        and not option.choices
        and any(option.dest == word or option.dest.endswith("_" + word) for word in PATH_WORDS)
    )


def _flag_words(command: Command) -> list[str]:
    return [flag for option in command.options for flag in option.flags] + list(HELP_FLAGS)


def _value_options(tree: Command):
    """(command, option) of every option that takes a value."""
    for command in tree.walk():
        for option in command.options:
            if option.flags and option.takes_value:
                yield command, option


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def bash_script(tree: Command | None = None) -> str:
    tree = tree or command_tree()
    paths = [c.name for c in tree.walk() if len(c.path) > 1]
    out = [
        "# bash completion for xenmux: generated from its argument parser by mux.completion",
        "_xenmux() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        "    local path=xenmux i",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "$path ${COMP_WORDS[i]}" in',
        "            " + "|".join(_sh_quote(p) for p in paths) + ")",
        '                path="$path ${COMP_WORDS[i]}" ;;',
        "        esac",
        "    done",
        '    case "$path|$prev" in',
    ]
    by_kind: dict[str, list[str]] = {}
    for command, option in _value_options(tree):
        keys = [f"{command.name}|{flag}" for flag in option.flags]
        if option.choices:
            action = f'COMPREPLY=($(compgen -W {_sh_quote(" ".join(option.choices))} -- "$cur"))'
        elif names_a_path(option):
            action = 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur"))'
        else:
            action = "COMPREPLY=()"  # a value no list can offer
        by_kind.setdefault(action, []).extend(keys)
    for action, keys in by_kind.items():
        out += [
            "        " + "|".join(_sh_quote(k) for k in keys) + ")",
            f"            {action}; return ;;",
        ]
    out += ["    esac", '    case "$path" in']
    for command in tree.walk():
        words = [sub.path[-1] for sub in command.subcommands] + _flag_words(command)
        out += [
            f"        {_sh_quote(command.name)}) words={_sh_quote(' '.join(words))} ;;",
        ]
    out += [
        "    esac",
        '    COMPREPLY=($(compgen -W "$words" -- "$cur"))',
        "}",
        "complete -F _xenmux xenmux",
        "",
    ]
    return "\n".join(out)


def _zsh_item(word: str, description: str | None) -> str:
    """One `_describe` entry, word:description (a colon in the word escaped)."""
    text = " ".join((description or "").split())
    return _sh_quote(word.replace(":", "\\:") + (":" + text if text else ""))


def zsh_script(tree: Command | None = None) -> str:
    tree = tree or command_tree()
    paths = [c.name for c in tree.walk() if len(c.path) > 1]
    out = [
        "#compdef xenmux",
        "# zsh completion for xenmux: generated from its argument parser by mux.completion",
        "local cmd=xenmux i",
        "local -a items",
        "for ((i = 2; i < CURRENT; i++)); do",
        '    case "$cmd ${words[i]}" in',
        "        (" + "|".join(_sh_quote(p) for p in paths) + ")",
        '            cmd="$cmd ${words[i]}" ;;',
        "    esac",
        "done",
        'case "$cmd|${words[CURRENT-1]}" in',
    ]
    for command, option in _value_options(tree):
        keys = "|".join(_sh_quote(f"{command.name}|{flag}") for flag in option.flags)
        if option.choices:
            action = "compadd -- " + " ".join(_sh_quote(c) for c in option.choices)
        elif names_a_path(option):
            action = "_files"
        else:
            action = f"_message {_sh_quote(option.metavar or option.dest)}"
        out += [f"    ({keys})", f"        {action}; return ;;"]
    out += ["esac", 'case "$cmd" in']
    for command in tree.walk():
        subs = [_zsh_item(sub.path[-1], sub.help) for sub in command.subcommands]
        flags = [_zsh_item(flag, o.help) for o in command.options for flag in o.flags]
        flags += [_zsh_item(flag, "show the help and exit") for flag in HELP_FLAGS]
        out += [f"    ({_sh_quote(command.name)})"]
        if subs:
            out += [f"        items=({' '.join(subs)})", "        _describe command items"]
        out += [
            f"        items=({' '.join(flags)})",
            "        _describe option items",
            "        ;;",
        ]
    out += ["esac", ""]
    return "\n".join(out)


def write(directory: str | os.PathLike[str]) -> list[Path]:
    tree = command_tree()
    return write_generated(directory, {BASH_FILE: bash_script(tree), ZSH_FILE: zsh_script(tree)})


def main(argv: list[str] | None = None) -> int:
    return generator_main("mux.completion", write, argv)


if __name__ == "__main__":
    sys.exit(main())
