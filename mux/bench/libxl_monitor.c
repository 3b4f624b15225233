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
 * It runs under the stand-in libxenctrl (mux/realxen/xenstub/libxenctrl_stub.c, with
 * LD_PRELOAD) that serves the simulated host's domain table ($XENMUX_STUB_SHM), and talks to
 * the xenstored libxenstore finds ($XENSTORED_PATH).
 *
 *   usage: libxl_monitor RESULTS DOMID [--new]
 *
 * Lines appended to RESULTS (one write() each), as monitor.c writes them:
 *
 *   R <domid> <ns> <state>       ready: libxl's watch fired once and it queried the domain
 *                                (state 1 running, 2 shut down, 3 gone)
 *   new <domid> <ns> 0           found at that first query (only with --new)
 *   shutdown <domid> <ns> <code> LIBXL_EVENT_TYPE_DOMAIN_SHUTDOWN and its reason
 *   death <domid> <ns> 0         LIBXL_EVENT_TYPE_DOMAIN_DEATH (then it exits)
 *   F <domid> <firings> <queries> at exit (DEATH or SIGTERM)
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
#include <time.h>
#include <unistd.h>

#include <libxl.h>
#include <xenctrl.h>
#include <xentoollog.h>

enum { RUNNING = 1, SHUTDOWN = 2, GONE = 3 };

static int results = -1;
static uint32_t domid;
static int announce_new;
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
	else if (argc != 3) {
		fprintf(stderr, "usage: libxl_monitor RESULTS DOMID [--new]\n");
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
			emit("shutdown", t, event->u.domain_shutdown.shutdown_reason);
		} else if (event->type == LIBXL_EVENT_TYPE_DOMAIN_DEATH) {
			emit("death", t, 0);
			libxl_event_free(ctx, event);
			break;
		}
		libxl_event_free(ctx, event);
	}
	/* As xl's monitor at the end: the watch, then the context, then exit. */
	libxl_evdisable_domain_death(ctx, deathw);
	libxl_ctx_free(ctx);
	xtl_logger_destroy((xentoollog_logger *)logger);
	finish();
	return 0;
}
