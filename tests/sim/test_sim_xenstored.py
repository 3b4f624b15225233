"""The sim's xenstored on the wire: replies, errors, watches and the @releaseDomain rules.

Each check is against the behaviour of C xenstored (xenstored_core.c, _watch.c, _domain.c of
4.17, and the 4.22 watch-depth patches), spoken to with a minimal raw client so that every
byte of a reply can be checked.
"""

from __future__ import annotations

import socket
import struct

import pytest

from mux.sim.wireclient import XsClient
from mux.xenstore import wire

pytest_plugins = ("simhelpers",)  # the sim, sim422, sim_factory, procs fixtures

REL = wire.SPECIAL_RELEASE
INTRO = wire.SPECIAL_INTRODUCE


@pytest.fixture
def xs(sim):
    with XsClient(sim.xenstored) as client:
        yield client


# --- nodes ------------------------------------------------------------------------------------


def test_nodes_read_write_mkdir_rm_and_errors(sim, xs):
    assert xs.read("/local/domain/3/name") == b"guest-3"
    assert xs.read("/local/domain/0/name") == b"Domain-0"
    assert xs.read("/local/domain/3/vm").startswith(b"/vm/")
    xs.write("/t/a/b", b"x\x00y")  # values are bytes, NULs included
    assert xs.read("/t/a/b") == b"x\x00y"
    assert xs.read("/t/a") == b""  # parents created empty
    assert xs.directory("/t") == ["a"]
    assert xs.ok(wire.XS_MKDIR, "/t/m") == b"OK\0"
    assert xs.ok(wire.XS_MKDIR, "/t/m") == b"OK\0"  # exists: fine
    assert xs.directory("/t") == ["a", "m"]  # creation order
    # relative paths are under /local/domain/0 for a socket connection
    xs.write("rel", "v")
    assert xs.read("/local/domain/0/rel") == b"v"
    assert xs.read("rel") == b"v"
    assert xs.error(wire.XS_READ, "/t/none") == "ENOENT"
    assert xs.error(wire.XS_DIRECTORY, "/none/x") == "ENOENT"
    assert xs.error(wire.XS_READ, "/t/") == "EINVAL"  # trailing slash
    assert xs.error(wire.XS_READ, "/t//a") == "EINVAL"
    assert xs.error(wire.XS_READ, "/t/a b") == "EINVAL"  # invalid character
    assert xs.error(wire.XS_READ, REL) == "EINVAL"  # special names are no nodes
    assert xs.error(wire.XS_READ, raw=b"/t/a") == "EINVAL"  # not NUL-terminated
    assert xs.error(wire.XS_WRITE, raw=b"/t/a") == "EINVAL"  # no NUL at all
    assert xs.ok(wire.XS_RM, "/t/a/none") == b"OK\0"  # parent exists: fine
    assert xs.error(wire.XS_RM, "/t/none/none") == "ENOENT"
    assert xs.error(wire.XS_RM, "/") == "EINVAL"
    assert xs.ok(wire.XS_RM, "/t/a") == b"OK\0"
    assert xs.error(wire.XS_READ, "/t/a/b") == "ENOENT"
    assert xs.directory("/t") == ["m"]


def test_perms_as_the_real_server_formats_them(xs):
    assert xs.ok(wire.XS_GET_PERMS, "/local/domain/4") == b"n0\0r4\0"
    xs.write("/p/q", "1")
    assert xs.ok(wire.XS_GET_PERMS, "/p/q") == b"n0\0"
    assert xs.ok(wire.XS_SET_PERMS, "/p", "b5", "r0x10", "w07") == b"OK\0"
    assert xs.ok(wire.XS_GET_PERMS, "/p") == b"b5\0r16\0w7\0"  # strtol(.., 0), printed %i
    xs.write("/p/new", "1")  # a new node inherits its parent's permissions
    assert xs.ok(wire.XS_GET_PERMS, "/p/new") == b"b5\0r16\0w7\0"
    assert xs.error(wire.XS_SET_PERMS, "/p", "x1") == "EINVAL"
    assert xs.error(wire.XS_SET_PERMS, "/p", "r") == "EINVAL"
    assert xs.error(wire.XS_SET_PERMS, "/p") == "EINVAL"
    assert xs.error(wire.XS_SET_PERMS, "/none", "n0") == "ENOENT"
    assert xs.ok(wire.XS_SET_PERMS, REL, "n0", "r3") == b"OK\0"


def test_domain_requests(sim, xs):
    assert xs.ok(wire.XS_GET_DOMAIN_PATH, "7") == b"/local/domain/7\0"
    assert xs.ok(wire.XS_IS_DOMAIN_INTRODUCED, "3") == b"T\0"
    assert xs.ok(wire.XS_IS_DOMAIN_INTRODUCED, "0") == b"T\0"
    assert xs.ok(wire.XS_IS_DOMAIN_INTRODUCED, "99") == b"F\0"
    assert xs.error(wire.XS_RESUME, "0") == "EINVAL"
    assert xs.error(wire.XS_RESUME, "99") == "ENOENT"
    assert xs.error(wire.XS_RELEASE, "99") == "ENOENT"
    assert xs.error(wire.XS_INTRODUCE, "5", "0") == "EINVAL"  # too few arguments
    assert xs.error(wire.XS_INTRODUCE, "5", "0", "0") == "EINVAL"  # event channel 0
    assert xs.error(wire.XS_INTRODUCE, "99", "0", "7") == "EINVAL"  # no such domain
    assert xs.ok(wire.XS_INTRODUCE, "5", "0", "7") == b"OK\0"  # already: just OK


def test_unknown_and_4_22_types_are_enosys_in_4_17(xs):
    assert xs.error(20, raw=b"") == "ENOSYS"  # XS_RESTRICT, removed
    assert xs.error(wire.XS_WATCH_EVENT, raw=b"") == "ENOSYS"
    assert xs.error(wire.XS_GET_FEATURE, raw=b"") == "ENOSYS"
    assert xs.error(wire.XS_SET_FEATURE, "1", "4") == "ENOSYS"
    assert xs.error(999, raw=b"abc") == "ENOSYS"
    assert xs.read("/local/domain/1/name") == b"guest-1"  # the connection goes on


def test_directory_e2big_and_directory_part(xs):
    names = [f"child-{i:04d}-" + "x" * 40 for i in range(300)]  # ~15 KiB of names
    for n in names:
        xs.write(f"/big/{n}", "")
    assert xs.error(wire.XS_DIRECTORY, "/big") == "E2BIG"
    got: list[str] = []
    off = 0
    gens = set()
    while True:
        body = xs.ok(wire.XS_DIRECTORY_PART, "/big", str(off))
        assert len(body) <= wire.XENSTORE_PAYLOAD_MAX
        gen, part, complete = wire.decode_directory_part(body)
        gens.add(gen)
        got += part
        off += sum(len(p) + 1 for p in part)
        if complete:
            break
    assert got == names
    assert len(gens) == 1
    # past the end: the generation and an empty string
    gen_text = str(gens.pop()).encode()
    assert xs.ok(wire.XS_DIRECTORY_PART, "/big", "999999") == gen_text + b"\0\0"
    # a change to the node changes its generation
    xs.write("/big/another", "")
    gen2, _, _ = wire.decode_directory_part(xs.ok(wire.XS_DIRECTORY_PART, "/big", "0"))
    assert str(gen2).encode() != gen_text
    assert xs.error(wire.XS_DIRECTORY_PART, "/big") == "EINVAL"  # offset missing


def test_transactions(sim, xs):
    tx = int(xs.ok(wire.XS_TRANSACTION_START, "").rstrip(b"\0"))
    assert tx != 0
    xs.write("/tx/a", "1", tx_id=tx)
    assert xs.read("/tx/a", tx_id=tx) == b"1"
    assert xs.error(wire.XS_READ, "/tx/a") == "ENOENT"  # not visible outside yet
    assert xs.error(wire.XS_TRANSACTION_START, "", tx_id=tx) == "EBUSY"  # not nested
    assert xs.error(wire.XS_TRANSACTION_END, "X", tx_id=tx) == "EINVAL"
    assert xs.ok(wire.XS_TRANSACTION_END, "T", tx_id=tx) == b"OK\0"
    assert xs.read("/tx/a") == b"1"
    assert xs.error(wire.XS_READ, "/tx/a", tx_id=tx) == "ENOENT"  # the id is gone
    assert xs.error(wire.XS_TRANSACTION_END, "T") == "ENOENT"  # no transaction

    # abort
    tx = int(xs.ok(wire.XS_TRANSACTION_START, "").rstrip(b"\0"))
    xs.write("/tx/b", "2", tx_id=tx)
    assert xs.ok(wire.XS_TRANSACTION_END, "F", tx_id=tx) == b"OK\0"
    assert xs.error(wire.XS_READ, "/tx/b") == "ENOENT"

    # conflict: a node the transaction read changed meanwhile
    tx = int(xs.ok(wire.XS_TRANSACTION_START, "").rstrip(b"\0"))
    assert xs.read("/tx/a", tx_id=tx) == b"1"
    with XsClient(sim.xenstored) as other:
        other.write("/tx/a", "changed")
    xs.write("/tx/c", "3", tx_id=tx)
    assert xs.error(wire.XS_TRANSACTION_END, "T", tx_id=tx) == "EAGAIN"
    assert xs.error(wire.XS_READ, "/tx/c") == "ENOENT"


def test_watch_events_in_a_transaction_fire_on_commit(xs):
    xs.watch("/w", "tok")
    assert xs.sync() == [("/w", "tok")]  # the immediate first event
    tx = int(xs.ok(wire.XS_TRANSACTION_START, "").rstrip(b"\0"))
    xs.write("/w/x", "1", tx_id=tx)
    assert xs.sync() == []
    xs.ok(wire.XS_TRANSACTION_END, "T", tx_id=tx)
    assert xs.sync() == [("/w/x", "tok")]


# --- watches ----------------------------------------------------------------------------------


def test_watch_first_event_subtree_relative_unwatch(sim, xs):
    xs.watch("/a", "t1")
    assert xs.sync() == [("/a", "t1")]  # fires once up front, node or not
    xs.write("/a/b/c", "1")  # creates /a, /a/b and /a/b/c: one event, the written node
    xs.write("/a", "2")
    xs.write("/other", "3")
    assert xs.sync() == [("/a/b/c", "t1"), ("/a", "t1")]
    # a watch below the changed node does not fire
    xs.watch("/a/b/c/d", "deep")
    assert xs.sync() == [("/a/b/c/d", "deep")]
    xs.write("/a/b", "x")
    assert xs.sync() == [("/a/b", "t1")]
    # rm: removed children fire for exact watches only, the removed node as a subtree
    # (the watch below it, on the never created /a/b/c/d, gets nothing: as C's is_child)
    xs.watch("/a/b/c", "c")
    xs.sync()
    xs.ok(wire.XS_RM, "/a/b")
    assert xs.sync() == [("/a/b/c", "c"), ("/a/b", "t1")]
    # relative: events come back relative too
    xs.watch("rel/x", "r")
    assert xs.sync() == [("rel/x", "r")]
    xs.write("/local/domain/0/rel/x/y", "1")
    assert xs.sync() == [("rel/x/y", "r")]
    assert xs.error(wire.XS_WATCH, "rel/x", "r") == "EEXIST"
    assert xs.ok(wire.XS_UNWATCH, "rel/x", "r") == b"OK\0"
    assert xs.error(wire.XS_UNWATCH, "rel/x", "r") == "ENOENT"
    xs.write("/local/domain/0/rel/x/y", "2")
    assert xs.sync() == []
    assert xs.error(wire.XS_WATCH, "/bad//path", "t") == "EINVAL"
    assert xs.error(wire.XS_WATCH, "/a") == "EINVAL"
    # a watch on / sees everything
    xs.watch("/", "root")
    xs.sync()
    xs.write("/z", "1")
    assert ("/z", "root") in xs.sync()
    assert xs.ok(wire.XS_RESET_WATCHES, raw=b"") == b"OK\0"
    xs.write("/a/q", "1")
    assert xs.sync() == []


def test_4_17_rejects_a_watch_depth(xs):
    assert xs.error(wire.XS_WATCH, REL, "t", "1") == "EINVAL"


def test_release_domain_firing_rules_4_17(sim, xs):
    """The 4.17 latch: one firing per shutdown until XS_RESUME; dying/gone fire; resume and
    silent suspend fire nothing; the next VIRQ sees a silent suspend."""
    xs.watch(REL, "rel")
    xs.watch(INTRO, "intro")
    assert xs.sync() == [(REL, "rel"), (INTRO, "intro")]
    ctl = sim.ctl

    reply = ctl.shutdown(3, "reboot")
    assert reply["virqs"] == 1 and reply["firings"][REL] == 1
    assert xs.sync() == [(REL, "rel")]

    # a second VIRQ while 3 stays shut down: latched, nothing
    assert ctl.virq()["firings"][REL] == 0
    assert xs.sync() == []
    ctl.shutdown(4, "poweroff")  # another domain's shutdown still fires
    assert xs.sync() == [(REL, "rel")]

    # XS_RESUME re-arms the latch: the next VIRQ fires again for the still shut-down 3
    assert xs.ok(wire.XS_RESUME, "3") == b"OK\0"
    assert xs.sync() == []
    ctl.virq()
    assert xs.sync() == [(REL, "rel")]
    ctl.virq()
    assert xs.sync() == []

    # resume (XEN_DOMCTL_resumedomain + XS_RESUME) raises no VIRQ: nothing fires
    ctl.suspend(5)
    assert xs.sync() == [(REL, "rel")]
    reply = ctl.resume(5)
    assert reply["virqs"] == 0
    assert xs.sync() == []
    ctl.suspend(5)  # re-armed by the XS_RESUME: a new suspend fires again
    assert xs.sync() == [(REL, "rel")]

    # a silent suspend (suspend event channel) raises no VIRQ: nothing fires...
    assert ctl.suspend(6, silent=True)["virqs"] == 0
    assert xs.sync() == []
    ctl.virq()  # ...until the next VIRQ for any reason: the pass sees 6 shut down
    assert xs.sync() == [(REL, "rel")]

    # destroy: dying fires (the domain leaves the introduced list), gone fires nothing more
    reply = ctl.destroy(7)
    assert reply["virqs"] == 2 and reply["firings"][REL] == 1
    assert xs.sync() == [(REL, "rel")]
    assert xs.ok(wire.XS_IS_DOMAIN_INTRODUCED, "7") == b"F\0"

    # a zombie: dying fires once, then nothing
    ctl.destroy(8, zombie=True)
    assert xs.sync() == [(REL, "rel")]
    ctl.virq()
    assert xs.sync() == []
    assert [d["state"] for d in ctl.list() if d["domid"] == 8] == ["dying"]

    # create: @introduceDomain, no VIRQ, no @releaseDomain
    [dom] = ctl.create(name="new")
    assert xs.sync() == [(INTRO, "intro")]
    assert xs.read(f"/local/domain/{dom['domid']}/name") == b"new"

    # a domain never introduced never fires
    [quiet] = ctl.create(introduce=False)
    assert xs.sync() == []
    ctl.shutdown(quiet["domid"], "crash")
    ctl.destroy(quiet["domid"])
    assert xs.sync() == []

    # XS_RELEASE drops a domain and fires
    assert xs.ok(wire.XS_RELEASE, "1") == b"OK\0"
    assert xs.sync() == [(REL, "rel")]
    assert xs.ok(wire.XS_IS_DOMAIN_INTRODUCED, "1") == b"F\0"


def test_one_firing_for_many_shutdowns_and_for_destroy_all(sim, xs):
    xs.watch(REL, "rel")
    xs.sync()
    reply = sim.ctl.shutdown("all", "poweroff")
    assert len(reply["domids"]) == 8 and reply["virqs"] == 1
    assert xs.sync() == [(REL, "rel")]  # one pass, one firing for all of them
    reply = sim.ctl.destroy("all")
    # each dying domain fires for itself (destroy_domain), the pass adds none
    assert reply["firings"][REL] == 8
    assert xs.sync() == [(REL, "rel")] * 8
    assert [d["domid"] for d in sim.ctl.list()] == [0]


def test_nodes_removed_after_destroy(sim, xs):
    vm = xs.read("/local/domain/2/vm").decode()
    xs.watch("/local/domain/2", "home")
    xs.sync()
    sim.ctl.destroy(2)
    events = xs.sync()
    assert ("/local/domain/2", "home") in events
    assert xs.error(wire.XS_READ, "/local/domain/2/name") == "ENOENT"
    assert xs.error(wire.XS_READ, vm) == "ENOENT"


def test_4_22_feature_and_depth_watch(sim422):
    with XsClient(sim422.xenstored) as xs:
        features = int(xs.ok(wire.XS_GET_FEATURE, raw=b"").rstrip(b"\0"))
        assert features & wire.XENSTORE_SERVER_FEATURE_WATCHDEPTH
        assert xs.ok(wire.XS_GET_FEATURE, raw=b"").endswith(b"\0")
        assert xs.error(wire.XS_WATCH, REL, "t", "-1") == "EINVAL"

        xs.watch(REL, "plain")
        xs.watch(REL, "named", "1")
        xs.watch(f"{REL}/4", "four")
        xs.watch(INTRO, "intro-named", "1")
        assert xs.sync() == [
            (REL, "plain"),
            (REL, "named"),
            (f"{REL}/4", "four"),
            (INTRO, "intro-named"),
        ]
        ctl = sim422.ctl
        ctl.shutdown(3, "crash")
        assert xs.sync() == [(f"{REL}/3", "named"), (REL, "plain")]
        ctl.shutdown(4, "reboot")
        assert xs.sync() == [(f"{REL}/4", "named"), (f"{REL}/4", "four"), (REL, "plain")]
        ctl.virq()  # latched: nothing, named or not
        assert xs.sync() == []
        ctl.destroy(3)
        assert sorted(xs.sync()) == sorted([(REL, "plain"), (f"{REL}/3", "named")])
        [dom] = ctl.create()
        assert xs.sync() == [(f"{INTRO}/{dom['domid']}", "intro-named")]
        ctl.shutdown("all", "poweroff")
        events = xs.sync()
        named = sorted(int(p.rsplit("/", 1)[1]) for p, t in events if t == "named")
        running = {1, 2, 5, 6, 7, 8, dom["domid"]}
        assert named == sorted(running)
        assert events.count((REL, "plain")) == 1


def test_bad_input_closes_or_answers_only_that_connection(sim):
    with XsClient(sim.xenstored) as good:
        good.watch(REL, "rel")
        good.sync()

        # over-long payload: dropped (C xenstored ignores the connection)
        with XsClient(sim.xenstored, timeout=5) as bad:
            bad.send_raw(struct.pack("=IIII", wire.XS_READ, 1, 0, 5000) + b"x" * 100)
            with pytest.raises(ConnectionError):
                bad.request(wire.XS_READ, b"/\0")

        # garbage bytes: whatever header they make, the server answers or drops
        with XsClient(sim.xenstored, timeout=5) as bad:
            bad.send_raw(bytes(range(256)) * 8)
            try:
                bad.request(wire.XS_READ, b"/\0")
            except (ConnectionError, TimeoutError, AssertionError):
                pass

        # unknown type with a payload: answered ENOSYS, same connection still works
        with XsClient(sim.xenstored) as odd:
            assert odd.error(0xDEAD, raw=b"x" * 10) == "ENOSYS"
            assert odd.read("/local/domain/1/name") == b"guest-1"
            # non-UTF-8 path bytes: EINVAL, no crash
            assert odd.error(wire.XS_READ, raw=b"/\xff\xfe\0") == "EINVAL"
            assert odd.error(wire.XS_WATCH, raw=b"\xff\0tok\0") == "EINVAL"

        # a client that sends half a header and leaves
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sim.xenstored)
        s.sendall(b"\x02\x00\x00")
        s.close()

        assert good.read("/local/domain/1/name") == b"guest-1"
        sim.ctl.shutdown(2, "poweroff")
        assert good.sync() == [(REL, "rel")]
        assert sim.ctl.info()["connections"] >= 1


def test_many_watchers_each_get_one_event(sim):
    conns = []
    try:
        for i in range(200):
            c = XsClient(sim.xenstored)
            c.watch(REL, f"w{i}")
            conns.append(c)
        for i, c in enumerate(conns):
            assert c.sync() == [(REL, f"w{i}")]
        reply = sim.ctl.shutdown(1, "poweroff")
        assert reply["events"] == 200
        for i, c in enumerate(conns):
            assert c.event(5) == (REL, f"w{i}")
    finally:
        for c in conns:
            c.close()


def test_wire_toolstack_drives_a_xenstored_over_its_socket(sim, xs):
    """WireToolstack sends libxl's requests to an external xenstored (here: the sim's)."""
    from mux.sim.host import Domain
    from mux.sim.toolstack import WireToolstack

    xs.watch(REL, "rel")
    xs.watch(INTRO, "intro")
    xs.sync()
    tool = WireToolstack(sim.xenstored)
    try:
        [row] = [d for d in sim.ctl.list() if d["domid"] == 4]
        dom = Domain(4, bytes.fromhex(row["uuid"].replace("-", "")), "renamed", 0, 0)
        tool.write_domain(dom)
        assert xs.read("/local/domain/4/name") == b"renamed"
        assert xs.ok(wire.XS_GET_PERMS, f"/vm/{row['uuid']}") == b"n0\0r4\0"
        tool.release(4)
        assert xs.sync() == [(REL, "rel")]
        assert xs.ok(wire.XS_IS_DOMAIN_INTRODUCED, "4") == b"F\0"
        tool.introduce(4)
        assert xs.sync() == [(INTRO, "intro")]
        tool.resume(4)
        tool.remove_domain(4, row["uuid"])
        assert xs.error(wire.XS_READ, "/local/domain/4/name") == "ENOENT"
        with pytest.raises(wire.XenstoreError) as err:
            tool.release(99)
        assert err.value.name == "ENOENT"
    finally:
        tool.close()
