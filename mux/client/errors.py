"""What can go wrong talking to the daemon, said so that a person knows what to do.

A refused permission, a missing socket and a daemon that accepts but never answers are
different problems with different fixes; each gets its own sentence, and only a socket
that is missing or dead suggests that `xenmux serve` is not running.
"""

from __future__ import annotations

import errno
import grp
import os
import stat

from mux.protocol import SOCKET_ENV


class XenmuxError(Exception):
    """The daemon answered a request with an error, or cannot be reached."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class Unreachable(XenmuxError, ConnectionError):
    """No connection to the daemon, or the one there was is lost."""


class TimedOut(Unreachable, TimeoutError):
    """The daemon accepted the connection but did not answer in time."""


NOT_RUNNING_HINT = f"is `xenmux serve` running? --socket or ${SOCKET_ENV} choose another socket"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _unsearchable_directory(path: str) -> str | None:
    """The first directory on the way to `path` that we may not search, if any."""
    current = "/"
    for part in os.path.abspath(path).split("/")[1:-1]:
        current = os.path.join(current, part)
        if not os.access(current, os.X_OK):
            return current
    return None


def _permission_reason(path: str) -> str:
    """Whose permission is missing: the socket's group, or a directory's on the way to it."""
    directory = _unsearchable_directory(path)
    if directory is None:
        target, what = path, "the socket"
    else:
        target, what = directory, f"the directory {directory}"
    try:
        gid = os.stat(target).st_gid
    except OSError:
        return "permission denied"
    return f"permission denied ({what}'s group is {_group_name(gid)})"


def describe_connect_error(path: str, exc: OSError) -> str:
    """The reason a connect() to `path` failed, in words (without the path)."""
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return _permission_reason(path)
    if code == errno.ENOENT:
        return f"no such socket ({NOT_RUNNING_HINT})"
    if code == errno.ECONNREFUSED:
        try:
            is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
        except OSError:
            is_socket = True
        if not is_socket:
            return f"not a socket ({NOT_RUNNING_HINT})"
        return f"connection refused: nothing listens there ({NOT_RUNNING_HINT})"
    if code == errno.ENOTDIR:
        return "a part of the path is not a directory"
    if code == errno.EAGAIN:
        return "the daemon's queue of new connections is full (it is overloaded or stopped)"
    if isinstance(exc, TimeoutError) or code == errno.ETIMEDOUT:
        return "the connection was not accepted in time (the daemon is overloaded or stopped)"
    return exc.strerror or str(exc)


def unreachable(path: str, exc: OSError) -> Unreachable:
    return Unreachable(f"cannot reach xenmux at {path}: {describe_connect_error(path, exc)}")


def no_answer(path: str, op: str, timeout: float) -> TimedOut:
    return TimedOut(
        f"xenmux at {path} accepted the connection but did not answer {op} within {timeout:.3g} s"
    )


def lost(path: str, why: str) -> Unreachable:
    return Unreachable(f"lost the connection to xenmux at {path}: {why}")
