/*
 * hvstub.so, part 2: the files a dom0 kernel provides, and moving fixed paths.
 *
 *   /proc/xen/xsd_port   dom0's xenstore event channel port: "$XENMUX_STUB_XSD_PORT"
 *                        (default 1), no newline, as Linux prints it (oxenstored
 *                        parses the whole read as an integer), served from a memfd.
 *   /proc/xen/xsd_kva    dom0's xenstore ring page: a zeroed 4 KiB memfd, mapped
 *                        read-write by the server and never written by anyone else.
 *   XENMUX_STUB_REDIRECT="FROM=TO[:FROM=TO...]"
 *                        paths equal to FROM or under FROM/ are rewritten to TO for the
 *                        calls listed below. oxenstored has its socket directory
 *                        (/var/run/xenstored) compiled in; this moves it into a test's
 *                        temporary directory so that nothing on the host is touched.
 *   setrlimit(RLIMIT_NOFILE) above the hard limit
 *                        oxenstored raises its fd limit to /proc/sys/fs/nr_open at start and
 *                        dies if that fails (EPERM in a container); the request is clamped
 *                        to the current hard limit instead.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "shmtable.h"

#define EXPORT __attribute__((visibility("default")))
#define XSD_PORT "/proc/xen/xsd_port"
#define XSD_KVA "/proc/xen/xsd_kva"

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

/* Rewrite path into buf when a redirection applies; returns the path to use. */
static const char *redirect(const char *path, char *buf, size_t len)
{
	const char *spec = getenv("XENMUX_STUB_REDIRECT");
	const char *p;

	if (!spec || !path)
		return path;
	for (p = spec; *p;) {
		const char *end = strchrnul(p, ':');
		const char *eq = memchr(p, '=', end - p);

		if (eq) {
			size_t flen = eq - p;
			if (flen && !strncmp(path, p, flen) && (path[flen] == '\0' || path[flen] == '/')) {
				int n = snprintf(buf, len, "%.*s%s", (int)(end - eq - 1), eq + 1,
						 path + flen);
				if (n > 0 && (size_t)n < len)
					return buf;
			}
		}
		p = *end ? end + 1 : end;
	}
	return path;
}

static int memfd_with(const char *name, const void *data, size_t len, size_t size)
{
	int fd = memfd_create(name, MFD_CLOEXEC);

	if (fd < 0)
		return -1;
	if (ftruncate(fd, size) < 0 || (len && pwrite(fd, data, len, 0) != (ssize_t)len)) {
		int err = errno;
		close(fd);
		errno = err;
		return -1;
	}
	return fd;
}

/* Serve dom0's two xenstore files; -2 when path is neither. */
static int special_open(const char *path)
{
	if (!strcmp(path, XSD_PORT)) {
		const char *port = getenv("XENMUX_STUB_XSD_PORT");
		char buf[32];
		int n = snprintf(buf, sizeof(buf), "%s", port && *port ? port : "1");
		return memfd_with("xsd_port", buf, n, n);
	}
	if (!strcmp(path, XSD_KVA))
		return memfd_with("xsd_kva", NULL, 0, 4096);
	return -2;
}

static int open_common(const char *which, const char *path, int flags, mode_t mode)
{
	char buf[PATH_MAX];
	int (*real)(const char *, int, ...) = dlsym(RTLD_NEXT, which);
	int fd = special_open(path);

	if (fd != -2)
		return fd;
	return real(redirect(path, buf, sizeof(buf)), flags, mode);
}

EXPORT int open(const char *path, int flags, ...)
{
	mode_t mode = 0;

	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	return open_common("open", path, flags, mode);
}

EXPORT int open64(const char *path, int flags, ...)
{
	mode_t mode = 0;

	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	return open_common("open64", path, flags, mode);
}

EXPORT int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	const struct sockaddr_un *un = (const void *)sa;
	struct sockaddr_un moved;
	char buf[PATH_MAX];
	const char *to;

	if (sa && sa->sa_family == AF_UNIX && len > offsetof(struct sockaddr_un, sun_path) &&
	    un->sun_path[0]) {
		char path[sizeof(un->sun_path) + 1];
		size_t n = len - offsetof(struct sockaddr_un, sun_path);

		memcpy(path, un->sun_path, n < sizeof(un->sun_path) ? n : sizeof(un->sun_path));
		path[n < sizeof(un->sun_path) ? n : sizeof(un->sun_path)] = '\0';
		to = redirect(path, buf, sizeof(buf));
		if (to != path) {
			if (strlen(to) >= sizeof(moved.sun_path)) {
				errno = ENAMETOOLONG;
				return -1;
			}
			memset(&moved, 0, sizeof(moved));
			moved.sun_family = AF_UNIX;
			strcpy(moved.sun_path, to);
			return REAL(bind)(fd, (struct sockaddr *)&moved, sizeof(moved));
		}
	}
	return REAL(bind)(fd, sa, len);
}

#define PATH1(ret, name, params, args)                                                   \
	EXPORT ret name params                                                            \
	{                                                                                 \
		char buf[PATH_MAX];                                                       \
		path = redirect(path, buf, sizeof(buf));                                  \
		return REAL(name) args;                                                   \
	}

PATH1(int, unlink, (const char *path), (path))
PATH1(int, rmdir, (const char *path), (path))
PATH1(int, mkdir, (const char *path, mode_t mode), (path, mode))
PATH1(int, chmod, (const char *path, mode_t mode), (path, mode))
PATH1(int, access, (const char *path, int amode), (path, amode))
PATH1(int, stat64, (const char *path, struct stat64 *st), (path, st))
PATH1(int, lstat64, (const char *path, struct stat64 *st), (path, st))

EXPORT int setrlimit(__rlimit_resource_t resource, const struct rlimit *rl)
{
	struct rlimit cur, clamped;

	if (resource == RLIMIT_NOFILE && getrlimit(RLIMIT_NOFILE, &cur) == 0 &&
	    rl->rlim_max > cur.rlim_max) {
		clamped.rlim_max = cur.rlim_max;
		clamped.rlim_cur = rl->rlim_cur < cur.rlim_max ? rl->rlim_cur : cur.rlim_max;
		if (REAL(setrlimit)(resource, rl) == 0)
			return 0;
		return REAL(setrlimit)(resource, &clamped);
	}
	return REAL(setrlimit)(resource, rl);
}
