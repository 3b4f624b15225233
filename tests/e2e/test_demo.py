"""`xenmux demo` (what `make run` starts) brings the chain up, shows events and act's
actions, plays a failed migration whose later poweroff act destroys, and cleans up."""

from __future__ import annotations

import glob
import re
import subprocess

from simhelpers import sim_command

ACTED = re.compile(
    r" act +dom +(\d+) +\S+ +(poweroff|reboot|crash|watchdog) +-> (destroy|restart) ok "
)
MIGRATION_DONE = re.compile(
    r" migration dom +(\d+) .*act: destroy ok: the failed migration's poweroff was acted upon"
)


def test_demo_runs_act_plays_a_failed_migration_and_leaves_nothing_behind():
    before = set(glob.glob("/tmp/xenmux-demo-*"))
    out = subprocess.run(
        [*sim_command(), "demo", "--seconds", "5", "--plain", "--domains", "100", "--rate", "40"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(" new " in line or " shutdown " in line for line in lines), out.stdout[-2000:]
    assert any(line.startswith("-- rates:") for line in lines)
    # act does the toolstack's part of the guests' own shutdowns: one line per action
    acted = [m for m in map(ACTED.search, lines) if m]
    assert {m[3] for m in acted} == {"destroy", "restart"}, out.stdout[-2000:]
    # the failed migration: suspended, not acted upon, resumed, powered off, destroyed
    [done] = [m for m in map(MIGRATION_DONE.search, lines) if m]
    domid = done[1]
    story = [line for line in lines if re.search(rf" dom +{domid} ", line)]
    in_order = [
        "migration dom .* suspended for a migration",
        "migration dom .* resumed in place",
        "migration dom .* running again",
        "migration dom .* its guest powers off",
        f"act +dom +{domid} .* poweroff -> destroy ok",
    ]
    found = [next((i for i, line in enumerate(story) if re.search(s, line)), -1) for s in in_order]
    assert -1 not in found and found == sorted(found), "\n".join(story)
    assert any(re.search("act .* suspend +-> not acted upon", line) for line in story), story

    assert set(glob.glob("/tmp/xenmux-demo-*")) == before
