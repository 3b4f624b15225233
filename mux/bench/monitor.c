/*
 * xenmux bench: one domain's monitor in the model `xl` uses today.
 *
 * One process per domain, each with its own xenstore connection (Debian's libxenstore:
 * xs_open, xs_watch, xs_fileno, xs_read_watch) and its own `@releaseDomain` watch. On every
 * firing it queries its domain, as libxl's death watch does: the domain-info call here is
 * the simulated host's shared-memory table (docs/internals.md), read the way
 * xc_domain_getinfolist(domid, 1) answers: the first record with a domid at or above ours,
 * copied under the seqlock, then checked for being ours.
 *
 *   usage: monitor SHM RESULTS DOMID [--new]
 *
 * The xenstored is the one libxenstore finds: $XENSTORED_PATH, as for every libxenstore
 * client. Each notification is one line appended to RESULTS with a single write():
 *
 *   R <domid> <ns> <state>       ready: watch registered and the domain queried once
 *   new <domid> <ns> 0           first seen (only with --new: started after its creation)
 *   shutdown <domid> <ns> <code> shutdown flag newly set, or its reason changed
 *   resumed <domid> <ns> 0       shutdown flag cleared
 *   death <domid> <ns> 0         dying, gone, or another incarnation (then the watch goes)
 *   F <domid> <firings> <queries> at exit (SIGTERM)
 *   X <domid> <errno> <where>    failure
 *
 * <ns> is CLOCK_MONOTONIC when the query that saw the change returned: the moment this
 * process knows. The harness compares it with the stamp the sim wrote when it applied the
 * change.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenstore.h>

#include "shm_layout.h" /* mux/sim: the table's layout and its seqlocked read */

#define TOKEN "xl-death"

_Static_assert(sizeof(xc_domaininfo_t) == XM_RECORD_SIZE, "xc_domaininfo_t is not XM_RECORD_SIZE");

enum state { UNKNOWN, RUNNING, SHUTDOWN, DEAD };

static const unsigned char *table;
static size_t table_len;
static int results = -1;
static unsigned domid;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void emit(const char *kind, uint64_t a, long long b)
{
	char line[96];
	int n = snprintf(line, sizeof(line), "%s %u %llu %lld\n", kind, domid,
			 (unsigned long long)a, b);

	/* One write() per line on an O_APPEND file: lines of many processes never mix. */
	if (write(results, line, (size_t)n) != n)
		_exit(3);
}

static void fail(const char *where)
{
	char line[96];
	int n = snprintf(line, sizeof(line), "X %u %d %s\n", domid, errno, where);

	if (results >= 0 && write(results, line, (size_t)n) != n)
		_exit(4);
	_exit(2);
}

static void map_table(const char *path)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	void *p;

	if (fd < 0 || fstat(fd, &st) < 0)
		fail("open-shm");
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		fail("mmap-shm");
	table = p;
	table_len = (size_t)st.st_size;
	if (table_len < XM_SHM_HEADER_SIZE ||
	    memcmp(table + XM_SHM_OFF_MAGIC, XM_SHM_MAGIC, XM_SHM_MAGIC_SIZE) != 0) {
		errno = EINVAL;
		fail("bad-shm");
	}
}

static uint32_t u32_at(size_t off)
{
	return __atomic_load_n((const uint32_t *)(table + off), __ATOMIC_RELAXED);
}

/*
 * The stand-in for xc_domain_getinfolist(xch, first, 1, info): the first domain with
 * domid >= first. Returns 1 with *info filled, 0 when there is none.
 */
static int getinfo_one(unsigned first, xc_domaininfo_t *info)
{
	uint32_t capacity = u32_at(XM_SHM_OFF_CAPACITY);
	long n;

	if (XM_SHM_OFF_RECORDS + (size_t)capacity * XM_RECORD_SIZE > table_len)
		capacity = (uint32_t)((table_len - XM_SHM_OFF_RECORDS) / XM_RECORD_SIZE);
	while ((n = xm_shm_try_copy(table, capacity, first, 1, (unsigned char *)info)) < 0)
		xm_cpu_relax(); /* the sim is inside a change: it takes microseconds */
	return (int)n;
}

int main(int argc, char **argv)
{
	struct xs_handle *xsh;
	struct pollfd fds[2];
	enum state state = UNKNOWN;
	unsigned reason = 255;
	unsigned char handle[16];
	unsigned long long firings = 0, queries = 0;
	int announce_new = 0, sfd;
	sigset_t mask;

	if (argc == 5 && strcmp(argv[4], "--new") == 0)
		announce_new = 1;
	else if (argc != 4) {
		fprintf(stderr, "usage: monitor SHM RESULTS DOMID [--new]\n");
		return 2;
	}
	domid = (unsigned)strtoul(argv[3], NULL, 10);
	results = open(argv[2], O_WRONLY | O_APPEND | O_CLOEXEC);
	if (results < 0)
		return 2;
	map_table(argv[1]);

	/* SIGTERM is taken through a signalfd; libxenstore's reader thread blocks all signals. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sfd < 0)
		fail("signalfd");

	xsh = xs_open(0);
	if (!xsh)
		fail("xs_open");
	/* The watch fires once at once: that first firing is the initial query. */
	if (!xs_watch(xsh, "@releaseDomain", TOKEN))
		fail("xs_watch");
	fds[0].fd = xs_fileno(xsh);
	fds[0].events = POLLIN;
	fds[1].fd = sfd;
	fds[1].events = POLLIN;
	if (fds[0].fd < 0)
		fail("xs_fileno");

	for (;;) {
		unsigned int num;
		char **w;

		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			fail("poll");
		}
		if (fds[1].revents)
			break;
		if (!(fds[0].revents & POLLIN))
			continue;
		/* Readable pipe: an event is queued, so this does not block. Then drain. */
		w = xs_read_watch(xsh, &num);
		while (w) {
			xc_domaininfo_t info;
			int got, dying, shut;
			unsigned code;
			uint64_t t;

			free(w);
			firings++;
			if (state != DEAD) {
				got = getinfo_one(domid, &info);
				t = now_ns();
				queries++;
				if (got && info.domain != domid)
					got = 0; /* the next domain up: ours is gone */
				if (got && state != UNKNOWN && memcmp(info.handle, handle, 16) != 0)
					got = 0; /* another incarnation of the domid */
				dying = got && (info.flags & XEN_DOMINF_dying);
				shut = got && (info.flags & XEN_DOMINF_shutdown);
				code = got ? (info.flags >> XEN_DOMINF_shutdownshift) &
						     XEN_DOMINF_shutdownmask
					   : 255;
				if (state == UNKNOWN) {
					if (!got || dying) {
						emit("R", t, 3);
						emit("death", t, 0);
						state = DEAD;
						xs_unwatch(xsh, "@releaseDomain", TOKEN);
					} else {
						memcpy(handle, info.handle, 16);
						state = shut ? SHUTDOWN : RUNNING;
						reason = shut ? code : 255;
						emit("R", t, state);
						if (announce_new)
							emit("new", t, 0);
					}
				} else if (!got || dying) {
					/* libxl: "dying" or "missing from list": the death event. */
					emit("death", t, 0);
					state = DEAD;
					xs_unwatch(xsh, "@releaseDomain", TOKEN);
				} else if (shut && (state != SHUTDOWN || code != reason)) {
					emit("shutdown", t, code);
					state = SHUTDOWN;
					reason = code;
				} else if (!shut && state == SHUTDOWN) {
					emit("resumed", t, 0);
					state = RUNNING;
					reason = 255;
				}
			}
			w = xs_check_watch(xsh);
		}
		if (errno != EAGAIN && errno != 0 && state != DEAD) {
			/* NULL with another errno: the connection to xenstored is gone. */
			fail("xs_read_watch");
		}
		errno = 0;
	}
	{
		char line[96];
		int n = snprintf(line, sizeof(line), "F %u %llu %llu\n", domid, firings, queries);

		if (write(results, line, (size_t)n) != n)
			return 3;
	}
	/* Like xl's monitor at exit: the handle goes with the process. */
	return 0;
}
