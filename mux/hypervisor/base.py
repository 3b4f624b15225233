"""What every source of domain records offers the scan loop, and how it says what it can do.

A backend declares its `capabilities` instead of being probed with `getattr`:

- `full_scan`: `scan_all()` hands over every domain, in domid order, from one pass. How it
  gets them is the backend's business (the `xenctrl` backend pages through the hypervisor
  in batches of 1024 in C, as libxl does; the simulated host copies its whole table under
  one seqlock read). There is one paging loop in the project, and it is in C.
- `one_domain`: `query_one(domid)` is cheap: it looks up that exact domid (Xen 4.18+'s
  `XEN_DOMCTL_getdomaininfo`, the sim's table). Every backend has `query_one`; without the
  capability it is `getinfolist(domid, 1)`, which may hand back the next domid instead (the
  scanner's `diff_one` checks) and walks the hypervisor's whole list under its lock.
- `changed_feed`: the backend can name domids that changed, through `watch_changed`; they
  go into the scan loop's targeted-scan path, as a watch-depth firing does.
- `unique_ids`: `unique_id(domid)` gives the 64-bit id Xen 4.20+ draws for every domain
  incarnation (through libxenmanage on 4.21+; docs/xen-versions.md).

`features()` is what `hello` reports of these (docs/protocol.md).

`xenstore_path` and `state_dir` are where this backend's host keeps its xenstored and the
daemon's state, when the backend knows better than the host's defaults (a simulated host
has its own of both); None means the defaults.

Backends are found by name (`mux.hypervisor.open_backend`), from the entry points of the
group `xenmux.backends` (pyproject.toml), so the daemon never imports the simulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

# Buffers the scanner can diff: a bytearray the backend owns, or a view of one.
Records = bytearray | memoryview


class HypervisorError(OSError):
    """The domain-info call failed; `retryable` says whether trying again can help."""

    def __init__(self, errno: int, message: str, *, retryable: bool = False) -> None:
        super().__init__(errno, message)
        self.retryable = retryable


@dataclass(frozen=True)
class Capabilities:
    full_scan: bool = True
    one_domain: bool = False
    changed_feed: bool = False
    unique_ids: bool = False

    def features(self) -> dict[str, bool]:
        return {"one_domain_query": self.one_domain, "unique_ids": self.unique_ids}


ChangedCallback = Callable[[Iterable[int]], None]


class Backend(Protocol):
    name: str
    capabilities: Capabilities
    xenstore_path: str | None
    state_dir: str | None

    def scan_all(self) -> tuple[Records, int]:
        """Every domain: (buffer, count) of 112-byte records in domid order. The buffer is
        the backend's own and is reused by the next call: diff it before scanning again.
        Raises HypervisorError."""
        ...

    def query_one(self, domid: int) -> tuple[Records, int]:
        """(buffer, count <= 1): the record of `domid` if it exists (without `one_domain`,
        possibly the next domid's instead). Raises HypervisorError."""
        ...

    def getinfolist(self, first: int, max_domains: int, out: bytearray, offset: int = 0) -> int:
        """Copy at most `max_domains` records with domid >= `first`, in domid order, into
        `out` at byte `offset`; return how many. Raises HypervisorError."""
        ...

    def watch_changed(self, callback: ChangedCallback) -> None:
        """Only with `changed_feed`: call `callback(domids)` on the event loop whenever the
        backend learns that those domids changed."""
        ...

    def unique_id(self, domid: int) -> int | None:
        """Only with `unique_ids`: the 64-bit id of `domid`'s current incarnation, None when
        it does not exist. Raises HypervisorError."""
        ...

    def domain_count_hint(self) -> int:
        """How many domains exist now, roughly."""
        ...

    def close(self) -> None: ...
