"""Transactions (transaction.c): changes kept aside, checked and applied on commit.

Every node a transaction looks at is remembered with the generation it had; the commit
fails with EAGAIN if any of them changed meanwhile (as C xenstored's finalize_transaction
does). The watch events of a transaction are fired at its commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mux.sim.xenstored.payload import OK, XsError, onearg
from mux.sim.xenstored.store import Events, Node, Store

if TYPE_CHECKING:
    from mux.sim.xenstored.interfaces import Client as XsConnection
    from mux.sim.xenstored.interfaces import Server as Xenstored

_MISSING = object()


class TransactionView:
    """The store as one transaction sees it (a `store.View`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.overlay: dict[str, Node | None] = {}
        self.accessed: dict[str, int] = {}

    def get(self, path: str) -> Node | None:
        node = self.overlay.get(path, _MISSING)
        if node is not _MISSING:
            return node  # type: ignore[return-value]
        node = self.store.nodes.get(path)
        if path not in self.accessed:
            self.accessed[path] = node.gen if node is not None else -1
        return node

    def mutable(self, path: str) -> Node:
        node = self.overlay.get(path, _MISSING)
        if node is _MISSING or node is None:
            base = self.get(path)
            assert base is not None
            node = base.copy()
            self.overlay[path] = node
        return node  # type: ignore[return-value]

    def put_new(self, path: str, node: Node) -> None:
        self.get(path)
        self.overlay[path] = node

    def delete(self, path: str) -> None:
        self.get(path)
        self.overlay[path] = None

    def commit(self) -> None:
        nodes = self.store.nodes
        for path, gen in self.accessed.items():
            cur = nodes.get(path)
            if (cur.gen if cur is not None else -1) != gen:
                raise XsError("EAGAIN")
        for path, node in self.overlay.items():
            if node is None:
                nodes.pop(path, None)
            else:
                node.gen = self.store.next_generation()
                nodes[path] = node


class Transaction:
    __slots__ = ("events", "id", "view")

    def __init__(self, tx_id: int, store: Store) -> None:
        self.id = tx_id
        self.view = TransactionView(store)
        self.events: Events = []


# Handlers (rows of core.WIRE_FUNCS) --------------------------------------------------------


def do_transaction_start(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    if trans is not None:
        raise XsError("EBUSY")  # no nested transactions
    tx_id = conn.next_tx
    while tx_id == 0 or tx_id in conn.transactions:
        tx_id = (tx_id + 1) & 0xFFFFFFFF
    conn.next_tx = (tx_id + 1) & 0xFFFFFFFF
    conn.transactions[tx_id] = Transaction(tx_id, xs.store)
    return str(tx_id).encode() + b"\0"


def do_transaction_end(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    arg = onearg(payload)
    if arg not in (b"T", b"F"):
        raise XsError("EINVAL")
    if trans is None:
        raise XsError("ENOENT")
    del conn.transactions[trans.id]
    if arg == b"T":
        trans.view.commit()
        xs.changed(None, trans.events)
    return OK
