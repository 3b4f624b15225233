"""The simulated host's xenstored: the real wire protocol on a Unix socket, asyncio.

It follows C xenstored (tools/xenstored/ in xen.git) closely enough for Debian's clients
(libxenstore's xenstore-read/-write/-ls/-list/-rm/-watch) and pyxs to work unchanged, and
is split as C is:

* core.py (core.c): the server, the handler table (one row per message type, as
  wire_funcs[]), dispatch, the node requests READ, WRITE, MKDIR, RM, DIRECTORY (E2BIG past
  4096 bytes), DIRECTORY_PART, GET_PERMS, SET_PERMS; ENOSYS for unknown types.
* connection.py: one client socket, framing (an over-long payload drops the connection),
  output and backpressure.
* store.py (the tdb): nodes with permissions and generation counts, the tree operations;
  names.py: the node-name rules; payload.py: argument parsing and XsError.
* transactions.py (transaction.c): TRANSACTION_START/END, commit or EAGAIN.
* watches.py (watch.c): WATCH with the immediate first event, subtree matching, relative
  paths (based on /local/domain/0 for socket connections), UNWATCH, RESET_WATCHES, the
  special watches and the depth of 4.22.
* domains.py (domain.c): the introduced domains, the shutdown latch, the domain pass on
  VIRQ_DOM_EXC, INTRODUCE, RELEASE, RESUME, IS_DOMAIN_INTRODUCED, GET_DOMAIN_PATH,
  SET_TARGET, GET_FEATURE, SET_FEATURE.
* rules.py: what differs between the modelled versions and flavours (C xenstored;
  oxenstored, Xen's and xapi-project's: no latch, a no-op RESUME, no GET_FEATURE, empty
  requests held until more bytes arrive; docs/xen-versions.md). `xs_version` "4.17" knows the
  message types of Xen 4.17 (GET_FEATURE is ENOSYS and a watch with a depth argument is
  EINVAL); "4.22" adds GET_FEATURE/SET_FEATURE and the watch depth of Juergen Gross's
  patches (special watches registered with depth 1 fire as `@releaseDomain/<domid>`;
  `@releaseDomain/<domid>` may be watched directly).

Every socket connection is privileged (dom0), as on a real host. Nothing here awaits while
handling a request or firing a watch: events go out with one transport.write per event.
"""

from mux.sim.xenstored.connection import XsConnection, serve_unix
from mux.sim.xenstored.core import Xenstored
from mux.sim.xenstored.counters import Counters
from mux.sim.xenstored.domains import DomainSource, XsDomain
from mux.sim.xenstored.payload import XsError
from mux.sim.xenstored.rules import XS_VERSIONS, Rules

__all__ = [
    "XS_VERSIONS",
    "Counters",
    "DomainSource",
    "Rules",
    "Xenstored",
    "XsConnection",
    "XsDomain",
    "XsError",
    "serve_unix",
]
