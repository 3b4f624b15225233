"""`xenmux bench --pool`: the pool stream's throughput, delay and cost on one machine.

N simulated hosts, each with its daemon and its bridge, publish to one nats-server
(loopback, JetStream in a temporary directory). The bench is the pool consumer (an ordered
consumer on `xenmux.events.>`) and also subscribes to every daemon directly, so each event
is seen twice: on the host's own stream and through the pool.

- Latency phase (not at the throughput-only sizes): the bench drives each host itself, a
  create, a shutdown and a destroy in turn at a steady rate, and reads the sim's change
  stamp after each one: change -> host's own stream, change -> pool consumer, and their
  difference (what the bridge and JetStream add).
- Churn phase: every sim runs its own churn (random lifecycles) at a high rate: events per
  second through the one pool consumer, bridge CPU per event (the bridges' CPU clocks over
  the events they published, bucket writes included), JetStream storage per event (the
  stream's bytes over its messages), and how long the pool took to drain after the churn.

Every event the daemons sent must reach the pool consumer once: `lost` and `duplicates`
are counted, and either makes the exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mux.bench import procs as P
from mux.bench.host import SimHost, python_command, wait_for_socket
from mux.bench.natsserver import NatsServer, listening_addresses
from mux.bridge import names

READY_TIMEOUT = 300.0
POOL_CHURN = 160.0  # lifecycles per second over the whole pool, by default
# What one wake-up of an idle asyncio process costs on this machine, measured beside the
# churn at the bridges' rate of events: the floor under any Python process that wakes once
# per event (the daemon and the bridge alike).
WAKE_PROBE = """
import asyncio, sys, time
async def main(rate, seconds):
    n, end, c0 = 0, time.monotonic() + seconds, time.process_time()
    while time.monotonic() < end:
        await asyncio.sleep(1 / rate)
        n += 1
    print((time.process_time() - c0) / n * 1e6)
asyncio.run(main(float(sys.argv[1]), float(sys.argv[2])))
"""
DRAIN_TIMEOUT = 120.0


@dataclass
class PoolParams:
    latency_seconds: float = 10.0
    latency_rate: float = 5.0  # driven changes per second per host
    churn_seconds: float = 10.0
    # Lifecycles per second per host (each 2 to 5 events); None: POOL_CHURN shared by the
    # hosts, so that every size carries the same load (2 cores carry all of it).
    churn_rate: float | None = None
    seed: int = 1
    # A NATS outage this long (nats-server SIGKILLed, restarted after it) with the churn
    # going on, at the first size measured: how long the pool takes to catch up. 0: none.
    outage_seconds: float = 60.0


@dataclass
class PoolPlan:
    hosts: int
    domains: int
    latency: bool = True
    outage: bool = False


@dataclass
class Seen:
    """Receipt times (CLOCK_MONOTONIC ns) of each event, by (host, seq)."""

    host_stream: dict[tuple[str, int], int] = field(default_factory=dict)
    pool: dict[tuple[str, int], int] = field(default_factory=dict)
    duplicates: int = 0
    missed: int = 0  # events the bridges made up after a gap (there should be none)
    kinds: dict[tuple[str, int], tuple[int, str]] = field(default_factory=dict)


def summarize(values: list[int]) -> dict:
    """n, p50, p99 and max of latencies in ns, in microseconds (as the other scenarios)."""
    from mux.bench.runner import _lat_summary

    return _lat_summary(values)


class PoolBench:
    def __init__(self, plan: PoolPlan, params: PoolParams, tmp_root: str) -> None:
        self.plan = plan
        self.params = params
        self.churn_rate = params.churn_rate or POOL_CHURN / plan.hosts
        self.dir = Path(tempfile.mkdtemp(prefix=f"pool{plan.hosts}x{plan.domains}-", dir=tmp_root))
        self.procs = P.ProcessSet()
        self.nats: NatsServer | None = None
        self.sims: list[SimHost] = []
        self.daemons: list[int] = []
        self.bridges: list[int] = []
        self.seen = Seen()
        self.last_pool_seq = 0  # the stream sequence of the last message the consumer got

    # -- set-up ------------------------------------------------------------------------------

    def start(self) -> None:
        self.nats = NatsServer(self.dir, "bench").start()
        assert all(a.startswith("127.0.0.1:") for a in listening_addresses(self.nats.pid))
        for i in range(self.plan.hosts):
            host_dir = self.dir / f"h{i}"
            host_dir.mkdir()
            sim = SimHost(
                self.procs,
                str(host_dir),
                self.plan.domains,
                seed=self.params.seed + i,
                log=str(host_dir / "sim.log"),
            )
            sim.start(READY_TIMEOUT)
            self.sims.append(sim)
            sock = str(host_dir / "x.sock")
            argv = python_command(
                *("serve", "--backend", "sim", "--sim-dir", str(host_dir), "--socket", sock),
                *("--metrics-addr", "", "--shutdown-poll", "0.05"),
            )
            log = str(host_dir / "daemon.log")
            pid = self.procs.spawn(argv, name=f"daemon h{i}", stderr=log)
            self.daemons.append(pid)
        for i, pid in enumerate(self.daemons):
            sock = str(self.dir / f"h{i}" / "x.sock")
            wait_for_socket(sock, self.procs, pid, f"daemon h{i}", READY_TIMEOUT)
        for i in range(self.plan.hosts):
            sock = str(self.dir / f"h{i}" / "x.sock")
            argv = python_command(
                *("bridge", "--nats", self.nats.url, "--host", f"h{i}", "--socket", sock),
                "--metrics-addr",
                "",
            )
            log = str(self.dir / f"h{i}" / "bridge.log")
            self.bridges.append(self.procs.spawn(argv, name=f"bridge h{i}", stderr=log))

    def stop(self) -> None:
        for sim in self.sims:
            if sim.ctl is not None:
                sim.ctl.close()
                sim.ctl = None
        self.procs.stop(self.bridges)
        self.procs.stop(self.daemons)
        for sim in self.sims:
            sim.stop()
        if self.nats is not None:
            self.nats.remove()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the measurement ---------------------------------------------------------------------

    async def measure(self) -> dict:

        import nats

        assert self.nats is not None
        nc = await nats.connect(self.nats.url, allow_reconnect=False)
        try:
            js = nc.jetstream()
            await self._bridges_ready(js)
            await self._consume(nc)
            subs = await self._subscribe_daemons()
            row: dict = {"hosts": self.plan.hosts, "domains": self.plan.domains}
            if self.plan.latency:
                row["latency"] = await self._latency_phase(subs)
            row["churn"] = await self._churn_phase(js, subs)
            if self.plan.outage and self.params.outage_seconds > 0:
                await nc.close()
                row["outage"] = await self._outage_phase()
                nc = await self._consume()
            row["burst"] = await self._burst_phase()
            row["lost"], row["duplicates"] = self._check()
            row["missed"] = self.seen.missed
            for task in subs:
                task.cancel()
            await asyncio.gather(*subs, return_exceptions=True)
            return row
        finally:
            await nc.close()

    async def _consume(self, nc=None):
        """The pool consumer on `nc` (else a new connection): every message after the last
        one the consumer got (from the next one on at the start)."""
        import nats
        from nats.js.api import DeliverPolicy

        assert self.nats is not None
        if nc is None:
            nc = await nats.connect(self.nats.url, allow_reconnect=False)
        start = (
            {"deliver_policy": DeliverPolicy.NEW}
            if not self.last_pool_seq
            else {
                "deliver_policy": DeliverPolicy.BY_START_SEQUENCE,
                "config": nats.js.api.ConsumerConfig(opt_start_seq=self.last_pool_seq + 1),
            }
        )
        await nc.jetstream().subscribe(
            f"{names.SUBJECT_ROOT}.>",
            stream=names.DEFAULT_STREAM,
            ordered_consumer=True,
            cb=self._on_pool,
            **start,
        )
        return nc

    async def _outage_phase(self) -> dict:
        """nats-server SIGKILLed and, after outage_seconds of churn on every host, started
        again on the same store: how long until every event the daemons sent meanwhile has
        come through the pool consumer."""
        from mux.sim.ctl import AsyncSimControl

        assert self.nats is not None
        seconds = self.params.outage_seconds
        before = len(self.seen.host_stream)
        self.nats.kill()

        async def churn(sim: SimHost) -> None:
            ctl = await AsyncSimControl.connect(sim.dir, timeout=seconds + 60)
            try:
                await ctl.churn(seconds, rate=self.churn_rate, seed=self.params.seed + 7)
            finally:
                await ctl.close()

        await asyncio.gather(*(churn(s) for s in self.sims))
        behind = len(self.seen.host_stream) - before
        t_restart = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, self.nats.restart)
        nc = await self._consume()
        try:
            deadline = t_restart + DRAIN_TIMEOUT
            while not set(self.seen.host_stream) <= set(self.seen.pool):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
            caught_up = time.monotonic() - t_restart
        finally:
            await nc.close()
        return {
            "seconds": seconds,
            "events_during": behind,
            "catch_up_s": round(caught_up, 2),
            "catch_up_events_per_s": round(behind / caught_up, 1) if caught_up else None,
        }

    async def _bridges_ready(self, js) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        wanted = {names.checkpoint_key(f"h{i}") for i in range(self.plan.hosts)}
        while True:
            for pid, name, status in self.procs.reap():
                raise RuntimeError(f"{name} ({pid}) exited with status {status}")
            try:
                kv = await js.key_value(names.DEFAULT_BUCKET)
                keys = set(await kv.keys())
            except Exception:
                keys = set()
            if wanted <= keys:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"bridges not ready after {READY_TIMEOUT:.0f} s")
            await asyncio.sleep(0.2)

    async def _subscribe_daemons(self) -> list[asyncio.Task]:
        from mux.client import AsyncSubscription

        tasks = []
        for i in range(self.plan.hosts):
            sub = AsyncSubscription(None, socket_path=str(self.dir / f"h{i}" / "x.sock"))
            await sub.connect()
            tasks.append(asyncio.ensure_future(self._follow_daemon(f"h{i}", sub)))
        return tasks

    async def _follow_daemon(self, host: str, sub) -> None:
        try:
            while True:
                ev = await sub.next_event()
                if ev is None or "seq" not in ev:
                    continue
                key = (host, ev["seq"])
                self.seen.host_stream[key] = time.monotonic_ns()
                self.seen.kinds[key] = (ev["domid"], ev["event"])
        finally:
            await sub.close()

    async def _on_pool(self, msg) -> None:
        now = time.monotonic_ns()
        try:
            ev = json.loads(msg.data)
        except ValueError:
            return
        if ev.get("missed"):
            self.seen.missed += 1
            return
        self.last_pool_seq = max(self.last_pool_seq, msg.metadata.sequence.stream)
        key = (ev.get("host"), ev.get("seq"))
        if key in self.seen.pool:
            self.seen.duplicates += 1
            return
        self.seen.pool[key] = now

    async def _latency_phase(self, subs) -> dict:
        """Each host driven at a steady rate: create, shutdown, destroy, over and over."""
        from mux.sim.ctl import AsyncSimControl

        stamps: dict[tuple[str, int, str], int] = {}
        period = 1.0 / self.params.latency_rate
        end = time.monotonic() + self.params.latency_seconds

        async def drive(i: int, sim: SimHost) -> None:
            host = f"h{i}"
            ctl = await AsyncSimControl.connect(sim.dir)
            await asyncio.sleep(period * i / self.plan.hosts)  # the hosts out of step
            try:
                while time.monotonic() < end:
                    t0 = time.monotonic()
                    [dom] = await ctl.create(name=f"bench-{t0:.3f}")
                    stamps[(host, dom["domid"], "new")] = sim.stamp()
                    await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))
                    t0 = time.monotonic()
                    await ctl.shutdown(dom["domid"], "poweroff")
                    stamps[(host, dom["domid"], "shutdown")] = sim.stamp()
                    await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))
                    t0 = time.monotonic()
                    await ctl.destroy(dom["domid"])
                    stamps[(host, dom["domid"], "death")] = sim.stamp()
                    await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))
            finally:
                await ctl.close()

        first = len(self.seen.host_stream)
        await asyncio.gather(*(drive(i, s) for i, s in enumerate(self.sims)))
        await self._drain()
        to_host, to_pool, added = [], [], []
        for key, (domid, kind) in list(self.seen.kinds.items()):
            stamp = stamps.get((key[0], domid, kind))
            got_host = self.seen.host_stream.get(key)
            got_pool = self.seen.pool.get(key)
            if stamp is None or got_host is None or got_pool is None:
                continue
            to_host.append(got_host - stamp)
            to_pool.append(got_pool - stamp)
            added.append(got_pool - got_host)
        return {
            "events": len(self.seen.host_stream) - first,
            "change_to_host_stream": summarize(to_host),
            "change_to_pool_consumer": summarize(to_pool),
            "added_by_bridge": summarize(added),
        }

    async def _churn_phase(self, js, subs) -> dict:
        from mux.sim.ctl import AsyncSimControl

        info = await js.stream_info(names.DEFAULT_STREAM)
        before_msgs, before_bytes = info.state.messages, info.state.bytes
        before_host = len(self.seen.host_stream)
        before_pool = len(self.seen.pool)
        cpu_before = P.sample(self.bridges)
        daemons_before = P.sample(self.daemons, with_switches=False)
        server_before = P.cpu_ns(self.nats.pid) or 0
        busy_before = P.machine_busy_ns()
        t0 = time.monotonic_ns()

        probe = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WAKE_PROBE,
            str(max(1.0, self.churn_rate * 2.5)),  # about the events of a lifecycle
            str(self.params.churn_seconds),
            stdout=asyncio.subprocess.PIPE,
        )

        async def churn(sim: SimHost) -> None:
            ctl = await AsyncSimControl.connect(sim.dir, timeout=self.params.churn_seconds + 60)
            try:
                await ctl.churn(
                    self.params.churn_seconds, rate=self.churn_rate, seed=self.params.seed
                )
            finally:
                await ctl.close()

        await asyncio.gather(*(churn(s) for s in self.sims))
        t_churn = time.monotonic_ns()
        out, _ = await probe.communicate()
        try:
            wake_floor = round(float(out), 1)
        except ValueError:
            wake_floor = None
        await self._drain()
        t_drained = time.monotonic_ns()
        cpu_after = P.sample(self.bridges)
        daemons_after = P.sample(self.daemons, with_switches=False)
        server_after = P.cpu_ns(self.nats.pid) or 0
        busy_after = P.machine_busy_ns()
        info = await js.stream_info(names.DEFAULT_STREAM)
        msgs = info.state.messages - before_msgs
        stored = info.state.bytes - before_bytes
        events = len(self.seen.pool) - before_pool
        times = sorted(list(self.seen.pool.values())[before_pool:])
        span = (times[-1] - times[0]) if len(times) > 1 else 0
        bridge_cpu, bridge_switches = P.delta(cpu_before, cpu_after, self.bridges)
        daemon_cpu, _ = P.delta(daemons_before, daemons_after, self.daemons)
        return {
            "lifecycles_per_s_per_host": round(self.churn_rate, 2),
            "events": events,
            "host_events": len(self.seen.host_stream) - before_host,
            "seconds": round((t_churn - t0) / 1e9, 2),
            "drain_after_churn_s": round((t_drained - t_churn) / 1e9, 3),
            "pool_events_per_s": round(events / (span / 1e9), 1) if span else None,
            "bridge_cpu_us_per_event": round(bridge_cpu / 1e3 / events, 1) if events else None,
            "bridge_switches_per_event": round(bridge_switches / events, 2) if events else None,
            # The daemons' own cost per event, measured alike: what one Python wake-up per
            # event costs on this machine, for comparison.
            "daemon_cpu_us_per_event": round(daemon_cpu / 1e3 / events, 1) if events else None,
            "python_wake_us": wake_floor,
            "nats_server_cpu_us_per_event": (
                round((server_after - server_before) / 1e3 / events, 1) if events else None
            ),
            "machine_busy_share": round(
                (busy_after - busy_before) / ((t_drained - t0) * (os.cpu_count() or 1)), 3
            ),
            "stream_bytes_per_event": round(stored / msgs, 1) if msgs else None,
        }

    async def _burst_phase(self) -> dict:
        """Every guest of every host shut down at once, then destroyed: the pool consumer's
        throughput, as fast as the hosts, the bridges and NATS deliver it."""
        from mux.sim.ctl import AsyncSimControl

        before = len(self.seen.pool)
        start = time.monotonic_ns()

        async def burst(sim: SimHost) -> None:
            ctl = await AsyncSimControl.connect(sim.dir)
            try:
                await ctl.shutdown("all", "reboot")
                await ctl.destroy("all")
            finally:
                await ctl.close()

        await asyncio.gather(*(burst(s) for s in self.sims))
        await self._drain()
        times = sorted(t for t in self.seen.pool.values() if t >= start)
        events = len(self.seen.pool) - before
        span = (times[-1] - times[0]) / 1e9 if len(times) > 1 else 0.0
        return {
            "events": events,
            "seconds": round(span, 2),
            "pool_events_per_s": round(events / span, 1) if span else None,
        }

    async def _drain(self) -> None:
        """Until every event a daemon sent has come through the pool (or the time is up)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        quiet_since = time.monotonic()
        last = -1
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            host = set(self.seen.host_stream)
            if host <= set(self.seen.pool) and len(host) == last:
                if time.monotonic() - quiet_since > 0.5:
                    return
            else:
                quiet_since = time.monotonic()
            last = len(host)

    def _check(self) -> tuple[int, int]:
        lost = len(set(self.seen.host_stream) - set(self.seen.pool))
        return lost, self.seen.duplicates


def run_plan(plan: PoolPlan, params: PoolParams, tmp_root: str) -> dict:
    bench = PoolBench(plan, params, tmp_root)
    try:
        bench.start()
        try:
            import uvloop

            return uvloop.run(bench.measure())
        except ImportError:  # pragma: no cover - uvloop is a dependency
            return asyncio.run(bench.measure())
    finally:
        bench.stop()


def summary_line(row: dict) -> str:
    churn = row["churn"]
    parts = [
        f"{row['hosts']} x {row['domains']}:",
        f"{row['burst']['pool_events_per_s']} events/s through one consumer in a burst,",
        f"{churn['pool_events_per_s']} in the churn;",
        f"bridge {churn['bridge_cpu_us_per_event']} us CPU/event",
        f"(daemon {churn['daemon_cpu_us_per_event']} us),",
        f"{churn['stream_bytes_per_event']} B/event stored",
    ]
    if "latency" in row:
        lat = row["latency"]
        parts.append(
            f"; change->pool {_ms(lat['change_to_pool_consumer'])}, "
            f"bridge adds {_ms(lat['added_by_bridge'])}"
        )
    if "outage" in row:
        o = row["outage"]
        parts.append(
            f"; after {o['seconds']:.0f} s without NATS ({o['events_during']} events) "
            f"caught up in {o['catch_up_s']} s"
        )
    parts.append(f"; lost={row['lost']} duplicates={row['duplicates']}")
    return " ".join(parts)


def _ms(d: dict | None) -> str:
    """p50 / p99 of a latency summary, in ms."""
    if not d or not d.get("n"):
        return "-"
    return f"p50 {d['p50_us'] / 1000:.2f} / p99 {d['p99_us'] / 1000:.2f} ms"


def markdown(rows: list[dict], meta: dict) -> str:
    out = [
        "# xenmux bench --pool",
        "",
        f"{meta['machine']}; {meta['date']}; {meta['mode']} run; nats-server "
        f"{meta.get('nats_server', '?')}.",
        "",
        "| hosts x domains | burst events/s (one consumer) | churn events/s | bridge CPU/event "
        "| (daemon CPU/event) | "
        "(one Python wake-up) | "
        "nats-server CPU/event | storage/event | change->host stream | change->pool consumer "
        "| bridge adds | lost | dup |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        c = r.get("churn", {})
        lat = r.get("latency")

        out.append(
            f"| {r['hosts']} x {r['domains']:,} | "
            f"{r.get('burst', {}).get('pool_events_per_s', '-')} | "
            f"{c.get('pool_events_per_s', '-')} | "
            f"{c.get('bridge_cpu_us_per_event', '-')} us | "
            f"({c.get('daemon_cpu_us_per_event', '-')} us) | "
            f"({c.get('python_wake_us', '-')} us) | "
            f"{c.get('nats_server_cpu_us_per_event', '-')} us | "
            f"{c.get('stream_bytes_per_event', '-')} B | "
            f"{_ms(lat and lat['change_to_host_stream'])} | "
            f"{_ms(lat and lat['change_to_pool_consumer'])} | "
            f"{_ms(lat and lat['added_by_bridge'])} | {r.get('lost', '-')} | "
            f"{r.get('duplicates', '-')} |"
        )
    for r in rows:
        if "outage" in r:
            o = r["outage"]
            out += [
                "",
                f"NATS outage at {r['hosts']} x {r['domains']:,}: nats-server SIGKILLed for "
                f"{o['seconds']:.0f} s while the hosts churned ({o['events_during']} events); "
                f"after its restart the pool consumer had every one of them in "
                f"{o['catch_up_s']} s ({o['catch_up_events_per_s']} events/s).",
            ]
    out += ["", "Parameters: " + json.dumps(meta["params"]), ""]
    return "\n".join(out)


def write(out_dir: str, rows: list[dict], meta: dict) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    jpath = os.path.join(out_dir, "pool.json")
    mpath = os.path.join(out_dir, "pool.md")
    with open(jpath, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(mpath, "w") as f:
        f.write(markdown(rows, meta))
    return [jpath, mpath]


def plans(quick: bool, sizes: list[tuple[int, int]] | None) -> list[PoolPlan]:
    if sizes:
        todo = [PoolPlan(h, d, latency=h <= 8) for h, d in sizes]
    elif quick:
        todo = [PoolPlan(2, 50)]
    else:
        todo = [PoolPlan(8, 1000), PoolPlan(64, 100, latency=False)]
    todo[0].outage = True
    return todo


def params_for(
    quick: bool, seconds: float | None, rate: float | None, outage: float | None = None
) -> PoolParams:
    if quick:
        # A smoke run (make test runs it: tests/pool/test_pool_bench_smoke.py): every phase,
        # briefly.
        return PoolParams(
            latency_seconds=1.0,
            latency_rate=5,
            churn_seconds=1.0,
            churn_rate=10.0,
            outage_seconds=1.0 if outage is None else outage,
        )
    p = PoolParams()
    if seconds:
        p.latency_seconds = p.churn_seconds = seconds
    if rate:
        p.churn_rate = rate
    if outage is not None:
        p.outage_seconds = outage
    return p


def run(args, machine: str) -> int:
    """The `--pool` mode of `xenmux bench`: exit status 1 when an event was lost or doubled."""
    from mux.bench.natsserver import PeerMissing, nats_server_version

    params = params_for(args.quick, args.pool_seconds, args.pool_rate, args.pool_outage)
    todo = plans(args.quick, args.pool_sizes)
    try:
        version = nats_server_version()
    except PeerMissing as exc:
        print(f"xenmux bench --pool: {exc}", file=sys.stderr)
        return 2
    meta = {
        "machine": machine,
        "mode": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "params": asdict(params),
        "nats_server": version,
    }
    tmp_root = tempfile.mkdtemp(prefix="xmbp-")
    rows: list[dict] = []
    failed = False
    try:
        for plan in todo:
            print(f"pool {plan.hosts} x {plan.domains}: measuring", flush=True)
            try:
                row = run_plan(plan, params, tmp_root)
            except Exception as exc:  # one failed run must not hide the others' results
                row = {"hosts": plan.hosts, "domains": plan.domains, "error": str(exc)}
            rows.append(row)
            if row.get("error"):
                failed = True
                print(f"pool {plan.hosts} x {plan.domains}: error: {row['error']}", flush=True)
            else:
                failed |= bool(row["lost"] or row["duplicates"] or row["missed"])
                print(summary_line(row), flush=True)
            write(args.out, rows, meta)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    print(f"results: {', '.join(write(args.out, rows, meta))}", flush=True)
    return 1 if failed else 0
