"""The `xl` toolstack: each action is the `xl` command an operator would type.

    destroy            xl destroy DOMID
    restart            xl destroy DOMID, then xl create -e CONFIG uuid="UUID"
    coredump-*         xl dump-core DOMID FILE first
    rename-restart,    no plain xl command: refused at policy load unless the policy's
    soft-reset         [commands] names one

`-e` starts the domain without xl's background monitor (act is the monitor), and the
`uuid=` variable keeps the domain's UUID, as xl's own restart does. A domain's own on_*
settings are read from `xl list -l DOMID` (libxl's stored configuration).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from collections.abc import Mapping

from mux.act.policy import REASON_KEYS
from mux.act.toolstack import Domain, NoSuchDomain, ToolstackError

log = logging.getLogger("xenmux.act")

COMMAND_TIMEOUT = 120.0  # an `xl create` may balloon dom0 down first

# libxl's JSON names of libxl_action_on_shutdown -> xl.cfg(5) names
LIBXL_ACTIONS = {
    "destroy": "destroy",
    "restart": "restart",
    "restart_rename": "rename-restart",
    "preserve": "preserve",
    "coredump_destroy": "coredump-destroy",
    "coredump_restart": "coredump-restart",
    "soft_reset": "soft-reset",
}
SETTING_KEYS = tuple(REASON_KEYS.values())


class XlToolstack:
    name = "xl"
    supported = frozenset(
        {"destroy", "restart", "preserve", "coredump-destroy", "coredump-restart"}
    )

    def __init__(self, options: Mapping[str, object]) -> None:
        self.xl = str(options.get("xl") or "xl")
        self._told_settings = False

    def commands(self, op: str, dom: Domain, arg: str | None = None) -> list[list[str]]:
        """The xl command lines of one step (what --dry-run prints)."""
        if op == "destroy":
            return [[self.xl, "destroy", str(dom.domid)]]
        if op == "create":
            return [[self.xl, "create", "-e", arg or "", f'uuid="{dom.uuid}"']]
        if op == "dump-core":
            return [[self.xl, "dump-core", str(dom.domid), arg or ""]]
        raise ToolstackError(f"xl has no command for {op}")

    def describe(self, op: str, dom: Domain, arg: str | None = None) -> str:
        return "; ".join(shlex.join(argv) for argv in self.commands(op, dom, arg))

    async def _run(self, argv: list[str]) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ToolstackError(f"cannot run {argv[0]}: {exc.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ToolstackError(
                f"{shlex.join(argv)}: no answer in {COMMAND_TIMEOUT:.0f} s"
            ) from None
        if proc.returncode != 0:
            why = err.decode(errors="replace").strip().splitlines()
            raise ToolstackError(
                f"{shlex.join(argv)} exited with {proc.returncode}: {why[-1] if why else ''}"
            )
        return out.decode(errors="replace")

    async def _list_long(self, *domid: str) -> list[dict]:
        text = await self._run([self.xl, "list", "-l", *domid])
        try:
            rows = json.loads(text or "[]")
        except ValueError:
            raise ToolstackError("xl list -l printed no JSON") from None
        return rows if isinstance(rows, list) else []

    async def settings(self, dom: Domain) -> Mapping[str, str]:
        try:
            rows = await self._list_long(str(dom.domid))
        except ToolstackError as exc:
            if not self._told_settings:
                self._told_settings = True
                log.warning(
                    "cannot read domains' own on_* settings (%s): policy and xl defaults apply", exc
                )
            return {}
        config = (rows[0].get("config") or {}) if rows else {}
        return {k: LIBXL_ACTIONS[v] for k in SETTING_KEYS if (v := config.get(k)) in LIBXL_ACTIONS}

    async def domains(self) -> list[Domain]:
        out = []
        for row in await self._list_long():
            c_info = (row.get("config") or {}).get("c_info") or {}
            if "domid" in row:
                out.append(
                    Domain(
                        int(row["domid"]), str(c_info.get("uuid", "")), str(c_info.get("name", ""))
                    )
                )
        return out

    async def _incarnation(self, dom: Domain) -> bool:
        """Whether DOMID is still this incarnation (its UUID), from `xl list -l DOMID`."""
        try:
            rows = await self._list_long(str(dom.domid))
        except ToolstackError:
            return False  # xl says no such domain
        c_info = ((rows[0].get("config") or {}).get("c_info") or {}) if rows else {}
        return str(c_info.get("uuid", "")).lower() == dom.uuid.lower()

    async def destroy(self, dom: Domain) -> None:
        if not await self._incarnation(dom):
            raise NoSuchDomain(f"domain {dom.domid} ({dom.uuid}) is not there")
        await self._run(self.commands("destroy", dom)[0])

    async def create(self, dom: Domain, config: str, settings: Mapping[str, str]) -> int:
        await self._run(self.commands("create", dom, config)[0])
        for d in await self.domains():
            if d.uuid == dom.uuid:
                return d.domid
        raise ToolstackError(f"xl create {config} made no domain with UUID {dom.uuid}")

    async def dump_core(self, dom: Domain, path: str) -> None:
        await self._run(self.commands("dump-core", dom, path)[0])

    async def rename(self, dom: Domain) -> Domain:
        raise ToolstackError(
            "xl has no rename-restart command: name one in the policy's [commands]"
        )

    async def soft_reset(self, dom: Domain) -> None:
        raise ToolstackError("xl has no soft-reset command: name one in the policy's [commands]")

    async def close(self) -> None:
        pass
