"""What tests/pool's fixtures and tests share: real nats-server, simulated hosts with
daemons, bridges, and readers of the stream and the bucket. The fixtures, and how a test
uses them, are in tests/pool/conftest.py.

A module of its own, not that conftest.py: a test that imported from `conftest` got
whichever conftest module pytest had loaded first, so tests/pool could not be collected
with bench/ in one run (bench has a conftest.py of its own).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemonhelpers import DaemonHandle, start_daemon, until
from simhelpers import REPO, SimHandle, short_dir, sim_command, start_sim, terminate

from mux.bench.natsserver import (
    NatsServer,
    PeerMissing,
    listening_addresses,
    nats_server,
    start_cluster,
)
from mux.bridge.names import checkpoint_key, encode_host
from mux.protocol import EVENT_KINDS


def read_json_lines(path: Path) -> list[dict]:
    """The complete JSON lines of a file another process is still writing."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


class Proc:
    """A command whose stdout goes to a file and stderr to another."""

    def __init__(
        self, args: list[str], workdir: Path, name: str, env=None, ok=(0, -signal.SIGKILL)
    ) -> None:
        self.args = args
        self.name = name
        self.ok = ok  # the exit statuses that are no error at teardown
        self.out = workdir / f"{name}-{time.monotonic_ns()}.out"
        self.err = self.out.with_suffix(".err")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, cwd=REPO, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[dict]:
        return read_json_lines(self.out)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        terminate(self.proc, self.name, timeout)
        return self.proc.returncode


@dataclass
class Host:
    name: str
    sim: SimHandle
    daemon: DaemonHandle
    log: Proc  # `xenmux watch` against the daemon: the host's own record of its events
    daemon_args: tuple[str, ...] = ()
    # The daemon's seq of the snapshot the test's first bridge started from: the pool has
    # the host's events after it (None: no bridge yet in this test).
    since: int | None = None

    def own_events(self) -> list[dict]:
        """The host's own log from where the test's pool stream starts."""
        since = self.since or 0
        return [e for e in self.log.lines() if not e.get("missed") and e.get("seq", 0) > since]

    def restart_daemon(self, *, kill: bool = False) -> None:
        if kill:
            self.daemon.proc.send_signal(signal.SIGKILL)
            self.daemon.proc.wait(10)
            if os.path.lexists(self.daemon.sock):
                os.unlink(self.daemon.sock)
        else:
            self.daemon.stop()
        self.daemon = start_daemon(self.sim, *DAEMON_ARGS, *self.daemon_args, sock=self.daemon.sock)


DAEMON_ARGS = ("--shutdown-poll", "0.05", "--full-scan", "5")


SNAPSHOT_LINE = re.compile(r"daemon snapshot at \S+:(\d+)")


class Pool:
    def __init__(self, workdir: Path, sim_factory, shared: SharedHosts | None = None) -> None:
        self.workdir = workdir
        self.sim_factory = sim_factory
        self.shared = shared
        self.servers: list[NatsServer] = []
        self.hosts: list[Host] = []
        self.procs: list[Proc] = []

    # -- NATS ------------------------------------------------------------------------------

    @staticmethod
    def need_nats_server() -> None:
        """Skip the test, saying why and what to run, when nats-server is nowhere."""
        try:
            nats_server()
        except PeerMissing as exc:
            pytest.skip(str(exc))

    def nats(self, **kw) -> NatsServer:
        self.need_nats_server()
        server = NatsServer(self.workdir, f"n{len(self.servers) + 1}", **kw)
        self.servers.append(server)
        server.start()
        self.check_loopback(server)
        return server

    def cluster(self, size: int = 3) -> list[NatsServer]:
        self.need_nats_server()
        servers = start_cluster(self.workdir, size)
        self.servers.extend(servers)
        for s in servers:
            self.check_loopback(s)
        return servers

    @staticmethod
    def check_loopback(server: NatsServer) -> None:
        addresses = listening_addresses(server.pid)
        assert addresses, f"nats-server {server.pid} listens nowhere"
        assert all(a.startswith("127.0.0.1:") for a in addresses), addresses

    # -- hosts -----------------------------------------------------------------------------

    def host(self, name: str, domains: int = 6, daemon_args: tuple[str, ...] = ()) -> Host:
        sim = self.sim_factory(domains=domains)
        daemon = start_daemon(sim, *DAEMON_ARGS, *daemon_args)
        # `xenmux watch` ends on SIGTERM with 128 + 15 (the default handler's -15 before).
        # Every kind, as the bridge follows them (paused/unpaused included: the churn's boots
        # unpause what they build).
        log = self.start(
            [*sim_command(), "watch", "--socket", daemon.sock, "--events", ",".join(EVENT_KINDS)],
            f"log-{name}",
            ok=(-signal.SIGTERM, 128 + signal.SIGTERM),
        )
        host = Host(name, sim, daemon, log, daemon_args)
        self.hosts.append(host)
        # The log must be subscribed before anything happens on the host.
        until(lambda: daemon.stats()["subscribers"] >= 1, timeout=20)
        return host

    def shared_host(self, name: str) -> Host:
        """One of the hosts every test here shares (started at its first use)."""
        assert self.shared is not None
        host = self.shared.get(name)
        host.since = None
        return host

    # -- commands --------------------------------------------------------------------------

    def start(self, args: list[str], name: str, env=None, **kw) -> Proc:
        proc = Proc(args, self.workdir, name, env, **kw)
        self.procs.append(proc)
        return proc

    def bridge(self, host: Host, urls: str, *extra: str, ready: bool = True, ok=None) -> Proc:
        """Start a bridge; with `ready`, return once it has written its host's table."""
        args = [
            *sim_command(),
            "bridge",
            "--nats",
            urls,
            "--host",
            host.name,
            "--socket",
            host.daemon.sock,
            "--metrics-addr",
            "",
            *extra,
        ]
        url = urls.split(",")[0]
        key = checkpoint_key(encode_host(host.name))
        # A bridge writes its host's table and checkpoint at every start: a checkpoint that
        # is not the one a bridge before it left.
        old = bucket_checkpoint(url, key) if ready else None
        proc = self.start(args, f"bridge-{host.name}", **({} if ok is None else {"ok": ok}))
        if ready:
            until(
                lambda: (
                    proc.proc.poll() is not None or bucket_checkpoint(url, key) not in (None, old)
                ),
                timeout=30,
            )
            assert proc.proc.poll() is None, proc.stderr()
            if host.since is None:
                # On a fresh stream it starts from the daemon's snapshot (logged before the
                # table is written).
                found = SNAPSHOT_LINE.search(proc.stderr())
                assert found, proc.stderr()
                host.since = int(found.group(1))
        return proc

    def watch(self, urls: str, *extra: str) -> Proc:
        return self.start([*sim_command(), "pool", "watch", "--nats", urls, *extra], "watch")

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*sim_command(), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
        )

    def run_all(self, *commands: tuple[str, ...], timeout: float = 60) -> list:
        """Several commands at once (each a `run`): their CompletedProcess, in order."""
        procs = [
            subprocess.Popen(
                [*sim_command(), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            for args in commands
        ]
        done = []
        try:
            for args, proc in zip(commands, procs, strict=True):
                out, err = proc.communicate(timeout=timeout)
                done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        return done

    def close(self) -> list[str]:
        errors = []
        for proc in reversed(self.procs):
            try:
                status = proc.stop()
                if status not in proc.ok:
                    errors.append(f"{proc.name} exited {status}: {proc.stderr()[-2000:]}")
            except AssertionError as exc:
                errors.append(str(exc))
        for host in self.hosts:
            try:
                host.daemon.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        for server in self.servers:
            try:
                server.remove()
            except AssertionError as exc:
                errors.append(str(exc))
            if server.dir.exists():
                errors.append(f"{server.dir} left behind")
        return errors


class SharedHosts:
    """The hosts every test of tests/pool shares, by name; stopped once they are all done."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sims: list[SimHandle] = []
        self.dirs: list[Path] = []
        self.pool = Pool(workdir, self._sim)
        self.by_name: dict[str, Host] = {}

    def _sim(self, domains: int) -> SimHandle:
        directory = short_dir(self.workdir, f"sim{len(self.sims)}")
        self.dirs.append(directory)
        handle = start_sim(directory, domains)
        self.sims.append(handle)
        return handle

    def get(self, name: str) -> Host:
        if name not in self.by_name:
            self.by_name[name] = self.pool.host(name)
        return self.by_name[name]

    def close(self) -> list[str]:
        errors = self.pool.close()
        for handle in self.sims:
            try:
                handle.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        for directory in self.dirs:
            shutil.rmtree(directory, ignore_errors=True)
        return errors


# -- reading the stream and the bucket from the test -------------------------------------


def stream_messages(url: str, stream: str = "xenmux-events", **connect) -> list[dict]:
    """Every message of the stream: its payload plus `pool_seq` and `msg_id`."""

    async def read() -> list[dict]:
        import nats

        nc = await nats.connect(url, allow_reconnect=False, **connect)
        try:
            jsm = nc.jsm()
            info = await jsm.stream_info(stream)
            out = []
            seq = info.state.first_seq
            while seq and seq <= info.state.last_seq:
                msg = await jsm.get_msg(stream, seq)
                out.append(
                    {
                        **json.loads(msg.data),
                        "pool_seq": msg.seq,
                        "subject": msg.subject,
                        "msg_id": (msg.headers or {}).get("Nats-Msg-Id"),
                    }
                )
                seq = msg.seq + 1
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def consumer_count(url: str, stream: str = "xenmux-events") -> int:
    """How many consumers the stream has: a `pool watch` or `pool wait` has read the table
    and follows the stream once its consumer is there."""

    async def read() -> int:
        import nats

        nc = await nats.connect(url, allow_reconnect=False)
        try:
            return (await nc.jsm().stream_info(stream)).state.consumer_count
        finally:
            await nc.close()

    return asyncio.run(read())


def bucket_keys(url: str, bucket: str = "xenmux-domains", **connect) -> set[str]:
    try:
        return set(bucket_values(url, bucket, **connect))
    except Exception:  # the bucket or the stream may not exist yet
        return set()


def pool_vms(url: str) -> list[dict]:
    """What `xenmux pool domains --json` prints, read in this process by the same code
    (cheaper than a command per poll)."""

    async def read() -> list[dict]:
        from mux.bridge.natsconn import NatsOptions, connect
        from mux.bridge.reader import load_pool
        from mux.bridge.vms import placements
        from mux.commands.pool_domains import vm_line

        conn = await connect(NatsOptions([url]), "tests")
        try:
            pool = await load_pool(conn, "xenmux-events", "xenmux-domains")
        finally:
            await conn.close()
        return [vm_line(r) for r in placements(pool.rows())]

    return asyncio.run(read())


def bucket_checkpoint(url: str, key: str) -> dict | None:
    try:
        return bucket_values(url).get(key)
    except Exception:  # the bucket or the stream may not exist yet
        return None


def bucket_values(url: str, bucket: str = "xenmux-domains", **connect) -> dict[str, dict]:
    """Every value of the bucket, read as `xenmux pool domains` reads it."""

    async def read() -> dict[str, dict]:
        import nats

        from mux.bridge.store import read_bucket

        nc = await nats.connect(url, allow_reconnect=False, **connect)
        try:
            js = nc.jetstream(timeout=2)
            await js.key_value(bucket)  # raises BucketNotFoundError before a bridge made it
            return await read_bucket(js, bucket)
        finally:
            await nc.close()

    return asyncio.run(read())


def brief(e: dict) -> tuple:
    return (e.get("seq"), e["event"], e["domid"], e["uuid"], e.get("reason"))


def assert_exactly_once(pool_events: list[dict], hosts: list[Host]) -> None:
    """Each host's events in the pool, in pool order, are exactly the host's own log."""
    for host in hosts:
        mine = [brief(e) for e in pool_events if e["host"] == host.name and not e.get("missed")]
        own = [brief(e) for e in host.own_events()]
        assert mine == own, (host.name, _first_difference(mine, own))
        seqs = [b[0] for b in mine]
        assert seqs == sorted(set(seqs)), f"{host.name}: seqs out of order or repeated"


def _first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"at {i}: pool {x} != host {y} (pool has {len(a)}, host {len(b)})"
    return f"pool has {len(a)} events, the host {len(b)}"


def until_exactly_once(read, hosts: list[Host], timeout: float = 30.0) -> list[dict]:
    """`read()`'s events once each host's are exactly its own log (asserted at the
    deadline): a host's log may still be taking its last events when its churn is over."""
    deadline = time.monotonic() + timeout
    while True:
        events = read()
        try:
            assert_exactly_once(events, hosts)
            return events
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def wait_for_pool(watch: Proc, hosts: list[Host], timeout: float = 30.0) -> list[dict]:
    """The watcher's events once it has as many of each host's as the host's own log."""

    def caught_up():
        lines = watch.lines()
        for host in hosts:
            own = len(host.own_events())
            got = sum(1 for e in lines if e["host"] == host.name and not e.get("missed"))
            if got < own:
                return None
        return lines

    return until(caught_up, timeout=timeout, interval=0.1)


def daemon_rows(host: Host) -> dict[int, tuple]:
    with host.daemon.client() as c:
        return {r["domid"]: (r["uuid"], r["state"], r.get("reason")) for r in c.list()}


def bucket_rows(values: dict[str, dict], host: str) -> dict[int, tuple]:
    from mux.bridge.names import encode_host, parse_key

    out = {}
    for key, row in values.items():
        parsed = parse_key(key)
        if parsed and parsed[0] == encode_host(host) and parsed[1] is not None:
            out[parsed[1]] = (row["uuid"], row["state"], row.get("reason"))
    return out
