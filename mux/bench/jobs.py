"""The runs of one `xenmux bench`, one after the other or a few at once (`--jobs`).

Each run has its own simulated host, model, temporary directory and processes; what they
share is the harness's process set and the compiled programs. A run's figures come from its
own processes' CPU clocks, so they stay its own with others beside it, but the others are
load on the same CPUs: their latency and CPU grow with it. The quick run, which times
nothing, runs three at once by default; a full run one.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator

from mux.bench import runner


def failed_row(plan: runner.Plan, exc: BaseException) -> dict:
    """The row of a run that raised: one failed run must not hide the others' results."""
    return {
        "xenstored": plan.xenstored,
        "n": plan.n,
        "scenario": plan.scenario,
        "model": plan.model,
        "measured": True,
        "error": f"{type(exc).__name__}: {exc}",
        "lost": None,
    }


def _run(env: runner.Env, plan: runner.Plan) -> dict:
    try:
        row = runner.run(env, plan)
    except Exception as exc:
        row = failed_row(plan, exc)
    if plan.per_conn:
        row["per_conn"] = plan.per_conn
    return row


def run_all(
    env: runner.Env,
    plans: list[runner.Plan],
    real: Callable[[str], object | None],
    *,
    jobs: int = 1,
    started: Callable[[runner.Plan], None] = lambda plan: None,
) -> Iterator[tuple[runner.Plan, dict]]:
    """Every plan's row, as each run ends; at most `jobs` runs at once, started in the
    plans' order. `real(xenstored)` is the factory of Debian's xenstored of a plan (None: the
    sim's own).

    With one job the runs are made in the calling thread. Otherwise in daemon threads: when
    the caller leaves early (Ctrl-C) and stops every process, the runs under way are left to
    fail on their own and do not hold up its exit."""
    if jobs <= 1:
        for plan in plans:
            started(plan)
            yield plan, _run(dataclasses.replace(env, real=real(plan.xenstored)), plan)
        return
    done: queue.SimpleQueue[tuple[runner.Plan, dict]] = queue.SimpleQueue()

    def work(plan: runner.Plan) -> None:
        done.put((plan, _run(dataclasses.replace(env, real=real(plan.xenstored)), plan)))

    waiting = list(reversed(plans))
    running = 0
    while waiting or running:
        while waiting and running < jobs:
            plan = waiting.pop()
            started(plan)
            threading.Thread(target=work, args=(plan,), name="bench run", daemon=True).start()
            running += 1
        finished = done.get()
        running -= 1
        yield finished
