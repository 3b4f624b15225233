"""Types of the Cython scanner core (mux/_fast.pyx); mux/reference.py is its twin."""

import os
from collections.abc import Callable, Iterable
from typing import Literal

from _typeshed import ReadableBuffer, WriteableBuffer

from mux.reference import DumpBatches

# mux.protocol.EVENT_KINDS
Kind = Literal["new", "shutdown", "resumed", "death", "released", "paused", "unpaused"]
State = Literal["running", "shutdown", "dead"]  # mux.protocol.DOMAIN_STATES
# The backend's unique_id(domid): the id of the incarnation the domid holds, None for none.
UniqueIdReader = Callable[[int], int | None]

# The import guard (mux/fastcore/records.pxi, mux/fastcore/events.pxi): ImportError on a
# mismatch of the C side with mux.records or mux.protocol.EVENT_KINDS.
def _record_layout() -> dict[str, int]: ...
def _check_record_layout(records: object) -> None: ...
def _check_event_kinds(kinds: Iterable[str]) -> None: ...

class Event:
    """One change of one domain incarnation; `frame()` is encoded once and cached."""

    @property
    def seq(self) -> int: ...
    @property
    def kind(self) -> Kind: ...
    @property
    def domid(self) -> int: ...
    @property
    def uuid(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def time(self) -> float: ...
    @property
    def paused(self) -> bool:
        """Only on `new`: the domain was paused when first seen."""
    @property
    def incarnation(self) -> str | None:
        """The hypervisor's unique id of the incarnation, 16 hex digits, where known."""
    # Settable until frame() is first taken; AttributeError after (TypeError for a wrong type).
    name: str | None
    late: bool
    transient: bool
    def __init__(
        self,
        seq: int,
        kind: Kind,
        domid: int,
        uuid: str,
        reason: str | None,
        time: float,
        name: str | None = None,
        *,
        paused: bool = False,
        late: bool = False,
        transient: bool = False,
        incarnation: str | None = None,
    ) -> None: ...
    def frame(self) -> bytes: ...
    def to_dict(self) -> dict[str, object]: ...

class DomainTable:
    """The scanner's table of domains keyed by domid (domids below 0x7FF0)."""

    def __init__(self, seq: int = 0, *, suspend_window: float = 0.25) -> None: ...
    @classmethod
    def load(cls, dump: object, *, suspend_window: float = 0.25) -> DomainTable:
        """The table of a `dump()`; ValueError "bad table dump: ..." for a bad one."""
    def dump(self) -> dict[str, object]: ...
    def dump_batches(self, batch: int = 512) -> DumpBatches:
        """`dump()` as it is now, `batch` rows at a time, from a copy of the table."""
    @property
    def seq(self) -> int: ...
    @property
    def suspend_window(self) -> float: ...
    @property
    def n_shutdown(self) -> int: ...
    @property
    def n_paused(self) -> int: ...
    def prime(
        self,
        buffer: ReadableBuffer,
        count: int,
        now: float | None = None,
        *,
        unique_id: UniqueIdReader | None = None,
    ) -> None: ...
    def diff(
        self,
        buffer: ReadableBuffer,
        count: int,
        now: float | None = None,
        *,
        unique_id: UniqueIdReader | None = None,
        check_ids: bool = False,
    ) -> list[Event]: ...
    def diff_one(
        self,
        domid: int,
        buffer: ReadableBuffer,
        count: int,
        now: float | None = None,
        *,
        unique_id: UniqueIdReader | None = None,
        check_ids: bool = False,
    ) -> list[Event]: ...
    def transient(
        self, domid: int, uuid: str, name: str | None, now: float | None = None
    ) -> list[Event]: ...
    def snapshot(self, domids: Iterable[int] | None = None) -> list[dict[str, object]]: ...
    def rows(self) -> list[dict[str, object]]: ...
    def set_name(self, domid: int, name: str | None) -> None: ...
    def get_name(self, domid: int) -> str | None: ...
    def counts(self) -> dict[State, int]: ...
    def __len__(self) -> int: ...
    def __contains__(self, domid: object) -> bool: ...

# libxenctrl, loaded at run time (dlopen/dlsym); calls run with the GIL released.
GETINFOLIST_BATCH: int  # 1024, libxl's batch
SCAN_SLACK: int  # records a growing scan buffer gets beyond its need

class XenctrlError(OSError):
    """`errno` as libxenctrl left it; `call` is the step that failed ("dlopen", "dlsym",
    "xc_interface_open", "xc_domain_getinfolist", or "check" for a batch that breaks the
    hypercall's contract); `library` the path or soname loaded."""

    call: str | None
    library: str | None

class Xenctrl:
    """libxenctrl and one `xc_interface_open(NULL, NULL, 0)` handle."""

    @property
    def library(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def __init__(self, library: str | bytes | os.PathLike[str]) -> None: ...
    def getinfolist(
        self, first: int, max_domains: int, out: WriteableBuffer, offset: int = 0
    ) -> int: ...
    def scan_all(self, buf: bytearray) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Xenctrl: ...
    def __exit__(self, *exc: object) -> None: ...

class XsReader:
    """mux.xenstore.wire.FrameReader in C (the client's reader of xenstore frames)."""

    on_watch: Callable[[str, str], object] | None
    dispatched: int
    def __init__(
        self,
        on_watch: Callable[[str, str], object] | None,
        on_reply: Callable[[int, int, bytes], object],
        on_watch_error: Callable[[str, str], object],
    ) -> None: ...
    @property
    def buffered(self) -> bytes: ...
    def stop(self) -> None: ...
    def feed(self, data: bytes) -> None: ...

def fan_out(
    events: Iterable[object],
    by_domid: dict[int, tuple[tuple[object, int], ...]],
    wild: set[object],
    subscriptions: dict[object, set[int]],
    kind_bits: dict[str, int],
) -> int: ...
