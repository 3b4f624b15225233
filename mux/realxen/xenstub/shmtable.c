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

/*
 * What one thread has mapped. Each thread keeps its own, so a call takes no lock: C
 * xenstored 4.17 asks for every domain, one call each, on every VIRQ (1,000 calls at 1,000
 * domains), and a shared mapping guarded by a mutex cost each call a lock and an unlock.
 * A thread that ends unmaps its table (reader_key's destructor).
 */
struct reader {
	char *path; /* the $XENMUX_STUB_SHM the mapping was made from */
	const unsigned char *map;
	size_t len;
	dev_t dev;
	ino_t ino;
	uint64_t seen_virqs; /* the header's VIRQ count at the last check of the file */
	uint64_t checked_ns; /* CLOCK_MONOTONIC of that check */
	unsigned calls_since; /* calls since, for reading the clock only now and then */
};

static __thread struct reader *tls_reader;
static pthread_key_t reader_key;
static pthread_once_t reader_once = PTHREAD_ONCE_INIT;
static const char *pinned_path; /* shm_pin_path(): the table of this process's whole life */

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

static void unmap(struct reader *r)
{
	if (r->map)
		munmap((void *)r->map, r->len);
	r->map = NULL;
	r->len = 0;
	free(r->path);
	r->path = NULL;
}

static void reader_free(void *p)
{
	unmap(p);
	free(p);
}

static void make_key(void)
{
	if (pthread_key_create(&reader_key, reader_free))
		stub_warn("pthread_key_create failed: a thread's table stays mapped when it ends");
}

static struct reader *this_reader(void)
{
	struct reader *r = tls_reader;

	if (r)
		return r;
	pthread_once(&reader_once, make_key);
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	pthread_setspecific(reader_key, r);
	tls_reader = r;
	return r;
}

void shm_pin_path(void)
{
	const char *path = getenv(SHM_ENV);

	pinned_path = path && *path ? strdup(path) : NULL;
}

static uint32_t u32_at(const unsigned char *map, size_t off)
{
	return __atomic_load_n((const uint32_t *)(map + off), __ATOMIC_RELAXED);
}

/* Whether the mapping holds every record the header says the table has room for. */
static int covers_capacity(const struct reader *r)
{
	return XM_SHM_OFF_RECORDS + (size_t)u32_at(r->map, XM_SHM_OFF_CAPACITY) * XM_RECORD_SIZE <=
	       r->len;
}

/* Map the table at path, replacing any earlier mapping, and check its header once: the
 * magic, version and record size of a file never change while it lives. */
static int map_file(struct reader *r, const char *path, const struct stat *st)
{
	void *p;
	int fd;

	unmap(r);
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
	if (memcmp((const unsigned char *)p + XM_SHM_OFF_MAGIC, XM_SHM_MAGIC, XM_SHM_MAGIC_SIZE) ||
	    u32_at(p, XM_SHM_OFF_VERSION) != XM_SHM_VERSION ||
	    u32_at(p, XM_SHM_OFF_RECORD_SIZE) != XM_RECORD_SIZE) {
		stub_warn("%s is not a version %d table of %d-byte records", path, XM_SHM_VERSION,
			  XM_RECORD_SIZE);
		munmap(p, st->st_size);
		errno = EIO;
		return -1;
	}
	r->path = strdup(path);
	if (!r->path) {
		munmap(p, st->st_size);
		errno = ENOMEM;
		return -1;
	}
	r->map = p;
	r->len = st->st_size;
	r->dev = st->st_dev;
	r->ino = st->st_ino;
	return 0;
}

/*
 * Make r->map the table $XENMUX_STUB_SHM names (or the pinned one). Called on every call, so
 * it must cost no system call in the usual case: the file keeps its inode and size for its
 * writer's whole life (mux/sim/shm.py), so it is mapped once. It is looked at again (one
 * stat) only when the path changed, when the header's VIRQ count moved (whoever removes,
 * replaces or grows the table raises a VIRQ for the servers to notice, and a VIRQ is when
 * xenstored asks about every domain), when the header says the table outgrew the mapping,
 * or after RECHECK_NS without a VIRQ (the clock read every RECHECK_CALLS calls: a table
 * replaced without a VIRQ is noticed too). A table that is gone is unmapped, so it reads as
 * missing.
 */
static int current(struct reader *r)
{
	const char *path = pinned_path ? pinned_path : getenv(SHM_ENV);
	struct stat st;
	uint64_t virqs, now;

	if (!path || !*path) {
		stub_warn("%s is not set: no domain table", SHM_ENV);
		errno = ENOENT;
		return -1;
	}
	if (r->map && (path == pinned_path || strcmp(path, r->path) == 0)) {
		virqs = __atomic_load_n((const uint64_t *)(r->map + XM_SHM_OFF_VIRQS),
					__ATOMIC_ACQUIRE);
		if (virqs == r->seen_virqs && covers_capacity(r)) {
			if (++r->calls_since < RECHECK_CALLS)
				return 0;
			r->calls_since = 0;
			now = monotonic_ns();
			if (now - r->checked_ns < RECHECK_NS)
				return 0;
		} else {
			now = monotonic_ns();
		}
		r->seen_virqs = virqs;
		r->checked_ns = now;
		r->calls_since = 0;
		if (stat(path, &st) < 0) {
			unmap(r);
			return -1;
		}
		if (st.st_dev == r->dev && st.st_ino == r->ino && (size_t)st.st_size == r->len &&
		    covers_capacity(r))
			return 0;
	} else if (stat(path, &st) < 0) {
		unmap(r);
		return -1;
	}
	if (map_file(r, path, &st) < 0)
		return -1;
	r->seen_virqs =
		__atomic_load_n((const uint64_t *)(r->map + XM_SHM_OFF_VIRQS), __ATOMIC_ACQUIRE);
	r->checked_ns = monotonic_ns();
	r->calls_since = 0;
	return 0;
}

/* The seqlocked copy; the clock is read only once the writer was found busy. */
static int copy(const struct reader *r, uint32_t first, unsigned int max, xc_domaininfo_t *out)
{
	struct timespec start = { 0, 0 }, now, nap = { 0, 50000 };
	uint32_t capacity = u32_at(r->map, XM_SHM_OFF_CAPACITY);
	long n;

	if (XM_SHM_OFF_RECORDS + (size_t)capacity * XM_RECORD_SIZE > r->len) {
		errno = EIO;
		return -1;
	}
	for (;;) {
		n = xm_shm_try_copy(r->map, capacity, first, max, (unsigned char *)out);
		if (n >= 0)
			return (int)n;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (start.tv_sec == 0 && start.tv_nsec == 0)
			start = now;
		else if (now.tv_sec - start.tv_sec > 2) {
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
	struct reader *r;

	if (first >= DOMID_FIRST_RESERVED || max == 0)
		return 0;
	r = this_reader();
	if (!r) {
		errno = ENOMEM;
		return -1;
	}
	if (current(r) < 0)
		return -1;
	return copy(r, first, max, out);
}
