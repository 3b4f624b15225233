"""Metrics (docs/metrics.md): the exposition passes `promtool check metrics`, every label value
is there at zero from start-up, the counters agree with what a subscriber received and with
`stats`, and recording them costs the hot path a few percent.

The cost is measured against the same code with the counters taken out: `bare()` rebuilds
the hot-path methods from their live source without the statements that record anything,
so the comparison follows the code as it changes. Figures for docs/metrics.md:

    .venv/bin/python tests/daemon/test_metrics.py  # wall time, best of interleaved rounds
    .venv/bin/python tests/daemon/test_metrics.py --callgrind  # instructions (valgrind)
"""

from __future__ import annotations
import __future__

import ast
import asyncio
import functools
import inspect
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import types
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from daemonhelpers import quiet, take, until
from simhelpers import sim_command

from mux._fast import DomainTable
from mux.daemon import stats as stats_module
from mux.daemon.fanout import Fanout
from mux.daemon.metrics import _histogram, features_label, parse_addr
from mux.daemon.scanloop import ScanLoop
from mux.daemon.stats import (
    CLIENT_ERROR_CODES,
    DOMAIN_STATES,
    DURATION_BUCKETS,
    EVENT_KINDS,
    TRIGGERS,
    WATCH_PATHS,
    Histogram,
    Stats,
)
from mux.daemon.watcher import Watcher
from mux.hypervisor import Capabilities
from mux.records import SHUTDOWN_SUSPEND, DomainRecord, make_flags, pack_all
from mux.xenstore import wire
from mux.xenstore.client import XenstoreProtocol

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


# -- reading /metrics ------------------------------------------------------------------------


def metrics_port(d) -> int:
    port = d.stats()["metrics_port"]
    assert isinstance(port, int) and port > 0, port
    return port


def scrape(port: int) -> tuple[str, str]:
    """(exposition text, Content-Type) of http://127.0.0.1:port/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode(), r.headers["Content-Type"]


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted label items: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in samples[name].items()}


def value(samples: dict, name: str) -> float:
    (v,) = samples[name].values()
    return v


def promtool_check(text: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


# -- the daemon's exposition -------------------------------------------------------------------


def test_exposition_passes_promtool(sim, daemon_factory):
    d = daemon_factory(sim, "--metrics-addr", "127.0.0.1:0")
    port = metrics_port(d)
    with d.subscribe(None) as sub:  # something in every histogram
        sim.ctl.shutdown(3, "crash")
        assert sub.next_event(20)["event"] == "shutdown"
    text, ctype = scrape(port)
    assert ctype.startswith("text/plain; version=0.0.4")
    checked = promtool_check(text)
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), (
        checked.stdout + checked.stderr
    )
    families = set(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert families, text
    docs = (REPO / "docs" / "metrics.md").read_text()
    for name, kind in families:
        assert name.startswith(("xenmux_", "process_")), name
        assert (kind == "counter") == name.endswith("_total"), (name, kind)
        assert f"`{name}`" in docs, f"docs/metrics.md does not describe {name}"


def test_promtool_would_catch_a_bad_exposition():
    """The check above can fail: promtool objects to what our names avoid."""
    bad = "# HELP xenmux_scans Scans.\n# TYPE xenmux_scans counter\nxenmux_scans 1\n"
    out = promtool_check(bad)
    assert out.returncode != 0 or (out.stdout + out.stderr).strip()


def test_every_label_value_is_there_at_zero_from_startup(sim, daemon_factory):
    d = daemon_factory(sim, "--metrics-addr", "127.0.0.1:0", "--full-scan", "0")
    port = metrics_port(d)
    text, _ = scrape(port)
    s = parse(text)

    scans = by_label(s, "xenmux_scans_total", "trigger")
    assert list(scans) == list(TRIGGERS)
    assert scans["startup"] == 1
    # The watches' first firings (xenstored fires each new watch once) may cost one scan.
    assert {k: v for k, v in scans.items() if k not in ("startup", "watch")} == dict.fromkeys(
        set(TRIGGERS) - {"startup", "watch"}, 0
    )
    assert list(by_label(s, "xenmux_watch_firings_total", "path")) == list(WATCH_PATHS)
    assert by_label(s, "xenmux_events_total", "event") == dict.fromkeys(EVENT_KINDS, 0)
    assert by_label(s, "xenmux_client_errors_total", "code") == dict.fromkeys(CLIENT_ERROR_CODES, 0)
    assert by_label(s, "xenmux_domains", "state") == {"running": 9, "shutdown": 0, "dead": 0}
    assert list(by_label(s, "xenmux_domains", "state")) == list(DOMAIN_STATES)
    for name in (
        "xenmux_frames_sent_total",
        "xenmux_subscriber_overflows_total",
        "xenmux_xenstore_reconnects_total",
        "xenmux_hypercall_errors_total",
        "xenmux_targeted_scans_total",
        "xenmux_subscribers",
    ):
        assert value(s, name) == 0, name
    assert value(s, "xenmux_xenstore_connected") == 1
    bounds = [*(float(b) for b in DURATION_BUCKETS), float("inf")]
    for h in ("scan_duration", "hypercall_duration", "notify_latency"):
        les = [float(dict(k)["le"]) for k in s[f"xenmux_{h}_seconds_bucket"]]
        assert les == bounds, h
    assert set(by_label(s, "xenmux_notify_latency_seconds_bucket", "le").values()) == {0}
    ((labels, one),) = s["xenmux_build_info"].items()
    info = dict(labels)
    assert one == 1 and info["backend"] == "sim" and info["watch_depth"] == "false"
    assert info["xenstored_features"] == "none"  # C xenstored 4.17: XS_GET_FEATURE is ENOSYS
    assert info["xenstore_path"] == sim.xenstored

    # `xenmux stats` has the same label values (client errors: only those that happened).
    st = d.stats()
    assert list(st["scans"]) == list(TRIGGERS)
    assert st["events"] == dict.fromkeys(EVENT_KINDS, 0)
    assert list(st["firings"]) == list(WATCH_PATHS)
    assert st["domains"] == {"running": 9, "shutdown": 0, "dead": 0}
    assert st["client_errors"] == {}


def test_depth_mode_build_info(sim422, daemon_factory):
    d = daemon_factory(sim422, "--metrics-addr", "127.0.0.1:0")
    s = parse(scrape(metrics_port(d))[0])
    ((labels, _),) = s["xenmux_build_info"].items()
    assert dict(labels)["watch_depth"] == "true"
    assert dict(labels)["xenstored_features"] != "none"


def _raw_request(sock_path: str, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(sock_path)
        s.sendall(line)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, "the daemon closed the connection without a reply"
            buf += chunk
    return json.loads(buf)


def test_counters_agree_with_what_a_subscriber_received(sim, daemon_factory):
    d = daemon_factory(sim, "--metrics-addr", "127.0.0.1:0", "--shutdown-poll", "0.05")
    port = metrics_port(d)
    received: list[dict] = []
    with d.subscribe(None) as sub:
        sim.ctl.shutdown(1, "reboot")
        sim.ctl.shutdown(2, "poweroff")
        received += take(sub, 2)
        sim.ctl.destroy(1)
        sim.ctl.destroy(2)
        received += take(sub, 4)  # death, released each
        created = sim.ctl.create(count=2)
        received += take(sub, 2)
        sim.ctl.destroy(3, zombie=True)
        received += take(sub, 1)  # death only: a zombie is never released
        sim.ctl.suspend(4)
        received += take(sub, 1)
        sim.ctl.resume(4)  # fires nothing: the shutdown poll sees it
        received += take(sub, 1)
        assert quiet(sub, 0.3) == []
        got = Counter(e["event"] for e in received)
        assert got == {"shutdown": 3, "death": 3, "released": 2, "new": 2, "resumed": 1}
        assert {e["domid"] for e in received if e["event"] == "new"} == {
            c["domid"] for c in created
        }

        # Bad requests are counted by code.
        assert _raw_request(d.sock, b"{nope\n")["error"]["code"] == "bad-json"
        assert _raw_request(d.sock, b'{"op": "frobnicate", "id": 1}\n')["error"]["code"] == (
            "unknown-op"
        )
        # A subscriber asking for a domid the table lacks costs a one-domid query.
        with d.subscribe([4000]) as absent:
            assert absent.absent == [4000]

        # Only the wildcard subscription is left.
        until(lambda: value(parse(scrape(port)[0]), "xenmux_clients") == 1)
        s = parse(scrape(port)[0])
        st = d.stats()

    want = {k: got.get(k, 0) for k in EVENT_KINDS}
    assert by_label(s, "xenmux_events_total", "event") == want
    assert st["events"] == want
    assert value(s, "xenmux_frames_sent_total") == st["frames_sent"] == len(received)
    assert value(s, "xenmux_subscribers") == 1

    errors = by_label(s, "xenmux_client_errors_total", "code")
    assert errors["bad-json"] == errors["unknown-op"] == 1
    assert sum(errors.values()) == 2
    assert st["client_errors"] == {"bad-json": 1, "unknown-op": 1}

    scans = by_label(s, "xenmux_scans_total", "trigger")
    assert scans["subscribe"] == 1 and scans["depth"] == 0  # no watch depth on 4.17
    assert value(s, "xenmux_targeted_scans_total") == st["targeted_scans"] == 1
    for trigger, n in scans.items():  # polls go on (the zombie): stats comes later
        assert st["scans"][trigger] >= n, trigger
    assert by_label(s, "xenmux_watch_firings_total", "path") == st["firings"]
    # Every scan is timed (a poll may fall between the two reads of one scrape).
    assert abs(value(s, "xenmux_scan_duration_seconds_count") - sum(scans.values())) <= 1
    assert value(s, "xenmux_notify_latency_seconds_count") >= 1
    assert (
        by_label(s, "xenmux_domains", "state")
        == st["domains"]
        == {
            "running": 8,  # dom0, 4 (resumed), 5-8 and the two new ones
            "shutdown": 0,
            "dead": 1,  # the zombie
        }
    )

    # The command shows the same numbers.
    out = subprocess.run(
        [*sim_command(), "stats", "--json", "--socket", d.sock],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["events"] == want
    table = subprocess.run(
        [*sim_command(), "stats", "--socket", d.sock], capture_output=True, text=True, timeout=30
    )
    assert table.returncode == 0, table.stderr
    assert "shutdown 3, resumed 1, death 3, released 2" in table.stdout
    assert "bad-json 1, unknown-op 1" in table.stdout


# -- pieces ------------------------------------------------------------------------------------


def test_histogram_buckets_are_le_and_cumulative():
    h = Histogram((1e-6, 1e-5, 1e-4))
    for v in (0.5e-6, 1e-6, 2e-6, 1e-5, 3e-4, 2.0):
        h.observe(v)
    assert h.count == 6
    assert h.cumulative() == [(1e-6, 2), (1e-5, 4), (1e-4, 4), (float("inf"), 6)]
    assert h.quantile(0.5) == 1e-5 and h.quantile(1.0) == float("inf")
    assert Histogram().quantile(0.5) is None
    family = _histogram("xenmux_x_seconds", "x", h)
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("xenmux_x_seconds_bucket", "1e-06")] == 2
    assert samples[("xenmux_x_seconds_bucket", "+Inf")] == 6
    assert samples[("xenmux_x_seconds_count", None)] == 6
    assert samples[("xenmux_x_seconds_sum", None)] == pytest.approx(h.sum)


def test_small_parts():
    assert features_label(None) == "none" and features_label(1) == "0x1"
    assert parse_addr("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_addr(":9877") == ("0.0.0.0", 9877)
    assert parse_addr("[::1]:9877") == ("::1", 9877)
    with pytest.raises(ValueError):
        parse_addr("localhost")
    assert DURATION_BUCKETS[0] <= 1e-6 and DURATION_BUCKETS[-1] >= 50e-3
    assert list(DURATION_BUCKETS) == sorted(DURATION_BUCKETS)


# -- what recording costs the hot path -----------------------------------------------------------
#
# One iteration is what a firing costs the daemon, on the daemon's own event loop (uvloop):
# the WATCH_EVENT frame arrives on a socket and is decoded by the xenstore client, the
# watcher's callback requests a scan, the scan loop's task wakes and scans 1000 domains (one
# batched hypercall, read from memory as the sim's is, and the diff), and the fan-out writes
# each frame (to /dev/null: one system call per frame, as a socket write).

N_DOMAINS = 1000
RECORDING = {"stats", "st", "kind_counts", "frames_sent"}  # what recording statements touch
HOT_PATH = {
    ScanLoop: ("_full", "probe", "_publish"),
    Fanout: ("publish",),
    Watcher: ("_on_watch",),
}
FIRING = wire.encode(wire.XS_WATCH_EVENT, 0, 0, wire.encode_watch_event("@releaseDomain", "xenmux"))


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
    __slots__ = ("fd", "wild_mask")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.wild_mask = 0

    def send_frame(self, frame: bytes, _write=os.write) -> None:
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
            fanout.subscribe(NullSubscriber(fd), None, 31)
        else:
            for domid in range(N_DOMAINS):
                fanout.subscribe(NullSubscriber(fd), [domid], 31)
        self.stats = Stats()
        self.loop = loop_cls(
            DomainTable(), self.backend, fanout, self.stats, shutdown_poll=0, full_scan=0
        )
        self.loop.prime()
        watcher = types.SimpleNamespace(stats=self.stats, scanloop=self.loop)
        self.on_watch = functools.partial(watcher_cls._on_watch, watcher)
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
    assert counted.loop.fanout.events_by_kind()["shutdown"] == 2
    # ...but only one of them counted anything.
    assert counted.stats.firings["@releaseDomain"] == 4
    assert counted.stats.scans["watch"] == 4 and counted.stats.notify_seconds.count == 4
    assert plain.stats.firings["@releaseDomain"] == 0
    assert plain.stats.scans["watch"] == 0 and plain.stats.notify_seconds.count == 0
    assert plain.stats.scan_seconds.count == 1  # prime() only: not on the hot path
    assert plain.loop.fanout.frames_sent == 0 and sum(plain.loop.fanout.kind_counts) == 0


def test_recording_costs_the_hot_path_a_few_percent():
    """A guard against gross regressions (a lock, an allocation per event); the figures in
    docs/metrics.md come from instruction counts, which a loaded machine cannot disturb."""
    results = measure()
    report = {
        s: f"{c * 1e6:.1f} us vs {b * 1e6:.1f} us: {o * 100:+.1f}%"
        for s, (c, b, o) in results.items()
    }
    print(report)
    for scenario, (_, _, overhead) in results.items():
        assert overhead < 0.20, report[scenario]


# -- `python tests/daemon/test_metrics.py`: the figures for docs/metrics.md -------------------


def _callgrind(variant: str, scenario: str, iterations: int) -> int:
    """Instructions of one run, all threads, less those of memcpy: valgrind counts each byte
    of a `rep movsb` copy (the 112 KB of records per scan) as an instruction."""
    out = Path(f"/tmp/xenmux-callgrind.{os.getpid()}")
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = [sys.executable, __file__, "--run", variant, scenario, str(iterations)]
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
