"""The toolstack's xenstore side effects, behind one small interface.

libxl writes a domain's nodes and introduces it to xenstored when it builds the domain, sends
XS_RESUME when it resumes one, may release one, and removes the nodes when the domain is
destroyed. The simulated host calls these through `Toolstack`, so the same lifecycle can be
pointed at the sim's in-process xenstored (`LocalToolstack`) or, later, at an external
xenstored over the wire protocol (for example Debian's C xenstored).
"""

from __future__ import annotations

import time
from typing import Protocol

from mux.sim.wireclient import XsClient
from mux.sim.xenstored import XsError
from mux.xenstore import wire


class DomainInfo(Protocol):
    domid: int
    name: str

    @property
    def uuid(self) -> str: ...


def domain_nodes(dom: DomainInfo) -> list[tuple[str, bytes, tuple[str, ...] | None]]:
    """(path, value, perms or None to inherit) for a domain, in the order libxl writes them.

    The domain's directories are owned by dom0 and readable by the domain ("n0", "r<domid>").
    """
    domid = dom.domid
    home = f"/local/domain/{domid}"
    if domid == 0:
        return [
            (home, b"", ("n0",)),
            (f"{home}/name", dom.name.encode(), None),
            (f"{home}/domid", b"0", None),
        ]
    perms = ("n0", f"r{domid}")
    uuid = dom.uuid
    vm = f"/vm/{uuid}"
    return [
        (vm, b"", perms),
        (f"{vm}/uuid", uuid.encode(), None),
        (f"{vm}/name", dom.name.encode(), None),
        (f"{vm}/start_time", f"{time.time():.2f}".encode(), None),
        (home, b"", perms),
        (f"{home}/vm", vm.encode(), None),
        (f"{home}/name", dom.name.encode(), None),
        (f"{home}/domid", str(domid).encode(), None),
    ]


def domain_paths(domid: int, uuid: str) -> list[str]:
    """What libxl removes when it destroys a domain."""
    return [f"/vm/{uuid}", f"/local/domain/{domid}"]


class Toolstack(Protocol):
    """What the simulated host asks of xenstored on a domain's behalf (synchronous)."""

    def write_domain(self, dom: DomainInfo) -> None:
        """Write the domain's nodes (before it is introduced)."""

    def introduce(self, domid: int) -> None:
        """XS_INTRODUCE: fires @introduceDomain for a domain new to xenstored."""

    def resume(self, domid: int) -> None:
        """XS_RESUME: re-arms @releaseDomain for the domain's next shutdown."""

    def release(self, domid: int) -> None:
        """XS_RELEASE: xenstored forgets the domain and fires @releaseDomain."""

    def remove_domain(self, domid: int, uuid: str) -> None:
        """Remove the domain's nodes (after the domain is gone)."""


class LocalToolstack:
    """The toolstack talking to the sim's own xenstored, in process (no socket round trip)."""

    def __init__(self, xenstored) -> None:
        self.xs = xenstored

    def write_domain(self, dom: DomainInfo) -> None:
        for path, value, perms in domain_nodes(dom):
            self.xs.local_write(path, value, perms)

    def introduce(self, domid: int) -> None:
        self.xs.introduce(domid)

    def resume(self, domid: int) -> None:
        try:
            self.xs.resume(domid)
        except XsError as exc:  # libxl logs and goes on
            raise wire.XenstoreError(exc.name, f"RESUME {domid}") from None

    def release(self, domid: int) -> None:
        try:
            self.xs.release(domid)
        except XsError as exc:
            raise wire.XenstoreError(exc.name, f"RELEASE {domid}") from None

    def remove_domain(self, domid: int, uuid: str) -> None:
        for path in domain_paths(domid, uuid):
            self.xs.local_rm(path)


class WireToolstack:
    """The toolstack talking to a xenstored over its socket, request by request as libxl does.

    For pairing the simulated hypervisor with an external xenstored (Debian's C xenstored
    under a stand-in hypervisor library). It blocks: use it from a thread, or accept that
    the caller's event loop waits for the external daemon's replies.
    """

    def __init__(self, path: str, *, timeout: float = 10.0, store_gfn: int = 0, port: int = 1):
        self.client = XsClient(path, timeout)
        self.store_gfn = store_gfn
        self.port = port

    def write_domain(self, dom: DomainInfo) -> None:
        for path, value, perms in domain_nodes(dom):
            self.client.write(path, value)
            if perms is not None:
                self.client.ok(wire.XS_SET_PERMS, path, *perms)

    def introduce(self, domid: int) -> None:
        self.client.ok(wire.XS_INTRODUCE, str(domid), str(self.store_gfn), str(self.port))

    def resume(self, domid: int) -> None:
        self.client.ok(wire.XS_RESUME, str(domid))

    def release(self, domid: int) -> None:
        self.client.ok(wire.XS_RELEASE, str(domid))

    def remove_domain(self, domid: int, uuid: str) -> None:
        for path in domain_paths(domid, uuid):
            self.client.ok(wire.XS_RM, path)

    def close(self) -> None:
        self.client.close()
