"""What the xenctrl backend reads from libxenctrl besides the batched scan (which is in C,
`mux._fast.Xenctrl`): the running Xen's version and, where the library has it, the exact
one-domain query. Both through ctypes, on a handle of their own, since neither is on the
hot path of a full scan.

- `xc_version(xch, XENVER_version | XENVER_extraversion, ...)`: the hypervisor's version
  (`4.21` and `.0`, `.0-rc1` or `-unstable`), from which the backend learns which ABI of
  libxenmanage the host has (mux/hypervisor/xenmanage.py, docs/xen-versions.md).
- `xc_domain_getinfo_single(xch, domid, &info)` (Xen 4.18+): `XEN_DOMCTL_getdomaininfo`,
  which since 4.18 answers only for that exact domid (a hashed lookup), where
  `xc_domain_getinfolist(domid, 1)` walks the hypervisor's domain list under a global lock
  and may hand back the next domid. Found by its symbol: it exists only where the domctl
  has the exact semantics.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from mux.records import RECORD_SIZE

XENVER_VERSION = 0
XENVER_EXTRAVERSION = 1
EXTRAVERSION_LEN = 16  # xen_extraversion_t


@dataclass(frozen=True)
class XenVersion:
    major: int
    minor: int
    extra: str  # ".0", ".2", ".0-rc1", "-unstable" (XEN_EXTRAVERSION)

    @property
    def development(self) -> bool:
        """A build from between two releases' branch points (xen.git's master)."""
        return "-unstable" in self.extra

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}{self.extra}"


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def loaded_path(function: ctypes._CFuncPtr) -> str | None:  # type: ignore[name-defined]
    """The file a loaded library's function comes from (dladdr), or None."""
    libc = ctypes.CDLL(None)
    info = _DlInfo()
    addr = ctypes.cast(function, ctypes.c_void_p)
    if not libc.dladdr(addr, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(os.fsdecode(info.dli_fname))


class LibxcExtras:
    """A second libxenctrl handle for the version and the one-domain query."""

    def __init__(self, library: str) -> None:
        self._lib = ctypes.CDLL(library, use_errno=True)
        self.path = loaded_path(self._lib.xc_interface_open) or library
        self._lib.xc_interface_open.restype = ctypes.c_void_p
        self._lib.xc_interface_open.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
        self._lib.xc_interface_close.argtypes = [ctypes.c_void_p]
        self._xch = self._lib.xc_interface_open(None, None, 0)
        if not self._xch:
            code = ctypes.get_errno() or errno.EIO
            raise OSError(code, f"{library}: xc_interface_open failed ({os.strerror(code)})")
        self._single = getattr(self._lib, "xc_domain_getinfo_single", None)
        if self._single is not None:
            self._single.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p]
            self._single.restype = ctypes.c_int

    @property
    def has_getinfo_single(self) -> bool:
        return self._single is not None

    def version(self) -> XenVersion | None:
        """The hypervisor's version, or None when the library cannot say."""
        fn = getattr(self._lib, "xc_version", None)
        if fn is None:
            return None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        fn.restype = ctypes.c_int
        raw = fn(self._xch, XENVER_VERSION, None)
        extra = ctypes.create_string_buffer(EXTRAVERSION_LEN)
        if raw < 0 or fn(self._xch, XENVER_EXTRAVERSION, extra) < 0:
            return None
        return XenVersion(raw >> 16, raw & 0xFFFF, extra.value.decode("ascii", "replace"))

    def getinfo_single(self, domid: int, out: bytearray) -> int:
        """1 and the record of exactly `domid` in `out`, or 0 when there is no such domain
        (ESRCH); another failure raises OSError with its errno."""
        assert self._single is not None and len(out) >= RECORD_SIZE
        buf = (ctypes.c_char * len(out)).from_buffer(out)
        if self._single(self._xch, domid, buf) == 0:
            return 1
        code = ctypes.get_errno() or errno.EIO
        if code == errno.ESRCH:
            return 0
        raise OSError(code, f"xc_domain_getinfo_single({domid}): {os.strerror(code)}")

    def close(self) -> None:
        if self._xch:
            self._lib.xc_interface_close(self._xch)
            self._xch = None
