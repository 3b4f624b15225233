/*
 * xenmux bench: the bare host's probe, a watcher of `@releaseDomain` that does nothing but
 * stamp each firing: the floor under every watcher's latency and the least a watcher costs.
 *
 * One thread and one socket speaking the xenstore wire itself (the header and XS_WATCH of
 * xen/include/public/io/xs_wire.h), on the xenstored at $XENSTORED_PATH: libxenstore's
 * reader thread would hand each event to the main thread through a pipe, two wake-ups per
 * firing where the floor has one.
 *
 *   usage: probe RESULTS
 *
 * One line per event appended to RESULTS with a single write(), as the monitors write:
 *
 *   R 0 <ns> 1        the watch's initial firing: registered
 *   fire 0 <ns> <n>   every later firing (n counts them, the initial one included)
 *   F 0 <firings> 0   at exit (SIGTERM)
 *   X 0 <errno> <where> failure
 *
 * <ns> is CLOCK_MONOTONIC when the event was read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define XS_WATCH 4
#define XS_ERROR 16
#define XS_WATCH_EVENT 15
#define XS_PAYLOAD_MAX 4096
#define TOKEN "probe"

struct xs_header {
	uint32_t type, req_id, tx_id, len;
};

static int results = -1;
static volatile sig_atomic_t stopping;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void line(const char *kind, unsigned long long a, unsigned long long b)
{
	char buf[96];
	int n = snprintf(buf, sizeof(buf), "%s 0 %llu %llu\n", kind, a, b);

	/* One write() per line on an O_APPEND file: lines of many processes never mix. */
	if (write(results, buf, (size_t)n) != n)
		_exit(3);
}

static void fail(const char *where)
{
	char buf[96];
	int n = snprintf(buf, sizeof(buf), "X 0 %d %s\n", errno, where);

	if (results >= 0 && write(results, buf, (size_t)n) != n)
		_exit(4);
	_exit(2);
}

static void on_stop(int sig)
{
	(void)sig;
	stopping = 1;
}

static int connect_xenstored(void)
{
	const char *path = getenv("XENSTORED_PATH");
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int fd;

	if (!path || strlen(path) >= sizeof(addr.sun_path)) {
		errno = EINVAL;
		fail("XENSTORED_PATH");
	}
	strcpy(addr.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		fail("connect");
	return fd;
}

static void send_watch(int fd)
{
	static const char payload[] = "@releaseDomain\0" TOKEN; /* and the array's own NUL */
	unsigned char msg[sizeof(struct xs_header) + sizeof(payload)];
	struct xs_header h = {XS_WATCH, 1, 0, sizeof(payload)};

	memcpy(msg, &h, sizeof(h));
	memcpy(msg + sizeof(h), payload, sizeof(payload));
	if (write(fd, msg, sizeof(msg)) != (ssize_t)sizeof(msg))
		fail("write-watch");
}

int main(int argc, char **argv)
{
	static unsigned char buf[1 << 16];
	struct sigaction sa = {.sa_handler = on_stop}; /* no SA_RESTART: read() returns EINTR */
	unsigned long long firings = 0;
	size_t have = 0;
	int fd;

	if (argc != 2) {
		fprintf(stderr, "usage: probe RESULTS\n");
		return 2;
	}
	results = open(argv[1], O_WRONLY | O_APPEND | O_CLOEXEC);
	if (results < 0)
		return 2;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	fd = connect_xenstored();
	send_watch(fd);

	while (!stopping) {
		ssize_t got = read(fd, buf + have, sizeof(buf) - have);
		size_t pos = 0;
		uint64_t t;

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			errno = got < 0 ? errno : EPIPE;
			fail("read");
		}
		t = now_ns();
		have += (size_t)got;
		while (have - pos >= sizeof(struct xs_header)) {
			struct xs_header h;

			memcpy(&h, buf + pos, sizeof(h));
			if (h.len > XS_PAYLOAD_MAX) {
				errno = EPROTO;
				fail("frame");
			}
			if (have - pos < sizeof(h) + h.len)
				break;
			if (h.type == XS_ERROR) {
				errno = EPROTO;
				fail("watch-refused");
			}
			if (h.type == XS_WATCH_EVENT) {
				firings++;
				/* The first event is the watch's own initial one: ready. */
				line(firings == 1 ? "R" : "fire", t, firings);
			}
			pos += sizeof(h) + h.len;
		}
		memmove(buf, buf + pos, have - pos);
		have -= pos;
	}
	line("F", firings, 0);
	return 0;
}
