"""Random domain lifecycles at a steady rate, inside the sim (`xenmux sim-ctl churn`).

Each lifecycle is what a toolstack does to one domain, its steps a few milliseconds apart
(a toolstack needs time between a shutdown and the destroy that follows it):

    boot       create
    reboot     shutdown(reboot), destroy, create again (same name and UUID, a new domid)
    poweroff   shutdown(poweroff), destroy
    crash      shutdown(crash), destroy
    migrate    suspend, resume (a checkpoint, or a migration that was cancelled)
    destroy    destroy a running domain (`xl destroy`)

Lifecycles start at `rate` per second and overlap; a domain takes part in one at a time.
The number of guests stays near where it started: boots are favoured below it, and
lifecycles that end a domain above it.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from mux.records import SHUTDOWN_CRASH, SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT
from mux.sim.host import SimError, SimHost

KINDS = ("boot", "reboot", "poweroff", "crash", "migrate", "destroy")
_WEIGHTS = {"boot": 2, "reboot": 3, "poweroff": 2, "crash": 1, "migrate": 2, "destroy": 1}
_ENDING = ("poweroff", "crash", "destroy")


class Churn:
    def __init__(self, host: SimHost, busy: set[int], *, seed: int | None, step_delay: float):
        self.host = host
        self.busy = busy
        self.rng = random.Random(seed)
        self.step_delay = step_delay
        self.lifecycles: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()
        self.errors = 0

    def _choose(self, target: int) -> tuple[str, int | None]:
        free = [
            d.domid
            for d in self.host.guests()
            if d.domid not in self.busy and not d.dying and not d.shutdown
        ]
        population = len(self.host.guests())
        weights = dict(_WEIGHTS)
        if population < target:
            weights["boot"] *= 3
        elif population > target:
            weights["boot"] = 0
            for kind in _ENDING:
                weights[kind] *= 2
        if not free:
            return "boot", None
        kinds = list(weights)
        kind = self.rng.choices(kinds, [weights[k] for k in kinds])[0]
        return kind, (None if kind == "boot" else self.rng.choice(free))

    async def _step(self) -> None:
        await asyncio.sleep(self.step_delay * (0.5 + self.rng.random()))

    async def _lifecycle(self, kind: str, domid: int | None) -> None:
        host = self.host
        try:
            if kind == "boot":
                host.create()
                self.ops["create"] += 1
                return
            assert domid is not None
            dom = host.get(domid)
            if kind == "migrate":
                host.suspend(domid)
                self.ops["suspend"] += 1
                await self._step()
                host.resume(domid)
                self.ops["resume"] += 1
                return
            if kind != "destroy":
                reason = {
                    "reboot": SHUTDOWN_REBOOT,
                    "poweroff": SHUTDOWN_POWEROFF,
                    "crash": SHUTDOWN_CRASH,
                }[kind]
                host.shutdown(domid, reason)
                self.ops["shutdown"] += 1
                await self._step()
            host.destroy(domid)
            self.ops["destroy"] += 1
            if kind == "reboot":
                await self._step()
                host.create(uuid=dom.handle, name=dom.name)
                self.ops["create"] += 1
        except SimError:
            # Someone else (sim-ctl, another churn) changed the domain meanwhile.
            self.errors += 1
        finally:
            if domid is not None:
                self.busy.discard(domid)

    async def run(self, seconds: float, rate: float) -> dict:
        if rate <= 0 or seconds < 0:
            raise SimError("churn needs a positive --rate and a --seconds of 0 or more")
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks: set[asyncio.Task] = set()
        try:
            await self._start_lifecycles(tasks, seconds, rate)
            if tasks:
                await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            # The sim is stopping: no lifecycle may touch the host once it is closed.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return {
            "seconds": round(loop.time() - start, 3),
            "lifecycles": dict(self.lifecycles),
            "ops": dict(self.ops),
            "errors": self.errors,
            "guests": len(self.host.guests()),
        }

    async def _start_lifecycles(self, tasks: set[asyncio.Task], seconds: float, rate: float):
        """Start `rate` lifecycles a second for `seconds`, each a task added to `tasks`."""
        loop = asyncio.get_running_loop()
        target = len(self.host.guests())
        start = loop.time()
        n = 0
        while True:
            due = start + n / rate
            now = loop.time()
            if due - start >= seconds:
                break
            if due > now:
                await asyncio.sleep(due - now)
            n += 1
            kind, domid = self._choose(target)
            if domid is not None:
                self.busy.add(domid)
            self.lifecycles[kind] += 1
            # Running domains use CPU between lifecycle changes.
            running = [d.domid for d in self.host.guests() if not d.shutdown][:64]
            if running:
                sample = self.rng.sample(running, min(4, len(running)))
                self.host.hv.tick(sample, self.rng.randint(1_000_000, 20_000_000))
            task = asyncio.create_task(self._lifecycle(kind, domid))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
