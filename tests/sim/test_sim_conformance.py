"""The sim's xenstored and our xenstore client give the real C xenstored 4.17's answers.

`tests/data/xenstored_conformance.json` holds the raw replies of Debian's C xenstored (and of
oxenstored, which tests/sim/test_sim_flavours.py holds the sim's oxenstored flavour to) to
the requests of `xsconformance.STEPS`, recorded by that module from the live servers. Here:

1. the same requests, byte for byte, go to the sim's xenstored set up as the recording was
   (dom0 and guests 1-4, guests 1-3 introduced as libxl does): every frame that comes back
   must be the recorded one, except for the differences listed in DELIBERATE with a reason;
2. our asyncio `XenstoreClient` makes the same requests (those its API can express) against
   the sim and against the live C xenstored: the results (values, errno names, watch
   events) must be the same from both and must be what the recorded bytes mean.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import realxen
from xsconformance import CONFORMANCE, SocketTarget, like_the_recording, run_steps

from mux.xenstore import wire
from mux.xenstore.client import XenstoreClient

xenstub_libs = realxen.xenstub_libs
c_xenstored = realxen.c_xenstored

# Steps where the sim answers otherwise than C xenstored 4.17, on purpose.
#   step -> (what the sim sends instead, why)
DELIBERATE: dict[str, tuple[list[dict], str]] = {
    "read-without-nul": (
        [{"type": wire.XS_ERROR, "name": "XS_ERROR", "payload": "EINVAL\0"}],
        "A path without its terminating NUL is malformed. C xenstored's onearg() rejects it "
        "and the lookup of the missing argument then reports ENOENT; the sim says EINVAL, as "
        "oxenstored does (and as tests/sim/test_sim_xenstored.py asserts). libxenstore and our "
        "client always terminate paths, so no real client meets either answer.",
    ),
    "read-empty-payload": (
        [{"type": wire.XS_ERROR, "name": "XS_ERROR", "payload": "EINVAL\0"}],
        "The same malformed request (no path at all): EINVAL, as for read-without-nul.",
    ),
    "directory-part": (
        [],  # checked below: the same names under another generation number
        "The generation at the head of an XS_DIRECTORY_PART reply is a counter private to "
        "each server (C counts every change since it started, including the ones it made "
        "itself at start-up). Clients only compare it between the parts of one listing, so "
        "the sim's differs in value and agrees in meaning; the names after it are the same.",
    ),
}


def _like_the_recording(sim_factory):
    sim = sim_factory(domains=0)
    like_the_recording(sim)
    return sim


def _recorded(kind: str = "xenstored") -> list[dict]:
    return json.loads(CONFORMANCE.read_text())[kind]


# ---------------------------------------------------------------------------------------------
# 1. Raw frames


def test_the_sim_answers_every_recorded_request_as_c_xenstored(sim_factory):
    sim = _like_the_recording(sim_factory)
    got = run_steps(SocketTarget(sim.xenstored))
    recorded = _recorded()
    assert [s["step"] for s in got] == [s["step"] for s in recorded]
    differ = {}
    for want, have in zip(recorded, got, strict=True):
        assert have["payload"] == want["payload"] and have["tx_id"] == want["tx_id"]
        if have["replies"] != want["replies"]:
            differ[want["step"]] = have["replies"]
    assert set(differ) == set(DELIBERATE), "undeclared differences: " + json.dumps(
        {k: v for k, v in differ.items() if k not in DELIBERATE}
    )
    for step, (instead, _why) in DELIBERATE.items():
        if instead:
            assert differ[step] == instead, step
    # directory-part: another generation, the same names and the same end marker.
    (c_part,) = next(s for s in recorded if s["step"] == "directory-part")["replies"]
    (sim_part,) = differ["directory-part"]
    assert sim_part["type"] == c_part["type"] == wire.XS_DIRECTORY_PART
    c_gen, c_names = c_part["payload"].split("\0", 1)
    sim_gen, sim_names = sim_part["payload"].split("\0", 1)
    assert sim_names == c_names and sim_gen.isdigit() and c_gen.isdigit()


# ---------------------------------------------------------------------------------------------
# 2. Our client, against the sim and against the live C xenstored

A4000 = "a" * 4000
LONG = "/" + "p" * 2047


def _client_steps():
    """(step name, call) for each step the client's API can express, in STEPS order.
    `call(c, state)` returns an awaitable; `state` keeps the transaction ids."""

    def tx_start(key):
        async def go(c, st):
            st[key] = await c.transaction_start()
            return "tx"

        return go

    return [
        ("write", lambda c, st: c.write("/test/a", "hello")),
        ("write-empty-value", lambda c, st: c.write("/test/empty", "")),
        ("read", lambda c, st: c.read("/test/a")),
        ("read-empty-value", lambda c, st: c.read("/test/empty")),
        ("read-missing", lambda c, st: c.read("/test/missing")),
        ("read-missing-parent", lambda c, st: c.read("/nowhere/x")),
        ("write-relative", lambda c, st: c.write("rel", "v")),
        ("read-relative-as-absolute", lambda c, st: c.read("/local/domain/0/rel")),
        ("mkdir", lambda c, st: c.mkdir("/test/dir")),
        ("mkdir-existing", lambda c, st: c.mkdir("/test/dir")),
        ("mkdir-deep", lambda c, st: c.mkdir("/test/deep/er")),
        ("directory", lambda c, st: c.directory("/test")),
        ("directory-of-leaf", lambda c, st: c.directory("/test/a")),
        ("directory-missing", lambda c, st: c.directory("/test/missing")),
        ("get-perms", lambda c, st: c.get_perms("/test/a")),
        ("get-perms-missing", lambda c, st: c.get_perms("/test/missing")),
        ("get-perms-guest-node", lambda c, st: c.get_perms("/local/domain/1")),
        ("set-perms", lambda c, st: c.set_perms("/test/a", ["n0", "r1"])),
        ("get-perms-after-set", lambda c, st: c.get_perms("/test/a")),
        ("set-perms-bad", lambda c, st: c.set_perms("/test/a", ["x0"])),
        ("get-perms-release-domain", lambda c, st: c.get_perms("@releaseDomain")),
        ("rm", lambda c, st: c.rm("/test/dir")),
        ("rm-missing", lambda c, st: c.rm("/test/dir")),
        ("rm-missing-parent", lambda c, st: c.rm("/nowhere/x")),
        ("watch", lambda c, st: c.watch("/test", "tok")),
        ("write-under-watch", lambda c, st: c.write("/test/b", "x")),
        ("watch-duplicate", lambda c, st: c.watch("/test", "tok")),
        ("unwatch", lambda c, st: c.unwatch("/test", "tok")),
        ("unwatch-missing", lambda c, st: c.unwatch("/test", "tok")),
        ("watch-release-domain", lambda c, st: c.watch("@releaseDomain", "rel")),
        ("watch-introduce-domain", lambda c, st: c.watch("@introduceDomain", "intro")),
        ("watch-with-depth", lambda c, st: c.watch("@releaseDomain", "deep", depth=1)),
        ("watch-release-domain-domid", lambda c, st: c.watch("@releaseDomain/1", "one")),
        ("watch-bad-path", lambda c, st: c.watch("/test/a b", "tok")),
        ("transaction-start", tx_start("tx")),
        ("write-in-transaction", lambda c, st: c.write("/test/t", "in-tx", st["tx"])),
        ("read-in-transaction", lambda c, st: c.read("/test/t", st["tx"])),
        ("read-outside-transaction", lambda c, st: c.read("/test/t")),
        ("transaction-commit", lambda c, st: c.transaction_end(st["tx"], True)),
        ("read-after-commit", lambda c, st: c.read("/test/t")),
        ("transaction-end-again", lambda c, st: c.transaction_end(st["tx"], True)),
        ("transaction-start-2", tx_start("tx")),
        ("transaction-abort", lambda c, st: c.transaction_end(st["tx"], False)),
        ("read-unknown-transaction", lambda c, st: c.read("/test/a", 999)),
        ("get-domain-path", lambda c, st: c.get_domain_path(1)),
        ("is-introduced", lambda c, st: c.is_domain_introduced(1)),
        ("is-introduced-not", lambda c, st: c.is_domain_introduced(4)),
        ("resume-introduced", lambda c, st: c.resume(1)),
        ("resume-not-introduced", lambda c, st: c.resume(4)),
        ("resume-dom0", lambda c, st: c.resume(0)),
        ("release-not-introduced", lambda c, st: c.release(4)),
        ("introduce-port-0", lambda c, st: c.introduce(4, 65540, 0)),
        ("introduce-again", lambda c, st: c.introduce(1, 65537, 2)),
        ("path-bad-chars", lambda c, st: c.read("/test/a b")),
        ("path-trailing-slash", lambda c, st: c.read("/test/")),
        ("path-double-slash", lambda c, st: c.read("//test")),
        ("path-2048", lambda c, st: c.read(LONG)),
        ("path-2049", lambda c, st: c.read(LONG + "p")),
        ("path-3073", lambda c, st: c.read("/" + "p" * 3072)),
        ("write-path-2049", lambda c, st: c.write(LONG + "p", "v")),
        ("write-value-4000", lambda c, st: c.write("/test/big", A4000)),
        ("get-feature", lambda c, st: c.get_feature(timeout=5)),
        ("reset-watches", lambda c, st: c.reset_watches()),
        ("read-after-reset", lambda c, st: c.read("/test/a")),
    ]


async def _run_client(path: str) -> tuple[dict[str, tuple], list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []
    out: dict[str, tuple] = {}
    state: dict = {}
    async with await XenstoreClient.connect(
        path, on_watch=lambda p, t: events.append((p, t)), request_timeout=5
    ) as c:
        for name, call in _client_steps():
            try:
                out[name] = ("ok", await call(c, state))
            except wire.XenstoreError as exc:
                out[name] = ("error", exc.name)
        await c.read("/")  # a round trip: every event sent before it has arrived
    return out, events


def _meaning(step: dict) -> tuple:
    """What the recorded reply means at the client's level."""
    reply = next(f for f in step["replies"] if f.get("type") not in (None, wire.XS_WATCH_EVENT))
    body = reply["payload"].encode("latin-1")
    if reply["type"] == wire.XS_ERROR:
        name = wire.decode_error(body)
        if step["step"] == "get-feature" and name == "ENOSYS":
            return ("ok", None)  # get_feature(): the server has no features to offer
        return ("error", name)
    t = step["type"]
    if t == wire.XS_READ:
        return ("ok", body)
    if t in (wire.XS_DIRECTORY, wire.XS_GET_PERMS):
        return ("ok", wire.decode_directory(body))
    if t == wire.XS_TRANSACTION_START:
        return ("ok", "tx")
    if t == wire.XS_TRANSACTION_END:
        return ("ok", True)
    if t == wire.XS_GET_DOMAIN_PATH:
        return ("ok", body.rstrip(b"\0").decode())
    if t == wire.XS_IS_DOMAIN_INTRODUCED:
        return ("ok", body.rstrip(b"\0") == b"T")
    assert body == b"OK\0", step
    return ("ok", None)


def test_our_client_gets_the_same_answers_from_the_sim_and_from_c_xenstored(
    sim_factory, c_xenstored
):
    sim = _like_the_recording(sim_factory)
    from_sim, sim_events = asyncio.run(_run_client(sim.xenstored))
    from_c, c_events = asyncio.run(_run_client(str(c_xenstored.socket_path)))
    recorded = {s["step"]: s for s in _recorded()}
    names = [n for n, _ in _client_steps()]
    assert len(names) == len(set(names)) and set(names) <= set(recorded)
    expected = {n: _meaning(recorded[n]) for n in names}
    for n in names:
        assert from_c[n] == expected[n], f"live C xenstored, {n}"
        assert from_sim[n] == expected[n], f"sim, {n}"
    recorded_events = [
        tuple(wire.decode_watch_event(f["payload"].encode("latin-1")))
        for s in _recorded()
        for f in s["replies"]
        if f.get("type") == wire.XS_WATCH_EVENT
    ]
    assert len(recorded_events) >= 5  # initial events, the write under the watch...
    assert c_events == recorded_events
    assert sim_events == recorded_events


@pytest.mark.parametrize("step", sorted(DELIBERATE))
def test_every_deliberate_difference_is_still_one(step):
    """Guard the list: a step named in DELIBERATE must exist, and the C record must still
    differ from what the sim is said to send (else it belongs off the list)."""
    recorded = {s["step"]: s for s in _recorded()}
    assert step in recorded
    instead, why = DELIBERATE[step]
    assert len(why) > 40
    if instead:
        assert recorded[step]["replies"] != instead
