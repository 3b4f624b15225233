"""The simulated host's side of act: a toolstack that stores on_* settings per domain, guests
that shut down by themselves, a churn in which only guests act, and the truth log."""

from __future__ import annotations

import json
import time
from collections import Counter

from daemonhelpers import until

UUID = "6f1b6a2c-4a3e-4d2b-9c1e-2b7d5e8f9a10"


def test_settings_are_stored_per_domain_and_go_with_a_destroy(host):
    sim = host.sim
    out = sim.sim_ctl(
        "create",
        "--name",
        "web",
        "--uuid",
        UUID,
        "--on-crash",
        "preserve",
        "--on-reboot",
        "destroy",
    )
    assert out.returncode == 0, out.stderr
    [row] = [json.loads(x) for x in out.stdout.splitlines()]
    assert row["settings"] == {"on_crash": "preserve", "on_reboot": "destroy"}
    assert sim.ctl.domain(row["domid"])["settings"] == row["settings"]
    sim.ctl.destroy(row["domid"])
    [again] = sim.ctl.create(domid=row["domid"], name="web", uuid=UUID)
    assert again["settings"] == {}  # a destroy leaves no record
    bad = sim.sim_ctl("create", "--on-crash", "explode")
    assert bad.returncode == 2 and "invalid choice: 'explode'" in bad.stderr


def test_a_guest_shuts_down_by_itself_and_stays_so_until_a_toolstack_acts(host):
    sim = host.sim
    out = sim.sim_ctl("guest", "1", "poweroff")  # the command line; the rest by the client
    assert out.returncode == 0, out.stderr
    for what, domid in (("reboot", 2), ("crash", 3), ("watchdog", 4), ("soft_reset", 5)):
        sim.ctl.guest(domid, what)
    time.sleep(0.3)
    rows = {r["domid"]: r for r in sim.ctl.list()}
    assert [(rows[d]["state"], rows[d]["reason"]) for d in range(1, 6)] == [
        ("shutdown", "poweroff"),
        ("shutdown", "reboot"),
        ("shutdown", "crash"),
        ("shutdown", "watchdog"),
        ("shutdown", "soft_reset"),
    ]
    guests = [(x["domid"], x["reason"]) for x in host.truth().lines if x["op"] == "guest"]
    assert guests == [
        (1, "poweroff"),
        (2, "reboot"),
        (3, "crash"),
        (4, "watchdog"),
        (5, "soft_reset"),
    ]
    again = sim.sim_ctl("guest", "1", "crash")
    assert (again.returncode, again.stderr) == (
        1,
        "xenmux sim-ctl: domain 1 is already shut down (poweroff)\n",
    )


def test_churn_of_guests_only_leaves_the_toolstacks_part_to_act(host):
    act = host.act()
    reply = host.ctl.churn(1.5, rate=20, seed=7, guests_only=True)
    assert reply["errors"] == 0 and reply["ops"]["guest"] > 10, reply
    assert "destroy" not in reply["ops"]

    def settled():
        return all(r["state"] == "running" for r in host.ctl.list())

    until(settled, 30)
    time.sleep(0.5)
    truth = host.truth()
    shut = Counter((x["domid"], x["uuid"]) for x in truth.lines if x["op"] == "guest")
    destroyed = Counter((x["domid"], x["uuid"]) for x in truth.of("destroy"))
    assert destroyed == shut  # every guest shutdown acted upon, once
    reboots = Counter(
        x["uuid"] for x in truth.lines if x["op"] == "guest" and x["reason"] == "reboot"
    )
    assert Counter(x["uuid"] for x in truth.of("create")) == reboots
    assert act.text().count("outcome=ok") == sum(shut.values())
