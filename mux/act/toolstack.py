"""What act asks of a toolstack, and how a toolstack is found by name.

A toolstack carries out actions on domains (`destroy`, `create` again, `dump_core`...),
tells each domain's own on_* settings, and lists the host's domains so that an action
interrupted by a SIGKILL can be re-checked against the truth before it is done again.

`xl` (mux.act.xl) runs Xen's `xl`; `sim` (mux.sim.act_toolstack) drives a simulated host.
They are found by name, as the daemon finds its backends, so that act imports the
simulator only when asked to drive one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

TOOLSTACKS: dict[str, str] = {
    "xl": "mux.act.xl:XlToolstack",
    "sim": "mux.sim.act_toolstack:SimToolstack",
}


class ToolstackError(Exception):
    """An action the toolstack could not carry out (`str()` says why, in one line)."""


class NoSuchDomain(ToolstackError):
    """The domain is not there (any more)."""


@dataclass(frozen=True)
class Domain:
    """A domain as act knows it: its incarnation and name."""

    domid: int
    uuid: str
    name: str


class Toolstack(Protocol):
    name: str
    # Actions it carries out without a policy command.
    supported: frozenset[str]

    async def settings(self, dom: Domain) -> Mapping[str, str]:
        """The domain's own on_* settings (`on_crash` -> `preserve`...), {} if none."""

    async def domains(self) -> list[Domain]:
        """Every domain on the host now (dom0 included or not)."""

    async def destroy(self, dom: Domain) -> None:
        """Destroy the domain; NoSuchDomain if it is gone."""

    async def create(self, dom: Domain, config: str, settings: Mapping[str, str]) -> int:
        """Create the domain again (same name, configuration and UUID) from `config`, or
        with the on_* `settings` it had where the toolstack has no config file; its domid."""

    async def dump_core(self, dom: Domain, path: str) -> None: ...

    async def rename(self, dom: Domain) -> Domain:
        """Keep the shut-down domain under another name and UUID (for rename-restart)."""

    async def soft_reset(self, dom: Domain) -> None: ...

    def describe(self, op: str, dom: Domain, arg: str | None = None) -> str:
        """What `op` would run (for --dry-run)."""

    async def close(self) -> None: ...


def open_toolstack(name: str, options: Mapping[str, object]) -> Toolstack:
    """The toolstack called `name`, made with the command's options (`sim_dir`, `dry_run`)."""
    try:
        target = TOOLSTACKS[name]
    except KeyError:
        raise ToolstackError(
            f"no toolstack {name!r} (known: {', '.join(sorted(TOOLSTACKS))})"
        ) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)(options)
