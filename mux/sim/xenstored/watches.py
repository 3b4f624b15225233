"""Watches (watch.c): registration, matching an event to the watches it reaches, the
special watches (@releaseDomain, @introduceDomain) and the depth of 4.22.

An event on a node reaches every watch on the node or on an ancestor (subtree semantics),
or only the node's own (exact), and with depth at most that many levels below the watch.
Each event goes out as one write of its connection's writer; nothing here awaits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mux.sim.xenstored.names import (
    IMPLICIT_PREFIX,
    REL_PATH_MAX,
    VALID_NAME,
    ancestors,
    is_valid_nodename,
)
from mux.sim.xenstored.payload import OK, XsError, c_atoi, strings, text
from mux.sim.xenstored.store import MATCH_DEPTH, MATCH_NODEPTH, MATCH_SUBTREE
from mux.xenstore import wire
from mux.xenstore.wire import HEADER, XENSTORE_PAYLOAD_MAX

if TYPE_CHECKING:
    from mux.sim._simfast import HostEngine
    from mux.sim.xenstored.counters import Counters
    from mux.sim.xenstored.interfaces import Client as XsConnection
    from mux.sim.xenstored.interfaces import Server as Xenstored
    from mux.sim.xenstored.rules import Rules
    from mux.sim.xenstored.transactions import Transaction


_MISSING = object()


class Watch:
    __slots__ = ("conn", "depth", "node", "prefix_len", "serial", "token")

    def __init__(
        self, conn: XsConnection, node: str, token: bytes, depth: int, prefix_len: int, serial: int
    ) -> None:
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


def is_child(child: str, parent: str, depth: int) -> bool:
    """watch.c is_child() for a `parent` known to be `child` or one of its ancestors."""
    if depth < 0 or len(child) == len(parent):
        return True
    levels = child.count("/") if parent == "/" else child.count("/", len(parent))
    return levels <= depth


class WatchTable:
    """Every connection's watches, indexed by the node they sit on."""

    def __init__(self, rules: Rules, counters: Counters, engine: HostEngine | None = None) -> None:
        self.rules = rules
        self.counters = counters
        # The change thread fires the special watches from its own copy of them: every
        # watch on an `@` name is registered there too, with its connection's writer.
        self.engine = engine
        self.index: dict[str, dict[Watch, None]] = {}
        self._serial = 0

    def add(self, conn: XsConnection, path: str, token: bytes, depth: int, prefix_len: int):
        self._serial += 1
        watch = Watch(conn, path, token, depth, prefix_len, self._serial)
        conn.watches.append(watch)
        self.index.setdefault(path, {})[watch] = None
        if self.engine is not None:
            if path.startswith("@"):
                writer = getattr(conn, "writer", None)
                self.engine.watch_add(writer, path.encode("latin-1"), token, depth, watch.serial)
            else:
                self.engine.count_node_watches(1)
        return watch

    def remove(self, w: Watch) -> None:
        bucket = self.index.get(w.node)
        if bucket is not None:
            if bucket.pop(w, _MISSING) is not _MISSING and self.engine is not None:
                if w.node.startswith("@"):
                    self.engine.watch_remove(getattr(w.conn, "writer", None), w.serial)
                else:
                    self.engine.count_node_watches(-1)
            if not bucket:
                del self.index[w.node]

    def drop_connection(self, conn: XsConnection) -> None:
        for w in conn.watches:
            self.remove(w)
        conn.watches.clear()

    def fire(self, name: str, match: int) -> int:
        """Send the event `name` to every matching watch; returns the number of events."""
        index = self.index
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

    def fire_special(self, name: str, domid: int, nodom: bool, dom: bool) -> None:
        """fire_special_watches(): WATCH_NODOM and/or WATCH_DOM (the latter with depth only)."""
        if nodom:
            if name == wire.SPECIAL_RELEASE:
                self.counters.release_firings += 1
            else:
                self.counters.introduce_firings += 1
            self.fire(name, MATCH_NODEPTH)
        if dom and self.rules.watch_depth:
            if name == wire.SPECIAL_RELEASE:
                self.counters.release_dom_firings += 1
            self.fire(f"{name}/{domid}", MATCH_DEPTH)


def check_watch_path(raw: bytes, rules: Rules) -> tuple[str, bool]:
    """check_watch_path(): (canonical path, relative)."""
    path = text(raw)
    if path.startswith("@"):
        if rules.watch_depth and (not VALID_NAME.match(path) or path.endswith("/") or "//" in path):
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


# Handlers (rows of core.WIRE_FUNCS) --------------------------------------------------------


def do_watch(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> tuple[bytes, bytes | None]:
    args = strings(payload)
    depth = -1
    if len(args) == 3 and xs.rules.watch_depth:
        depth = c_atoi(args[2])
        if depth < 0:
            raise XsError("EINVAL")
    elif len(args) != 2:
        raise XsError("EINVAL")
    path, relative = check_watch_path(args[0], xs.rules)
    depths = xs.rules.special_watch_depths
    # xapi-project's oxenstored: a special watch takes only these depths, and a watch on
    # one domain's `@releaseDomain/<domid>` none.
    if (
        depths is not None
        and len(args) == 3
        and path.startswith("@")
        and (path not in (wire.SPECIAL_RELEASE, wire.SPECIAL_INTRODUCE) or depth not in depths)
    ):
        raise XsError("EINVAL")
    token = args[1]
    for w in conn.watches:
        if w.node == path and w.token == token:
            raise XsError("EEXIST")
    prefix_len = len(IMPLICIT_PREFIX) + 1 if relative else 0
    xs.watches.add(conn, path, token, depth, prefix_len)
    # "We fire once up front": right after the OK, not linked to the request.
    return OK, event_frame(path[prefix_len:], token)


def do_unwatch(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    args = strings(payload)
    if len(args) != 2:
        raise XsError("EINVAL")
    path = text(args[0])
    if path[:1] not in ("/", "@"):
        path = f"{IMPLICIT_PREFIX}/{path}"
    for w in conn.watches:
        if w.node == path and w.token == args[1]:
            xs.watches.remove(w)
            conn.watches.remove(w)
            return OK
    raise XsError("ENOENT")


def do_reset_watches(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    xs.watches.drop_connection(conn)
    conn.transactions.clear()
    return OK
