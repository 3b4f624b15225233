"""The seed's case: a suspend is never acted upon; a domain resumed in place after a failed
migration is acted upon at its next shutdown; one that dies (migrated away) gets only its
hooks. And a crash loop stops at the restart limit."""

from __future__ import annotations

from daemonhelpers import until


def running(host, name: str) -> dict:
    return until(lambda: next((r for r in host.by_name(name) if r["state"] == "running"), None), 20)


def test_failed_migration_resumed_in_place_then_powered_off_is_destroyed(host):
    [dom] = host.ctl.create(name="mover")
    act = host.act()
    host.ctl.suspend(dom["domid"])
    act.wait_log(f"domid={dom['domid']} name=mover reason=suspend: not acted upon")
    host.ctl.resume(dom["domid"])  # the migration failed: resumed in place (fires nothing)
    assert host.domain(dom["domid"])["state"] == "running"
    with host.daemon.client() as client:  # the daemon's shutdown poll sees the resume
        until(
            lambda: [r["state"] for r in client.list() if r["domid"] == dom["domid"]] == ["running"]
        )
    host.ctl.guest(dom["domid"], "poweroff")
    act.wait_log(f"domid={dom['domid']} name=mover reason=poweroff action=destroy outcome=ok")
    assert host.truth().ops("act") == [("destroy", dom["domid"])]
    assert host.domain(dom["domid"]) is None


def test_successful_migration_suspend_then_death_runs_only_the_hooks(host, tmp_path):
    [dom] = host.ctl.create(name="leaver")
    out = tmp_path / "hook"
    policy = host.policy(f"[defaults]\non_death = \"sh -c 'echo {{name}} {{reason}} > {out}'\"\n")
    act = host.act("--policy", policy)
    host.ctl.suspend(dom["domid"])
    act.wait_log("reason=suspend: not acted upon")
    host.ctl.destroy(dom["domid"])  # the migrating toolstack is done with it
    act.wait_log("action=on_death outcome=ok")
    assert out.read_text() == "leaver suspend\n"
    assert host.truth().ops("act") == []


def test_a_crash_loop_is_restarted_five_times_in_a_minute_then_preserved(host):
    [dom] = host.ctl.create(name="looper", settings={"on_crash": "restart"})
    act = host.act()
    uuid = dom["uuid"]
    current = dom
    for n in range(1, 6):
        host.ctl.guest(current["domid"], "crash")
        act.wait_log("name=looper reason=crash action=restart outcome=ok", count=n)
        current = running(host, "looper")
        assert current["uuid"] == uuid and current["settings"] == {"on_crash": "restart"}
    host.ctl.guest(current["domid"], "crash")
    text = act.wait_log("action=preserve outcome=limited")
    assert "looper) restarted 5 times within 60 s: preserved instead of restart" in text
    assert len(host.truth().of("create")) == 5
    assert host.domain(current["domid"])["state"] == "shutdown"
