"""Types of the simulated host's C hot path (mux/sim/_simfast.pyx)."""

from _typeshed import ReadableBuffer, WriteableBuffer

# mux/sim/shm_layout.h
SHM_MAGIC: bytes
SHM_VERSION: int
SHM_HEADER_SIZE: int
SHM_OFF_MAGIC: int
SHM_OFF_VERSION: int
SHM_OFF_RECORD_SIZE: int
SHM_OFF_CAPACITY: int
SHM_OFF_COUNT: int
SHM_OFF_SEQLOCK: int
SHM_OFF_CHANGE_STAMP: int
SHM_OFF_CHANGES: int
SHM_OFF_VIRQS: int
SHM_OFF_XEN_VERSION: int
SHM_OFF_UNIQUE_IDS: int
SHM_OFF_RECORDS: int
SHM_LOCK_TIMEOUT: float

def shm_getinfolist(shm: ReadableBuffer, first: int, max: int, out: WriteableBuffer) -> int: ...
def shm_change_stamp(shm: ReadableBuffer) -> int: ...
def shm_write_states(
    shm: WriteableBuffer, seq: int, count: int, changes: int, states: list[tuple[int, int, int]]
) -> int: ...
def _record_layout() -> dict[str, int]: ...
def _check_record_layout(records: object) -> None: ...

DOMID_SLOTS: int

class DomainPass:
    def __len__(self) -> int: ...
    def __contains__(self, domid: object) -> bool: ...
    def add(self, domid: int) -> bool: ...
    def remove(self, domid: int) -> bool: ...
    def latched(self, domid: int) -> bool: ...
    def set_latched(self, domid: int, value: bool) -> None: ...
    def run(self, flags: ReadableBuffer) -> tuple[list[tuple[int, bool]], bool]: ...
