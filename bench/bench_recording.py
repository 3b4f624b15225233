"""What recording the metrics costs the daemon's hot path: counters against no counters.

One iteration is what a firing costs the daemon, on the daemon's own event loop (uvloop):
the WATCH_EVENT frame arrives on a socket and is decoded by the xenstore client, the
watcher's callback requests a scan, the scan loop's task wakes and scans 1000 domains (one
batched hypercall, read from memory as the sim's is, and the diff), and the fan-out writes
each frame (to /dev/null: one system call per frame, as a socket write).

"Without counters" is the same code with the counters taken out: `bare()` rebuilds the
hot-path methods from their live source without the statements that record anything, so
the comparison follows the code as it changes. docs/metrics.md quotes the figures.

Run (from the repository, after `make build`):

    .venv/bin/python bench/bench_recording.py              # CPU time, best of interleaved rounds
    .venv/bin/python bench/bench_recording.py --callgrind  # instructions (needs valgrind)
    .venv/bin/python -m pytest bench/bench_recording.py    # the harness's self-check and a
                                                            # coarse guard (20 %)

`make bench` runs the guard too (it uses pytest-benchmark's fixture, which records how long
the interleaved measurement took and keeps the overheads in `extra_info`).
"""

from __future__ import annotations
import __future__

import ast
import asyncio
import inspect
import os
import re
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mux._fast import DomainTable
from mux.daemon import stats as stats_module
from mux.daemon.fanout import Fanout
from mux.daemon.scanloop import ScanLoop
from mux.daemon.stats import Stats
from mux.daemon.watcher import Watcher
from mux.hypervisor import Capabilities
from mux.protocol import ALL_KINDS_MASK, SHUTDOWN
from mux.records import SHUTDOWN_SUSPEND, DomainRecord, make_flags, pack_all
from mux.xenstore import wire
from mux.xenstore.client import XenstoreProtocol

N_DOMAINS = 1000
RECORDING = {"stats", "st", "kind_counts", "frames_sent"}  # what recording statements touch
HOT_PATH = {
    ScanLoop: ("_full", "probe", "_deliver"),
    Fanout: ("publish",),
    Watcher: ("_on_watch",),
}
FIRING = wire.encode(
    wire.XS_WATCH_EVENT, 0, 0, wire.encode_watch_event(wire.SPECIAL_RELEASE, "xenmux")
)


def _records(stmt: ast.stmt) -> bool:
    """A simple statement that reads or writes a counter (compound ones are kept; their
    bodies are filtered)."""
    if isinstance(stmt, ast.If | ast.For | ast.While | ast.With | ast.AsyncWith | ast.Try):
        return False
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and node.id in RECORDING:
            return True
        if isinstance(node, ast.Attribute) and node.attr in RECORDING:
            return True
    return False


class _Strip(ast.NodeTransformer):
    def generic_visit(self, node):
        super().generic_visit(node)
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if not isinstance(stmts, list) or not stmts or not isinstance(stmts[0], ast.stmt):
                continue
            kept = [s for s in stmts if not _records(s)]
            if not kept and field == "body":
                kept = [ast.Pass()]
            setattr(node, field, kept)
        return node


def _drop_unused_assignments(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
    """Timestamps taken only for a histogram (t1 = perf_counter()) go with it."""
    loaded = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}

    class Drop(ast.NodeTransformer):
        def visit_Assign(self, node):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if len(names) == len(node.targets) and not set(names) & loaded:
                return None
            return node

    Drop().visit(fn)


def bare(cls: type) -> type:
    """A subclass of `cls` whose hot-path methods are the live code without the counters."""
    module = sys.modules[cls.__module__]
    namespace = dict(vars(module))
    methods = {}
    for name in HOT_PATH[cls]:
        tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cls, name))))
        fn = tree.body[0]
        fn.decorator_list = []
        _Strip().visit(fn)
        _drop_unused_assignments(fn)
        ast.fix_missing_locations(tree)
        code = compile(
            tree,
            f"<{cls.__name__}.{name} without counters>",
            "exec",
            flags=__future__.annotations.compiler_flag,
            dont_inherit=True,
        )
        exec(code, namespace)
        methods[name] = namespace[name]
    return type(f"Bare{cls.__name__}", (cls,), methods)


class MemoryBackend:
    """A host of `n` domains whose records are `data`: a scan copies them into the
    backend's own buffer, as the sim's seqlock read and the hypercall do."""

    name = "memory"
    capabilities = Capabilities(full_scan=True, one_domain=True, changed_feed=False)
    xenstore_path = None
    state_dir = None

    def __init__(self, n: int) -> None:
        self.n = n
        self.data = memoryview(b"")
        self._buf = bytearray(0)
        self._one = bytearray(0)

    def getinfolist(self, first: int, max_domains: int, out, offset: int = 0) -> int:
        k = max(0, min(max_domains, self.n - first))
        size = len(self.data) // self.n
        out[offset : offset + k * size] = self.data[first * size : (first + k) * size]
        return k

    def scan_all(self) -> tuple[bytearray, int]:
        if len(self._buf) != len(self.data):
            self._buf = bytearray(len(self.data))
        return self._buf, self.getinfolist(0, self.n, self._buf)

    def query_one(self, domid: int) -> tuple[bytearray, int]:
        if not self._one:
            self._one = bytearray(len(self.data) // self.n)
        return self._one, self.getinfolist(domid, 1, self._one)

    def watch_changed(self, callback) -> None:
        raise NotImplementedError

    def domain_count_hint(self) -> int:
        return self.n

    def close(self) -> None:
        pass


class NullSubscriber:
    __slots__ = ("direct", "fd", "last_out", "wild_mask")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.wild_mask = 0
        self.direct = None  # every frame through send_frame
        self.last_out = None

    def send_frame(self, frame: bytes, event, _write=os.write) -> None:
        _write(self.fd, frame)


def host_records(n: int, shut_every: int = 0) -> memoryview:
    records = []
    for d in range(n):
        reason = SHUTDOWN_SUSPEND if shut_every and d and d % shut_every == 0 else None
        flags = make_flags(shutdown_reason=reason)
        records.append(DomainRecord(d, flags, d.to_bytes(2, "little") * 8, 10**9 + d))
    return memoryview(pack_all(records))


SCENARIOS = {
    # a firing, nothing changed (spurious, or coalesced into an earlier scan)
    "idle": 0,
    # a firing, one domain shut down or resumed -> its one subscriber among 1000
    "one": N_DOMAINS - 1,
    # a firing, every guest shut down or resumed -> one wildcard subscriber
    "mass": 1,
}


class Bench:
    """A scan loop with or without its counters, fed firings through a socket."""

    def __init__(self, scenario: str, counted: bool, fd: int) -> None:
        loop_cls, fanout_cls, watcher_cls = (
            (ScanLoop, Fanout, Watcher)
            if counted
            else (bare(ScanLoop), bare(Fanout), bare(Watcher))
        )
        self.buffers = [host_records(N_DOMAINS), host_records(N_DOMAINS, SCENARIOS[scenario])]
        self.backend = MemoryBackend(N_DOMAINS)
        self.backend.data = self.buffers[0]
        fanout = fanout_cls()
        if scenario == "mass":
            fanout.subscribe(NullSubscriber(fd), None, ALL_KINDS_MASK)
        else:
            for domid in range(N_DOMAINS):
                fanout.subscribe(NullSubscriber(fd), [domid], ALL_KINDS_MASK)
        self.stats = Stats()
        self.loop = loop_cls(
            DomainTable(), self.backend, fanout, self.stats, shutdown_poll=0, full_scan=0
        )
        self.loop.prime()
        # Never started: only its callback runs, fed by the socket below.
        watcher = watcher_cls(
            "bench",
            self.stats,
            request_full=self.loop.request_full,
            request_domid=self.loop.request_domid,
        )
        self.on_watch = watcher._on_watch
        self.i = 0
        self.sock: socket.socket | None = None
        self.done: asyncio.Event | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.sock, theirs = socket.socketpair()
        await loop.create_unix_connection(
            lambda: XenstoreProtocol("bench", loop, self.on_watch), sock=theirs
        )
        self.done = asyncio.Event()
        self.loop._arm_poll = self.done.set  # called at the end of every scan
        self.loop.start()
        self.done.clear()  # start() called it too

    async def stop(self) -> None:
        await self.loop.stop()
        self.sock.close()

    async def run(self, iterations: int) -> float:
        """CPU seconds of this thread per iteration (what a busy machine disturbs least)."""
        done, buffers, backend, send = self.done, self.buffers, self.backend, self.sock.send
        t0 = time.thread_time()
        for _ in range(iterations):
            self.i ^= 1
            backend.data = buffers[self.i]
            send(FIRING)
            await done.wait()
            done.clear()
        return (time.thread_time() - t0) / iterations


ITERATIONS = {"idle": 100, "one": 100, "mass": 2}


def _run(main):
    import uvloop

    return uvloop.run(main)


def measure(rounds: int = 41, scenarios=tuple(SCENARIOS)) -> dict[str, tuple[float, float, float]]:
    """scenario -> (seconds per iteration with counters, without, overhead).

    Each round times both variants back to back (in alternating order), so that the two
    share what the machine was doing then; the overhead is the median of the rounds'
    ratios, the times the medians of each variant."""

    async def main(fd: int) -> dict:
        out = {}
        for scenario in scenarios:
            benches = {c: Bench(scenario, c, fd) for c in (True, False)}
            for b in benches.values():
                await b.start()
                await b.run(ITERATIONS[scenario])  # warm up
            times: dict[bool, list[float]] = {True: [], False: []}
            ratios = []
            for r in range(rounds):
                t = {}
                for c in (True, False) if r % 2 else (False, True):
                    t[c] = await benches[c].run(ITERATIONS[scenario])
                    times[c].append(t[c])
                ratios.append(t[True] / t[False])
            for b in benches.values():
                await b.stop()
            out[scenario] = (
                statistics.median(times[True]),
                statistics.median(times[False]),
                statistics.median(ratios) - 1,
            )
        return out

    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        return _run(main(fd))
    finally:
        os.close(fd)


def test_bare_variant_takes_out_only_the_counters():
    """The comparison is fair: both variants do the same work, only one counts it."""
    fd = os.open(os.devnull, os.O_WRONLY)
    try:

        async def both():
            counted, plain = Bench("one", True, fd), Bench("one", False, fd)
            for b in (counted, plain):
                await b.start()
                await b.run(4)
                await b.stop()
            return counted, plain

        counted, plain = _run(both())
    finally:
        os.close(fd)
    # The same work: the same events went out...
    assert counted.loop.table.seq == plain.loop.table.seq == 4
    assert counted.loop.fanout.frames_sent == 4
    assert counted.loop.fanout.events_by_kind()[SHUTDOWN] == 2
    # ...but only one of them counted anything.
    assert counted.stats.firings[wire.SPECIAL_RELEASE] == 4
    assert counted.stats.scans["watch"] == 4 and counted.stats.notify_seconds.count == 4
    assert plain.stats.firings[wire.SPECIAL_RELEASE] == 0
    assert plain.stats.scans["watch"] == 0 and plain.stats.notify_seconds.count == 0
    assert plain.stats.scan_seconds.count == 1  # prime() only: not on the hot path
    assert plain.loop.fanout.frames_sent == 0 and sum(plain.loop.fanout.kind_counts) == 0


def test_recording_costs_the_hot_path_a_few_percent(benchmark):
    """A guard against gross regressions (a lock, an allocation per event); the figures in
    docs/metrics.md come from instruction counts, which a loaded machine cannot disturb."""
    results = benchmark.pedantic(measure, rounds=1, iterations=1)
    report = {
        s: f"{c * 1e6:.1f} us vs {b * 1e6:.1f} us: {o * 100:+.1f}%"
        for s, (c, b, o) in results.items()
    }
    benchmark.extra_info.update(report)
    print(report)
    for scenario, (_, _, overhead) in results.items():
        assert overhead < 0.20, report[scenario]


# -- `python bench/bench_recording.py`: the figures for docs/metrics.md ------------------------


def _callgrind(variant: str, scenario: str, iterations: int) -> int:
    """Instructions of one run (see callgrind_instructions)."""
    return callgrind_instructions([__file__, "--run", variant, scenario, str(iterations)])


def callgrind_instructions(argv: list[str]) -> int:
    """Instructions of `python ARGV` under callgrind, all threads, less those of memcpy:
    valgrind counts each byte of a `rep movsb` copy (the 112 KB of records per scan) as an
    instruction."""
    out = Path(f"/tmp/xenmux-callgrind.{os.getpid()}")
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = [sys.executable, *argv]
    try:
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
            check=True,
            capture_output=True,
            env=env,
        )
        annotated = subprocess.run(
            ["callgrind_annotate", "--inclusive=no", str(out)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        total = copies = 0
        for line in annotated.splitlines():
            fields = line.split()
            if not fields or not fields[0].replace(",", "").isdigit():
                continue
            n = int(fields[0].replace(",", ""))
            if "PROGRAM TOTALS" in line:
                total = n
            elif re.search(r"__mem(cpy|move)", line):
                copies += n
        assert total, annotated[:2000]
        return total - copies
    finally:
        out.unlink(missing_ok=True)


def _main(argv: list[str]) -> None:
    if argv[:1] == ["--run"]:  # one variant, under valgrind: --run VARIANT SCENARIO N
        # VARIANT: bare (no counters), path (counters; histograms left unfolded: what the
        # event loop runs), counted (counters, and every observation folded at the end).
        variant, scenario, n = argv[1], argv[2], int(argv[3])
        stats_module.FOLD_INTERVAL = 1e9  # no folding in the background while we count
        fd = os.open(os.devnull, os.O_WRONLY)
        bench = Bench(scenario, variant != "bare", fd)

        async def main():
            await bench.start()
            await bench.run(n)
            await bench.stop()

        _run(main())
        if variant == "counted":
            st = bench.stats
            for h in (st.scan_seconds, st.hypercall_seconds, st.notify_seconds):
                h.fold()
        return
    if argv[:1] == ["--callgrind"]:
        print(
            "| scenario | instructions per firing, no counters | counters: event loop "
            "| overhead | counters: all threads | overhead |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for scenario in SCENARIOS:
            n1, n2 = (10, 40) if scenario == "mass" else (200, 2200)
            per = {}
            for variant in ("bare", "path", "counted"):
                a, b = _callgrind(variant, scenario, n1), _callgrind(variant, scenario, n2)
                per[variant] = (b - a) / (n2 - n1)
            base = per["bare"]
            print(
                f"| {scenario} | {base:,.0f} | {per['path']:,.0f} "
                f"| {(per['path'] / base - 1) * 100:+.1f}% | {per['counted']:,.0f} "
                f"| {(per['counted'] / base - 1) * 100:+.1f}% |",
                flush=True,
            )
        return
    print("| scenario | event-loop CPU per firing, counters | without | overhead |")
    print("| --- | ---: | ---: | ---: |")
    for scenario, (c, b, o) in measure().items():
        print(f"| {scenario} | {c * 1e6:.1f} us | {b * 1e6:.1f} us | {o * 100:+.1f}% |")


if __name__ == "__main__":
    _main(sys.argv[1:])
