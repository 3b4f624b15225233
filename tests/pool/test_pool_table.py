"""The pool's table: `pool domains` shows a migrated VM where it runs, `pool wait` waits for
a VM that is dead and living nowhere else, with `xenmux wait`'s exit statuses."""

from __future__ import annotations

import json
import time

from daemonhelpers import json_lines, until
from poolhelpers import consumer_count, pool_vms


def pool_domains(pool, url: str) -> list[dict]:
    got = pool.run("pool", "domains", "--nats", url, "--json")
    assert got.returncode == 0, got.stderr
    return json_lines(got.stdout)


def where(url: str, uuid: str) -> list[tuple]:
    return [(v["host"], v["state"]) for v in pool_vms(url) if v["uuid"] == uuid]


def wait_cmd(pool, url: str, uuid: str, *extra: str):
    return pool.start(
        [*pool_cmd(), "pool", "wait", "--nats", url, "--uuid", uuid, *extra],
        "pool-wait",
        ok=(0, 11, 12, 13, 14, 15, 20, 21, 22, 1),
    )


def pool_cmd() -> list[str]:
    from simhelpers import sim_command

    return sim_command()


def test_a_migrated_vm_is_shown_where_it_runs_and_pool_wait_follows_it(pool):
    nats = pool.nats()
    a, b = pool.shared_host("a"), pool.shared_host("b.pool.example")
    pool.bridge(a, nats.url)
    pool.bridge(b, nats.url)
    [vm] = a.sim.ctl.create(name="leaving")
    uuid, domid = vm["uuid"], vm["domid"]
    until(lambda: where(nats.url, uuid) == [("a", "running")])
    shown = [(v["host"], v["state"]) for v in pool_domains(pool, nats.url) if v["uuid"] == uuid]
    assert shown == [("a", "running")]
    waiter = wait_cmd(pool, nats.url, uuid, "--grace", "30")
    until(lambda: consumer_count(nats.url) == 1)  # the waiter has read the table
    # A migration: suspended on a, the same UUID new on b, then destroyed on a.
    a.sim.ctl.suspend(domid)
    until(lambda: where(nats.url, uuid) == [("a", "shutdown")])
    [moved] = b.sim.ctl.create(uuid=uuid, name="moved")
    until(lambda: where(nats.url, uuid) == [(b.name, "running")])
    a.sim.ctl.destroy(domid)
    # a's death and release: still on b, never dead (watched until a's daemon has released
    # it, and a while after, for the bridge to publish it).
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline or any(r["uuid"] == uuid for r in daemon_rows_of(a)):
        assert where(nats.url, uuid) == [(b.name, "running")]
        time.sleep(0.1)
    assert waiter.proc.poll() is None, waiter.lines()  # it lives on b: no verdict
    b.sim.ctl.shutdown(moved["domid"], "poweroff")
    # Seen shut down before it goes: a death whose shutdown no scan saw has no reason.
    until(lambda: where(nats.url, uuid) == [(b.name, "shutdown")])
    b.sim.ctl.destroy(moved["domid"])
    assert waiter.proc.wait(30) == 0, waiter.stderr()
    [death] = waiter.lines()
    assert (death["event"], death["host"], death["reason"]) == ("death", b.name, "poweroff")


def daemon_rows_of(host) -> list[dict]:
    with host.daemon.client() as c:
        return c.list()


def test_pool_wait_exit_statuses(pool):
    nats = pool.nats()
    a = pool.shared_host("a")
    pool.bridge(a, nats.url)
    made = [a.sim.ctl.create(name=f"w{i}")[0] for i in range(3)]
    rows = {n: d["uuid"] for n, d in zip((2, 3, 4), made, strict=True)}
    domid = {n: d["domid"] for n, d in zip((2, 3, 4), made, strict=True)}
    until(lambda: all(where(nats.url, u) == [("a", "running")] for u in rows.values()))
    crash = wait_cmd(pool, nats.url, rows[2])
    gone = wait_cmd(pool, nats.url, rows[3], "--grace", "1")
    until(lambda: consumer_count(nats.url) == 2)  # both waiters have read the table
    missing = pool.run("pool", "wait", "--nats", nats.url, "--uuid", "no-such-uuid")
    assert missing.returncode == 22 and "no VM no-such-uuid" in missing.stderr
    late = pool.run("pool", "wait", "--nats", nats.url, "--uuid", rows[4], "--timeout", "1")
    assert late.returncode == 1 and "timed out" in late.stderr
    a.sim.ctl.shutdown(domid[2], "crash")
    until(lambda: where(nats.url, rows[2]) == [("a", "shutdown")])
    a.sim.ctl.destroy(domid[2])
    assert crash.proc.wait(30) == 13, crash.stderr()
    # Suspended and destroyed, and it appears nowhere within the grace: a suspend's status.
    a.sim.ctl.suspend(domid[3])
    until(lambda: where(nats.url, rows[3]) == [("a", "shutdown")])
    t = time.monotonic()
    a.sim.ctl.destroy(domid[3])
    assert gone.proc.wait(30) == 12, gone.stderr()
    assert time.monotonic() - t >= 1.0  # held for the grace
    assert json.loads(gone.out.read_text())["reason"] == "suspend"
    a.sim.ctl.destroy(domid[4])  # the shared host as it was


def test_pool_domains_lists_every_vm_of_every_host(pool):
    nats = pool.nats()
    a, b = pool.shared_host("a"), pool.shared_host("b.pool.example")
    pool.bridge(a, nats.url)
    pool.bridge(b, nats.url)
    [rebooting] = a.sim.ctl.create(name="rebooting")
    until(lambda: where(nats.url, rebooting["uuid"]) == [("a", "running")])
    a.sim.ctl.shutdown(rebooting["domid"], "reboot")
    until(lambda: where(nats.url, rebooting["uuid"]) == [("a", "shutdown")])
    vms = pool_domains(pool, nats.url)
    expect = {(h.name, r["domid"], r["uuid"]) for h in (a, b) for r in h.sim.ctl.list()}
    # dom0 of each sim has the same all-zero UUID: it is one VM to the pool, shown once.
    assert {(v["host"], v["domid"], v["uuid"]) for v in vms if v["domid"]} == {
        e for e in expect if e[1]
    }
    assert all(set(v) >= {"uuid", "host", "domid", "state", "name"} for v in vms)
    table = pool.run("pool", "domains", "--nats", nats.url)
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["UUID", "HOST", "DOMID", "STATE", "REASON", "NAME"]
    assert any(f" {b.name} " in line for line in lines[1:])
    a.sim.ctl.destroy(rebooting["domid"])  # the shared host as it was
