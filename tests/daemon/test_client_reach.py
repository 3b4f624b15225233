"""mux.client's timeouts hold everywhere (hello included) and an unreachable daemon is said
at once, in words. Against ContractDouble (a test double that accepts and never answers,
or goes away) and against sockets that are missing, dead or not sockets at all."""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
from contract_double import doubles

from mux.client import (
    AsyncClient,
    AsyncSubscription,
    Client,
    Subscription,
    TimedOut,
    Unreachable,
)
from mux.client.errors import describe_connect_error

NOT_RUNNING = "is `xenmux serve` running?"


@pytest.fixture
def double():
    with doubles() as make:
        yield make()


@pytest.fixture
def silent(double):
    """A daemon that accepts connections and reads requests but answers none."""
    double.silent()
    return double


@pytest.fixture
def short_dir(tmp_path):
    d = Path(tempfile.mkdtemp(prefix="xmrc", dir="/tmp"))
    yield d
    shutil.rmtree(d)


class Clock:
    def __enter__(self):
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.took = time.monotonic() - self.start


def test_a_subscription_gives_up_on_a_silent_daemon_within_its_timeout(silent):
    notices = []
    with Clock() as c, pytest.raises(TimedOut, match="did not answer hello within"):
        Subscription(
            None,
            socket_path=silent.path,
            retry_timeout=1.5,
            request_timeout=0.3,
            on_retry=notices.append,
        )
    assert 1.2 <= c.took < 2.5
    # It retried (a hello per attempt) and said so once.
    assert sum(1 for r in silent.requests if r["op"] == "hello") >= 3
    assert [type(n) for n in notices] == [TimedOut]
    assert str(notices[0]) == (
        f"xenmux at {silent.path} accepted the connection but did not answer hello within 0.3 s"
    )


def test_the_retry_budget_bounds_the_hello_too(silent):
    with Clock() as c, pytest.raises(TimedOut, match="hello within 1 s"):
        Subscription(None, socket_path=silent.path, retry_timeout=1.0)  # request_timeout 10
    assert c.took < 2.0


def test_a_client_call_honours_its_timeout(silent):
    with Clock() as c, pytest.raises(TimedOut, match=r"did not answer stats within 0\.5 s"):
        Client(silent.path, timeout=0.5).stats()
    assert 0.4 <= c.took < 1.5


def test_the_async_twins_honour_their_timeouts(silent):
    async def run() -> list[float]:
        took = []
        for make in (
            lambda: AsyncSubscription(None, socket_path=silent.path, retry_timeout=1.0).connect(),
            lambda: AsyncClient(silent.path, timeout=0.5).stats(),
        ):
            start = time.monotonic()
            with pytest.raises(TimedOut):
                await make()
            took.append(time.monotonic() - start)
        return took

    sub_took, client_took = asyncio.run(run())
    assert sub_took < 2.0 and 0.4 <= client_took < 1.5


def test_next_event_returns_by_its_timeout_during_an_outage(double):
    d = double
    d.add(3)
    with Subscription([3], socket_path=d.path, on_retry=lambda exc: None) as sub:
        d.down()
        with Clock() as c:
            assert sub.next_event(0.5) is None
        assert 0.4 <= c.took < 1.5
        d.up()
        d.event("death", 3)
        ev = sub.next_event(5)
        assert ev is not None and ev["event"] == "death" and not ev.get("missed")


def test_a_missing_socket_is_said_at_once_and_once(short_dir):
    path = str(short_dir / "nothing.sock")
    notices = []
    start = time.monotonic()

    def note(exc):
        notices.append((time.monotonic() - start, str(exc)))

    with pytest.raises(Unreachable) as info:
        Subscription(None, socket_path=path, retry_timeout=1.0, on_retry=note)
    assert len(notices) == 1 and notices[0][0] < 0.2
    assert notices[0][1] == str(info.value)
    assert str(info.value).startswith(f"cannot reach xenmux at {path}: no such socket (")
    assert NOT_RUNNING in str(info.value)


def test_a_dead_socket_and_a_file_that_is_no_socket_are_told_apart(short_dir):
    stale = str(short_dir / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()  # the file stays, nothing listens: a daemon that died
    plain = short_dir / "plain"
    plain.write_text("")
    with pytest.raises(Unreachable, match="connection refused: nothing listens there") as dead:
        Client(stale)
    with pytest.raises(Unreachable, match=r"at .*plain: not a socket") as file:
        Client(str(plain))
    assert NOT_RUNNING in str(dead.value) and NOT_RUNNING in str(file.value)


def test_a_permission_error_names_the_group_and_not_the_daemon(short_dir):
    sock = str(short_dir / "x.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock)
    try:
        gid = os.stat(sock).st_gid
        reason = describe_connect_error(sock, PermissionError(errno.EACCES, "Permission denied"))
    finally:
        s.close()
    assert reason == f"permission denied (the socket's group is {grp.getgrgid(gid).gr_name})"
    assert "xenmux serve" not in reason
    # (tests/e2e/test_commands_reach.py gets the real EACCES, as a user outside the group)


def test_the_default_notice_is_one_warning_per_outage(short_dir, caplog):
    caplog.set_level(logging.WARNING, logger="mux.client")
    path = str(short_dir / "late.sock")
    with pytest.raises(Unreachable):
        Subscription(None, socket_path=path, retry_timeout=0.6)
    (record,) = caplog.records
    message = record.getMessage()
    assert message.startswith(f"cannot reach xenmux at {path}: no such socket (")
    assert message.endswith("; retrying until it answers")
