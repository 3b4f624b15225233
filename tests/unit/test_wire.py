"""The xenstore wire codecs: round trips, and malformed frames rejected clearly."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mux.xenstore import wire

names = st.text(
    alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=40,
)
types = st.sampled_from([int(t) for t in wire.XsdSockmsgType])


def test_types_match_xs_wire_h():
    assert wire.XS_DIRECTORY == 1
    assert wire.XS_WATCH_EVENT == 15
    assert wire.XS_ERROR == 16
    assert wire.XS_RESUME == 18
    assert wire.XS_RESET_WATCHES == 21
    assert wire.XS_DIRECTORY_PART == 22
    assert wire.XS_GET_FEATURE == 23
    assert wire.XS_INVALID == 0xFFFF
    assert 20 not in {int(t) for t in wire.XsdSockmsgType}  # XS_RESTRICT was removed


def test_types_match_the_installed_header(tmp_path):
    """Every type Debian's xs_wire.h (4.17) names has the same number here."""
    header = "/usr/include/xen/io/xs_wire.h"
    import os
    import shutil
    import subprocess

    if not os.path.exists(header):
        pytest.fail(f"{header} is missing: install libxen-dev (make test does)")
    src = tmp_path / "t.c"
    checks = "".join(
        f'printf("{t.name} %d\\n", {t.name});'
        for t in wire.XsdSockmsgType
        if t <= wire.XS_DIRECTORY_PART or t == wire.XS_INVALID
    )
    src.write_text(
        "#include <stdio.h>\n#include <errno.h>\n#include <stdint.h>\n"
        f"#include <xen/io/xs_wire.h>\nint main(void){{{checks} "
        'printf("XS_TYPE_COUNT %d\\n", XS_TYPE_COUNT);'
        'printf("XENSTORE_PAYLOAD_MAX %d\\n", XENSTORE_PAYLOAD_MAX);'
        "for (unsigned i = 0; i < sizeof(xsd_errors)/sizeof(xsd_errors[0]); i++)"
        ' printf("err%u %s\\n", i, xsd_errors[i].errstring); return 0;}\n'
    )
    exe = tmp_path / "t"
    subprocess.run([shutil.which("cc"), "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    seen = dict(line.split() for line in out.splitlines())
    for t in wire.XsdSockmsgType:
        if t.name in seen:
            assert int(seen[t.name]) == int(t), t.name
    assert int(seen["XS_TYPE_COUNT"]) == wire.XS_TYPE_COUNT_4_17
    assert int(seen["XENSTORE_PAYLOAD_MAX"]) == wire.XENSTORE_PAYLOAD_MAX
    errors = [seen[f"err{i}"] for i in range(len(wire.XSD_ERRORS)) if f"err{i}" in seen]
    assert tuple(errors) == wire.XSD_ERRORS[: len(errors)]


@settings(deadline=None, max_examples=200)
@given(
    types,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=wire.XENSTORE_PAYLOAD_MAX),
)
def test_message_round_trip(msg_type, req_id, tx_id, payload):
    raw = wire.encode(msg_type, req_id, tx_id, payload)
    msg, used = wire.decode(raw + b"trailing")
    assert used == len(raw)
    assert msg == wire.Message(msg_type, req_id, tx_id, payload)


@settings(deadline=None, max_examples=100)
@given(st.lists(names, max_size=20))
def test_strings_round_trip(parts):
    if parts:
        assert wire.split(wire.join(*parts)) == parts
    assert wire.decode_directory(wire.encode_directory(parts)) == parts


@settings(deadline=None, max_examples=100)
@given(names, names)
def test_watch_event_round_trip(path, token):
    assert wire.decode_watch_event(wire.encode_watch_event(path, token)) == (path, token)


@settings(deadline=None, max_examples=100)
@given(st.sampled_from(wire.XSD_ERRORS))
def test_error_round_trip(name):
    assert wire.decode_error(wire.encode_error(name)) == name


@settings(deadline=None, max_examples=100)
@given(st.integers(0, 2**63), st.lists(names, max_size=10), st.booleans())
def test_directory_part_round_trip(gen, parts, complete):
    if not parts:
        complete = True
    out = wire.decode_directory_part(wire.encode_directory_part(gen, parts, complete))
    assert out == (gen, parts, complete)


def test_short_header_needs_more():
    with pytest.raises(wire.IncompleteError):
        wire.decode(b"\x01\x00\x00")
    with pytest.raises(wire.WireError, match="short header"):
        wire.decode_header(b"\x01\x00\x00")


def test_payload_over_limit_rejected():
    raw = struct.pack("=IIII", wire.XS_READ, 1, 0, wire.XENSTORE_PAYLOAD_MAX + 1)
    with pytest.raises(wire.WireError, match="over the 4096-byte limit"):
        wire.decode(raw)
    with pytest.raises(wire.WireError, match="over the 4096-byte limit"):
        wire.encode(wire.XS_WRITE, 1, 0, b"x" * 4097)


def test_bad_type_rejected():
    raw = struct.pack("=IIII", 20, 1, 0, 0)
    with pytest.raises(wire.WireError, match="unknown message type 20"):
        wire.decode(raw)


def test_missing_nul_rejected():
    with pytest.raises(wire.WireError, match="not NUL-terminated"):
        wire.split(b"path")
    with pytest.raises(wire.WireError, match="a path and a token"):
        wire.decode_watch_event(b"onlypath\0")
    with pytest.raises(wire.WireError, match="NUL inside"):
        wire.join("a\0b")


def test_error_reply_names_the_errno():
    err = wire.XenstoreError("ENOENT", "READ /nope")
    import errno

    assert err.errno == errno.ENOENT
    assert "ENOENT" in str(err) and "/nope" in str(err)
    with pytest.raises(wire.WireError, match="unknown error name"):
        wire.decode_error(b"EWHAT\0")
