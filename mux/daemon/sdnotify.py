"""systemd's notification protocol (sd_notify(3)), without a dependency on libsystemd.

READY=1 when the daemon serves, then a STATUS= line (what `systemctl status` shows) of the
domains, the subscribers and the newest scan. The status is sent from a timer, at most every
STATUS_INTERVAL seconds and only when its text changed: never from the path of a firing, so
that a burst of changes costs the daemon no datagram per scan. Its time of the newest scan
(a wall-clock time, not an age) changes only when a scan completes, so an idle daemon sends
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

from mux.protocol import DEAD, RUNNING, SHUTDOWN

log = logging.getLogger("xenmux")

NOTIFY_ENV = "NOTIFY_SOCKET"
STATUS_INTERVAL = 5.0  # seconds; systemd keeps only the newest STATUS= anyway


def notify_socket() -> str | None:
    """Where systemd listens for notifications, or None when not started by it."""
    return os.environ.get(NOTIFY_ENV) or None


def sd_notify(message: str) -> bool:
    """Send one notification (lines of VAR=value); False when there is nowhere to send it
    or it failed (logged: a daemon must not stop for it)."""
    addr = notify_socket()
    if addr is None:
        return False
    target = "\0" + addr[1:] if addr.startswith("@") else addr  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(target)
            s.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", addr, exc)
        return False
    return True


def status_line(domains: dict[str, int], subscribers: int, last_scan: float | None) -> str:
    """The STATUS= text: domains by state, subscribers, the local time of the newest scan."""
    total = sum(domains.values())
    parts = [f"{domains.get(RUNNING, 0)} running"]
    if domains.get(SHUTDOWN):
        parts.append(f"{domains[SHUTDOWN]} shut down")
    if domains.get(DEAD):
        parts.append(f"{domains[DEAD]} dead")
    scanned = "never" if last_scan is None else time.strftime("%H:%M:%S", time.localtime(last_scan))
    return (
        f"{total} domains ({', '.join(parts)}), {subscribers} "
        f"subscriber{'' if subscribers == 1 else 's'}, last scan {scanned}"
    )


class StatusReporter:
    """READY=1 with the first status, then the status again on a timer when it changed."""

    def __init__(
        self,
        describe: Callable[[], str],
        *,
        interval: float = STATUS_INTERVAL,
        notify: Callable[[str], bool] = sd_notify,
    ) -> None:
        self.describe = describe
        self.interval = interval
        self.notify = notify
        self._sent: str | None = None
        self._handle: asyncio.TimerHandle | None = None

    def ready(self) -> None:
        """Tell systemd the daemon serves; start the timer if anyone listens."""
        self._sent = self.describe()
        if self.notify(f"READY=1\nSTATUS={self._sent}") and self._handle is None:
            self._arm()

    def _arm(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        text = self.describe()
        if text != self._sent and self.notify(f"STATUS={text}"):
            self._sent = text
        self._arm()

    def stopping(self) -> None:
        """Stop the timer; tell systemd the daemon is going (it then expects no READY)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self.notify("STOPPING=1\nSTATUS=stopping")
