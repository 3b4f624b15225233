"""Domains as users name them: a domid, a name or a UUID, resolved once at start.

A positional argument of digits only is a domid. Anything else is a name, and if no
domain carries that name, a UUID. `--name` and `--uuid` say which one is meant (a name
made of digits needs `--name`). When several domains match, a live one is preferred to
one already dead (a domain being destroyed next to the one that replaced it); more than
one live match is ambiguous. Resolution reads the daemon's table once: the domid found is
what the command then follows.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mux.commands.failure import EXIT_USAGE, CommandError
from mux.protocol import DEAD
from mux.records import DOMID_FIRST_RESERVED

DOMID, NAME, UUID, NAME_OR_UUID = "domid", "name", "uuid", "name or UUID"


@dataclass(frozen=True)
class Target:
    text: str
    kind: str  # DOMID, NAME, UUID or NAME_OR_UUID

    def __str__(self) -> str:
        return self.text


def add_target_arguments(p: argparse.ArgumentParser, what: str, *, required: bool) -> None:
    p.add_argument(
        "domains",
        nargs="+" if required else "*",
        metavar="DOMAIN",
        help=f"{what}: a domid (digits only), else a domain name, else a UUID",
        default=[],
    )
    p.add_argument(
        "--uuid",
        action="append",
        default=[],
        metavar="UUID",
        help="a domain by its UUID (may be repeated)",
    )
    p.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME",
        help="a domain by its name, even one made of digits (may be repeated)",
    )


def targets_of(args: argparse.Namespace) -> list[Target]:
    found = [Target(t, DOMID if t.isdigit() else NAME_OR_UUID) for t in args.domains]
    found += [Target(t, UUID) for t in args.uuid]
    found += [Target(t, NAME) for t in args.name]
    for t in found:
        if t.kind == DOMID and int(t.text) >= DOMID_FIRST_RESERVED:
            raise CommandError(f"domid {t.text} is not below {DOMID_FIRST_RESERVED}", EXIT_USAGE)
    return found


def needs_table(targets: list[Target]) -> bool:
    return any(t.kind != DOMID for t in targets)


def resolve(targets: list[Target], rows: list[dict], status: int) -> list[int]:
    """The domids meant, in order and without repeats. CommandError with `status` for a
    name or UUID that no domain carries, or that several do."""
    out: list[int] = []
    for t in targets:
        domid = int(t.text) if t.kind == DOMID else _lookup(t, rows, status)
        if domid not in out:
            out.append(domid)
    return out


def _lookup(t: Target, rows: list[dict], status: int) -> int:
    matches: list[dict] = []
    if t.kind in (NAME, NAME_OR_UUID):
        matches = [r for r in rows if r.get("name") == t.text]
    if not matches and t.kind in (UUID, NAME_OR_UUID):
        matches = [r for r in rows if r["uuid"].lower() == t.text.lower()]
    live = [r for r in matches if r["state"] != DEAD]
    if len(matches) > 1 and len(live) == 1:
        matches = live
    if not matches:
        raise CommandError(f"no domain with the {t.kind} {t.text!r}", status)
    if len(matches) > 1:
        domids = ", ".join(str(r["domid"]) for r in matches)
        raise CommandError(
            f"{t.text!r} is ambiguous: domains {domids} match it; give a domid", status
        )
    return matches[0]["domid"]
