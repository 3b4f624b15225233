"""Carrying jobs out: bounded concurrency, retries with backoff, and the re-checks that
make an interrupted action safe to run again.

Each action is a list of steps (dump, destroy, create...), each step recorded in the
journal once done, so a job interrupted by a SIGKILL and run again on start skips what is
done and re-checks the rest against the toolstack's list of domains:

- an interrupted `destroy` destroys only if that incarnation (domid and UUID) is still there;
- an interrupted `restart` creates only if no new incarnation (same UUID or name, another
  domid) exists.

A step that fails is tried again (`retries` times, backoff doubling from `backoff`), then
the job ends `failed`; other domains' jobs never wait for it beyond the `max_parallel` slots.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable

from mux.act.hooks import CommandFailed, run_command
from mux.act.metrics import ActMetrics
from mux.act.policy import RESTARTS, Plan, Policy, expand
from mux.act.record import Job, Record
from mux.act.toolstack import Domain, NoSuchDomain, Toolstack, ToolstackError

log = logging.getLogger("xenmux.act")

RETRIES = 3
BACKOFF = 0.2

# action -> its steps, in order
STEPS: dict[str, tuple[str, ...]] = {
    "preserve": (),
    "destroy": ("destroy",),
    "restart": ("destroy", "create"),
    "coredump-destroy": ("dump", "destroy"),
    "coredump-restart": ("dump", "destroy", "create"),
    "rename-restart": ("rename", "create"),
    "soft-reset": ("soft-reset",),
}


class _Gone(Exception):
    """The domain went before act acted (destroyed from outside): nothing left to do."""


class Executor:
    def __init__(
        self,
        *,
        toolstack: Toolstack,
        policy: Callable[[], Policy],
        record: Record,
        metrics: ActMetrics,
        max_parallel: int = 16,
        hook_timeout: float = 30.0,
        dry_run: bool = False,
        retries: int = RETRIES,
        backoff: float = BACKOFF,
    ) -> None:
        self.ts = toolstack
        self.policy = policy
        self.record = record
        self.metrics = metrics
        self.slots = asyncio.Semaphore(max_parallel)
        self.hook_timeout = hook_timeout
        self.dry_run = dry_run
        self.retries = retries
        self.backoff = backoff
        self.tasks: set[asyncio.Task] = set()

    # -- scheduling -------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        task = asyncio.create_task(self._run(job))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait for the jobs in hand; False if some still ran after `timeout`."""
        if not self.tasks:
            return True
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        return not pending

    async def _run(self, job: Job) -> None:
        async with self.slots:
            self.metrics.in_flight.inc()
            start = time.monotonic()
            try:
                action, outcome, detail = await self._job(job)
            except Exception as exc:  # a bug here must not stop the other domains' actions
                log.exception("job for domain %d failed unexpectedly", job.domid)
                action, outcome, detail = job.kind, "error", str(exc)
            finally:
                self.metrics.in_flight.dec()
            seconds = time.monotonic() - start
        if not self.dry_run:
            restarted = outcome == "ok" and action in RESTARTS
            self.record.done(job, outcome, action, restarted=restarted)
        self.metrics.actions.labels(action, outcome).inc()
        self.metrics.latency.labels(action).observe(seconds)
        level = logging.WARNING if outcome in ("failed", "timeout", "error") else logging.INFO
        log.log(
            level,
            "domid=%d name=%s reason=%s action=%s outcome=%s seconds=%.3f%s",
            job.domid,
            job.name or "-",
            job.reason or "-",
            action,
            outcome,
            seconds,
            f" ({detail})" if detail else "",
        )

    # -- one job ----------------------------------------------------------------------------

    async def _job(self, job: Job) -> tuple[str, str, str]:
        plan = self.policy().plan(job.name, job.uuid)
        if job.kind != "shutdown":
            return await self._hooks(job, plan, job.kind)
        if plan.excluded:  # excluded by a policy reloaded since the job was made
            return "none", "excluded", ""
        dom = Domain(job.domid, job.uuid, job.name)
        own = job.steps.get("settings")
        if own is None:
            try:
                own = dict(await self._attempts("settings", lambda: self.ts.settings(dom)))
            except ToolstackError as exc:
                return "none", "failed", f"cannot read the domain's settings: {exc}"
            self._step(job, "settings", own)
        action = job.steps.get("action")
        detail = ""
        if action is None:
            action = plan.action(job.reason or "", own)
            if action in RESTARTS:
                policy = self.policy()
                recent = self.record.recent_restarts(job.uuid, policy.restart_window)
                if recent >= policy.restart_limit:
                    log.warning(
                        "domain %d (%s) restarted %d times within %g s: preserved instead "
                        "of %s (a crash loop?)",
                        job.domid,
                        job.name,
                        recent,
                        policy.restart_window,
                        action,
                    )
                    detail = f"restart limit: {action} refused"
                    action = "preserve"
            self._step(job, "action", action)
        if plan.hooks("on_shutdown"):
            await self._hooks(job, plan, "on_shutdown")
        if self.dry_run:
            try:
                return action, "dry-run", self._would(job, dom, plan, action)
            except ToolstackError as exc:
                return action, "failed", str(exc)
        try:
            for step in STEPS[action]:
                if step not in job.steps:
                    value = await self._attempts(
                        step, lambda s=step: self._do(s, job, dom, plan, own)
                    )
                    self._step(job, step, value)
        except _Gone as gone:
            return action, "gone", str(gone)
        except (ToolstackError, CommandFailed) as exc:
            return action, "failed", str(exc)
        return action, "limited" if detail else "ok", detail

    def _step(self, job: Job, step: str, value: object) -> None:
        if self.dry_run:
            job.steps[step] = value
        else:
            self.record.step(job, step, value)

    async def _attempts(self, what: str, attempt: Callable[[], Awaitable[object]]) -> object:
        delay = self.backoff
        for n in range(self.retries + 1):
            try:
                return await attempt()
            except (_Gone, NoSuchDomain):
                raise
            except (ToolstackError, CommandFailed) as exc:
                self.metrics.failures.labels(what).inc()
                if n == self.retries:
                    raise
                log.info("%s failed (%s): again in %.2f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _values(self, job: Job) -> dict:
        return job.fields()

    async def _do(self, step: str, job: Job, dom: Domain, plan: Plan, own: dict) -> object:
        command = plan.commands.get(self._action_of(job))
        if command is not None and step != "dump":
            # The policy names the whole action's command: it replaces every step but the
            # dump; an interrupted one runs again only if the incarnation is still there.
            if step in ("destroy", "rename", "soft-reset"):
                if job.recovering and not await self._there(dom):
                    return True
                await run_command(command, self._values(job), self.hook_timeout)
            return True
        if step == "dump":
            path = expand(plan.dump(), self._values(job))
            try:
                await self.ts.dump_core(dom, path)
            except ToolstackError as exc:
                # As xl: a failed core dump does not stop the destroy or restart.
                log.warning("core dump of domain %d to %s failed: %s", dom.domid, path, exc)
                return False
            return path
        if step == "destroy":
            return await self._destroy(job, dom)
        if step == "create":
            return await self._create(job, dom, plan, own)
        if step == "rename":
            renamed = await self.ts.rename(dom)
            # The kept domain is a new incarnation, shut down: never act on it.
            self.record.mark_acted(renamed.domid, renamed.uuid)
            return renamed.uuid
        if step == "soft-reset":
            await self.ts.soft_reset(dom)
            return True
        raise AssertionError(step)

    def _action_of(self, job: Job) -> str:
        return job.steps.get("action", "")

    async def _there(self, dom: Domain) -> bool:
        return any(d.domid == dom.domid and d.uuid == dom.uuid for d in await self.ts.domains())

    async def _destroy(self, job: Job, dom: Domain) -> bool:
        if job.recovering and not await self._there(dom):
            return True  # the interrupted run destroyed it
        try:
            await self.ts.destroy(dom)
        except NoSuchDomain:
            if job.recovering:
                return True
            raise _Gone("destroyed from outside before act acted") from None
        return True

    async def _create(self, job: Job, dom: Domain, plan: Plan, own: dict) -> int:
        if job.recovering:
            for d in await self.ts.domains():
                if d.domid != dom.domid and (d.uuid == dom.uuid or d.name == dom.name):
                    return d.domid  # the interrupted run created it (or someone else did)
        return await self.ts.create(dom, expand(plan.config(), self._values(job)), own)

    async def _hooks(self, job: Job, plan: Plan, which: str) -> tuple[str, str, str]:
        hooks = plan.hooks(which)
        done = job.steps.get(which, 0)
        for i, hook in enumerate(hooks):
            if i < done:
                continue
            if self.dry_run:
                print(f"xenmux act: would run {which} hook: {hook}", file=sys.stdout, flush=True)
                continue
            try:
                await run_command(hook, self._values(job), self.hook_timeout)
            except CommandFailed as exc:
                self.metrics.failures.labels(which).inc()
                self._step(job, which, i + 1)
                return which, exc.outcome, str(exc)
            self._step(job, which, i + 1)
        return which, "dry-run" if self.dry_run else "ok", ""

    def _would(self, job: Job, dom: Domain, plan: Plan, action: str) -> str:
        command = plan.commands.get(action)
        parts = []
        for step in STEPS[action]:
            if command is not None and step != "dump":
                if step != "create":
                    parts.append(expand(command, self._values(job)))
            elif step == "dump":
                parts.append(
                    self.ts.describe("dump-core", dom, expand(plan.dump(), self._values(job)))
                )
            elif step == "create":
                parts.append(
                    self.ts.describe("create", dom, expand(plan.config(), self._values(job)))
                )
            else:
                parts.append(self.ts.describe(step, dom))
        what = "; ".join(parts) if parts else "nothing (the domain stays shut down)"
        line = (
            f"xenmux act: would {action} domain {job.domid} ({job.name or '-'}) "
            f"after {job.reason}: {what}"
        )
        print(line, file=sys.stdout, flush=True)
        return what
