"""Who may open one more connection: --max-clients, --max-clients-per-uid, the root reserve.

Root (uid 0, and the daemon's own uid) is exempt from the per-uid limit and alone may take
the last `root_reserve` connections, so that members of the socket's group holding idle
connections cannot lock root's `xenmux domains` or `wait` out. A refusal is an error frame
naming the uid and the limit (docs/protocol.md), never a reset. The limits must fit the
process's file-descriptor limit, or accept() itself would fail before any rule is applied:
`fit_fd_limit` raises the soft limit, or lowers the limits to what the hard one allows.
"""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, replace

from mux.protocol import ERR_TOO_MANY_CLIENTS, ERR_TOO_MANY_CONNECTIONS


@dataclass(frozen=True)
class Limits:
    max_clients: int = 4096
    per_uid: int = 1024  # connections one unprivileged uid may hold
    root_reserve: int = 16  # of max_clients, kept for root


class Clients:
    """The open connections, counted per uid."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._open: dict[Hashable, int] = {}  # connection -> its uid
        self._by_uid: Counter[int] = Counter()
        self.lingering = 0  # refused connections being closed gently (see ClientConnection)

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator:
        return iter(list(self._open))

    def held_by(self, uid: int) -> int:
        return self._by_uid[uid]

    def admit(self, conn: Hashable, uid: int, privileged: bool) -> tuple[str, str] | None:
        """Count `conn` in, or return why not: (error code, message)."""
        lim = self.limits
        n = len(self._open)
        if privileged:
            if n >= lim.max_clients:
                return (
                    ERR_TOO_MANY_CLIENTS,
                    f"the daemon serves {n} clients already (--max-clients {lim.max_clients})",
                )
        else:
            mine = self._by_uid[uid]
            if mine >= lim.per_uid:
                return (
                    ERR_TOO_MANY_CONNECTIONS,
                    f"uid {uid} has {mine} connections open, the most one uid may hold "
                    f"(--max-clients-per-uid {lim.per_uid})",
                )
            if n >= lim.max_clients - lim.root_reserve:
                return (
                    ERR_TOO_MANY_CONNECTIONS,
                    f"no connection left for uid {uid}: the daemon serves {n} clients and "
                    f"keeps the last {lim.root_reserve} of --max-clients {lim.max_clients} "
                    "for root (--root-reserve)",
                )
        self._open[conn] = uid
        self._by_uid[uid] += 1
        return None

    def remove(self, conn: Hashable) -> None:
        uid = self._open.pop(conn, None)
        if uid is None:
            return
        self._by_uid[uid] -= 1
        if not self._by_uid[uid]:
            del self._by_uid[uid]


def fit_fd_limit(limits: Limits, other_fds: int) -> tuple[Limits, str | None]:
    """Make room for `limits.max_clients` connections plus `other_fds` descriptors.

    Raises the soft RLIMIT_NOFILE as far as needed (the hard limit allows it without
    privilege); when that is not enough (or not allowed), returns the limits lowered to
    fit, and a line saying so. Raises ValueError when too few descriptors are left to serve.
    """
    needed = limits.max_clients + other_fds
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return limits, None
    ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    except OSError:  # setrlimit filtered out (a unit's SystemCallFilter=~@resources)
        ceiling = soft
    if ceiling >= needed:
        return limits, None
    room = ceiling - other_fds
    if room < 2:
        raise ValueError(
            f"the file-descriptor limit ({ceiling}, ulimit -n or LimitNOFILE=) leaves no room "
            f"for clients: the daemon needs {other_fds} descriptors besides them"
        )
    fitted = replace(
        limits,
        max_clients=room,
        per_uid=min(limits.per_uid, room),
        root_reserve=min(limits.root_reserve, room // 2),
    )
    return fitted, (
        f"the file-descriptor limit ({ceiling}, ulimit -n or LimitNOFILE=) allows "
        f"{room} clients, not --max-clients {limits.max_clients}: serving {room}, "
        f"{fitted.root_reserve} of them kept for root"
    )
