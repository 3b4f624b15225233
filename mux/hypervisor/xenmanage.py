"""libxenmanage (Xen 4.21+): a domain's state bits and its 64-bit unique id per incarnation,
through the stable `XEN_DOMCTL_get_domain_state`, loaded with ctypes like libxenctrl.

Which arguments `xenmanage_get_domain_info` takes (docs/xen-versions.md has the sources):
every tag of xen.git that has libxenmanage (4.21.0-rc1 on) declares
`(handle, domid, &state, &caps, &unique_id)`; the 4-argument form without `caps` existed
only on xen.git's master during 4.21's development (2025-03-06 to 2025-07-31), under the
same soname `libxenmanage.so.1` and the same symbol version node `VERS_1.0`. Nothing in the
library tells the two apart, so the arity is decided from the Xen it belongs to
(`arity_for`): a release or release candidate of 4.21 or later, or a development build of
4.22 or later, has 5 arguments; a 4.21 development build may have either, and gets no
libxenmanage at all (no unique ids, said in the log) rather than a call that could be
wrong. The library is taken from the directory of the libxenctrl in use, so that both come
from one Xen install, and libxenctrl only runs against the hypervisor it was built for.

`xenmanage_poll_changed_domain` is never called, nor even looked up: it hands out one
changed domain per call and clears that domain's "changed" bit in the hypervisor, and the
bits exist for one consumer per system, the xenstored that registered VIRQ_DOM_EXC (the
domctl with DOMID_INVALID is refused to any other domain, and in dom0 beside a dom0
xenstored a second caller would take the bits xenstored needs to see deaths).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os

from mux.hypervisor.libxc import XenVersion

log = logging.getLogger("xenmux.xenmanage")

SONAME = "libxenmanage.so.1"
# XENMANAGE_GETDOMSTATE_STATE_* (xenmanage.h)
STATE_EXIST = 0x1
STATE_SHUTDOWN = 0x2
STATE_DYING = 0x4
STATE_DEAD = 0x8


def arity_for(version: XenVersion | None) -> int | None:
    """The number of arguments of xenmanage_get_domain_info on this Xen, or None when it
    is not known for sure (then the library must not be called)."""
    if version is None or (version.major, version.minor) < (4, 21):
        return None
    if (version.major, version.minor) == (4, 21) and version.development:
        return None
    return 5


class XenManage:
    """A libxenmanage handle; `domain_info(domid)` is the one call made through it."""

    def __init__(self, library: str) -> None:
        self.library = library
        lib = ctypes.CDLL(library, use_errno=True)
        lib.xenmanage_open.restype = ctypes.c_void_p
        lib.xenmanage_open.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.xenmanage_close.argtypes = [ctypes.c_void_p]
        get = lib.xenmanage_get_domain_info
        uint_p, u64_p = ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint64)
        # (handle, domid, &state, &caps, &unique_id): caps is optional (NULL), as xenstored
        # passes it.
        get.argtypes = [ctypes.c_void_p, ctypes.c_uint, uint_p, uint_p, u64_p]
        get.restype = ctypes.c_int
        self._lib = lib
        self._get = get
        self._hdl = lib.xenmanage_open(None, 0)
        if not self._hdl:
            code = ctypes.get_errno() or errno.EIO
            raise OSError(code, f"{library}: xenmanage_open failed ({os.strerror(code)})")

    def domain_info(self, domid: int) -> tuple[int, int] | None:
        """(state bits, unique id) of `domid`, or None when it does not exist."""
        state = ctypes.c_uint(0)
        unique = ctypes.c_uint64(0)
        rc = self._get(self._hdl, domid, ctypes.byref(state), None, ctypes.byref(unique))
        if rc == 0:
            return state.value, unique.value
        code = ctypes.get_errno() or errno.EIO
        if code == errno.ESRCH:
            return None
        raise OSError(code, f"xenmanage_get_domain_info({domid}): {os.strerror(code)}")

    def close(self) -> None:
        if self._hdl:
            self._lib.xenmanage_close(self._hdl)
            self._hdl = None


def open_beside(libxenctrl_path: str, version: XenVersion | None) -> XenManage | None:
    """libxenmanage from libxenctrl's directory when this Xen has one whose arity is known;
    None otherwise (the reason is logged)."""
    path = os.path.join(os.path.dirname(libxenctrl_path), SONAME)
    if not os.path.exists(path):
        log.info("no %s beside %s: no unique domain ids", SONAME, libxenctrl_path)
        return None
    if arity_for(version) != 5:
        log.warning(
            "%s found but Xen %s does not say which arguments xenmanage_get_domain_info "
            "takes (4.21's development builds had two forms): not using it, no unique "
            "domain ids",
            path,
            version if version is not None else "(version unknown)",
        )
        return None
    try:
        return XenManage(path)
    except (OSError, AttributeError) as exc:
        log.warning("cannot use %s (%s): no unique domain ids", path, exc)
        return None
