# The real hypercall: libxenctrl loaded with dlopen (so building _fast needs no Xen header),
# `xc_domain_getinfolist` called with the GIL released straight into the caller's buffer,
# and `Xenctrl.scan_all` paging through every domain in one C loop. Part of mux/_fast.pyx.

GETINFOLIST_BATCH = _records.GETINFOLIST_BATCH  # domains per call, as libxl asks for them
SCAN_SLACK = 256  # records of room a growing scan buffer gets beyond what it needs

cdef unsigned int _BATCH = _records.GETINFOLIST_BATCH
cdef Py_ssize_t _SLACK = SCAN_SLACK


class XenctrlError(OSError):
    """A libxenctrl step failed. `errno` as the library left it; `call` is the step
    (dlopen, dlsym, xc_interface_open, xc_domain_getinfolist, check) and `library` the
    path or soname that was loaded."""

    call = None
    library = None


cdef object _xc_error(int err, str message, str call, str library):
    exc = XenctrlError(err, message)
    exc.call = call
    exc.library = library
    return exc


cdef class Xenctrl:
    """libxenctrl, loaded with dlopen, and one `xc_interface_open(NULL, NULL, 0)` handle.

    `Xenctrl(library)` takes a path or a soname (as dlopen does) and raises XenctrlError
    when the library cannot be loaded, lacks one of the three functions, or the handle
    cannot be opened (no /dev/xen/privcmd, no privilege). Calls run with the GIL released.
    """

    def __cinit__(self, library):
        cdef bytes name = _os.fsencode(library)
        cdef const char *err
        cdef void *sym
        cdef void *xch = NULL
        cdef xc_interface_open_fn open_fn
        cdef int saved = 0
        self.library = _os.fsdecode(name)
        dlerror()
        self._dl = dlopen(name, RTLD_NOW | RTLD_LOCAL)
        if self._dl is NULL:
            err = dlerror()
            raise _xc_error(ENOENT, (<bytes>err).decode("utf-8", "replace") if err is not NULL
                            else f"cannot load {self.library}", "dlopen", self.library)
        syms = {}
        for sym_name in (b"xc_interface_open", b"xc_interface_close", b"xc_domain_getinfolist"):
            dlerror()
            sym = dlsym(self._dl, sym_name)
            if sym is NULL:
                dlclose(self._dl)
                self._dl = NULL
                raise _xc_error(ENOSYS, f"{self.library} has no {sym_name.decode()}(): "
                                "it is not a libxenctrl", "dlsym", self.library)
            syms[sym_name] = <size_t>sym
        open_fn = <xc_interface_open_fn><void *><size_t>syms[b"xc_interface_open"]
        self._close = <xc_interface_close_fn><void *><size_t>syms[b"xc_interface_close"]
        self._getinfolist = (
            <xc_domain_getinfolist_fn><void *><size_t>syms[b"xc_domain_getinfolist"])
        with nogil:
            xm_clear_errno()
            xch = open_fn(NULL, NULL, 0)
            saved = xm_errno()
        if xch is NULL:
            dlclose(self._dl)
            self._dl = NULL
            saved = saved or EIO
            raise _xc_error(saved, f"xc_interface_open(NULL, NULL, 0) failed: "
                            f"{_os.strerror(saved)}", "xc_interface_open", self.library)
        self._xch = xch

    def __dealloc__(self):
        if self._xch is not NULL:
            self._close(self._xch)
            self._xch = NULL
        if self._dl is not NULL:
            dlclose(self._dl)
            self._dl = NULL

    @property
    def closed(self):
        return self._xch is NULL

    def close(self):
        """xc_interface_close and dlclose; a second close does nothing."""
        if self._busy:
            raise RuntimeError("Xenctrl.close() while a call is running in another thread")
        if self._xch is not NULL:
            with nogil:
                self._close(self._xch)
            self._xch = NULL
        if self._dl is not NULL:
            dlclose(self._dl)
            self._dl = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<Xenctrl {self.library!r}{' closed' if self._xch is NULL else ''}>"

    cdef long _call(self, uint32_t first, unsigned int max_domains,
                    unsigned char *dst) except -1:
        """One xc_domain_getinfolist into `dst` (room for max_domains), checked."""
        cdef void *xch = self._xch
        cdef xc_domain_getinfolist_fn fn = self._getinfolist
        cdef int n = 0, saved = 0
        cdef long bad
        if xch is NULL:
            raise ValueError(f"{self.library}: the libxenctrl handle is closed")
        self._busy += 1
        with nogil:
            xm_clear_errno()
            n = fn(xch, first, max_domains, dst)
            saved = xm_errno()
        self._busy -= 1
        if n < 0:
            saved = saved or EIO
            raise _xc_error(
                saved,
                f"xc_domain_getinfolist(first={first}, max={max_domains}) failed: "
                f"{_os.strerror(saved)}",
                "xc_domain_getinfolist",
                self.library,
            )
        if <unsigned int>n > max_domains:
            raise _xc_error(EIO, f"xc_domain_getinfolist(first={first}, max={max_domains}) "
                            f"returned {n} records", "check", self.library)
        bad = xm_check_batch(dst, n, first)
        if bad >= 0:
            raise _xc_error(
                EIO,
                f"xc_domain_getinfolist(first={first}, max={max_domains}) returned domid "
                f"{xm_domid(dst + bad * XM_RECORD_SIZE)} at record {bad}: domids must rise "
                f"from {first} and stay below {XM_DOMID_FIRST_RESERVED:#x} (a libxenctrl of "
                "another Xen version?)",
                "check",
                self.library,
            )
        return n

    def getinfolist(self, first, max_domains, out, Py_ssize_t offset=0):
        """Copy at most `max_domains` records with domid >= `first`, in domid order, into the
        writable buffer `out` at byte `offset`; return how many. XenctrlError on failure."""
        cdef Py_buffer view
        cdef long n
        if first < 0 or max_domains < 0 or offset < 0:
            raise ValueError(f"first ({first}), max_domains ({max_domains}) and offset "
                             f"({offset}) must not be negative")
        PyObject_GetBuffer(out, &view, PyBUF_WRITABLE)
        try:
            if offset + max_domains * XM_RECORD_SIZE > view.len:
                raise ValueError(
                    f"out holds {view.len} bytes: {max_domains} records at offset {offset} "
                    f"need {offset + max_domains * XM_RECORD_SIZE}"
                )
            if max_domains == 0 or first >= XM_DOMID_FIRST_RESERVED:
                return 0
            n = self._call(first, max_domains, <unsigned char *>view.buf + offset)
        finally:
            PyBuffer_Release(&view)
        return n

    def scan_all(self, bytearray buf):
        """Every domain into `buf` from its start: batches of GETINFOLIST_BATCH (libxl's
        1024), each asked from the domid after the last one seen, until a batch comes back
        short. `buf` grows (by SCAN_SLACK records beyond the need) when a batch might not
        fit, so it must not be exported (no live memoryview) then. Returns the count."""
        cdef Py_buffer view
        cdef Py_ssize_t count = 0
        cdef uint32_t first = 0
        cdef long got
        cdef unsigned char *dst
        while True:
            if PyByteArray_GET_SIZE(buf) < (count + _BATCH) * XM_RECORD_SIZE:
                PyByteArray_Resize(buf, (count + _BATCH + _SLACK) * XM_RECORD_SIZE)
            # Exported for the call: no other thread can resize it under the hypercall.
            PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
            try:
                dst = <unsigned char *>view.buf + count * XM_RECORD_SIZE
                got = self._call(first, _BATCH, dst)
            finally:
                PyBuffer_Release(&view)
            count += got
            if got < _BATCH:
                return count
            first = xm_domid(<unsigned char *>PyByteArray_AS_STRING(buf)
                            + (count - 1) * XM_RECORD_SIZE) + 1
            if first >= XM_DOMID_FIRST_RESERVED:
                return count
