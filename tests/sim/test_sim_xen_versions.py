"""`xenmux sim --xen-version` (issue 17): which xenstored rules each Xen release's sim runs,
how `--xs-version` overrides them, and the daemon on a 4.21 sim (GET_FEATURE answered
with the ERROR bit alone, no watch depth: full scans per firing, as on 4.17)."""

from __future__ import annotations

import argparse

import pytest
from daemonhelpers import brief, take

from mux.sim import cli
from mux.sim.xenstored.rules import xenstored_version
from mux.xenstore import wire


def _parse(*argv: str) -> str:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["--dir", "d", *argv])
    return xenstored_version(args.xen_version, args.xs_version)


@pytest.mark.parametrize(
    ("argv", "rules"),
    [
        ((), "4.17"),
        (("--xen-version", "4.20"), "4.17"),
        (("--xen-version", "4.21"), "4.21"),
        (("--xen-version", "4.22"), "4.22"),
        (("--xen-version", "4.22", "--xs-version", "4.17"), "4.17"),  # rules alone overridden
        (("--xs-version", "4.22"), "4.22"),
    ],
)
def test_the_xenstored_rules_of_each_release(argv, rules):
    assert _parse(*argv) == rules


def test_an_unknown_release_is_refused(capsys):
    with pytest.raises(SystemExit):
        _parse("--xen-version", "4.19")
    assert "invalid choice: '4.19'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown Xen version"):
        xenstored_version("4.9")


def test_the_daemon_on_a_421_sim(sim_factory, daemon_factory):
    sim = sim_factory(domains=4, xs_version="4.21")
    assert sim.ready["xs_version"] == "4.21"
    d = daemon_factory(sim, "--full-scan", "0")
    with d.client() as c:
        features = c.hello()["features"]
    assert features["server_features"] == wire.XENSTORE_SERVER_FEATURE_ERROR
    assert features["watch_depth"] is False  # tried: EINVAL, as from 4.17
    assert features["xenstored_flavour"] == "c"
    with d.subscribe(None) as sub:
        sim.ctl.shutdown(2, "poweroff")
        assert brief(take(sub, 1)) == [("shutdown", 2, "poweroff")]
        sim.ctl.destroy(2)
        assert brief(take(sub, 2)) == [("death", 2, "poweroff"), ("released", 2, None)]
    assert d.stats()["xenstore"]["depth_fallbacks"] == 0
