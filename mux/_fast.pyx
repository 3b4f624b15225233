# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The hot path of xen-watch-mux: the scanner's domain table and its diff, in C.

`DomainTable.diff` walks one batch of `xc_domaininfo_t` records once and returns the events
of the event model (docs/architecture.md); for an unchanged domain it touches only that
domain's slot of a C array indexed by domid and allocates nothing. `mux/reference.py` is the
pure-Python twin and the specification: same API, same events, same frame bytes.

And the real hypercall: `Xenctrl` loads libxenctrl with dlopen (so building _fast needs no
Xen header) and calls `xc_domain_getinfolist` with the GIL released, straight into the
caller's buffer; `Xenctrl.scan_all` pages through every domain in one C loop.

One extension built from its concerns (mux/fastcore/): the record layout and its import
guard, the events and their frames, the table and its diff, the libxenctrl binding, and the
daemon's path per firing: the xenstore client's frame reader (xswire.pxi) and the fan-out's
inner loop (fanout.pxi). The C helpers and the layout's numbers are
in fastcore/xm_helpers.h and fastcore/xm_record.h.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EIO, ENOENT, ENOSYS
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort
from libc.string cimport memcpy, memset, strlen
from posix.dlfcn cimport RTLD_LOCAL, RTLD_NOW, dlclose, dlerror, dlopen, dlsym

import os as _os
import time as _time
from json.encoder import encode_basestring_ascii as _json_string

include "fastcore/records.pxi"
include "fastcore/events.pxi"
include "fastcore/table.pxi"
include "fastcore/xenctrl.pxi"
include "fastcore/xswire.pxi"
include "fastcore/fanout.pxi"
