"""The client library's reading of the daemon's lines, and the bridge's compact JSON: each
must say exactly what json.loads and json.dumps say, faster paths or not."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mux.bridge.encode import compact
from mux.client.errors import Unreachable
from mux.client.wire import _decode

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
frames = st.dictionaries(st.text(), scalars | st.lists(scalars, max_size=3), max_size=8)


@given(frames)
def test_a_frame_reads_as_json_loads_reads_it(frame):
    line = (json.dumps(frame) + "\n").encode()
    assert _decode(line, "/run/x.sock") == json.loads(line)


@pytest.mark.parametrize(
    "line", [b'  {"seq": 1}\n', b'{"seq": 1}  \r\n', '{"name": "\u00e9t\u00e9"}\n'.encode()]
)
def test_what_json_loads_takes_is_taken(line):
    assert _decode(line, "/run/x.sock") == json.loads(line)


@pytest.mark.parametrize(
    "line, why",
    [
        (b'{"seq": 1} {"seq": 2}\n', "not JSON"),
        (b'{"seq": 1}\x0b\n', "not JSON"),
        (b"{\xff}\n", "not JSON"),
        (b'{"seq": \n', "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b"null\n", "not a JSON object"),
    ],
)
def test_a_line_that_is_not_one_json_object_loses_the_daemon(line, why):
    with pytest.raises(Unreachable, match=why):
        _decode(line, "/run/x.sock")


@given(frames)
def test_compact_is_json_dumps_compact(value):
    assert compact(value) == json.dumps(value, separators=(",", ":"))
