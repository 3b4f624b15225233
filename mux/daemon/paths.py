"""The daemon's directories must be writable by root and the daemon only.

Whoever can write the directory that holds the socket can put their own socket there and
feed root's `xenmux wait` a forged crash; whoever can write the state directory can forge
its history. So the socket directory and the state directory must be owned by root or by
the daemon's euid and writable by neither group nor others (a sticky bit does not help: in
/tmp anyone may bind the name first). Every directory above them must be owned by root or
the daemon's euid too, and writable by others only with the sticky bit (which keeps others
from renaming ours away). The path is walked one component at a time with lstat: a symlink
is followed only when root or the daemon owns it, and its target is checked the same way.
"""

from __future__ import annotations

import os
import stat
from collections import deque

MAX_SYMLINKS = 40  # as the kernel's path walk


class UnsafePathError(OSError):
    """A directory the daemon must not use; the message is one line for the operator."""


def _trusted() -> set[int]:
    return {0, os.geteuid()}


def _owner(uid: int) -> str:
    return "root" if uid == 0 else f"uid {uid}"


def _check(path: str, st: os.stat_result, what: str, final: bool) -> None:
    where = f"{what} {path}" if final else f"{path}, above {what},"
    if st.st_uid not in _trusted():
        raise UnsafePathError(
            f"{where} is owned by {_owner(st.st_uid)}, not by root or the daemon "
            f"({_owner(os.geteuid())}): its owner could replace the daemon's files there"
        )
    mode = stat.S_IMODE(st.st_mode)
    writable = mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and (final or not mode & stat.S_ISVTX):
        who = {0o020: "group", 0o002: "others"}.get(writable, "group and others")
        sticky = final and mode & stat.S_ISVTX
        raise UnsafePathError(
            f"{where} is writable by {who} (mode {mode:04o}"
            f"{', sticky or not' if sticky else ''}): another user could replace the "
            "daemon's files there; use a directory that only root or the daemon can write"
        )


def _walk(path: str, what: str, missing_ok: bool) -> bool:
    """Check every directory of `path`; False when a missing part stopped the walk (and
    `missing_ok`: the daemon will create the rest)."""
    parts = deque(p for p in os.path.abspath(path).split("/") if p and p != ".")
    current = "/"
    _check(current, os.lstat(current), what, final=not parts)
    links = 0
    while parts:
        name = parts.popleft()
        if name == "..":
            current = os.path.dirname(current)
            continue
        nxt = os.path.join(current, name)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            if missing_ok:
                return False
            raise UnsafePathError(f"{what} {path} does not exist") from None
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in _trusted():
                raise UnsafePathError(
                    f"{nxt}, on the way to {what} {path}, is a symlink owned by "
                    f"{_owner(st.st_uid)}: the daemon follows only those of root or its own"
                )
            links += 1
            if links > MAX_SYMLINKS:
                raise UnsafePathError(f"{what} {path}: too many levels of symbolic links")
            target = os.readlink(nxt)
            if target.startswith("/"):
                current = "/"
            parts.extendleft(reversed([p for p in target.split("/") if p and p != "."]))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(f"{what} {path}: {nxt} is not a directory")
        _check(nxt, st, what, final=not parts)
        current = nxt
    return True


def check_private_dir(path: str, what: str, *, missing_ok: bool = False) -> None:
    """Raise UnsafePathError unless `path` is a directory the daemon may trust (see the
    module's docstring). `what` names it for the message, e.g. "the state directory
    (--state-dir)". With `missing_ok`, a directory not there yet passes when what exists of
    its path does: the daemon is to create the rest."""
    _walk(path, what, missing_ok)


def ensure_private_dir(path: str, mode: int, what: str) -> None:
    """Create `path` with `mode` (its missing parents 0755) unless it exists, then check it."""
    if not _walk(path, what, missing_ok=True):
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o755, exist_ok=True)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            pass  # made meanwhile: the check below decides
    _walk(path, what, missing_ok=False)
