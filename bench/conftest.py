"""Collect `bench_*.py` here and end a run with a table of ns per domain and ratios."""

from __future__ import annotations

import pytest

# (median, min) seconds per call, by (case, impl, domains), filled by the benchmarks.
RESULTS = pytest.StashKey[dict]()


@pytest.fixture
def scan_results(request) -> dict:
    return request.config.stash.setdefault(RESULTS, {})


def pytest_collect_file(file_path, parent):
    # pytest only collects test_*.py; files named on the command line it collects itself.
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def summary_lines(results: dict) -> list[str]:
    """A Markdown table of ns per domain: medians (mins in brackets) and median ratios."""
    sizes = sorted({n for (_, _, n) in results})
    cases = []
    for case, _, _ in results:
        if case not in cases:
            cases.append(case)

    def ns(case, impl, n, which=0):
        t = results.get((case, impl, n))
        return None if t is None else t[which] * 1e9 / n

    lines = [
        "| case | domains | _fast ns/domain | _fast us/scan | reference ns/domain "
        "| reference / _fast | C floor ns/domain | _fast / floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        for n in sizes:
            fast, ref, floor = ns(case, "fast", n), ns(case, "reference", n), ns(case, "floor", n)
            if fast is None:
                continue
            cells = [
                case,
                f"{n:,}",
                f"{fast:.2f} ({ns(case, 'fast', n, 1):.2f})",
                f"{fast * n / 1000:.1f}",
                "" if ref is None else f"{ref:,.0f}",
                "" if ref is None else f"{ref / fast:,.0f}x",
                "" if floor is None else f"{floor:.2f} ({ns(case, 'floor', n, 1):.2f})",
                "" if floor is None else f"{fast / floor:.1f}x",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    results = config.stash.get(RESULTS, None)
    if not results:
        return
    terminalreporter.section("scan: ns per domain, median (min)")
    for line in summary_lines(results):
        terminalreporter.write_line(line)
