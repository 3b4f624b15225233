"""The daemon end to end on a simulated host: what a subscriber sees for each lifecycle."""

from __future__ import annotations

import json
import os
import time

from daemonhelpers import brief, json_lines, quiet, take, until
from simhelpers import sim_command


def test_one_domain_lifecycle_reaches_its_subscriber(sim, daemon_factory):
    d = daemon_factory(sim)
    with d.subscribe([3]) as sub:
        (row,) = sub.snapshot
        assert row["domid"] == 3 and row["state"] == "running" and row["name"] == "guest-3"
        sim.ctl.shutdown(3, "reboot")
        events = take(sub, 1)
        sim.ctl.destroy(3)
        events += take(sub, 2)
    assert brief(events) == [
        ("shutdown", 3, "reboot"),
        ("death", 3, "reboot"),
        ("released", 3, None),
    ]
    assert len({e["uuid"] for e in events}) == 1 and events[0]["uuid"] == row["uuid"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + 3))


def test_other_domains_events_do_not_reach_a_domid_subscriber(sim, daemon_factory):
    d = daemon_factory(sim)
    with d.subscribe([2]) as two, d.subscribe(None) as everyone:
        sim.ctl.shutdown(5, "crash")
        sim.ctl.shutdown(2, "poweroff")
        assert brief(take(two, 1)) == [("shutdown", 2, "poweroff")]
        # One scan may see both: then they come in domid order.
        assert sorted(brief(take(everyone, 2))) == [
            ("shutdown", 2, "poweroff"),
            ("shutdown", 5, "crash"),
        ]
        assert quiet(two, 0.3) == []


def test_new_domain_is_announced_with_its_name(sim, daemon_factory):
    d = daemon_factory(sim)
    with d.subscribe(None) as sub:
        created = sim.ctl.create(name="web-01")
        (ev,) = take(sub, 1)
    dom = created[0]
    assert ev["event"] == "new" and ev["name"] == "web-01"
    assert ev["domid"] == dom["domid"] and ev["uuid"] == dom["uuid"]


def test_subscribe_to_a_domain_created_after_the_last_scan(sim, daemon_factory):
    """Creation fires nothing: the daemon asks the hypervisor before saying absent."""
    d = daemon_factory(sim, "--full-scan", "0")
    created = sim.ctl.create(introduce=False)  # never introduced: no firing at all
    dom = created[0]
    with d.subscribe([dom["domid"], 4000]) as sub:
        assert [r["domid"] for r in sub.snapshot] == [dom["domid"]]
        assert sub.absent == [4000]


def test_wait_survives_a_failed_migration_and_returns_at_death(sim, daemon_factory, procs):
    """The seed scenario: suspend for migration, migration fails, resume in place."""
    d = daemon_factory(sim, "--shutdown-poll", "0.05")
    waiter = procs.start([*sim_command(), "wait", "4", "--socket", d.sock])
    until(lambda: d.stats()["subscribers"] == 1)
    sim.ctl.suspend(4)
    until(lambda: d.stats()["events"]["shutdown"] == 1)
    sim.ctl.resume(4)  # fires nothing: the shutdown poll sees it
    until(lambda: d.stats()["events"]["resumed"] == 1)
    time.sleep(0.3)
    assert waiter.poll() is None, "wait returned on a suspend that was resumed"
    sim.ctl.shutdown(4, "poweroff")
    # A toolstack destroys once it has seen the shutdown: both in one scan would be a death
    # without reason (the docs allow it), and this test is about the reason.
    until(lambda: d.stats()["events"]["shutdown"] == 2)
    sim.ctl.destroy(4)
    assert waiter.wait(20) == 0
    (out,) = json_lines(waiter.stdout.read().decode())
    assert out["event"] == "death" and out["domid"] == 4 and out["reason"] == "poweroff"


def test_wait_exit_statuses(sim, daemon_factory, procs):
    d = daemon_factory(sim)
    cases = {
        1: ("crash", 13),
        2: ("reboot", 11),
        3: ("suspend", 12),
        5: ("watchdog", 14),
        6: ("soft_reset", 15),
        7: (None, 20),
    }
    waiters = {
        domid: procs.start([*sim_command(), "wait", str(domid), "--socket", d.sock])
        for domid in cases
    }
    until(lambda: d.stats()["subscribers"] == len(cases))
    # As a toolstack does: it destroys a domain once it has seen it shut down.
    for domid, (reason, _) in cases.items():
        if reason:
            sim.ctl.shutdown(domid, reason)
    until(lambda: d.stats()["events"]["shutdown"] == 5)
    for domid in cases:
        sim.ctl.destroy(domid)
    for domid, (_, status) in cases.items():
        assert waiters[domid].wait(20) == status, domid
    absent = procs.start([*sim_command(), "wait", "999", "--socket", d.sock])
    assert absent.wait(20) == 22
    assert b"no domain 999" in absent.stderr.read()


def test_zombie_gets_death_but_never_released(sim, daemon_factory, procs):
    d = daemon_factory(sim)
    at_death = procs.start([*sim_command(), "wait", "6", "--socket", d.sock])
    at_release = procs.start(
        [*sim_command(), "wait", "6", "--until", "released", "--timeout", "2", "--socket", d.sock]
    )
    with d.subscribe([6]) as sub:
        until(lambda: d.stats()["subscribers"] == 3)
        sim.ctl.shutdown(6, "crash")
        sim.ctl.destroy(6, zombie=True)
        assert brief(take(sub, 2)) == [("shutdown", 6, "crash"), ("death", 6, "crash")]
        with d.client() as c:
            c.rescan()
        assert quiet(sub, 0.5) == []
        assert at_death.wait(20) == 13
        assert at_release.wait(20) == 1  # timed out: a zombie is never released
        assert b"timed out" in at_release.stderr.read()
        rows = {r["domid"]: r for r in d.client().list()}
        assert rows[6]["state"] == "dead"


def test_resume_is_found_by_the_shutdown_poll(sim, daemon_factory):
    d = daemon_factory(sim, "--shutdown-poll", "0.05", "--full-scan", "0")
    with d.subscribe([2]) as sub:
        sim.ctl.suspend(2)
        assert brief(take(sub, 1)) == [("shutdown", 2, "suspend")]
        sim.ctl.resume(2)
        assert brief(take(sub, 1, timeout=5)) == [("resumed", 2, None)]
    assert d.stats()["scans"]["poll"] >= 1


def test_silent_suspend_is_found_by_the_safety_full_scan(sim, daemon_factory):
    d = daemon_factory(sim, "--full-scan", "0.2")
    with d.subscribe([3]) as sub:
        sim.ctl.suspend(3, silent=True)  # a suspend event channel: no VIRQ, no firing
        assert brief(take(sub, 1, timeout=5)) == [("shutdown", 3, "suspend")]
    assert d.stats()["scans"]["full"] >= 1


def test_rescan_on_demand_reports_what_fired_nothing(sim, daemon_factory):
    d = daemon_factory(sim, "--full-scan", "0")
    with d.subscribe([3]) as sub:
        sim.ctl.suspend(3, silent=True)
        assert quiet(sub, 0.3) == []
        with d.client() as c:
            reply = c.rescan()
        assert reply["events"] == 1
        assert brief(take(sub, 1)) == [("shutdown", 3, "suspend")]
    assert d.stats()["scans"]["rescan"] == 1


# (operation, events it must produce): each step is awaited before the next, and no firing
# is held for a burst (--burst-window 0), so that coalescing cannot merge steps and both
# modes must report exactly the same, with a scan per step.
_SCRIPT = [
    (lambda c: c.shutdown(1, "crash"), 1),
    (lambda c: c.destroy(1), 2),
    (lambda c: c.suspend(2), 1),
    (lambda c: c.shutdown(3, "reboot"), 1),
    (lambda c: c.destroy(3), 2),
    (lambda c: c.create(domid=1), 1),
    (lambda c: c.destroy(4, zombie=True), 1),
]


def test_xen_422_watch_depth_gives_the_same_events_as_417(sim, sim422, daemon_factory):
    results = {}
    for host in (sim, sim422):
        d = daemon_factory(
            host, "--full-scan", "0", "--shutdown-poll", "0.05", "--burst-window", "0"
        )
        with d.client() as c:
            hello = c.hello()
        with d.subscribe(None) as sub:
            seen = []
            for step, count in _SCRIPT:
                step(host.ctl)
                seen += take(sub, count)
            assert quiet(sub, 0.3) == []
        results[hello["features"]["watch_depth"]] = brief(seen)
        stats = d.stats()
        if hello["features"]["watch_depth"]:
            assert stats["targeted_scans"] >= len(_SCRIPT)
        else:
            assert stats["targeted_scans"] == 0
    assert set(results) == {False, True}
    assert results[True] == results[False]
    assert results[True] == [
        ("shutdown", 1, "crash"),
        ("death", 1, "crash"),
        ("released", 1, None),
        ("shutdown", 2, "suspend"),
        ("shutdown", 3, "reboot"),
        ("death", 3, "reboot"),
        ("released", 3, None),
        ("new", 1, None),
        ("death", 4, None),
    ]


def test_burst_of_firings_coalesces_into_few_scans(sim_factory, daemon_factory):
    host = sim_factory(domains=1000)
    d = daemon_factory(host, "--full-scan", "0", "--shutdown-poll", "0")
    with d.subscribe(None, events=["death", "released", "new"]) as sub:
        host.ctl.shutdown("all", "poweroff")
        host.ctl.destroy("all")  # C xenstored 4.17 fires once per dying domain: 1000 firings
        host.ctl.create(count=1000)  # one @introduceDomain per domain: 1000 more
        events = take(sub, 3000, timeout=60)
    counts = {k: sum(1 for e in events if e["event"] == k) for k in ("death", "released", "new")}
    assert counts == {"death": 1000, "released": 1000, "new": 1000}
    assert len({(e["event"], e["domid"], e["uuid"]) for e in events}) == 3000
    stats = d.stats()
    firings = sum(stats["firings"].values())
    scans = stats["scans"]["watch"]
    assert firings >= 2000
    assert scans * 10 <= firings, f"{firings} firings took {scans} scans"


def test_socket_is_0660_with_the_group_and_peer_is_logged(sim, daemon_factory):
    import grp

    group = grp.getgrnam("daemon")
    d = daemon_factory(sim, "--socket-group", "daemon")
    st = os.stat(d.sock)
    assert st.st_mode & 0o777 == 0o660
    assert st.st_gid == group.gr_gid
    with d.client() as c:
        c.ping()
    until(lambda: f"client connected: pid={os.getpid()} uid={os.getuid()}" in d.log_text())


def test_stale_socket_is_replaced_and_a_live_one_is_not(sim, daemon_factory, tmp_path):
    import socket
    import subprocess

    stale = str(sim.dir / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()  # the file stays, nobody listens: connect is refused
    d = daemon_factory(sim, sock=stale)
    with d.client() as c:
        c.ping()
    second = subprocess.run(
        [
            *sim_command(),
            "serve",
            "--backend",
            "sim",
            "--sim-dir",
            str(sim.dir),
            "--socket",
            stale,
            "--metrics-addr",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert "another daemon is serving" in second.stderr
    with d.client() as c:
        c.ping()


def test_domains_and_stats_commands(sim, daemon_factory, procs):
    import subprocess

    d = daemon_factory(sim)
    sim.ctl.shutdown(2, "crash")
    with d.subscribe([2]) as sub:
        until(lambda: sub.snapshot and True)
    until(lambda: d.stats()["domains"]["shutdown"] == 1)
    out = subprocess.run(
        [*sim_command(), "domains", "--socket", d.sock], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["DOMID", "NAME", "STATE", "REASON", "UUID"]
    assert any(line.split()[:4] == ["2", "guest-2", "shutdown", "crash"] for line in lines)
    js = subprocess.run(
        [*sim_command(), "domains", "--json", "--socket", d.sock],
        capture_output=True,
        text=True,
        timeout=30,
    )
    rows = json_lines(js.stdout)
    assert len(rows) == 9 and rows[0]["name"] == "Domain-0"
    st = subprocess.run(
        [*sim_command(), "stats", "--json", "--socket", d.sock],
        capture_output=True,
        text=True,
        timeout=30,
    )
    stats = json.loads(st.stdout)
    assert stats["events"]["shutdown"] == 1 and stats["domains"]["shutdown"] == 1
    human = subprocess.run(
        [*sim_command(), "stats", "--socket", d.sock], capture_output=True, text=True, timeout=30
    )
    assert "coalescing" in human.stdout and "firing->frame" in human.stdout


def test_watch_command_prints_json_lines_and_a_table(sim, daemon_factory, procs):
    d = daemon_factory(sim)
    js = procs.start(
        [*sim_command(), "watch", "5", "--snapshot", "--count", "2", "--socket", d.sock]
    )
    pretty = procs.start(
        [*sim_command(), "watch", "5", "--pretty", "--count", "2", "--socket", d.sock]
    )
    until(lambda: d.stats()["subscribers"] == 2)
    sim.ctl.shutdown(5, "crash")
    # Shutdown and destroy landing in one scan give one death without reason (the docs
    # allow it): destroy only once the shutdown has been seen, as a toolstack does.
    until(lambda: d.stats()["events"]["shutdown"] == 1)
    sim.ctl.destroy(5)
    assert js.wait(20) == 0 and pretty.wait(20) == 0
    lines = json_lines(js.stdout.read().decode())
    assert lines[0]["snapshot"] is True and lines[0]["domid"] == 5
    assert brief(lines[1:]) == [("shutdown", 5, "crash"), ("death", 5, "crash")]
    table = pretty.stdout.read().decode().splitlines()
    assert table[0].split()[:5] == ["TIME", "SEQ", "DOMID", "NAME", "EVENT"]
    assert "guest-5" in table[1] and "shutdown" in table[1] and "crash" in table[1]
