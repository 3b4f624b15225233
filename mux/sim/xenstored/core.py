"""The server (core.c): the handler table with one row per message type, dispatch, the
node requests, and the in-process API the sim's toolstack and host use.

Dispatch as C's process_message(): an unknown type (or one this version does not know,
rules.py) is ENOSYS; a request with a transaction id is run in that transaction unless its
row ignores transaction ids (XS_FLAG_NOTID: WATCH, UNWATCH), an unknown id is ENOENT; an
XsError becomes XS_ERROR with its errno name; a reply over the payload limit becomes E2BIG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mux.sim._simfast import HostEngine
from mux.sim.xenstored import domains, transactions, watches
from mux.sim.xenstored.connection import WRITE_HARD_LIMIT
from mux.sim.xenstored.counters import Counters
from mux.sim.xenstored.domains import Domains, DomainSource
from mux.sim.xenstored.names import node_name
from mux.sim.xenstored.payload import OK, XsError, c_atoi, onearg, strings, text
from mux.sim.xenstored.rules import rules_for
from mux.sim.xenstored.store import (
    Events,
    Node,
    Store,
    View,
    parse_perms,
    tree_mkdir,
    tree_rm,
    tree_set_perms,
    tree_write,
)
from mux.sim.xenstored.transactions import Transaction
from mux.sim.xenstored.watches import WatchTable
from mux.xenstore import wire
from mux.xenstore.wire import XENSTORE_PAYLOAD_MAX

if TYPE_CHECKING:
    from mux.sim.xenstored.connection import XsConnection

# A handler's reply: the payload, or (payload, a watch event frame to send right after it).
Reply = bytes | tuple[bytes, bytes | None]
Handler = Callable[["Xenstored", "XsConnection", Transaction | None, bytes], Reply]


@dataclass(frozen=True, slots=True)
class WireFunc:
    """One row of the handler table (C's wire_funcs[])."""

    handler: Handler
    ignores_tx: bool = False  # XS_FLAG_NOTID: the header's tx_id is not looked up


class Xenstored:
    """The daemon's state and request handling; connections feed it whole messages."""

    def __init__(self, hypervisor: DomainSource, xs_version: str = "4.17") -> None:
        self.rules = rules_for(xs_version)
        self.xs_version = xs_version
        self.hv = hypervisor
        self.counters = Counters()
        self.store = Store()
        # The state the change thread shares (mux/sim/hostpath.py): every connection's output,
        # the special watches and the domain pass; also the lock of every operation on them.
        self.engine = HostEngine()
        self.watches = WatchTable(self.rules, self.counters, self.engine)
        self.domains = Domains(hypervisor, self.rules, self.watches, self.counters)
        self.engine.configure(
            self.domains.domain_pass,
            wire.XS_WATCH_EVENT,
            XENSTORE_PAYLOAD_MAX,
            WRITE_HARD_LIMIT,
            wire.SPECIAL_RELEASE,
            self.rules.watch_depth,
        )
        self.connections: set[XsConnection] = set()
        self.wire_funcs = {t: WIRE_FUNCS[t] for t in self.rules.message_types}

    # -- requests ---------------------------------------------------------------------------

    def handle(
        self, conn: XsConnection, msg_type: int, req_id: int, tx_id: int, payload: bytes
    ) -> None:
        func = self.wire_funcs.get(msg_type)
        if func is None:
            conn.send(wire.XS_ERROR, req_id, tx_id, b"ENOSYS\0")
            return
        trans = None
        if tx_id and not func.ignores_tx:
            trans = conn.transactions.get(tx_id)
            if trans is None:
                conn.send(wire.XS_ERROR, req_id, tx_id, b"ENOENT\0")
                return
        try:
            reply = func.handler(self, conn, trans, payload)
        except XsError as exc:
            conn.send(wire.XS_ERROR, req_id, tx_id, exc.name.encode() + b"\0")
            return
        if isinstance(reply, tuple):
            reply, event = reply
        else:
            event = None
        # send_reply(): a reply over the payload limit becomes E2BIG.
        if len(reply) > XENSTORE_PAYLOAD_MAX:
            conn.send(wire.XS_ERROR, req_id, tx_id, b"E2BIG\0")
        else:
            conn.send(msg_type, req_id, tx_id, reply)
        if event is not None:
            conn.send_event(event)

    def view(self, trans: Transaction | None) -> View:
        return trans.view if trans is not None else self.store.direct

    def node(self, trans: Transaction | None, raw: bytes | None) -> Node:
        node = self.view(trans).get(node_name(raw))
        if node is None:
            raise XsError("ENOENT")
        return node

    def changed(self, trans: Transaction | None, events: Events) -> None:
        """Fire the events of a change now, or keep them for the transaction's commit."""
        if trans is not None:
            trans.events.extend(events)
        else:
            fire = self.watches.fire
            for path, match in events:
                fire(path, match)

    # -- in-process API (the sim's toolstack and host) --------------------------------------

    def local_write(self, path: str, value: bytes, perms: tuple[str, ...] | None = None) -> None:
        self.changed(None, tree_write(self.store.direct, path, value, perms))

    def local_rm(self, path: str) -> None:
        try:
            events = tree_rm(self.store.direct, path)
        except XsError:
            return
        self.changed(None, events)

    def local_read(self, path: str) -> bytes | None:
        node = self.store.nodes.get(path)
        return None if node is None else node.value

    def introduce(self, domid: int) -> bool:
        """XS_INTRODUCE from the toolstack; True if the domain was new (and fired)."""
        return self.domains.introduce(domid)

    def release(self, domid: int) -> None:
        self.domains.release(domid)

    def resume(self, domid: int) -> None:
        self.domains.resume(domid)

    def check_domains(self) -> None:
        """The domain pass on VIRQ_DOM_EXC (Domains.check_domains)."""
        self.domains.check_domains()

    # -- connections -------------------------------------------------------------------------

    def connection_lost(self, conn: XsConnection) -> None:
        self.connections.discard(conn)
        self.watches.drop_connection(conn)
        conn.transactions.clear()

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()


# The node requests --------------------------------------------------------------------------


def do_read(xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes) -> bytes:
    return xs.node(trans, onearg(payload)).value


def do_directory(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    return xs.node(trans, onearg(payload)).listing()


def do_directory_part(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    if payload.count(b"\0") != 2:
        raise XsError("EINVAL")
    first, second, _ = payload.split(b"\0", 2)
    node = xs.node(trans, first)
    off = c_atoi(second) & 0xFFFFFFFF
    gen = str(node.gen).encode() + b"\0"
    listing = node.listing()
    total = len(listing)
    if off >= total:
        return gen + b"\0"
    maxlen = XENSTORE_PAYLOAD_MAX - len(gen) - 1
    length = 0
    while True:
        start = off + length
        end = listing.find(b"\0", start)
        if end < 0:
            end = total
        if not length + (end - start) < maxlen:
            break
        length += end - start + 1
        if off + length >= total:
            break
    data = gen + listing[off : off + length]
    if off + length >= total:
        data += b"\0"
    return data


def do_get_perms(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    arg = onearg(payload)
    if xs.rules.special_perms_readable and arg is not None:
        perms = xs.domains.special_perms.get(text(arg))
        if perms is not None:
            return "".join(p + "\0" for p in perms).encode()
    node = xs.node(trans, arg)
    return "".join(p + "\0" for p in node.perms).encode()


def do_write(xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes) -> bytes:
    nul = payload.find(b"\0")
    if nul < 0:
        raise XsError("EINVAL")
    name = node_name(payload[:nul])
    xs.changed(trans, tree_write(xs.view(trans), name, payload[nul + 1 :]))
    return OK


def do_mkdir(xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes) -> bytes:
    name = node_name(onearg(payload))
    xs.changed(trans, tree_mkdir(xs.view(trans), name))
    return OK


def do_rm(xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes) -> bytes:
    name = node_name(onearg(payload))
    xs.changed(trans, tree_rm(xs.view(trans), name))
    return OK


def do_set_perms(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    args = strings(payload)
    if len(args) < 2:
        raise XsError("EINVAL")
    perms = parse_perms(args[1:])
    target = text(args[0])
    if target.startswith("@"):
        xs.domains.set_special_perms(target, perms)
        return OK
    name = node_name(args[0])
    xs.changed(trans, tree_set_perms(xs.view(trans), name, perms))
    return OK


def do_control(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    # No XS_CONTROL command is modelled; C xenstored answers EINVAL to unknown ones.
    raise XsError("EINVAL")


# C's wire_funcs[]: one row per message type the sim knows. Which of them a server answers
# is its version's (rules.py: Rules.message_types).
WIRE_FUNCS: dict[int, WireFunc] = {
    wire.XS_CONTROL: WireFunc(do_control),
    wire.XS_DIRECTORY: WireFunc(do_directory),
    wire.XS_READ: WireFunc(do_read),
    wire.XS_GET_PERMS: WireFunc(do_get_perms),
    wire.XS_WATCH: WireFunc(watches.do_watch, ignores_tx=True),
    wire.XS_UNWATCH: WireFunc(watches.do_unwatch, ignores_tx=True),
    wire.XS_TRANSACTION_START: WireFunc(transactions.do_transaction_start),
    wire.XS_TRANSACTION_END: WireFunc(transactions.do_transaction_end),
    wire.XS_INTRODUCE: WireFunc(domains.do_introduce),
    wire.XS_RELEASE: WireFunc(domains.do_release),
    wire.XS_GET_DOMAIN_PATH: WireFunc(domains.do_get_domain_path),
    wire.XS_WRITE: WireFunc(do_write),
    wire.XS_MKDIR: WireFunc(do_mkdir),
    wire.XS_RM: WireFunc(do_rm),
    wire.XS_SET_PERMS: WireFunc(do_set_perms),
    wire.XS_IS_DOMAIN_INTRODUCED: WireFunc(domains.do_is_domain_introduced),
    wire.XS_RESUME: WireFunc(domains.do_resume),
    wire.XS_SET_TARGET: WireFunc(domains.do_set_target),
    wire.XS_RESET_WATCHES: WireFunc(watches.do_reset_watches),
    wire.XS_DIRECTORY_PART: WireFunc(do_directory_part),
    wire.XS_GET_FEATURE: WireFunc(domains.do_get_feature),
    wire.XS_SET_FEATURE: WireFunc(domains.do_set_feature),
}
