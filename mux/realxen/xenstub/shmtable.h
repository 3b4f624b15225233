/*
 * Reader of the simulated host's domain table (DIR/domains.shm, docs/internals.md), whose
 * layout and seqlocked read come from mux/sim/shm_layout.h (compile with -I to mux/sim).
 *
 * Stand-in code (tests and bench, never a real host). Both stand-ins (hvstub.so,
 * libxenctrl_stub.so) serve the hypervisor's domain list from this table, so they answer
 * exactly what the simulated host holds.
 */
#ifndef XENMUX_SHMTABLE_H
#define XENMUX_SHMTABLE_H

#include <stdint.h>
#include <xenctrl.h>

#include "shm_layout.h"

/* The environment variable naming the table; both stand-ins read it. */
#define SHM_ENV "XENMUX_STUB_SHM"

/*
 * Copy the domains with domid >= first (in domid order, at most max) into out, as
 * XEN_SYSCTL_getdomaininfolist does. Returns the count, or -1 with errno set:
 * ENOENT/EIO when the table is missing or malformed, EAGAIN when the writer kept
 * the seqlock odd for too long.
 */
int shm_getinfolist(uint32_t first, unsigned int max, xc_domaininfo_t *out);

/*
 * Read $XENMUX_STUB_SHM once, now, and serve that table for the rest of the process's life
 * without looking at the environment again (a getenv and a strcmp per call otherwise).
 * For a process whose environment is fixed at exec: hvstub.so, preloaded into a xenstored.
 */
void shm_pin_path(void);

/* Print a one-line complaint to stderr once per distinct message (prefix "xenstub: "). */
void stub_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
