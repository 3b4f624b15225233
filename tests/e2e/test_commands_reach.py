"""Nothing hangs silently: every client command says at once what it cannot reach and why,
watch and wait keep retrying (saying so once), and every --timeout holds, the hello's
included. Against a silent test double (accepts, never answers), missing sockets, and
sockets a user outside their group may not open."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from contract_double import doubles
from daemonhelpers import json_lines, until
from simhelpers import sim_command

NOT_RUNNING = "is `xenmux serve` running?"
NOBODY = 65534
ONE_SHOT = (("domains",), ("stats",), ("rescan",))


def xenmux(sock: str, *args: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*sim_command(), *args, "--socket", sock],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


@pytest.fixture
def double():
    with doubles() as make:
        yield make()


@pytest.fixture
def open_dir():
    """A directory a user other than root can reach (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="xmux-reach-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _timed(sock: str, *args: str, **kw) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    out = xenmux(sock, *args, **kw)
    return out, time.monotonic() - start


@pytest.fixture
def start_cost(open_dir) -> float:
    """What a command costs that fails at once (no socket there): the interpreter's start on
    this machine at this moment, which a loaded machine makes seconds. The timeouts below are
    checked above it, so that a busy CI box does not fail them and a hang still does."""
    out, took = _timed(os.path.join(open_dir, "absent.sock"), "stats")
    assert out.returncode == 1
    return took


SLACK = 1.5  # seconds on top of the start and the --timeout; the default timeout is 10 s


@pytest.mark.parametrize("command", [("wait", "3"), ("watch",)])
def test_wait_and_watch_timeouts_hold_against_a_daemon_that_never_answers(
    double, command, start_cost
):
    double.silent()
    out, took = _timed(double.path, *command, "--timeout", "1")
    assert out.returncode == 1, out.stderr
    assert took < start_cost + 1 + SLACK, (took, start_cost)
    assert out.stderr.splitlines()[-1] == (
        f"xenmux {command[0]}: no subscribe reply within 1 s: xenmux at {double.path} "
        "accepted the connection but did not answer hello within 1 s"
    )
    assert any(r["op"] == "hello" for r in double.requests)


@pytest.mark.parametrize("command", ONE_SHOT)
def test_one_shot_commands_time_out_and_exit_1(double, command, start_cost):
    double.silent()
    out, took = _timed(double.path, *command, "--timeout", "1")
    assert out.returncode == 1 and took < start_cost + 1 + SLACK, (took, start_cost)
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"xenmux {command[0]}: xenmux at {double.path} accepted the connection")
    assert line.endswith("within 1 s")


@pytest.mark.parametrize("command", ONE_SHOT)
def test_one_shot_commands_say_at_once_that_nothing_is_there(open_dir, command, start_cost):
    sock = os.path.join(open_dir, "none.sock")
    out, took = _timed(sock, *command)
    assert out.returncode == 1 and took < start_cost + SLACK, (took, start_cost)  # no waiting
    assert out.stderr == (
        f"xenmux {command[0]}: cannot reach xenmux at {sock}: no such socket ({NOT_RUNNING} "
        "--socket or $XENMUX_SOCKET choose another socket)\n"
    )


@pytest.mark.parametrize("command", [("wait", "3"), ("watch", "3")])
def test_wait_and_watch_say_so_once_then_retry_until_the_daemon_comes(open_dir, procs, command):
    with doubles() as make:
        d = make()
        d.add(3)
        d.down()  # its path is free: nothing is there yet
        proc = procs.start([*sim_command(), *command, "--socket", d.path])
        time.sleep(2.5)
        assert proc.poll() is None, "gave up instead of retrying"
        d.up()
        until(lambda: d.subscribes())
        d.event("shutdown", 3, reason="crash")
        d.event("death", 3)
        if command[0] == "watch":
            assert len(procs.read_lines(proc, 2, timeout=10)) == 2
            proc.terminate()
        assert proc.wait(20) == (13 if command[0] == "wait" else 143)
        stderr = proc.stderr.read().decode().splitlines()
    assert stderr[0] == (
        f"xenmux {command[0]}: cannot reach xenmux at {d.path}: no such socket ({NOT_RUNNING} "
        "--socket or $XENMUX_SOCKET choose another socket); retrying until it answers"
    )
    assert len([line for line in stderr if "cannot reach" in line]) == 1  # once, not per try


def as_nobody(*argv: str, give_up: float | None = None) -> tuple[int | None, str, str]:
    """`xenmux ARGV` run by nobody: (exit status, stdout, stderr). A forked child drops
    to nobody and calls the command in-process (the interpreter may sit where nobody may
    not execute it). With `give_up`, a child still running then is killed (status None)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, run the command, never return into pytest
        status = 99
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            from mux.cli import main

            status = main(list(argv))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(out_w)
    os.close(err_w)
    status: int | None = None
    deadline = time.monotonic() + (give_up if give_up is not None else 30)
    while time.monotonic() < deadline:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(code)
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    out, err = (_drain(fd) for fd in (out_r, err_r))
    return status, out, err


def _drain(fd: int) -> str:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    os.close(fd)
    return data.decode()


def _forbidden_socket(directory: str) -> tuple[str, socket.socket]:
    """A listening socket, mode 0660 and group daemon, that nobody may not open."""
    path = os.path.join(directory, "x.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    os.chown(path, 0, grp.getgrnam("daemon").gr_gid)
    os.chmod(path, 0o660)
    return path, s


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")


@needs_root
def test_a_forbidden_socket_names_its_group_and_never_blames_the_daemon(open_dir):
    sock, listener = _forbidden_socket(open_dir)
    try:
        status, _, refused = as_nobody("domains", "--socket", sock)
        still, _, notices = as_nobody("wait", "3", "--socket", sock, give_up=2.0)
    finally:
        listener.close()
        os.unlink(sock)
    reason = f"cannot reach xenmux at {sock}: permission denied (the socket's group is daemon)"
    assert status == 1
    assert refused == f"xenmux domains: {reason}\n"
    assert still is None  # it keeps retrying
    assert notices == f"xenmux wait: {reason}; retrying until it answers\n"
    assert "xenmux serve" not in refused + notices


@needs_root
def test_a_directory_on_the_way_that_may_not_be_searched_is_named(open_dir):
    closed = os.path.join(open_dir, "closed")
    os.mkdir(closed, 0o750)
    os.chown(closed, 0, grp.getgrnam("daemon").gr_gid)
    sock = os.path.join(closed, "x.sock")
    status, _, err = as_nobody("stats", "--socket", sock)
    assert status == 1
    assert err == (
        f"xenmux stats: cannot reach xenmux at {sock}: permission denied "
        f"(the directory {closed}'s group is daemon)\n"
    )


@needs_root
def test_rescan_refused_by_the_daemon_exits_1_with_its_reason(sim, daemon_factory, open_dir):
    d = daemon_factory(sim, "--socket-group", "nogroup", sock=os.path.join(open_dir, "x.sock"))
    status, _, err = as_nobody("rescan", "--socket", d.sock)
    assert status == 1
    assert err == "xenmux rescan: rescan needs root or a group allowed by --allow-rescan-group\n"
    status, out, _ = as_nobody("domains", "-o", "json", "--socket", d.sock)
    assert status == 0 and len(json_lines(out)) == 9
