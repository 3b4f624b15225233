"""The scenarios: what the harness does to the simulated host, and what each model is due.

Each operation is one change of the domain table; its stamp (the sim's header, offset 32)
is the reference of the latency of the notifications it causes. A destroy is driven as two
changes, `dying` (which fires @releaseDomain) and then the record gone (which fires nothing:
xenstored forgot the domain when it became dying), so the death's reference is the `dying`
stamp. Nothing fires at a creation's table change either; `@introduceDomain` fires at the
XS_INTRODUCE that follows, and nothing fires at a resume at all.

Due notifications, per domain:

| scenario | mux (subscriber) | monitors, libxl (xl) |
| --- | --- | --- |
| one | shutdown, death | shutdown, death |
| mass | shutdown | shutdown |
| migrate | shutdown(suspend), resumed | shutdown(suspend) (a resume fires nothing) |
| churn | shutdown, death / new | shutdown, death / new |
| boot | new | new |

`released` is never due: the record's final removal fires nothing, so the daemon reports it
at its next scan, whenever that is.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mux.bench.host import HostError, Op, SimHost
from mux.bench.models import Model
from mux.bench.procs import total_cpu
from mux.bench.results import CREATED, FIRED, RESUMED, Expectations

SCENARIOS = ("one", "mass", "boot", "migrate", "churn")
TITLES = {
    "one": "one lifecycle",
    "mass": "mass shutdown",
    "boot": "boot storm",
    "migrate": "migration storm",
    "churn": "steady churn",
}
# Scenarios whose cost in the per-domain models grows with N x N (every change fires at
# every watcher): above --monitors-mass-max they are extrapolated from the cost per firing.
QUADRATIC = frozenset({"mass", "migrate"})
# The models with a process and a watch per domain.
PER_DOMAIN = ("monitors", "libxl")


@dataclass
class Params:
    one_count: int = 50
    migrate_fraction: float = 0.10
    churn_seconds: float = 10.0
    churn_rate: float = 10.0  # lifecycles per second, alternately a poweroff and a boot
    mass_rate: float = 5000.0  # the mass shutdown's changes per second (0: back to back)
    wait_timeout: float = 120.0
    # quiet() before and after each window: the processes used under 2% of a CPU over it.
    quiet_interval: float = 0.1

    def quiet(self, pids: list[int]) -> bool:
        return quiet(
            pids, interval=self.quiet_interval, threshold_ns=int(self.quiet_interval * 2e7)
        )


class Toolstack:
    """Extra toolstack steps for an external xenstored (none for the sim's own)."""

    def after_create(self, domid: int) -> None:
        pass

    def after_resume(self, domid: int) -> None:
        pass

    def before_destroy(self, domid: int) -> None:
        pass


@dataclass
class Ctx:
    host: SimHost
    model: Model
    params: Params
    rng: random.Random
    toolstack: Toolstack = field(default_factory=Toolstack)
    tick: Callable[[], None] = lambda: None
    expect: Expectations = field(default_factory=Expectations)
    guests: list[int] = field(default_factory=list)
    changes: int = 0
    release_firings: int = 0
    introduce_firings: int = 0
    watch_events: int = 0
    resumes: int = 0
    fired_ops: list[tuple[int, int]] = field(default_factory=list)  # (stamp, firings)

    # -- operations ------------------------------------------------------------------------

    def due(self, kind: str, domid: int, stamp: int, category: str = FIRED) -> None:
        if self.model.notifies:
            self.expect.add(kind, domid, stamp, category)

    def op(self, name: str, **fields) -> Op:
        op = self.host.op(name, **fields)
        self.changes += 1
        self.release_firings += op.release_firings
        self.introduce_firings += op.introduce_firings
        self.watch_events += op.watch_events
        self.fired_ops.append((op.stamp, op.release_firings))
        return op

    def shutdown(self, domid: int, reason: str = "poweroff") -> None:
        op = self.op("shutdown", domid=domid, reason=reason)
        self.due("shutdown", domid, op.stamp)

    def suspend(self, domid: int) -> None:
        op = self.op("suspend", domid=domid)
        self.due("shutdown", domid, op.stamp)

    def resume(self, domid: int) -> None:
        op = self.op("resume", domid=domid)
        self.toolstack.after_resume(domid)
        self.resumes += 1
        if self.model.sees_resume:
            self.due("resumed", domid, op.stamp, RESUMED)

    def destroy(self, domid: int) -> None:
        self.toolstack.before_destroy(domid)
        dying = self.op("destroy", domid=domid, zombie=True)
        self.due("death", domid, dying.stamp)
        self.op("destroy", domid=domid)
        if domid in self.guests:
            self.guests.remove(domid)

    def create(self) -> int:
        op = self.op("create")
        domid = op.domid
        self.toolstack.after_create(domid)
        if self.model.spawn_after_create:
            self.model.spawn_for(domid)
        self.due("new", domid, op.stamp, CREATED)
        self.guests.append(domid)
        return domid

    def applied_rate(self) -> float | None:
        """Changes per second as the host applied them: the span of their stamps."""
        if len(self.fired_ops) < 2:
            return None
        span = self.fired_ops[-1][0] - self.fired_ops[0][0]
        return (len(self.fired_ops) - 1) * 1e9 / span if span > 0 else None

    # -- waiting ---------------------------------------------------------------------------

    def missing(self) -> int:
        self.model.results.poll()
        return self.expect.missing(self.model.results.received)

    def wait(self, timeout: float | None = None, interval: float = 0.001) -> bool:
        """Until every due notification came (True) or the time is up (False)."""
        deadline = time.monotonic() + (self.params.wait_timeout if timeout is None else timeout)
        while self.missing():
            if self.model.results.errors:
                raise HostError(f"{self.model.name}: {self.model.results.errors[0]}")
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True

    def wait_for(self, kind: str, domid: int, timeout: float = 30.0) -> bool:
        """Until the interested process was told `kind` for `domid` as often as it is due
        (as a toolstack reacts to what it is told); at once for the bare host."""
        key = (kind, domid)
        want = self.expect.want.get(key, 0)
        deadline = time.monotonic() + timeout
        while self.model.results.received.get(key, 0) < want:
            self.model.results.poll()
            if self.model.results.errors:
                raise HostError(f"{self.model.name}: {self.model.results.errors[0]}")
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0005)
        return True

    def settle(self) -> None:
        """Let stragglers finish (other watchers still handling the firing) before the next
        isolated change: until the model's processes used under 0.3 ms of CPU in 20 ms, at
        most 2 s."""
        quiet(self.model.all_pids(), interval=0.02, threshold_ns=300_000, limit=2.0)


def quiet(
    pids: list[int], *, interval: float = 0.1, threshold_ns: int = 2_000_000, limit: float = 30.0
) -> bool:
    """Until the processes used less than `threshold_ns` of CPU over `interval` (True), or
    `limit` seconds passed (False)."""
    deadline = time.monotonic() + limit
    last = total_cpu(pids)
    while True:
        time.sleep(interval)
        now = total_cpu(pids)
        if now - last < threshold_ns:
            return True
        if time.monotonic() > deadline:
            return False
        last = now


def spread(items: list[int], k: int) -> list[int]:
    """k items spread evenly over `items` (the whole table, not only its start)."""
    if k >= len(items):
        return list(items)
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


# The scenarios --------------------------------------------------------------------------------


def one(ctx: Ctx) -> None:
    """One domain's lifecycle at a time: shutdown, then destroy; each on a quiet host."""
    for domid in spread(ctx.guests, ctx.params.one_count):
        ctx.shutdown(domid)
        ctx.wait()
        ctx.settle()
        ctx.tick()
        ctx.destroy(domid)
        ctx.wait()
        ctx.settle()
        ctx.tick()


def mass(ctx: Ctx) -> None:
    """Every guest shuts down, one change (one VIRQ) each, raised at `mass_rate` changes a
    second (0: each as soon as the host applied the one before).

    The schedule is absolute (change i is due at start + i / rate), so a late change is
    followed by the next at once, and the rate the host sustained is its stamps' (applied_rate).
    """
    rate = ctx.params.mass_rate
    start = time.monotonic()
    for i, domid in enumerate(list(ctx.guests)):
        if rate > 0:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        ctx.shutdown(domid)
        if i % 256 == 0:
            ctx.tick()
    ctx.wait(interval=0.005)


def boot(ctx: Ctx, count: int) -> None:
    """`count` domains created one after the other on an empty host; as `xl create` does,
    each new domain's process is started right after its creation."""
    for i in range(count):
        ctx.create()
        if i % 256 == 0:
            ctx.tick()
    ctx.wait(interval=0.005)


def migrate(ctx: Ctx) -> None:
    """A tenth of the guests suspended, then resumed (a checkpoint or a cancelled migration).

    As libxl's save helper does, the toolstack resumes a domain once it was told the domain
    is suspended: the suspends all go out, the resumes follow once every one was reported
    (a resume before its suspend was seen would hide the suspend from a late watcher)."""
    k = max(1, round(len(ctx.guests) * ctx.params.migrate_fraction))
    chosen = spread(ctx.guests, k)
    for domid in chosen:
        ctx.suspend(domid)
    ctx.tick()
    ctx.wait(interval=0.002)
    for domid in chosen:
        ctx.resume(domid)
    ctx.tick()
    ctx.wait(interval=0.005)


def churn(ctx: Ctx) -> None:
    """Lifecycles at a steady rate, alternately a poweroff (shutdown, destroy) of a running
    guest and a boot of a new one, so the number of domains stays put.

    A poweroff is what xl's monitor does on `on_poweroff=destroy`: the domain is destroyed
    once its shutdown was reported to the interested process."""
    p = ctx.params
    total = max(2, round(p.churn_seconds * p.churn_rate))
    start = time.monotonic()
    for i in range(total):
        due = start + i / p.churn_rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if i % 2 == 0 and ctx.guests:
            domid = ctx.rng.choice(ctx.guests)
            ctx.shutdown(domid)
            ctx.wait_for("shutdown", domid)
            ctx.destroy(domid)
        else:
            ctx.create()
        ctx.tick()
    ctx.wait(interval=0.005)
