"""The daemon's own path per firing (issue 15, item 4): what one firing costs, stage by stage.

One firing at 1,000 domains with one interested subscriber, through the daemon's own parts
as `mux.daemon.service` wires them: the WATCH_EVENT frame arrives on a Unix socket (the
xenstore client decodes it), the watcher dispatches it to the scan loop, which scans 1,000
records (one batched copy, as the sim's seqlocked read) and diffs them (one domain shut
down or resumed), the journal appends the event into its mapped segment on disk, the
fan-out finds the one interested connection among 1,000 subscriptions, and that
connection (a `ClientConnection` on a socket) writes the frame to its peer.

Two measurements:

- **firing**: daemon CPU per firing (this process's CPU clock over many firings), with a
  separate process (`--peer`) sending each firing and reading each frame: `cold`, firings
  `--gap` ms apart (an isolated change: the machine runs other work in between), and
  `b2b`, the next firing as soon as the frame arrived. Under callgrind (`--callgrind`) the
  instructions per firing, which no load disturbs: runs of N1 and N2 firings, the
  difference.
- **stages**: each stage alone in a loop, as it runs inside a firing (`--stage NAME N`):
  CPU per iteration (best of rounds), or under callgrind instructions per iteration. What
  the stages do not cover (the event loop's wake-up, its epoll and recv, and the task
  hop where there is one) is the firing's total less their sum.

Run (from the repository, after `make build`):

    .venv/bin/python bench/bench_dpath.py                 # CPU: firing (cold, b2b) + stages
    .venv/bin/python bench/bench_dpath.py --callgrind     # instructions (valgrind, minutes)
    .venv/bin/python bench/bench_dpath.py --cold 60       # also each stage alone, cold
    .venv/bin/python -m pytest bench/bench_dpath.py       # the harness's self-check
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from bench_recording import (
    FIRING,
    N_DOMAINS,
    MemoryBackend,
    NullSubscriber,
    callgrind_instructions,
    host_records,
)

from mux._fast import DomainTable
from mux.daemon.admission import Clients, Limits
from mux.daemon.connection import ClientConnection, ConnectionContext
from mux.daemon.fanout import Fanout
from mux.daemon.journal import Journal
from mux.daemon.scanloop import ScanLoop
from mux.daemon.service import JournaledFanout
from mux.daemon.statedir import new_history_id
from mux.daemon.stats import Stats
from mux.daemon.watcher import Watcher
from mux.protocol import ALL_KINDS_MASK
from mux.xenstore import wire
from mux.xenstore.client import XenstoreProtocol

INTERESTED = N_DOMAINS - 1  # the domain that changes; its one subscriber is a connection
# The scan loop's burst window (None: its default). Back to back, each firing comes right
# after the last one's scan, so with a window it is held: 0 measures the path itself.
BURST_WINDOW = (
    float(os.environ["XENMUX_DPATH_WINDOW"]) if "XENMUX_DPATH_WINDOW" in os.environ else None
)


async def _no_line(conn, line) -> None:  # the connections here never send requests
    return None


class Path1000:
    """The daemon's parts for one firing at 1,000 domains, wired as service.py wires them."""

    def __init__(self, directory: str) -> None:
        self.buffers = [host_records(N_DOMAINS), host_records(N_DOMAINS, INTERESTED)]
        window = {}
        if BURST_WINDOW is not None and "burst_window" in inspect.signature(ScanLoop).parameters:
            window["burst_window"] = BURST_WINDOW
        self.i = 0
        self.backend = MemoryBackend(N_DOMAINS)
        self.backend.data = self.buffers[0]
        self.stats = Stats()
        self.fanout = Fanout()
        self.journal = Journal.create(directory, new_history_id(), 1 << 40)
        self.loop = ScanLoop(
            DomainTable(),
            self.backend,
            JournaledFanout(self.journal, self.fanout),
            self.stats,
            shutdown_poll=0,
            full_scan=0,
            **window,
        )
        self.loop.prime()
        for domid in range(N_DOMAINS - 1):  # the others' subscribers: never written to
            self.fanout.subscribe(NullSubscriber(-1), [domid], ALL_KINDS_MASK)
        kwargs = {}
        self.immediate = "firing_batch" in inspect.signature(Watcher).parameters
        if self.immediate:  # as service.py wires it since issue 15's item 4
            kwargs["firing_batch"] = self.loop
        self.watcher = Watcher(
            "bench",
            self.stats,
            request_full=self.loop.request_full,
            request_domid=self.loop.request_domid,
            **kwargs,
        )
        self.ctx = ConnectionContext(
            stats=self.stats,
            fanout=self.fanout,
            clients=Clients(Limits()),
            handle_line=_no_line,
            high_water=4 << 20,
            allow_rescan_gid=None,
        )
        self.scanned: asyncio.Event | None = None
        self.conn: ClientConnection | None = None

    def flip(self) -> None:
        """The next scan sees the interested domain's other state (shut down / resumed)."""
        self.i ^= 1
        self.backend.data = self.buffers[self.i]

    async def connect(self, xs_sock: socket.socket, sub_sock: socket.socket) -> None:
        """The xenstore connection and the subscriber's, over the given sockets."""
        loop = asyncio.get_running_loop()
        self.scanned = asyncio.Event()
        arm = self.loop._arm_poll

        def after_scan() -> None:  # the end of every scan (nothing to poll here)
            arm()
            self.flip()
            self.scanned.set()

        self.loop.start()  # its own first _arm_poll is not a scan's
        self.loop._arm_poll = after_scan
        self.flip()  # the first firing finds the change
        # The callbacks Watcher connects with (on_read_end since issue 15's item 4).
        callbacks = [self.watcher._on_watch]
        if self.immediate:
            callbacks += [None, self.watcher._on_read_end]
        await loop.create_unix_connection(
            lambda: XenstoreProtocol("bench", loop, *callbacks), sock=xs_sock
        )
        _t, self.conn = await loop.create_unix_connection(
            lambda: ClientConnection(self.ctx), sock=sub_sock
        )
        self.fanout.subscribe(self.conn, [INTERESTED], ALL_KINDS_MASK)

    async def close(self) -> None:
        await self.loop.stop()
        self.journal.close()


# -- the firing, from a peer process -----------------------------------------------------------


def _peer(xs_fd: int, sub_fd: int, n: int, gap: float) -> None:
    """`--peer`: n firings on xs_fd, each after the previous one's frame came on sub_fd."""
    xs = socket.socket(fileno=xs_fd)
    sub = socket.socket(fileno=sub_fd)
    for _ in range(n):
        if gap:
            time.sleep(gap)
        xs.sendall(FIRING)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sub.recv(65536)
            if not chunk:
                raise SystemExit("the daemon side closed the subscriber socket")
            buf += chunk


def firing(n: int, gap: float, warm: int = 20) -> tuple[float, float]:
    """Daemon CPU seconds per firing (this process, all threads), over n firings: (user,
    system)."""
    import uvloop

    directory = tempfile.mkdtemp(prefix="xenmux-dpath-")
    xs_ours, xs_peer = socket.socketpair()
    sub_ours, sub_peer = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--peer", str(xs_peer.fileno()), str(sub_peer.fileno()),
         str(n + warm), str(gap)],
        pass_fds=(xs_peer.fileno(), sub_peer.fileno()),
    )  # fmt: skip
    xs_peer.close()
    sub_peer.close()

    async def main() -> tuple[float, float]:
        path = Path1000(directory)
        await path.connect(xs_ours, sub_ours)
        t0 = u0 = 0.0
        for i in range(n + warm):
            if i == warm:
                t0, u0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
            await path.scanned.wait()
            path.scanned.clear()
        total = time.process_time() - t0
        user = resource.getrusage(resource.RUSAGE_SELF).ru_utime - u0
        await path.close()
        return user / n, (total - user) / n

    try:
        return uvloop.run(main())
    finally:
        proc.wait(timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


def firing_in_process(n: int) -> None:
    """`--firing N`, what callgrind counts: n firings sent by this thread (one send(2) each,
    the same before and after any change), each frame read by a `cat` on the subscriber's
    socket."""
    import uvloop

    directory = tempfile.mkdtemp(prefix="xenmux-dpath-")
    xs_ours, xs_peer = socket.socketpair()
    sub_ours, sub_peer = socket.socketpair()
    drain = subprocess.Popen(["cat"], stdin=sub_peer.fileno(), stdout=subprocess.DEVNULL)
    sub_peer.close()

    async def main() -> None:
        path = Path1000(directory)
        await path.connect(xs_ours, sub_ours)
        for _ in range(n):
            xs_peer.send(FIRING)
            await path.scanned.wait()
            path.scanned.clear()
        await path.close()
        path.conn.transport.close()
        await asyncio.sleep(0.01)

    try:
        uvloop.run(main())
    finally:
        drain.wait(timeout=60)
        xs_peer.close()
        shutil.rmtree(directory, ignore_errors=True)


# -- the stages, each alone --------------------------------------------------------------------


class _Sink:
    """A subscriber that takes the frame and writes nothing (the fan-out's stage alone)."""

    __slots__ = ("direct", "last_out", "wild_mask")

    def __init__(self) -> None:
        self.wild_mask = 0
        self.direct = None
        self.last_out = None

    def send_frame(self, frame: bytes, event) -> None:
        pass


class Stages:
    """Each stage of a firing in a loop of its own, with the state it meets in a firing."""

    NAMES = ("decode", "dispatch", "hop", "scan_diff", "encode", "journal", "fanout", "write")

    def __init__(self, directory: str) -> None:
        self.path = Path1000(directory)
        self.table = self.path.loop.table

    def _events(self, n: int) -> list:
        """n one-event batches as the scans make them (frames not yet encoded)."""
        out = []
        for _ in range(n):
            self.path.flip()
            out.append(self.table.diff(*self.path.backend.scan_all(), time.time()))
        return out

    async def run(self, name: str, n: int) -> float:
        """Seconds of this thread's CPU for n iterations of stage `name`."""
        loop = asyncio.get_running_loop()
        p = self.path
        if name == "decode":
            proto = XenstoreProtocol("bench", loop, lambda path, token: None)
            t0 = time.thread_time()
            for _ in range(n):
                proto.data_received(FIRING)
        elif name == "dispatch":
            on_watch, take = p.watcher._on_watch, p.loop._take_pending
            path, token = wire.decode_watch_event(FIRING[wire.HEADER_SIZE :])
            t0 = time.thread_time()
            for _ in range(n):
                on_watch(path, token)
                take()
                p.watcher._batching = False
            p.loop._wake.clear()
            p.loop._deferred = False
        elif name == "hop" and p.immediate:
            # From the request to the scan in the reading callback (end_firings: the checks
            # and the lock), the scan itself left out.
            p.loop._full = lambda trigger: []
            p.loop.start()
            begin, request, end = p.loop.begin_firings, p.loop.request_full, p.loop.end_firings
            t0 = time.thread_time()
            for _ in range(n):
                begin()
                request("watch", None, None)
                end()
            spent = time.thread_time() - t0
            await p.loop.stop()
            return spent
        elif name == "hop":
            # The scan loop's task woken by a request with nothing to scan: its wake-up and
            # scan_pending's lock, what a firing paid on top of the scan before item 4.
            done = asyncio.Event()
            scan_pending = p.loop.scan_pending

            async def scanned() -> None:
                await scan_pending()
                done.set()

            p.loop.scan_pending = scanned
            p.loop.start()
            await asyncio.sleep(0)
            t0 = time.thread_time()
            for _ in range(n):
                p.loop._wake.set()
                await done.wait()
                done.clear()
            spent = time.thread_time() - t0
            await p.loop.stop()
            return spent
        elif name == "scan_diff":
            flip, scan, diff = p.flip, p.backend.scan_all, self.table.diff
            t0 = time.thread_time()
            for _ in range(n):
                flip()
                diff(*scan(), time.time())
        elif name == "encode":
            batches = self._events(n)
            t0 = time.thread_time()
            for events in batches:
                events[0].frame()
        elif name == "journal":
            batches = self._events(n)
            for events in batches:
                events[0].frame()
            append = p.journal.append
            t0 = time.thread_time()
            for events in batches:
                append(events)
        elif name == "fanout":
            batches = self._events(n)
            for events in batches:
                events[0].frame()
            p.fanout.subscribe(_Sink(), [INTERESTED], ALL_KINDS_MASK)
            publish = p.fanout.publish
            t0 = time.thread_time()
            for events in batches:
                publish(events)
        elif name == "write":
            ours, theirs = socket.socketpair()
            drain = subprocess.Popen(["cat"], stdin=theirs.fileno(), stdout=subprocess.DEVNULL)
            theirs.close()
            try:
                transport, conn = await loop.create_unix_connection(
                    lambda: ClientConnection(p.ctx), sock=ours
                )
                frame = self._events(1)[0][0].frame()
                send = conn.send_frame
                t0 = time.thread_time()
                for _ in range(n):
                    send(frame, None)
                    if transport.get_write_buffer_size():
                        await asyncio.sleep(0.001)
                spent = time.thread_time() - t0
                transport.close()
                await asyncio.sleep(0.01)
            finally:
                drain.wait(timeout=60)
            return spent
        else:
            raise ValueError(f"unknown stage {name!r}; one of {', '.join(self.NAMES)}")
        return time.thread_time() - t0


def cold_stages(names, rounds: int, gap: float) -> dict[str, float]:
    """Each stage once, `gap` seconds after the last (the machine's other work in between,
    as for an isolated firing): the median CPU of `rounds` such runs, per stage. Against the
    hot figures this says where a cold firing's time goes: every stage, not one of them."""
    import statistics

    import uvloop

    directory = tempfile.mkdtemp(prefix="xenmux-dpath-")

    async def main() -> dict[str, float]:
        stages = Stages(directory)
        out = {}
        try:
            for name in names:
                spent = []
                for _ in range(rounds):
                    await asyncio.sleep(gap)
                    spent.append(await stages.run(name, 1))
                out[name] = statistics.median(spent)
        finally:
            stages.path.journal.close()
        return out

    try:
        return uvloop.run(main())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def stage(name: str, n: int) -> float:
    """CPU seconds per iteration of one stage (a fresh set of parts)."""
    import uvloop

    directory = tempfile.mkdtemp(prefix="xenmux-dpath-")

    async def main() -> float:
        stages = Stages(directory)
        try:
            return await stages.run(name, n) / n
        finally:
            stages.path.journal.close()

    try:
        return uvloop.run(main())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- callgrind ---------------------------------------------------------------------------------


def per_iteration(argv_of, n1: int, n2: int) -> float:
    a = callgrind_instructions([__file__, *argv_of(n1)])
    b = callgrind_instructions([__file__, *argv_of(n2)])
    return (b - a) / (n2 - n1)


# -- the self-check ----------------------------------------------------------------------------


def test_a_firing_reaches_the_subscriber_and_the_journal():
    """The harness measures the real path: each firing's one event is journaled, and its
    frame reaches the interested connection's peer (the peer waits for each one)."""
    user, system = firing(10, 0.0, warm=2)
    assert user + system > 0
    directory = tempfile.mkdtemp(prefix="xenmux-dpath-")
    try:
        stages = Stages(directory)
        batches = stages._events(4)
        assert [len(b) for b in batches] == [1, 1, 1, 1]
        assert [b[0].domid for b in batches] == [INTERESTED] * 4
        stages.path.journal.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _main(argv: list[str]) -> None:
    if argv[:1] == ["--peer"]:
        _peer(int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4]))
        return
    if argv[:1] == ["--stage"]:
        stage(argv[1], int(argv[2]))
        return
    if argv[:1] == ["--firing"]:
        firing_in_process(int(argv[1]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--callgrind", action="store_true", help="instructions, not CPU time")
    ap.add_argument("--no-stages", action="store_true", help="the whole firing only")
    ap.add_argument("--gap", type=float, default=20.0, help="ms between cold firings")
    ap.add_argument("--firings", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5, help="stages: best of this many")
    ap.add_argument(
        "--cold", type=int, default=0, metavar="N",
        help="also each stage once per --gap, cold: the median of N such runs",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.callgrind:
        print("| stage | instructions per firing |")
        print("| --- | ---: |")
        whole = per_iteration(lambda n: ["--firing", str(n)], 20, 120)
        parts = 0.0
        for name in () if args.no_stages else Stages.NAMES:
            n1, n2 = (20, 120) if name == "hop" else (200, 1200)
            count = per_iteration(lambda n, name=name: ["--stage", name, str(n)], n1, n2)
            parts += count
            print(f"| {name} | {count:,.0f} |", flush=True)
        if parts:
            print(f"| the rest (event loop, epoll, recv) | {whole - parts:,.0f} |")
        print(f"| **whole firing** | **{whole:,.0f}** |")
        return
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for what, n, gap in (("cold", args.firings, args.gap), ("back to back", args.firings * 3, 0)):
        user, system = firing(n, gap / 1e3)
        print(
            f"firing, {what} ({gap:g} ms apart): {(user + system) * 1e6:.1f} us of daemon "
            f"CPU ({user * 1e6:.1f} us user, {system * 1e6:.1f} us system)",
            flush=True,
        )
    print("| stage | CPU per firing (best of rounds, hot) |")
    print("| --- | ---: |")
    for name in () if args.no_stages else Stages.NAMES:
        n = 200 if name == "hop" else 2000
        best = min(stage(name, n) for _ in range(args.rounds))
        print(f"| {name} | {best * 1e6:.2f} us |", flush=True)
    if args.cold and not args.no_stages:
        names = [name for name in Stages.NAMES if name != "write"]  # write: a process each
        cold = cold_stages(names, args.cold, args.gap / 1e3)
        print(f"| stage | CPU, once every {args.gap:g} ms (median of {args.cold}, cold) |")
        print("| --- | ---: |")
        for name, spent in cold.items():
            print(f"| {name} | {spent * 1e6:.1f} us |")
        print(f"| sum | {sum(cold.values()) * 1e6:.1f} us |")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    _main(sys.argv[1:])
