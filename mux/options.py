"""Argparse types shared by the long-running commands (serve, act): each refuses a bad
value with a message that says what is wrong, which argparse prints as one line, status 2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def option(check: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from a check whose ValueError says what is wrong with the value."""

    def parse(text: str) -> object:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = check.__name__  # argparse names the type by it
    return parse


def count(minimum: int) -> Callable[[str], object]:
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise ValueError(f"{value} is below {minimum}")
        return value

    return option(count)


@option
def metrics_addr(text: str) -> str:
    from mux.daemon.metrics import parse_addr

    if text:
        parse_addr(text)
    return text


def seconds(*, positive: bool) -> Callable[[str], object]:
    """A finite number of seconds, > 0 (positive) or >= 0."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "more than 0" if positive else "0 or more"
            raise ValueError(f"{text!r} is not a number of seconds: give {bound}")
        return value

    return option(seconds)
