"""Running a policy command (a hook, or an action's command) with a bound on its time.

The command line is split as a shell would split it, without a shell, and each argument
filled in with the domain's {domid} {uuid} {name} {reason}. It runs in a process group of
its own, so that a hook that hangs is stopped with everything it started.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from collections.abc import Mapping

from mux.act.policy import command_argv

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_act() -> None:
    """In the child: SIGKILL when act dies. A command left running by a SIGKILLed act would
    race the run that act makes of the same job at its next start."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class CommandFailed(Exception):
    """The command exited non-zero, could not start, or ran out of time."""

    def __init__(self, message: str, outcome: str = "failed") -> None:
        super().__init__(message)
        self.outcome = outcome  # "failed" or "timeout"


async def run_command(template: str, values: Mapping[str, object], timeout: float) -> None:
    argv = command_argv(template, values)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_act,
        )
    except OSError as exc:
        raise CommandFailed(f"cannot run {argv[0]}: {exc.strerror}") from None
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this hook leads, and nothing else
        except ProcessLookupError:
            pass
        await proc.wait()
        raise CommandFailed(f"{argv[0]} still ran after {timeout:g} s: killed", "timeout") from None
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        why = f": {lines[-1]}" if lines else ""
        raise CommandFailed(f"{argv[0]} exited with {proc.returncode}{why}")
