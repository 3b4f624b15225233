"""The models measured on the same simulated host.

* `MonitorsModel`: the model `xl` uses today at its leanest, one C monitor process per domain
  (monitor.c), each with its own xenstore connection and `@releaseDomain` watch, querying its
  domain on every firing: the lower bound of the per-domain model.
* `LibxlModel`: the same model as xl really runs it, one process per domain on Debian's
  unchanged libxenlight (libxl_monitor.c: libxl's death watch), under the stand-in
  libxenctrl of mux.realxen.
* `MuxModel`: one `xenmux serve` and one C subscriber process per domain (subscriber.c),
  each subscribed to its own domid. Where a process per domain cannot be had (32,000
  domains: the pid and fd limits), a few processes hold many connections of a few domids.
* `HostModel`: no watcher; the simulated host's own cost of the same changes (the floor).

Every process appends its notifications to the model's results file (results.py).
"""

from __future__ import annotations

import json
import os
import socket
import time

from mux.bench.build import libxenlight
from mux.bench.host import HostError, python_command, wait_for_socket
from mux.bench.procs import ProcessSet, memory_kib
from mux.bench.results import ResultsFile


class Model:
    name = "?"
    # Whether the model is told of a resume (nothing fires; the daemon polls).
    sees_resume = False
    # Whether new domains' processes are started after creation (as `xl create` does);
    # otherwise the model was subscribed to the future domids beforehand.
    spawn_after_create = True
    # Whether the model tells anyone anything (the bare host does not).
    notifies = True

    def __init__(
        self,
        procs: ProcessSet,
        binaries: dict[str, str],
        workdir: str,
        *,
        xenstored_path: str,
        shm_path: str,
        xenstored_pids: list[int],
    ) -> None:
        self.procs = procs
        self.bin = binaries
        self.workdir = workdir
        self.xenstored_path = xenstored_path
        self.shm_path = shm_path
        self.xenstored_pids = list(xenstored_pids)
        self.results = ResultsFile(os.path.join(workdir, f"{self.name}.results"))
        self.clients: list[int] = []
        self.connections = 0
        self.variant = "one process per domain"

    # -- overridden ------------------------------------------------------------------------

    def start(self, domids: list[int], future: list[int] = ()) -> None:
        raise NotImplementedError

    def spawn_for(self, domid: int) -> None:
        raise NotImplementedError

    def daemon_pids(self) -> list[int]:
        return []

    def daemon_stats(self) -> dict | None:
        return None

    def daemon_memory(self) -> dict[str, int]:
        return {}

    # -- shared ----------------------------------------------------------------------------

    def xs_env(self) -> dict[str, str]:
        """The environment of a libxenstore client of this host's xenstored."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "XENSTORED_PATH": self.xenstored_path,
        }

    def roles(self) -> dict[str, list[int]]:
        return {
            "xenstored": self.xenstored_pids,
            "daemon": self.daemon_pids(),
            "clients": list(self.clients),
        }

    def all_pids(self) -> list[int]:
        return [p for pids in self.roles().values() for p in pids]

    def wait_ready(self, timeout: float) -> None:
        """Until every connection said R (subscribed, or watched and queried once)."""
        deadline = time.monotonic() + timeout
        while True:
            self.results.poll()
            if self.results.errors:
                raise HostError(f"{self.name}: {self.results.errors[0]}")
            if self.results.ready >= self.connections:
                return
            for pid, name, code in self.procs.reap([*self.clients, *self.daemon_pids()]):
                raise HostError(f"{self.name}: {name} (pid {pid}) exited with {code}")
            if time.monotonic() > deadline:
                raise HostError(
                    f"{self.name}: only {self.results.ready} of {self.connections} "
                    f"connections ready after {timeout:.0f} s"
                )
            time.sleep(0.005)

    def stop(self) -> None:
        """Clients first (they write their counters at SIGTERM), then the daemon."""
        self.procs.stop(self.clients)
        self.procs.stop(self.daemon_pids())
        self.results.poll()

    def close(self) -> None:
        self.results.close()


class HostModel(Model):
    """No model: what the simulated host itself spends on the same changes (the control
    request, the table, its xenstored's domain pass), the floor both models pay. One probe
    watches @releaseDomain and does nothing else: the floor under every watcher's latency
    (the change, the domain pass and the firing's write)."""

    name = "host"
    notifies = False
    spawn_after_create = False

    def start(self, domids: list[int], future: list[int] = ()) -> None:
        if "probe" not in self.bin:
            return
        argv = [self.bin["probe"], self.results.path]
        err = os.path.join(self.workdir, "clients.log")
        self.clients.append(self.procs.spawn(argv, name="probe", env=self.xs_env(), stderr=err))
        self.connections = 1
        self.variant = "no watcher but one probe"

    def spawn_for(self, domid: int) -> None:
        pass


class PerDomainModel(Model):
    """One process per domain: started for the domains there, and for each new one."""

    def argv(self, domid: int) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return self.xs_env()

    def _spawn(self, domid: int, new: bool) -> None:
        argv = self.argv(domid) + (["--new"] if new else [])
        err = os.path.join(self.workdir, "clients.log")
        pid = self.procs.spawn(argv, name=f"{self.name} {domid}", env=self.env(), stderr=err)
        self.clients.append(pid)
        self.connections += 1

    def start(self, domids: list[int], future: list[int] = ()) -> None:
        for d in domids:
            self._spawn(d, False)

    def spawn_for(self, domid: int) -> None:
        self._spawn(domid, True)


class MonitorsModel(PerDomainModel):
    name = "monitors"

    def argv(self, domid: int) -> list[str]:
        return [self.bin["monitor"], self.shm_path, self.results.path, str(domid)]


class LibxlModel(PerDomainModel):
    """xl's monitor on the real libxenlight. The domain info comes from the stand-in
    libxenctrl (preloaded, as the real-xen tests run the library) reading the same table."""

    name = "libxl"

    def argv(self, domid: int) -> list[str]:
        return [self.bin["libxl_monitor"], self.results.path, str(domid)]

    def env(self) -> dict[str, str]:
        return {
            # libxenlight from the Debian cache needs its library directories
            **libxenlight().environ(self.xs_env()),
            "LD_PRELOAD": self.bin["libxenctrl_stub"],
            "XENMUX_STUB_SHM": self.shm_path,
        }


class MuxModel(Model):
    name = "mux"
    sees_resume = True

    def __init__(
        self,
        *args,
        per_conn: int = 0,
        conns_per_proc: int = 0,
        burst_window: float | None = None,
        burst_window_max: float | None = None,
        burst_firings: int | None = None,
        **kw,
    ) -> None:
        super().__init__(*args, **kw)
        self.burst_window = burst_window
        self.burst_window_max = burst_window_max
        self.burst_firings = burst_firings
        self.socket_path = os.path.join(self.workdir, "xenmux.sock")
        self.daemon: int | None = None
        self.per_conn = per_conn
        self.conns_per_proc = conns_per_proc
        if per_conn:
            self.spawn_after_create = False
            self.variant = (
                f"{per_conn} domids per connection, up to {conns_per_proc} connections per process"
            )

    def start_daemon(self, sim_dir: str, max_clients: int, timeout: float) -> None:
        argv = python_command(
            "serve",
            "--backend",
            "sim",
            "--sim-dir",
            sim_dir,
            "--xenstore",
            self.xenstored_path,
            "--socket",
            self.socket_path,
            "--metrics-addr",
            "",
            "--max-clients",
            str(max_clients),
            "--log-level",
            "warning",
        )
        if self.burst_window is not None:
            argv += ["--burst-window", repr(self.burst_window)]
        if self.burst_window_max is not None:
            argv += ["--burst-window-max", repr(self.burst_window_max)]
        if self.burst_firings is not None:
            argv += ["--burst-firings", str(self.burst_firings)]
        log = os.path.join(self.workdir, "daemon.log")
        self.daemon = self.procs.spawn(argv, name="xenmux serve", stderr=log)
        wait_for_socket(self.socket_path, self.procs, self.daemon, "xenmux serve", timeout, log)

    def daemon_pids(self) -> list[int]:
        return [self.daemon] if self.daemon is not None else []

    def _spawn(self, domids: list[int], new: bool) -> None:
        argv = [self.bin["subscriber"], self.socket_path, self.results.path]
        if new:
            argv.append("--new")
        if self.per_conn:
            argv += ["--per-conn", str(self.per_conn)]
        argv += [str(d) for d in domids]
        err = os.path.join(self.workdir, "clients.log")
        self.clients.append(
            self.procs.spawn(argv, name=f"subscriber {domids[0]}", env={}, stderr=err)
        )
        per = self.per_conn or len(domids)
        self.connections += (len(domids) + per - 1) // per

    def start(self, domids: list[int], future: list[int] = ()) -> None:
        if not self.per_conn:
            for d in domids:
                self._spawn([d], False)
            return
        # Many connections per process: the future domids are subscribed to beforehand.
        every = list(domids) + list(future)
        chunk = self.per_conn * self.conns_per_proc
        for i in range(0, len(every), chunk):
            self._spawn(every[i : i + chunk], False)

    def spawn_for(self, domid: int) -> None:
        self._spawn([domid], True)

    def request(self, obj: dict, timeout: float = 60.0) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.socket_path)
            s.sendall(json.dumps(obj).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise HostError("the daemon closed the connection")
                buf += chunk
        return json.loads(buf.split(b"\n", 1)[0])

    def daemon_stats(self) -> dict | None:
        reply = self.request({"op": "stats", "id": 1})
        return reply.get("stats") if reply.get("ok") else None

    def daemon_memory(self) -> dict[str, int]:
        return memory_kib(self.daemon) if self.daemon is not None else {}
