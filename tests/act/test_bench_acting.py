"""The acting scenario's reading of the sim's toolstack log (mux/bench/acting.py): which
action completes which guest shutdown, and an action done twice. The scenario itself runs
in `xenmux bench --quick` (tests/e2e/test_bench_smoke.py)."""

from __future__ import annotations

import pytest

from mux.bench.acting import completions, markdown

A, B, C = "a" * 8, "b" * 8, "c" * 8


def line(op: str, domid: int, uuid: str, t: float, by: str | None = None) -> dict:
    return {"op": op, "domid": domid, "uuid": uuid, "time": t, "by": by}


def test_a_poweroff_completes_at_its_destroy_a_reboot_at_its_create():
    lines = [
        line("guest", 1, A, 10.0),
        line("guest", 2, B, 10.5),
        line("destroy", 1, A, 10.25, "act"),
        line("destroy", 2, B, 10.75, "xl"),
        line("create", 9, B, 11.0, "xl"),  # the reboot's new incarnation
        line("destroy", 3, C, 11.5, "sim-ctl"),  # someone else's: not an action
    ]
    done = completions(lines, {(1, A): "poweroff", (2, B): "reboot", (3, C): "poweroff"})
    assert done["seconds"] == {(1, A): pytest.approx(0.25), (2, B): pytest.approx(0.5)}
    assert done["twice"] == []


def test_a_second_destroy_of_one_shutdown_is_reported():
    lines = [line("guest", 1, A, 1.0), line("destroy", 1, A, 1.1, "xl")]
    lines.append(line("destroy", 1, A, 1.2, "act"))
    assert completions(lines, {(1, A): "poweroff"})["twice"] == [(1, A)]


def test_the_section_shows_each_model_and_a_failed_run():
    ok = {
        "n": 100,
        "model": "mux",
        "processes": 2,
        "changes": 50,
        "cpu_us_per_change": 1234.5,
        "sim_cpu_us_per_change": 99.0,
        "switches_per_change": 7.0,
        "latency": {"p50_ms": 3.1, "p99_ms": 9.9},
        "lost": 0,
    }
    text = "\n".join(markdown([ok, {"n": 100, "model": "libxl", "error": "HostError: boom"}]))
    assert "| 100 | mux | 2 | 50 | 1,234.5 | 99.0 | 7.0 | 3.1 / 9.9 | lost=0 |" in text
    assert "| 100 | libxl | | | | | | | HostError: boom |" in text
    assert markdown([]) == []
