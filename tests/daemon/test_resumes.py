"""Resumes that fire nothing, on both xenstored flavours (issue 17, items 4-5).

A resume (fast or not) fires nothing on either xenstored: the daemon reports `resumed`
from its shutdown poll. On C xenstored a resume without XS_RESUME leaves the shutdown latch
set, so the domain's next shutdown fires nothing either: the resumed poll (`serve
--resumed-poll`) still sees it, and a daemon without it does not within the same time.
The safety full scan is off throughout (`--full-scan 0`), so nothing else could see them.

One sim per flavour and the daemons on them are shared by the module; each test works on
its own domids.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from daemonhelpers import brief, quiet, start_daemon, take, until
from simhelpers import short_dir, sim_command, start_sim

from mux.sim.xenstored.rules import FEATURES_4_22

NO_FULL_SCAN = ("--full-scan", "0", "--shutdown-poll", "0.1")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """name -> (sim, daemon): C 4.17, C 4.22 (watch depth), oxenstored, xapi-project's
    oxenstored; and "c-nopoll", a second daemon on the C sim without the resumed poll."""
    base = tmp_path_factory.mktemp("resumes")
    sims, daemons, dirs = {}, [], []
    out = {}
    try:
        for name, version, extra in (
            ("c", "4.17", ()),
            ("c-4.22", "4.22", ()),
            ("oxenstored", "4.17", ("--xenstored", "oxenstored")),
            ("xapi", "25.2", ("--xenstored", "oxenstored")),
        ):
            directory = short_dir(base, name)
            dirs.append(directory)
            sims[name] = start_sim(directory, 8, version, extra)
            d = start_daemon(sims[name], *NO_FULL_SCAN)
            daemons.append(d)
            out[name] = (sims[name], d)
        c = sims["c"]
        d = start_daemon(
            c,
            *NO_FULL_SCAN,
            "--resumed-poll",
            "0",
            "--state-dir",
            str(c.dir / "state-nopoll"),
            sock=str(c.dir / "nopoll.sock"),
        )
        daemons.append(d)
        out["c-nopoll"] = (c, d)
        yield out
    finally:
        errors = []
        for d in reversed(daemons):
            try:
                d.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        for handle in sims.values():
            handle.stop()
        for directory in dirs:
            if not str(directory).startswith(str(base)):
                shutil.rmtree(directory, ignore_errors=True)
        assert not errors, errors


def _fired(reply: dict) -> int:
    return reply["firings"]["@releaseDomain"] + reply["firings"]["@releaseDomain/<domid>"]


def test_hello_tells_the_flavour_and_depth_without_get_feature(host):
    expected = {
        "c": ("c", False, None),  # 4.17: GET_FEATURE is ENOSYS; GET_PERMS tells
        "c-4.22": ("c", True, FEATURES_4_22),  # advertised, and taken
        "oxenstored": ("oxenstored", False, None),
        "xapi": ("oxenstored", True, None),  # depth found by trying it: nothing advertised
    }
    for name, (flavour, depth, server_features) in expected.items():
        sim, d = host[name]
        until(lambda d=d: d.stats()["xenstore_connected"], timeout=20)
        with d.client() as c:
            features = c.hello()["features"]
        assert features["xenstored_flavour"] == flavour, name
        assert features["watch_depth"] is depth, name
        assert features["server_features"] == server_features, name
    sim, d = host["xapi"]
    before = d.stats()["scans"]["depth"]
    with d.subscribe([7]) as sub:
        sim.ctl.shutdown(7, "reboot")
        assert brief(take(sub, 1)) == [("shutdown", 7, "reboot")]
    assert d.stats()["scans"]["depth"] > before  # the firing named the domid
    assert d.stats()["xenstore"]["depth_fallbacks"] == 0


def test_every_flavour_and_version_gives_the_same_events(host):
    """One lifecycle, fast resume included, on each sim: the same events from each daemon,
    whether xenstored latches, fires on every VIRQ, or names the domid."""
    names = ("c", "c-4.22", "oxenstored", "xapi")
    streams = {}
    for name in names:
        sim, d = host[name]
        with d.subscribe([6]) as sub:
            sim.ctl.suspend(6)
            got = take(sub, 1)
            sim.ctl.resume(6, fast=True)
            got += take(sub, 1)
            sim.ctl.shutdown(6, "poweroff")
            got += take(sub, 1)
            sim.ctl.destroy(6)
            got += take(sub, 2)
            assert quiet(sub, 0.3) == []
        streams[name] = brief(got)
    assert streams["c"] == [
        ("shutdown", 6, "suspend"),
        ("resumed", 6, None),
        ("shutdown", 6, "poweroff"),
        ("death", 6, "poweroff"),
        ("released", 6, None),
    ]
    for name in names:
        assert streams[name] == streams["c"], name


@pytest.mark.parametrize("name", ["c", "oxenstored"])
def test_resumes_are_reported_by_the_shutdown_poll_fast_ones_too(host, name):
    sim, d = host[name]
    with d.subscribe([2]) as sub:
        sim.ctl.suspend(2)
        assert brief(take(sub, 1)) == [("shutdown", 2, "suspend")]
        for fast in (True, False):
            reply = sim.ctl.resume(2, fast=fast)
            assert _fired(reply) == 0 and reply["virqs"] == 0, "a resume fires nothing"
            assert brief(take(sub, 1)) == [("resumed", 2, None)], f"fast={fast}"
            if not fast:
                break
            sim.ctl.suspend(2)
            assert brief(take(sub, 1)) == [("shutdown", 2, "suspend")]


def test_c_xenstored_shutdown_after_a_resume_without_xs_resume(host):
    """The trap of item 5: the latch still set, the poweroff fires nothing. The daemon with
    the resumed poll sees it (with its reason); the one without does not, in the same time
    and longer."""
    sim, polled = host["c"]
    _, unpolled = host["c-nopoll"]
    with polled.subscribe([3]) as with_poll, unpolled.subscribe([3]) as without:
        sim.ctl.suspend(3)
        for sub in (with_poll, without):
            assert brief(take(sub, 1)) == [("shutdown", 3, "suspend")]
        sim.ctl.resume(3, fast=True, xs_resume=False)
        for sub in (with_poll, without):
            assert brief(take(sub, 1)) == [("resumed", 3, None)]
        started = time.monotonic()
        reply = sim.ctl.shutdown(3, "poweroff")
        assert reply["virqs"] == 1 and _fired(reply) == 0, "C xenstored is still latched"
        assert brief(take(with_poll, 1, timeout=10)) == [("shutdown", 3, "poweroff")]
        took = time.monotonic() - started
        assert quiet(without, max(1.0, 2 * took)) == []


def test_oxenstored_fires_for_the_shutdown_after_a_resume_without_xs_resume(host):
    sim, d = host["oxenstored"]
    with d.subscribe([4]) as sub:
        sim.ctl.suspend(4)
        assert brief(take(sub, 1)) == [("shutdown", 4, "suspend")]
        sim.ctl.resume(4, xs_resume=False)
        assert brief(take(sub, 1)) == [("resumed", 4, None)]
        reply = sim.ctl.shutdown(4, "crash")
        assert _fired(reply) == 1, "no latch: the shutdown fires"
        assert brief(take(sub, 1)) == [("shutdown", 4, "crash")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ("--resumed-poll", "5", "--shutdown-poll", "0"),
            "argument --resumed-poll: polls every --shutdown-poll, which is 0 (off)",
        ),
        (("--resumed-poll", "-1"), "argument --resumed-poll: '-1' is not a number of seconds"),
        (("--resumed-poll", "soon"), "argument --resumed-poll: 'soon' is not a number"),
    ],
)
def test_a_bad_resumed_poll_is_one_line_and_status_2(tmp_path, argv, message):
    done = subprocess.run(
        [*sim_command(), "serve", "--backend", "sim", "--sim-dir", str(tmp_path), *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was touched
