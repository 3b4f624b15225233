"""One vocabulary: every word of mux/protocol.py is documented, and nothing else is.

docs/protocol.md names each op, event kind, snapshot state and error code; docs/metrics.md
names each label value the metrics export (event kinds, error codes, states, scan
triggers, watch paths). Each check compares whole sets, so a word missing from the docs
fails as surely as a stale one left in them (as `busy` was).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mux.daemon.stats import WATCH_PATHS
from mux.protocol import (
    DEFAULT_KINDS,
    DOMAIN_STATES,
    ERROR_CODES,
    EVENT_KINDS,
    KIND_BITS,
    OPS,
    OVERFLOW,
    SCAN_TRIGGERS,
    kinds_mask,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def section(text: str, heading: str) -> str:
    """The body of the Markdown section `heading` (a whole heading line), up to the next
    heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n") + len(heading) + 1
    following = re.compile(rf"^#{{1,{len(level)}}} ", re.M).search(text, start)
    return text[start : following.start() if following else len(text)]


def ticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def table_first_column(text: str) -> list[str]:
    """The backticked words that open the rows of the Markdown tables in `text`."""
    return re.findall(r"^\| `([^`]+)` \|", text, re.M)


def label_values(doc: str, metric: str, label: str) -> list[str]:
    """The values docs/metrics.md lists for `label` in the row of `metric`."""
    (row,) = [line for line in doc.splitlines() if line.startswith(f"| `{metric}` |")]
    labels_cell = row.split(" | ")[2]
    after = labels_cell.partition(f"`{label}`:")[2]
    assert after, f"docs/metrics.md lists no values of {label} for {metric}"
    return ticked(after)


def test_protocol_md_names_every_op_kind_state_and_error_code():
    doc = (DOCS / "protocol.md").read_text()
    requests = section(doc, "## Requests and replies")
    assert re.findall(r"^### `([^`]+)`$", requests, re.M) == list(OPS)

    frames = section(doc, "## Event frames")
    (kinds_line,) = [line for line in frames.splitlines() if line.startswith("`event` is one of")]
    assert ticked(kinds_line.partition(";")[0])[1:] == list(EVENT_KINDS)
    assert f'{{"event": "{OVERFLOW}", "seq": N}}' in section(doc, "### Overflow")

    subscribe = section(doc, "### `subscribe`")
    states = subscribe.partition("`state` is")[2].partition("(")[0]
    assert ticked(states) == list(DOMAIN_STATES)

    assert table_first_column(section(doc, "## Errors")) == list(ERROR_CODES)


def test_metrics_md_names_every_label_value():
    doc = (DOCS / "metrics.md").read_text()
    assert label_values(doc, "xenmux_events_total", "event") == list(EVENT_KINDS)
    assert label_values(doc, "xenmux_client_errors_total", "code") == list(ERROR_CODES)
    assert label_values(doc, "xenmux_domains", "state") == list(DOMAIN_STATES)
    assert label_values(doc, "xenmux_watch_firings_total", "path") == list(WATCH_PATHS)
    triggers = doc.partition("Scan triggers (`xenmux_scans_total{trigger}`)")[2]
    triggers = triggers.partition("\n\n| trigger |")[2].partition("\n\n")[0]
    assert table_first_column(triggers) == list(SCAN_TRIGGERS)


def test_the_checks_see_a_missing_and_a_stale_word():
    errors = "## Errors\n\n| code | meaning |\n| --- | --- |\n| `bad-json` | x |\n| `busy` | y |\n"
    assert table_first_column(section(errors, "## Errors")) == ["bad-json", "busy"]
    assert table_first_column(section(errors, "## Errors")) != list(ERROR_CODES)
    doc = "| `xenmux_x_total` | counter | `code`: `a`, `b` | what |\n"
    assert label_values(doc, "xenmux_x_total", "code") == ["a", "b"]


def test_subscription_masks_follow_the_order_of_the_kinds():
    # The C core's enum and every subscriber's mask depend on this order (mux/_fast).
    assert [KIND_BITS[k] for k in EVENT_KINDS] == [1 << i for i in range(len(EVENT_KINDS))]
    assert kinds_mask(EVENT_KINDS) == (1 << len(EVENT_KINDS)) - 1
    # A subscription that names no kinds gets those of protocol 1 (not paused/unpaused).
    assert kinds_mask(None) == kinds_mask(DEFAULT_KINDS) == 0b11111
    assert EVENT_KINDS[: len(DEFAULT_KINDS)] == DEFAULT_KINDS
    assert kinds_mask([EVENT_KINDS[3]]) == 8
    with pytest.raises(ValueError, match=f"'boom': use some of {', '.join(EVENT_KINDS)}"):
        kinds_mask(["boom"])
