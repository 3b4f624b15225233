# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The benchmark's floor: the cheapest C loop that reads what the scanner's diff reads.

bench/bench_scan.py sets mux._fast's unchanged scan against it. Bench code, not product.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint64_t

include "fastcore/xm_helpers.pxi"
include "fastcore/records.pxi"


cdef extern from "bench/floor.h":
    uint64_t xm_floor_scan(const unsigned char *p, size_t count) noexcept nogil


def floor_scan(buffer, Py_ssize_t count):
    """A plain C loop reading domid, flags, cpu_time and handle of `count` records (what
    the diff reads), returning a checksum. Takes its buffer the way diff does, so that the
    two differ only in the loop."""
    cdef Py_buffer view
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    try:
        _check_count(view.len, count)
        return xm_floor_scan(<const unsigned char *>view.buf, count)
    finally:
        PyBuffer_Release(&view)
