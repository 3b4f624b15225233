"""Node names: what is a valid one, how a relative one is completed, parents and children.

The rules of C xenstored's is_valid_nodename(), canonicalize() and get_parent(); shared by
the store (node requests) and the watches (watch paths).
"""

from __future__ import annotations

import re

from mux.sim.xenstored.payload import XsError, text
from mux.xenstore import wire

IMPLICIT_PREFIX = "/local/domain/0"  # get_implicit_path() of a socket connection
REL_PATH_MAX = wire.XENSTORE_REL_PATH_MAX

VALID_NAME = re.compile(r"[A-Za-z0-9\-/_@]*\Z")
_LOCAL_DOMAIN = re.compile(r"/local/domain/\d{1,5}/")


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
    return VALID_NAME.match(name) is not None


def node_name(raw: bytes | None) -> str:
    """canonicalize() + the node-name checks of get_node()."""
    if raw is None:
        raise XsError("EINVAL")
    name = text(raw)
    if name[:1] not in ("/", "@"):
        name = f"{IMPLICIT_PREFIX}/{name}"
    if not is_valid_nodename(name):
        raise XsError("EINVAL")
    return name


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
