"""The xenstore frame reader in C (`mux._fast.XsReader`) against its reference
(`mux.xenstore.wire.FrameReader`): the same frames handed on, in the same order, with the
same bytes, the same bytes kept for the next read, and the same errors, whatever the reads'
boundaries."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mux._fast import XsReader
from mux.xenstore import wire
from mux.xenstore.wire import FrameReader

READERS = (FrameReader, XsReader)


def frame(msg_type: int, payload: bytes, req_id: int = 0, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack("=IIII", msg_type, req_id, 0, n) + payload


def watch(path: bytes, token: bytes = b"xenmux") -> bytes:
    return frame(wire.XS_WATCH_EVENT, path + b"\0" + token + b"\0")


class Log:
    """What a reader handed on, and what it raised."""

    def __init__(self, cls, *, raise_on_watch=(), stop_after=None, bad_reply=False) -> None:
        self.calls: list[tuple] = []
        self.raise_on_watch = set(raise_on_watch)
        self.stop_after = stop_after
        self.bad_reply = bad_reply
        self.reader = cls(self.on_watch, self.on_reply, self.on_watch_error)

    def on_watch(self, path, token):
        self.calls.append(("watch", type(path), path, type(token), token))
        self._maybe_stop()
        if path in self.raise_on_watch:
            raise RuntimeError("callback failure")

    def on_watch_error(self, path, token):
        self.calls.append(("watch_error", path, token))

    def on_reply(self, msg_type, req_id, payload):
        self.calls.append(("reply", int(msg_type), int(req_id), type(payload), payload))
        self._maybe_stop()
        if self.bad_reply:
            raise wire.WireError(f"a reply of the wrong type {msg_type}")

    def _maybe_stop(self):
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            self.reader.stop()

    def feed_all(self, chunks) -> tuple:
        for chunk in chunks:
            try:
                self.reader.feed(chunk)
            except Exception as exc:  # the first error ends the stream, as in the client
                return ("raised", type(exc), str(exc))
        return ("ok", self.reader.buffered)


def both(chunks, **kw) -> list:
    outs = []
    for cls in READERS:
        log = Log(cls, **kw)
        end = log.feed_all(chunks)
        outs.append((log.calls, end, log.reader.dispatched))
    assert outs[0] == outs[1], f"\nreference: {outs[0]}\nC:         {outs[1]}"
    return outs[0]


STREAM = (
    watch(b"@releaseDomain")
    + frame(wire.XS_READ, b"guest-1", req_id=7)
    + watch(b"@introduceDomain/12", b"tok")
    + frame(wire.XS_WATCH_EVENT, b"@releaseDomain\0xenmux\0extra\0")
    + frame(wire.XS_ERROR, b"ENOENT\0", req_id=9)
    + frame(wire.XS_WATCH_EVENT, b"\0\0")
)


def test_several_frames_in_one_read():
    calls, end, dispatched = both([STREAM])
    assert [c[0] for c in calls] == ["watch", "reply", "watch", "watch", "reply", "watch"]
    assert calls[0] == ("watch", str, "@releaseDomain", str, "xenmux")
    assert calls[1] == ("reply", wire.XS_READ, 7, bytes, b"guest-1")
    assert calls[3][2:] == ("@releaseDomain", str, "xenmux")  # extra fields ignored
    assert calls[5][2:] == ("", str, "")
    assert end == ("ok", b"") and dispatched == 4


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_a_read_cut_anywhere(cut):
    calls, end, _ = both([STREAM[:cut], STREAM[cut:]])
    assert len(calls) == 6 and end == ("ok", b"")


def test_byte_by_byte_and_the_bytes_kept():
    chunks = [STREAM[i : i + 1] for i in range(len(STREAM))]
    calls, _, _ = both(chunks)
    assert len(calls) == 6
    _, end, _ = both([STREAM[:-3]])
    assert end == ("ok", STREAM[-(16 + 2) : -3])  # the last frame, incomplete, is kept


BAD = {
    "over the payload limit": frame(wire.XS_READ, b"", length=4097),
    "XS_RESTRICT, removed": frame(20, b"x"),
    "unknown type": frame(0x1234, b""),
    "no terminating NUL": frame(wire.XS_WATCH_EVENT, b"@releaseDomain\0xenmux"),
    "one string": frame(wire.XS_WATCH_EVENT, b"@releaseDomain\0"),
    "empty watch event": frame(wire.XS_WATCH_EVENT, b""),
    "not UTF-8": frame(wire.XS_WATCH_EVENT, b"@release\xffDomain\0xenmux\0"),
    "bad UTF-8 in an extra field": frame(wire.XS_WATCH_EVENT, b"a\0b\0\xc3\0"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_frames_raise_the_same_error(name):
    calls, end, _ = both([watch(b"@releaseDomain") + BAD[name] + watch(b"@introduceDomain")])
    assert len(calls) == 1  # what came before was handed on, nothing after
    assert end[:2] == ("raised", wire.WireError)


def test_utf8_beyond_ascii_is_decoded_as_the_reference_does():
    calls, end, _ = both([frame(wire.XS_WATCH_EVENT, "/local/domain/3/nämé\0tøk\0".encode())])
    assert calls == [("watch", str, "/local/domain/3/nämé", str, "tøk")] and end[0] == "ok"


def test_a_failing_callback_costs_only_its_event():
    calls, end, dispatched = both([STREAM], raise_on_watch={"@introduceDomain/12"})
    assert ("watch_error", "@introduceDomain/12", "tok") in calls
    assert [c[0] for c in calls].count("watch") == 4 and end == ("ok", b"")
    assert dispatched == 4


def test_a_reply_refused_by_its_handler_raises_out_of_the_read():
    calls, end, _ = both([STREAM], bad_reply=True)
    assert [c[0] for c in calls] == ["watch", "reply"]
    assert end[:2] == ("raised", wire.WireError)


@pytest.mark.parametrize("stop_after", [1, 2, 3])
def test_stop_in_a_callback_drops_the_rest_of_the_read(stop_after):
    calls, end, _ = both([STREAM, watch(b"@releaseDomain")], stop_after=stop_after)
    assert len(calls) == stop_after and end == ("ok", b"")


_frames = st.one_of(
    st.builds(watch, st.binary(max_size=20).filter(lambda b: b"\0" not in b)),
    st.builds(frame, st.sampled_from([wire.XS_READ, wire.XS_ERROR, wire.XS_WATCH]),
              st.binary(max_size=40), st.integers(0, 2**32 - 1)),
    st.builds(frame, st.integers(0, 40), st.binary(max_size=30)),
    st.builds(lambda p: frame(wire.XS_WATCH_EVENT, p), st.binary(max_size=30)),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_frames, max_size=6), st.lists(st.integers(0, 400), max_size=5))
def test_any_frames_any_reads(frames, cuts):
    data = b"".join(frames)
    bounds = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    both([c for c in chunks if c])
