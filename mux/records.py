"""The hypervisor's domain record, as `xc_domain_getinfolist` fills it.

`xc_domaininfo_t` is `struct xen_domctl_getdomaininfo` (xen/domctl.h); its x86-64 layout is
the same from Xen 4.17 to 4.22. Only the fields the monitor reads are named here; the test
`tests/unit/test_records_abi.py` compiles against Debian's `xenctrl.h` and checks every number.
"""

from __future__ import annotations

import struct
import uuid as _uuid
from dataclasses import dataclass

RECORD_SIZE = 112  # sizeof(xc_domaininfo_t)

# Field offsets inside one record.
OFF_DOMAIN = 0  # domid_t (u16)
OFF_FLAGS = 4  # u32 XEN_DOMINF_*
OFF_TOT_PAGES = 8  # u64
OFF_MAX_PAGES = 16  # u64
OFF_SHR_PAGES = 32  # u64
OFF_CPU_TIME = 56  # u64 nanoseconds
OFF_NR_ONLINE_VCPUS = 64  # u32
OFF_HANDLE = 76  # u8[16], the domain's UUID
OFF_CPUPOOL = 92  # u32
HANDLE_SIZE = 16

# XEN_DOMINF_* flag bits.
DOMINF_DYING = 1 << 0
DOMINF_HVM_GUEST = 1 << 1
DOMINF_SHUTDOWN = 1 << 2
DOMINF_PAUSED = 1 << 3
DOMINF_BLOCKED = 1 << 4
DOMINF_RUNNING = 1 << 5
DOMINF_DEBUGGED = 1 << 6
DOMINF_XS_DOMAIN = 1 << 7
DOMINF_HAP = 1 << 8
DOMINF_SHUTDOWNSHIFT = 16
DOMINF_SHUTDOWNMASK = 0xFF

# SHUTDOWN_* reasons (xen/sched.h); 255 means "never shut down".
SHUTDOWN_POWEROFF = 0
SHUTDOWN_REBOOT = 1
SHUTDOWN_SUSPEND = 2
SHUTDOWN_CRASH = 3
SHUTDOWN_WATCHDOG = 4
SHUTDOWN_SOFT_RESET = 5
SHUTDOWN_NONE = 0xFF

REASON_NAMES: dict[int, str] = {
    SHUTDOWN_POWEROFF: "poweroff",
    SHUTDOWN_REBOOT: "reboot",
    SHUTDOWN_SUSPEND: "suspend",
    SHUTDOWN_CRASH: "crash",
    SHUTDOWN_WATCHDOG: "watchdog",
    SHUTDOWN_SOFT_RESET: "soft_reset",
}
REASON_CODES: dict[str, int] = {name: code for code, name in REASON_NAMES.items()}

DOMID_FIRST_RESERVED = 0x7FF0  # domids at or above this are not ordinary domains

# libxl asks for domains in batches of this many.
GETINFOLIST_BATCH = 1024

# Only the named fields are packed; the rest of the record stays zero, as padding would.
_FIELDS = struct.Struct("<H2xI QQ8xQ16xQ I8x16sI16x")
assert _FIELDS.size == RECORD_SIZE


def reason_name(code: int) -> str | None:
    """The name of a shutdown reason code, or None for 255 ("not shut down") and unknowns."""
    return REASON_NAMES.get(code)


def parse_reason(text: str | int) -> int:
    """A shutdown reason given by name or number, as `sim-ctl shutdown --reason` takes it."""
    if isinstance(text, int) or str(text).isdigit():
        code = int(text)
        if code in REASON_NAMES:
            return code
    elif text in REASON_CODES:
        return REASON_CODES[text]
    raise ValueError(
        f"unknown shutdown reason {text!r}: use one of "
        + ", ".join(f"{n} ({c})" for c, n in REASON_NAMES.items())
    )


def uuid_str(handle: bytes) -> str:
    """The canonical text form of a 16-byte domain handle."""
    return str(_uuid.UUID(bytes=bytes(handle)))


@dataclass(frozen=True, slots=True)
class DomainRecord:
    """One decoded `xc_domaininfo_t`: what tests and tools read; the scanner never builds these."""

    domid: int
    flags: int
    handle: bytes = bytes(HANDLE_SIZE)
    cpu_time: int = 0
    tot_pages: int = 0
    max_pages: int = 0
    shr_pages: int = 0
    nr_online_vcpus: int = 1
    cpupool: int = 0

    @property
    def dying(self) -> bool:
        return bool(self.flags & DOMINF_DYING)

    @property
    def shutdown(self) -> bool:
        return bool(self.flags & DOMINF_SHUTDOWN)

    @property
    def reason(self) -> int:
        return (self.flags >> DOMINF_SHUTDOWNSHIFT) & DOMINF_SHUTDOWNMASK

    @property
    def uuid(self) -> str:
        return uuid_str(self.handle)

    def pack(self) -> bytes:
        return _FIELDS.pack(
            self.domid,
            self.flags,
            self.tot_pages,
            self.max_pages,
            self.shr_pages,
            self.cpu_time,
            self.nr_online_vcpus,
            self.handle,
            self.cpupool,
        )

    def pack_into(self, buf, offset: int) -> None:
        _FIELDS.pack_into(
            buf,
            offset,
            self.domid,
            self.flags,
            self.tot_pages,
            self.max_pages,
            self.shr_pages,
            self.cpu_time,
            self.nr_online_vcpus,
            self.handle,
            self.cpupool,
        )

    @classmethod
    def unpack_from(cls, buf, offset: int = 0) -> DomainRecord:
        (domid, flags, tot, maxp, shr, cpu, vcpus, handle, pool) = _FIELDS.unpack_from(buf, offset)
        return cls(domid, flags, handle, cpu, tot, maxp, shr, vcpus, pool)


def make_flags(
    *, shutdown_reason: int | None = None, dying: bool = False, base: int = DOMINF_BLOCKED
) -> int:
    """Flags as Xen reports them: reason 255 until the first shutdown."""
    flags = base
    if shutdown_reason is None:
        flags |= SHUTDOWN_NONE << DOMINF_SHUTDOWNSHIFT
    else:
        flags |= DOMINF_SHUTDOWN | (shutdown_reason << DOMINF_SHUTDOWNSHIFT)
    if dying:
        flags |= DOMINF_DYING
    return flags


def unpack_all(buf, count: int) -> list[DomainRecord]:
    return [DomainRecord.unpack_from(buf, i * RECORD_SIZE) for i in range(count)]


def pack_all(records) -> bytes:
    return b"".join(r.pack() for r in records)
