"""What every source of domain records offers the scanner."""

from __future__ import annotations

from typing import Protocol

from mux.records import DOMID_FIRST_RESERVED, GETINFOLIST_BATCH, RECORD_SIZE


class HypervisorError(OSError):
    """The domain-info call failed; `retryable` says whether trying again can help."""

    def __init__(self, errno: int, message: str, *, retryable: bool = False) -> None:
        super().__init__(errno, message)
        self.retryable = retryable


class Backend(Protocol):
    name: str

    def getinfolist(self, first: int, max_domains: int, out: bytearray, offset: int = 0) -> int:
        """Copy at most `max_domains` records with domid >= `first`, in domid order, into
        `out` at byte `offset`; return how many. Raises HypervisorError."""
        ...

    def domain_count_hint(self) -> int:
        """How many domains exist now, roughly; sizes the scan buffer."""
        ...

    def close(self) -> None: ...


class ScanBuffer:
    """One reusable buffer of 112-byte records for full and targeted scans.

    A full scan pages through the domains in batches, as libxl does, into a buffer sized to
    the live count plus slack; it grows (never per scan) when the host grows.
    """

    SLACK = 256

    def __init__(self, backend: Backend, batch: int = GETINFOLIST_BATCH) -> None:
        self.backend = backend
        self.batch = batch
        self.buf = bytearray((backend.domain_count_hint() + self.SLACK) * RECORD_SIZE)
        self.one = bytearray(RECORD_SIZE)
        self.view = memoryview(self.buf)

    def _ensure(self, records: int) -> None:
        """Room for `records`, keeping what is already there (a scan may be half done)."""
        need = (records + self.SLACK) * RECORD_SIZE
        if records * RECORD_SIZE > len(self.buf):
            self.view.release()
            self.buf.extend(bytes(need - len(self.buf)))
            self.view = memoryview(self.buf)

    def scan_all(self) -> tuple[memoryview | bytearray, int]:
        """Every domain: (buffer, count). A backend that pages in C (xenctrl) does it all
        in one call; otherwise the batches are asked for from here."""
        in_c = getattr(self.backend, "scan_all", None)
        if in_c is not None:
            return in_c()
        count = 0
        first = 0
        while True:
            self._ensure(count + self.batch)
            got = self.backend.getinfolist(first, self.batch, self.buf, count * RECORD_SIZE)
            count += got
            if got < self.batch:
                break
            at = (count - 1) * RECORD_SIZE
            last = int.from_bytes(self.view[at : at + 2], "little")
            first = last + 1
            if first >= DOMID_FIRST_RESERVED:
                break
        return self.view, count

    def scan_one(self, domid: int) -> tuple[bytearray, int]:
        """The record of one domid, if any: the hypercall returns the next domid >= it, so
        the caller (DomainTable.diff_one) checks the domid it got back."""
        got = self.backend.getinfolist(domid, 1, self.one, 0)
        return self.one, got
