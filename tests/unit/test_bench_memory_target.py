"""The harness's check of issue 15's memory target: the mux alone at 32,000 domains."""

from __future__ import annotations

from mux.bench.report import MEMORY_TARGET_MB, MEMORY_TARGET_N, memory_target


def _row(scenario: str, hwm_mb: float, rss_mb: float, *, n: int = MEMORY_TARGET_N, **kw) -> dict:
    return {
        "xenstored": kw.get("xenstored", "sim"),
        "n": n,
        "scenario": scenario,
        "model": kw.get("model", "mux"),
        "connections": 4000,
        "daemon": {"hwm_kib": int(hwm_mb * 1024), "rss_kib": int(rss_mb * 1024)},
    }


def test_the_verdict_is_on_the_highest_peak_of_every_row():
    low = MEMORY_TARGET_MB - 20
    rows = [_row("one", low, low - 2), _row("mass", MEMORY_TARGET_MB + 1, low)]
    (line,) = memory_target(rows)
    assert "NOT met" in line and f"{MEMORY_TARGET_MB + 1} MB" in line and "mass shutdown" in line
    (line,) = memory_target(rows[:1])
    assert ": met" in line and f"{low} MB" in line


def test_other_sizes_models_and_rows_without_a_daemon_are_left_out():
    over = MEMORY_TARGET_MB * 2
    rows = [
        _row("one", over, over, n=4000),
        _row("one", over, over, model="host"),
        {"xenstored": "sim", "n": MEMORY_TARGET_N, "scenario": "boot", "model": "mux"},
    ]
    assert memory_target(rows) == []
    lines = memory_target([*rows, _row("one", 50, 48), _row("one", over, 70, xenstored="x")])
    assert [line.split("]")[0] for line in lines] == ["- [sim", "- [x"]
    assert ": met" in lines[0] and "NOT met" in lines[1]
