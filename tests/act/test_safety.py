"""Exactly once across SIGKILLs of act and of the daemon; failing commands, hanging hooks,
bad policies and reloads; --dry-run."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections import Counter

from acthelpers import act_command
from daemonhelpers import until
from simhelpers import REPO


def settle(host, destroys: int, creates: int, timeout: float = 30.0):
    host.wait_truth(
        lambda t: len(t.of("destroy")) >= destroys and len(t.of("create")) >= creates, timeout
    )
    time.sleep(0.5)  # a second destroy or create would come now
    return host.truth()


def test_act_sigkilled_at_random_points_does_nothing_twice_and_skips_nothing(host):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    reboots = [
        host.ctl.create(name=f"r{i}", settings={"on_reboot": "restart"})[0] for i in range(20)
    ]
    offs = [host.ctl.create(name=f"p{i}")[0] for i in range(20)]
    act = host.act("--max-parallel", "2")
    for dom in reboots:
        host.ctl.guest(dom["domid"], "reboot")
    for dom in offs:
        host.ctl.guest(dom["domid"], "poweroff")
    for _ in range(3):  # kill it mid-burst, start it again, a few times
        time.sleep(rng.uniform(0.0, 0.15))
        act.kill()
        act = host.act("--max-parallel", "2")
    truth = settle(host, 40, 20)
    destroyed = Counter((x["domid"], x["uuid"]) for x in truth.of("destroy"))
    created = Counter(x["uuid"] for x in truth.of("create"))
    everyone = {(d["domid"], d["uuid"]) for d in reboots + offs}
    assert set(destroyed) == everyone, f"seed {seed}: skipped {everyone - set(destroyed)}"
    assert max(destroyed.values()) == 1, f"seed {seed}: destroyed twice"
    assert created == Counter(d["uuid"] for d in reboots), f"seed {seed}: {created}"
    names = Counter(r["name"] for r in host.ctl.list() if r["domid"])
    untouched = Counter(f"guest-{domid}" for domid in host.guests)  # the host's own guests
    assert names == Counter(d["name"] for d in reboots) + untouched, f"seed {seed}"


def test_the_daemon_sigkilled_mid_burst_loses_and_repeats_nothing(host):
    doms = [host.ctl.create(name=f"g{i}", settings={"on_crash": "restart"})[0] for i in range(40)]
    act = host.act()
    for dom in doms[:30]:
        host.ctl.guest(dom["domid"], "crash")
    host.kill_daemon_and_restart()
    for dom in doms[30:]:
        host.ctl.guest(dom["domid"], "crash")
    truth = settle(host, 40, 40)
    assert Counter(x["uuid"] for x in truth.of("destroy")) == Counter(d["uuid"] for d in doms)
    assert Counter(x["uuid"] for x in truth.of("create")) == Counter(d["uuid"] for d in doms)
    # and act still follows the new daemon
    [late] = host.ctl.create(name="after")
    host.ctl.guest(late["domid"], "poweroff")
    act.wait_log(f"domid={late['domid']} name=after reason=poweroff action=destroy outcome=ok")


def test_a_failing_command_is_retried_counted_and_blocks_no_one(host):
    [bad] = host.ctl.create(name="bad")
    [good] = host.ctl.create(name="good", settings={"on_poweroff": "restart"})
    policy = host.policy("[commands]\ndestroy = \"sh -c 'echo nope >&2; exit 3'\"\n")
    act = host.act("--policy", policy, "--metrics-addr", "127.0.0.1:0")
    host.ctl.guest(bad["domid"], "poweroff")
    host.ctl.guest(good["domid"], "poweroff")
    text = act.wait_log("name=bad reason=poweroff action=destroy outcome=failed", timeout=20)
    assert "(sh exited with 3: nope)" in text
    assert text.index("name=good reason=poweroff action=restart outcome=ok") < text.index(
        "name=bad reason=poweroff action=destroy outcome=failed"
    )
    assert host.domain(bad["domid"])["state"] == "shutdown"
    metrics = act.metrics()
    assert 'xenmux_act_actions_total{action="destroy",outcome="failed"} 1.0' in metrics
    assert 'xenmux_act_actions_total{action="restart",outcome="ok"} 1.0' in metrics
    assert 'xenmux_act_failures_total{action="destroy"} 4.0' in metrics  # 1 + 3 retries
    assert 'xenmux_act_action_seconds_count{action="restart"} 1.0' in metrics


def test_a_hook_that_hangs_is_killed_at_the_hook_timeout(host, tmp_path):
    pidfile = tmp_path / "hook.pid"
    policy = host.policy(f"[defaults]\non_death = \"sh -c 'echo $$ > {pidfile}; exec sleep 60'\"\n")
    act = host.act("--policy", policy, "--hook-timeout", "0.5")
    start = time.monotonic()
    host.ctl.guest(1, "poweroff")
    text = act.wait_log("action=on_death outcome=timeout", timeout=10)
    assert time.monotonic() - start < 5
    assert "still ran after 0.5 s: killed" in text
    pid = int(pidfile.read_text())
    until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 5)
    host.ctl.guest(2, "poweroff")  # act goes on
    act.wait_log("domid=2 name=guest-2 reason=poweroff action=destroy outcome=ok")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_a_bad_policy_stops_act_before_anything_runs_in_one_line(host):
    policy = host.policy('[[rule]]\nname = "x"\non_crash = "explode"\n')
    proc = subprocess.run(
        act_command(host.sim.dir, host.daemon.sock, "--policy", policy),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        f"xenmux act: {policy}: rule[0].on_crash: 'explode' is not an action (one of destroy, "
        "restart, rename-restart, preserve, coredump-destroy, coredump-restart, soft-reset)\n"
    )
    assert not os.path.exists(os.path.join(host.sim.dir, "act-state"))


def test_sighup_reloads_the_policy_and_keeps_the_old_one_on_error(host):
    policy = host.policy('[defaults]\non_poweroff = "preserve"\n')
    act = host.act("--policy", policy)
    host.ctl.guest(1, "poweroff")
    act.wait_log("domid=1 name=guest-1 reason=poweroff action=preserve outcome=ok")
    with open(policy, "w") as f:
        f.write('[defaults]\non_poweroff = "destroy"\n')
    act.proc.send_signal(signal.SIGHUP)
    act.wait_log("policy reloaded from")
    host.ctl.guest(2, "poweroff")
    act.wait_log("domid=2 name=guest-2 reason=poweroff action=destroy outcome=ok")
    with open(policy, "w") as f:
        f.write("[defaults\n")
    act.proc.send_signal(signal.SIGHUP)
    text = act.wait_log("policy not reloaded, the old one stays: ")
    assert re.search(
        r"not reloaded, the old one stays: .*policy\.toml: not valid TOML: .*line 1", text
    )
    host.ctl.guest(3, "poweroff")
    act.wait_log("domid=3 name=guest-3 reason=poweroff action=destroy outcome=ok")
    assert host.domain(1)["state"] == "shutdown"


def test_dry_run_prints_the_commands_and_does_nothing(host):
    act = host.act("--dry-run")
    host.ctl.guest(1, "reboot")
    text = act.wait_log("outcome=dry-run")
    assert "xenmux act: would restart domain 1 (guest-1) after reboot: sim destroy 1" in text
    assert host.truth().ops("act") == []
    assert host.domain(1)["state"] == "shutdown"
    assert not os.path.exists(os.path.join(host.sim.dir, "act-state"))


def test_dry_run_with_xl_names_the_xl_commands(host):
    """With no xl on PATH its list cannot be read: the defaults apply, and act says so once."""
    env = dict(os.environ, PATH="/nonexistent")
    log = host.tmp / "xl-act.log"
    cmd = act_command(host.sim.dir, host.daemon.sock, "--dry-run")
    cmd[cmd.index("sim")] = "xl"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        until(lambda: "acting for every domain" in log.read_text(), 20)
        [dom] = host.ctl.create(name="web")
        host.ctl.guest(dom["domid"], "reboot")
        until(lambda: "outcome=dry-run" in log.read_text(), 20)
        text = log.read_text()
        assert (
            f"would restart domain {dom['domid']} (web) after reboot: xl destroy {dom['domid']}; "
            f"xl create -e /etc/xen/web.cfg 'uuid=\"{dom['uuid']}\"'"
        ) in text
        assert "cannot read domains' own on_* settings" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert proc.returncode == 0


def test_two_acts_never_share_a_state_dir(host):
    host.act()
    proc = subprocess.run(
        act_command(host.sim.dir, host.daemon.sock),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert proc.returncode == 1
    state = os.path.join(host.sim.dir, "act-state")
    assert proc.stderr == (
        f"xenmux act: another xenmux act runs with the state dir {state} (--state-dir)\n"
    )


def test_at_a_first_start_domains_found_shut_down_are_acted_upon_once(host):
    """Without a cursor act takes the snapshot: shut-down domains count as just shut down,
    suspended ones do not, and one it already acted upon (its journal says so) is not
    acted upon again."""
    policy = host.policy('[defaults]\non_poweroff = "preserve"\n')
    act = host.act("--policy", policy)
    host.ctl.guest(1, "poweroff")
    act.wait_log("domid=1 name=guest-1 reason=poweroff action=preserve outcome=ok")
    act.stop()
    host.ctl.guest(2, "crash")  # while no act runs
    host.ctl.suspend(3)
    os.unlink(os.path.join(host.sim.dir, "act-state", "cursor"))
    again = host.act("--policy", policy)
    again.wait_log("domid=2 name=guest-2 reason=crash action=destroy outcome=ok")
    time.sleep(0.5)
    text = again.text()
    assert "domid=1 " not in text, text
    assert "domid=3 name=guest-3 reason=suspend: not acted upon" in text
    assert "domid=3 name=guest-3 reason=suspend action" not in text
    assert host.truth().ops("act") == [("destroy", 2)]
