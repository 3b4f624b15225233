"""One connection's output and request loop, on a real socket pair and the daemon's event loop.

The daemon's ClientConnection is driven directly (its fan-out side by `send_frame`, its
subscribe side by `start_replay` and `mode_latest`, as the subscribe handler calls them) with
a peer socket whose receive buffer is small, so that "the peer stops reading" is real
back-pressure. What the peer finally reads is checked against what was sent.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid as uuidlib

import pytest
import uvloop

from mux._fast import Event
from mux.daemon import connection as connection_mod
from mux.daemon.admission import Clients, Limits
from mux.daemon.connection import ClientConnection, ConnectionContext
from mux.daemon.fanout import Fanout
from mux.daemon.stats import Stats
from mux.protocol import ABSENT, DEAD, DEATH, LATEST_STATE, RUNNING, SHUTDOWN

UUIDS = [str(uuidlib.UUID(int=i + 1)) for i in range(4096)]


def run(coro):
    return uvloop.run(coro)


class Peer:
    """The client end: a non-blocking socket read on the same loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    async def read_lines(self, count: int | None = None, timeout: float = 20.0) -> list[dict]:
        """`count` lines (None: until EOF)."""
        loop = asyncio.get_running_loop()
        out: list[dict] = []

        async def go() -> None:
            while count is None or len(out) < count:
                while b"\n" in self.buf and (count is None or len(out) < count):
                    line, self.buf = self.buf.split(b"\n", 1)
                    out.append(json.loads(line))
                if count is not None and len(out) >= count:
                    return
                chunk = await loop.sock_recv(self.sock, 1 << 16)
                if not chunk:
                    return
                self.buf += chunk

        await asyncio.wait_for(go(), timeout)
        return out


async def connected(
    high_water: int = 64 * 1024, handle_line=None, rcvbuf: int = 4096
) -> tuple[ClientConnection, Peer, ConnectionContext]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    b.setblocking(False)

    async def no_requests(conn, line):  # pragma: no cover - these tests send none
        raise AssertionError(line)

    ctx = ConnectionContext(
        stats=Stats(),
        fanout=Fanout(),
        clients=Clients(Limits()),
        handle_line=handle_line or no_requests,
        high_water=high_water,
        allow_rescan_gid=None,
    )
    conn = ClientConnection(ctx)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, a)
    return conn, Peer(b), ctx


def event(seq: int, kind: str, domid: int, gen: int = 0, reason: str | None = None) -> Event:
    return Event(seq, kind, domid, UUIDS[domid + 64 * gen], reason, 1764090000.0 + seq, None)


def replay_chunks(first: int, last: int, per_chunk: int, pulled: list[int]):
    """Journal-like chunks: whole lines, seq first..last; `pulled` records each pull."""
    seq = first
    while seq <= last:
        lines = [
            event(s, SHUTDOWN, 1 + s % 50, reason="crash").frame()
            for s in range(seq, min(seq + per_chunk, last + 1))
        ]
        pulled.append(seq)
        seq += per_chunk
        yield b"".join(lines)


# -- replay ------------------------------------------------------------------------------------


def test_replay_goes_first_paced_by_the_socket_and_outside_the_mark():
    async def main():
        conn, peer, ctx = await connected(high_water=32 * 1024)
        pulled: list[int] = []
        conn.start_replay(replay_chunks(1, 20000, 100, pulled))  # ~3 MB, 200 chunks
        await asyncio.sleep(0.2)
        # The peer reads nothing: only what its socket and the transport's buffer hold was
        # pulled from the journal, not the 200 chunks.
        assert 0 < len(pulled) <= 8, len(pulled)
        live = [event(20000 + i, DEATH, 7, reason="crash") for i in range(1, 101)]
        for ev in live:
            conn.send_frame(ev.frame(), ev)
        held = conn.held.nbytes
        assert held == sum(len(ev.frame()) for ev in live)  # the replay's bytes do not count
        assert ctx.stats.overflows == 0
        got = await peer.read_lines(20100)
        assert [f["seq"] for f in got] == list(range(1, 20101))  # no gap, no repeat, in order
        assert len(pulled) == 200
        await asyncio.sleep(0.05)
        assert conn.held is None  # caught up: frames go straight to the socket again
        ev = event(20101, "new", 9)
        conn.send_frame(ev.frame(), ev)
        assert (await peer.read_lines(1))[0]["seq"] == 20101

    run(main())


def test_frames_held_before_a_replay_stay_before_it():
    async def main():
        conn, peer, _ctx = await connected(high_water=1 << 20)
        early = [event(i, SHUTDOWN, 3, reason="reboot") for i in range(1, 2001)]  # ~300 KB
        for ev in early:
            conn.send_frame(ev.frame(), ev)
        assert conn.held  # the peer reads nothing: they wait
        conn.write_obj({"id": 5, "ok": True, "seq": 2000, "since": 0})
        pulled: list[int] = []
        conn.start_replay(replay_chunks(2001, 2100, 25, pulled))
        later = event(2101, DEATH, 3)
        conn.send_frame(later.frame(), later)
        got = await peer.read_lines(2000 + 1 + 100 + 1)
        assert [f["seq"] for f in got[:2000]] == list(range(1, 2001))
        assert got[2000] == {"id": 5, "ok": True, "seq": 2000, "since": 0}
        assert [f["seq"] for f in got[2001:]] == list(range(2001, 2102))

    run(main())


def test_live_frames_past_the_mark_during_a_replay_overflow_at_what_was_sent(monkeypatch):
    monkeypatch.setattr(connection_mod, "OVERFLOW_GRACE", 0.3)

    async def main():
        conn, peer, ctx = await connected(high_water=16 * 1024)
        pulled: list[int] = []
        conn.start_replay(replay_chunks(1, 50000, 100, pulled))
        await asyncio.sleep(0.1)
        n_pulled = len(pulled)
        for i in range(1, 400):  # ~60 KB of live frames: past the mark
            ev = event(50000 + i, SHUTDOWN, 2, reason="crash")
            conn.send_frame(ev.frame(), ev)
        assert ctx.stats.overflows == 1
        assert conn.unsent() <= connection_mod.TRANSPORT_HIGH + 16 * 1024  # dropped at once
        frames = await peer.read_lines(None)
        assert frames[-1]["event"] == "overflow"
        # N is the last event the peer was sent: the end of the last replay chunk written.
        assert frames[-2]["seq"] == frames[-1]["seq"] < 50000
        assert [f["seq"] for f in frames[:-1]] == list(range(1, frames[-1]["seq"] + 1))
        assert len(pulled) == n_pulled  # the rest of the replay was never read

    run(main())


# -- overflow ------------------------------------------------------------------------------------


def test_an_overflowed_subscriber_that_never_reads_is_aborted(monkeypatch):
    monkeypatch.setattr(connection_mod, "OVERFLOW_GRACE", 0.3)

    async def main():
        conn, peer, ctx = await connected(high_water=32 * 1024)
        ctx.fanout.subscribe(conn, None, 0xFF)
        seq = 0
        while not conn.closing:
            seq += 1
            ctx.fanout.publish([event(seq, SHUTDOWN, seq % 60, reason="crash")])
        assert ctx.stats.overflows == 1 and ctx.fanout.subscriber_count == 0
        assert conn.held.nbytes == 0  # what was held is dropped at once, not at the abort
        await asyncio.sleep(1.0)
        assert conn.lost and ctx.stats.clients_aborted == 1
        got = await peer.read_lines(None)  # what its socket held, then the reset's EOF
        assert got and all(f["event"] == SHUTDOWN for f in got)

    run(main())


# -- latest mode -------------------------------------------------------------------------------


def _apply(model: dict, frame: dict) -> None:
    """A level-triggered consumer's view: domid -> (uuid, state, reason)."""
    kind, domid = frame["event"], frame["domid"]
    if kind == LATEST_STATE:
        model[domid] = (frame["uuid"], frame["state"], frame.get("reason"))
    else:
        state = {"new": RUNNING, "shutdown": SHUTDOWN, "resumed": RUNNING, "death": DEAD}
        state["released"] = ABSENT
        reason = frame.get("reason") if kind == SHUTDOWN else None
        model[domid] = (frame["uuid"], state[kind], reason)


def churn(domids: int, rounds: int) -> list[Event]:
    """Each domain: shutdown/resumed pairs, then some die, are released and come back."""
    events: list[Event] = []
    gen = dict.fromkeys(range(1, domids + 1), 0)
    for r in range(rounds):
        for d in gen:
            seq = len(events) + 1
            if r % 5 == 4 and d % 3 == 0:
                events.append(event(seq, DEATH, d, gen[d], reason="crash"))
                events.append(event(seq + 1, "released", d, gen[d]))
                gen[d] += 1
                events.append(event(seq + 2, "new", d, gen[d]))
            elif r % 2:
                events.append(event(seq, "resumed", d, gen[d]))
            else:
                events.append(event(seq, SHUTDOWN, d, gen[d], reason="suspend"))
    return events


def test_latest_mode_is_never_cut_off_and_keeps_each_death():
    async def main():
        conn, peer, ctx = await connected(high_water=16 * 1024)
        conn.mode_latest = True
        ctx.fanout.subscribe(conn, None, 0xFF)
        events = churn(domids=40, rounds=60)  # ~3,000 events, ~400 KB: 25 marks
        ctx.fanout.publish(events)
        assert ctx.stats.overflows == 0 and not conn.closing
        assert conn.held.coalesced
        # Held: one frame per domid plus the deaths, whatever the number of events.
        deaths = [(e.domid, e.uuid) for e in events if e.kind == DEATH]
        longest = max(len(e.frame()) for e in events)
        assert conn.held.nbytes <= (40 + len(deaths)) * longest < 16 * 1024 * 25 / 10
        frames: list[dict] = []
        while not frames or frames[-1]["seq"] != events[-1].seq:  # the newest comes last
            frames += await peer.read_lines(1)
        seqs = [f["seq"] for f in frames]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        # What had reached the socket went as it was; the rest: a frame per domid + deaths.
        first_state = [f["event"] for f in frames].index(LATEST_STATE)
        assert len(frames) - first_state <= 40 + len(deaths)
        assert len(frames) < len(events) / 3
        assert ctx.stats.latest_folded > len(events) / 2
        # Every death, once, in order, and the consumer ends with the true final state.
        assert [(f["domid"], f["uuid"]) for f in frames if f["event"] == DEATH] == deaths
        want: dict = {}
        for e in events:
            _apply(want, json.loads(e.frame()))
        have: dict = {}
        for f in frames:
            _apply(have, f)
        assert have == want
        # Nothing after a death says that incarnation lives: only its release may follow.
        for i, f in enumerate(frames):
            if f["event"] == DEATH:
                for g in frames[i + 1 :]:
                    if (g["domid"], g["uuid"]) == (f["domid"], f["uuid"]):
                        assert g["event"] == "released" or g.get("state") == ABSENT, g
        # Caught up: plain event frames again.
        ev = event(events[-1].seq + 1, SHUTDOWN, 1, 50, reason="poweroff")
        conn.send_frame(ev.frame(), ev)
        assert (await peer.read_lines(1))[0]["event"] == SHUTDOWN

    run(main())


def test_latest_mode_still_has_a_bound():
    async def main():
        conn, _peer, ctx = await connected(high_water=8 * 1024)
        conn.mode_latest = True
        ctx.fanout.subscribe(conn, None, 0xFF)
        seq = 0
        while not conn.closing and seq < 100000:
            seq += 1
            ctx.fanout.publish([event(seq, DEATH, seq % 30, reason="crash")])
        assert conn.closing and ctx.stats.overflows == 1
        # Cut off once 8 marks of deaths were held, beyond the transport's buffer and the
        # sockets' (64 KiB is more than both socket buffers hold).
        frame = len(event(1, DEATH, 1, reason="crash").frame())
        assert seq * frame <= 8 * 8 * 1024 + connection_mod.TRANSPORT_HIGH + 64 * 1024 + frame

    run(main())


# -- requests ----------------------------------------------------------------------------------


def test_a_peer_that_does_not_read_its_replies_is_not_read_either():
    handled: list[int] = []
    reply_size = 20000

    async def handle_line(conn, line):
        req = json.loads(line)
        handled.append(req["id"])
        conn.write_obj({"id": req["id"], "ok": True, "pad": "x" * reply_size})  # a `list`

    async def main():
        conn, peer, ctx = await connected(handle_line=handle_line, rcvbuf=1 << 16)
        pad = "y" * 300
        requests = b"".join(
            b'{"op": "list", "id": %d, "pad": "%s"}\n' % (i, pad.encode()) for i in range(4000)
        )  # 1.3 MB
        loop = asyncio.get_running_loop()
        sender = loop.create_task(loop.sock_sendall(peer.sock, requests))
        await asyncio.sleep(0.5)
        # Replies stop once the transport holds its limit (the sockets hold a few more);
        # requests stop being read.
        sockets = 4 * (1 << 16) + 2 * 4096  # the kernel doubles what is set
        assert len(handled) <= (connection_mod.TRANSPORT_HIGH + sockets) // reply_size + 2
        assert conn.unsent() <= connection_mod.TRANSPORT_HIGH + reply_size + 100
        assert not conn.reading and ctx.stats.reads_paused >= 1
        # What was read and not answered: at most the limit plus one read of the loop's.
        assert conn.pending_in <= connection_mod.MAX_PENDING_INPUT + 256 * 1024
        assert not sender.done()  # the rest waits in the peer's own socket
        got = await peer.read_lines(4000, timeout=120)
        assert [r["id"] for r in got] == list(range(4000)) == handled
        await sender

    run(main())


def test_requests_of_two_clients_take_turns():
    order: list[str] = []

    def handler(name):
        async def handle_line(conn, line):
            order.append(name)
            conn.write_obj({"id": json.loads(line)["id"], "ok": True})

        return handle_line

    async def main():
        _conn_a, peer_a, _ = await connected(handle_line=handler("a"), rcvbuf=1 << 20)
        _conn_b, peer_b, _ = await connected(handle_line=handler("b"), rcvbuf=1 << 20)
        lines = b"".join(b'{"op": "ping", "id": %d}\n' % i for i in range(200))
        peer_a.sock.send(lines)
        peer_b.sock.send(lines)
        await peer_a.read_lines(200)
        await peer_b.read_lines(200)
        # Neither waited for the other's 200: they alternated.
        first_b = order.index("b")
        assert first_b < 10 and order[first_b:].count("a") > 150

    run(main())


@pytest.mark.parametrize("tail", [b"\n", b""])
def test_a_half_closed_peer_gets_every_reply_then_eof(tail):
    async def handle_line(conn, line):
        await asyncio.sleep(0.05)  # a rescan takes a while
        conn.write_obj({"id": json.loads(line)["id"], "ok": True})

    async def main():
        conn, peer, _ctx = await connected(handle_line=handle_line, rcvbuf=1 << 20)
        peer.sock.send(b'{"op": "rescan", "id": 1}\n{"op": "rescan", "id": 2}' + tail)
        peer.sock.shutdown(socket.SHUT_WR)
        got = await peer.read_lines(None)
        assert got == [{"id": 1, "ok": True}, {"id": 2, "ok": True}]
        await asyncio.sleep(0.05)
        assert conn.lost

    run(main())
