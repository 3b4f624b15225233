/*
 * hvstub.so: the hypervisor interfaces the real xenstored / oxenstored (Xen 4.17) call,
 * faked for a machine without Xen. Loaded with LD_PRELOAD; stand-in code (mux.realxen),
 * for tests and the bench, never a real host.
 *
 *   xenctrl    xc_interface_open/close, xc_domain_getinfo (C xenstored),
 *              xc_domain_getinfolist (oxenstored), xc_get_last_error,
 *              xc_map_foreign_range (oxenstored maps a guest's ring page with it)
 *              -> domains come from the simulated host's table ($XENMUX_STUB_SHM)
 *   xenevtchn  the handle's fd is an AF_UNIX SOCK_DGRAM socket bound at
 *              $XENMUX_STUB_VIRQ_SOCKET; each datagram raises VIRQ_DOM_EXC
 *   xengnttab  mapping a guest's xenstore grant gives a zeroed page nobody writes
 *
 * The ring pages stay zero (req_cons == req_prod), so no guest ever talks: the servers
 * only ever serve their Unix socket. Set XENMUX_STUB_DEBUG=1 to trace the calls on stderr.
 */
#define _GNU_SOURCE
#define XC_WANT_COMPAT_MAP_FOREIGN_API
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#include "shmtable.h"

#define EXPORT __attribute__((visibility("default")))
#define VIRQ_ENV "XENMUX_STUB_VIRQ_SOCKET"

static int debug = -1;

#define TRACE(...)                                                  \
	do {                                                        \
		if (debug < 0)                                      \
			debug = getenv("XENMUX_STUB_DEBUG") != NULL; \
		if (debug)                                          \
			stub_warn(__VA_ARGS__);                     \
	} while (0)

/* The xenstoreds never change their environment: their table is the one they started with. */
__attribute__((constructor)) static void pin_table(void)
{
	shm_pin_path();
}

/* ---- xenctrl ------------------------------------------------------------------------ */

struct xc_interface_core {
	xc_error last_error; /* stays XC_ERROR_NONE: callers then report errno */
};

EXPORT xc_interface *xc_interface_open(xentoollog_logger *logger,
				       xentoollog_logger *dombuild_logger, unsigned open_flags)
{
	(void)logger;
	(void)dombuild_logger;
	(void)open_flags;
	TRACE("xc_interface_open");
	return calloc(1, sizeof(struct xc_interface_core));
}

EXPORT int xc_interface_close(xc_interface *xch)
{
	free(xch);
	return 0;
}

EXPORT const xc_error *xc_get_last_error(xc_interface *xch)
{
	static const xc_error none;
	return xch ? &xch->last_error : &none;
}

EXPORT const char *xc_error_code_to_desc(int code)
{
	return code == XC_ERROR_NONE ? "No error details" : "Error (hvstub)";
}

EXPORT int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain,
				 unsigned int max_domains, xc_domaininfo_t *info)
{
	int n;

	(void)xch;
	n = shm_getinfolist(first_domain, max_domains, info);
	TRACE("xc_domain_getinfolist(%u, %u) = %d", first_domain, max_domains, n);
	return n;
}

/*
 * 4.17 semantics: one XEN_DOMCTL_getdomaininfo per entry, each returning the first domain
 * whose domid is >= the one asked for (callers must check the domid they get back);
 * ESRCH when there is none. The flag decoding is libxc's, crash included.
 */
EXPORT int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms,
			     xc_dominfo_t *info)
{
	uint32_t next = first_domid;
	unsigned int nr;
	int rc = 0;

	(void)xch;
	memset(info, 0, max_doms * sizeof(*info));
	for (nr = 0; nr < max_doms; nr++, info++) {
		xc_domaininfo_t d;

		if (next >= DOMID_FIRST_RESERVED) {
			errno = EINVAL;
			rc = -1;
			break;
		}
		rc = shm_getinfolist(next, 1, &d);
		if (rc == 0) {
			errno = ESRCH;
			rc = -1;
		}
		if (rc < 0)
			break;
		info->domid = d.domain;
		info->dying = !!(d.flags & XEN_DOMINF_dying);
		info->shutdown = !!(d.flags & XEN_DOMINF_shutdown);
		info->paused = !!(d.flags & XEN_DOMINF_paused);
		info->blocked = !!(d.flags & XEN_DOMINF_blocked);
		info->running = !!(d.flags & XEN_DOMINF_running);
		info->hvm = !!(d.flags & XEN_DOMINF_hvm_guest);
		info->debugged = !!(d.flags & XEN_DOMINF_debugged);
		info->xenstore = !!(d.flags & XEN_DOMINF_xs_domain);
		info->hap = !!(d.flags & XEN_DOMINF_hap);
		info->shutdown_reason = (d.flags >> XEN_DOMINF_shutdownshift) &
					XEN_DOMINF_shutdownmask;
		if (info->shutdown && info->shutdown_reason == SHUTDOWN_crash) {
			info->shutdown = 0;
			info->crashed = 1;
		}
		info->ssidref = d.ssidref;
		info->nr_pages = d.tot_pages;
		info->nr_outstanding_pages = d.outstanding_pages;
		info->nr_shared_pages = d.shr_pages;
		info->nr_paged_pages = d.paged_pages;
		info->max_memkb = d.max_pages << 2; /* 4 KiB pages */
		info->shared_info_frame = d.shared_info_frame;
		info->cpu_time = d.cpu_time;
		info->nr_online_vcpus = d.nr_online_vcpus;
		info->max_vcpu_id = d.max_vcpu_id;
		info->cpupool = d.cpupool;
		info->gpaddr_bits = d.gpaddr_bits;
		info->arch_config = d.arch_config;
		memcpy(info->handle, d.handle, sizeof(info->handle));
		next = (uint16_t)d.domain + 1;
	}
	TRACE("xc_domain_getinfo(%u, %u) = %d", first_domid, max_doms, nr ? (int)nr : rc);
	return nr ? (int)nr : rc;
}

static void *zero_pages(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

/* oxenstored maps an introduced guest's ring page with this (the mfn of XS_INTRODUCE). */
EXPORT void *xc_map_foreign_range(xc_interface *xch, uint32_t dom, int size, int prot,
				  unsigned long mfn)
{
	(void)xch;
	(void)prot;
	TRACE("xc_map_foreign_range(dom %u, mfn %#lx)", dom, mfn);
	return zero_pages(size > 0 ? (size_t)size : 4096);
}

/* ---- xenevtchn ---------------------------------------------------------------------- */

struct xenevtchn_handle {
	int fd;
	int bound; /* this handle owns the socket path */
	evtchn_port_t next_port;
	evtchn_port_t virq_port;
};

EXPORT xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned open_flags)
{
	const char *path = getenv(VIRQ_ENV);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	xenevtchn_handle *h;
	int type = SOCK_DGRAM;

	(void)logger;
	if (!(open_flags & XENEVTCHN_NO_CLOEXEC))
		type |= SOCK_CLOEXEC;
	h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->next_port = 1;
	h->fd = socket(AF_UNIX, type, 0);
	if (h->fd < 0)
		goto fail;
	if (path && *path) {
		if (strlen(path) >= sizeof(sa.sun_path)) {
			errno = ENAMETOOLONG;
			goto fail;
		}
		strcpy(sa.sun_path, path);
		unlink(path);
		if (bind(h->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			goto fail;
		h->bound = 1;
	} else {
		stub_warn("%s is not set: VIRQ_DOM_EXC will never be raised", VIRQ_ENV);
	}
	TRACE("xenevtchn_open: fd %d, VIRQ socket %s", h->fd, path ? path : "(none)");
	return h;
fail: {
	int err = errno;
	stub_warn("xenevtchn_open: VIRQ socket %s: %s", path ? path : "", strerror(err));
	if (h->fd >= 0)
		close(h->fd);
	free(h);
	errno = err;
	return NULL;
}
}

/* Live update hands over the fd; not faked (no -U / --live in the fixtures). */
EXPORT xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd,
					  unsigned open_flags)
{
	(void)logger;
	(void)fd;
	(void)open_flags;
	errno = ENOSYS;
	return NULL;
}

EXPORT int xenevtchn_close(xenevtchn_handle *h)
{
	if (!h)
		return 0;
	if (h->bound) {
		const char *path = getenv(VIRQ_ENV);
		if (path)
			unlink(path);
	}
	close(h->fd);
	free(h);
	return 0;
}

EXPORT int xenevtchn_fd(xenevtchn_handle *h)
{
	return h->fd;
}

/* Guests never listen: notifying a guest's port is a no-op. */
EXPORT int xenevtchn_notify(xenevtchn_handle *h, evtchn_port_t port)
{
	(void)h;
	(void)port;
	return 0;
}

EXPORT xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *h, uint32_t domid,
							    evtchn_port_t remote_port)
{
	evtchn_port_t port = h->next_port++;

	TRACE("bind_interdomain(dom %u, remote %u) = %u", domid, remote_port, port);
	return port;
}

EXPORT xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *h, unsigned int virq)
{
	if (virq != VIRQ_DOM_EXC || h->virq_port) {
		errno = virq != VIRQ_DOM_EXC ? EINVAL : EEXIST;
		return -1;
	}
	h->virq_port = h->next_port++;
	TRACE("bind_virq(VIRQ_DOM_EXC) = %u", h->virq_port);
	return h->virq_port;
}

EXPORT int xenevtchn_unbind(xenevtchn_handle *h, evtchn_port_t port)
{
	if (port && port == h->virq_port)
		h->virq_port = 0;
	return 0;
}

/*
 * Called once poll() saw the fd readable. Everything queued so far is one pending
 * VIRQ_DOM_EXC, as the event channel's pending bit coalesces raises until the port is
 * handled; a datagram sent after this call wakes the server again.
 */
EXPORT xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *h)
{
	char buf[64];
	int n = 0;

	if (recv(h->fd, buf, sizeof(buf), 0) < 0)
		return -1;
	while (recv(h->fd, buf, sizeof(buf), MSG_DONTWAIT) >= 0)
		n++;
	TRACE("pending: VIRQ_DOM_EXC (%d more raises coalesced)", n);
	if (!h->virq_port) {
		errno = EAGAIN;
		return -1;
	}
	return h->virq_port;
}

EXPORT int xenevtchn_unmask(xenevtchn_handle *h, evtchn_port_t port)
{
	(void)h;
	(void)port;
	return 0;
}

/* ---- xengnttab ---------------------------------------------------------------------- */

struct xengntdev_handle {
	int unused;
};

EXPORT xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
	(void)logger;
	(void)open_flags;
	return calloc(1, sizeof(struct xengntdev_handle));
}

EXPORT int xengnttab_close(xengnttab_handle *xgt)
{
	free(xgt);
	return 0;
}

EXPORT int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
	(void)xgt;
	(void)nr_grants;
	return 0;
}

/* C xenstored maps an introduced guest's ring (GNTTAB_RESERVED_XENSTORE) with this. */
EXPORT void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref,
				     int prot)
{
	(void)xgt;
	(void)prot;
	TRACE("xengnttab_map_grant_ref(dom %u, ref %u)", domid, ref);
	return zero_pages(4096);
}

EXPORT int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
	(void)xgt;
	return munmap(start_address, (size_t)count * 4096);
}
