"""Connecting to NATS: the options every pool command shares, and errors said in one line.

The connection never reconnects by itself (nats-py's reconnect would replay publishes it
buffered while away, after ones the server never got, and break the hosts' order): a lost
connection ends it, `lost` is set, and the caller starts again from what JetStream holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

INSTALL_HINT = "install it with: pip install 'xen-watch-mux[pool]' (the nats-py package)"
CONNECT_TIMEOUT = 2.0
# JetStream API calls answer in milliseconds; one that waits longer is asking a server
# without a leader (a cluster electing one): give up soon and try again.
API_TIMEOUT = 2.0
# While replies are held (Connection.hold_replies) the kernel keeps what the server sends
# until this much has come: more than a full window of acks (mux/bridge/publisher.py), so
# the bridge sleeps until someone waits for one.
HELD_BYTES = 1 << 20
# Written straight to the transport (Connection.send), the bridge's commands wait for the
# server past this much unsent: a full window of events is about 400 KiB.
WRITE_HIGH = 1 << 20


class NatsMissing(Exception):
    """nats-py is not installed."""


class NatsUnavailable(Exception):
    """No NATS server of the list answered, or the connection was lost."""


class NatsRejected(Exception):
    """A server refused us: credentials or TLS. Retrying will not help."""


def require_nats() -> ModuleType:
    """The nats package, or NatsMissing with the line to print."""
    try:
        import nats
        import nats.js
    except ImportError:
        raise NatsMissing(
            f"the pool commands need nats-py, which is not installed: {INSTALL_HINT}"
        ) from None
    return nats


@dataclass
class NatsOptions:
    servers: list[str]
    creds: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None

    def describe(self) -> str:
        return ",".join(self.servers)


def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nats",
        required=True,
        metavar="URL[,URL...]",
        help="NATS servers (nats://HOST:PORT, tls://HOST:PORT); several for a cluster",
    )
    p.add_argument("--creds", metavar="FILE", help="a NATS credentials file (JWT + nkey seed)")
    p.add_argument("--user", help="user name, with --password-file")
    p.add_argument("--password-file", metavar="F", help="a file holding the user's password")
    p.add_argument("--tls-ca", metavar="FILE", help="CA certificates to verify the servers with")


def options_from_args(args: argparse.Namespace) -> NatsOptions:
    """The options, with the password read. Raises ValueError with the line to print."""
    servers = [s.strip() for s in args.nats.split(",") if s.strip()]
    if not servers:
        raise ValueError("--nats needs at least one URL")
    for s in servers:
        if "://" not in s:
            raise ValueError(f"--nats {s!r}: give a URL such as nats://127.0.0.1:4222")
    if args.creds and (args.user or args.password_file):
        raise ValueError("give either --creds or --user/--password-file, not both")
    if bool(args.user) != bool(args.password_file):
        raise ValueError("--user and --password-file go together")
    password = None
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(
                f"cannot read --password-file {args.password_file}: {exc.strerror}"
            ) from None
        if not password:
            raise ValueError(f"--password-file {args.password_file} is empty")
    for path, flag in ((args.creds, "--creds"), (args.tls_ca, "--tls-ca")):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"cannot read {flag} {path}: {exc.strerror}") from None
    return NatsOptions(servers, args.creds, args.user, password, args.tls_ca)


def _is_rejection(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, ssl.SSLError):
        return True
    text = str(exc).lower()
    return "authorization" in text or "authentication" in text or "credentials" in text


def _why(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc)
    return text.removeprefix("nats: ").strip("'") or type(exc).__name__


def pub_command(
    subject: str, payload: bytes, reply: str = "", headers: dict[str, str] | None = None
) -> bytes:
    """One message as the NATS protocol sends it (PUB, or HPUB with headers).

    Built here rather than by nats-py's publish(), which validates every subject and header
    and queues a flush per call: a third of the bridge's Python per event. Subjects and
    header values here are the bridge's own (mux/bridge/names.py), tokens without spaces
    or line ends."""
    rep = b" " + reply.encode() if reply else b""
    if not headers:
        return b"PUB %b%b %d\r\n%b\r\n" % (subject.encode(), rep, len(payload), payload)
    hdr = ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    size = len(hdr) + len(payload)
    return b"HPUB %b%b %d %d\r\n%b%b\r\n" % (subject.encode(), rep, len(hdr), size, hdr, payload)


def transport_socket(nc: Any) -> socket.socket | None:
    """The TCP socket under a nats-py connection (under TLS too), or None once closed.

    The one place that reaches into nats-py's private attributes (`_transport`, its
    TcpTransport's `_bare_io_writer`): tests/pool/test_pool_natsconn.py fails when a nats-py
    release moves them, and pyproject pins the releases this was checked against."""
    transport = getattr(nc, "_transport", None)
    if transport is None:
        return None
    writer = getattr(transport, "_bare_io_writer", None)
    return None if writer is None else writer.get_extra_info("socket")


class Connection:
    """One NATS connection: `nc`, its JetStream contexts (`js` to publish and consume, `jsm`
    for the API), and `lost`, set when it ends.

    Replies (JetStream's acks) may be left in the kernel between the bridge's wake-ups: each
    batch of acks read as it comes is a wake-up of its own, about 200 us of CPU here, as much
    as an event's whole work. `hold_replies()` raises the socket's SO_RCVLOWAT so that the
    loop is not woken for them; whoever waits for a reply does so inside `reading()`, which
    lowers it (the kernel then wakes the loop at once for what is there). A lost connection
    still wakes it (EOF and errors ignore the low-water mark)."""

    def __init__(self, nc: Any, timeout: float, lost: asyncio.Event) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout)
        self.jsm = nc.jsm(timeout=timeout)
        self.lost = lost
        self._readers = 0  # reading() blocks in progress: replies are not held meanwhile
        self._held = False

    @property
    def holding(self) -> bool:
        """Whether replies may be waiting unread in the kernel."""
        return self._held

    async def send(self, commands: bytes) -> None:
        """Protocol commands (pub_command's, any number joined) sent after everything nats-py
        queued before them, in its buffer and by its flusher, as publish() does. Raises
        NatsUnavailable when the connection is gone.

        When nats-py has nothing queued (its flusher hands its whole buffer to the transport
        at once, so nothing of it is still to go out), they are written to the transport at
        once: going through the flusher was a task switch and a queue per event, a fifth of
        the bridge's CPU. The transport keeps its writes in order either way.

        With transport_socket, the only use of nats-py's private members (`_send_command`,
        `_flush_queue`, `_flush_pending`, `_pending_data_size`, `_transport`);
        tests/pool/test_pool_natsconn.py checks them."""
        nc = self.nc
        if nc.is_closed or not nc.is_connected:
            raise NatsUnavailable("the NATS connection was lost")
        writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
        if writer is not None and nc._pending_data_size == 0 and not writer.is_closing():
            writer.write(commands)
            if writer.transport.get_write_buffer_size() > WRITE_HIGH:
                await writer.drain()  # the server reads slower than we write: wait for it
            return
        await nc._send_command(commands)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    def hold_replies(self) -> None:
        """Leave what the server sends in the kernel until someone waits in reading()."""
        if not self._held and not self._readers:
            self._set_lowat(HELD_BYTES)

    def release_replies(self) -> None:
        """Read what the server sends as it comes again: before the bridge sleeps with no
        deadline, so that nothing (a PONG, the last acks) waits in the kernel unread."""
        if self._held:
            self._set_lowat(1)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """While in this block, what the server sends is read as it comes."""
        self._readers += 1
        if self._held:
            self._set_lowat(1)
        try:
            yield
        finally:
            self._readers -= 1

    def _set_lowat(self, size: int) -> None:
        sock = transport_socket(self.nc)
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
        except OSError:
            return  # a closed socket: `lost` says so
        self._held = size > 1

    @property
    def server(self) -> str:
        url = self.nc.connected_url
        return f"{url.scheme}://{url.netloc}" if url else "?"

    @property
    def clustered(self) -> bool:
        """Whether the server we reached is a member of a cluster."""
        info = getattr(self.nc, "_server_info", {}) or {}
        return bool(info.get("cluster"))

    async def close(self) -> None:
        """Close, waiting at most CONNECT_TIMEOUT (a broken connection may never finish)."""
        if self.nc.is_closed:
            return
        closing = asyncio.ensure_future(self.nc.close())
        await asyncio.wait((closing,), timeout=CONNECT_TIMEOUT)
        if closing.done() and not closing.cancelled():
            closing.exception()  # a broken connection's error: nothing to report
        else:
            closing.cancel()


async def connect(opts: NatsOptions, name: str, timeout: float = API_TIMEOUT) -> Connection:
    """Connect to the first server of the list that answers.

    Raises NatsUnavailable (none answered: the reason of the last one) or NatsRejected."""
    nats = require_nats()
    lost = asyncio.Event()
    last_error: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        last_error[:] = [exc]

    async def on_lost() -> None:
        lost.set()

    kwargs: dict[str, Any] = {}
    if opts.creds:
        kwargs["user_credentials"] = opts.creds
    if opts.user:
        kwargs["user"] = opts.user
        kwargs["password"] = opts.password
    if opts.tls_ca:
        kwargs["tls"] = ssl.create_default_context(cafile=opts.tls_ca)
    try:
        nc = await nats.connect(
            opts.servers,
            name=name,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.05,
            connect_timeout=CONNECT_TIMEOUT,
            ping_interval=5,
            max_outstanding_pings=2,
            error_cb=on_error,
            disconnected_cb=on_lost,
            closed_cb=on_lost,
            **kwargs,
        )
    except Exception as exc:
        cause = last_error[0] if last_error else exc
        if _is_rejection(cause) or _is_rejection(exc):
            raise NatsRejected(
                f"NATS at {opts.describe()} refused the connection ({_why(cause)}): "
                "check --user/--password-file, --creds or --tls-ca"
            ) from None
        raise NatsUnavailable(f"cannot reach NATS at {opts.describe()}: {_why(cause)}") from None
    return Connection(nc, timeout, lost)
