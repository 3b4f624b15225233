"""The xenctrl backend on each Xen release's libraries (issue 17 items 1-3): what it finds
(docs/xen-versions.md) and what it does with it, on the stand-ins of mux/realxen/xenstub
built as that release's libxenctrl and libxenmanage.

- `xc_domain_getinfo_single` (4.18+) answers exactly the domid asked; the backend's
  `query_one` uses it there, the batched getinfolist elsewhere;
- libxenmanage (4.21+) is used where its arity is certain, and gives each incarnation its
  unique id; a 4.21 development build (the 4-argument form) is never called;
- `xenmanage_poll_changed_domain` is never called (the stand-in aborts if it is);
- `hello`'s `features` says what was found.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import realxen
import test_xenctrl_backend as xb
from daemonhelpers import brief, take, until

from mux import records
from mux.hypervisor.libxc import XenVersion
from mux.hypervisor.xenctrl import XenctrlBackend
from mux.hypervisor.xenmanage import arity_for
from mux.realxen import guest, private_dir
from mux.realxen.stubs import XEN_STUB_VERSIONS, build_xen_stubs
from mux.xenstore import wire

# fixtures of realxen and test_xenctrl_backend, registered for this module
xenstub_libs = realxen.xenstub_libs
scratch = xb.scratch
table = xb.table
serve_factory = xb.serve_factory
domids = xb.domids

RECORD = records.RECORD_SIZE


@pytest.fixture(scope="module")
def xen_stubs():
    """Every release's stand-ins, built once for the module."""
    with private_dir() as d:
        yield {v: build_xen_stubs(d, v) for v in XEN_STUB_VERSIONS}


def _counter(path, name: str) -> int:
    fn = getattr(ctypes.CDLL(str(path)), name)
    fn.restype = ctypes.c_ulong
    return fn()


@pytest.mark.parametrize(
    ("version", "arity"),
    [
        (XenVersion(4, 17, ".0"), None),
        (XenVersion(4, 20, ".4"), None),
        (XenVersion(4, 21, "-unstable"), None),  # 4 or 5 arguments: unknowable
        (XenVersion(4, 21, ".0-rc1"), 5),
        (XenVersion(4, 21, ".2"), 5),
        (XenVersion(4, 22, "-unstable"), 5),
        (XenVersion(4, 22, ".0"), 5),
        (XenVersion(5, 0, ".0"), 5),
        (None, None),
    ],
)
def test_arity_of_xenmanage_get_domain_info_by_release(version, arity):
    assert arity_for(version) == arity


@pytest.mark.parametrize(
    ("version", "one_domain", "unique_ids"),
    [
        ("4.17", False, False),
        ("4.18", True, False),
        ("4.20", True, False),
        ("4.21", True, True),
        ("4.22", True, True),
        ("4.21-unstable", True, False),
    ],
)
def test_what_the_backend_finds_on_each_release(xen_stubs, table, version, one_domain, unique_ids):
    stubs = xen_stubs[version]
    be = XenctrlBackend(str(stubs.xenctrl))
    try:
        assert str(be.xen_version) == {"4.21-unstable": "4.21-unstable"}.get(
            version, f"{version}.0"
        )
        assert be.capabilities.one_domain is one_domain
        assert be.capabilities.unique_ids is unique_ids
        assert be.capabilities.features() == {
            "one_domain_query": one_domain,
            "unique_ids": unique_ids,
        }
        if not unique_ids:
            with pytest.raises(NotImplementedError):
                be.unique_id(1)
    finally:
        be.close()
    if stubs.xenmanage is not None and not unique_ids:
        # the 4-argument build was never called, not even once to find out
        assert _counter(stubs.xenmanage, "xenmux_manage_calls") == 0


def test_query_one_is_the_exact_lookup_from_4_18(xen_stubs, table):
    """Guests 1, 5, 6, 9: asking for 2 gives nothing with getinfo_single, and guest 5 with
    the batched call (which walks on to the next domid)."""
    new = XenctrlBackend(str(xen_stubs["4.18"].xenctrl))
    old = XenctrlBackend(str(xen_stubs["4.17"].xenctrl))
    try:
        single_before = _counter(xen_stubs["4.18"].xenctrl, "xenmux_stub_single_calls")
        buf, n = new.query_one(5)
        assert n == 1 and domids(buf, 1) == [5]
        assert new.query_one(2)[1] == 0
        table.shutdown(6, records.SHUTDOWN_CRASH)
        buf, n = new.query_one(6)
        assert records.DomainRecord.unpack_from(buf, 0) == table.get(6)
        assert _counter(xen_stubs["4.18"].xenctrl, "xenmux_stub_single_calls") == single_before + 3
        buf, n = old.query_one(2)
        assert n == 1 and domids(buf, 1) == [5]
        assert _counter(xen_stubs["4.17"].xenctrl, "xenmux_stub_single_calls") == 0
    finally:
        new.close()
        old.close()


def test_unique_ids_per_incarnation(xen_stubs, table, scratch, monkeypatch):
    ids = scratch / "unique_ids"
    monkeypatch.setenv("XENMUX_STUB_UNIQUE_IDS", str(ids))
    be = XenctrlBackend(str(xen_stubs["4.21"].xenctrl))
    try:
        made = be.unique_id(5)
        assert made and made == be.unique_id(5) and made != be.unique_id(6)
        assert be.unique_id(2) is None  # no such domain
        # domid 5 destroyed and made again with the same UUID: another incarnation
        table.remove(5)
        table.put(guest(5))
        ids.write_text("5 0123456789abcdef\n")
        assert be.unique_id(5) == 0x0123456789ABCDEF
    finally:
        be.close()


def test_the_stand_in_aborts_on_poll_changed_domain(xen_stubs):
    """The trap is real: a process that calls it dies, loudly."""
    code = (
        "import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
        "d = ctypes.c_uint(); lib.xenmanage_poll_changed_domain(None, ctypes.byref(d))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(xen_stubs["4.22"].xenmanage)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == -6  # SIGABRT
    assert "xenmanage_poll_changed_domain was called" in proc.stderr


def test_the_stand_in_exports_what_upstream_does(xen_stubs):
    """Both arities: soname libxenmanage.so.1, every symbol under VERS_1.0 (so neither the
    soname nor the version node can tell them apart, as upstream)."""
    for version in ("4.21", "4.21-unstable"):
        path = str(xen_stubs[version].xenmanage)
        dyn = subprocess.run(
            ["readelf", "-W", "--dyn-syms", "-d", path], capture_output=True, text=True, check=True
        ).stdout
        assert "(SONAME)" in dyn and "[libxenmanage.so.1]" in dyn
        for sym in ("xenmanage_open", "xenmanage_get_domain_info", "xenmanage_poll_changed_domain"):
            assert f"{sym}@@VERS_1.0" in dyn, (version, sym)


@pytest.mark.parametrize("version", ["4.17", "4.22"])
def test_hello_says_what_was_found_and_poll_changed_domain_is_never_called(
    sim,
    xen_stubs,
    serve_factory,
    scratch,
    version,
):
    stubs = xen_stubs[version]
    env = dict(os.environ, XENMUX_STUB_SHM=sim.shm)
    for name in ("XENMUX_STUB_FAIL", "XENMUX_STUB_FAIL_FILE", "XENMUX_STUB_UNIQUE_IDS"):
        env.pop(name, None)
    d = serve_factory(
        scratch,
        "--backend",
        "xenctrl",
        "--xenctrl-lib",
        str(stubs.xenctrl),
        "--xenstore",
        sim.xenstored,
        env=env,
    )
    with d.client() as c:
        features = c.hello()["features"]
    new = version != "4.17"
    assert features["one_domain_query"] is new and features["unique_ids"] is new
    assert features["xenstored_flavour"] == "c" and features["watch_depth"] is False  # a 4.17 sim
    with d.subscribe(None) as sub:
        sim.ctl.shutdown(3, "crash")
        assert brief(take(sub, 1)) == [("shutdown", 3, "crash")]
        sim.ctl.destroy(3)
        assert brief(take(sub, 2)) == [("death", 3, "crash"), ("released", 3, None)]
    assert d.proc.poll() is None
    assert "poll_changed_domain" not in d.log_text()


def _faults_module():
    """tests/daemon/test_xenstore_faults.py (its relay), loaded by path."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "daemon" / "test_xenstore_faults.py"
    spec = importlib.util.spec_from_file_location("xenmux_test_xenstore_faults", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_depth_is_found_by_trying_without_get_feature(sim422, daemon_factory):
    """A server that never answers XS_GET_FEATURE (oxenstored holds such a reply back; xapi's
    advertises nothing) but takes depth-1 special watches: the daemon finds depth by trying
    it, and firings name the domid (targeted scans)."""
    faults = _faults_module()
    with faults.FaultyXenstored(sim422.xenstored) as relay:
        relay.drop_replies[wire.XS_GET_FEATURE] = 1_000
        d = daemon_factory(sim422, "--xenstore", relay.path, "--full-scan", "0")
        until(lambda: d.stats()["xenstore_connected"], timeout=20)
        with d.client() as c:
            features = c.hello()["features"]
        assert features["watch_depth"] is True and features["server_features"] is None
        assert relay.requests["XS_GET_FEATURE"] >= 1
        before = d.stats()["scans"]["depth"]
        with d.subscribe(None) as sub:
            sim422.ctl.shutdown(2, "reboot")
            assert brief(take(sub, 1)) == [("shutdown", 2, "reboot")]
        assert d.stats()["scans"]["depth"] > before
        assert d.stats()["xenstore"]["depth_fallbacks"] == 0
        d.stop()
