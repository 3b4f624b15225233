"""The commands as users run them, against the real daemon on a simulated host: --version,
help on every option, rescan, domains by name or UUID, wait --any/--all, -o and --time."""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import subprocess

import pytest
from daemonhelpers import json_lines, until
from simhelpers import sim_command

from mux import __version__
from mux.cli import COMMANDS
from mux.protocol import PROTOCOL_VERSION

CLIENT_COMMANDS = ("watch", "wait", "domains", "stats", "rescan")


def xenmux(*args: str, sock: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    extra = ["--socket", sock] if sock else []
    return subprocess.run(
        [*sim_command(), *args, *extra], capture_output=True, text=True, timeout=timeout
    )


def test_version():
    out = xenmux("--version")
    assert out.returncode == 0
    assert out.stdout == f"xenmux {__version__} (xen-watch-mux, protocol {PROTOCOL_VERSION})\n"
    assert xenmux("-V").stdout == out.stdout


@pytest.mark.parametrize("command", CLIENT_COMMANDS)
def test_every_option_of_the_client_commands_has_help(command):
    parser = argparse.ArgumentParser(prog=f"xenmux {command}")
    importlib.import_module(COMMANDS[command][0]).configure(parser)
    silent = [
        a.option_strings or [a.dest]
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()
    ]
    assert silent == []
    usage = xenmux(command, "--help")
    assert usage.returncode == 0 and "--socket" in usage.stdout


def test_the_top_level_help_names_rescan():
    out = xenmux("--help")
    assert out.returncode == 0 and "rescan" in out.stdout and "--version" in out.stdout


def test_rescan_reports_a_resume_that_fired_nothing(sim, daemon_factory):
    # No shutdown poll and no safety scan: only a rescan can see the resume.
    d = daemon_factory(sim, "--shutdown-poll", "0", "--full-scan", "0")
    with d.subscribe([3]) as sub:
        sim.ctl.suspend(3)
        assert sub.next_event(20)["event"] == "shutdown"
        sim.ctl.resume(3)
        assert sub.next_event(0.5) is None
        out = xenmux("rescan", "-o", "json", sock=d.sock)
        assert out.returncode == 0, out.stderr
        # The event was sent before the command returned.
        resumed = sub.next_event(0)
    assert json.loads(out.stdout) == {"events": 1, "seq": resumed["seq"]}
    assert resumed["event"] == "resumed" and resumed["domid"] == 3
    table = xenmux("rescan", sock=d.sock)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["EVENTS", "SEQ"]
    assert table.stdout.splitlines()[1].split() == ["0", str(resumed["seq"])]


def test_domains_by_name_and_uuid(sim, daemon_factory, procs):
    d = daemon_factory(sim)
    uuid5 = {r["domid"]: r["uuid"] for r in sim.ctl.list()}[5]
    by_name = procs.start([*sim_command(), "wait", "guest-3", "--socket", d.sock])
    by_uuid = procs.start(
        [*sim_command(), "watch", "--uuid", uuid5.upper(), "--count", "1", "--socket", d.sock]
    )
    until(lambda: d.stats()["subscribers"] == 2)
    sim.ctl.shutdown(5, "reboot")
    sim.ctl.shutdown(3, "crash")
    until(lambda: d.stats()["events"]["shutdown"] == 2)
    sim.ctl.destroy(3)
    assert by_name.wait(20) == 13
    assert by_uuid.wait(20) == 0
    (death,) = json_lines(by_name.stdout.read().decode())
    (shutdown,) = json_lines(by_uuid.stdout.read().decode())
    assert (death["event"], death["domid"], death["reason"]) == ("death", 3, "crash")
    assert (shutdown["event"], shutdown["domid"], shutdown["uuid"]) == ("shutdown", 5, uuid5)


def test_an_unknown_or_ambiguous_name_exits_with_one_line(sim, daemon_factory):
    d = daemon_factory(sim)
    sim.ctl.create(name="guest-4")  # a second domain of that name
    until(lambda: len(d.client().list()) == 10)
    for args, status, words in (
        (("wait", "guest-99"), 22, "no domain with the name or UUID 'guest-99'"),
        (("watch", "guest-99"), 2, "no domain with the name or UUID 'guest-99'"),
        (("wait", "--name", "7"), 22, "no domain with the name '7'"),
        (("wait", "guest-4"), 22, "'guest-4' is ambiguous: domains 4, 9 match it"),
        (("watch", "guest-4"), 2, "'guest-4' is ambiguous: domains 4, 9 match it"),
        (("wait", "40000"), 2, "domid 40000 is not below 32752"),
    ):
        out = xenmux(*args, sock=d.sock)
        assert out.returncode == status, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and words in out.stderr, (args, out.stderr)
        assert out.stderr.startswith(f"xenmux {args[0]}: ")
    # A name held by a domain being destroyed and by the one that replaced it is not
    # ambiguous: the live one is meant.
    sim.ctl.destroy(4, zombie=True)
    until(lambda: {r["domid"]: r["state"] for r in d.client().list()}[4] == "dead")
    out = xenmux("watch", "guest-4", "--snapshot", "--timeout", "0.3", sock=d.sock)
    assert [(r["domid"], r["state"]) for r in json_lines(out.stdout)] == [(9, "running")]


def test_wait_any_and_all(sim, daemon_factory, procs):
    d = daemon_factory(sim)
    any_ = procs.start([*sim_command(), "wait", "1", "2", "--any", "--socket", d.sock])
    all_ = procs.start([*sim_command(), "wait", "1", "2", "guest-6", "--socket", d.sock])
    until(lambda: d.stats()["subscribers"] == 2)
    sim.ctl.shutdown(2, "crash")
    until(lambda: d.stats()["events"]["shutdown"] == 1)
    sim.ctl.destroy(2)
    assert any_.wait(20) == 13  # the first death's status
    assert all_.poll() is None  # still waiting for 1 and 6
    for domid in (1, 6):
        sim.ctl.shutdown(domid, "poweroff")
    until(lambda: d.stats()["events"]["shutdown"] == 3)
    sim.ctl.destroy(6)
    until(lambda: d.stats()["events"]["death"] == 2)  # in one scan, 1 would come before 6
    sim.ctl.destroy(1)
    assert all_.wait(20) == 13  # not all were 0: the first non-zero one, in order of death
    deaths = json_lines(all_.stdout.read().decode())
    assert [(e["domid"], e.get("reason")) for e in deaths] == [
        (2, "crash"),
        (6, "poweroff"),
        (1, "poweroff"),
    ]
    assert [e["domid"] for e in json_lines(any_.stdout.read().decode())] == [2]
    clean = procs.start([*sim_command(), "wait", "3", "4", "--all", "--socket", d.sock])
    until(lambda: d.stats()["subscribers"] == 1)
    for domid in (3, 4):
        sim.ctl.shutdown(domid, "poweroff")
    until(lambda: d.stats()["events"]["shutdown"] == 5)
    sim.ctl.destroy(3)
    sim.ctl.destroy(4)
    assert clean.wait(20) == 0  # all powered off
    assert [e["domid"] for e in json_lines(clean.stdout.read().decode())] == [3, 4]


def test_wait_prints_a_table_when_asked(sim, daemon_factory, procs):
    d = daemon_factory(sim)
    waiter = procs.start([*sim_command(), "wait", "8", "-o", "table", "--socket", d.sock])
    until(lambda: d.stats()["subscribers"] == 1)
    sim.ctl.destroy(8)
    assert waiter.wait(20) == 20  # died with no shutdown seen
    header, row = waiter.stdout.read().decode().splitlines()
    assert header.split() == ["TIME", "SEQ", "DOMID", "NAME", "EVENT", "REASON", "UUID"]
    assert row.split()[2:5] == ["8", "guest-8", "death"]


def _columns(header: str) -> list[tuple[int, int]]:
    """(start, end) of each word of a header line."""
    spans, start = [], None
    for i, ch in enumerate(header + " "):
        if ch != " " and start is None:
            start = i
        elif ch == " " and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_tables_line_up_under_their_headers(sim, daemon_factory, procs):
    d = daemon_factory(sim)
    watcher = procs.start(
        [*sim_command(), "watch", "-o", "table", "--count", "2", "--socket", d.sock]
    )
    until(lambda: d.stats()["subscribers"] == 1)
    sim.ctl.shutdown(7, "soft_reset")
    until(lambda: d.stats()["events"]["shutdown"] == 1)
    sim.ctl.destroy(7)
    assert watcher.wait(20) == 0
    header, *rows = watcher.stdout.read().decode().splitlines()
    spans = dict(zip(header.split(), _columns(header), strict=True))
    assert list(spans) == ["TIME", "SEQ", "DOMID", "NAME", "EVENT", "REASON", "UUID"]
    assert len(rows) == 2
    for row in rows:
        for word in ("TIME", "NAME", "EVENT", "REASON", "UUID"):  # left-aligned
            start = spans[word][0]
            assert (start == 0 or row[start - 1] == " ") and row[start] != " ", (word, row)
        for word in ("SEQ", "DOMID"):  # right-aligned numbers end where their header ends
            end = spans[word][1]
            assert row[end - 1].isdigit() and row[end] == " ", (word, row)
        assert row[spans["NAME"][0] :].startswith("guest-7 ")
        assert row[spans["EVENT"][0] : spans["REASON"][0]].strip() in ("shutdown", "death")
        assert row[spans["REASON"][0] :].startswith("soft_reset ")
    listing = xenmux("domains", sock=d.sock).stdout.splitlines()
    dspans = dict(zip(listing[0].split(), _columns(listing[0]), strict=True))
    for line in listing[1:]:
        assert line[: dspans["DOMID"][1]].strip().isdigit()
        assert line[dspans["UUID"][0] :].count("-") == 4


def test_time_iso_and_unix(sim, daemon_factory, procs):
    d = daemon_factory(sim)
    iso = procs.start(
        [*sim_command(), "watch", "3", "--count", "1", "--time", "iso", "--socket", d.sock]
    )
    table_args = ["-o", "table", "--time", "unix"]
    unix_table = procs.start(
        [*sim_command(), "watch", "3", "--count", "1", *table_args, "--socket", d.sock]
    )
    plain = procs.start([*sim_command(), "watch", "3", "--count", "1", "--socket", d.sock])
    until(lambda: d.stats()["subscribers"] == 3)
    sim.ctl.shutdown(3, "crash")
    for p in (iso, unix_table, plain):
        assert p.wait(20) == 0
    (seconds,) = json_lines(plain.stdout.read().decode())
    (stamped,) = json_lines(iso.stdout.read().decode())
    when = datetime.datetime.fromisoformat(stamped["time"])
    assert when.utcoffset() is not None
    assert abs(when.timestamp() - seconds["time"]) < 1e-5
    row = unix_table.stdout.read().decode().splitlines()[1]
    assert abs(float(row.split()[0]) - seconds["time"]) < 1e-5
