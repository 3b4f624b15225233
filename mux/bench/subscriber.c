/*
 * xenmux bench: the lean subscriber of the mux model.
 *
 * Connects to the daemon's Unix socket, subscribes to its domid(s) with one NDJSON request
 * (docs/protocol.md) and stamps the receipt of every event frame with CLOCK_MONOTONIC.
 * Normally one process holds one connection for one domid (the process model of the `xl`
 * monitors); with --per-conn G the domids are spread over connections of G domids each,
 * all held by this one process (for the sizes where a process per domain cannot be had).
 *
 *   usage: subscriber SOCKET RESULTS [--new] [--per-conn G] DOMID...
 *
 * Each notification is one line appended to RESULTS with a single write():
 *
 *   R <domid> <ns> <present>     ready: the subscribe reply arrived (one per connection,
 *                                 naming the connection's first domid)
 *   new <domid> <ns> 0           the domid is in the snapshot (only with --new)
 *   <event> <domid> <ns> <seq>   an event frame: new shutdown resumed death released
 *   overflow <domid> <ns> <seq>  the daemon cut this connection off
 *   E <domid> <ns> 0             the daemon closed the connection
 *   F <domid> <frames> <conns>   at exit (SIGTERM)
 *   X <domid> <errno> <where>    failure
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUF0 4096

struct conn {
	int fd;
	int ready;
	unsigned first; /* the first domid (names the connection in R/E lines) */
	unsigned *domids;
	unsigned ndomids;
	size_t len, cap;
	char *buf;
};

static int results = -1;
static unsigned long long frames;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void emit(const char *kind, size_t kind_len, unsigned domid, uint64_t t, long long v)
{
	char line[128];
	int n = snprintf(line, sizeof(line), "%.*s %u %llu %lld\n", (int)kind_len, kind, domid,
			 (unsigned long long)t, v);

	if (write(results, line, (size_t)n) != n)
		_exit(3);
}

static void fail(unsigned domid, const char *where)
{
	char line[96];
	int n = snprintf(line, sizeof(line), "X %u %d %s\n", domid, errno, where);

	if (results >= 0 && write(results, line, (size_t)n) != n)
		_exit(4);
	_exit(2);
}

/* The value after `"key":` (spaces allowed), or NULL. */
static const char *after_key(const char *s, const char *end, const char *key)
{
	size_t klen = strlen(key);
	const char *p = s;

	while ((p = memmem(p, (size_t)(end - p), key, klen)) != NULL) {
		p += klen;
		while (p < end && *p == ' ')
			p++;
		if (p < end && *p == ':') {
			p++;
			while (p < end && *p == ' ')
				p++;
			return p;
		}
	}
	return NULL;
}

static long long int_after(const char *s, const char *end, const char *key, long long dflt)
{
	const char *p = after_key(s, end, key);
	long long v = 0;
	int any = 0;

	if (!p)
		return dflt;
	while (p < end && *p >= '0' && *p <= '9') {
		v = v * 10 + (*p++ - '0');
		any = 1;
	}
	return any ? v : dflt;
}

/* The subscribe reply: which of our domids are present (not in "absent"). */
static void on_reply(struct conn *c, const char *s, const char *end, uint64_t t, int announce)
{
	const char *p = after_key(s, end, "\"absent\"");
	unsigned char *absent = calloc(c->ndomids ? c->ndomids : 1, 1);
	unsigned present = 0, i;

	if (!absent)
		fail(c->first, "calloc");
	if (!after_key(s, end, "\"ok\"") || !memmem(s, (size_t)(end - s), "true", 4)) {
		errno = EPROTO;
		fail(c->first, "subscribe-refused");
	}
	if (p && *p == '[') {
		p++;
		while (p < end && *p != ']') {
			unsigned v = 0;

			while (p < end && (*p == ' ' || *p == ','))
				p++;
			if (p >= end || *p < '0' || *p > '9')
				break;
			while (p < end && *p >= '0' && *p <= '9')
				v = v * 10 + (unsigned)(*p++ - '0');
			for (i = 0; i < c->ndomids; i++)
				if (c->domids[i] == v)
					absent[i] = 1;
		}
	}
	for (i = 0; i < c->ndomids; i++)
		present += !absent[i];
	emit("R", 1, c->first, t, present);
	if (announce)
		for (i = 0; i < c->ndomids; i++)
			if (!absent[i])
				emit("new", 3, c->domids[i], t, 0);
	free(absent);
	c->ready = 1;
}

static void on_line(struct conn *c, const char *s, const char *end, uint64_t t, int announce)
{
	const char *ev, *q;

	if (end - s >= 5 && memcmp(s, "{\"id\"", 5) == 0) {
		if (!c->ready)
			on_reply(c, s, end, t, announce);
		return;
	}
	ev = after_key(s, end, "\"event\"");
	if (!ev || *ev != '"')
		return;
	ev++;
	q = memchr(ev, '"', (size_t)(end - ev));
	if (!q)
		return;
	frames++;
	emit(ev, (size_t)(q - ev), (unsigned)int_after(s, end, "\"domid\"", c->first), t,
	     int_after(s, end, "\"seq\"", -1));
}

static int connect_to(const char *path, unsigned first)
{
	struct sockaddr_un sa;
	int fd, tries;

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		errno = ENAMETOOLONG;
		fail(first, "socket-path");
	}
	strcpy(sa.sun_path, path);
	for (tries = 0;; tries++) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			fail(first, "socket");
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		close(fd);
		/* A full listen backlog (thousands connecting at once): try again shortly. */
		if ((errno != EAGAIN && errno != ECONNREFUSED) || tries > 2000)
			fail(first, "connect");
		usleep(1000);
	}
}

static void send_subscribe(struct conn *c)
{
	size_t cap = 64 + (size_t)c->ndomids * 7, n;
	char *req = malloc(cap);
	unsigned i;

	if (!req)
		fail(c->first, "malloc");
	n = (size_t)snprintf(req, cap, "{\"op\":\"subscribe\",\"id\":1,\"domids\":[");
	for (i = 0; i < c->ndomids; i++)
		n += (size_t)snprintf(req + n, cap - n, "%s%u", i ? "," : "", c->domids[i]);
	n += (size_t)snprintf(req + n, cap - n, "]}\n");
	for (size_t off = 0; off < n;) {
		ssize_t w = write(c->fd, req + off, n - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			fail(c->first, "send");
		off += (size_t)w;
	}
	free(req);
}

int main(int argc, char **argv)
{
	const char *sock_path, *res_path;
	unsigned *domids, ndomids = 0, per_conn = 0, nconns, i, open_conns;
	int announce = 0, ep, sfd, a;
	struct conn *conns;
	struct epoll_event ev, evs[64];
	sigset_t mask;

	if (argc < 4) {
		fprintf(stderr, "usage: subscriber SOCKET RESULTS [--new] [--per-conn G] DOMID...\n");
		return 2;
	}
	sock_path = argv[1];
	res_path = argv[2];
	domids = calloc((size_t)argc, sizeof(*domids));
	if (!domids)
		return 2;
	for (a = 3; a < argc; a++) {
		if (strcmp(argv[a], "--new") == 0)
			announce = 1;
		else if (strcmp(argv[a], "--per-conn") == 0 && a + 1 < argc)
			per_conn = (unsigned)strtoul(argv[++a], NULL, 10);
		else
			domids[ndomids++] = (unsigned)strtoul(argv[a], NULL, 10);
	}
	if (!ndomids)
		return 2;
	if (!per_conn || per_conn > ndomids)
		per_conn = ndomids;
	results = open(res_path, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (results < 0)
		return 2;

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (sfd < 0 || ep < 0)
		fail(domids[0], "setup");
	ev.events = EPOLLIN;
	ev.data.ptr = NULL;
	epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);

	nconns = (ndomids + per_conn - 1) / per_conn;
	conns = calloc(nconns, sizeof(*conns));
	if (!conns)
		fail(domids[0], "calloc");
	for (i = 0; i < nconns; i++) {
		struct conn *c = &conns[i];

		c->domids = domids + (size_t)i * per_conn;
		c->ndomids = (i + 1 == nconns) ? ndomids - i * per_conn : per_conn;
		c->first = c->domids[0];
		c->cap = BUF0;
		c->buf = malloc(c->cap);
		if (!c->buf)
			fail(c->first, "malloc");
		c->fd = connect_to(sock_path, c->first);
		send_subscribe(c);
		ev.events = EPOLLIN;
		ev.data.ptr = c;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
			fail(c->first, "epoll_ctl");
	}
	open_conns = nconns;

	for (;;) {
		int n = epoll_wait(ep, evs, 64, -1), k;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			fail(domids[0], "epoll_wait");
		}
		for (k = 0; k < n; k++) {
			struct conn *c = evs[k].data.ptr;
			ssize_t got;
			uint64_t t;
			size_t start = 0;

			if (!c)
				goto out;
			if (c->len == c->cap) {
				/* Only a subscribe reply (its snapshot) can be this long. */
				c->cap *= 2;
				c->buf = realloc(c->buf, c->cap);
				if (!c->buf)
					fail(c->first, "realloc");
			}
			got = read(c->fd, c->buf + c->len, c->cap - c->len);
			t = now_ns();
			if (got < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (got <= 0) {
				emit("E", 1, c->first, t, 0);
				epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
				close(c->fd);
				c->fd = -1;
				if (--open_conns == 0)
					goto out;
				continue;
			}
			c->len += (size_t)got;
			for (;;) {
				char *nl = memchr(c->buf + start, '\n', c->len - start);

				if (!nl)
					break;
				on_line(c, c->buf + start, nl, t, announce);
				start = (size_t)(nl - c->buf) + 1;
			}
			if (start) {
				memmove(c->buf, c->buf + start, c->len - start);
				c->len -= start;
			}
		}
	}
out:
	{
		char line[96];
		int n = snprintf(line, sizeof(line), "F %u %llu %u\n", domids[0], frames, nconns);

		if (write(results, line, (size_t)n) != n)
			return 3;
	}
	return 0;
}
