/*
 * xenmux bench: the lean subscriber of the mux model.
 *
 * Connects to the daemon's Unix socket, subscribes to its domid(s) with one NDJSON request
 * (docs/protocol.md) and stamps the receipt of every event frame with CLOCK_MONOTONIC.
 * Normally one process holds one connection for one domid (the process model of the `xl`
 * monitors); with --per-conn G the domids are spread over connections of G domids each,
 * all held by this one process (for the sizes where a process per domain cannot be had).
 *
 *   usage: subscriber SOCKET RESULTS [--new] [--per-conn G] [--follow [--mode latest]]
 *                     DOMID...|*
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
 *
 * --follow (the chaos runner's subscriber, docs/chaos.md) keeps each connection's stream
 * across daemon restarts: after the daemon closes or dies the connection reconnects with
 * backoff (50 ms doubling to 1 s, jittered) and resubscribes with `"since"` (the seq of the
 * last frame it got) and `"history"` (docs/protocol.md), then asks `hello` for the journal's
 * `oldest_seq`. A reply with `"gap": true` is recorded and its snapshot taken as the new
 * truth. `--mode latest` subscribes in the coalescing mode; `*` as the only domid watches
 * every domain. Results then have a second format, one line per thing seen, the JSON as the
 * daemon sent it:
 *
 *   Q <conn> <ns> <request>      a subscribe request sent on connection <conn> (0, 1, ...)
 *   J <conn> <ns> <line>         a line received: replies, event frames, overflow
 *   G <conn> <ns> <seq>          that reply said "gap": the journal no longer had our cursor
 *   E <conn> <ns> <errno>        the connection was lost (0: closed by the daemon)
 *   F <conns> <frames> <reconnects>   at exit (SIGTERM)
 *   X <conn> <errno> <where>     failure
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
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUF0 4096

/* What a connection has received and not yet split into lines. */
struct linebuf {
	size_t len, cap;
	char *buf;
};

struct conn {
	int fd;
	int ready;
	unsigned first; /* the first domid (names the connection in R/E lines) */
	unsigned *domids;
	unsigned ndomids;
	struct linebuf in;
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

typedef int (*line_fn)(void *ctx, const char *s, const char *end, uint64_t t);

/*
 * Read what the socket has and hand each complete line to fn (a line that does not fit
 * grows the buffer: only a subscribe reply, its snapshot, is long). Returns 1 when data
 * was handled, 0 when there was none (EAGAIN), -1 when the connection is over: *err is the
 * errno, 0 at EOF, or what fn returned to stop.
 */
static int read_lines(int fd, struct linebuf *in, unsigned who, line_fn fn, void *ctx,
		      uint64_t *t, int *err)
{
	size_t start = 0;
	ssize_t got;
	int stop = 0;

	if (in->len == in->cap) {
		in->cap = in->cap ? in->cap * 2 : BUF0;
		in->buf = realloc(in->buf, in->cap);
		if (!in->buf)
			fail(who, "realloc");
	}
	got = read(fd, in->buf + in->len, in->cap - in->len);
	*t = now_ns();
	if (got < 0 && (errno == EINTR || errno == EAGAIN))
		return 0;
	if (got <= 0) {
		*err = got < 0 ? errno : 0;
		return -1;
	}
	in->len += (size_t)got;
	while (!stop) {
		char *nl = memchr(in->buf + start, '\n', in->len - start);

		if (!nl)
			break;
		stop = fn(ctx, in->buf + start, nl, *t);
		start = (size_t)(nl - in->buf) + 1;
	}
	if (stop) {
		*err = stop;
		return -1;
	}
	memmove(in->buf, in->buf + start, in->len - start);
	in->len -= start;
	return 1;
}

/* SIGTERM/SIGINT through a signalfd registered (data NULL) in a new epoll set. */
static int event_loop(unsigned who)
{
	struct epoll_event ev;
	sigset_t mask;
	int ep, sfd;

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (sfd < 0 || ep < 0)
		fail(who, "setup");
	ev.events = EPOLLIN;
	ev.data.ptr = NULL;
	epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
	return ep;
}

static int announce_new; /* --new */

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

static int on_line(void *ctx, const char *s, const char *end, uint64_t t)
{
	struct conn *c = ctx;
	const char *ev, *q;

	if (end - s >= 5 && memcmp(s, "{\"id\"", 5) == 0) {
		if (!c->ready)
			on_reply(c, s, end, t, announce_new);
		return 0;
	}
	ev = after_key(s, end, "\"event\"");
	if (!ev || *ev != '"')
		return 0;
	ev++;
	q = memchr(ev, '"', (size_t)(end - ev));
	if (!q)
		return 0;
	frames++;
	emit(ev, (size_t)(q - ev), (unsigned)int_after(s, end, "\"domid\"", c->first), t,
	     int_after(s, end, "\"seq\"", -1));
	return 0;
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

/* --follow --------------------------------------------------------------------------- */

#define BACKOFF_MIN_NS 50000000ull
#define BACKOFF_MAX_NS 1000000000ull
#define HISTORY_MAX 80

struct follower {
	int fd;
	unsigned idx;
	unsigned *domids; /* NULL: every domain ("*") */
	unsigned ndomids;
	long long cursor; /* seq of the last frame received; -1 before the first reply */
	char history[HISTORY_MAX]; /* "" until a reply names one */
	uint64_t due; /* when to (re)connect while fd < 0 */
	uint64_t backoff;
	struct linebuf in;
};

static struct sockaddr_un follow_addr;
static int follow_latest;
static unsigned long long reconnects;
static uint64_t jitter_state;

/* One results line of the second format: TAG CONN NS DATA (DATA as received). */
static void emit_raw(char tag, unsigned idx, uint64_t t, const char *data, size_t len)
{
	char head[64];
	int n = snprintf(head, sizeof(head), "%c %u %llu ", tag, idx, (unsigned long long)t);
	struct iovec iov[3] = {
		{ head, (size_t)n }, { (void *)data, len }, { (void *)"\n", 1 }
	};

	if (writev(results, iov, 3) != (ssize_t)((size_t)n + len + 1))
		_exit(3);
}

static void emit_num(char tag, unsigned idx, uint64_t t, long long v)
{
	char num[32];
	int n = snprintf(num, sizeof(num), "%lld", v);

	emit_raw(tag, idx, t, num, (size_t)n);
}

/* 1 when the value after `key` is the JSON literal true. */
static int is_true(const char *s, const char *end, const char *key)
{
	const char *p = after_key(s, end, key);

	return p && end - p >= 4 && memcmp(p, "true", 4) == 0;
}

/* Copy the string value after `key` (no escapes: history ids are hex) into out. */
static int string_after(const char *s, const char *end, const char *key, char *out, size_t cap)
{
	const char *p = after_key(s, end, key), *q;

	if (!p || p >= end || *p != '"')
		return 0;
	p++;
	q = memchr(p, '"', (size_t)(end - p));
	if (!q || (size_t)(q - p) >= cap)
		return 0;
	memcpy(out, p, (size_t)(q - p));
	out[q - p] = 0;
	return 1;
}

static void schedule(struct follower *f, uint64_t now)
{
	uint64_t span;

	jitter_state ^= jitter_state << 13;
	jitter_state ^= jitter_state >> 7;
	jitter_state ^= jitter_state << 17;
	span = f->backoff / 2 + jitter_state % (f->backoff + 1); /* 0.5 to 1.5 backoffs */
	f->due = now + span;
	f->backoff = f->backoff * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : f->backoff * 2;
}

static void lost(struct follower *f, int ep, int err, uint64_t now)
{
	emit_num('E', f->idx, now, err);
	epoll_ctl(ep, EPOLL_CTL_DEL, f->fd, NULL);
	close(f->fd);
	f->fd = -1;
	f->in.len = 0;
	reconnects++;
	schedule(f, now);
}

static void follow_connect(struct follower *f, int ep, uint64_t now)
{
	size_t cap = 256 + (size_t)f->ndomids * 7, n = 0, off;
	struct epoll_event ev;
	char *req;
	unsigned i;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	if (fd < 0)
		fail(f->idx, "socket");
	if (connect(fd, (struct sockaddr *)&follow_addr, sizeof(follow_addr)) < 0) {
		/* Not there (restarting), refused (stale socket), backlog full: later. */
		close(fd);
		schedule(f, now);
		return;
	}
	req = malloc(cap);
	if (!req)
		fail(f->idx, "malloc");
	n += (size_t)snprintf(req + n, cap - n, "{\"op\":\"subscribe\",\"id\":1,\"domids\":");
	if (!f->domids) {
		n += (size_t)snprintf(req + n, cap - n, "\"*\"");
	} else {
		for (i = 0; i < f->ndomids; i++)
			n += (size_t)snprintf(req + n, cap - n, "%c%u", i ? ',' : '[', f->domids[i]);
		n += (size_t)snprintf(req + n, cap - n, "]");
	}
	if (follow_latest)
		n += (size_t)snprintf(req + n, cap - n, ",\"mode\":\"latest\"");
	if (f->cursor >= 0) {
		n += (size_t)snprintf(req + n, cap - n, ",\"since\":%lld", f->cursor);
		if (f->history[0])
			n += (size_t)snprintf(req + n, cap - n, ",\"history\":\"%s\"", f->history);
	}
	n += (size_t)snprintf(req + n, cap - n, "}");
	emit_raw('Q', f->idx, now, req, n);
	n += (size_t)snprintf(req + n, cap - n, "\n{\"op\":\"hello\",\"id\":2}\n");
	for (off = 0; off < n;) {
		ssize_t w = write(fd, req + off, n - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	free(req);
	f->fd = fd;
	ev.events = EPOLLIN;
	ev.data.ptr = f;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		fail(f->idx, "epoll_ctl");
	if (off < n)
		lost(f, ep, errno ? errno : EPIPE, now);
}

/* Returns 0, or an errno when the connection must be given up. */
static int follow_line(void *ctx, const char *s, const char *end, uint64_t t)
{
	struct follower *f = ctx;
	const char *ev;

	emit_raw('J', f->idx, t, s, (size_t)(end - s));
	if (end - s >= 5 && memcmp(s, "{\"id\"", 5) == 0) {
		long long seq;

		if (int_after(s, end, "\"id\"", 0) != 1)
			return 0; /* hello: only recorded */
		if (!is_true(s, end, "\"ok\"")) {
			const char *code = after_key(s, end, "\"code\"");

			if (code && end - code > 12 && memcmp(code, "\"bad-cursor\"", 12) == 0) {
				f->cursor = -1; /* the next subscribe relists */
				f->history[0] = 0;
			}
			return EPROTO;
		}
		seq = int_after(s, end, "\"seq\"", -1);
		if (is_true(s, end, "\"gap\"")) {
			emit_num('G', f->idx, t, seq);
			f->cursor = seq;
		} else if (!after_key(s, end, "\"since\"")) {
			f->cursor = seq; /* a snapshot: the stream starts after it */
		} /* else: the replay of (since, seq] follows and moves the cursor */
		string_after(s, end, "\"history\"", f->history, sizeof(f->history));
		f->backoff = BACKOFF_MIN_NS;
		return 0;
	}
	ev = after_key(s, end, "\"event\"");
	if (ev) {
		long long seq = int_after(s, end, "\"seq\"", -1);

		frames++;
		/* An overflow frame names the last seq we were due, not one we got. */
		if (!(end - ev >= 10 && memcmp(ev, "\"overflow\"", 10) == 0) && seq > f->cursor)
			f->cursor = seq;
	}
	return 0;
}

static int follow_main(const char *sock_path, unsigned *domids, unsigned ndomids,
		       unsigned per_conn, int wild)
{
	unsigned nconns = wild ? 1 : (ndomids + per_conn - 1) / per_conn, i;
	struct follower *fs = calloc(nconns, sizeof(*fs));
	struct epoll_event evs[64];
	int ep;

	if (!fs)
		fail(0, "calloc");
	memset(&follow_addr, 0, sizeof(follow_addr));
	follow_addr.sun_family = AF_UNIX;
	if (strlen(sock_path) >= sizeof(follow_addr.sun_path)) {
		errno = ENAMETOOLONG;
		fail(0, "socket-path");
	}
	strcpy(follow_addr.sun_path, sock_path);
	jitter_state = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull | 1;
	ep = event_loop(0);

	for (i = 0; i < nconns; i++) {
		struct follower *f = &fs[i];

		f->fd = -1;
		f->idx = i;
		if (!wild) {
			f->domids = domids + (size_t)i * per_conn;
			f->ndomids = (i + 1 == nconns) ? ndomids - i * per_conn : per_conn;
		}
		f->cursor = -1;
		f->backoff = BACKOFF_MIN_NS;
	}

	for (;;) {
		uint64_t now = now_ns(), next = 0;
		int timeout = -1, n, k;

		for (i = 0; i < nconns; i++) {
			struct follower *f = &fs[i];

			if (f->fd >= 0)
				continue;
			if (f->due <= now)
				follow_connect(f, ep, now);
			if (f->fd < 0 && (!next || f->due < next))
				next = f->due;
		}
		if (next)
			timeout = next > now ? (int)((next - now) / 1000000u) + 1 : 0;
		n = epoll_wait(ep, evs, 64, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fail(0, "epoll_wait");
		}
		for (k = 0; k < n; k++) {
			struct follower *f = evs[k].data.ptr;
			uint64_t t;
			int err = 0;

			if (!f)
				goto out;
			if (f->fd < 0)
				continue; /* lost earlier in this batch */
			if (read_lines(f->fd, &f->in, f->idx, follow_line, f, &t, &err) < 0)
				lost(f, ep, err, t);
		}
	}
out:
	{
		char line[96];
		int n = snprintf(line, sizeof(line), "F %u %llu %llu\n", nconns, frames, reconnects);

		if (write(results, line, (size_t)n) != n)
			return 3;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *sock_path, *res_path;
	unsigned *domids, ndomids = 0, per_conn = 0, nconns, i, open_conns;
	int ep, a, follow = 0, wild = 0;
	struct conn *conns;
	struct epoll_event ev, evs[64];

	if (argc < 4) {
		fprintf(stderr, "usage: subscriber SOCKET RESULTS [--new] [--per-conn G] "
				"[--follow [--mode latest]] DOMID...|*\n");
		return 2;
	}
	sock_path = argv[1];
	res_path = argv[2];
	domids = calloc((size_t)argc, sizeof(*domids));
	if (!domids)
		return 2;
	for (a = 3; a < argc; a++) {
		if (strcmp(argv[a], "--new") == 0)
			announce_new = 1;
		else if (strcmp(argv[a], "--per-conn") == 0 && a + 1 < argc)
			per_conn = (unsigned)strtoul(argv[++a], NULL, 10);
		else if (strcmp(argv[a], "--follow") == 0)
			follow = 1;
		else if (strcmp(argv[a], "--mode") == 0 && a + 1 < argc)
			follow_latest = strcmp(argv[++a], "latest") == 0;
		else if (strcmp(argv[a], "*") == 0)
			wild = 1;
		else
			domids[ndomids++] = (unsigned)strtoul(argv[a], NULL, 10);
	}
	if ((wild ? ndomids || !follow : !ndomids) || (follow_latest && !follow))
		return 2; /* "*" alone, and it and --mode only with --follow */
	if (!per_conn || per_conn > ndomids)
		per_conn = ndomids;
	results = open(res_path, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (results < 0)
		return 2;
	if (follow)
		return follow_main(sock_path, domids, ndomids, per_conn, wild);

	ep = event_loop(domids[0]);

	nconns = (ndomids + per_conn - 1) / per_conn;
	conns = calloc(nconns, sizeof(*conns));
	if (!conns)
		fail(domids[0], "calloc");
	for (i = 0; i < nconns; i++) {
		struct conn *c = &conns[i];

		c->domids = domids + (size_t)i * per_conn;
		c->ndomids = (i + 1 == nconns) ? ndomids - i * per_conn : per_conn;
		c->first = c->domids[0];
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
			uint64_t t;
			int err;

			if (!c)
				goto out;
			if (read_lines(c->fd, &c->in, c->first, on_line, c, &t, &err) >= 0)
				continue;
			emit("E", 1, c->first, t, 0);
			epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
			close(c->fd);
			c->fd = -1;
			if (--open_conns == 0)
				goto out;
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
