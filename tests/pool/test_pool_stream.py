"""The pool stream end to end: simulated hosts, their daemons and bridges, real nats-server."""

from __future__ import annotations

from daemonhelpers import json_lines, until
from poolhelpers import (
    bucket_rows,
    bucket_values,
    daemon_rows,
    stream_messages,
    until_exactly_once,
    wait_for_pool,
)


def every_kind(host) -> int:
    """new, shutdown, resumed, death (with and without a reason), released, on one host;
    returns the domid of one of its domains."""
    ctl = host.sim.ctl
    [dom] = ctl.create(name=f"{host.name}-web")
    [off] = ctl.create(name=f"{host.name}-off")
    [gone] = ctl.create(name=f"{host.name}-gone")
    ctl.suspend(dom["domid"])
    until(lambda: _state(host, dom["domid"]) == "shutdown")
    ctl.resume(dom["domid"])
    until(lambda: _state(host, dom["domid"]) == "running")
    ctl.shutdown(dom["domid"], "crash")
    ctl.destroy(dom["domid"])
    ctl.shutdown(off["domid"], "poweroff")
    ctl.destroy(off["domid"])
    ctl.destroy(gone["domid"])
    # Done once the host's own log has the last of it (the pool is compared with that log).
    until(
        lambda: any(
            e["event"] == "released" and e["uuid"] == gone["uuid"] for e in host.own_events()
        )
    )
    return off["domid"]


def _state(host, domid):
    with host.daemon.client() as c:
        return {r["domid"]: r["state"] for r in c.list()}.get(domid)


def test_every_kind_of_event_reaches_pool_watch_with_its_host_and_filters_pick_it_out(pool):
    nats = pool.nats()
    a, b = pool.shared_host("a"), pool.shared_host("b.pool.example")
    watch = pool.watch(nats.url, "--since", "1")
    pool.bridge(a, nats.url)
    pool.bridge(b, nats.url)
    domid = every_kind(a)
    every_kind(b)
    wait_for_pool(watch, [a, b])
    lines = until_exactly_once(watch.lines, [a, b])
    for host in (a, b):
        kinds = {e["event"] for e in lines if e["host"] == host.name}
        assert kinds == {"new", "shutdown", "resumed", "death", "released"}
    # A host name that is not a subject token is encoded in the subject, kept in the payload.
    messages = stream_messages(nats.url)
    assert {m["subject"].split(".")[2] for m in messages} == {"a", "b_2epool_2eexample"}
    assert all(m["msg_id"] == f"{m['msg_id'].split(':')[0]}:{m['seq']}" for m in messages)
    # The bucket is every daemon's table.
    until(
        lambda: all(bucket_rows(bucket_values(nats.url), h.name) == daemon_rows(h) for h in (a, b))
    )
    check_filters(pool, nats.url, messages, domid)


def check_filters(pool, nats_url: str, everything: list[dict], domid: int) -> None:
    """pool watch's filters pick out of the stream what they say, in stream order (`domid`:
    one of host a's domains)."""
    b = "b.pool.example"
    uuid = next(e["uuid"] for e in everything if e["host"] == b and e["event"] == "resumed")
    cases = {
        ("--host", b): lambda e: e["host"] == b,
        ("--host", "a", "--domid", str(domid)): lambda e: e["host"] == "a" and e["domid"] == domid,
        ("--events", "death"): lambda e: e["event"] == "death",
        ("--events", "new,released"): lambda e: e["event"] in ("new", "released"),
        ("--uuid", uuid): lambda e: e["uuid"] == uuid,
    }
    watch = ("pool", "watch", "--nats", nats_url, "--timeout", "1")
    *filtered, since_now, since_5, pretty = pool.run_all(
        *((*watch, "--since", "1", *flags) for flags in cases),
        (*watch, "--since", "0s"),
        (*watch, "--since", "5"),
        (*watch, "--since", "1", "--pretty", "--host", "a", "--events", "death"),
    )
    for (flags, wanted), got in zip(cases.items(), filtered, strict=True):
        assert got.returncode == 0, got.stderr
        expect = [e["pool_seq"] for e in everything if wanted(e)]
        assert expect, flags
        assert [e["pool_seq"] for e in json_lines(got.stdout)] == expect, flags
    # --since a time: only what came after it; --since a stream sequence: from there.
    assert (since_now.returncode, since_now.stdout) == (0, ""), since_now.stderr
    assert [e["pool_seq"] for e in json_lines(since_5.stdout)] == [
        e["pool_seq"] for e in everything[4:]
    ]
    # A durable consumer keeps its place between runs: the second run starts after the first.
    runs = [
        pool.run(
            *("pool", "watch", "--nats", nats_url, "--since", "1", "--durable", "ops"),
            *("--count", "3", "--timeout", "10"),
        )
        for _ in range(2)
    ]
    assert [[e["pool_seq"] for e in json_lines(r.stdout)] for r in runs] == [
        [e["pool_seq"] for e in everything[:3]],
        [e["pool_seq"] for e in everything[3:6]],
    ], [r.stderr for r in runs]
    rows = pretty.stdout.splitlines()
    header = ["TIME", "POOL_SEQ", "HOST", "DOMID", "NAME", "EVENT", "REASON", "UUID"]
    assert rows[0].split() == header
    deaths = [e for e in everything if e["host"] == "a" and e["event"] == "death"]
    assert [r.split()[1] for r in rows[1:]] == [str(e["pool_seq"]) for e in deaths]
    assert all(r.split()[2] == "a" and " death " in r for r in rows[1:]), rows
    # The columns line up with the header.
    assert all(
        r.index(e["uuid"]) == rows[0].index("UUID") for r, e in zip(rows[1:], deaths, strict=True)
    )
