"""The simulated host's xenstored: the real wire protocol on a Unix socket, asyncio.

It follows C xenstored (tools/xenstored/) closely enough for Debian's clients (libxenstore's
xenstore-read/-write/-ls/-list/-rm/-watch) and pyxs to work unchanged:

* core (xenstored_core.c): node tree with permissions and generation counts, READ, WRITE,
  MKDIR, RM, DIRECTORY (E2BIG past 4096 bytes), DIRECTORY_PART, GET_PERMS, SET_PERMS,
  transactions; ENOSYS for unknown types; an over-long payload drops the connection.
* watch (xenstored_watch.c): WATCH with the immediate first event, subtree matching,
  relative paths (based on /local/domain/0 for socket connections), UNWATCH, RESET_WATCHES.
* domain (xenstored_domain.c): the introduced domains, the shutdown latch, the domain pass on
  VIRQ_DOM_EXC, INTRODUCE, RELEASE, RESUME, IS_DOMAIN_INTRODUCED, GET_DOMAIN_PATH, SET_TARGET.

`xs_version` "4.17" knows the message types of Xen 4.17 (GET_FEATURE is ENOSYS and a watch
with a depth argument is EINVAL); "4.22" adds GET_FEATURE/SET_FEATURE and the watch depth of
Juergen Gross's patches (special watches registered with depth 1 fire as
`@releaseDomain/<domid>`; `@releaseDomain/<domid>` may be watched directly).

Every socket connection is privileged (dom0), as on a real host. Nothing here awaits while
handling a request or firing a watch: events go out with one transport.write per event.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mux.records import DOMINF_DYING, DOMINF_SHUTDOWN
from mux.xenstore import wire
from mux.xenstore.wire import HEADER, HEADER_SIZE, XENSTORE_PAYLOAD_MAX

log = logging.getLogger("mux.sim.xenstored")

XS_VERSIONS = ("4.17", "4.22")

# enum watch_match (watch.h)
MATCH_EXACT = 0
MATCH_SUBTREE = 1
MATCH_DEPTH = 2  # watches with depth > 0, subtree semantics (and the exact node)
MATCH_NODEPTH = 3  # watches without depth, exact semantics

# XENSTORE_FEATURES of the 4.22 C xenstored: ERROR | WATCHDEPTH | DOMID_ANY.
FEATURE_DOMID_ANY = 8
FEATURES_4_22 = (
    wire.XENSTORE_SERVER_FEATURE_ERROR | wire.XENSTORE_SERVER_FEATURE_WATCHDEPTH | FEATURE_DOMID_ANY
)

DOMID_SELF = 0x7FF0
PRIV_DOMID = 0
IMPLICIT_PREFIX = "/local/domain/0"  # get_implicit_path() of a socket connection
REL_PATH_MAX = wire.XENSTORE_REL_PATH_MAX

# A watcher that stops reading is dropped once this much output is queued for it.
WRITE_HARD_LIMIT = 64 * 1024 * 1024

_OK = b"OK\0"
_VALID_NAME = re.compile(r"[A-Za-z0-9\-/_@]*\Z")
_LOCAL_DOMAIN = re.compile(r"/local/domain/\d{1,5}/")
_ATOI = re.compile(rb"\s*([+-]?\d+)")
_ERROR_FRAMES: dict[str, bytes] = {}


class XsError(Exception):
    """A request failed: the reply is XS_ERROR with this errno name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _c_atoi(text: bytes) -> int:
    m = _ATOI.match(text)
    return int(m.group(1)) if m else 0


def _c_strtol(text: str) -> int | None:
    """strtol(text, &end, 0) requiring the whole text to be consumed, as xs_strings_to_perms."""
    m = re.fullmatch(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)", text)
    if not m:
        return None
    digits = m.group(2)
    if digits[:2] in ("0x", "0X"):
        value = int(digits, 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if m.group(1) == "-" else value


def _strings(payload: bytes) -> list[bytes]:
    """get_strings(): the NUL-terminated strings; bytes after the last NUL are ignored."""
    return payload.split(b"\0")[:-1]


def _onearg(payload: bytes) -> bytes | None:
    """onearg(): exactly one NUL, at the end."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1]


def _text(raw: bytes) -> str:
    # latin-1 maps bytes one to one, so odd input round-trips and fails validation cleanly.
    return raw.decode("latin-1")


def is_valid_nodename(name: str) -> bool:
    if not name.startswith("/"):
        return False
    if name.endswith("/") and name != "/":
        return False
    if "//" in name:
        return False
    m = _LOCAL_DOMAIN.match(name)
    local_off = m.end() if m else 0
    if len(name) > local_off + REL_PATH_MAX:
        return False
    return _VALID_NAME.match(name) is not None


def parent_of(name: str) -> str:
    """get_parent(): "/" for a top-level node."""
    slash = name.rfind("/", 1)
    return name[:slash] if slash > 0 else "/"


def basename(name: str) -> str:
    return name[name.rfind("/") + 1 :]


def child_path(parent: str, child: str) -> str:
    return "/" + child if parent == "/" else f"{parent}/{child}"


def ancestors(name: str) -> list[str]:
    """The nodes a watch may sit on to see an event on `name` (besides `name` itself)."""
    out = []
    pos = name.find("/", 1)
    while pos != -1:
        out.append(name[:pos])
        pos = name.find("/", pos + 1)
    if name.startswith("/") and name != "/":
        out.append("/")
    return out


def is_child(child: str, parent: str, depth: int) -> bool:
    """watch.c is_child() for a `parent` known to be `child` or one of its ancestors."""
    if depth < 0 or len(child) == len(parent):
        return True
    levels = child.count("/") if parent == "/" else child.count("/", len(parent))
    return levels <= depth


def format_perms(perms: Iterable[tuple[str, int]]) -> tuple[str, ...]:
    return tuple(f"{c}{i}" for c, i in perms)


def parse_perms(strings: list[bytes]) -> tuple[str, ...]:
    out = []
    for raw in strings:
        text = _text(raw)
        if not text or text[0] not in "rwbn":
            raise XsError("EINVAL")
        value = _c_strtol(text[1:])
        if value is None:
            raise XsError("EINVAL")
        # xs_perm_to_string prints the (unsigned) id with "%i".
        value &= 0xFFFFFFFF
        if value >= 1 << 31:
            value -= 1 << 32
        out.append((text[0], value))
    return format_perms(out)


DEFAULT_PERMS = ("n0",)


class Node:
    __slots__ = ("_listing", "children", "gen", "perms", "value")

    def __init__(
        self,
        value: bytes = b"",
        perms: tuple[str, ...] = DEFAULT_PERMS,
        children: dict[str, None] | None = None,
        gen: int = 0,
    ) -> None:
        self.value = value
        self.perms = perms
        self.children = children
        self.gen = gen
        self._listing: bytes | None = None

    def copy(self) -> Node:
        return Node(
            self.value, self.perms, dict(self.children) if self.children else None, self.gen
        )

    def add_child(self, name: str) -> None:
        if self.children is None:
            self.children = {}
        self.children[name] = None
        self._listing = None

    def remove_child(self, name: str) -> None:
        if self.children:
            self.children.pop(name, None)
        self._listing = None

    def listing(self) -> bytes:
        """The child list as C keeps it: each name NUL-terminated, in creation order."""
        if self._listing is None:
            self._listing = (
                "".join(c + "\0" for c in self.children).encode("latin-1") if self.children else b""
            )
        return self._listing


class Store:
    """The node database (the tdb of C xenstored)."""

    def __init__(self) -> None:
        self.generation = 0
        self.nodes: dict[str, Node] = {
            "/": Node(children={"tool": None}),
            "/tool": Node(children={"xenstored": None}),
            "/tool/xenstored": Node(),
        }
        self.direct = DirectView(self)

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation


class DirectView:
    """Changes applied to the store at once (no transaction)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.nodes = store.nodes

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def mutable(self, path: str) -> Node:
        node = self.nodes[path]
        node.gen = self.store.next_generation()
        return node

    def put_new(self, path: str, node: Node) -> None:
        node.gen = self.store.next_generation()
        self.nodes[path] = node

    def delete(self, path: str) -> None:
        self.nodes.pop(path, None)


_MISSING = object()


class TransactionView:
    """A transaction: changes kept aside, checked and applied on commit.

    Every node the transaction looks at is remembered with the generation it had; the
    commit fails with EAGAIN if any of them changed meanwhile (as C xenstored's
    finalize_transaction does).
    """

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


# Tree operations, the same on the store and inside a transaction. Each returns the watch
# events it causes as (path, match) pairs.


def tree_write(view, name: str, value: bytes, perms: tuple[str, ...] | None = None):
    node = view.get(name)
    node = _create(view, name) if node is None else view.mutable(name)
    node.value = value
    if perms is not None:
        node.perms = perms
    return [(name, MATCH_SUBTREE)]


def _create(view, name: str) -> Node:
    missing = [name]
    parent = parent_of(name)
    while view.get(parent) is None:
        missing.append(parent)
        parent = parent_of(parent)
    node = None
    for path in reversed(missing):
        pnode = view.mutable(parent_of(path))
        pnode.add_child(basename(path))
        # Inherit the parent's permissions; a privileged caller keeps the owner.
        node = Node(b"", pnode.perms)
        view.put_new(path, node)
    assert node is not None
    return node


def tree_mkdir(view, name: str):
    if view.get(name) is not None:
        return []
    _create(view, name)
    return [(name, MATCH_SUBTREE)]


def tree_rm(view, name: str):
    node = view.get(name)
    if node is None:
        # Didn't exist already? Fine, if the parent exists.
        if view.get(parent_of(name)) is not None:
            return []
        raise XsError("ENOENT")
    if name == "/":
        raise XsError("EINVAL")
    events = []
    # Post-order walk (children first), as walk_node_tree's exit callback sees them.
    stack = [(name, node, False)]
    while stack:
        path, n, done = stack.pop()
        if done or not n.children:
            view.delete(path)
            events.append((path, MATCH_SUBTREE if path == name else MATCH_EXACT))
            continue
        stack.append((path, n, True))
        for child in reversed(list(n.children)):
            cpath = child_path(path, child)
            cnode = view.get(cpath)
            if cnode is not None:
                stack.append((cpath, cnode, False))
    view.mutable(parent_of(name)).remove_child(basename(name))
    return events


def tree_set_perms(view, name: str, perms: tuple[str, ...]):
    if view.get(name) is None:
        raise XsError("ENOENT")
    view.mutable(name).perms = perms
    return [(name, MATCH_SUBTREE)]


# Watches ------------------------------------------------------------------------------------


class Watch:
    __slots__ = ("conn", "depth", "node", "prefix_len", "serial", "token")

    def __init__(self, conn, node: str, token: bytes, depth: int, prefix_len: int, serial: int):
        self.conn = conn
        self.node = node
        self.token = token
        self.depth = depth
        self.prefix_len = prefix_len
        self.serial = serial


def event_frame(path: str, token: bytes) -> bytes | None:
    payload = path.encode("latin-1") + b"\0" + token + b"\0"
    if len(payload) > XENSTORE_PAYLOAD_MAX:
        return None  # send_event() drops over-long events
    return HEADER.pack(wire.XS_WATCH_EVENT, 0, 0, len(payload)) + payload


# Domains ------------------------------------------------------------------------------------


@dataclass(slots=True)
class XsDomain:
    """What xenstored keeps per introduced domain."""

    domid: int
    features: int = FEATURES_4_22
    shutdown: bool = False  # the latch: a @releaseDomain was fired for its shutdown


class DomainSource:
    """What the domain pass asks the hypervisor (the sim's host implements it)."""

    def domain_flags(self, domid: int) -> int | None:
        """The domain's XEN_DOMINF_* flags (as getdomaininfo), or None when the domid is free."""
        raise NotImplementedError


@dataclass
class Counters:
    release_firings: int = 0  # @releaseDomain fired without a domid
    release_dom_firings: int = 0  # @releaseDomain/<domid> fired (4.22)
    introduce_firings: int = 0
    events: int = 0  # watch events written
    virqs: int = 0  # domain passes run
    dropped_connections: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "release_firings": self.release_firings,
            "release_dom_firings": self.release_dom_firings,
            "introduce_firings": self.introduce_firings,
            "events": self.events,
            "virqs": self.virqs,
            "dropped_connections": self.dropped_connections,
        }


# The server ---------------------------------------------------------------------------------


class Xenstored:
    """The daemon's state and request handling; connections feed it whole messages."""

    def __init__(self, hypervisor: DomainSource, xs_version: str = "4.17") -> None:
        if xs_version not in XS_VERSIONS:
            raise ValueError(f"unknown xenstored version {xs_version!r}: use one of {XS_VERSIONS}")
        self.xs_version = xs_version
        self.depth = xs_version == "4.22"
        self.hv = hypervisor
        self.store = Store()
        self.watches: dict[str, dict[Watch, None]] = {}
        self.connections: set[XsConnection] = set()
        self.domains: dict[int, XsDomain] = {}  # introduced
        self.features: dict[int, int] = {}  # SET_FEATURE before INTRODUCE
        self.special_perms = {
            wire.SPECIAL_RELEASE: DEFAULT_PERMS,
            wire.SPECIAL_INTRODUCE: DEFAULT_PERMS,
        }
        self.counters = Counters()
        self._watch_serial = 0
        self.handlers: dict[int, Callable] = {
            wire.XS_CONTROL: self._control,
            wire.XS_DIRECTORY: self._directory,
            wire.XS_READ: self._read,
            wire.XS_GET_PERMS: self._get_perms,
            wire.XS_WATCH: self._watch,
            wire.XS_UNWATCH: self._unwatch,
            wire.XS_TRANSACTION_START: self._transaction_start,
            wire.XS_TRANSACTION_END: self._transaction_end,
            wire.XS_INTRODUCE: self._introduce,
            wire.XS_RELEASE: self._release,
            wire.XS_GET_DOMAIN_PATH: self._get_domain_path,
            wire.XS_WRITE: self._write,
            wire.XS_MKDIR: self._mkdir,
            wire.XS_RM: self._rm,
            wire.XS_SET_PERMS: self._set_perms,
            wire.XS_IS_DOMAIN_INTRODUCED: self._is_domain_introduced,
            wire.XS_RESUME: self._resume,
            wire.XS_SET_TARGET: self._set_target,
            wire.XS_RESET_WATCHES: self._reset_watches,
            wire.XS_DIRECTORY_PART: self._directory_part,
        }
        if self.depth:
            self.handlers[wire.XS_GET_FEATURE] = self._get_feature
            self.handlers[wire.XS_SET_FEATURE] = self._set_feature
        # dom0 is introduced by xenstored itself at start-up (dom0_init), firing nothing.
        self.domains[PRIV_DOMID] = XsDomain(PRIV_DOMID)

    # -- requests ---------------------------------------------------------------------------

    _NOTID = frozenset((wire.XS_WATCH, wire.XS_UNWATCH))

    def handle(self, conn: XsConnection, msg_type: int, req_id: int, tx_id: int, payload: bytes):
        handler = self.handlers.get(msg_type)
        if handler is None:
            conn.send(wire.XS_ERROR, req_id, tx_id, b"ENOSYS\0")
            return
        trans = None
        if tx_id and msg_type not in self._NOTID:
            trans = conn.transactions.get(tx_id)
            if trans is None:
                conn.send(wire.XS_ERROR, req_id, tx_id, b"ENOENT\0")
                return
        try:
            reply = handler(conn, trans, payload)
        except XsError as exc:
            conn.send(wire.XS_ERROR, req_id, tx_id, exc.name.encode() + b"\0")
            return
        if isinstance(reply, tuple):  # (reply, event to send right after it)
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

    @staticmethod
    def _view(store: Store, trans):
        return trans.view if trans is not None else store.direct

    def _name(self, raw: bytes | None) -> str:
        """canonicalize() + the node-name checks of get_node()."""
        if raw is None:
            raise XsError("EINVAL")
        name = _text(raw)
        if name[:1] not in ("/", "@"):
            name = f"{IMPLICIT_PREFIX}/{name}"
        if not is_valid_nodename(name):
            raise XsError("EINVAL")
        return name

    def _node(self, trans, raw: bytes | None) -> Node:
        node = self._view(self.store, trans).get(self._name(raw))
        if node is None:
            raise XsError("ENOENT")
        return node

    def _changed(self, trans, events) -> None:
        if trans is not None:
            trans.events.extend(events)
        else:
            for path, match in events:
                self.fire(path, match)

    def _read(self, conn, trans, payload):
        return self._node(trans, _onearg(payload)).value

    def _directory(self, conn, trans, payload):
        return self._node(trans, _onearg(payload)).listing()

    def _directory_part(self, conn, trans, payload):
        if payload.count(b"\0") != 2:
            raise XsError("EINVAL")
        first, second, _ = payload.split(b"\0", 2)
        node = self._node(trans, first)
        off = _c_atoi(second) & 0xFFFFFFFF
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

    def _get_perms(self, conn, trans, payload):
        node = self._node(trans, _onearg(payload))
        return "".join(p + "\0" for p in node.perms).encode()

    def _write(self, conn, trans, payload):
        nul = payload.find(b"\0")
        if nul < 0:
            raise XsError("EINVAL")
        name = self._name(payload[:nul])
        self._changed(trans, tree_write(self._view(self.store, trans), name, payload[nul + 1 :]))
        return _OK

    def _mkdir(self, conn, trans, payload):
        name = self._name(_onearg(payload))
        self._changed(trans, tree_mkdir(self._view(self.store, trans), name))
        return _OK

    def _rm(self, conn, trans, payload):
        name = self._name(_onearg(payload))
        self._changed(trans, tree_rm(self._view(self.store, trans), name))
        return _OK

    def _set_perms(self, conn, trans, payload):
        strings = _strings(payload)
        if len(strings) < 2:
            raise XsError("EINVAL")
        perms = parse_perms(strings[1:])
        target = _text(strings[0])
        if target.startswith("@"):
            if target not in self.special_perms:
                raise XsError("EINVAL")
            self.special_perms[target] = perms
            return _OK
        name = self._name(strings[0])
        self._changed(trans, tree_set_perms(self._view(self.store, trans), name, perms))
        return _OK

    def _transaction_start(self, conn, trans, payload):
        if trans is not None:
            raise XsError("EBUSY")  # no nested transactions
        tx_id = conn.next_tx
        while tx_id == 0 or tx_id in conn.transactions:
            tx_id = (tx_id + 1) & 0xFFFFFFFF
        conn.next_tx = (tx_id + 1) & 0xFFFFFFFF
        conn.transactions[tx_id] = Transaction(tx_id, self.store)
        return str(tx_id).encode() + b"\0"

    def _transaction_end(self, conn, trans, payload):
        arg = _onearg(payload)
        if arg not in (b"T", b"F"):
            raise XsError("EINVAL")
        if trans is None:
            raise XsError("ENOENT")
        del conn.transactions[trans.id]
        if arg == b"T":
            trans.view.commit()
            self._changed(None, trans.events)
        return _OK

    # -- watches ----------------------------------------------------------------------------

    def _watch_path(self, raw: bytes) -> tuple[str, bool]:
        """check_watch_path(): (canonical path, relative)."""
        path = _text(raw)
        if path.startswith("@"):
            if self.depth and (not _VALID_NAME.match(path) or path.endswith("/") or "//" in path):
                raise XsError("EINVAL")
            if len(path) > REL_PATH_MAX:
                raise XsError("EINVAL")
            return path, False
        relative = not path.startswith("/")
        if relative:
            path = f"{IMPLICIT_PREFIX}/{path}"
        if not is_valid_nodename(path):
            raise XsError("EINVAL")
        return path, relative

    def _watch(self, conn, trans, payload):
        strings = _strings(payload)
        depth = -1
        if len(strings) == 3 and self.depth:
            depth = _c_atoi(strings[2])
            if depth < 0:
                raise XsError("EINVAL")
        elif len(strings) != 2:
            raise XsError("EINVAL")
        path, relative = self._watch_path(strings[0])
        token = strings[1]
        for w in conn.watches:
            if w.node == path and w.token == token:
                raise XsError("EEXIST")
        self._watch_serial += 1
        prefix_len = len(IMPLICIT_PREFIX) + 1 if relative else 0
        watch = Watch(conn, path, token, depth, prefix_len, self._watch_serial)
        conn.watches.append(watch)
        self.watches.setdefault(path, {})[watch] = None
        # "We fire once up front": right after the OK, not linked to the request.
        return _OK, event_frame(path[prefix_len:], token)

    def _unwatch(self, conn, trans, payload):
        strings = _strings(payload)
        if len(strings) != 2:
            raise XsError("EINVAL")
        path = _text(strings[0])
        if path[:1] not in ("/", "@"):
            path = f"{IMPLICIT_PREFIX}/{path}"
        for w in conn.watches:
            if w.node == path and w.token == strings[1]:
                self._drop_watch(w)
                conn.watches.remove(w)
                return _OK
        raise XsError("ENOENT")

    def _drop_watch(self, w: Watch) -> None:
        bucket = self.watches.get(w.node)
        if bucket is not None:
            bucket.pop(w, None)
            if not bucket:
                del self.watches[w.node]

    def _reset_watches(self, conn, trans, payload):
        self.drop_watches(conn)
        conn.transactions.clear()
        return _OK

    def drop_watches(self, conn: XsConnection) -> None:
        for w in conn.watches:
            self._drop_watch(w)
        conn.watches.clear()

    def fire(self, name: str, match: int) -> int:
        """Send the event `name` to every matching watch; returns the number of events."""
        index = self.watches
        if not index:
            return 0
        matched: list[Watch] = []
        exact = index.get(name)
        if exact:
            if match == MATCH_NODEPTH:
                matched.extend(w for w in exact if w.depth < 0)
            else:
                matched.extend(exact)
        if match in (MATCH_SUBTREE, MATCH_DEPTH):
            buckets = 1 if matched else 0
            for anc in ancestors(name):
                bucket = index.get(anc)
                if not bucket:
                    continue
                before = len(matched)
                for w in bucket:
                    if match == MATCH_DEPTH and w.depth <= 0:
                        continue
                    if is_child(name, anc, w.depth):
                        matched.append(w)
                buckets += len(matched) > before
            if buckets > 1:
                # A connection sees its watches fire in the order it set them up.
                matched.sort(key=lambda w: w.serial)
        if not matched:
            return 0
        frames: dict[tuple[int, bytes], bytes | None] = {}
        sent = 0
        for w in matched:
            key = (w.prefix_len, w.token)
            frame = frames.get(key, _MISSING)
            if frame is _MISSING:
                frame = frames[key] = event_frame(name[w.prefix_len :], w.token)
            if frame is not None:
                w.conn.send_event(frame)
                sent += 1
        self.counters.events += sent
        return sent

    # -- special watches and domains ---------------------------------------------------------

    def fire_special(self, name: str, domid: int, nodom: bool, dom: bool) -> None:
        """fire_special_watches(): WATCH_NODOM and/or WATCH_DOM (the latter 4.22 only)."""
        if nodom:
            if name == wire.SPECIAL_RELEASE:
                self.counters.release_firings += 1
            else:
                self.counters.introduce_firings += 1
            self.fire(name, MATCH_NODEPTH)
        if dom and self.depth:
            if name == wire.SPECIAL_RELEASE:
                self.counters.release_dom_firings += 1
            self.fire(f"{name}/{domid}", MATCH_DEPTH)

    def introduce(self, domid: int) -> bool:
        """Add a domain to the introduced list; True if it was new (and fired)."""
        if domid in self.domains:
            return False
        self.domains[domid] = XsDomain(domid, self.features.pop(domid, FEATURES_4_22))
        if domid != PRIV_DOMID:
            self.fire_special(wire.SPECIAL_INTRODUCE, domid, True, True)
        return True

    def _destroy_domain(self, domid: int) -> None:
        """destroy_domain(): forget an introduced domain and fire @releaseDomain for it."""
        if self.domains.pop(domid, None) is None:
            return
        self.fire_special(wire.SPECIAL_RELEASE, domid, True, True)

    def release(self, domid: int) -> None:
        if domid == PRIV_DOMID:
            raise XsError("EINVAL")
        if domid not in self.domains:
            raise XsError("ENOENT")
        self._destroy_domain(domid)

    def resume(self, domid: int) -> None:
        if domid == PRIV_DOMID:
            raise XsError("EINVAL")
        dom = self.domains.get(domid)
        if dom is None:
            raise XsError("ENOENT")
        dom.shutdown = False

    def check_domains(self) -> None:
        """The pass C xenstored runs on each VIRQ_DOM_EXC (check_domains()).

        Over every introduced domain, newest first (C adds to the head of its list): a domain
        newly shut down is latched (and, with depth, fires @releaseDomain/<domid>) and makes
        the pass fire @releaseDomain once at its end; a dying or vanished domain is dropped,
        firing @releaseDomain for itself, which also cancels the end-of-pass firing
        ("destroy_domain() fires the watch"). A latched domain fires nothing until XS_RESUME.
        """
        self.counters.virqs += 1
        flags_of = self.hv.domain_flags
        notify = False
        for dom in reversed(list(self.domains.values())):
            flags = flags_of(dom.domid)
            if flags is not None:
                if flags & DOMINF_SHUTDOWN and not dom.shutdown:
                    dom.shutdown = True
                    if self.depth:
                        self.fire_special(wire.SPECIAL_RELEASE, dom.domid, False, True)
                    notify = True
                if not flags & DOMINF_DYING:
                    continue
            if dom.domid == PRIV_DOMID:
                continue
            self._destroy_domain(dom.domid)
            notify = False  # destroy_domain() fires the watch
        if notify:
            self.fire_special(wire.SPECIAL_RELEASE, 0, True, False)

    @staticmethod
    def _domid_417(raw: bytes) -> int:
        return _c_atoi(raw) & 0xFFFFFFFF

    def _parse_domid(self, raw: bytes) -> int:
        if not self.depth:
            return self._domid_417(raw)
        # parse_domid(): strtoul(.., 10) consuming everything, at most 65535.
        m = re.fullmatch(rb"\s*\+?(\d*)", raw)
        if not m:
            raise XsError("EINVAL")
        value = int(m.group(1) or b"0")
        if value > 65535:
            raise XsError("EINVAL")
        return value

    def _onearg_domid(self, payload: bytes) -> int:
        arg = _onearg(payload)
        if arg is None:
            raise XsError("EINVAL")
        domid = self._parse_domid(arg)
        if domid == PRIV_DOMID:
            raise XsError("EINVAL")
        return domid

    def _introduce(self, conn, trans, payload):
        strings = _strings(payload)
        if len(strings) < 3:
            raise XsError("EINVAL")
        domid = self._parse_domid(strings[0])
        if _c_atoi(strings[2]) <= 0:
            raise XsError("EINVAL")  # event channel port
        if domid not in self.domains and self.hv.domain_flags(domid) is None:
            raise XsError("EINVAL")  # no ring page to map: no such domain
        self.introduce(domid)
        return _OK

    def _release(self, conn, trans, payload):
        domid = self._onearg_domid(payload)
        if domid not in self.domains:
            raise XsError("ENOENT")
        self.release(domid)
        return _OK

    def _resume(self, conn, trans, payload):
        self.resume(self._onearg_domid(payload))
        return _OK

    def _get_domain_path(self, conn, trans, payload):
        arg = _onearg(payload)
        if arg is None:
            raise XsError("EINVAL")
        return f"/local/domain/{self._parse_domid(arg)}\0".encode()

    def _is_domain_introduced(self, conn, trans, payload):
        arg = _onearg(payload)
        if arg is None:
            raise XsError("EINVAL")
        domid = self._parse_domid(arg)
        return b"T\0" if domid == DOMID_SELF or domid in self.domains else b"F\0"

    def _set_target(self, conn, trans, payload):
        strings = _strings(payload)
        if len(strings) < 2:
            raise XsError("EINVAL")
        for raw in strings[:2]:
            if self._parse_domid(raw) not in self.domains:
                raise XsError("ENOENT")
        return _OK

    def _get_feature(self, conn, trans, payload):
        strings = _strings(payload)
        if not strings:
            features = FEATURES_4_22
        elif len(strings) > 1:
            raise XsError("EINVAL")
        else:
            domid = self._parse_domid(strings[0])
            if domid in self.domains:
                features = self.domains[domid].features
            elif self.hv.domain_flags(domid) is not None:
                features = self.features.get(domid, FEATURES_4_22)
            else:
                raise XsError("ENOENT")
        return f"{features}\0".encode()

    def _set_feature(self, conn, trans, payload):
        strings = _strings(payload)
        if len(strings) != 2:
            raise XsError("EINVAL")
        domid = self._parse_domid(strings[0])
        features = _c_atoi(strings[1]) & 0xFFFFFFFF
        if domid not in self.domains and self.hv.domain_flags(domid) is None:
            raise XsError("ENOENT")
        if domid in self.domains:
            raise XsError("EBUSY")
        if features & ~FEATURES_4_22:
            raise XsError("EINVAL")
        self.features[domid] = features
        return _OK

    def _control(self, conn, trans, payload):
        # No XS_CONTROL command is modelled; C xenstored answers EINVAL to unknown ones.
        raise XsError("EINVAL")

    # -- in-process toolstack API ------------------------------------------------------------

    def local_write(self, path: str, value: bytes, perms: tuple[str, ...] | None = None) -> None:
        for name, match in tree_write(self.store.direct, path, value, perms):
            self.fire(name, match)

    def local_rm(self, path: str) -> None:
        try:
            events = tree_rm(self.store.direct, path)
        except XsError:
            return
        for name, match in events:
            self.fire(name, match)

    def local_read(self, path: str) -> bytes | None:
        node = self.store.nodes.get(path)
        return None if node is None else node.value

    # -- connections -------------------------------------------------------------------------

    def connection_lost(self, conn: XsConnection) -> None:
        self.connections.discard(conn)
        self.drop_watches(conn)
        conn.transactions.clear()

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()


class Transaction:
    __slots__ = ("events", "id", "view")

    def __init__(self, tx_id: int, store: Store) -> None:
        self.id = tx_id
        self.view = TransactionView(store)
        self.events: list[tuple[str, int]] = []


class XsConnection(asyncio.Protocol):
    """One client socket: frames in, replies and events out."""

    def __init__(self, server: Xenstored) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.watches: list[Watch] = []
        self.transactions: dict[int, Transaction] = {}
        self.next_tx = 1
        self.closed = False
        self._reading_paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.server.connection_lost(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        size = len(buf)
        handle = self.server.handle
        while size - pos >= HEADER_SIZE:
            msg_type, req_id, tx_id, length = HEADER.unpack_from(buf, pos)
            if length > XENSTORE_PAYLOAD_MAX:
                # handle_input(): "Client tried to feed us", the connection is dropped.
                log.info("client sent a %d-byte payload: dropping it", length)
                self.server.counters.dropped_connections += 1
                self.close()
                return
            end = pos + HEADER_SIZE + length
            if end > size:
                break
            payload = bytes(buf[pos + HEADER_SIZE : end])
            pos = end
            handle(self, msg_type, req_id, tx_id, payload)
            if self.closed:
                return
        if pos:
            del buf[:pos]

    def send(self, msg_type: int, req_id: int, tx_id: int, payload: bytes) -> None:
        if self.closed:
            return
        self.transport.write(HEADER.pack(msg_type, req_id, tx_id, len(payload)) + payload)

    def send_event(self, frame: bytes) -> None:
        if self.closed:
            return
        transport = self.transport
        transport.write(frame)
        if transport.get_write_buffer_size() > WRITE_HARD_LIMIT:
            log.warning(
                "a watcher stopped reading (%d bytes queued): dropping it", WRITE_HARD_LIMIT
            )
            self.server.counters.dropped_connections += 1
            self.close()

    # Backpressure for requests: stop reading from a client that does not read its replies.
    def pause_writing(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.connection_lost(self)
            if self.transport is not None:
                self.transport.abort()


async def serve_unix(server: Xenstored, sock: socket.socket) -> asyncio.AbstractServer:
    """Serve on an already bound and listening Unix socket."""
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(lambda: XsConnection(server), sock=sock)
