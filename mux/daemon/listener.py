"""The daemon's listening socket, and who is at the other end of a connection.

The socket file is the daemon's readiness: it is bound (mode 0660 from the first moment)
only once the table is complete, in a directory only root or the daemon can write, and
removed at exit only if it is still ours. A peer's
uid and groups (SO_PEERCRED, /proc) decide what it may ask (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable

from mux.daemon.paths import UnsafePathError, check_private_dir, ensure_private_dir

log = logging.getLogger("xenmux.server")

BACKLOG = 1024
SUN_PATH_MAX = 107  # sockaddr_un's sun_path, less its terminating NUL


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


SOCKET_DIR = "the socket directory (--socket)"


def check_socket_path(path: str) -> None:
    """Before any work: the socket's directory (or what exists of its path) is one only
    root or the daemon can write (mux.daemon.paths), and the path fits a sockaddr_un."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise UnsafePathError(
            f"--socket {path} is longer than the {SUN_PATH_MAX} bytes a Unix socket path may have"
        )
    check_private_dir(os.path.dirname(os.path.abspath(path)), SOCKET_DIR, missing_ok=True)


def _clear_old(path: str) -> None:
    """Remove what a dead daemon left at `path`, never following a symlink; refuse to take
    over a live daemon's socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            pass
        else:
            raise OSError(
                errno.EADDRINUSE,
                f"another daemon is serving on {path}; stop it or choose --socket",
            )
        finally:
            probe.close()
        log.info("replacing stale socket %s", path)
    else:
        log.info("replacing %s, which is not a socket", path)
    os.unlink(path)


def bind_socket(path: str, group_gid: int | None) -> socket.socket:
    """Bind the listening socket, mode 0660 from the first moment, replacing a stale file.

    The directory is made 0755 if missing and checked (check_socket_path). A socket file
    whose connect is refused is left over from a daemon that died; one that accepts belongs
    to a live daemon, and we refuse to take it over.
    """
    ensure_private_dir(os.path.dirname(os.path.abspath(path)), 0o755, SOCKET_DIR)
    _clear_old(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    if group_gid is not None:
        os.chown(path, -1, group_gid, follow_symlinks=False)
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
        self._inode = os.lstat(self.path).st_ino
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(protocol_factory, sock=sock, backlog=BACKLOG)

    def close(self) -> None:
        """Stop accepting, and remove the socket file unless a newer daemon replaced it."""
        if self._server is not None:
            self._server.close()
        if self._inode is None:
            return
        try:
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
