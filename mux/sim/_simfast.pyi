"""Types of the simulated host's C reader (mux/sim/_simfast.pyx)."""

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
SHM_OFF_RECORDS: int
SHM_LOCK_TIMEOUT: float

def shm_getinfolist(shm: ReadableBuffer, first: int, max: int, out: WriteableBuffer) -> int: ...
def shm_change_stamp(shm: ReadableBuffer) -> int: ...
def _record_layout() -> dict[str, int]: ...
def _check_record_layout(records: object) -> None: ...
