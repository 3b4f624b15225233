"""Random domain lifecycles at a steady rate, inside the sim (`xenmux sim-ctl churn`).

Each lifecycle is what a toolstack does to one domain, its steps a few milliseconds apart
(a toolstack needs time between a shutdown and the destroy that follows it):

    boot            create
    reboot          shutdown(reboot), destroy, create again (same name and UUID, a new domid)
    poweroff        shutdown(poweroff), destroy
    crash           shutdown(crash), destroy
    migrate         suspend, resume (a checkpoint, or a migration that was cancelled)
    destroy         destroy a running domain (`xl destroy`)

and, only when asked for (`kinds`), the harder cases a chaos run needs:

    zombie          destroy that leaves the domain dying (held by page references), then
                    after `hold` seconds the final destroy
    reuse           destroy, then create again with the same domid (`--domid`): with another
                    UUID one step later, or with the same UUID after `hold` seconds
    migrate-away    suspend, destroy (a migration that succeeded: the domain lives elsewhere)
    migrate-failed  suspend, resume, then after `hold` seconds shutdown(poweroff), destroy

With `guests_only` (`sim-ctl churn --guests-only`) only the guests act: they power off,
reboot, crash or trip their watchdog by themselves, and each domain then stays shut down
until a toolstack (`xenmux act`) acts; boots still come to keep the population.

Lifecycles start at `rate` per second and overlap; a domain takes part in one at a time.
The number of guests stays near where it started: boots are favoured below it, and
lifecycles that end a domain above it. With `domids=(LO, HI)` boots (and reboots) take a
free domid from that range, as a toolstack that chooses domids does, and one boot in ten
leaves the choice to Xen's allocation.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterable

from mux.records import DOMID_FIRST_RESERVED, SHUTDOWN_CRASH, SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT
from mux.sim.guests import ToolstackBook
from mux.sim.host import SimError, SimHost

KINDS = ("boot", "reboot", "poweroff", "crash", "migrate", "destroy")
EXTRA_KINDS = ("zombie", "reuse", "migrate-away", "migrate-failed")
ALL_KINDS = KINDS + EXTRA_KINDS
_WEIGHTS = {
    "boot": 2,
    "reboot": 3,
    "poweroff": 2,
    "crash": 1,
    "migrate": 2,
    "destroy": 1,
    "zombie": 1,
    "reuse": 2,
    "migrate-away": 1,
    "migrate-failed": 1,
}
_ENDING = ("poweroff", "crash", "destroy", "zombie", "migrate-away", "migrate-failed")
_REASONS = {"reboot": SHUTDOWN_REBOOT, "poweroff": SHUTDOWN_POWEROFF, "crash": SHUTDOWN_CRASH}
ROVER_SHARE = 0.1  # boots left to Xen's allocation when a domid range is given
# guests_only: what guests do by themselves (mux.sim.guests), weighted
_GUEST_WEIGHTS = {"boot": 2, "reboot": 3, "poweroff": 2, "crash": 1, "watchdog": 1}


def parse_kinds(kinds: Iterable[str] | str | None) -> tuple[str, ...]:
    """Lifecycle kinds by name ("all" for every one); None gives the default set."""
    if kinds is None:
        return KINDS
    if isinstance(kinds, str):
        kinds = ALL_KINDS if kinds == "all" else [k for k in kinds.split(",") if k]
    out = tuple(dict.fromkeys(kinds))
    for kind in out:
        if kind not in ALL_KINDS:
            raise SimError(f"unknown churn kind {kind!r}: use some of {', '.join(ALL_KINDS)}")
    if not out:
        raise SimError("churn needs at least one lifecycle kind")
    return out


def parse_domids(domids: Iterable[int] | str | None) -> tuple[int, int] | None:
    """A domid range "LO-HI" (or [LO, HI]), both guest domids, LO <= HI."""
    if domids is None:
        return None
    try:
        if isinstance(domids, str):
            lo_text, _, hi_text = domids.partition("-")
            lo, hi = int(lo_text), int(hi_text)
        else:
            lo, hi = (int(x) for x in domids)
    except (TypeError, ValueError):
        raise SimError(f"a domid range is LO-HI, not {domids!r}") from None
    if not 0 < lo <= hi < DOMID_FIRST_RESERVED:
        raise SimError(f"a domid range is LO-HI within 1..{DOMID_FIRST_RESERVED - 1}")
    return lo, hi


class Churn:
    def __init__(
        self,
        host: SimHost,
        busy: set[int],
        *,
        seed: int | None,
        step_delay: float,
        kinds: Iterable[str] | str | None = None,
        domids: Iterable[int] | str | None = None,
        hold: float = 2.0,
        book: ToolstackBook | None = None,
    ):
        self.host = host
        self.book = book  # guests only: their shutdowns and the boots go through the book
        self.busy = busy
        self.rng = random.Random(seed)
        self.step_delay = step_delay
        self.kinds = parse_kinds(kinds)
        self.domids = parse_domids(domids)
        if not 0 <= hold <= 60:
            raise SimError(f"hold must be 0..60 seconds, not {hold}")
        self.hold = hold
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
        if self.book is not None:
            weights = dict(_GUEST_WEIGHTS)
        else:
            weights = {k: _WEIGHTS[k] for k in self.kinds}
        if population < target:
            if "boot" in weights:
                weights["boot"] *= 3
        elif population > target:
            if "boot" in weights:
                weights["boot"] = 0
            for kind in _ENDING:
                if kind in weights:
                    weights[kind] *= 2
        if not free:
            return "boot", None
        kinds = list(weights)
        if not any(weights.values()):
            return "boot", None
        kind = self.rng.choices(kinds, [weights[k] for k in kinds])[0]
        return kind, (None if kind == "boot" else self.rng.choice(free))

    async def _step(self) -> None:
        await asyncio.sleep(self.step_delay * (0.5 + self.rng.random()))

    async def _hold(self) -> None:
        await asyncio.sleep(self.hold * (0.5 + self.rng.random()))

    def _free_domid(self, besides: int | None = None) -> int | None:
        """A free domid of the range for a boot, or None for Xen's allocation."""
        if self.domids is None or self.rng.random() < ROVER_SHARE:
            return None
        lo, hi = self.domids
        taken = self.host.hv.domains
        for _ in range(64):  # a random probe finds one fast while the range is not full
            d = self.rng.randint(lo, hi)
            if d not in taken and d not in self.busy and d != besides:
                return d
        return None

    def _create(self, **kwargs) -> None:
        self.host.create(**kwargs)
        self.ops["create"] += 1

    async def _lifecycle(self, kind: str, domid: int | None) -> None:
        host = self.host
        try:
            if self.book is not None:
                self._guest_lifecycle(kind, domid)
                return
            if kind == "boot":
                self._create(domid=self._free_domid())
                return
            assert domid is not None
            dom = host.get(domid)
            if kind in ("migrate", "migrate-away", "migrate-failed"):
                host.suspend(domid)
                self.ops["suspend"] += 1
                await self._step()
                if kind == "migrate-away":
                    host.destroy(domid)
                    self.ops["destroy"] += 1
                    return
                host.resume(domid)
                self.ops["resume"] += 1
                if kind == "migrate":
                    return
                await self._hold()
                kind = "poweroff"  # the failed migration's domain ends as any other
            if kind == "zombie":
                host.destroy(domid, zombie=True)
                self.ops["destroy"] += 1
                await self._hold()
                host.destroy(domid)
                self.ops["destroy"] += 1
                return
            if kind in _REASONS:
                host.shutdown(domid, _REASONS[kind])
                self.ops["shutdown"] += 1
                await self._step()
            host.destroy(domid)
            self.ops["destroy"] += 1
            if kind == "reboot":
                await self._step()
                self._create(uuid=dom.handle, name=dom.name, domid=self._free_domid(domid))
            elif kind == "reuse":
                same = self.rng.random() < 0.5
                # The same UUID on the same domid is only told apart by the daemon if it
                # sees the domid dying or gone in between: give it time (`hold`).
                await (self._hold() if same else self._step())
                self._create(uuid=dom.handle if same else None, name=dom.name, domid=domid)
        except SimError:
            # Someone else (sim-ctl, another churn) changed the domain meanwhile.
            self.errors += 1
        finally:
            if domid is not None:
                self.busy.discard(domid)

    def _guest_lifecycle(self, kind: str, domid: int | None) -> None:
        assert self.book is not None
        if kind == "boot":
            self.book.created(self.host.create(), {}, "churn")
            self.ops["create"] += 1
        else:
            assert domid is not None
            self.book.guest(domid, kind)
            self.ops["guest"] += 1

    async def run(self, seconds: float, rate: float) -> dict:
        if rate <= 0 or seconds < 0:
            raise SimError("churn needs a positive --rate and a --seconds of 0 or more")
        loop = asyncio.get_running_loop()
        target = len(self.host.guests())
        start = loop.time()
        tasks: set[asyncio.Task] = set()
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
        if tasks:
            await asyncio.gather(*tasks)
        return {
            "seconds": round(loop.time() - start, 3),
            "lifecycles": dict(self.lifecycles),
            "ops": dict(self.ops),
            "errors": self.errors,
            "guests": len(self.host.guests()),
        }
