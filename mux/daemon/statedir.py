"""The daemon's state directory: one daemon at a time on it, one history per boot.

    DIR/lock                flock()ed by the daemon that owns DIR (its pid inside)
    DIR/history             {"format": 1, "history": H, "boot_id": B, "created": T}
    DIR/checkpoint          {"format": 1, "history": H, "seq": N, "table": DUMP}
    DIR/journal-<first seq> the journal's segments (journal.py)

DIR is 0750 and its files 0640, owned by the daemon's euid and egid: members of the
socket's group read the stream through the socket, never from these files. `history` names
the lineage of `seq` numbers and the boot it was made under: on another boot the table and
the journal describe domains that no longer exist, so they are discarded and a new history
starts. Anything this module cannot read as its own is `CorruptState`; the caller moves
the directory aside (`move_aside`) and starts afresh, so a bad state dir never stops the
daemon. Files are written whole to a temporary name and renamed (no fsync: the state only
has to outlive the daemon, not the host, whose reboot starts a new history anyway).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mux.daemon.paths import UnsafePathError, ensure_private_dir
from mux.reference import DumpBatches, split_dump

log = logging.getLogger("xenmux.state")

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
DEFAULT_STATE_DIR = "/var/lib/xenmux"
FORMAT = 1
DIR_MODE = 0o750
FILE_MODE = 0o640

LOCK = "lock"
HISTORY = "history"
CHECKPOINT = "checkpoint"
JOURNAL_PREFIX = "journal-"
TMP_SUFFIX = ".tmp"
_HISTORY_ID = re.compile(r"[0-9a-f]{32}")


class StateDirError(Exception):
    """The state directory cannot be used at all (in use, not ours): `serve` exits 1 with
    this one-line message."""


class CorruptState(Exception):
    """What the state directory holds is not a state this daemon can continue."""


@dataclass(frozen=True)
class History:
    history: str  # 32 hex digits, random
    boot_id: str | None
    created: float


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    table: dict  # the table's dump() at `seq`
    written_at: float  # Unix time


def new_history_id() -> str:
    return secrets.token_hex(16)


def read_boot_id(path: str = BOOT_ID_PATH) -> str | None:
    """This boot's id, or None (and a warning) when it cannot be read: then no state can be
    trusted across a restart, and every start begins a new history."""
    try:
        with open(path) as f:
            boot_id = f.read().strip()
    except OSError as exc:
        log.warning("cannot read the boot id from %s (%s): every start is a new history", path, exc)
        return None
    return boot_id or None


def _is_ours(name: str) -> bool:
    return name in (LOCK, HISTORY, CHECKPOINT) or name.startswith(JOURNAL_PREFIX)


def _is_our_tmp(name: str) -> bool:
    """A file `_write` left half-written when the daemon died."""
    return name.endswith(TMP_SUFFIX) and name.startswith((HISTORY + ".", CHECKPOINT + "."))


class StateDir:
    """A locked state directory. `lock()` makes and locks it; `close()` unlocks."""

    def __init__(self, path: str, lock_fd: int) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd
        self._write_lock = threading.Lock()  # checkpoints are written from a worker thread
        self._checkpoint_seq = -1  # of the newest checkpoint written by this daemon

    # -- taking the directory --------------------------------------------------------------

    @classmethod
    def lock(cls, path: str) -> StateDir:
        """Make `path` (0750) if needed, check that it is ours, and lock it."""
        path = os.path.abspath(path)
        try:
            # The same rule as the socket's directory (paths.py): the state dir and every
            # directory above it writable only by root or the daemon.
            ensure_private_dir(path, DIR_MODE, "the state directory (--state-dir)")
            _normalize(path)
            fd = os.open(
                os.path.join(path, LOCK),
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                FILE_MODE,
            )
        except UnsafePathError as exc:
            raise StateDirError(str(exc)) from None
        except OSError as exc:
            raise StateDirError(f"cannot use the state dir {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateDirError(
                    f"another daemon is serving from the state dir {path} (pid {holder}); "
                    "stop it or choose another --state-dir"
                ) from None
            raise StateDirError(f"cannot lock the state dir {path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fchmod(fd, FILE_MODE)
        for name in os.listdir(path):  # left by a daemon that died while writing them
            if _is_our_tmp(name):
                os.unlink(os.path.join(path, name))
        return cls(path, fd)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # and with it the flock
            self._lock_fd = None

    def move_aside(self) -> str:
        """Rename the directory to NAME.corrupt-<unix time> (kept for a post-mortem) and
        unlock it; returns the new name. The caller locks a fresh directory."""
        base = f"{self.path}.corrupt-{int(time.time())}"
        aside, n = base, 1
        while os.path.lexists(aside):
            n += 1
            aside = f"{base}-{n}"
        os.rename(self.path, aside)
        self.close()
        return aside

    # -- the history -------------------------------------------------------------------------

    def read_history(self) -> History | None:
        """The history this directory continues, or None for an empty directory."""
        try:
            raw = self._read(HISTORY)
        except FileNotFoundError:
            strangers = sorted(n for n in os.listdir(self.path) if n != LOCK and not _is_our_tmp(n))
            if strangers:
                raise CorruptState(
                    "it has no history file but holds " + ", ".join(strangers[:5])
                ) from None
            return None
        try:
            doc = json.loads(raw)
            history, boot_id, created = doc["history"], doc["boot_id"], doc["created"]
            if doc["format"] != FORMAT:
                raise CorruptState(f"its history file is of format {doc['format']!r}")
        except CorruptState:
            raise
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            raise CorruptState("its history file is not one of ours") from None
        if not isinstance(history, str) or not _HISTORY_ID.fullmatch(history):
            raise CorruptState(f"its history file names no history ({history!r})")
        if boot_id is not None and not isinstance(boot_id, str):
            raise CorruptState(f"its history file names no boot ({boot_id!r})")
        if not isinstance(created, int | float):
            raise CorruptState("its history file has no creation time")
        return History(history, boot_id, float(created))

    def new_history(self, boot_id: str | None) -> History:
        """Forget the table and the journal of a previous history; start a new one."""
        for name in os.listdir(self.path):
            if name != LOCK and (_is_ours(name) or _is_our_tmp(name)):
                os.unlink(os.path.join(self.path, name))
        history = History(new_history_id(), boot_id, time.time())
        doc = {
            "format": FORMAT,
            "history": history.history,
            "boot_id": boot_id,
            "created": history.created,
        }
        self._write(HISTORY, json.dumps(doc).encode() + b"\n")
        return history

    # -- the checkpoint ----------------------------------------------------------------------

    def read_checkpoint(self, history: str) -> Checkpoint | None:
        try:
            raw, st = self._read_stat(CHECKPOINT)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            seq, table = doc["seq"], doc["table"]
            ok = (
                doc["format"] == FORMAT
                and isinstance(seq, int)
                and not isinstance(seq, bool)
                and seq >= 0
                and isinstance(table, dict)
                and table.get("seq") == seq
                and isinstance(table.get("rows"), list)
            )
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise CorruptState("its checkpoint is not one of ours")
        if doc.get("history") != history:
            raise CorruptState(f"its checkpoint belongs to history {doc.get('history')!r}")
        return Checkpoint(seq, table, st.st_mtime)

    def write_checkpoint(self, history: str, seq: int, table: dict | DumpBatches) -> None:
        """Write the table's dump at `seq` (a whole `dump()`, or its `dump_batches()`)
        whole, then rename it into place (any thread). A checkpoint never replaces a newer
        one (a slow writer thread may come last)."""
        with self._write_lock:
            if seq < self._checkpoint_seq:
                return
            self._write(CHECKPOINT, _checkpoint_chunks(history, seq, table))
            self._checkpoint_seq = seq

    # -- files -------------------------------------------------------------------------------

    def _read(self, name: str) -> bytes:
        return self._read_stat(name)[0]

    def _read_stat(self, name: str) -> tuple[bytes, os.stat_result]:
        fd = os.open(os.path.join(self.path, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            return f.read(), os.fstat(f.fileno())

    def _write(self, name: str, data: bytes | Iterable[bytes]) -> None:
        final = os.path.join(self.path, name)
        tmp = f"{final}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
            FILE_MODE,
        )
        try:
            with os.fdopen(fd, "wb") as f:
                if isinstance(data, bytes):
                    f.write(data)
                else:
                    f.writelines(data)
            os.rename(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _checkpoint_chunks(history: str, seq: int, table: dict | DumpBatches) -> Iterator[bytes]:
    """The checkpoint document, the bytes `json.dumps` (compact) would make of it, a batch of
    rows at a time: at 32,000 domains the whole text, once as a str and once encoded, was
    15 MB of the daemon's peak, and the rows as dicts as much again (`dump_batches` makes
    them a batch at a time). Between two batches the event loop's thread may take the GIL."""
    head, batches = split_dump(table) if isinstance(table, dict) else table
    doc = {"format": FORMAT, "history": history, "seq": seq, "table": {**head, "rows": None}}
    text = json.dumps(doc, separators=(",", ":"))
    tail = "null}}"  # "rows" is the table's last key, the table the document's
    yield (text[: -len(tail)] + "[").encode()
    sep = ""
    for batch in batches:
        yield (sep + json.dumps(batch, separators=(",", ":"))[1:-1]).encode()
        sep = ","
    yield b"]}}\n"


def _normalize(path: str) -> None:
    """A state dir of the daemon's own is made 0750 with the daemon's group, whatever umask
    or an older daemon left (one of root's, checked already, is left as it is)."""
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        return
    if st.st_gid != os.getegid():
        os.chown(path, -1, os.getegid())
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)
