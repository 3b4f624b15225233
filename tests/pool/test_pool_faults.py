"""Exactly once, in each host's order, whatever stops: nats-server, a cluster node, the bridge.

Each host's own log (`xenmux watch` on its daemon) is the reference: the pool's events of
that host, in pool order, must be that log, no more, no less.
"""

from __future__ import annotations

import time

import pytest
from conftest import (
    assert_exactly_once,
    bucket_rows,
    bucket_values,
    daemon_rows,
    stream_messages,
    wait_for_pool,
)
from simhelpers import sim_command


def churn(pool, host, seconds: float, rate: int = 40, seed: int = 1):
    return pool.start(
        [
            *sim_command(),
            *("sim-ctl", "--dir", str(host.sim.dir), "churn"),
            *("--seconds", str(seconds), "--rate", str(rate), "--seed", str(seed)),
        ],
        f"churn-{host.name}",
    )


def settle(pool, url: str, hosts, watch) -> list[dict]:
    """Once churn is over: the pool has caught up, and the bucket is every daemon's table."""
    lines = wait_for_pool(watch, hosts, timeout=60)
    time.sleep(0.5)  # anything extra (a duplicate) would have arrived by now
    lines = watch.lines()
    assert_exactly_once(lines, hosts)
    assert_exactly_once(stream_messages(url), hosts)
    deadline = time.monotonic() + 30
    while True:
        diff = bucket_difference(url, hosts)
        if not diff:
            return lines
        assert time.monotonic() < deadline, f"the bucket is not the daemons' tables: {diff}"
        time.sleep(0.2)


def bucket_difference(url: str, hosts) -> dict:
    """(host, domid) -> (bucket's row, daemon's row) wherever they differ."""
    try:
        values = bucket_values(url)
    except Exception as exc:  # a replicated bucket electing its leader: ask again
        return {"error": repr(exc), "bucket": _kv_cluster(url)}
    out = {}
    for h in hosts:
        bucket, daemon = bucket_rows(values, h.name), daemon_rows(h)
        for domid in set(bucket) | set(daemon):
            if bucket.get(domid) != daemon.get(domid):
                out[(h.name, domid)] = (bucket.get(domid), daemon.get(domid))
    return out


def test_nats_server_killed_and_restarted_mid_stream(pool):
    nats = pool.nats()
    hosts = [pool.host("a"), pool.host("b")]
    watch = pool.watch(nats.url, "--since", "1")
    bridges = [pool.bridge(h, nats.url) for h in hosts]
    durable = pool.watch(nats.url, "--since", "1", "--durable", "ops")
    churners = [churn(pool, h, 3, seed=i) for i, h in enumerate(hosts)]
    time.sleep(1.2)
    nats.kill()
    time.sleep(1.0)
    nats.restart()
    for c in churners:
        assert c.proc.wait(60) == 0, c.stderr()
    lines = settle(pool, nats.url, hosts, watch)
    assert len(lines) > 40
    # Both watchers resumed after the last message they printed: each event once.
    assert_exactly_once(wait_for_pool(durable, hosts), hosts)
    for bridge in bridges:
        log = bridge.stderr()
        # Said once when it started, once when it ended.
        assert log.count("keeping the place") == 1, log
        assert log.count("reachable again") == 1, log


def test_cluster_node_killed_under_a_replicated_stream(pool):
    servers = pool.cluster(3)
    urls = ",".join(s.url for s in servers)
    hosts = [pool.host("a"), pool.host("b")]
    bridges = [pool.bridge(h, urls) for h in hosts]
    watch = pool.watch(urls, "--since", "1")
    info = stream_info(servers[0].url)
    assert info["replicas"] == 3, info  # made with --replicas 3 on a cluster by default
    churners = [churn(pool, h, 2.5, seed=10 + i) for i, h in enumerate(hosts)]
    time.sleep(1.5)
    leader = next(s for s in servers if s.name == info["leader"])
    leader.kill()
    for c in churners:
        assert c.proc.wait(60) == 0, c.stderr()
    alive = next(s for s in servers if s is not leader)
    settle(pool, alive.url, hosts, watch)
    leader.restart()
    for bridge in bridges:
        assert bridge.proc.poll() is None, bridge.stderr()


def _kv_cluster(url: str) -> str:
    import asyncio

    import nats

    async def read() -> str:
        nc = await nats.connect(url, allow_reconnect=False)
        try:
            info = await nc.jsm().stream_info("KV_xenmux-domains")
            return f"{info.cluster} {info.state}"
        except Exception as exc:
            return repr(exc)
        finally:
            await nc.close()

    return asyncio.run(read())


def stream_info(url: str) -> dict:
    import asyncio

    import nats

    async def read() -> dict:
        nc = await nats.connect(url, allow_reconnect=False)
        try:
            deadline = time.monotonic() + 20
            while True:
                info = await nc.jsm().stream_info("xenmux-events")
                if info.cluster and info.cluster.leader:
                    return {"replicas": info.config.num_replicas, "leader": info.cluster.leader}
                assert time.monotonic() < deadline, "no stream leader"
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    return asyncio.run(read())


def needs_journal(host) -> None:
    """A bridge restarted, or a daemon restarted under it, resumes by the daemon's cursor:
    with a daemon that keeps no journal there is nothing to resume from (events of the
    downtime would come as made-up `missed` ones, which the exact comparison rejects)."""
    with host.daemon.client() as c:
        if "history" not in c.hello():
            pytest.skip("the daemon keeps no journal (issue 12): nothing to resume from")


def test_bridge_killed_mid_publish_and_restarted(pool):
    nats = pool.nats()
    hosts = [pool.host("a"), pool.host("b")]
    needs_journal(hosts[0])
    watch = pool.watch(nats.url, "--since", "1")
    bridges = [pool.bridge(h, nats.url) for h in hosts]
    churners = [churn(pool, h, 4, rate=60, seed=20 + i) for i, h in enumerate(hosts)]
    time.sleep(1.5)
    bridges[0].kill()  # SIGKILL: whatever was in flight may or may not be stored
    time.sleep(1.0)
    restarted = pool.bridge(hosts[0], nats.url)
    for c in churners:
        assert c.proc.wait(60) == 0, c.stderr()
    settle(pool, nats.url, hosts, watch)
    # It resumed from the stream's cursor: the daemon replayed, no snapshot was needed.
    assert "daemon snapshot" not in restarted.stderr(), restarted.stderr()


def test_daemon_restarted_under_the_bridge(pool):
    nats = pool.nats()
    hosts = [pool.host("a")]
    needs_journal(hosts[0])
    watch = pool.watch(nats.url, "--since", "1")
    bridge = pool.bridge(hosts[0], nats.url)
    c = churn(pool, hosts[0], 4, rate=40, seed=30)
    time.sleep(1.0)
    hosts[0].restart_daemon()  # SIGTERM
    time.sleep(1.0)
    hosts[0].restart_daemon(kill=True)  # SIGKILL: its journal has what it sent
    assert c.proc.wait(60) == 0, c.stderr()
    settle(pool, nats.url, hosts, watch)
    assert bridge.proc.poll() is None, bridge.stderr()
