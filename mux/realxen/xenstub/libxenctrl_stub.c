/*
 * libxenctrl_stub.so: a stand-in libxenctrl for xenmux's `xenctrl` backend
 * (`--xenctrl-lib PATH`), serving the simulated host's table. Stand-in code (mux.realxen),
 * for tests and the bench, never a real host.
 *
 *   xc_interface_open(NULL, NULL, 0)        -> a handle (never NULL)
 *   xc_domain_getinfolist(xch, first, max, buf)
 *       -> the domains with domid >= first, in domid order, at most max, copied from
 *          $XENMUX_STUB_SHM exactly as XEN_SYSCTL_getdomaininfolist fills them; or -1 with
 *          errno.
 *   xc_interface_close(xch)                 -> 0
 *   xc_get_last_error(xch)                  -> XC_ERROR_NONE (report errno)
 *   xc_version(xch, XENVER_version | XENVER_extraversion, arg)
 *                                           -> the Xen this build stands in for:
 *                                              -DXENMUX_STUB_XEN_MINOR (default 17) and
 *                                              -DXENMUX_STUB_XEN_EXTRA (default ".0")
 *   xc_domain_getinfo_single(xch, domid, info)   (only when built as 4.18 or later)
 *       -> 0 and the record of exactly that domid, or -1 with ESRCH, as
 *          XEN_DOMCTL_getdomaininfo does since 4.18; counted by xenmux_stub_single_calls()
 *
 * Failure injection for error-handling tests, both optional:
 *   XENMUX_STUB_FAIL="ERRNAME:K"       the first K calls of the process fail with ERRNAME
 *                                      (EPERM, EAGAIN, EACCES, EINVAL, ESRCH, EFAULT,
 *                                      ENOMEM, EIO, EBUSY, EINTR)
 *   XENMUX_STUB_FAIL_FILE=PATH         before each call, if PATH holds "ERRNAME K" with
 *                                      K > 0, the call fails with ERRNAME and K - 1 is
 *                                      written back (so a test arms failures at run time,
 *                                      and reads the file to see how many were consumed).
 * Each call increments a counter readable with xenmux_stub_calls() (for tests via ctypes).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmtable.h"

#define EXPORT __attribute__((visibility("default")))

struct xc_interface_core {
	xc_error last_error;
};

static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;
static int env_parsed;
static int env_errno;
static long env_left;
static unsigned long calls;

static const struct {
	const char *name;
	int value;
} errnames[] = {
	{ "EPERM", EPERM },   { "EAGAIN", EAGAIN }, { "EACCES", EACCES }, { "EINVAL", EINVAL },
	{ "ESRCH", ESRCH },   { "EFAULT", EFAULT }, { "ENOMEM", ENOMEM }, { "EIO", EIO },
	{ "EBUSY", EBUSY },   { "EINTR", EINTR },
};

static int errno_of(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof(errnames) / sizeof(errnames[0]); i++)
		if (strlen(errnames[i].name) == len && !strncmp(errnames[i].name, name, len))
			return errnames[i].value;
	stub_warn("unknown errno name %.*s in failure injection: using EIO", (int)len, name);
	return EIO;
}

static void parse_env(void)
{
	const char *spec = getenv("XENMUX_STUB_FAIL");
	const char *colon;

	env_parsed = 1;
	if (!spec || !*spec)
		return;
	colon = strchr(spec, ':');
	env_errno = errno_of(spec, colon ? (size_t)(colon - spec) : strlen(spec));
	env_left = colon ? strtol(colon + 1, NULL, 10) : 1;
}

/* The errno the file asks for (consuming one), or 0. */
static int from_file(void)
{
	const char *path = getenv("XENMUX_STUB_FAIL_FILE");
	char buf[64], name[32];
	long left;
	int fd, n, err = 0;

	if (!path || !*path)
		return 0;
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	if (n > 0) {
		buf[n] = '\0';
		if (sscanf(buf, "%31s %ld", name, &left) == 2 && left > 0) {
			err = errno_of(name, strlen(name));
			n = snprintf(buf, sizeof(buf), "%s %ld\n", name, left - 1);
			if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, n, 0) != n)
				stub_warn("could not rewrite %s", path);
		}
	}
	close(fd);
	return err;
}

static int injected(void)
{
	int err;

	pthread_mutex_lock(&fail_lock);
	calls++;
	if (!env_parsed)
		parse_env();
	if (env_left > 0) {
		env_left--;
		err = env_errno;
	} else {
		err = from_file();
	}
	pthread_mutex_unlock(&fail_lock);
	return err;
}

EXPORT xc_interface *xc_interface_open(xentoollog_logger *logger,
				       xentoollog_logger *dombuild_logger, unsigned open_flags)
{
	(void)logger;
	(void)dombuild_logger;
	(void)open_flags;
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

EXPORT int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain,
				 unsigned int max_domains, xc_domaininfo_t *info)
{
	int err;

	if (!xch) {
		errno = EINVAL;
		return -1;
	}
	err = injected();
	if (err) {
		errno = err;
		return -1;
	}
	return shm_getinfolist(first_domain, max_domains, info);
}

#ifndef XENMUX_STUB_XEN_MINOR
#define XENMUX_STUB_XEN_MINOR 17
#endif
#ifndef XENMUX_STUB_XEN_EXTRA
#define XENMUX_STUB_XEN_EXTRA ".0"
#endif

EXPORT int xc_version(xc_interface *xch, int cmd, void *arg)
{
	if (!xch) {
		errno = EINVAL;
		return -1;
	}
	if (cmd == XENVER_version)
		return (4 << 16) | XENMUX_STUB_XEN_MINOR;
	if (cmd == XENVER_extraversion) {
		memset(arg, 0, sizeof(xen_extraversion_t));
		strncpy(arg, XENMUX_STUB_XEN_EXTRA, sizeof(xen_extraversion_t) - 1);
		return 0;
	}
	errno = ENOSYS;
	return -1;
}

static unsigned long single_calls;

#if XENMUX_STUB_XEN_MINOR >= 18
EXPORT int xc_domain_getinfo_single(xc_interface *xch, uint32_t domid, xc_domaininfo_t *info)
{
	xc_domaininfo_t found;
	long n;
	int err;

	if (!xch) {
		errno = EINVAL;
		return -1;
	}
	pthread_mutex_lock(&fail_lock);
	single_calls++;
	pthread_mutex_unlock(&fail_lock);
	err = injected();
	if (err) {
		errno = err;
		return -1;
	}
	n = shm_getinfolist(domid, 1, &found);
	if (n < 0)
		return -1;
	if (n == 0 || found.domain != domid) {
		errno = ESRCH;
		return -1;
	}
	if (info)
		*info = found;
	return 0;
}
#endif

static unsigned long locked_read(const unsigned long *counter)
{
	unsigned long n;

	pthread_mutex_lock(&fail_lock);
	n = *counter;
	pthread_mutex_unlock(&fail_lock);
	return n;
}

EXPORT unsigned long xenmux_stub_single_calls(void)
{
	return locked_read(&single_calls);
}

EXPORT unsigned long xenmux_stub_calls(void)
{
	return locked_read(&calls);
}
