"""The harness's ratio table: costs above the bare host, where the host's noise can win."""

from __future__ import annotations

from mux.bench.report import markdown


def _row(model: str, cpu_ms: float) -> dict:
    return {
        "xenstored": "c-xenstored",
        "n": 4000,
        "scenario": "one",
        "model": model,
        "changes": 150,
        "cpu_ms_total": cpu_ms,
        "switches_total": 100,
        "lost": 0,
    }


def _ratio_line(rows: list[dict], model: str) -> str:
    text = markdown(rows, {"xenstored": ["c-xenstored"]})
    (line,) = [
        x
        for x in text.splitlines()
        if x.startswith(f"| c-xenstored | 4,000 | one lifecycle | {model} / mux")
    ]
    return line


def test_above_the_host_is_a_ratio_of_what_each_model_adds():
    rows = [_row("host", 1000), _row("mux", 1010), _row("monitors", 41000)]
    cells = _ratio_line(rows, "monitors").split(" | ")
    assert cells[4:6] == ["41x", "4,000x"]


def test_a_mux_measured_under_the_host_gets_no_ratio_above_it():
    # C xenstored's own CPU wanders by more than the mux adds: the host run cost more than
    # the mux's, and a negative "-526x" would say nothing true.
    rows = [_row("host", 1007), _row("mux", 924), _row("libxl", 45103)]
    cells = _ratio_line(rows, "libxl").split(" | ")
    assert cells[4] == "49x"
    assert cells[5] == "— (mux within the host's noise)"
