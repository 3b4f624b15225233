"""The node database (the tdb of C xenstored): nodes, permissions, and the tree operations.

A tree operation works on a view, the store itself (`DirectView`) or a transaction's
(transactions.py), and returns the watch events it causes as (path, match) pairs; the
caller fires them at once or keeps them for the commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from mux.sim.xenstored.names import basename, child_path, parent_of
from mux.sim.xenstored.payload import XsError, c_strtol, text

# enum watch_match (watch.h): how an event on a node reaches the watches.
MATCH_EXACT = 0
MATCH_SUBTREE = 1
MATCH_DEPTH = 2  # watches with depth > 0, subtree semantics (and the exact node)
MATCH_NODEPTH = 3  # watches without depth, exact semantics


DEFAULT_PERMS = ("n0",)

Events = list[tuple[str, int]]


def format_perms(perms: Iterable[tuple[str, int]]) -> tuple[str, ...]:
    return tuple(f"{c}{i}" for c, i in perms)


def parse_perms(strings: list[bytes]) -> tuple[str, ...]:
    out = []
    for raw in strings:
        perm = text(raw)
        if not perm or perm[0] not in "rwbn":
            raise XsError("EINVAL")
        value = c_strtol(perm[1:])
        if value is None:
            raise XsError("EINVAL")
        # xs_perm_to_string prints the (unsigned) id with "%i".
        value &= 0xFFFFFFFF
        if value >= 1 << 31:
            value -= 1 << 32
        out.append((perm[0], value))
    return format_perms(out)


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


class View(Protocol):
    """Where a tree operation reads and changes nodes."""

    def get(self, path: str) -> Node | None: ...

    def mutable(self, path: str) -> Node: ...

    def put_new(self, path: str, node: Node) -> None: ...

    def delete(self, path: str) -> None: ...


class Store:
    """The nodes by path, and the generation counter every change draws from."""

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


# Tree operations --------------------------------------------------------------------------


def tree_write(view: View, name: str, value: bytes, perms: tuple[str, ...] | None = None) -> Events:
    node = view.get(name)
    node = _create(view, name) if node is None else view.mutable(name)
    node.value = value
    if perms is not None:
        node.perms = perms
    return [(name, MATCH_SUBTREE)]


def _create(view: View, name: str) -> Node:
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


def tree_mkdir(view: View, name: str) -> Events:
    if view.get(name) is not None:
        return []
    _create(view, name)
    return [(name, MATCH_SUBTREE)]


def tree_rm(view: View, name: str) -> Events:
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


def tree_set_perms(view: View, name: str, perms: tuple[str, ...]) -> Events:
    if view.get(name) is None:
        raise XsError("ENOENT")
    view.mutable(name).perms = perms
    return [(name, MATCH_SUBTREE)]
