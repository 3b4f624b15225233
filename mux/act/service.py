"""The act process: one subscription to every domain, the rules, the executor, the record.

Order at start: the policy is loaded and checked (nothing runs on a bad one), the state dir
is locked and read, interrupted jobs are handed to the executor again (re-checked), then
act subscribes from its cursor. Each event is decided, its jobs written to the journal, and
only then does the cursor move past it. SIGHUP reloads the policy (the old one stays on an
error); SIGTERM and SIGINT stop after the jobs in hand, for at most STOP_GRACE seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass

from mux.act.decide import Decider
from mux.act.execute import Executor
from mux.act.metrics import ActMetrics
from mux.act.policy import Policy, PolicyError, load_policy
from mux.act.record import Record
from mux.act.toolstack import Toolstack, ToolstackError, open_toolstack
from mux.client import AsyncClient, AsyncSubscription, XenmuxError

log = logging.getLogger("xenmux.act")

STOP_GRACE = 10.0
IDLE = 0.5  # seconds between looks at the stop flag while no event comes
SAVE_EVERY = 0.05  # seconds between two cursor writes while events keep coming


@dataclass
class Options:
    policy: str | None
    toolstack: str
    sim_dir: str | None
    socket: str
    state_dir: str | None
    max_parallel: int
    hook_timeout: float
    metrics_addr: str
    dry_run: bool
    retries: int = 3
    backoff: float = 0.2


class Act:
    def __init__(self, opts: Options, toolstack: Toolstack, policy: Policy) -> None:
        self.opts = opts
        self.ts = toolstack
        self._policy = policy
        self.metrics = ActMetrics()
        self.record = Record(opts.state_dir, durable=not opts.dry_run)
        self.executor = Executor(
            toolstack=toolstack,
            policy=self.policy,
            record=self.record,
            metrics=self.metrics,
            max_parallel=opts.max_parallel,
            hook_timeout=opts.hook_timeout,
            dry_run=opts.dry_run,
            retries=opts.retries,
            backoff=opts.backoff,
        )
        self.decider = Decider(self.record, self.policy, self.executor.submit)
        self.stop = asyncio.Event()
        self._stopping: asyncio.Future | None = None
        self.http = None

    def policy(self) -> Policy:
        return self._policy

    def reload(self) -> None:
        try:
            policy = load_policy(self.opts.policy, self.ts.supported)
        except PolicyError as exc:
            self.metrics.reloads.labels("error").inc()
            log.error("policy not reloaded, the old one stays: %s", exc)
            return
        self._policy = policy
        self.metrics.reloads.labels("ok").inc()
        log.warning("policy reloaded from %s", policy.source)

    async def _start_metrics(self) -> None:
        if not self.opts.metrics_addr:
            return
        from mux.daemon.metrics import parse_addr
        from mux.daemon.metrics_http import MetricsHTTP

        host, port = parse_addr(self.opts.metrics_addr)
        self.http = MetricsHTTP(self.metrics.registry, self.metrics)  # type: ignore[arg-type]
        await self.http.start(host, port, self.opts.metrics_addr)
        log.info("metrics on %s:%d/metrics", host, self.http.port)

    async def _names(self) -> None:
        """The names of domains that no replayed event will name."""
        try:
            async with AsyncClient(self.opts.socket) as client:
                for row in await client.list():
                    self.decider.remember(row["domid"], row["uuid"], row.get("name"))
        except XenmuxError as exc:
            log.info("no list of names from the daemon (%s): events will name them", exc)

    async def _subscribe(self) -> AsyncSubscription:
        cursor = self.record.cursor
        sub = AsyncSubscription(None, socket_path=self.opts.socket, since=cursor)
        try:
            await sub.connect()
        except XenmuxError as exc:
            if cursor is None or exc.code != "bad-cursor":
                raise
            log.warning("the daemon refused the cursor %s (%s): starting afresh", cursor, exc)
            self.record.forget_cursor()
            sub = AsyncSubscription(None, socket_path=self.opts.socket)
            await sub.connect()
            cursor = None
        if cursor is None:
            self.decider.snapshot(sub.snapshot, None)  # a first start
        elif sub.gap:
            log.warning(
                "the daemon no longer holds the cursor %s: acting on what changed meanwhile", cursor
            )
        else:
            await self._names()
        self.record.save_cursor(sub.cursor)
        return sub

    async def _until_stopped(self, coro):
        """`coro`'s result, or None if SIGTERM/SIGINT came first (a daemon that cannot be
        reached at start is retried for ever: a stop must still stop)."""
        task = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return None

    async def _next_event(self, sub: AsyncSubscription):
        """The next event, or None after a while without one or at a stop: SIGTERM must not
        wait out the idle timeout (an event not taken is replayed at the next start)."""
        timeout = IDLE if self.record.cursor == sub.cursor else SAVE_EVERY
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self.stop.wait())
        task = asyncio.ensure_future(sub.next_event(timeout))
        await asyncio.wait((task, self._stopping), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        await self._start_metrics()
        for job in list(self.record.pending.values()):
            job.recovering = True
            log.warning(
                "domid=%d name=%s: an interrupted %s job is run again (re-checked)",
                job.domid,
                job.name or "-",
                job.kind,
            )
            self.executor.submit(job)
        sub = None
        try:
            sub = await self._until_stopped(self._subscribe())
            if sub is None:
                return 0  # stopped while the daemon could not be reached
            log.info(
                "acting for every domain (policy %s, toolstack %s)",
                self._policy.source,
                self.ts.name,
            )
            saved = time.monotonic()
            while not self.stop.is_set():
                ev = await self._next_event(sub)
                if self.stop.is_set():
                    break
                if ev is not None:
                    self.decider.event(ev)
                # The cursor moves after the jobs of every event before it are journaled;
                # during a burst, once per SAVE_EVERY (a replay of a few events after a
                # SIGKILL is harmless: their jobs are known by incarnation).
                now = time.monotonic()
                if ev is None or now - saved >= SAVE_EVERY:
                    self.record.save_cursor(sub.cursor)
                    saved = now
        finally:
            if self._stopping is not None:
                self._stopping.cancel()
            if sub is not None:
                self.record.save_cursor(sub.cursor)
                await sub.close()
            if not await self.executor.drain(STOP_GRACE):
                log.warning("stopping with jobs still running: they run again at the next start")
            if self.http is not None:
                self.http.close()
            await self.ts.close()
            self.record.close()
        return 0


def prepare(opts: Options) -> tuple[Toolstack, Policy]:
    """The toolstack and the checked policy, before anything runs (raises PolicyError,
    ToolstackError)."""
    toolstack = open_toolstack(opts.toolstack, {"sim_dir": opts.sim_dir})
    return toolstack, load_policy(opts.policy, toolstack.supported)


async def run_act(opts: Options, toolstack: Toolstack, policy: Policy) -> int:
    act = Act(opts, toolstack, policy)
    return await act.run()


__all__ = ["Act", "Options", "PolicyError", "ToolstackError", "prepare", "run_act"]
