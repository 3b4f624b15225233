"""Exactly once, in each host's order, whatever stops: nats-server, a cluster node, the bridge.

Each host's own log (`xenmux watch` on its daemon) is the reference: the pool's events of
that host, in pool order, must be that log, no more, no less.
"""

from __future__ import annotations

import re
import time

from poolhelpers import (
    assert_exactly_once,
    brief,
    bucket_rows,
    bucket_values,
    daemon_rows,
    stream_messages,
    until_exactly_once,
    wait_for_pool,
)
from simhelpers import sim_command

from mux.bridge.names import checkpoint_key, encode_host


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
    wait_for_pool(watch, hosts, timeout=60)
    time.sleep(0.5)  # anything extra (a duplicate) would have arrived by now
    lines = until_exactly_once(watch.lines, hosts)
    until_exactly_once(lambda: stream_messages(url), hosts)
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
    hosts = [pool.shared_host("a"), pool.shared_host("b.pool.example")]
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
    hosts = [pool.shared_host("a"), pool.shared_host("b.pool.example")]
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


def test_bridge_killed_mid_publish_and_a_daemon_restarted_under_its_bridge(pool):
    """Host a's bridge is SIGKILLed mid-publish and restarted; host b's daemon is restarted
    (SIGTERM, then SIGKILL) under its bridge. Both resume by cursor (`since`)."""
    nats = pool.nats()
    a, b = pool.shared_host("a"), pool.shared_host("b.pool.example")
    watch = pool.watch(nats.url, "--since", "1")
    killed, kept = pool.bridge(a, nats.url), pool.bridge(b, nats.url)
    churners = [churn(pool, h, 3, rate=60, seed=20 + i) for i, h in enumerate((a, b))]
    time.sleep(1.0)
    killed.kill()  # SIGKILL: whatever was in flight may or may not be stored
    b.restart_daemon()  # SIGTERM
    restarted = pool.bridge(a, nats.url)
    b.restart_daemon(kill=True)  # SIGKILL: its journal has what it sent
    for c in churners:
        assert c.proc.wait(60) == 0, c.stderr()
    lines = settle(pool, nats.url, [a, b], watch)
    # a's new bridge resumed from the stream's cursor: the daemon replayed, no snapshot.
    assert "daemon snapshot" not in restarted.stderr(), restarted.stderr()
    # What changed while b's daemon was down came after its restart as `late` events, in
    # the pool as on the host; b's bridge took a snapshot only at its first start.
    assert any(e.get("late") for e in lines if e["host"] == b.name), [brief(e) for e in lines]
    assert kept.proc.poll() is None, kept.stderr()
    assert kept.stderr().count("daemon snapshot") == 1, kept.stderr()


def test_after_a_gap_the_bucket_is_the_daemons_snapshot(pool):
    """A bridge away longer than its daemon's journal reaches back: the daemon answers its
    cursor with a gap and a snapshot; the stream gets events made up (`missed`) for what
    changed, the bucket the whole snapshot, then the live events follow."""
    nats = pool.nats()
    a = pool.host(
        "gap", daemon_args=("--journal-max-bytes", "16384", "--checkpoint-interval", "0.2")
    )
    watch = pool.watch(nats.url, "--since", "1")
    bridge = pool.bridge(a, nats.url)
    assert churn(pool, a, 1, rate=20, seed=40).proc.wait(60) == 0
    wait_for_pool(watch, [a])
    assert bridge.stop() == 0
    before = bucket_values(nats.url)[checkpoint_key(encode_host(a.name))]["seq"]
    assert churn(pool, a, 3, rate=60, seed=41).proc.wait(60) == 0
    with a.daemon.client() as c:
        assert c.hello()["oldest_seq"] > before + 1  # the journal no longer reaches back
    restarted = pool.bridge(a, nats.url)
    [snapshot_seq] = [
        int(m) for m in re.findall(r"daemon snapshot at \w+:(\d+)", restarted.stderr())
    ]
    assert churn(pool, a, 1, rate=20, seed=42).proc.wait(60) == 0

    # Every event the daemon sent before the bridge stopped and after the snapshot, once,
    # in order; what came between is in the stream as made-up events. The host's log is read
    # again at every look: its last `released` may still be on its way when the churn exits.
    def own() -> list[tuple]:
        return [brief(e) for e in a.own_events() if not before < e["seq"] <= snapshot_seq]

    def pooled() -> list[tuple]:
        return [brief(e) for e in watch.lines() if not e.get("missed")]

    deadline = time.monotonic() + 30
    while (got := pooled()) != (mine := own()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert got == mine
    missed = [e for e in watch.lines() if e.get("missed")]
    assert missed and all(e["host"] == a.name for e in missed)
    deadline = time.monotonic() + 30
    while diff := bucket_difference(nats.url, [a]):
        assert time.monotonic() < deadline, f"the bucket is not the daemon's table: {diff}"
        time.sleep(0.2)
