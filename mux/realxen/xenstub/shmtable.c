/* Seqlocked reader of DIR/domains.shm. See shmtable.h and docs/internals.md. */
#define _GNU_SOURCE
#include "shmtable.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(xc_domaininfo_t) == 112, "xc_domaininfo_t is not 112 bytes");

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static const unsigned char *map;
static size_t map_len;
static dev_t map_dev;
static ino_t map_ino;

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

/* (Re)map the table when it first appears or was replaced or resized. Called locked. */
static int remap(void)
{
	const char *path = getenv(SHM_ENV);
	struct stat st;
	void *p;
	int fd;

	if (!path || !*path) {
		stub_warn("%s is not set: no domain table", SHM_ENV);
		errno = ENOENT;
		return -1;
	}
	if (stat(path, &st) < 0)
		return -1;
	if (map && st.st_dev == map_dev && st.st_ino == map_ino && (size_t)st.st_size == map_len)
		return 0;
	if (map) {
		munmap((void *)map, map_len);
		map = NULL;
	}
	if ((size_t)st.st_size < SHM_HEADER) {
		errno = EIO;
		return -1;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return -1;
	map = p;
	map_len = st.st_size;
	map_dev = st.st_dev;
	map_ino = st.st_ino;
	return 0;
}

static uint32_t u32_at(size_t off)
{
	return __atomic_load_n((const uint32_t *)(map + off), __ATOMIC_RELAXED);
}

static uint64_t seq_now(void)
{
	return __atomic_load_n((const uint64_t *)(map + SHM_OFF_SEQ), __ATOMIC_ACQUIRE);
}

static uint16_t domid_at(uint32_t i)
{
	return __atomic_load_n((const uint16_t *)(map + SHM_HEADER + (size_t)i * 112),
			       __ATOMIC_RELAXED);
}

static int copy_locked(uint32_t first, unsigned int max, xc_domaininfo_t *out)
{
	struct timespec start, now, nap = { 0, 50000 };
	uint32_t capacity, count, lo, hi, n;
	uint64_t s1, s2;

	if (memcmp(map, SHM_MAGIC, 8) || u32_at(8) != SHM_VERSION || u32_at(12) != 112) {
		stub_warn("%s is not a version %d table of 112-byte records", getenv(SHM_ENV),
			  SHM_VERSION);
		errno = EIO;
		return -1;
	}
	capacity = u32_at(16);
	if (SHM_HEADER + (size_t)capacity * 112 > map_len) {
		errno = EIO;
		return -1;
	}
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		s1 = seq_now();
		if (!(s1 & 1)) {
			count = u32_at(20);
			if (count > capacity)
				count = capacity;
			/* first record with domid >= first */
			lo = 0;
			hi = count;
			while (lo < hi) {
				uint32_t mid = lo + (hi - lo) / 2;
				if (domid_at(mid) < first)
					lo = mid + 1;
				else
					hi = mid;
			}
			n = count - lo;
			if (n > max)
				n = max;
			memcpy(out, map + SHM_HEADER + (size_t)lo * 112, (size_t)n * 112);
			__atomic_thread_fence(__ATOMIC_ACQUIRE);
			s2 = seq_now();
			if (s1 == s2)
				return (int)n;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - start.tv_sec > 2) {
			stub_warn("the table's seqlock stayed busy for 2 s");
			errno = EAGAIN;
			return -1;
		}
		if (s1 & 1)
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
	rc = remap();
	if (rc == 0)
		rc = copy_locked(first, max, out);
	pthread_mutex_unlock(&lock);
	return rc;
}
