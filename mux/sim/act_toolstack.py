"""`xenmux act --toolstack sim`: the actions carried out on a simulated host, over its
control socket (the requests `sim-ctl` makes). Every action is supported.

    destroy          destroy DOMID (the domain's stored settings go with it)
    restart          destroy, then create with the same name, UUID and settings
    coredump-*       dump-core DOMID FILE first (a JSON description of the domain)
    rename-restart   rename DOMID to NAME-<time> with a new UUID (libxl's preserve), create
    soft-reset       soft-reset DOMID: the same domid runs again

Each request says `by: "act"`, so the sim's truth log (DIR/toolstack.log) tells act's work
from anyone else's.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Mapping

from mux.act.policy import ACTIONS
from mux.act.toolstack import Domain, NoSuchDomain, ToolstackError
from mux.sim.ctl import AsyncSimControl, SimControlError
from mux.sim.paths import sim_paths

BY = "act"


class Batcher:
    """Requests of one kind made while one is in flight go out together in the next, so
    that a burst of 1,000 shutdowns costs the sim a few table changes, not 1,000."""

    def __init__(self, send: Callable[[list], Awaitable[list]]) -> None:
        self.send = send
        self.queue: list[tuple[object, asyncio.Future]] = []
        self.running = False
        self._task: asyncio.Task | None = None

    async def __call__(self, item: object):
        future = asyncio.get_running_loop().create_future()
        self.queue.append((item, future))
        if not self.running:
            self.running = True
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue, []
                try:
                    results = await self.send([item for item, _ in batch])
                except Exception as exc:  # every request of the batch gets the failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self.running = False


class SimToolstack:
    name = "sim"
    supported = frozenset(ACTIONS)

    def __init__(self, options: Mapping[str, object]) -> None:
        sim_dir = options.get("sim_dir")
        if not sim_dir:
            raise ToolstackError("--toolstack sim needs --sim-dir DIR (or $XENMUX_SIM_DIR)")
        self.dir = str(sim_dir)
        self.default_state_dir = sim_paths(self.dir).act_state
        self._ctl: AsyncSimControl | None = None
        self._lock = asyncio.Lock()
        self._rows = Batcher(lambda domids: self._call("domains", domids))
        self._destroys = Batcher(lambda pairs: self._call("destroy_incarnations", pairs, by=BY))

    async def _call(self, method: str, *args, **kwargs):
        """One request on a connection made (again) as needed: the sim may restart."""
        for attempt in (1, 2):
            async with self._lock:
                if self._ctl is None:
                    try:
                        self._ctl = await AsyncSimControl.connect(self.dir)
                    except SimControlError as exc:
                        raise ToolstackError(str(exc)) from None
                ctl = self._ctl
            try:
                return await getattr(ctl, method)(*args, **kwargs)
            except SimControlError as exc:
                text = str(exc)
                if text.startswith("no domain "):
                    raise NoSuchDomain(text) from None
                if "did not answer" in text or "closed the connection" in text:
                    async with self._lock:
                        if self._ctl is ctl:
                            self._ctl = None
                    await ctl.close()
                    if attempt == 1:
                        continue
                raise ToolstackError(text) from None
        raise AssertionError("unreachable")

    def describe(self, op: str, dom: Domain, arg: str | None = None) -> str:
        tail = f" {arg}" if arg else ""
        return f"sim {op} {dom.domid} ({dom.name} {dom.uuid}){tail}"

    async def settings(self, dom: Domain) -> Mapping[str, str]:
        row = await self._rows(dom.domid)
        if row is None or row.get("uuid") != dom.uuid:
            return {}
        return row.get("settings") or {}

    async def domains(self) -> list[Domain]:
        return [Domain(r["domid"], r["uuid"], r["name"]) for r in await self._call("list")]

    async def destroy(self, dom: Domain) -> None:
        if not await self._destroys((dom.domid, dom.uuid)):
            raise NoSuchDomain(f"domain {dom.domid} ({dom.uuid}) is not there")

    async def create(self, dom: Domain, config: str, settings: Mapping[str, str]) -> int:
        # The simulated toolstack keeps what a config file would say: the on_* settings.
        [row] = await self._call(
            "create", uuid=dom.uuid, name=dom.name, settings=dict(settings), by=BY
        )
        return int(row["domid"])

    async def dump_core(self, dom: Domain, path: str) -> None:
        await self._call("dump_core", dom.domid, path, by=BY)

    async def rename(self, dom: Domain) -> Domain:
        stamp = time.strftime("-%Y%m%dT%H%MZ", time.gmtime())
        row = await self._call("rename", dom.domid, dom.name + stamp, str(uuidlib.uuid4()), by=BY)
        return Domain(row["domid"], row["uuid"], row["name"])

    async def soft_reset(self, dom: Domain) -> None:
        row = await self._rows(dom.domid)
        if row is None or row["uuid"] != dom.uuid:
            raise NoSuchDomain(f"domain {dom.domid} ({dom.uuid}) is not there")
        if row["state"] == "running":
            return  # reset already (an interrupted run did it)
        await self._call("soft_reset", dom.domid, by=BY)

    async def close(self) -> None:
        if self._ctl is not None:
            await self._ctl.close()
            self._ctl = None
