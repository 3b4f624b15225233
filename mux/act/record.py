"""What act keeps in its state dir, so that a SIGKILL does nothing twice and skips nothing.

- `cursor`: where act is in the daemon's event stream (`HISTORY:SEQ`), replaced atomically.
  It moves past an event only once whatever that event asked for is written in the journal
  below, so an event whose job was not yet recorded is replayed after a restart.
- `actions.jsonl`: one JSON object a line, appended and flushed before the cursor moves:
    {"t": "job", "id": ..., "kind": "shutdown"|"on_death", "domid", "uuid", "name", "reason"}
    {"t": "step", "id": ..., "step": "destroyed"|"dumped"|..., ...}   a restart's phases
    {"t": "done", "id": ..., "outcome": ..., "action": ...}
    {"t": "rearm", "domid", "uuid"}      the incarnation was resumed: its next shutdown counts
    {"t": "dead", "domid", "uuid"}       the incarnation died: forget it
  A job without `done` was interrupted: it is run again on start, with its steps, each
  action re-checked against the toolstack's list first. An incarnation with a shutdown job
  and no later `rearm` or `dead` has been acted upon. On start the journal is rewritten to
  what is still needed (unfinished jobs, incarnations acted upon, recent restarts and
  deaths), and again every COMPACT_AFTER lines.
- `lock`: held (flock) while act runs, so that two acts never share one state dir.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from mux.daemon.paths import UnsafePathError, ensure_private_dir

CURSOR = "cursor"
JOURNAL = "actions.jsonl"
LOCK = "lock"
KEEP_DEATHS = 65536
COMPACT_AFTER = 100_000  # journal lines appended before it is rewritten to what is needed


class StateError(OSError):
    """The state dir cannot be used (the message says why)."""


@dataclass
class Job:
    id: str
    kind: str  # "shutdown" (an action) or a hook list ("on_death")
    domid: int
    uuid: str
    name: str
    reason: str | None
    seq: int | None = None
    steps: dict = field(default_factory=dict)  # what an interrupted run already did
    recovering: bool = False

    @property
    def incarnation(self) -> tuple[int, str]:
        return (self.domid, self.uuid)

    def fields(self) -> dict:
        return {"domid": self.domid, "uuid": self.uuid, "name": self.name, "reason": self.reason}


class Record:
    """The state dir. `durable=False` (--dry-run) keeps everything in memory."""

    def __init__(self, directory: str | None, durable: bool = True) -> None:
        self.dir = directory
        self.durable = durable and directory is not None
        self.cursor: str | None = None
        self.pending: dict[str, Job] = {}
        self.acted: set[tuple[int, str]] = set()
        self.died: dict[tuple[int, str], None] = {}  # deaths handled, oldest first
        self.restarts: dict[str, deque[float]] = defaultdict(deque)  # uuid -> times
        self._journal = None
        self._lock_fd: int | None = None
        self._counter = 0
        self._appended = 0
        if self.durable:
            self._open()

    # -- opening -----------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        assert self.dir is not None
        return os.path.join(self.dir, name)

    def _open(self) -> None:
        try:
            # serve's rule for its state dir: whoever could write here could forge the
            # record of actions done, and have act skip a destroy or repeat a restart.
            ensure_private_dir(self.dir, 0o700, "act's state directory (--state-dir)")
            fd = os.open(self._path(LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except UnsafePathError as exc:
            raise StateError(str(exc)) from None
        except OSError as exc:
            raise StateError(f"cannot use the state dir {self.dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(
                f"another xenmux act runs with the state dir {self.dir} (--state-dir)"
            ) from None
        self._lock_fd = fd
        try:
            with open(self._path(CURSOR)) as f:
                self.cursor = f.read().strip() or None
        except FileNotFoundError:
            pass
        self._replay()
        self._compact()

    def _replay(self) -> None:
        try:
            with open(self._path(JOURNAL), encoding="utf-8") as f:
                lines = f.readlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a SIGKILL mid-write: nothing came after it
            self._apply(rec)

    def _apply(self, rec: dict) -> None:
        t = rec.get("t")
        if t == "job":
            job = Job(
                id=rec["id"],
                kind=rec["kind"],
                domid=rec["domid"],
                uuid=rec["uuid"],
                name=rec.get("name") or "",
                reason=rec.get("reason"),
                seq=rec.get("seq"),
            )
            self.pending[job.id] = job
            if job.kind == "shutdown":
                self.acted.add(job.incarnation)
        elif t == "step":
            job = self.pending.get(rec["id"])
            if job is not None:
                job.steps[rec["step"]] = rec.get("value", True)
        elif t == "done":
            job = self.pending.pop(rec["id"], None)
            if rec.get("restarted") and job is not None:
                self.restarts[job.uuid].append(rec.get("time", time.time()))
        elif t == "restarted":  # kept by compaction
            self.restarts[rec["uuid"]].extend(rec["times"])
        elif t == "acted":
            self.acted.add((rec["domid"], rec["uuid"]))
        elif t == "rearm":
            self.acted.discard((rec["domid"], rec["uuid"]))
        elif t == "dead":
            self.acted.discard((rec["domid"], rec["uuid"]))
            self.died[(rec["domid"], rec["uuid"])] = None

    def _compact(self) -> None:
        """Rewrite the journal to what is still needed, then append to it."""
        tmp = self._path(JOURNAL + ".tmp")
        horizon = time.time() - 3600
        with open(tmp, "w", encoding="utf-8") as f:
            pending_incarnations = {j.incarnation for j in self.pending.values()}
            for domid, uuid in sorted(self.acted - pending_incarnations):
                f.write(json.dumps({"t": "acted", "domid": domid, "uuid": uuid}) + "\n")
            # Deaths are kept only as long as the daemon's journal could replay them, in
            # practice: the last KEEP_DEATHS of them.
            for domid, uuid in list(self.died)[-KEEP_DEATHS:]:
                f.write(json.dumps({"t": "dead", "domid": domid, "uuid": uuid}) + "\n")
            for uuid, times in self.restarts.items():
                recent = [t for t in times if t > horizon]
                if recent:
                    f.write(json.dumps({"t": "restarted", "uuid": uuid, "times": recent}) + "\n")
            for job in self.pending.values():
                f.write(json.dumps(self._job_line(job)) + "\n")
                for step, value in job.steps.items():
                    line = {"t": "step", "id": job.id, "step": step, "value": value}
                    f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(JOURNAL))
        self._journal = open(self._path(JOURNAL), "a", encoding="utf-8")  # noqa: SIM115

    # -- writing -------------------------------------------------------------------------------

    def _write(self, rec: dict) -> None:
        if self._journal is None:
            return
        # write() reaching the kernel is what survives a SIGKILL of act. No fsync: what it
        # would add is surviving a crash of dom0, and in Xen that reboots the whole host:
        # every domain is gone, and the daemon starts a new history.
        self._journal.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._journal.flush()
        self._appended += 1
        if self._appended >= COMPACT_AFTER:
            self._appended = 0
            self._journal.close()
            self._compact()

    @staticmethod
    def _job_line(job: Job) -> dict:
        return {
            "t": "job",
            "id": job.id,
            "kind": job.kind,
            "domid": job.domid,
            "uuid": job.uuid,
            "name": job.name,
            "reason": job.reason,
            "seq": job.seq,
        }

    def new_job(
        self, kind: str, domid: int, uuid: str, name: str, reason: str | None, seq: int | None
    ) -> Job:
        """A job, written to the journal before anything else happens for it."""
        self._counter += 1
        job = Job(f"{time.time_ns():x}-{self._counter}", kind, domid, uuid, name, reason, seq)
        self.pending[job.id] = job
        if kind == "shutdown":
            self.acted.add(job.incarnation)
        self._write(self._job_line(job))
        return job

    def step(self, job: Job, step: str, value: object = True) -> None:
        job.steps[step] = value
        self._write({"t": "step", "id": job.id, "step": step, "value": value})

    def done(self, job: Job, outcome: str, action: str | None, restarted: bool = False) -> None:
        self.pending.pop(job.id, None)
        now = time.time()
        if restarted:
            self.restarts[job.uuid].append(now)
        rec = {"t": "done", "id": job.id, "outcome": outcome, "action": action, "time": now}
        if restarted:
            rec["restarted"] = True
        self._write(rec)

    def mark_acted(self, domid: int, uuid: str) -> None:
        """An incarnation act made itself and must not act on (a rename-restart's kept domain)."""
        self.acted.add((domid, uuid))
        self._write({"t": "acted", "domid": domid, "uuid": uuid})

    def rearm(self, domid: int, uuid: str) -> None:
        if (domid, uuid) in self.acted:
            self.acted.discard((domid, uuid))
            self._write({"t": "rearm", "domid": domid, "uuid": uuid})

    def dead(self, domid: int, uuid: str) -> None:
        self.acted.discard((domid, uuid))
        self.died[(domid, uuid)] = None
        if len(self.died) > 2 * KEEP_DEATHS:  # keep memory bounded on a long-lived host
            for key in list(self.died)[:KEEP_DEATHS]:
                del self.died[key]
        self._write({"t": "dead", "domid": domid, "uuid": uuid})

    def recent_restarts(self, uuid: str, window: float) -> int:
        times = self.restarts.get(uuid)
        if not times:
            return 0
        horizon = time.time() - window
        while times and times[0] <= horizon:
            times.popleft()
        return len(times)

    def save_cursor(self, cursor: str | None) -> None:
        if not self.durable or cursor is None or cursor == self.cursor:
            return
        tmp = self._path(CURSOR + ".tmp")
        with open(tmp, "w") as f:
            f.write(cursor + "\n")
        os.replace(tmp, self._path(CURSOR))
        self.cursor = cursor

    def forget_cursor(self) -> None:
        self.cursor = None
        if self.durable:
            try:
                os.unlink(self._path(CURSOR))
            except FileNotFoundError:
                pass

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
