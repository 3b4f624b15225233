# Cython declarations of fastcore/xm_record.h and fastcore/xm_helpers.h (the headers are
# the truth; these only name what Cython calls). Included by mux/_fast.pxd and by the
# support extensions built on the same records (mux/sim/_simfast.pyx, mux/bench/_floor.pyx).

from libc.stdint cimport uint16_t, uint32_t, uint64_t


cdef extern from "fastcore/xm_helpers.h":
    enum:
        XM_RECORD_SIZE
        XM_OFF_DOMAIN
        XM_OFF_FLAGS
        XM_OFF_CPU_TIME
        XM_OFF_HANDLE
        XM_HANDLE_SIZE
        XM_DOMINF_DYING
        XM_DOMINF_SHUTDOWN
        XM_DOMINF_PAUSED
        XM_DOMINF_SHUTDOWNSHIFT
        XM_DOMINF_SHUTDOWNMASK
        XM_SHUTDOWN_SUSPEND
        XM_SHUTDOWN_SOFT_RESET
        XM_SHUTDOWN_NONE
        XM_DOMID_FIRST_RESERVED
        XM_EVENT_FLAGS_MASK

    ctypedef struct xm_constant:
        const char *name
        long value
    const xm_constant *xm_record_layout(size_t *count) noexcept nogil

    uint16_t xm_ld16(const unsigned char *p) noexcept nogil
    uint32_t xm_ld32(const unsigned char *p) noexcept nogil
    uint64_t xm_ld64(const unsigned char *p) noexcept nogil
    uint16_t xm_domid(const unsigned char *rec) noexcept nogil
    void xm_uuid_format(const unsigned char *h, char *out) noexcept nogil
    int xm_cmp_u64(const void *a, const void *b) noexcept nogil
    char *xm_put(char *p, const char *s, size_t n) noexcept nogil
    char *xm_put_u64(char *p, uint64_t v) noexcept nogil
    char *xm_put_fixed6(char *p, double x) noexcept nogil
    long xm_check_batch(const unsigned char *p, long n, uint32_t first) noexcept nogil
    void xm_clear_errno() noexcept nogil
    int xm_errno() noexcept nogil
