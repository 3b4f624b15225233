"""The simulated host: a hypervisor (domain table, domid allocation, VIRQ_DOM_EXC) and the
lifecycle operations a toolstack drives on it.

`Hypervisor` is what Xen does: it keeps the domains, writes every change to the shared-memory
table (mux.sim.shm) inside one seqlock section per batch, and raises VIRQ_DOM_EXC to the
in-process xenstored and to any extra sinks (datagram sockets, for a real xenstored running
under a stand-in event channel library).

`SimHost` is what the toolstack does around it: create = build the domain, write its xenstore
nodes, XS_INTRODUCE; resume = XEN_DOMCTL_resumedomain then XS_RESUME; destroy = dying, then
gone, then the nodes removed. The xenstore side goes through a `Toolstack` (toolstack.py).
Xen builds every domain paused (XEN_DOMCTL_createdomain); libxl writes its nodes and
introduces it still paused, and `xl create` unpauses it last (unless `-p`). `create(paused=
True)` is that order up to the introduction, the toolstack's `unpause` coming later; a plain
`create` folds the unpause into the build, so that no scan can find the domain paused (as
none would of a toolstack that unpauses at once). Pause and unpause fire nothing.

`TruthLog` is the host's own record of what the hypervisor did: one JSON line per
incarnation and lifecycle step, written once the step is in the table (a refused operation
writes nothing). `xenmux chaos` checks the daemon against it (docs/chaos.md).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import os
import random
import socket
import time
import uuid as uuidlib
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mux.records import (
    DOMID_FIRST_RESERVED,
    DOMINF_BLOCKED,
    DOMINF_DYING,
    DOMINF_PAUSED,
    DOMINF_RUNNING,
    DOMINF_SHUTDOWN,
    DOMINF_SHUTDOWNMASK,
    DOMINF_SHUTDOWNSHIFT,
    REASON_NAMES,
    SHUTDOWN_NONE,
    SHUTDOWN_SUSPEND,
    DomainRecord,
    make_flags,
    reason_name,
    uuid_str,
)
from mux.sim._simfast import DOMID_SLOTS
from mux.sim.shm import ShmTable
from mux.sim.toolstack import Toolstack
from mux.sim.xenstored import DomainSource

VIRQ_DOM_EXC = 3  # xen/include/public/xen.h

# Batches larger than this rewrite the whole table instead of moving records one by one.
_REWRITE_THRESHOLD = 32

GUEST_PAGES = 262144  # 1 GiB of 4 KiB pages

_TRUTH_PARTS_MAX = 64  # the truth log's cache of line heads and tails (steps x reasons)
_TRUTH_UNREPEATED = frozenset({"rename"})  # steps whose extras are new every time


class SimError(Exception):
    """An operation the host refuses (the message is shown to the user as is)."""


@dataclass(slots=True, eq=False)
class Domain:
    domid: int
    handle: bytes
    name: str
    flags: int
    cpu_time: int
    tot_pages: int = GUEST_PAGES
    max_pages: int = GUEST_PAGES
    vcpus: int = 2
    zombie: bool = False
    incarnation: int = 0  # the host's count of domains built, this one's number
    unique_id: int = 0  # Xen 4.20+'s id of this incarnation (0: the release has none)
    # XEN_DOMCTL_pausedomain counts: the record says paused while any pause is held.
    pause_count: int = 0
    # The handle's text, made once: the truth log writes it at every step.
    _uuid: str | None = field(default=None, init=False, repr=False)
    # The truth log's identity of this incarnation (its line's domid, uuid and inc), made
    # once per handle, for the same reason.
    _truth_id: str | None = field(default=None, init=False, repr=False)

    @property
    def uuid(self) -> str:
        if self._uuid is None:
            self._uuid = uuid_str(self.handle)
        return self._uuid

    def set_handle(self, handle: bytes) -> None:
        """A new UUID in place (xc_domain_sethandle, as libxl's rename does)."""
        self.handle = handle
        self._uuid = None
        self._truth_id = None

    @property
    def truth_id(self) -> str:
        """`"domid":D,"uuid":"U","inc":I`, the part of a truth-log line naming this domain."""
        if self._truth_id is None:
            self._truth_id = f'"domid":{self.domid},"uuid":"{self.uuid}","inc":{self.incarnation}'
        return self._truth_id

    @property
    def shutdown(self) -> bool:
        return bool(self.flags & DOMINF_SHUTDOWN)

    @property
    def dying(self) -> bool:
        return bool(self.flags & DOMINF_DYING)

    @property
    def reason(self) -> int:
        return (self.flags >> DOMINF_SHUTDOWNSHIFT) & DOMINF_SHUTDOWNMASK

    @property
    def paused(self) -> bool:
        return bool(self.flags & DOMINF_PAUSED)

    @property
    def state(self) -> str:
        if self.dying:
            return "dying"
        return "shutdown" if self.shutdown else "running"

    def record(self) -> DomainRecord:
        return DomainRecord(
            domid=self.domid,
            flags=self.flags,
            handle=self.handle,
            cpu_time=self.cpu_time,
            tot_pages=self.tot_pages,
            max_pages=self.max_pages,
            nr_online_vcpus=self.vcpus,
        )

    def as_dict(self) -> dict:
        return {
            "domid": self.domid,
            "uuid": self.uuid,
            "name": self.name,
            "state": self.state,
            "reason": reason_name(self.reason) if self.shutdown else None,
            "flags": self.flags,
            "cpu_time": self.cpu_time,
            "zombie": self.zombie,
            "paused": self.paused,
        } | ({"unique_id": f"{self.unique_id:016x}"} if self.unique_id else {})


class TruthLog:
    """The ground truth of a simulated host: an append-only file of JSON lines, one per
    lifecycle step as the hypervisor applied it, each written with one write() (a batch's
    lines in one) so that a reader never sees half a step, even of a killed sim.

    Steps: `create` (with `name`), `shutdown` (with `reason`), `resume`, `dying`, `gone`.
    Every line has `step`, `domid`, `uuid`, `inc` (the incarnation: the host's count of
    domains built, 0 for dom0), `mono` (CLOCK_MONOTONIC ns, the clock subscribers stamp
    with) and `wall` (Unix time, the clock of the daemon's `time` fields). Both are read
    just before the table changes, so no reader can see a step before its stamp.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o644
        )
        self._parts: dict[tuple, tuple[str, str]] = {}  # a step's line head and tail

    @staticmethod
    def clock() -> tuple[int, float]:
        return time.monotonic_ns(), time.time()

    def record(
        self, step: str, doms: Iterable[Domain], at: tuple[int, float], **extra: object
    ) -> None:
        if self._fd is None:
            return
        mono, wall = at
        # Formatted by hand, json.dumps only for the values: a step's line is written on the
        # host's per-change path, where a dict through json.dumps cost tens of microseconds.
        # The step and the keys are this module's identifiers; a step's head and tail (its
        # extras: a shutdown's reason) repeat, so they are made once.
        key = (step, *extra.items())
        parts = self._parts.get(key)
        if parts is None:
            tail = "".join(f',"{k}":{json.dumps(v)}' for k, v in extra.items()) + "}\n"
            parts = (f'{{"step":"{step}",', tail)
            # A rename's old_uuid never repeats: caching its parts would only fill the cache
            # and leave the reasons that do repeat uncached.
            if step not in _TRUTH_UNREPEATED and len(self._parts) < _TRUTH_PARTS_MAX:
                self._parts[key] = parts
        head, tail = parts
        stamp = f',"mono":{mono},"wall":{wall!r}'
        if step == "create":
            lines = [
                f'{head}{dom.truth_id}{stamp},"name":{json.dumps(dom.name)}{tail}' for dom in doms
            ]
        else:
            lines = [f"{head}{dom.truth_id}{stamp}{tail}" for dom in doms]
        if lines:
            os.write(self._fd, "".join(lines).encode())

    def fileno(self) -> int:
        """The log's descriptor (-1 once closed): the change thread writes its steps' lines
        there too, each with one write()."""
        return -1 if self._fd is None else self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# The guard of a host without a change thread (mux/sim/hostpath.py sets the thread's lock).
_NO_GUARD = contextlib.nullcontext()


def guarded(method):
    """A host operation: run under the host's lock, after what the change thread did."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.hv.guard:
            return method(self, *args, **kwargs)

    return run


class Hypervisor(DomainSource):
    """The domains, the shared-memory table and VIRQ_DOM_EXC."""

    def __init__(
        self,
        shm: ShmTable,
        *,
        rng: random.Random | None = None,
        virq_sockets: Iterable[str] = (),
        truth: TruthLog | None = None,
    ) -> None:
        self.shm = shm
        self.rng = rng or random.Random()
        self.truth = truth
        self.incarnations = 0  # domains built so far (dom0 is number 0)
        self.domains: dict[int, Domain] = {}
        self._ids: list[int] = []  # sorted domids: the table's order
        # Every domid's flags as the table has them (-1: free), for xenstored's domain pass.
        self._flags = array("q", [-1]) * DOMID_SLOTS
        self.rover = 0  # the last domid handed out
        self.virqs = 0
        self._virq_handlers: list[Callable[[], None]] = []
        # The change thread's lock (mux/sim/hostpath.py), and its copy of each domain's
        # truth-log identity, which changes with the domain's handle.
        self.guard: contextlib.AbstractContextManager = _NO_GUARD
        self.identities = None
        self._virq_paths = list(virq_sockets)
        self._dgram: socket.socket | None = None
        if self._virq_paths:
            self._dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._dgram.setblocking(False)
        dom0 = Domain(
            0, bytes(16), "Domain-0", make_flags(base=DOMINF_RUNNING), self._boot_cpu_time()
        )
        dom0.tot_pages = dom0.max_pages = 4 * GUEST_PAGES
        self.add([dom0])

    # What xenstored's domain pass asks (DomainSource) --------------------------------------

    def domain_flags(self, domid: int) -> int | None:
        dom = self.domains.get(domid)
        return None if dom is None else dom.flags

    def flags_table(self) -> array:
        return self._flags

    # VIRQ ----------------------------------------------------------------------------------

    def on_virq(self, handler: Callable[[], None]) -> None:
        self._virq_handlers.append(handler)

    def virq_handlers(self) -> list[Callable[[], None]]:
        return list(self._virq_handlers)

    def has_virq_sinks(self) -> bool:
        return bool(self._virq_paths)

    def raise_virq(self) -> None:
        """VIRQ_DOM_EXC: the in-process xenstored runs its domain pass before this returns."""
        self.virqs += 1
        self.shm.count_virq()
        for handler in self._virq_handlers:
            handler()
        if self._dgram is not None:
            for path in self._virq_paths:
                try:
                    self._dgram.sendto(b"V", path)
                except OSError:
                    pass  # a sink that is not there (yet) misses this one, as a masked port

    def log(
        self, step: str, doms: Iterable[Domain], at: tuple[int, float], **extra: object
    ) -> None:
        """Record steps that are in the table now, stamped `at` (taken before the change),
        in the truth log if the host keeps one."""
        if self.truth is not None:
            self.truth.record(step, doms, at, **extra)

    def new_incarnation(self) -> int:
        self.incarnations += 1
        return self.incarnations

    # Domids --------------------------------------------------------------------------------

    def alloc_domid(self, taken: set[int] | frozenset[int] = frozenset()) -> int:
        """Xen's allocation: the next free domid after the rover, wrapping below 0x7FF0."""
        dom = self.rover
        for _ in range(DOMID_FIRST_RESERVED):
            dom += 1
            if dom >= DOMID_FIRST_RESERVED:
                dom = 1
            if dom not in self.domains and dom not in taken:
                self.rover = dom
                return dom
        raise SimError("no free domid: the host is full")

    def _draw_unique_ids(self, doms: list[Domain]) -> None:
        """Xen 4.20+ (get_unique_id() in domain_create): a pseudo-random 64-bit id for every
        incarnation, drawn at each create, whatever its domid and UUID (never 0: the table's
        mark of no domain). From the host's generator, so --seed repeats them."""
        if not self.shm.has_unique_ids:
            return
        for dom in doms:
            dom.unique_id = self.rng.getrandbits(64) or 1

    def _boot_cpu_time(self) -> int:
        return self.rng.randint(1_000_000, 5_000_000)  # a new incarnation: a few ms

    # Table changes: each call is one seqlock section ---------------------------------------

    def add(self, doms: list[Domain], *, virq: bool = False) -> None:
        for dom in doms:
            if dom.domid in self.domains:
                raise SimError(f"domain {dom.domid} exists")
        if len(self.domains) + len(doms) > self.shm.capacity:
            raise SimError(f"the domain table is full ({self.shm.capacity} records)")
        for dom in doms:
            if dom.domid != 0:
                dom.incarnation = self.new_incarnation()
        self._draw_unique_ids(doms)
        at = TruthLog.clock()
        self.shm.begin()
        try:
            for dom in doms:
                self._flags[dom.domid] = dom.flags
                if dom.unique_id:
                    self.shm.set_unique_id(dom.domid, dom.unique_id)
            if len(doms) > _REWRITE_THRESHOLD:
                for dom in doms:
                    self.domains[dom.domid] = dom
                self._ids = sorted(self.domains)
                self.shm.rewrite([self.domains[d].record() for d in self._ids])
            else:
                for dom in doms:
                    self.domains[dom.domid] = dom
                    index = bisect.bisect_left(self._ids, dom.domid)
                    self._ids.insert(index, dom.domid)
                    self.shm.insert(index, dom.record())
        finally:
            self.shm.end(virq=False)
        self.log("create", doms, at)
        self._identify(doms)
        if virq:
            self.raise_virq()

    def update(self, doms: list[Domain], *, virq: bool, step: str, **extra: object) -> None:
        """Write the records of domains whose flags and CPU time changed: lifecycle `step`
        (the truth log's name for it) applied to each."""
        at = TruthLog.clock()
        ids = self._ids
        for dom in doms:
            self._flags[dom.domid] = dom.flags
        # A lifecycle step changes a record's flags and CPU time only: one C call writes
        # the section.
        self.shm.write_states(
            [(bisect.bisect_left(ids, dom.domid), dom.flags, dom.cpu_time) for dom in doms]
        )
        self.log(step, doms, at, **extra)
        self._identify(doms)  # a rename's new UUID
        if virq:
            self.raise_virq()

    def _identify(self, doms: Iterable[Domain]) -> None:
        if self.identities is not None:
            for dom in doms:
                self.identities.set_identity(dom.domid, dom.truth_id)

    def remove(self, domids: list[int], *, virq: bool) -> None:
        gone: list[Domain] = []
        at = TruthLog.clock()
        self.shm.begin()
        try:
            for domid in domids:
                if domid in self.domains:
                    self._flags[domid] = -1
                    if self.shm.has_unique_ids:
                        self.shm.set_unique_id(domid, 0)
            if len(domids) > _REWRITE_THRESHOLD:
                for domid in domids:
                    dom = self.domains.pop(domid, None)
                    if dom is not None:
                        gone.append(dom)
                self._ids = sorted(self.domains)
                self.shm.rewrite([self.domains[d].record() for d in self._ids])
            else:
                for domid in domids:
                    dom = self.domains.pop(domid, None)
                    if dom is None:
                        continue
                    gone.append(dom)
                    index = bisect.bisect_left(self._ids, domid)
                    del self._ids[index]
                    self.shm.remove(index)
        finally:
            self.shm.end()
        self.log("gone", gone, at)
        if self.identities is not None:
            for dom in gone:
                self.identities.set_identity(dom.domid, None)
        if virq:
            self.raise_virq()

    def forget(self, domid: int) -> Domain:
        """The change thread removed the domain's record (mux/sim/hostpath.py): it leaves
        the domain list too."""
        dom = self.domains.pop(domid)
        del self._ids[bisect.bisect_left(self._ids, domid)]
        return dom

    def set_paused(self, dom: Domain) -> None:
        """Write the domain's paused flag as its pause count says: one table change, no
        VIRQ (a pause fires nothing)."""
        if dom.pause_count:
            dom.flags |= DOMINF_PAUSED
        else:
            dom.flags &= ~DOMINF_PAUSED
        self.shm.begin()
        try:
            self.shm.put(bisect.bisect_left(self._ids, dom.domid), dom.record())
        finally:
            self.shm.end()

    def tick(self, domids: Iterable[int], ns: int) -> None:
        with self.guard:
            self._tick(domids, ns)

    def _tick(self, domids: Iterable[int], ns: int) -> None:
        """Running domains use CPU: grow cpu_time (not a lifecycle change, no stamp)."""
        doms = [self.domains[d] for d in domids if d in self.domains]
        if not doms:
            return
        self.shm.begin()
        try:
            for dom in doms:
                dom.cpu_time += ns
                self.shm.put(bisect.bisect_left(self._ids, dom.domid), dom.record())
        finally:
            self.shm.end(changed=False)


def _shutdown_flags(flags: int, reason: int) -> int:
    flags &= ~(DOMINF_SHUTDOWNMASK << DOMINF_SHUTDOWNSHIFT)
    return flags | DOMINF_SHUTDOWN | (reason << DOMINF_SHUTDOWNSHIFT)


def parse_uuid(text: str) -> bytes:
    try:
        return uuidlib.UUID(text).bytes
    except ValueError:
        raise SimError(f"not a UUID: {text!r}") from None


class SimHost:
    """Lifecycle operations: the hypervisor side and the toolstack's xenstore side."""

    def __init__(self, hv: Hypervisor, toolstack: Toolstack) -> None:
        self.hv = hv
        self.toolstack = toolstack
        self.rng = hv.rng

    def new_handle(self) -> bytes:
        """A random (version 4) UUID from the host's generator, so --seed repeats them."""
        return uuidlib.UUID(int=self.rng.getrandbits(128), version=4).bytes

    @guarded
    def get(self, domid: int) -> Domain:
        dom = self.hv.domains.get(domid)
        if dom is None:
            raise SimError(f"no domain {domid}")
        return dom

    @guarded
    def guests(self) -> list[Domain]:
        return [d for d in self.hv.domains.values() if d.domid != 0]

    def _guest(self, domid: int) -> Domain:
        if domid == 0:
            raise SimError("domain 0 cannot do that: it is the host")
        return self.get(domid)

    # create --------------------------------------------------------------------------------

    @guarded
    def create(
        self,
        *,
        uuid: str | bytes | None = None,
        domid: int | None = None,
        name: str | None = None,
        count: int = 1,
        introduce: bool = True,
        paused: bool = False,
    ) -> list[Domain]:
        """Build `count` domains in one table change, then write their nodes and introduce
        each (one @introduceDomain per domain, as xenstored fires one per XS_INTRODUCE).

        `introduce=False` leaves them unknown to xenstored, which then never fires for them.
        `paused=True` builds them paused and leaves them so (`xl create -p`, or a toolstack
        still attaching devices) until `unpause`; else they are unpaused from the start.
        """
        if count < 1:
            raise SimError("count must be at least 1")
        if count > 1 and (uuid is not None or domid is not None or name is not None):
            raise SimError("--uuid, --domid and --name name one domain: not with --count")
        if domid is not None:
            if not 0 < domid < DOMID_FIRST_RESERVED:
                raise SimError(
                    f"domid {domid} is not a guest domid (1..{DOMID_FIRST_RESERVED - 1})"
                )
            if domid in self.hv.domains:
                raise SimError(f"domain {domid} exists")
        handle = parse_uuid(uuid) if isinstance(uuid, str) else uuid
        if count > DOMID_FIRST_RESERVED - len(self.hv.domains):
            raise SimError(f"no room for {count} more domains")
        doms = []
        taken: set[int] = set()
        for _ in range(count):
            new_id = domid if domid is not None else self.hv.alloc_domid(taken)
            taken.add(new_id)
            doms.append(
                Domain(
                    domid=new_id,
                    handle=handle if handle is not None else self.new_handle(),
                    name=name or f"guest-{new_id}",
                    flags=make_flags(base=DOMINF_BLOCKED | (DOMINF_PAUSED if paused else 0)),
                    cpu_time=self.hv._boot_cpu_time(),
                    pause_count=int(paused),
                )
            )
        self.hv.add(doms)  # XEN_DOMCTL_createdomain raises no VIRQ
        for dom in doms:
            self.toolstack.write_domain(dom)
            if introduce:
                self.toolstack.introduce(dom.domid)
        return doms

    # pause / unpause -------------------------------------------------------------------------

    def _pausable(self, domid: int) -> Domain:
        dom = self._guest(domid)
        if dom.dying:
            raise SimError(f"domain {domid} is dying")
        return dom

    @guarded
    def pause(self, domid: int) -> Domain:
        """XEN_DOMCTL_pausedomain (`xl pause`): one more pause held; nothing fires."""
        dom = self._pausable(domid)
        dom.pause_count += 1
        if dom.pause_count == 1:
            self.hv.set_paused(dom)
        return dom

    @guarded
    def unpause(self, domid: int) -> Domain:
        """XEN_DOMCTL_unpausedomain (`xl unpause`): one pause fewer; nothing fires."""
        dom = self._pausable(domid)
        if not dom.pause_count:
            raise SimError(f"domain {domid} is not paused")
        dom.pause_count -= 1
        if not dom.pause_count:
            self.hv.set_paused(dom)
        return dom

    # shutdown / suspend / resume ---------------------------------------------------------------

    def _running(self, domid: int) -> Domain:
        dom = self._guest(domid)
        if dom.dying:
            raise SimError(f"domain {domid} is dying")
        if dom.shutdown:
            raise SimError(f"domain {domid} is already shut down ({reason_name(dom.reason)})")
        return dom

    @guarded
    def shutdown(self, target: int | str, reason: int, *, virq: bool = True) -> list[Domain]:
        if reason not in REASON_NAMES:
            raise SimError(f"unknown shutdown reason {reason}")
        if target == "all":
            doms = [d for d in self.guests() if not d.shutdown and not d.dying]
        else:
            doms = [self._running(int(target))]
        for dom in doms:
            dom.flags = _shutdown_flags(dom.flags, reason)
            dom.cpu_time += self.rng.randint(10_000_000, 100_000_000)
        if doms:
            self.hv.update(doms, virq=virq, step="shutdown", reason=reason_name(reason))
        return doms

    def suspend(self, domid: int, *, silent: bool = False) -> Domain:
        """Shutdown with reason suspend; `silent` is a suspend event channel: no VIRQ."""
        return self.shutdown(domid, SHUTDOWN_SUSPEND, virq=not silent)[0]

    @guarded
    def resume(self, domid: int) -> Domain:
        """XEN_DOMCTL_resumedomain (no VIRQ: nothing fires), then XS_RESUME as libxl sends."""
        dom = self._guest(domid)
        if dom.dying:
            raise SimError(f"domain {domid} is dying")
        if not dom.shutdown:
            raise SimError(f"domain {domid} is not shut down")
        dom.flags = (
            dom.flags & ~DOMINF_SHUTDOWN & ~(DOMINF_SHUTDOWNMASK << DOMINF_SHUTDOWNSHIFT)
        ) | (SHUTDOWN_NONE << DOMINF_SHUTDOWNSHIFT)
        # The guest runs again at once (its resume path): its record's cpu_time moves on,
        # which is what tells a watcher that missed the resume that the suspend was undone.
        dom.cpu_time += self.rng.randint(1_000_000, 10_000_000)
        self.hv.update([dom], virq=False, step="resume")
        self.toolstack.resume(domid)
        return dom

    # destroy -------------------------------------------------------------------------------

    @guarded
    def destroy(self, target: int | str | list[int], *, zombie: bool = False) -> list[Domain]:
        """`dying` (VIRQ), then the record gone (VIRQ), then the nodes removed; a list of
        domids is destroyed in one table change each way, as "all" is.

        With `zombie` the domains stay dying (held by page references) until a later destroy.
        """
        if target == "all":
            doms = self.guests()
        else:
            doms = [self._guest(int(t)) for t in (target if isinstance(target, list) else [target])]
        newly_dying = [d for d in doms if not d.dying]
        for dom in newly_dying:
            dom.flags |= DOMINF_DYING
            dom.flags &= ~(DOMINF_RUNNING | DOMINF_BLOCKED)
        if newly_dying:
            self.hv.update(newly_dying, virq=True, step="dying")
        if zombie:
            for dom in doms:
                dom.zombie = True
            return doms
        if doms:
            self.hv.remove([d.domid for d in doms], virq=True)
        for dom in doms:
            self.toolstack.remove_domain(dom.domid, dom.uuid)
        return doms

    @guarded
    def release(self, domid: int) -> None:
        """XS_RELEASE on the domain's behalf (xenstored forgets it and fires)."""
        self.toolstack.release(domid)

    @guarded
    def virq(self) -> None:
        """A VIRQ_DOM_EXC with no change (Xen may raise it spuriously)."""
        self.hv.raise_virq()
