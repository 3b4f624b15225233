/* Seqlocked reader of DIR/domains.shm. See shmtable.h and mux/sim/shm_layout.h. */
#define _GNU_SOURCE
#include "shmtable.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The layout the table was written with is the one of this Xen's xenctrl.h. */
_Static_assert(sizeof(xc_domaininfo_t) == XM_RECORD_SIZE, "xc_domaininfo_t is not XM_RECORD_SIZE");
_Static_assert(offsetof(xc_domaininfo_t, domain) == XM_OFF_DOMAIN, "domain moved");
_Static_assert(offsetof(xc_domaininfo_t, flags) == XM_OFF_FLAGS, "flags moved");
_Static_assert(offsetof(xc_domaininfo_t, cpu_time) == XM_OFF_CPU_TIME, "cpu_time moved");
_Static_assert(offsetof(xc_domaininfo_t, handle) == XM_OFF_HANDLE, "handle moved");
_Static_assert(DOMID_FIRST_RESERVED == XM_DOMID_FIRST_RESERVED, "DOMID_FIRST_RESERVED moved");

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *map_path; /* the $XENMUX_STUB_SHM the mapping was made from */
static const unsigned char *map;
static size_t map_len;
static dev_t map_dev;
static ino_t map_ino;
static uint64_t seen_virqs; /* the header's VIRQ count at the last check of the file */
static uint64_t checked_ns; /* CLOCK_MONOTONIC of that check */
static unsigned calls_since; /* calls since, for reading the clock only now and then */

/* How long a mapping is trusted without a VIRQ before the file is looked at again, and
 * every how many calls the clock is read to see whether that time passed. */
#define RECHECK_NS 100000000ull
#define RECHECK_CALLS 256

void stub_warn(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	dprintf(2, "xenstub[%d]: %.*s\n", (int)getpid(), n, buf);
}

static uint64_t monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void unmap(void)
{
	if (map)
		munmap((void *)map, map_len);
	map = NULL;
	map_len = 0;
	free(map_path);
	map_path = NULL;
}

/* Whether the mapping holds every record the header says the table has room for. */
static int covers_capacity(void)
{
	uint32_t capacity = __atomic_load_n((const uint32_t *)(map + XM_SHM_OFF_CAPACITY),
					    __ATOMIC_RELAXED);

	return XM_SHM_OFF_RECORDS + (size_t)capacity * XM_RECORD_SIZE <= map_len;
}

/* Map the table at path, replacing any earlier mapping. Called locked. */
static int map_file(const char *path, const struct stat *st)
{
	void *p;
	int fd;

	unmap();
	if ((size_t)st->st_size < XM_SHM_HEADER_SIZE) {
		errno = EIO;
		return -1;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	p = mmap(NULL, st->st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return -1;
	map_path = strdup(path);
	if (!map_path) {
		munmap(p, st->st_size);
		errno = ENOMEM;
		return -1;
	}
	map = p;
	map_len = st->st_size;
	map_dev = st->st_dev;
	map_ino = st->st_ino;
	return 0;
}

/*
 * Make `map` the table $XENMUX_STUB_SHM names. Called locked, on every call, so it must
 * cost no system call in the usual case: the file keeps its inode and size for its writer's
 * whole life (mux/sim/shm.py), so it is mapped once. It is looked at again (one stat) only
 * when the path changed, when the header's VIRQ count moved (whoever removes, replaces or
 * grows the table raises a VIRQ for the servers to notice, and a VIRQ is when xenstored asks
 * about every domain), when the header says the table outgrew the mapping, or after
 * RECHECK_NS without a VIRQ (the clock read every RECHECK_CALLS calls: a table replaced
 * without a VIRQ is noticed too). A table that is gone is unmapped, so it reads as missing.
 */
static int current(void)
{
	const char *path = getenv(SHM_ENV);
	struct stat st;
	uint64_t virqs, now;

	if (!path || !*path) {
		stub_warn("%s is not set: no domain table", SHM_ENV);
		errno = ENOENT;
		return -1;
	}
	if (map && strcmp(path, map_path) == 0) {
		virqs = __atomic_load_n((const uint64_t *)(map + XM_SHM_OFF_VIRQS), __ATOMIC_ACQUIRE);
		if (virqs == seen_virqs && covers_capacity()) {
			if (++calls_since < RECHECK_CALLS)
				return 0;
			calls_since = 0;
			now = monotonic_ns();
			if (now - checked_ns < RECHECK_NS)
				return 0;
		} else {
			now = monotonic_ns();
		}
		seen_virqs = virqs;
		checked_ns = now;
		calls_since = 0;
		if (stat(path, &st) < 0) {
			unmap();
			return -1;
		}
		if (st.st_dev == map_dev && st.st_ino == map_ino && (size_t)st.st_size == map_len &&
		    covers_capacity())
			return 0;
	} else if (stat(path, &st) < 0) {
		unmap();
		return -1;
	}
	if (map_file(path, &st) < 0)
		return -1;
	seen_virqs = __atomic_load_n((const uint64_t *)(map + XM_SHM_OFF_VIRQS), __ATOMIC_ACQUIRE);
	checked_ns = monotonic_ns();
	calls_since = 0;
	return 0;
}

static uint32_t u32_at(size_t off)
{
	return __atomic_load_n((const uint32_t *)(map + off), __ATOMIC_RELAXED);
}

static int copy_locked(uint32_t first, unsigned int max, xc_domaininfo_t *out)
{
	struct timespec start, now, nap = { 0, 50000 };
	uint32_t capacity;
	long n;

	if (memcmp(map + XM_SHM_OFF_MAGIC, XM_SHM_MAGIC, XM_SHM_MAGIC_SIZE) ||
	    u32_at(XM_SHM_OFF_VERSION) != XM_SHM_VERSION ||
	    u32_at(XM_SHM_OFF_RECORD_SIZE) != XM_RECORD_SIZE) {
		stub_warn("%s is not a version %d table of %d-byte records", getenv(SHM_ENV),
			  XM_SHM_VERSION, XM_RECORD_SIZE);
		errno = EIO;
		return -1;
	}
	capacity = u32_at(XM_SHM_OFF_CAPACITY);
	if (XM_SHM_OFF_RECORDS + (size_t)capacity * XM_RECORD_SIZE > map_len) {
		errno = EIO;
		return -1;
	}
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		n = xm_shm_try_copy(map, capacity, first, max, (unsigned char *)out);
		if (n >= 0)
			return (int)n;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - start.tv_sec > 2) {
			stub_warn("the table's seqlock stayed busy for 2 s");
			errno = EAGAIN;
			return -1;
		}
		if (n == XM_SHM_BUSY)
			nanosleep(&nap, NULL);
		else
			sched_yield();
	}
}

int shm_getinfolist(uint32_t first, unsigned int max, xc_domaininfo_t *out)
{
	int rc;

	if (first >= DOMID_FIRST_RESERVED || max == 0)
		return 0;
	pthread_mutex_lock(&lock);
	rc = current();
	if (rc == 0)
		rc = copy_locked(first, max, out);
	pthread_mutex_unlock(&lock);
	return rc;
}
