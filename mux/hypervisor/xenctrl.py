"""The `xenctrl` backend: Xen's own libxenctrl, loaded at run time, called from the Cython core.

`xc_interface_open(NULL, NULL, 0)`, `xc_domain_getinfolist` and `xc_interface_close` come from
`libxenctrl.so.4.*` through dlopen/dlsym inside `mux._fast.Xenctrl`, so the package builds
without Xen's headers and one build runs on every Xen version whose `xc_domaininfo_t` keeps
the 112-byte layout (4.17 to 4.22). The hypercall writes straight into the scanner's buffer
with the GIL released; no Python object is made per domain.

Which library: `--xenctrl-lib PATH` if given; otherwise the one the system would link,
tried in order: `libxenctrl.so` (the development link), the soname that ldconfig lists
(`ctypes.util.find_library`), then every `libxenctrl.so.4.*` in the usual library
directories, newest first. libxenctrl only works against the hypervisor version it was built
for (the sysctl interface version), so the system's own copy comes first.

What else the host offers is found when the backend opens (mux/hypervisor/libxc.py,
xenmanage.py; docs/xen-versions.md): `xc_domain_getinfo_single` (4.18+) makes `query_one`
the exact one-domain lookup (`one_domain`), and libxenmanage beside libxenctrl (4.21+, when
its arity is certain) gives each incarnation's unique id (`unique_ids`).

Every failure becomes a `HypervisorError` naming the library and what to do about it;
EAGAIN, EINTR and EBUSY are `retryable` (the daemon retries every error with backoff and
counts it in `hypercall_errors`).
"""

from __future__ import annotations

import ctypes.util
import errno
import glob
import logging
import os
import re
import time

from mux import _fast
from mux.hypervisor import xenmanage
from mux.hypervisor.base import Capabilities, ChangedCallback, HypervisorError
from mux.hypervisor.libxc import LibxcExtras, XenVersion
from mux.records import RECORD_SIZE

log = logging.getLogger("xenmux.xenctrl")

PRIVCMD = "/dev/xen/privcmd"
LIBRARY_DIRS = (
    "/usr/lib/*-linux-gnu",
    "/lib/*-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
)
RETRYABLE = frozenset({errno.EAGAIN, errno.EINTR, errno.EBUSY})
# Transient failures of the first scan are retried this long before `serve` gives up.
OPEN_RETRY_SECONDS = 5.0


class LibxenctrlError(HypervisorError):
    """A HypervisorError of this backend; its text is the message alone (no "[Errno N]"),
    since `xenmux serve` prints it as the one line an operator reads."""

    def __str__(self) -> str:
        return str(self.strerror)


def _version_key(path: str) -> tuple[int, ...]:
    tail = os.path.basename(path).partition(".so.")[2]
    return tuple(int(x) for x in re.findall(r"\d+", tail))


def candidate_libraries() -> list[str]:
    """The names to dlopen, in the order the system would resolve libxenctrl."""
    names = ["libxenctrl.so"]
    found = ctypes.util.find_library("xenctrl")
    if found:
        names.append(found)
    versioned: set[str] = set()
    for d in LIBRARY_DIRS:
        versioned.update(glob.glob(os.path.join(d, "libxenctrl.so.4.*")))
    # One file per version: libxenctrl.so.4.17 and .so.4.17.0 are the same library.
    by_version: dict[tuple[int, ...], str] = {}
    for path in sorted(versioned, key=len):
        by_version.setdefault(_version_key(path)[:2], path)
    names.extend(by_version[v] for v in sorted(by_version, reverse=True))
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def _load(library: str | None) -> _fast.Xenctrl:
    if library:
        try:
            return _fast.Xenctrl(library)
        except _fast.XenctrlError as exc:
            raise _open_error(exc) from None
    tried: list[str] = []
    for name in candidate_libraries():
        try:
            return _fast.Xenctrl(name)
        except _fast.XenctrlError as exc:
            if exc.call in ("dlopen", "dlsym"):
                tried.append(f"{name} ({exc.strerror})")
                continue
            raise _open_error(exc) from None  # found it, but the hypervisor said no
    raise LibxenctrlError(
        errno.ENOENT,
        "cannot load libxenctrl: tried "
        + "; ".join(tried)
        + ". Install Xen's tools (Debian: xen-utils-4.x, whose libxenmisc4.x holds "
        "libxenctrl.so.4.x) or name the library with --xenctrl-lib PATH",
    )


def _open_error(exc: _fast.XenctrlError) -> HypervisorError:
    lib = exc.library
    code = exc.errno or errno.EIO
    if exc.call == "dlopen":
        hint = "check the path, or leave --xenctrl-lib out to use the system's libxenctrl"
        return LibxenctrlError(code, f"cannot load libxenctrl from {lib}: {exc.strerror}; {hint}")
    if exc.call == "dlsym":
        return LibxenctrlError(code, f"{exc.strerror}; pass the path of libxenctrl.so.4.*")
    # xc_interface_open failed: it opens /dev/xen/privcmd (and the other Xen devices).
    if code == errno.ENOENT:
        what = (
            f"{PRIVCMD} is missing: this is not a Xen dom0, or the privcmd driver is not "
            "loaded (modprobe xen-privcmd; mount -t xenfs xenfs /proc/xen). Without Xen, use "
            "`xenmux serve --backend sim`"
        )
    elif code in (errno.EACCES, errno.EPERM):
        what = (
            f"no permission to open {PRIVCMD}: run `xenmux serve` as root in dom0 (the "
            "systemd unit packaging/xenmux.service does)"
        )
    else:
        what = "is the Xen toolstack installed and this a dom0?"
    return LibxenctrlError(
        code, f"{lib}: xc_interface_open failed ({os.strerror(code)}): {what}", retryable=False
    )


def _call_error(exc: _fast.XenctrlError) -> HypervisorError:
    lib = exc.library
    code = exc.errno or errno.EIO
    name = errno.errorcode.get(code, str(code))
    if exc.call == "check":
        return LibxenctrlError(
            code, f"{lib}: {exc.strerror}; pass the libxenctrl of the running Xen (--xenctrl-lib)"
        )
    if code in RETRYABLE:
        return LibxenctrlError(
            code, f"{lib}: {exc.strerror} ({name}: transient, retrying)", retryable=True
        )
    if code in (errno.EACCES, errno.EPERM):
        hint = (
            "the hypervisor refused XEN_SYSCTL_getdomaininfolist: run as root in dom0 (or "
            "allow it in the XSM/FLASK policy), and use the libxenctrl of the running Xen "
            "version (a mismatched sysctl interface version is refused too; --xenctrl-lib)"
        )
    else:
        hint = "see the hypervisor's log (xl dmesg)"
    return LibxenctrlError(code, f"{lib}: {exc.strerror} ({name}); {hint}")


def _single_error(library: str, exc: OSError) -> HypervisorError:
    code = exc.errno or errno.EIO
    name = errno.errorcode.get(code, str(code))
    retry = code in RETRYABLE
    return LibxenctrlError(
        code,
        f"{library}: {exc.strerror} ({name}{': transient, retrying' if retry else ''})",
        retryable=retry,
    )


class XenctrlBackend:
    """Domain records from the real hypervisor, through libxenctrl (Backend protocol)."""

    name = "xenctrl"
    # Without xc_domain_getinfo_single, getinfolist(domid, 1) walks the hypervisor's list
    # from `domid` under its lock (XEN_SYSCTL_getdomaininfolist): not the cheap exact lookup
    # of `one_domain`. The instance's own capabilities say what this host has.
    capabilities = Capabilities(full_scan=True, one_domain=False, changed_feed=False)
    xen_version: XenVersion | None = None
    xenstore_path: str | None = None  # the host's own xenstored
    state_dir: str | None = None  # the default, /var/lib/xenmux

    def __init__(
        self,
        library: str | None = None,
        *,
        open_retry: float = OPEN_RETRY_SECONDS,
        xenctrl_lib: str | None = None,
        **_options: object,
    ):
        self._xc = _load(library or xenctrl_lib)
        self.library = self._xc.library
        self._buf = bytearray((_fast.GETINFOLIST_BATCH + _fast.SCAN_SLACK) * RECORD_SIZE)
        self._one = bytearray(RECORD_SIZE)
        self._count = 0
        self._extras: LibxcExtras | None = None
        self._manage: xenmanage.XenManage | None = None
        try:
            self._first_scan(open_retry)
            self._open_extras()
        except BaseException:
            self.close()
            raise
        log.info(
            "libxenctrl: %s (%d domains; Xen %s; one-domain query %s; unique ids %s)",
            self.library,
            self._count,
            self.xen_version or "of unknown version",
            "yes" if self.capabilities.one_domain else "no",
            "yes" if self.capabilities.unique_ids else "no",
        )

    def _open_extras(self) -> None:
        try:
            self._extras = LibxcExtras(self.library)
        except OSError as exc:
            log.warning("cannot open a second libxenctrl handle (%s): batched queries only", exc)
            return
        self.xen_version = self._extras.version()
        self._manage = xenmanage.open_beside(self._extras.path, self.xen_version)
        self.capabilities = Capabilities(
            full_scan=True,
            one_domain=self._extras.has_getinfo_single,
            changed_feed=False,
            unique_ids=self._manage is not None,
        )

    def _first_scan(self, retry_for: float) -> None:
        """Count the domains; transient errors are retried for `retry_for` seconds, anything
        else (no privilege) stops `serve` at once with the message."""
        deadline = time.monotonic() + retry_for
        delay = 0.05
        while True:
            try:
                self.scan_all()
                return
            except HypervisorError as exc:
                if not exc.retryable or time.monotonic() + delay > deadline:
                    raise
                log.warning("first domain scan failed (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    # Backend protocol ----------------------------------------------------------------------

    def getinfolist(self, first: int, max_domains: int, out: bytearray, offset: int = 0) -> int:
        try:
            return self._xc.getinfolist(first, max_domains, out, offset)
        except _fast.XenctrlError as exc:
            raise _call_error(exc) from None

    def query_one(self, domid: int) -> tuple[bytearray, int]:
        """xc_domain_getinfo_single where libxenctrl has it (exactly `domid`); else
        getinfolist(domid, 1), whose record may be the next domid's (diff_one checks)."""
        if self._extras is not None and self._extras.has_getinfo_single:
            try:
                return self._one, self._extras.getinfo_single(domid, self._one)
            except OSError as exc:
                raise _single_error(self.library, exc) from None
        return self._one, self.getinfolist(domid, 1, self._one)

    def unique_id(self, domid: int) -> int | None:
        """The unique id of `domid`'s incarnation (libxenmanage), None when it does not
        exist. Only with `unique_ids`."""
        if self._manage is None:
            raise NotImplementedError("no libxenmanage whose arity is known on this host")
        try:
            info = self._manage.domain_info(domid)
        except OSError as exc:
            raise _single_error(self._manage.library, exc) from None
        return None if info is None else info[1]

    def watch_changed(self, callback: ChangedCallback) -> None:
        raise NotImplementedError("libxenctrl has no changed-domain feed that xenmux may use")

    def domain_count_hint(self) -> int:
        """The count of the latest scan_all (the one at start-up, at least)."""
        return self._count

    def close(self) -> None:
        if self._manage is not None:
            self._manage.close()
        if self._extras is not None:
            self._extras.close()
        self._xc.close()

    def scan_all(self) -> tuple[bytearray, int]:
        """Every domain in one C loop (batches of 1024) into the backend's own buffer, which
        is sized to the live count plus slack and grows when a batch might not fit. The
        buffer is reused by the next call: diff it before scanning again."""
        try:
            n = self._xc.scan_all(self._buf)
        except _fast.XenctrlError as exc:
            raise _call_error(exc) from None
        self._count = n
        return self._buf, n

    @property
    def closed(self) -> bool:
        return self._xc.closed
