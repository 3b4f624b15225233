"""What the request handlers see of the server and of a client connection.

The handlers (domains.py, transactions.py, watches.py, core.py) are typed against these
protocols rather than against `Xenstored` and `XsConnection`, so the modules of the package
form a tree: core builds the handler table from the handler modules, and nothing below it
imports core or the connection back.
"""

from __future__ import annotations

from typing import Any, Protocol

from mux.sim.xenstored.counters import Counters
from mux.sim.xenstored.rules import Rules
from mux.sim.xenstored.store import Events, Store


class Client(Protocol):
    """One client connection, as the handlers use it."""

    watches: list[Any]  # the connection's Watch objects (watches.py)
    transactions: dict[int, Any]  # tx_id -> Transaction (transactions.py)
    next_tx: int

    def send_event(self, frame: bytes) -> None: ...


class Server(Protocol):
    """The server's state, as the handlers use it."""

    rules: Rules
    store: Store
    counters: Counters
    domains: Any  # domains.Domains
    watches: Any  # watches.WatchTable
    connections: set[Any]
    engine: Any  # _simfast.HostEngine: the lock of every operation, the connections' output

    def changed(self, trans: Any, events: Events) -> None: ...

    def handle(self, conn: Any, msg_type: int, req_id: int, tx_id: int, payload: bytes) -> None: ...

    def connection_lost(self, conn: Any) -> None: ...
