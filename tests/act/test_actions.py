"""Every reason with every action, the defaults, rules by name and UUID, exclusion, and the
hooks: what the sim's truth log and its list show after guests shut down by themselves."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mux.act.policy import ACTIONS, REASON_KEYS

REASONS = tuple(REASON_KEYS)  # poweroff reboot watchdog crash soft_reset
XL_DEFAULTS = {
    "poweroff": "destroy",
    "reboot": "restart",
    "watchdog": "destroy",
    "crash": "destroy",
    "soft_reset": "soft-reset",
}


def check_action(host, dom: dict, action: str, truth) -> None:
    domid, uuid, name = dom["domid"], dom["uuid"], dom["name"]
    mine = [x for x in truth.lines if x.get("by") == "act" and x["domid"] == domid]
    ops = [x["op"] for x in mine if x["uuid"] == uuid or x["op"] == "rename"]
    created = [x for x in truth.of("create") if x["name"] == name]
    now = host.domain(domid)
    what = f"{name} ({action})"
    if action == "preserve":
        assert ops == [], what
        assert now["state"] == "shutdown" and now["uuid"] == uuid, what
    elif action == "destroy":
        assert ops == ["destroy"] and not created, what
    elif action == "restart":
        assert ops == ["destroy"], what
        assert [(x["uuid"], x["name"]) for x in created] == [(uuid, name)], what
    elif action == "coredump-destroy":
        assert ops == ["dump-core", "destroy"] and not created, what
    elif action == "coredump-restart":
        assert ops == ["dump-core", "destroy"], what
        assert [x["uuid"] for x in created] == [uuid], what
    elif action == "rename-restart":
        assert ops == ["rename"], what
        assert [x["uuid"] for x in created] == [uuid], what
        assert now["uuid"] != uuid and now["name"].startswith(name + "-"), what
        assert now["state"] == "shutdown", f"{what}: the kept domain is left as it is"
    elif action == "soft-reset":
        assert ops == ["soft-reset"], what
        assert now["state"] == "running" and now["uuid"] == uuid, what
    if action in ("restart", "coredump-restart", "rename-restart"):
        [again] = [r for r in host.by_name(name) if r["uuid"] == uuid]
        assert again["domid"] != domid and again["state"] == "running", what
    if action.startswith("coredump"):
        [dump] = [x for x in mine if x["op"] == "dump-core"]
        assert json.loads(Path(dump["path"]).read_text())["uuid"] == uuid


def test_every_reason_with_every_action_and_the_defaults(host, tmp_path):
    cases = []
    for reason in REASONS:
        for action in ACTIONS:
            [dom] = host.ctl.create(
                name=f"{reason}-{action}", settings={REASON_KEYS[reason]: action}
            )
            cases.append((dom, reason, action))
        [dom] = host.ctl.create(name=f"{reason}-default")
        cases.append((dom, reason, XL_DEFAULTS[reason]))
    policy = host.policy(f'[defaults]\ndump = "{tmp_path}/dumps/{{name}}.core"\n')
    act = host.act("--policy", policy)
    for dom, reason, _ in cases:
        host.ctl.guest(dom["domid"], reason)
    act.wait_log("outcome=", count=len(cases), timeout=30)
    time.sleep(0.5)  # time enough for a wrong second action (or one on a kept domain)
    text = act.text()
    assert text.count("outcome=ok") == len(cases), text
    truth = host.truth()
    for dom, reason, action in cases:
        assert (
            f"domid={dom['domid']} name={dom['name']} reason={reason} action={action} outcome=ok"
            in text
        )
        check_action(host, dom, action, truth)


def test_rules_by_name_and_uuid_exclusion_incoming_and_death_hooks(host, tmp_path):
    deaths = tmp_path / "deaths"
    doms = {}
    for name in ("keep-1", "by-uuid", "other-1", "mig--incoming", "plain", "outside"):
        [doms[name]] = host.ctl.create(name=name)
    policy = host.policy(
        f"""
        [defaults]
        on_death = ["sh -c 'echo {{domid}} {{name}} {{reason}} >> {deaths}'"]
        [[rule]]
        name = "keep-*"
        on_poweroff = "preserve"
        [[rule]]
        uuid = "{doms["by-uuid"]["uuid"]}"
        on_crash = "restart"
        [[rule]]
        name = "other-*"
        exclude = true
        """
    )
    act = host.act("--policy", policy)
    for name in ("keep-1", "other-1", "mig--incoming", "plain"):
        host.ctl.guest(doms[name]["domid"], "poweroff")
    host.ctl.guest(doms["by-uuid"]["domid"], "crash")
    host.ctl.destroy(doms["outside"]["domid"])  # destroyed from outside: hooks only
    act.wait_log("action=on_death outcome=ok", count=3)  # plain, by-uuid, outside
    time.sleep(0.5)
    truth = host.truth()
    acted = {(x["op"], x["domid"]) for x in truth.lines if x.get("by") == "act"}
    d = {name: dom["domid"] for name, dom in doms.items()}
    assert ("destroy", d["plain"]) in acted
    assert ("destroy", d["by-uuid"]) in acted
    assert [x["uuid"] for x in truth.of("create")] == [doms["by-uuid"]["uuid"]]
    for left in ("keep-1", "other-1", "mig--incoming"):
        assert host.domain(d[left])["state"] == "shutdown", left
        assert not any(domid == d[left] for _, domid in acted), left
    lines = sorted(deaths.read_text().splitlines())
    assert lines == sorted(
        [f"{d['plain']} plain poweroff", f"{d['by-uuid']} by-uuid crash", f"{d['outside']} outside"]
    )
    # excluded and incoming domains get no hooks either
    host.ctl.destroy(d["other-1"])
    host.ctl.destroy(d["mig--incoming"])
    time.sleep(0.5)
    assert len(deaths.read_text().splitlines()) == 3
