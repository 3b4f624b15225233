"""Exactly one death per incarnation, whatever breaks: xenstored, the daemon, a slow reader."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter

from daemonhelpers import brief, start_daemon, take, until
from simhelpers import sim_command

from mux.protocol import PROTOCOL_VERSION


def _deaths(events: list[dict]) -> Counter:
    return Counter((e["domid"], e["uuid"]) for e in events if e["event"] == "death")


def test_xenstored_restart_is_followed_by_a_rescan(sim, daemon_factory, procs):
    d = daemon_factory(sim, "--full-scan", "0", "--shutdown-poll", "0.05")
    with d.subscribe(None) as sub:
        restart = procs.start(
            [*sim_command(), "sim-ctl", "--dir", str(sim.dir), "restart-xenstored", "--down", "1.0"]
        )
        until(lambda: not d.stats()["xenstore_connected"], timeout=10)
        # While xenstored is away nothing fires: only the rescan after reconnecting sees these.
        sim.ctl.shutdown(2, "crash")
        sim.ctl.destroy(2)
        sim.ctl.suspend(3)
        assert restart.wait(20) == 0
        events = take(sub, 3, timeout=20)
        until(lambda: d.stats()["xenstore_connected"], timeout=10)
        # The watches are back: a later change fires and is seen as usual.
        sim.ctl.destroy(5)
        events += take(sub, 2)
    assert sorted(brief(events[:3])) == [
        ("death", 2, None),
        ("released", 2, None),
        ("shutdown", 3, "suspend"),
    ]
    assert brief(events[3:]) == [("death", 5, None), ("released", 5, None)]
    stats = d.stats()
    assert stats["xenstore_reconnects"] >= 1 and stats["scans"]["reconnect"] >= 1
    assert max(_deaths(events).values()) == 1


def test_daemon_restart_reports_missed_deaths_once(sim, daemon_factory, tmp_path):
    """... when the daemon that came back cannot replay them: a gap (a new history). With
    the journal they come as late events instead (tests/daemon/test_client_journal.py)."""
    d = daemon_factory(sim)
    with d.subscribe([2, 3, 4]) as sub:
        first_instance = sub.hello["instance"]
        uuids = {r["domid"]: r["uuid"] for r in sub.snapshot}
        sim.ctl.shutdown(4, "poweroff")
        assert brief(take(sub, 1)) == [("shutdown", 4, "poweroff")]
        d.stop()
        sim.ctl.destroy(2)  # dies while the daemon is away
        sim.ctl.destroy(4)
        sim.ctl.create(domid=2)  # and the domid is reused by a new incarnation
        fresh = ("--state-dir", str(tmp_path / "fresh-state")) if PROTOCOL_VERSION >= 2 else ()
        d2 = daemon_factory(sim, *fresh, sock=d.sock)
        events = take(sub, 5, timeout=30)
        assert sub.hello["instance"] != first_instance
        sim.ctl.destroy(3)
        events += take(sub, 2)
    missed = [e for e in events if e.get("missed")]
    assert {(e["event"], e["domid"]) for e in missed} == {
        ("death", 2),
        ("released", 2),
        ("new", 2),
        ("death", 4),
        ("released", 4),
    }
    deaths = [e for e in events if e["event"] == "death"]
    assert sorted((e["domid"], e["uuid"]) for e in deaths) == sorted(
        [(2, uuids[2]), (3, uuids[3]), (4, uuids[4])]
    )
    new2 = next(e for e in events if e["event"] == "new")
    assert new2["uuid"] != uuids[2]
    d2.stop()


def test_wait_returns_21_when_the_death_happened_while_the_daemon_was_away(
    sim, daemon_factory, procs, tmp_path
):
    """... and the daemon that came back cannot replay it: a gap (a new history)."""
    d = daemon_factory(sim)
    waiter = procs.start([*sim_command(), "wait", "6", "--socket", d.sock])
    until(lambda: d.stats()["subscribers"] == 1)
    d.stop()
    sim.ctl.destroy(6)
    time.sleep(0.3)
    assert waiter.poll() is None, "wait gave up while the daemon was away"
    # A daemon with a journal (protocol 2) would replay the death (wait then exits 20, as
    # tests/e2e/test_commands_journal.py checks): on a fresh state directory it starts a
    # new history, and the death falls in a gap.
    fresh = ("--state-dir", str(tmp_path / "fresh-state")) if PROTOCOL_VERSION >= 2 else ()
    daemon_factory(sim, *fresh, sock=d.sock)
    assert waiter.wait(30) == 21
    out = json.loads(waiter.stdout.read())
    assert out["event"] == "death" and out["missed"] is True


def _raw(path: str, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(path)
    s.settimeout(30)
    return s


def _read_all(s: socket.socket) -> list[dict]:
    data = b""
    while chunk := s.recv(1 << 20):
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


class _Reader(threading.Thread):
    """Reads a subscription as fast as events come, in the background."""

    def __init__(self, sub, want: int, timeout: float = 90.0) -> None:
        super().__init__(daemon=True)
        self.sub, self.want, self.timeout = sub, want, timeout
        self.events: list[dict] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while len(self.events) < self.want and time.monotonic() < deadline:
            ev = self.sub.next_event(0.5)
            if ev is not None:
                self.events.append(ev)


def test_slow_subscriber_is_cut_off_and_others_are_not_slowed(sim_factory, daemon_factory):
    host = sim_factory(domains=1000)
    # A burst of 2,000 events (~400 KB) must not cut off a reader that keeps up; a reader
    # that stops is cut off once 1 MiB waits for it.
    d = daemon_factory(host, "--high-water", str(1 << 20), "--full-scan", "0")
    slow = _raw(d.sock, rcvbuf=4096)
    slow.sendall(b'{"op": "subscribe", "id": 1, "domids": "*"}\n')
    with d.subscribe(None) as fast, d.subscribe(None) as resyncing:
        until(lambda: d.stats()["subscribers"] == 3)
        reader = _Reader(fast, 12000)
        reader.start()
        host.ctl.shutdown("all", "poweroff")
        host.ctl.destroy("all")
        for round_ in range(3):
            host.ctl.create(count=1000)
            # A domain created and destroyed between two scans is never seen at all: let
            # the daemon see the new ones first, as a toolstack that boots them would.
            until(lambda r=round_: len(reader.events) >= 4000 + 3000 * r, timeout=60)
            host.ctl.destroy("all")
        reader.join(90)
        fast_events = reader.events
        assert len(fast_events) == 12000
        assert not any(e.get("missed") for e in fast_events), "the fast reader was cut off"
        until(lambda: d.stats()["overflows"] >= 2, timeout=30)
        frames = _read_all(slow)  # the daemon closed it: this ends
        assert frames[-1]["event"] == "overflow" and isinstance(frames[-1]["seq"], int)
        # N is the last seq it was due: that of the frame that went over the mark.
        assert frames[-2]["event"] != "overflow" and frames[-2]["seq"] == frames[-1]["seq"]
        assert len(frames) < 12000
        # `resyncing` did not read during the storm either: the library reconnects after
        # its overflow with its cursor and the journal replays what it did not read, so it
        # sees every incarnation the fast reader saw, each death once, none made up.
        known = {(r["domid"], r["uuid"]) for r in resyncing.snapshot if r["domid"] != 0}
        got = []
        while (ev := resyncing.next_event(2.0)) is not None:
            got.append(ev)
            if ev["event"] == "new":
                known.add((ev["domid"], ev["uuid"]))
    assert len(_deaths(fast_events)) == 4000 and max(_deaths(fast_events).values()) == 1
    deaths = _deaths(got)
    assert set(deaths) == known and max(deaths.values()) == 1
    assert set(deaths) == set(_deaths(fast_events)) and len(known) == 4000
    assert not any(e.get("missed") for e in got)
    slow.close()


def test_snapshot_and_stream_agree_under_churn(sim_factory, daemon_factory):
    """Subscribers joining at random moments, replaying their stream over their snapshot,
    all end with the daemon's final table: no gap and no duplicate."""
    host = sim_factory(domains=200)
    d = daemon_factory(host, "--shutdown-poll", "0.05")
    churn = threading.Thread(target=lambda: host.ctl.__class__(str(host.dir)).churn(3, rate=150))
    churn.start()
    subs = []
    for _ in range(5):
        subs.append(d.subscribe(None))
        time.sleep(0.4)
    churn.join(30)
    with d.client() as c:
        c.rescan()
        time.sleep(0.5)
        c.rescan()
        final = {r["domid"]: (r["uuid"], r["state"]) for r in c.list()}
    for sub in subs:
        model = {r["domid"]: (r["uuid"], r["state"]) for r in sub.snapshot}
        last_seq = sub.tracker.seq
        while (ev := sub.next_event(0.5)) is not None:
            assert ev["seq"] > last_seq, "an event at or below the snapshot's seq, or repeated"
            last_seq = ev["seq"]
            domid, kind = ev["domid"], ev["event"]
            if kind == "new":
                assert domid not in model or model[domid][1] == "dead"
                model[domid] = (ev["uuid"], "running")
            elif kind == "shutdown":
                model[domid] = (ev["uuid"], "shutdown")
            elif kind == "resumed":
                model[domid] = (ev["uuid"], "running")
            elif kind == "death":
                assert model[domid][1] != "dead", "a second death"
                model[domid] = (ev["uuid"], "dead")
            elif kind == "released":
                del model[domid]
        sub.close()
        assert model == final


def test_many_subscribers_in_one_process_only_the_interested_one_hears(sim_factory, daemon_factory):
    import asyncio

    host = sim_factory(domains=1000)
    d = daemon_factory(host)

    async def run() -> dict[int, list]:
        conns = {}
        for domid in range(1, 1001):
            r, w = await asyncio.open_unix_connection(d.sock)
            w.write(b'{"op": "subscribe", "id": 1, "domids": [%d]}\n' % domid)
            conns[domid] = (r, w)
        for r, _ in conns.values():
            reply = json.loads(await r.readline())
            assert reply["ok"] and len(reply["snapshot"]) == 1
        await asyncio.to_thread(host.ctl.shutdown, 500, "crash")
        got = {}
        for domid, (r, _) in conns.items():
            try:
                got[domid] = [
                    json.loads(await asyncio.wait_for(r.readline(), 0.01 if domid != 500 else 10))
                ]
            except TimeoutError:
                pass
        for _, w in conns.values():
            w.close()
        return got

    got = asyncio.run(run())
    assert list(got) == [500]
    assert brief(got[500]) == [("shutdown", 500, "crash")]
    assert d.stats()["subscribers"] >= 0


def test_second_daemon_on_the_same_host_is_independent(sim, daemon_factory):
    a = daemon_factory(sim)
    b = start_daemon(sim, "--state-dir", str(sim.dir / "state-b"), sock=str(sim.dir / "y.sock"))
    try:
        with a.subscribe([7]) as sa, b.subscribe([7]) as sb:
            sim.ctl.shutdown(7, "crash")
            assert brief(take(sa, 1)) == brief(take(sb, 1)) == [("shutdown", 7, "crash")]
    finally:
        b.stop()


def test_async_subscription_reports_a_death_during_a_daemon_restart_late(sim, daemon_factory):
    import asyncio

    from mux.client import AsyncSubscription

    d = daemon_factory(sim)

    async def run() -> list[dict]:
        async with AsyncSubscription([3, 4], socket_path=d.sock, retry_timeout=30) as sub:
            assert [r["domid"] for r in sub.snapshot] == [3, 4]
            await asyncio.to_thread(sim.ctl.shutdown, 4, "crash")
            got = [await sub.next_event(20)]
            await asyncio.to_thread(d.stop)
            await asyncio.to_thread(sim.ctl.destroy, 3)
            await asyncio.to_thread(daemon_factory, sim, sock=d.sock)
            got += [await sub.next_event(30), await sub.next_event(30)]
            await asyncio.to_thread(sim.ctl.destroy, 4)
            got += [await sub.next_event(20), await sub.next_event(20)]
            assert await sub.next_event(0.3) is None
            return got

    got = asyncio.run(run())
    # The daemon that came back found the death in its persisted table: a late event,
    # replayed by cursor, not one the library had to make up.
    assert [(e["event"], e["domid"], e.get("reason"), bool(e.get("late"))) for e in got] == [
        ("shutdown", 4, "crash", False),
        ("death", 3, None, True),
        ("released", 3, None, True),
        ("death", 4, "crash", False),
        ("released", 4, None, False),
    ]
    assert not any(e.get("missed") for e in got)
