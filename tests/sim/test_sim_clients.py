"""Independent clients against the sim's xenstored: Debian's libxenstore tools and pyxs."""

from __future__ import annotations

import shutil
import subprocess

import pytest

pytest_plugins = ("simhelpers",)  # the sim, sim422, sim_factory, procs fixtures

TOOLS = ("xenstore-read", "xenstore-write", "xenstore-ls", "xenstore-list", "xenstore-rm")


def xs_tool(
    sim, *args: str, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess:
    tool = shutil.which(args[0])
    if tool is None:
        pytest.fail(f"{args[0]} is missing: install xenstore-utils (make test does)")
    return subprocess.run(
        [tool, *args[1:]],
        env=sim.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def test_debian_tools_read_write_ls_list_rm(sim):
    assert xs_tool(sim, "xenstore-read", "/local/domain/5/name").stdout == "guest-5\n"
    # several paths at once run in one transaction
    xs_tool(sim, "xenstore-write", "/test/a", "1", "/test/b/c", "two words")
    assert xs_tool(sim, "xenstore-read", "/test/a", "/test/b/c").stdout == "1\ntwo words\n"
    assert xs_tool(sim, "xenstore-list", "/test").stdout.split() == ["a", "b"]
    listing = xs_tool(sim, "xenstore-list", "/local/domain").stdout.split()
    assert listing == [str(i) for i in range(9)]
    ls = xs_tool(sim, "xenstore-ls", "-p", "/local/domain/3").stdout
    assert 'name = "guest-3"' in ls
    assert "(n0,r3)" in ls
    assert 'domid = "3"' in ls
    xs_tool(sim, "xenstore-rm", "/test/b")
    assert xs_tool(sim, "xenstore-list", "/test").stdout.split() == ["a"]
    gone = xs_tool(sim, "xenstore-read", "/test/b/c", check=False)
    assert gone.returncode != 0
    # the domain's nodes as a toolstack writes them
    vm = xs_tool(sim, "xenstore-read", "/local/domain/4/vm").stdout.strip()
    assert xs_tool(sim, "xenstore-read", f"{vm}/name").stdout == "guest-4\n"
    uuid = vm.rsplit("/", 1)[1]
    assert [d["uuid"] for d in sim.ctl.list() if d["domid"] == 4] == [uuid]


def test_xenstore_watch_sees_shutdown_and_destroy(sim, procs):
    watcher = procs.start(["xenstore-watch", "-n", "3", "@releaseDomain"], env=sim.env())
    assert procs.read_lines(watcher, 1, timeout=10) == ["@releaseDomain"]  # registered
    shut = sim.sim_ctl("shutdown", "3", "--reason", "crash")
    assert shut.returncode == 0, shut.stderr
    destroy = sim.sim_ctl("destroy", "3")
    assert destroy.returncode == 0, destroy.stderr
    assert procs.read_lines(watcher, 2, timeout=10) == ["@releaseDomain", "@releaseDomain"]
    assert watcher.wait(timeout=10) == 0


def test_xenstore_watch_gets_nothing_for_resume_and_latched_virq(sim, procs):
    # /marker: a write there after the operations ends the lines they caused (one
    # connection's events arrive in order)
    watcher = procs.start(["xenstore-watch", "@releaseDomain", "/marker"], env=sim.env())
    assert procs.read_lines(watcher, 2, timeout=10) == ["@releaseDomain", "/marker"]
    sim.ctl.suspend(2)
    sim.ctl.virq()  # latched
    sim.ctl.resume(2)  # no VIRQ
    sim.ctl.suspend(2, silent=True)  # no VIRQ
    sim.ctl.shutdown(6, "poweroff")  # fires once: the pass also latches the silent 2
    xs_tool(sim, "xenstore-write", "/marker", "1")
    assert procs.read_lines(watcher, 3, timeout=10) == [
        "@releaseDomain",  # suspend 2
        "@releaseDomain",  # shutdown 6 (and the silent suspend of 2 in the same pass)
        "/marker",
    ]


def test_large_host_lists_with_directory_part(sim_factory):
    big = sim_factory(domains=4000)
    names = xs_tool(big, "xenstore-list", "/local/domain").stdout.split()
    assert names == [str(i) for i in range(4001)]
    ls = xs_tool(big, "xenstore-ls", "/local/domain", timeout=60).stdout.splitlines()
    assert len(ls) == 1 + 4000 * 4 + 2  # dom0: itself, name, domid; guests: 4 lines
    assert ls[-1].strip() == 'domid = "4000"'


def test_pyxs_reads_writes_and_watches(sim):
    from pyxs import Client

    with Client(unix_socket_path=sim.xenstored) as c:
        assert c.read(b"/local/domain/2/name") == b"guest-2"
        c.write(b"/pyxs/key", b"value")
        assert c.read(b"/pyxs/key") == b"value"
        assert sorted(c.list(b"/local/domain"), key=int) == [str(i).encode() for i in range(9)]
        assert c.get_domain_path(3) == b"/local/domain/3"
        assert c.is_domain_introduced(3) is True
        assert c.get_perms(b"/local/domain/3") == [b"n0", b"r3"]
        assert c.transaction() > 0
        c.write(b"/pyxs/tx", b"1")
        assert c.commit() is True
        assert c.read(b"/pyxs/tx") == b"1"
        c.delete(b"/pyxs")
        assert not c.exists(b"/pyxs/key")

        with c.monitor() as m:
            m.watch(b"@releaseDomain", b"rel")
            m.watch(b"/pyxs", b"node")
            first = {m.events.get(timeout=5), m.events.get(timeout=5)}
            assert first == {(b"@releaseDomain", b"rel"), (b"/pyxs", b"node")}
            sim.ctl.shutdown(4, "reboot")
            assert m.events.get(timeout=5) == (b"@releaseDomain", b"rel")
            c.write(b"/pyxs/later", b"x")
            assert m.events.get(timeout=5) == (b"/pyxs/later", b"node")
