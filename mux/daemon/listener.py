"""The daemon's listening socket, and who is at the other end of a connection.

The socket file is the daemon's readiness: it is bound (mode 0660 from the first moment)
only once the table is complete, and removed at exit only if it is still ours. A peer's
uid and groups (SO_PEERCRED, /proc) decide what it may ask (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import socket
import struct
from collections.abc import Callable

log = logging.getLogger("xenmux.server")

BACKLOG = 1024


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, from SO_PEERCRED."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def peer_groups(pid: int, gid: int) -> set[int]:
    """The peer's primary and supplementary groups (Linux: /proc/PID/status)."""
    groups = {gid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
                    break
    except OSError:
        pass
    return groups


def resolve_group(group: str | None) -> int | None:
    """`--socket-group` / `--allow-rescan-group`: a gid, or a group name of this host."""
    if group is None or group == "":
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no group named {group!r} on this host (see /etc/group)") from None


def bind_socket(path: str, group_gid: int | None) -> socket.socket:
    """Bind the listening socket, mode 0660 from the first moment, replacing a stale file.

    A socket file whose connect is refused is left over from a daemon that died; one that
    accepts belongs to a live daemon, and we refuse to take it over.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if os.path.exists(path) or os.path.islink(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("replacing stale socket %s", path)
            os.unlink(path)
        except OSError as exc:
            if exc.errno in (errno.ENOTSOCK, errno.ECONNREFUSED):
                os.unlink(path)
            else:
                raise
        else:
            probe.close()
            raise OSError(
                errno.EADDRINUSE,
                f"another daemon is serving on {path}; stop it or choose --socket",
            )
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    if group_gid is not None:
        os.chown(path, -1, group_gid)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


class Listener:
    """The socket at `path`: opened once, closed and removed (if still ours) once."""

    def __init__(self, path: str, group_gid: int | None) -> None:
        self.path = path
        self.group_gid = group_gid
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None

    async def open(self, protocol_factory: Callable[[], asyncio.Protocol]) -> None:
        sock = bind_socket(self.path, self.group_gid)
        self._inode = os.stat(self.path).st_ino
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(protocol_factory, sock=sock, backlog=BACKLOG)

    def close(self) -> None:
        """Stop accepting, and remove the socket file unless a newer daemon replaced it."""
        if self._server is not None:
            self._server.close()
        if self._inode is None:
            return
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
