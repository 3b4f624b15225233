/*
 * The domain record's layout: the numbers of mux/records.py, for C.
 *
 * `xc_domaininfo_t` (struct xen_domctl_getdomaininfo) on x86-64, the same from Xen 4.17 to
 * 4.22: only the fields the monitor reads, and the flag bits and codes it decodes. Every
 * extension built on this header (mux._fast, mux.sim._simfast, mux.bench._floor) checks each
 * number against mux/records.py when it is imported (fastcore/records.pxi), so that one side
 * cannot change without the other; tests/unit/test_records_abi.py checks records.py against
 * Debian's real xenctrl.h, and the C stand-ins check this header against it at compile time.
 *
 * Names are those of mux/records.py with an XM_ prefix.
 */
#ifndef XM_RECORD_H
#define XM_RECORD_H

#include <stddef.h>

#define XM_RECORD_SIZE 112 /* sizeof(xc_domaininfo_t) */
#define XM_OFF_DOMAIN 0 /* domid_t (u16) */
#define XM_OFF_FLAGS 4 /* u32 XEN_DOMINF_* */
#define XM_OFF_CPU_TIME 56 /* u64 nanoseconds */
#define XM_OFF_HANDLE 76 /* u8[16], the domain's UUID */
#define XM_HANDLE_SIZE 16

#define XM_DOMINF_DYING 0x1
#define XM_DOMINF_SHUTDOWN 0x4
#define XM_DOMINF_PAUSED 0x8 /* held paused by the toolstack (xl pause; a domain is built so) */
#define XM_DOMINF_SHUTDOWNSHIFT 16
#define XM_DOMINF_SHUTDOWNMASK 0xff
#define XM_SHUTDOWN_SUSPEND 2 /* the two shutdowns a resume can undo */
#define XM_SHUTDOWN_SOFT_RESET 5
#define XM_SHUTDOWN_NONE 0xff /* the reason code of a domain never shut down */
#define XM_DOMID_FIRST_RESERVED 0x7FF0 /* domids at or above this are not ordinary domains */

/* Every number above, for the import guard to walk: a number missing here goes unchecked. */
#define XM_RECORD_LAYOUT(X)                                                                   \
	X(RECORD_SIZE) X(OFF_DOMAIN) X(OFF_FLAGS) X(OFF_CPU_TIME) X(OFF_HANDLE) X(HANDLE_SIZE) \
	X(DOMINF_DYING) X(DOMINF_SHUTDOWN) X(DOMINF_PAUSED) X(DOMINF_SHUTDOWNSHIFT)             \
	X(DOMINF_SHUTDOWNMASK) X(SHUTDOWN_SUSPEND) X(SHUTDOWN_SOFT_RESET) X(SHUTDOWN_NONE)      \
	X(DOMID_FIRST_RESERVED)

typedef struct {
	const char *name; /* as in mux/records.py */
	long value;
} xm_constant;

static inline const xm_constant *xm_record_layout(size_t *count)
{
#define XM_CONSTANT(name) { #name, XM_##name },
	static const xm_constant table[] = { XM_RECORD_LAYOUT(XM_CONSTANT) };
#undef XM_CONSTANT
	*count = sizeof(table) / sizeof(table[0]);
	return table;
}

#endif
