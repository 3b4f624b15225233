"""`GET /metrics` over HTTP/1.1, answered from the daemon's event loop.

One request per connection (answered with `Connection: close`), MAX_CONNECTIONS at once and
no thread: when every slot is taken, the oldest connection still sending its request is
dropped for the newcomer (so idle connections cannot keep a scraper out), and when every
slot is busy answering, the newcomer gets 503. A request has REQUEST_TIMEOUT seconds to
arrive and the answer WRITE_TIMEOUT to be read. The exposition is made in the loop (a
millisecond or so), at most once per MIN_INTERVAL, so that scrapes cannot starve the scans.
It is what prometheus_client's own server answers: the format the Accept header asks for
(choose_encoder), gzip when accepted. Who can reach the endpoint, and how to restrict it:
docs/operations.md.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import time
from collections import OrderedDict

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from mux.daemon.stats import Stats

log = logging.getLogger("xenmux.metrics")

MAX_CONNECTIONS = 16
MAX_REQUEST_HEAD = 8 * 1024  # request line and headers
REQUEST_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MIN_INTERVAL = 0.05  # seconds between the starts of two expositions
PATH = "/metrics"


class MetricsAddressError(OSError):
    """The endpoint cannot be served at --metrics-addr (busy port, unknown host)."""


def _response(status: str, headers: list[tuple[str, str]], body: bytes, head_only: bool) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head_only else body)


def _plain(status: str, text: str, extra: list[tuple[str, str]] = ()) -> bytes:
    headers = [("Content-Type", "text/plain; charset=utf-8"), *extra]
    return _response(status, headers, text.encode() + b"\n", False)


class MetricsHTTP:
    def __init__(self, registry: CollectorRegistry, stats: Stats) -> None:
        self.registry = registry
        self.stats = stats
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._active: set[asyncio.StreamWriter] = set()
        self._waiting: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()  # no request yet
        self._lock = asyncio.Lock()
        self._last = 0.0

    async def start(self, host: str, port: int, addr: str) -> None:
        try:
            self.server = await asyncio.start_server(
                self._connection, host, port, limit=MAX_REQUEST_HEAD
            )
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise MetricsAddressError(
                f"cannot serve metrics on {addr} (--metrics-addr): {why}; "
                "choose another HOST:PORT, or --metrics-addr '' to turn the endpoint off"
            ) from None
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self._active):
            writer.transport.abort()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        if len(self._active) >= MAX_CONNECTIONS:
            if not self._waiting:
                self.stats.metrics_refused += 1
                writer.write(_plain("503 Service Unavailable", "too many metrics connections"))
                writer.close()
                return
            idle, _ = self._waiting.popitem(last=False)
            self.stats.metrics_refused += 1
            idle.transport.abort()  # its handler ends with the read it was waiting in
            self._active.discard(idle)
        self._active.add(writer)
        self._waiting[writer] = None
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):  # not wait_for: see durable.py
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                writer.write(_plain("431 Request Header Fields Too Large", "request too large"))
                return
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            finally:
                self._waiting.pop(writer, None)
            writer.write(await self._answer(head))
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            writer.transport.abort()
        finally:
            self._active.discard(writer)
            self._waiting.pop(writer, None)
            if not writer.transport.is_closing():
                writer.close()

    async def _answer(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _plain("400 Bad Request", "not an HTTP/1.x request")
        method, target, _version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path = target.partition("?")[0]
        if path != PATH:
            return _plain("404 Not Found", f"the metrics are at {PATH}")
        if method not in ("GET", "HEAD"):
            return _plain("405 Method Not Allowed", "GET or HEAD", [("Allow", "GET, HEAD")])
        body, content_type = await self._exposition(headers.get("accept", ""))
        out = [("Content-Type", content_type)]
        if gzip_accepted(headers.get("accept-encoding", "")):
            body = gzip.compress(body)
            out.append(("Content-Encoding", "gzip"))
        return _response("200 OK", out, body, method == "HEAD")

    async def _exposition(self, accept: str) -> tuple[bytes, str]:
        async with self._lock:
            wait = self._last + MIN_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last = time.monotonic()
            encoder, content_type = choose_encoder(accept)
            return encoder(self.registry), content_type
