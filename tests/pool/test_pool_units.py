"""The bridge's pure parts: names, message ids, the view, placements, --since."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mux.bridge import names, view
from mux.bridge.publisher import _plain_ack
from mux.bridge.reader import parse_since
from mux.bridge.vms import placements
from mux.commands.bridge import parse_duration, parse_size


@given(st.text(min_size=1))
def test_host_names_encode_to_one_token_and_back(name):
    token = names.encode_host(name)
    assert token and all(c.isascii() and (c.isalnum() or c in "-_") for c in token)
    assert names.decode_host(token) == name


def test_host_encoding_is_documented_as_it_is():
    assert names.encode_host("xs01") == "xs01"
    assert names.encode_host("node1.pool.example") == "node1_2epool_2eexample"
    assert names.encode_host("a_b") == "a_5fb"
    assert names.encode_host("h*>") == "h_2a_3e"
    with pytest.raises(ValueError):
        names.encode_host("")
    with pytest.raises(ValueError):
        names.decode_host("a.b")


def test_subjects_keys_and_message_ids():
    assert names.event_subject("h", 7, "death") == "xenmux.events.h.7.death"
    assert names.parse_subject("xenmux.events.h.7.death") == ("h", 7, "death")
    assert names.parse_subject("xenmux.events.h.x.death") is None
    assert names.filter_subject() == "xenmux.events.>"
    assert names.filter_subject("h") == "xenmux.events.h.*.*"
    assert names.filter_subject(domid=3, kind="new") == "xenmux.events.*.3.new"
    assert names.parse_key("h.12") == ("h", 12)
    assert names.parse_key("h.checkpoint") == ("h", None)
    assert names.parse_key("h.other") is None
    assert names.parse_msg_id(names.event_msg_id("abc", 41)) == ("abc", 41)
    missed = {"event": "death", "domid": 3, "uuid": "u-1", "reason": "crash", "missed": True}
    assert names.missed_msg_id("abc", missed) == "abc:gap:3:u-1:death:crash"
    assert names.parse_msg_id("abc:gap:3:u-1:death:crash") == ("abc", None)
    assert names.parse_msg_id("nonsense") is None


def _ev(kind, domid=5, uuid="u", **extra):
    return {"event": kind, "domid": domid, "uuid": uuid, "time": 1.0, **extra}


def test_the_view_sets_states_outright_so_replaying_changes_nothing():
    events = [
        _ev("new", name="web", seq=1),
        _ev("shutdown", reason="suspend", seq=2),
        _ev("resumed", seq=3),
        _ev("shutdown", reason="crash", seq=4),
        _ev("death", reason="crash", seq=5),
    ]
    rows: dict = {}
    for e in events:
        view.apply(rows, "h", e)
    assert rows[5]["state"] == "dead" and rows[5]["reason"] == "crash" and rows[5]["name"] == "web"
    again = dict(rows)
    for e in events[2:]:
        view.apply(again, "h", e)
    assert again == rows
    assert view.apply(rows, "h", _ev("released", uuid="other")) is False
    assert view.apply(rows, "h", _ev("released")) is True and rows == {}


def test_a_migrated_vm_is_placed_where_it_runs():
    leaving = {"host": "a", "domid": 3, "uuid": "u", "state": "dead", "reason": "suspend"}
    arrived = {"host": "b", "domid": 9, "uuid": "u", "state": "running", "time": 0.0}
    other = {"host": "a", "domid": 4, "uuid": "v", "state": "shutdown", "reason": "crash"}
    assert placements([leaving, arrived, other]) == [other, arrived]
    assert placements([leaving]) == [leaving]


def test_since_takes_a_sequence_a_time_or_a_duration_ago():
    assert parse_since("42").kind == "seq" and parse_since("42").seq == 42
    assert parse_since("15m", now=1000.0).time == 100.0
    assert parse_since("2025-01-31T10:00:00Z").time == 1738317600.0
    with pytest.raises(ValueError, match="--since 'soon'"):
        parse_since("soon")


def test_sizes_and_durations():
    assert parse_size("1G") == 1 << 30 and parse_size("512MiB") == 512 << 20
    assert parse_size("1000") == 1000
    assert parse_duration("7d") == 7 * 86400 and parse_duration("90") == 90.0


@pytest.mark.parametrize(
    "ack",
    [
        b'{"stream":"xenmux-events","seq":123}',
        b'{"stream":"xenmux-events","seq":7,"duplicate":true}',
    ],
)
def test_a_plain_ack_reads_as_json_would(ack):
    assert _plain_ack(ack) == {k: v for k, v in json.loads(ack).items() if k != "stream"}


@pytest.mark.parametrize(
    "reply",
    [
        b'{"error":{"code":503,"err_code":10039,"description":"jetstream not enabled"}}',
        b'{"stream":"s","domain":"hub","seq":4}',
        b'{"stream":"a\\"b","seq":4}',
        b'{"stream":"s","seq":4,"duplicate":false}',
        b'{"stream":"s","seq":"4"}',
        b'{"stream":"s","seq":4',
    ],
)
def test_any_other_reply_is_left_to_the_json_parser(reply):
    assert _plain_ack(reply) is None
