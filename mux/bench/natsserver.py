"""Real nats-server 2.9.10 (Debian's) for the pool tests and `xenmux bench --pool`.

The binary is found by mux.debpeers: the system's when its package is installed, else the
copy `make deb-peers` extracted into the checkout's cache (the package is never installed:
it enables a service). Each server listens on 127.0.0.1 only, keeps JetStream in a
temporary directory that its handle removes, and is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from mux import debpeers

PeerMissing = debpeers.PeerMissing


def nats_server() -> debpeers.Located:
    """Where nats-server is; PeerMissing (its message says to run `make deb-peers`) if nowhere."""
    return debpeers.locate("nats-server")


def nats_server_version() -> str:
    peer = nats_server()
    return subprocess.run(
        [str(peer.path), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        env=peer.environ(),
    ).stdout.strip()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(pid: int) -> list[str]:
    """The local addresses (ip:port) of every listening TCP socket of a process."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        with open(f"/proc/net/{table}") as f:
            next(f)
            for line in f:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state != "0A" or inode not in inodes:
                    continue
                ip_hex, port_hex = local.split(":")
                if width == 8:
                    ip = socket.inet_ntop(socket.AF_INET, bytes.fromhex(ip_hex)[::-1])
                else:
                    raw = bytes.fromhex(ip_hex)
                    ip = socket.inet_ntop(
                        socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    )
                out.append(f"{ip}:{int(port_hex, 16)}")
    return out


class NatsServer:
    """One nats-server process with JetStream; restart() keeps its port and store."""

    def __init__(
        self,
        workdir: Path,
        name: str = "n1",
        port: int | None = None,
        cluster: tuple[int, list[int]] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"nats-{name}-", dir=workdir))
        self.store = self.dir / "js"
        self.log = self.dir / "server.log"
        lines = [
            f"server_name: {name}",
            f"listen: 127.0.0.1:{self.port}",
            f'jetstream {{ store_dir: "{self.store}" }}',
        ]
        if cluster is not None:
            cport, peers = cluster
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in peers if p != cport)
            lines.append(
                f"cluster {{ name: xenmux-test, listen: 127.0.0.1:{cport}, routes: [{routes}] }}"
            )
        if auth is not None:
            lines.append(f'authorization {{ user: "{auth[0]}", password: "{auth[1]}" }}')
        self.config = self.dir / "server.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> NatsServer:
        assert self.proc is None or self.proc.poll() is not None
        peer = nats_server()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(peer.path), "-c", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=peer.environ(),
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"nats-server not listening after {timeout} s") from None
                time.sleep(0.02)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"nats-server {self.proc.pid} ignored SIGTERM") from None

    def restart(self) -> None:
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_cluster(workdir: Path, size: int = 3) -> list[NatsServer]:
    cports = [free_port() for _ in range(size)]
    servers = [NatsServer(workdir, f"n{i + 1}", cluster=(cports[i], cports)) for i in range(size)]
    for s in servers:
        s.start()
    return servers
