# The record layout seen from Cython: the import guard that holds fastcore/xm_record.h to
# mux/records.py, and the bound check of a batch. Included by every extension that reads
# records (after fastcore/xm_helpers.pxi).

from mux import records as _records


def _record_layout():
    """{name: value} of every number xm_record.h declares, names as in mux/records.py."""
    cdef size_t n = 0
    cdef const xm_constant *table = xm_record_layout(&n)
    return {table[i].name.decode("ascii"): table[i].value for i in range(n)}


def _check_record_layout(records):
    """ImportError naming the first number this extension was built with that `records`
    (mux.records) does not share."""
    for name, ours in _record_layout().items():
        theirs = getattr(records, name, None)
        if theirs != ours:
            raise ImportError(
                f"{__name__} was built with {name}={ours}, mux/records.py says "
                f"{theirs if theirs is not None else 'nothing'}: rebuild the extension"
            )


_check_record_layout(_records)


cdef inline int _check_count(Py_ssize_t size, Py_ssize_t count) except -1:
    if count < 0:
        raise ValueError(f"corrupt batch: negative record count {count}")
    if count > size // XM_RECORD_SIZE:
        raise ValueError(
            f"corrupt batch: count {count} needs {count * XM_RECORD_SIZE} bytes "
            f"but the buffer holds {size} ({size // XM_RECORD_SIZE} records)"
        )
    return 0
