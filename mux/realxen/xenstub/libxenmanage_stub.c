/*
 * libxenmanage.so.1 stand-in for xenmux's `xenctrl` backend (mux/hypervisor/xenmanage.py),
 * serving the simulated host's table. Stand-in code (mux.realxen), for tests, never a real
 * host.
 *
 * Compiled with -DXENMUX_MANAGE_ARITY=5 (every tagged release, 4.21.0-rc1 on:
 * (hdl, domid, &state, &caps, &unique_id)) or 4 (xen.git's master between 2025-03-06 and
 * 2025-07-31: (hdl, domid, &state, &unique_id)). Both export the symbol version node
 * VERS_1.0 under the soname libxenmanage.so.1, as upstream's do.
 *
 *   xenmanage_open(logger, 0)            -> a handle
 *   xenmanage_get_domain_info(...)       -> the state bits of exactly that domid from
 *                                           $XENMUX_STUB_SHM and its unique id; -1/ESRCH
 *                                           when it does not exist
 *   xenmanage_poll_changed_domain(...)   -> aborts the process, loudly: xenmux must never
 *                                           call it (it would take xenstored's bits)
 *
 * Unique ids: $XENMUX_STUB_UNIQUE_IDS names a file of "DOMID HEXID" lines (read on every
 * call) that a test writes to give an incarnation its id; a domid not listed gets an id
 * made from its domid and UUID (the record's handle), never 0.
 * Each get_domain_info call is counted: xenmux_manage_calls().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmtable.h"

#ifndef XENMUX_MANAGE_ARITY
#error "define XENMUX_MANAGE_ARITY (4 or 5)"
#endif

#define EXPORT __attribute__((visibility("default")))

/* XENMANAGE_GETDOMSTATE_STATE_* */
#define STATE_EXIST 0x1
#define STATE_SHUTDOWN 0x2
#define STATE_DYING 0x4
#define STATE_DEAD 0x8

struct xenmanage_handle {
	int unused;
};

static unsigned long calls;

EXPORT struct xenmanage_handle *xenmanage_open(void *logger, unsigned int open_flags)
{
	(void)logger;
	if (open_flags) {
		errno = EINVAL;
		return NULL;
	}
	return calloc(1, sizeof(struct xenmanage_handle));
}

EXPORT int xenmanage_close(struct xenmanage_handle *hdl)
{
	free(hdl);
	return 0;
}

static int listed_id(unsigned int domid, uint64_t *out)
{
	const char *path = getenv("XENMUX_STUB_UNIQUE_IDS");
	unsigned int d;
	unsigned long long id;
	int found = 0;
	FILE *f;

	if (!path || !*path || !(f = fopen(path, "re")))
		return 0;
	while (fscanf(f, "%u %llx", &d, &id) == 2)
		if (d == domid) {
			*out = id; /* the last line for a domid wins */
			found = 1;
		}
	fclose(f);
	return found;
}

static uint64_t made_id(const xc_domaininfo_t *info)
{
	uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a over domid and UUID */
	const unsigned char *p = info->handle;

	h = (h ^ info->domain) * 0x100000001b3ULL;
	for (size_t i = 0; i < sizeof(info->handle); i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h ? h : 1;
}

static int get_state(unsigned int domid, unsigned int *state, unsigned int *caps,
		     uint64_t *unique_id)
{
	xc_domaininfo_t info;
	long n;

	calls++;
	if (domid >= XM_DOMID_FIRST_RESERVED) {
		errno = EINVAL;
		return -1;
	}
	n = shm_getinfolist(domid, 1, &info);
	if (n < 0)
		return -1;
	if (n == 0 || info.domain != domid) {
		errno = ESRCH;
		return -1;
	}
	if (state) {
		*state = STATE_EXIST;
		if (info.flags & XEN_DOMINF_shutdown)
			*state |= STATE_SHUTDOWN;
		if (info.flags & XEN_DOMINF_dying)
			*state |= STATE_DYING | STATE_DEAD; /* the record has one flag */
	}
	if (caps)
		*caps = domid == 0 ? 0x3 : 0; /* CONTROL | HARDWARE for dom0 */
	if (unique_id && !listed_id(domid, unique_id))
		*unique_id = made_id(&info);
	return 0;
}

#if XENMUX_MANAGE_ARITY == 5
EXPORT int xenmanage_get_domain_info(struct xenmanage_handle *hdl, unsigned int domid,
				     unsigned int *state, unsigned int *caps,
				     uint64_t *unique_id)
{
	if (!hdl) {
		errno = EINVAL;
		return -1;
	}
	return get_state(domid, state, caps, unique_id);
}
#elif XENMUX_MANAGE_ARITY == 4
EXPORT int xenmanage_get_domain_info(struct xenmanage_handle *hdl, unsigned int domid,
				     unsigned int *state, uint64_t *unique_id)
{
	if (!hdl) {
		errno = EINVAL;
		return -1;
	}
	return get_state(domid, state, NULL, unique_id);
}
#else
#error "XENMUX_MANAGE_ARITY must be 4 or 5"
#endif

EXPORT int xenmanage_poll_changed_domain(struct xenmanage_handle *hdl, unsigned int *domid, ...)
{
	static const char msg[] =
		"xenstub: xenmanage_poll_changed_domain was called: xenmux must never call it "
		"(it clears the changed-domain bits xenstored needs); aborting\n";
	(void)hdl;
	(void)domid;
	if (write(2, msg, sizeof(msg) - 1) < 0) {
		/* nothing more to say */
	}
	abort();
}

EXPORT unsigned long xenmux_manage_calls(void)
{
	return calls;
}
