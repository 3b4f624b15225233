"""The change thread (mux/sim/hostpath.py): changes over DIR/changes.sock applied in C reach
the watchers in order with their replies, show in every Python view of the host, and neither
a stuck watcher nor a stopping sim hangs it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading

from mux.records import DOMINF_BLOCKED, DOMINF_RUNNING, SHUTDOWN_REBOOT, SHUTDOWN_SUSPEND
from mux.sim._simfast import HP_FLAGS, HP_NUMBERS, HP_OPS
from mux.sim.changes import FLAG_SILENT, FLAG_ZOMBIE, OPS, REPLY, ChangeClient
from mux.sim.paths import sim_paths
from mux.sim.runtime import Sim
from mux.sim.wireclient import XsClient
from mux.xenstore import wire

pytest_plugins = ("simhelpers",)  # the sim, sim422, sim_factory, procs fixtures


def _frames(sock: socket.socket, count: int) -> list[tuple[int, int, bytes]]:
    """`count` whole messages off a stream socket: (type, req_id, payload)."""
    buf = b""
    out = []
    while len(out) < count:
        chunk = sock.recv(65536)
        assert chunk, "xenstored closed the connection"
        buf += chunk
        while len(buf) >= wire.HEADER_SIZE:
            t, rid, _tx, ln = wire.HEADER.unpack_from(buf)
            if len(buf) < wire.HEADER_SIZE + ln:
                break
            out.append((t, rid, buf[wire.HEADER_SIZE : wire.HEADER_SIZE + ln]))
            buf = buf[wire.HEADER_SIZE + ln :]
    return out


def test_events_from_the_thread_and_replies_from_python_leave_whole_and_in_order(sim_factory):
    sim = sim_factory(domains=60)
    changes = ChangeClient(sim_paths(sim.dir).changes)
    with XsClient(sim.xenstored) as xs:
        xs.watch(wire.SPECIAL_RELEASE, "rel")
        xs.sync()
        sock = xs.sock
        requests = 400

        def shut_all() -> None:
            for domid in range(1, 61):
                changes.change("shutdown", domid)

        driver = threading.Thread(target=shut_all)
        driver.start()
        for rid in range(1, requests + 1):  # replies from the loop while the thread fires
            sock.sendall(wire.encode(wire.XS_READ, rid, 0, b"/local/domain/1/name\0"))
        driver.join()
        frames = _frames(sock, requests + 60)
    changes.close()
    replies = [rid for t, rid, _ in frames if t == wire.XS_READ]
    events = [wire.decode_watch_event(p) for t, _, p in frames if t == wire.XS_WATCH_EVENT]
    assert replies == list(range(1, requests + 1))
    assert all(p == b"guest-1" for t, _, p in frames if t == wire.XS_READ)
    assert events == [(wire.SPECIAL_RELEASE, "rel")] * 60


def test_python_views_see_the_changes_the_thread_made(sim):
    changes = ChangeClient(sim_paths(sim.dir).changes)
    with XsClient(sim.xenstored) as xs:
        xs.watch(wire.SPECIAL_RELEASE, "rel")
        xs.sync()
        before = sim.ctl.info()["counters"]
        fired = changes.change("shutdown", 2, SHUTDOWN_REBOOT)
        assert (fired.release, fired.events) == (1, 1)
        assert changes.change("destroy", 4, flags=FLAG_ZOMBIE).release == 1
        # xenstored's own view: domain 4 left its introduced list at dying
        assert xs.ok(wire.XS_IS_DOMAIN_INTRODUCED, "4") == b"F\0"
        assert xs.ok(wire.XS_IS_DOMAIN_INTRODUCED, "2") == b"T\0"
    rows = {r["domid"]: r for r in sim.ctl.list()}
    assert rows[2]["state"] == "shutdown" and rows[2]["reason"] == "reboot"
    assert rows[2]["latched"]
    assert rows[4]["state"] == "dying" and rows[4]["zombie"]
    after = sim.ctl.info()["counters"]
    assert after["release_firings"] - before["release_firings"] == 2
    assert after["events"] - before["events"] == 2
    assert after["virqs"] - before["virqs"] == 2
    listed = sim.sim_ctl("list")
    assert listed.returncode == 0 and "reboot" in listed.stdout
    with open(sim_paths(sim.dir).truth) as f:
        steps = [json.loads(line) for line in f]
    tail = [(s["step"], s["domid"], s.get("reason")) for s in steps[-2:]]
    assert tail == [("shutdown", 2, "reboot"), ("dying", 4, None)]
    assert steps[-1]["mono"] > steps[-2]["mono"] and isinstance(steps[-1]["wall"], float)
    # Python's own path goes on from the thread's state: the rest of destroy, then resume
    assert changes.change("destroy", 4).events == 0
    assert changes.change("resume", 2).events == 0
    assert {r["domid"]: r for r in sim.ctl.list()}[2]["state"] == "running"
    changes.close()


def test_a_watcher_that_stops_reading_holds_up_neither_the_thread_nor_other_watchers(
    sim_factory,
):
    sim = sim_factory(domains=200)
    changes = ChangeClient(sim_paths(sim.dir).changes, timeout=10.0)
    token = "t" * 3000  # about 3 KB an event: the stuck socket fills within the run
    with XsClient(sim.xenstored) as stuck, XsClient(sim.xenstored) as live:
        stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.watch(wire.SPECIAL_RELEASE, token)
        stuck.sync()
        live.watch(wire.SPECIAL_RELEASE, "live")
        live.sync()
        got = []
        for domid in range(1, 201):
            assert changes.change("shutdown", domid).events == 2
            got.append(live.event(5.0))
        assert got == [(wire.SPECIAL_RELEASE, "live")] * 200
        # what the stuck watcher's socket did not take was queued, and comes in order
        assert stuck.drain_events(quiet=1.0) == [(wire.SPECIAL_RELEASE, token)] * 200
        assert stuck.ok(wire.XS_READ, "/local/domain/7/name") == b"guest-7"
    changes.close()


def test_the_thread_stops_with_the_sim_and_a_new_sim_starts_one(tmp_path):
    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    async def run(directory: str) -> None:
        sim = Sim(directory, 3, seed=5)
        sim.build()
        await sim.serve()
        loop = asyncio.get_running_loop()
        changes = await loop.run_in_executor(None, ChangeClient, sim.paths.changes)
        fired = await loop.run_in_executor(None, changes.change, "shutdown", 1)
        assert fired.release == 1
        assert sim.host.get(1).shutdown  # Python drained the thread's journal
        await sim.close()
        assert not sim.path.engine.running
        assert await loop.run_in_executor(None, changes._sock.recv, 64) == b""  # closed
        changes.close()

    base = threads()
    for n in range(2):
        directory = tmp_path / f"s{n}"
        directory.mkdir()
        asyncio.run(run(str(directory)))
    assert threads() <= base + 1  # at most the executor's worker; no change thread left


def _lifecycle_events(xs: XsClient, domid: int, step) -> list[tuple[str, str]]:
    """What the watcher sees of shutdown, dying and gone of `domid`, with the domid as D."""
    seen = []
    for op in ("shutdown", "dying", "gone"):
        step(op, domid)
        seen += [(path.replace(str(domid), "D"), token) for path, token in xs.sync()]
    return seen


def test_the_thread_fires_as_the_python_path_does_with_4_22s_depth(sim422):
    changes = ChangeClient(sim_paths(sim422.dir).changes)

    def over_changes(op: str, domid: int) -> None:
        if op == "shutdown":
            changes.change("shutdown", domid)
        else:
            changes.change("destroy", domid, flags=FLAG_ZOMBIE if op == "dying" else 0)

    def over_control(op: str, domid: int) -> None:
        if op == "shutdown":
            sim422.ctl.shutdown(domid)
        else:
            sim422.ctl.destroy(domid, zombie=op == "dying")

    with XsClient(sim422.xenstored) as xs:
        xs.watch(wire.SPECIAL_RELEASE, "all")
        xs.watch(wire.SPECIAL_RELEASE, "deep", "1")
        for domid in (2, 3):
            xs.watch(f"{wire.SPECIAL_RELEASE}/{domid}", "one")
        xs.sync()
        threaded = _lifecycle_events(xs, 2, over_changes)
        looped = _lifecycle_events(xs, 3, over_control)
    changes.close()
    assert threaded == looped
    assert ("@releaseDomain/D", "one") in threaded and ("@releaseDomain/D", "deep") in threaded


def test_a_destroy_whose_nodes_are_watched_fires_their_removal_before_its_reply(sim):
    changes = ChangeClient(sim_paths(sim.dir).changes)
    with XsClient(sim.xenstored) as xs:
        xs.watch("/local/domain/5", "node")
        xs.sync()
        virqs = sim.ctl.info()["counters"]["virqs"]
        assert changes.change("suspend", 5, flags=FLAG_SILENT).events == 0  # no VIRQ
        assert sim.ctl.info()["counters"]["virqs"] == virqs
        fired = changes.change("destroy", 5)
        # @releaseDomain once (at dying: nobody watches it here), then the nodes' removal
        assert (fired.release, fired.events) == (1, 1)
        assert ("/local/domain/5", "node") in xs.sync()
        assert xs.error(wire.XS_READ, "/local/domain/5/name") == "ENOENT"
    changes.close()


def test_the_threads_numbers_are_the_change_paths_and_xens():
    assert HP_OPS == OPS
    assert HP_FLAGS == {"zombie": FLAG_ZOMBIE, "silent": FLAG_SILENT}
    assert HP_NUMBERS == {
        "SHUTDOWN_SUSPEND": SHUTDOWN_SUSPEND,
        "DOMINF_RUNNING": DOMINF_RUNNING,
        "DOMINF_BLOCKED": DOMINF_BLOCKED,
    }
    assert REPLY.size == 20  # the reply hostpath.h's xh_apply packs
