"""The `xenmux sim` process: the host, its xenstored, and the control socket.

Start-up order (the socket's existence means ready):
  1. DIR/domains.shm with dom0 and guests 1..N, and their xenstore nodes (introduced);
  2. DIR/control.sock;
  3. DIR/xenstored.sock, last. Each socket is bound under a temporary name, listening, and
     renamed into place, so a client that sees the file can connect.

With `external_xenstored` (`xenmux sim --external-xenstored PATH`) the sim serves no
xenstored of its own: the toolstack's xenstore side effects go over the wire to the
xenstored at PATH (for instance Debian's real C xenstored or oxenstored running under
the stand-in hypervisor of mux.realxen, reading this sim's DIR/domains.shm), and VIRQ_DOM_EXC
reaches it only as the datagrams of `--virq-socket`. Ready is then the ready line, after
DIR/control.sock is bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import mmap
import os
import random
import signal
import socket
import sys
from collections.abc import Iterable

from mux.records import SHUTDOWN_SUSPEND, parse_reason, reason_name
from mux.sim.changes import ChangeServer, bind_seqpacket
from mux.sim.guests import ToolstackBook, check_settings
from mux.sim.host import Hypervisor, SimError, SimHost, TruthLog
from mux.sim.hostpath import HostPath
from mux.sim.paths import ARMED, sim_paths
from mux.sim.shm import ShmTable
from mux.sim.toolstack import LocalToolstack, WireToolstack, domain_nodes
from mux.sim.xenstored import Xenstored, serve_unix
from mux.xenstore.wire import XenstoreError

log = logging.getLogger("mux.sim")

CONTROL_LINE_MAX = 1 << 20
# What stops the sim, its sockets and shared memory removed: Ctrl-C, SIGTERM, and SIGHUP (a
# closed terminal).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _live(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def bind_unix(path: str, backlog: int = 4096) -> socket.socket:
    """A listening socket at `path`, appearing there only once it accepts connections."""
    if os.path.lexists(path):
        if _live(path):
            raise SimError(f"{path} is in use: is another sim running in this directory?")
        os.unlink(path)
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.getpid()}.{os.path.basename(path)}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        sock.listen(backlog)
        os.rename(tmp, path)
    except BaseException:
        sock.close()
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    sock.setblocking(False)
    return sock


class ResumesOutsideLibxl:
    """A toolstack that can resume a domain without XS_RESUME, as one that resumes it
    outside libxl does (`sim-ctl resume --no-xs-resume`): the hypervisor resumes it and
    xenstored is not told, so C xenstored's shutdown latch stays set."""

    xs_resume = True

    @contextlib.contextmanager
    def resuming(self, *, xs_resume: bool):
        self.xs_resume = xs_resume
        try:
            yield
        finally:
            del self.xs_resume  # back to the class's: libxl's XS_RESUME


class SimToolstack(ResumesOutsideLibxl, LocalToolstack):
    """The toolstack on the sim's own xenstored (LocalToolstack), as ResumesOutsideLibxl."""

    def resume(self, domid: int) -> None:
        if self.xs_resume:
            super().resume(domid)


class ExternalToolstack(ResumesOutsideLibxl):
    """The toolstack's side against an external xenstored (`WireToolstack`), which may go away.

    While that xenstored is unreachable (stopped, restarting) its xenstore work is skipped,
    as the hypervisor goes on without it: a `reintroduce()` after it is back writes every
    domain's nodes again and introduces the living domains, as a dom0's init scripts do for
    a fresh xenstored. Error replies (`XS_ERROR`) still reach the caller.

    `after_virq()` makes VIRQ handling synchronous, as in the sim's own xenstored: the
    datagram is queued before the request, and both real servers handle a pending VIRQ
    before the socket input of the same poll round, so once the round trip returns the
    firings of that VIRQ have been queued to every watcher.
    """

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._ts: WireToolstack | None = None
        self._deferred: list[int] | None = None
        self.reconnect()

    @contextlib.contextmanager
    def batch(self):
        """Introductions wait until the end of the block: a batch's nodes are all written
        first, then each domain is introduced (the order docs/sim.md gives for `create
        --count`). A real C xenstored pays for every request in proportion to the domains
        it has introduced, so 1,000 domains introduced one by one between their node writes
        cost it ~30 s; written first, ~0.5 s."""
        if self._deferred is not None:
            yield
            return
        self._deferred = []
        try:
            yield
        finally:
            deferred, self._deferred = self._deferred, None
            for domid in deferred:
                self.introduce(domid)

    @property
    def connected(self) -> bool:
        return self._ts is not None

    def reconnect(self) -> None:
        self.close()
        try:
            self._ts = WireToolstack(self.path, timeout=self.timeout)
        except OSError as exc:
            raise SimError(f"cannot reach the external xenstored at {self.path}: {exc}") from None

    def _do(self, what: str, fn, *args) -> None:
        ts = self._ts
        if ts is None:
            log.info("external xenstored is down: %s skipped", what)
            return
        try:
            fn(ts, *args)
        except (OSError, TimeoutError) as exc:  # ConnectionError is an OSError
            log.warning("external xenstored at %s went away (%s): %s skipped", self.path, exc, what)
            self.close()

    def write_domain(self, dom) -> None:
        self._do(f"writing /local/domain/{dom.domid}", WireToolstack.write_domain, dom)

    def introduce(self, domid: int) -> None:
        if self._deferred is not None:
            self._deferred.append(domid)
            return
        self._do(f"XS_INTRODUCE {domid}", WireToolstack.introduce, domid)

    def resume(self, domid: int) -> None:
        if self.xs_resume:
            self._do(f"XS_RESUME {domid}", WireToolstack.resume, domid)

    def release(self, domid: int) -> None:
        self._do(f"XS_RELEASE {domid}", WireToolstack.release, domid)

    def remove_domain(self, domid: int, uuid: str) -> None:
        self._do(f"removing /local/domain/{domid}", WireToolstack.remove_domain, domid, uuid)

    def after_virq(self) -> None:
        self._do("VIRQ round trip", lambda ts: ts.client.sync())

    def reintroduce(self, domains) -> list[int]:
        """Reconnect, write every domain's nodes, introduce the guests that are not dying."""
        self.reconnect()
        assert self._ts is not None
        introduced = []
        for dom in sorted(domains, key=lambda d: d.domid):
            if dom.domid == 0:
                for path, value, _perms in domain_nodes(dom):
                    self._ts.client.write(path, value)
                continue
            self._ts.write_domain(dom)
            if not dom.dying:
                self._ts.introduce(dom.domid)
                introduced.append(dom.domid)
        return introduced

    def close(self) -> None:
        if self._ts is not None:
            try:
                self._ts.close()
            except OSError:
                pass
            self._ts = None


class ExternalHost(SimHost):
    """The lifecycle against an external xenstored: a batch create introduces its domains
    after all their nodes are written (see ExternalToolstack.batch)."""

    toolstack: ExternalToolstack

    def create(self, **kwargs):
        with self.toolstack.batch():
            return super().create(**kwargs)


class ArmedFailuresFile:
    """The sim's side of DIR/hypercall-faults: how many domain-info calls it has armed to
    fail (mux.sim.backend.ArmedFailures is the reading side). Removed when the sim ends."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, ARMED.size)
            self._mm: mmap.mmap | None = mmap.mmap(fd, ARMED.size)
        finally:
            os.close(fd)
        self.armed = 0

    def arm(self, count: int) -> int:
        assert self._mm is not None
        self.armed += count
        ARMED.pack_into(self._mm, 0, self.armed)
        return self.armed

    def close(self) -> None:
        if self._mm is None:
            return
        self._mm.close()
        self._mm = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Sim:
    """One simulated host. `build()` is synchronous; `serve()` binds the sockets."""

    def __init__(
        self,
        directory: str,
        domains: int,
        *,
        xs_version: str = "4.17",
        virq_sockets: Iterable[str] = (),
        seed: int | None = None,
        external_xenstored: str | None = None,
        xen_version: str = "4.17",
    ) -> None:
        self.dir = directory
        self.n_domains = domains
        self.paths = sim_paths(directory)
        self.rng = random.Random(seed)
        self.seed = seed
        self.external = external_xenstored
        self.shm = ShmTable(self.paths.shm, xen_version=xen_version)
        self.truth = TruthLog(self.paths.truth)
        self.failures = ArmedFailuresFile(self.paths.hypercall_faults)
        # The sim's own xenstored exists in both modes (counters, `list`), but with an
        # external one it is neither served nor told of VIRQs.
        if external_xenstored:
            self.virq_paths = list(virq_sockets)
            self._dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._dgram.setblocking(False)
            self.hv = Hypervisor(self.shm, rng=self.rng, truth=self.truth)
            self.xs = Xenstored(self.hv, xs_version)
            try:
                self.toolstack = ExternalToolstack(external_xenstored)
            except BaseException:
                self._dgram.close()
                self.shm.close(unlink=True)
                self.truth.close()
                self.failures.close()
                raise
            self.hv.on_virq(self._external_virq)
            self.host = ExternalHost(self.hv, self.toolstack)
        else:
            self.hv = Hypervisor(
                self.shm, rng=self.rng, virq_sockets=virq_sockets, truth=self.truth
            )
            self.xs = Xenstored(self.hv, xs_version)
            self.hv.on_virq(self.xs.check_domains)
            self.toolstack = SimToolstack(self.xs)
            self.host = SimHost(self.hv, self.toolstack)
        self.book = ToolstackBook(self.host, self.paths.toolstack_log)
        self.busy: set[int] = set()  # domids inside a churn lifecycle
        self._servers: list[asyncio.AbstractServer] = []
        # With its own xenstored the host's change path runs on a C thread (hostpath.py).
        self.path = None if external_xenstored else HostPath(self.hv, self.xs, self.toolstack, seed)
        self._changes = ChangeServer(self.host, self.xs.counters, self.path)
        self._control_clients: set[asyncio.StreamWriter] = set()
        self._control_tasks: set[asyncio.Task] = set()  # their handlers (a churn runs in one)
        self._bound: list[str] = []
        self.closed = False

    def _external_virq(self) -> None:
        """VIRQ_DOM_EXC for the external xenstored: its datagram, then a round trip."""
        for path in self.virq_paths:
            try:
                self._dgram.sendto(b"V", path)
            except OSError:
                pass  # not there (restarting): it misses this one, as a masked port would
        self.toolstack.after_virq()

    def build(self) -> None:
        # dom0's nodes as xencommons writes them; dom0 is introduced by xenstored itself.
        self.toolstack.write_domain(self.hv.domains[0])
        if self.n_domains:
            self.host.create(count=self.n_domains)

    async def serve(self) -> None:
        control = bind_unix(self.paths.control)
        self._bound.append(self.paths.control)
        self._servers.append(
            await asyncio.start_unix_server(
                self._control_client, sock=control, limit=CONTROL_LINE_MAX
            )
        )
        self._changes.serve(bind_seqpacket(self.paths.changes))
        self._bound.append(self.paths.changes)
        if self.external:
            return
        xs_sock = bind_unix(self.paths.xenstored)
        self._bound.append(self.paths.xenstored)
        self._servers.append(await serve_unix(self.xs, xs_sock))

    def ready_line(self) -> dict:
        return {
            "ready": True,
            "domains": self.n_domains,
            "xs_version": self.xs.xs_version,
            "flavour": self.xs.rules.flavour,
            "xenstored": self.external or self.paths.xenstored,
            "external_xenstored": bool(self.external),
            "control": self.paths.control,
            "shm": self.paths.shm,
            "truth": self.paths.truth,
            "pid": os.getpid(),
        }

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # The xenstored socket goes first: its absence means "not ready".
        for path in reversed(self._bound):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        for server in self._servers:
            server.close()
        self._changes.close()
        self.xs.close_all()
        for writer in list(self._control_clients):
            writer.close()
        # A request still running (a churn) must end before the table closes under it.
        for task in self._control_tasks:
            task.cancel()
        await asyncio.gather(*self._control_tasks, return_exceptions=True)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except TimeoutError:
                pass
        if self.external:
            self.toolstack.close()
            self._dgram.close()
        self.book.close()
        self.shm.close(unlink=True)
        self.truth.close()
        self.failures.close()

    # -- control socket ------------------------------------------------------------------------

    async def _control_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._control_clients.add(writer)
        task = asyncio.current_task()
        self._control_tasks.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    reply = {"ok": False, "error": "request line too long"}
                    writer.write(json.dumps(reply).encode() + b"\n")
                    break
                if not line:
                    break
                reply = await self.control(line)
                writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # The sim is stopping (a signal) during a long request (a churn): the request is
            # given up. Ending the task here, not cancelled, keeps asyncio's stream server
            # from logging the cancellation as a traceback.
            pass
        finally:
            self._control_tasks.discard(task)
            self._control_clients.discard(writer)
            writer.close()

    async def control(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise SimError('a request is a JSON object with an "op"')
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        except SimError as exc:
            return {"ok": False, "error": str(exc)}
        op = req["op"]
        handler = getattr(self, f"_op_{op.replace('-', '_')}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown op {op!r}"}
        guard = self.hv.guard  # what the change thread did is known before the op, and after
        try:
            with guard:
                before = self.xs.counters.as_dict()
                virqs = self.hv.virqs
                result = handler(req)
            if asyncio.iscoroutine(result):
                result = await result
        except (SimError, XenstoreError) as exc:
            return {"ok": False, "error": str(exc)}
        except (KeyError, TypeError, ValueError) as exc:
            return {"ok": False, "error": f"bad {op} request: {exc}"}
        with guard:
            after = self.xs.counters.as_dict()
            virqs = self.hv.virqs - virqs
        reply = {"ok": True, "op": op}
        reply.update(result or {})
        reply["virqs"] = virqs
        reply["firings"] = {
            "@releaseDomain": after["release_firings"] - before["release_firings"],
            "@releaseDomain/<domid>": after["release_dom_firings"] - before["release_dom_firings"],
            "@introduceDomain": after["introduce_firings"] - before["introduce_firings"],
        }
        reply["events"] = after["events"] - before["events"]
        return reply

    @staticmethod
    def _target(req: dict) -> int | str:
        target = req["domid"]
        if target == "all":
            return "all"
        if isinstance(target, bool) or not isinstance(target, (int, str)):
            raise SimError(f"not a domid: {target!r}")
        try:
            return int(target)
        except ValueError:
            raise SimError(f"not a domid: {target!r}") from None

    @staticmethod
    def _doms(doms) -> dict:
        return {"domids": [d.domid for d in doms]}

    def _op_ping(self, req):
        return {}

    def _op_info(self, req):
        info = self.ready_line()
        del info["ready"]
        info["guests"] = len(self.host.guests())
        info["introduced"] = len(self.xs.domains)
        info["connections"] = len(self.xs.connections)
        info["counters"] = self.xs.counters.as_dict()
        info["rover"] = self.hv.rover
        return info

    def _op_create(self, req):
        domid = req.get("domid")
        settings = check_settings(req.get("settings"))
        doms = self.host.create(
            uuid=req.get("uuid"),
            domid=None if domid is None else int(domid),
            name=req.get("name"),
            count=int(req.get("count", 1)),
            introduce=bool(req.get("introduce", True)),
            paused=bool(req.get("paused", False)),
        )
        self.book.created(doms, settings, req.get("by"))
        return {"domains": [self.book.row(d) for d in doms]}

    def _op_pause(self, req):
        return {"domain": self.book.row(self.host.pause(int(req["domid"])))}

    def _op_unpause(self, req):
        return {"domain": self.book.row(self.host.unpause(int(req["domid"])))}

    def _op_shutdown(self, req):
        try:
            reason = parse_reason(req.get("reason", "poweroff"))
        except ValueError as exc:
            raise SimError(str(exc)) from None
        return self._doms(self.host.shutdown(self._target(req), reason))

    def _op_suspend(self, req):
        dom = self.host.suspend(int(self._target(req)), silent=bool(req.get("silent")))
        return self._doms([dom])

    def _op_resume(self, req):
        """XEN_DOMCTL_resumedomain (fires nothing), then XS_RESUME unless `xs_resume` is
        false. `fast` is the cooperative resume (`xc_domain_resume(.., fast=1)`, libxl's
        suspend_cancel, `xl save -c`): the guest's suspend hypercall returns "cancelled", so
        only a domain suspended can be resumed so."""
        domid = int(self._target(req))
        fast, xs_resume = req.get("fast", False), req.get("xs_resume", True)
        if not isinstance(fast, bool) or not isinstance(xs_resume, bool):
            raise SimError("fast and xs_resume are true or false")
        if fast:
            dom = self.hv.domains.get(domid)
            if dom is not None and dom.shutdown and dom.reason != SHUTDOWN_SUSPEND:
                raise SimError(
                    f"domain {domid} is shut down with reason {reason_name(dom.reason)}, not "
                    "suspend: a fast resume only cancels a suspend"
                )
        with self.toolstack.resuming(xs_resume=xs_resume):
            return self._doms([self.host.resume(domid)])

    def _op_destroy(self, req):
        doms = self.host.destroy(self._target(req), zombie=bool(req.get("zombie")))
        self.book.destroyed(doms, req.get("by"))
        return self._doms(doms)

    # The toolstack's and the guests' own operations (mux.sim.guests) ------------------------

    def _op_domain(self, req):
        """One domain's row with its stored on_* settings (what `xl list -l` shows)."""
        return {"domain": self.book.row(self.host.get(int(self._target(req))))}

    def _op_domains(self, req):
        """The rows (or null) of a list of domids."""
        return {"domains": self.book.rows(list(req["domids"]))}

    def _op_destroy_incarnations(self, req):
        """Destroy each [domid, uuid] still there, in one table change: `there` says which."""
        return {"there": self.book.destroy_incarnations(list(req["incarnations"]), req.get("by"))}

    def _op_guest(self, req):
        return self._doms([self.book.guest(int(self._target(req)), str(req["action"]))])

    def _op_dump_core(self, req):
        dom = self.book.dump_core(int(self._target(req)), str(req["path"]), req.get("by"))
        return self._doms([dom])

    def _op_rename(self, req):
        dom = self.book.rename(
            int(self._target(req)), str(req["name"]), str(req["uuid"]), req.get("by")
        )
        return {"domain": self.book.row(dom)}

    def _op_soft_reset(self, req):
        return self._doms([self.book.soft_reset(int(self._target(req)), req.get("by"))])

    def _op_release(self, req):
        domid = int(self._target(req))
        self.host.release(domid)
        return {"domids": [domid]}

    def _op_fail_hypercalls(self, req):
        """The next `count` domain-info calls of each backend reading this host fail."""
        count = int(req.get("count", 1))
        if not 1 <= count <= 1000:
            raise SimError(f"count must be 1..1000, not {count}")
        return {"armed": self.failures.arm(count)}

    def _op_virq(self, req):
        self.host.virq()
        return {}

    def _op_list(self, req):
        doms = [self.hv.domains[d] for d in sorted(self.hv.domains)]
        out = []
        for dom in doms:
            row = self.book.row(dom)
            if self.external:  # the external xenstored's view is its own
                row["introduced"] = row["latched"] = None
            else:
                xsd = self.xs.domains.get(dom.domid)
                row["introduced"] = xsd is not None
                row["latched"] = bool(xsd and xsd.shutdown)
            out.append(row)
        return {"domains": out}

    async def _op_restart_xenstored(self, req):
        """Stop xenstored and start it again after `down` seconds, as an administrator's
        restart would: every connection and watch is lost, the latches start afresh, and the
        introduced domains are introduced again (as a dom0's init does after a restart)."""
        if self.external:
            raise SimError(
                f"the xenstored is external ({self.external}): restart it yourself, then "
                "send `reintroduce`"
            )
        down = float(req.get("down", 0.2))
        if not 0 <= down <= 60:
            raise SimError(f"down must be 0..60 seconds, not {down}")
        path = self.paths.xenstored
        server = self._servers[-1]
        os.unlink(path)
        server.close()
        with self.hv.guard:  # the latches are the change thread's too
            self.xs.close_all()
            for dom in self.xs.domains.values():
                dom.shutdown = False
        await asyncio.sleep(down)
        sock = bind_unix(path)
        self._servers[-1] = await serve_unix(self.xs, sock)
        return {"down": down}

    def _op_reintroduce(self, req):
        """External xenstored only: reconnect to it (after a restart), write every domain's
        nodes again and introduce the living guests, as a dom0's init does."""
        if not self.external:
            raise SimError("reintroduce is for an external xenstored (--external-xenstored)")
        return {"domids": self.toolstack.reintroduce(list(self.hv.domains.values()))}

    async def _op_churn(self, req):
        # Imported here: a sim started for the harness, which never churns, does not pay for it.
        from mux.sim.churn import Churn

        churn = Churn(
            self.host,
            self.busy,
            seed=req.get("seed"),
            step_delay=float(req.get("step_delay", 0.005)),
            kinds=req.get("kinds"),
            domids=req.get("domids"),
            hold=float(req.get("hold", 2.0)),
            book=self.book if req.get("guests_only") else None,
        )
        return await churn.run(float(req.get("seconds", 10)), float(req.get("rate", 10)))


def _build_frozen(sim: Sim) -> None:
    """Build the host with the cyclic collector off, then freeze what was built: the domains
    and their nodes live as long as the process, and the collections their allocation set
    off scanned the growing heap again and again (a third of the build's CPU at 4,000 and
    32,000 domains); frozen, no later collection scans them either (on the change path)."""
    gc.disable()
    try:
        sim.build()
    finally:
        gc.enable()
    gc.freeze()


def _install_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def run_sim(sim: Sim) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await sim.serve()
        print(json.dumps(sim.ready_line()), flush=True)
        await stop.wait()
    finally:
        await sim.close()
    return 0


def main(
    directory: str,
    domains: int,
    *,
    xs_version: str = "4.17",
    virq_sockets: Iterable[str] = (),
    seed: int | None = None,
    external_xenstored: str | None = None,
    xen_version: str = "4.17",
) -> int:
    os.makedirs(directory, exist_ok=True)
    paths = sim_paths(directory)
    for path in (paths.xenstored, paths.control):
        if os.path.lexists(path) and _live(path):
            print(f"xenmux sim: {path} is in use: another sim runs in {directory}", file=sys.stderr)
            return 1
    # Until the event loop takes the signals over, SIGTERM and SIGHUP unwind through the
    # clean-up below (SIGINT does, as KeyboardInterrupt).
    for sig in STOP_SIGNALS[1:]:
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    try:
        sim = Sim(
            directory,
            domains,
            xs_version=xs_version,
            virq_sockets=virq_sockets,
            seed=seed,
            external_xenstored=external_xenstored,
            xen_version=xen_version,
        )
    except SimError as exc:
        print(f"xenmux sim: {exc}", file=sys.stderr)
        return 1
    try:
        _build_frozen(sim)
        _install_loop_policy()
        return asyncio.run(run_sim(sim))
    except SimError as exc:
        print(f"xenmux sim: {exc}", file=sys.stderr)
        return 1
    finally:
        if not sim.closed:
            sim.shm.close(unlink=True)
            sim.truth.close()
            sim.failures.close()
            for path in sim._bound:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
