/*
 * xenmux bench: one domain's monitor as `xl create` runs it, on Debian's unchanged libxenlight.
 *
 * xl's monitor (after creating a domain) allocates a libxl context, enables libxl's death
 * watch of its domain (libxl_evenable_domain_death) and waits in libxl_event_wait. libxl
 * keeps one `@releaseDomain` xenstore watch per context and, on every firing, asks the
 * hypervisor about the watched domain with xc_domain_getinfolist(domid, 1): it reports
 * LIBXL_EVENT_TYPE_DOMAIN_SHUTDOWN (with the reason) the first time it sees the shutdown flag,
 * once per watch, and LIBXL_EVENT_TYPE_DOMAIN_DEATH when the domain is dying or gone. This
 * program does just that, exits at DEATH as xl does, and leaves what xl does at a shutdown
 * (destroy it, or exit at a suspend) to the harness's toolstack: it keeps watching.
 *
 * With --act (the acting scenario) it also does what xl's monitor does at a shutdown
 * (tools/xl/xl_vmcontrol.c, handle_domain_death with xl's defaults): at a poweroff, crash or
 * watchdog it has the domain destroyed and exits; at a reboot destroyed and created again
 * with the same name and UUID, and then watches the new domid, as xl's monitor goes back to
 * its start. The simulated host's toolstack carries the action out: the same requests
 * `xenmux act --toolstack sim` sends on the sim's control socket (destroy-incarnations,
 * create), with `by: "xl"` for the sim's toolstack log. A suspend is left alone.
 *
 * It runs under the stand-in libxenctrl (mux/realxen/xenstub/libxenctrl_stub.c, with
 * LD_PRELOAD) that serves the simulated host's domain table ($XENMUX_STUB_SHM), and talks to
 * the xenstored libxenstore finds ($XENSTORED_PATH).
 *
 *   usage: libxl_monitor RESULTS DOMID [--new]
 *          libxl_monitor RESULTS DOMID --act CONTROL_SOCKET UUID NAME
 *
 * Lines appended to RESULTS (one write() each), as monitor.c writes them:
 *
 *   R <domid> <ns> <state>       ready: libxl's watch fired once and it queried the domain
 *                                (state 1 running, 2 shut down, 3 gone)
 *   new <domid> <ns> 0           found at that first query (only with --new)
 *   shutdown <domid> <ns> <code> LIBXL_EVENT_TYPE_DOMAIN_SHUTDOWN and its reason
 *   death <domid> <ns> 0         LIBXL_EVENT_TYPE_DOMAIN_DEATH (then it exits)
 *   F <domid> <firings> <queries> at exit (DEATH or SIGTERM)
 *   acted <domid> <ns> <new>     --act: the action is done (<new>: the new domid, or 0)
 *   X <domid> <errno> <where>    failure
 *
 * <ns> is CLOCK_MONOTONIC when libxl_event_wait handed the event over: the moment xl knows.
 * Firings are counted as libxl's queries: it makes exactly one per firing of its watch while
 * one domain is watched. The count comes from wrapping xc_domain_getinfolist, which this
 * executable exports, so libxenlight's calls reach it before the stand-in's.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
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

#include <libxl.h>
#include <xenctrl.h>
#include <xentoollog.h>

enum { RUNNING = 1, SHUTDOWN = 2, GONE = 3 };

static int results = -1;
static uint32_t domid;
static int announce_new;
static const char *act_socket; /* --act: the sim's control socket, the domain's UUID, name */
static const char *act_uuid;
static const char *act_name;
static unsigned long queries; /* atomic: read by the SIGTERM handler */
static int finished;          /* atomic: the F line was written */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void put_line(const char *line, int n)
{
	/* One write() per line on an O_APPEND file: lines of many processes never mix. */
	if (write(results, line, (size_t)n) != n)
		_exit(3);
}

static void emit(const char *kind, uint64_t a, long long b)
{
	char line[96];
	int n = snprintf(line, sizeof(line), "%s %u %llu %lld\n", kind, domid,
			 (unsigned long long)a, b);

	put_line(line, n);
}

static void fail(const char *where, int err)
{
	char line[96];
	int n = snprintf(line, sizeof(line), "X %u %d %s\n", domid, err, where);

	if (results >= 0)
		put_line(line, n);
	_exit(2);
}

/* Append the decimal digits of v at p; returns the end. Async-signal-safe, unlike printf. */
static char *put_decimal(char *p, unsigned long v)
{
	char digits[24];
	int n = 0;

	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = digits[--n];
	return p;
}

/* The F line, once, whoever ends the process first (DEATH in main, or SIGTERM). */
static void finish(void)
{
	char line[96], *p = line;
	unsigned long q = __atomic_load_n(&queries, __ATOMIC_SEQ_CST);

	if (__atomic_exchange_n(&finished, 1, __ATOMIC_SEQ_CST))
		return;
	*p++ = 'F';
	*p++ = ' ';
	p = put_decimal(p, domid);
	*p++ = ' ';
	p = put_decimal(p, q);
	*p++ = ' ';
	p = put_decimal(p, q);
	*p++ = '\n';
	put_line(line, (int)(p - line));
}

/*
 * Every domain-info call libxenlight makes comes here first, then goes on to the next
 * definition (the stand-in's). The first one is libxl's answer to the initial firing of its
 * watch: the monitor is ready.
 */
__attribute__((visibility("default"))) int xc_domain_getinfolist(xc_interface *xch,
								  uint32_t first_domain,
								  unsigned int max_domains,
								  xc_domaininfo_t *info)
{
	static __typeof__(&xc_domain_getinfolist) next;
	uint64_t t;
	int rc, state;

	if (!next) {
		next = (__typeof__(next))dlsym(RTLD_NEXT, "xc_domain_getinfolist");
		if (!next)
			fail("dlsym-xc_domain_getinfolist", ENOSYS);
	}
	rc = next(xch, first_domain, max_domains, info);
	t = now_ns();
	if (__atomic_add_fetch(&queries, 1, __ATOMIC_SEQ_CST) == 1) {
		if (rc >= 1 && info[0].domain == domid)
			state = (info[0].flags & XEN_DOMINF_shutdown) ? SHUTDOWN : RUNNING;
		else
			state = GONE;
		emit("R", t, state);
		if (announce_new && state != GONE)
			emit("new", t, 0);
	}
	return rc;
}

/* One request on the sim's control socket (a connection per action, as xl runs one libxl
 * call per action); the reply line in `reply`. Exits with an X line if the sim refuses. */
static void sim_request(const char *request, char *reply, size_t size)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	size_t len = strlen(request), got = 0;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		fail("act-socket", errno);
	strncpy(addr.sun_path, act_socket, sizeof(addr.sun_path) - 1);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		fail("act-connect", errno);
	if (write(fd, request, len) != (ssize_t)len)
		fail("act-write", errno);
	while (got + 1 < size) {
		ssize_t n = read(fd, reply + got, size - 1 - got);

		if (n <= 0)
			fail("act-read", n < 0 ? errno : EPIPE);
		got += (size_t)n;
		if (memchr(reply + got - n, '\n', (size_t)n))
			break;
	}
	reply[got] = '\0';
	close(fd);
	if (!strstr(reply, "\"ok\":true")) /* the sim's replies are compact JSON */
		fail("act-refused", EINVAL);
}

/* xl's action at a shutdown (its defaults): 0 to exit after it, or the domid to watch now. */
static uint32_t act_on_shutdown(int reason)
{
	char request[512], reply[8192];
	const char *p;

	if (reason == LIBXL_SHUTDOWN_REASON_SUSPEND)
		return domid; /* the migrating toolstack owns the domain (xl: "Domain has suspended") */
	snprintf(request, sizeof(request),
		 "{\"op\": \"destroy-incarnations\", \"incarnations\": [[%u, \"%s\"]], "
		 "\"by\": \"xl\"}\n",
		 domid, act_uuid);
	sim_request(request, reply, sizeof(reply));
	if (reason != LIBXL_SHUTDOWN_REASON_REBOOT)
		return 0;
	snprintf(request, sizeof(request),
		 "{\"op\": \"create\", \"uuid\": \"%s\", \"name\": \"%s\", \"by\": \"xl\"}\n",
		 act_uuid, act_name);
	sim_request(request, reply, sizeof(reply));
	p = strstr(reply, "\"domid\":");
	if (!p)
		fail("act-create-reply", EINVAL);
	return (uint32_t)strtoul(p + 8, NULL, 10);
}

/* SIGTERM, SIGINT: the counters and out. libxenstore's reader thread blocks every signal,
 * so this runs in the main thread; it only writes and exits, both async-signal-safe. */
static void on_term(int sig)
{
	(void)sig;
	finish();
	_exit(0);
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_term };
	xentoollog_logger_stdiostream *logger;
	libxl_evgen_domain_death *deathw = NULL;
	libxl_ctx *ctx = NULL;
	int rc;

	if (argc == 4 && strcmp(argv[3], "--new") == 0)
		announce_new = 1;
	else if (argc == 7 && strcmp(argv[3], "--act") == 0) {
		act_socket = argv[4];
		act_uuid = argv[5];
		act_name = argv[6];
	} else if (argc != 3) {
		fprintf(stderr, "usage: libxl_monitor RESULTS DOMID [--new | --act SOCKET UUID NAME]\n");
		return 2;
	}
	domid = (uint32_t)strtoul(argv[2], NULL, 10);
	results = open(argv[1], O_WRONLY | O_APPEND | O_CLOEXEC);
	if (results < 0)
		return 2;

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0)
		fail("sigaction", errno);

	logger = xtl_createlogger_stdiostream(stderr, XTL_ERROR, 0);
	if (!logger)
		fail("xtl_createlogger_stdiostream", errno);
	rc = libxl_ctx_alloc(&ctx, LIBXL_VERSION, 0, (xentoollog_logger *)logger);
	if (rc)
		fail("libxl_ctx_alloc", -rc);
	rc = libxl_evenable_domain_death(ctx, domid, 0, &deathw);
	if (rc)
		fail("libxl_evenable_domain_death", -rc);

	for (;;) {
		libxl_event *event;
		uint64_t t;

		rc = libxl_event_wait(ctx, &event, LIBXL_EVENTMASK_ALL, 0, 0);
		if (rc)
			fail("libxl_event_wait", -rc);
		t = now_ns();
		if (event->domid != domid) { /* xl ignores them too */
			libxl_event_free(ctx, event);
			continue;
		}
		if (event->type == LIBXL_EVENT_TYPE_DOMAIN_SHUTDOWN) {
			int reason = event->u.domain_shutdown.shutdown_reason;
			uint32_t next;

			emit("shutdown", t, reason);
			if (!act_socket)
				goto next_event;
			next = act_on_shutdown(reason);
			if (next == domid)
				goto next_event;
			emit("acted", now_ns(), next);
			libxl_event_free(ctx, event);
			if (!next)
				break; /* destroyed: xl's monitor exits */
			/* restarted: the monitor watches the new incarnation, as xl goes back to start */
			libxl_evdisable_domain_death(ctx, deathw);
			deathw = NULL;
			domid = next;
			rc = libxl_evenable_domain_death(ctx, domid, 0, &deathw);
			if (rc)
				fail("libxl_evenable_domain_death", -rc);
			continue;
		} else if (event->type == LIBXL_EVENT_TYPE_DOMAIN_DEATH) {
			emit("death", t, 0);
			libxl_event_free(ctx, event);
			break;
		}
next_event:
		libxl_event_free(ctx, event);
	}
	/* As xl's monitor at the end: the watch, then the context, then exit. */
	if (deathw)
		libxl_evdisable_domain_death(ctx, deathw);
	libxl_ctx_free(ctx);
	xtl_logger_destroy((xentoollog_logger *)logger);
	finish();
	return 0;
}
