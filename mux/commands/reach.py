"""Reaching the daemon from a command: the --timeout option, the one notice while
retrying, and the failure that ends a command with one line and its exit status."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from mux.client import Client, XenmuxError
from mux.client.session import REQUEST_TIMEOUT, Outage, retryable
from mux.client.wire import Deadline
from mux.commands.failure import CommandError

T = TypeVar("T")


def add_request_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout",
        type=float,
        default=REQUEST_TIMEOUT,
        metavar="S",
        help="give up when the daemon has not answered within S seconds (exit 1; "
        "default: %(default)g)",
    )


def retry_notice(command: str, timeout: float | None) -> Callable[[XenmuxError], None]:
    """What watch and wait say, once per outage, before they retry."""
    until = "until it answers" if timeout is None else f"for up to {timeout:g} s (--timeout)"

    def notice(exc: XenmuxError) -> None:
        print(f"xenmux {command}: {exc}; retrying {until}", file=sys.stderr, flush=True)

    return notice


def ask_once(socket: str, timeout: float | None, call: Callable[[Client], T]) -> T:
    """One request/reply on a fresh connection: CommandError (exit 1) when the daemon
    cannot be reached, does not answer within `timeout`, or refuses."""
    try:
        with Client(socket, timeout=timeout) as client:
            return call(client)
    except XenmuxError as exc:
        raise CommandError(str(exc)) from None


def ask_retrying(
    socket: str,
    deadline: Deadline,
    notice: Callable[[XenmuxError], None],
    call: Callable[[Client], T],
) -> T:
    """As ask_once, but retrying while the daemon cannot be reached (as watch and wait do),
    until `deadline`."""
    outage = Outage(deadline.left(), notice)
    while True:
        timeout = Deadline.after(REQUEST_TIMEOUT).sooner(deadline).left()
        try:
            with Client(socket, timeout=timeout) as client:
                return call(client)
        except XenmuxError as exc:
            if not retryable(exc):
                raise CommandError(str(exc)) from None
            try:
                pause = outage.failed(exc)
            except XenmuxError:
                raise CommandError(str(exc)) from None
            time.sleep(pause)
