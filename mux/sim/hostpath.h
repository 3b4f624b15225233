/*
 * The simulated host's change path in C (mux/sim/_simfast.pyx wraps it; docs/architecture.md).
 *
 * A change over DIR/changes.sock used to wake the sim's Python loop, and an idle Python process
 * costs about 300 us to wake here, three times the host floor's budget. So one C thread owns
 * that socket and applies the common changes itself: the table write, VIRQ_DOM_EXC, xenstored's
 * domain pass and the WATCH_EVENT frames for the special watches, written straight to the
 * watchers' sockets. Python is told afterwards, through a journal it drains before any of its
 * own operations.
 *
 * One recursive mutex (xh_engine.lock) guards everything both sides touch: the table's writer,
 * the flags table, the domain pass, the watch registry, every connection's output and the
 * journal. Python holds it for each of its operations; the thread never needs the GIL, so
 * Python may wait for it holding the GIL.
 *
 * Every connection's output goes through one xh_writer, whoever writes: what the socket does
 * not take is queued there and written, in order, before anything newer.
 */
#ifndef XM_HOSTPATH_H
#define XM_HOSTPATH_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sim/shm_layout.h"

#define XH_SLOTS 65536
#define XH_CLIENTS_MAX 64
#define XH_MSG_MAX 4096
#define XH_JOURNAL_NOTIFY 1024 /* entries after which Python is asked to drain */
#define XH_DOMINF_RUNNING 0x20
#define XH_DOMINF_BLOCKED 0x10

/* The change ops and flags of mux/sim/changes.py and the XEN_DOMINF_* bits of mux/records.py
 * the thread needs (tests/sim/test_sim_change_thread.py checks them against those). */
enum { XH_OP_SHUTDOWN = 1, XH_OP_SUSPEND, XH_OP_RESUME, XH_OP_DESTROY, XH_OP_CREATE, XH_OP_VIRQ };
#define XH_FLAG_ZOMBIE 1
#define XH_FLAG_SILENT 1
#define XH_SHUTDOWN_SUSPEND 2

/* Journal entries: what Python's objects must learn of a change the thread applied. */
enum { XH_J_STATE = 1, XH_J_ZOMBIE, XH_J_FORGET, XH_J_DROP, XH_J_REMOVE };

typedef struct {
	uint8_t kind;
	uint16_t domid;
	uint32_t flags;
	uint64_t value; /* STATE: the CPU time; DROP: the writer's id */
} xh_entry;

typedef struct {
	int fd;
	int closed;
	int dropped; /* over the hard limit: its connection is closed by Python */
	uint64_t id;
	unsigned char *buf;
	size_t start, end, cap;
} xh_writer;

typedef struct {
	xh_writer *w;
	char *node;
	size_t node_len;
	char *token;
	size_t token_len;
	int depth;
	uint64_t serial;
} xh_watch;

typedef struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* the host */
	unsigned char *shm;
	int64_t *flags;
	int truth_fd;
	char *truth_ids[XH_SLOTS];
	char *reasons[256]; /* a valid reason's JSON name, else NULL */
	uint64_t rng;
	int enabled; /* the thread may apply changes itself (else every one goes to Python) */
	int watch_depth;
	long foreign; /* special watches of connections without a writer: the thread cannot fire */
	long node_watches; /* watches on nodes: a destroy's node removal may fire them */
	uint64_t ids_at; /* the table's unique ids (0: this Xen has none) */
	/* the domain pass (DomainPass's arrays) */
	uint16_t *order;
	int32_t *pos;
	uint8_t *latch;
	long *n;
	/* the protocol's names and numbers, from Python */
	uint32_t watch_event;
	size_t payload_max;
	size_t hard_limit;
	char release[64];
	/* connections and special watches */
	xh_writer **writers;
	size_t nwriters, capwriters;
	xh_watch *watches;
	size_t nwatches, capwatches;
	/* the journal and the counters Python adds to its own */
	xh_entry *journal;
	size_t njournal, capjournal;
	int notified;
	int dirty;
	uint64_t c_release, c_release_dom, c_events, c_passes, c_virqs, c_changes;
	/* the thread */
	pthread_t thread;
	int running, stopping;
	int wake_fd, notify_fd, listener;
	int clients[XH_CLIENTS_MAX];
	int nclients;
	/* a change handed to Python: 1 waiting for it, 2 answered */
	int hand_state;
	unsigned char hand_msg[XH_MSG_MAX];
	size_t hand_len;
	unsigned char hand_reply[XH_MSG_MAX];
	size_t hand_reply_len;
} xh_engine;

static inline void xh_notify(int fd)
{
	uint64_t one = 1;
	ssize_t r = write(fd, &one, sizeof(one));
	(void)r;
}

/* -- output ------------------------------------------------------------------------------ */

static inline int xh_buf_append(xh_writer *w, const unsigned char *data, size_t n)
{
	if (w->start && w->start == w->end)
		w->start = w->end = 0;
	if (w->end + n > w->cap) {
		size_t live = w->end - w->start, cap = w->cap ? w->cap : 4096;
		unsigned char *nb;

		if (w->start) {
			memmove(w->buf, w->buf + w->start, live);
			w->start = 0;
			w->end = live;
		}
		while (live + n > cap)
			cap *= 2;
		if (cap != w->cap) {
			nb = realloc(w->buf, cap);
			if (!nb)
				return -1;
			w->buf = nb;
			w->cap = cap;
		}
	}
	memcpy(w->buf + w->end, data, n);
	w->end += n;
	return 0;
}

/* Queued bytes after the write. A socket error drops the bytes: the reader sees the loss. */
static inline size_t xh_write(xh_writer *w, const unsigned char *data, size_t n)
{
	if (w->closed || w->dropped)
		return 0;
	if (w->end == w->start) {
		ssize_t r = send(w->fd, data, n, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (r < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				return 0;
			r = 0;
		}
		data += r;
		n -= (size_t)r;
		if (!n)
			return 0;
	}
	if (xh_buf_append(w, data, n) < 0)
		w->dropped = 1; /* out of memory: as a watcher over the hard limit */
	return w->end - w->start;
}

static inline size_t xh_flush(xh_writer *w)
{
	while (!w->closed && w->end > w->start) {
		ssize_t r = send(w->fd, w->buf + w->start, w->end - w->start,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				w->start = w->end = 0;
			break;
		}
		w->start += (size_t)r;
	}
	return w->end - w->start;
}

static inline int xh_add_writer(xh_engine *e, xh_writer *w)
{
	if (e->nwriters == e->capwriters) {
		size_t cap = e->capwriters ? e->capwriters * 2 : 64;
		xh_writer **nw = realloc(e->writers, cap * sizeof(*nw));

		if (!nw)
			return -1;
		e->writers = nw;
		e->capwriters = cap;
	}
	e->writers[e->nwriters++] = w;
	return 0;
}

static inline void xh_watch_free(xh_watch *x)
{
	free(x->node);
	free(x->token);
}

static inline void xh_unwatch_writer(xh_engine *e, xh_writer *w)
{
	size_t i, j = 0;

	for (i = 0; i < e->nwatches; i++) {
		if (e->watches[i].w == w)
			xh_watch_free(&e->watches[i]);
		else
			e->watches[j++] = e->watches[i];
	}
	e->nwatches = j;
}

static inline void xh_free_watches(xh_engine *e)
{
	size_t i;

	for (i = 0; i < e->nwatches; i++)
		xh_watch_free(&e->watches[i]);
	free(e->watches);
	e->watches = NULL;
	e->nwatches = e->capwatches = 0;
}

static inline void xh_remove_writer(xh_engine *e, xh_writer *w)
{
	size_t i;

	xh_unwatch_writer(e, w);
	for (i = 0; i < e->nwriters; i++) {
		if (e->writers[i] == w) {
			e->writers[i] = e->writers[--e->nwriters];
			break;
		}
	}
}

static inline xh_writer *xh_find_writer(xh_engine *e, uint64_t id)
{
	size_t i;

	for (i = 0; i < e->nwriters; i++)
		if (e->writers[i]->id == id)
			return e->writers[i];
	return NULL;
}

/* -- the special watches ------------------------------------------------------------------- */

static inline int xh_watch_add(xh_engine *e, xh_writer *w, const char *node, size_t node_len,
			       const char *token, size_t token_len, int depth, uint64_t serial)
{
	xh_watch *x;

	if (e->nwatches == e->capwatches) {
		size_t cap = e->capwatches ? e->capwatches * 2 : 64;
		xh_watch *nw = realloc(e->watches, cap * sizeof(*nw));

		if (!nw)
			return -1;
		e->watches = nw;
		e->capwatches = cap;
	}
	x = &e->watches[e->nwatches];
	x->node = malloc(node_len + 1);
	x->token = malloc(token_len + 1);
	if (!x->node || !x->token) {
		free(x->node);
		free(x->token);
		return -1;
	}
	memcpy(x->node, node, node_len);
	x->node[node_len] = 0;
	memcpy(x->token, token, token_len);
	x->token[token_len] = 0;
	x->node_len = node_len;
	x->token_len = token_len;
	x->w = w;
	x->depth = depth;
	x->serial = serial;
	e->nwatches++;
	return 0;
}

static inline void xh_watch_remove(xh_engine *e, uint64_t serial)
{
	size_t i;

	for (i = 0; i < e->nwatches; i++) {
		if (e->watches[i].serial == serial) {
			xh_watch_free(&e->watches[i]);
			memmove(&e->watches[i], &e->watches[i + 1],
				(e->nwatches - i - 1) * sizeof(xh_watch));
			e->nwatches--;
			return;
		}
	}
}

static inline void xh_journal(xh_engine *e, uint8_t kind, uint16_t domid, uint32_t flags,
			      uint64_t value)
{
	if (e->njournal == e->capjournal) {
		size_t cap = e->capjournal ? e->capjournal * 2 : 1024;
		xh_entry *nj = realloc(e->journal, cap * sizeof(*nj));

		if (!nj)
			return; /* cannot happen short of memory; Python then misses the entry */
		e->journal = nj;
		e->capjournal = cap;
	}
	e->journal[e->njournal++] = (xh_entry){ kind, domid, flags, value };
	e->dirty = 1;
	if ((kind == XH_J_DROP || e->njournal >= XH_JOURNAL_NOTIFY) && !e->notified &&
	    e->notify_fd >= 0) {
		e->notified = 1;
		xh_notify(e->notify_fd);
	}
}

static int xh_serial_cmp(const void *a, const void *b)
{
	uint64_t x = (*(xh_watch *const *)a)->serial, y = (*(xh_watch *const *)b)->serial;

	return x < y ? -1 : x > y;
}

/*
 * watches.py WatchTable.fire for a special name: exact watches (only those without a depth
 * for `nodepth`), then, with a depth, the watches on its ancestors deep enough to see it; in
 * the order the connection set them up when both kinds matched.
 */
static inline void xh_fire(xh_engine *e, const char *name, size_t len, int nodepth)
{
	xh_watch **matched;
	size_t nm = 0, i, exact = 0;
	unsigned char frame[16 + XH_MSG_MAX + 2];
	int buckets = 0;

	if (!e->nwatches)
		return;
	matched = malloc(e->nwatches * sizeof(*matched));
	if (!matched)
		return;
	for (i = 0; i < e->nwatches; i++) {
		xh_watch *x = &e->watches[i];

		if (x->node_len == len && !memcmp(x->node, name, len) && (!nodepth || x->depth < 0))
			matched[nm++] = x;
	}
	exact = nm;
	buckets = nm > 0;
	if (!nodepth) {
		size_t p;

		for (p = 1; p < len; p++) { /* names.ancestors(): each prefix ending before a '/' */
			size_t before = nm, levels = 0, k;

			if (name[p] != '/')
				continue;
			for (k = p; k < len; k++)
				levels += name[k] == '/';
			for (i = 0; i < e->nwatches; i++) {
				xh_watch *x = &e->watches[i];

				if (x->node_len == p && !memcmp(x->node, name, p) && x->depth > 0 &&
				    levels <= (size_t)x->depth)
					matched[nm++] = x;
			}
			buckets += nm > before;
		}
	}
	if (buckets > 1)
		qsort(matched, nm, sizeof(*matched), xh_serial_cmp);
	(void)exact;
	for (i = 0; i < nm; i++) {
		xh_watch *x = matched[i];
		size_t plen = len + 1 + x->token_len + 1;
		uint32_t hdr[4];
		xh_writer *w = x->w;

		if (plen > e->payload_max)
			continue; /* send_event() drops over-long events */
		hdr[0] = e->watch_event;
		hdr[1] = 0;
		hdr[2] = 0;
		hdr[3] = (uint32_t)plen;
		memcpy(frame, hdr, 16);
		memcpy(frame + 16, name, len);
		frame[16 + len] = 0;
		memcpy(frame + 17 + len, x->token, x->token_len);
		frame[17 + len + x->token_len] = 0;
		e->c_events++;
		if (!w->dropped && xh_write(w, frame, 16 + plen) > e->hard_limit) {
			w->dropped = 1;
			xh_journal(e, XH_J_DROP, 0, 0, w->id);
		}
	}
	free(matched);
	e->dirty = 1;
}

static inline void xh_fire_special(xh_engine *e, int domid, int nodom, int dom)
{
	size_t len = strlen(e->release);

	if (nodom) {
		e->c_release++;
		xh_fire(e, e->release, len, 1);
	}
	if (dom && e->watch_depth) {
		char name[96];
		int n = snprintf(name, sizeof(name), "%s/%d", e->release, domid);

		e->c_release_dom++;
		xh_fire(e, name, (size_t)n, 0);
	}
}

/* -- the domain pass (domains.py check_domains with C xenstored's latch) --------------------- */

static inline void xh_pass_remove(xh_engine *e, uint16_t d)
{
	long i = e->pos[d], j;

	if (i < 0)
		return;
	memmove(&e->order[i], &e->order[i + 1], (size_t)(*e->n - i - 1) * sizeof(uint16_t));
	(*e->n)--;
	for (j = i; j < *e->n; j++)
		e->pos[e->order[j]] = (int32_t)j;
	e->pos[d] = -1;
	e->latch[d] = 0;
}

static inline void xh_check_domains(xh_engine *e)
{
	long i, ns = 0;
	int notify = 0;
	uint32_t *steps = malloc((size_t)(*e->n + 1) * 2 * sizeof(uint32_t));

	e->c_passes++;
	e->dirty = 1;
	if (!steps)
		return;
	for (i = *e->n - 1; i >= 0; i--) {
		uint16_t d = e->order[i];
		int64_t f = e->flags[d];

		if (f >= 0) {
			if ((f & XM_DOMINF_SHUTDOWN) && !e->latch[d]) {
				e->latch[d] = 1;
				steps[ns++] = d;
				notify = 1;
			}
			if (!(f & XM_DOMINF_DYING))
				continue;
		}
		if (d == 0)
			continue;
		steps[ns++] = 0x10000u | d;
		notify = 0;
	}
	for (i = 0; i < ns; i++) {
		uint16_t d = (uint16_t)steps[i];

		if (steps[i] & 0x10000u) {
			if (e->pos[d] < 0)
				continue;
			xh_pass_remove(e, d);
			xh_journal(e, XH_J_FORGET, d, 0, 0);
			xh_fire_special(e, d, 1, 1);
		} else if (e->watch_depth) {
			xh_fire_special(e, d, 0, 1);
		}
	}
	free(steps);
	if (notify)
		xh_fire_special(e, 0, 1, 0);
}

static inline void xh_raise_virq(xh_engine *e)
{
	uint64_t *virqs = (uint64_t *)(e->shm + XM_SHM_OFF_VIRQS);

	e->c_virqs++;
	__atomic_store_n(virqs, __atomic_load_n(virqs, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
	xh_check_domains(e);
}

/* -- one change -------------------------------------------------------------------------- */

static inline uint64_t xh_rand(xh_engine *e, uint64_t lo, uint64_t hi)
{
	uint64_t z = (e->rng += 0x9E3779B97F4A7C15ull); /* splitmix64 */

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	z ^= z >> 31;
	return lo + z % (hi - lo + 1);
}

static inline long xh_index(const unsigned char *shm, uint16_t domid)
{
	uint32_t lo = 0, hi = *(const uint32_t *)(shm + XM_SHM_OFF_COUNT);

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		uint16_t d = *(const uint16_t *)(shm + XM_SHM_OFF_RECORDS +
						 (size_t)mid * XM_RECORD_SIZE + XM_OFF_DOMAIN);

		if (d < domid)
			lo = mid + 1;
		else if (d > domid)
			hi = mid;
		else
			return mid;
	}
	return -1;
}

/* Python's repr() of a float: the shortest of %.15g..%.17g that reads back the same. */
static inline int xh_repr(char *out, size_t size, double v)
{
	int prec, n = 0;

	for (prec = 15; prec <= 17; prec++) {
		n = snprintf(out, size, "%.*g", prec, v);
		if (strtod(out, NULL) == v)
			break;
	}
	if (!strpbrk(out, ".en") && (size_t)n + 2 < size) {
		memcpy(out + n, ".0", 3);
		n += 2;
	}
	return n;
}

static inline void xh_truth(xh_engine *e, const struct timespec *mono, const struct timespec *wall,
			    uint16_t domid, const char *step, const char *reason)
{
	char line[512], w[40];
	unsigned long long m = (unsigned long long)mono->tv_sec * 1000000000ull +
			       (unsigned long long)mono->tv_nsec;
	int n;

	if (e->truth_fd < 0)
		return;
	xh_repr(w, sizeof(w), (double)((int64_t)wall->tv_sec * 1000000000ll + wall->tv_nsec) / 1e9);
	if (reason)
		n = snprintf(line, sizeof(line),
			     "{\"step\":\"%s\",%s,\"mono\":%llu,\"wall\":%s,\"reason\":%s}\n", step,
			     e->truth_ids[domid], m, w, reason);
	else
		n = snprintf(line, sizeof(line), "{\"step\":\"%s\",%s,\"mono\":%llu,\"wall\":%s}\n",
			     step, e->truth_ids[domid], m, w);
	if (n > 0 && (size_t)n < sizeof(line)) {
		ssize_t r = write(e->truth_fd, line, (size_t)n);
		(void)r;
	}
}

static inline uint64_t xh_now(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

/* One lifecycle step of one domain, as Hypervisor.update does it: the record, its truth line
 * (stamped before the change), then VIRQ_DOM_EXC. */
static inline void xh_update(xh_engine *e, uint16_t domid, long index, uint32_t flags,
			     uint64_t cpu, const char *step, const char *reason)
{
	struct timespec mono, wall;
	uint64_t seq, changes;

	clock_gettime(CLOCK_MONOTONIC, &mono);
	clock_gettime(CLOCK_REALTIME, &wall);
	seq = __atomic_load_n((uint64_t *)(e->shm + XM_SHM_OFF_SEQLOCK), __ATOMIC_RELAXED);
	changes = __atomic_load_n((uint64_t *)(e->shm + XM_SHM_OFF_CHANGES), __ATOMIC_RELAXED) + 1;
	xm_shm_write_begin(e->shm, seq + 1);
	xm_shm_put_state(e->shm, (uint32_t)index, flags, cpu);
	/* the stamp after the records, as shm_write_states takes it */
	xm_shm_write_end(e->shm, seq + 2, *(uint32_t *)(e->shm + XM_SHM_OFF_COUNT), xh_now(),
			 changes);
	e->flags[domid] = flags;
	e->c_changes++;
	xh_journal(e, XH_J_STATE, domid, flags, cpu);
	xh_truth(e, &mono, &wall, domid, step, reason);
}

/* The record gone, as Hypervisor.remove does it for one domain: Python forgets the domain
 * and removes its nodes when it drains (nothing watches them: xh_apply checked). */
static inline void xh_remove(xh_engine *e, uint16_t domid, long index)
{
	struct timespec mono, wall;
	uint64_t seq, changes;
	uint32_t count = *(uint32_t *)(e->shm + XM_SHM_OFF_COUNT);
	unsigned char *recs = e->shm + XM_SHM_OFF_RECORDS;

	clock_gettime(CLOCK_MONOTONIC, &mono);
	clock_gettime(CLOCK_REALTIME, &wall);
	seq = __atomic_load_n((uint64_t *)(e->shm + XM_SHM_OFF_SEQLOCK), __ATOMIC_RELAXED);
	changes = __atomic_load_n((uint64_t *)(e->shm + XM_SHM_OFF_CHANGES), __ATOMIC_RELAXED) + 1;
	xm_shm_write_begin(e->shm, seq + 1);
	e->flags[domid] = -1;
	if (e->ids_at)
		memset(e->shm + e->ids_at + (size_t)domid * 8, 0, 8);
	memmove(recs + (size_t)index * XM_RECORD_SIZE, recs + (size_t)(index + 1) * XM_RECORD_SIZE,
		(size_t)(count - index - 1) * XM_RECORD_SIZE);
	memset(recs + (size_t)(count - 1) * XM_RECORD_SIZE, 0, XM_RECORD_SIZE);
	xm_shm_write_end(e->shm, seq + 2, count - 1, xh_now(), changes);
	e->c_changes++;
	xh_journal(e, XH_J_REMOVE, domid, 0, 0);
	xh_truth(e, &mono, &wall, domid, "gone", NULL);
	free(e->truth_ids[domid]);
	e->truth_ids[domid] = NULL;
}

/*
 * The changes the thread applies itself (changes.py's ops): shutdown and suspend of a running
 * guest, destroy (dying, then with no FLAG_ZOMBIE the record gone, while no watch on a node
 * could see the nodes' removal), a bare VIRQ. Returns 1
 * with the reply written, 0 for a change Python must make (any other op, any refusal, whatever
 * the thread does not know: Python's path says why in its own words).
 */
static inline int xh_apply(xh_engine *e, const unsigned char *msg, size_t len,
			   unsigned char *reply, size_t *reply_len)
{
	uint8_t op, fl;
	uint16_t domid;
	uint32_t reason;
	uint64_t before[4];
	int64_t f;
	long index;
	uint32_t v32[4];
	int8_t status = 0;
	uint16_t made = 0;

	if (!e->enabled || e->foreign || len != 8)
		return 0;
	op = msg[0];
	fl = msg[1];
	memcpy(&domid, msg + 2, 2);
	memcpy(&reason, msg + 4, 4);
	before[0] = e->c_release;
	before[1] = e->c_release_dom;
	before[2] = 0;
	before[3] = e->c_events;
	if (op == XH_OP_VIRQ) {
		xh_raise_virq(e);
	} else if (op == XH_OP_SHUTDOWN || op == XH_OP_SUSPEND || op == XH_OP_DESTROY) {
		uint64_t cpu;
		uint32_t flags;

		if (op == XH_OP_SUSPEND)
			reason = XH_SHUTDOWN_SUSPEND;
		if (domid == 0 || !e->truth_ids[domid])
			return 0;
		f = e->flags[domid];
		if (f < 0 || ((f & XM_DOMINF_DYING) && op != XH_OP_DESTROY))
			return 0;
		index = xh_index(e->shm, domid);
		if (index < 0)
			return 0;
		memcpy(&cpu, e->shm + XM_SHM_OFF_RECORDS + (size_t)index * XM_RECORD_SIZE +
				     XM_OFF_CPU_TIME,
		       8);
		if (op == XH_OP_DESTROY) {
			if (fl & XH_FLAG_ZOMBIE) { /* it stays dying */
				if (f & XM_DOMINF_DYING)
					return 0;
			} else if (e->node_watches) {
				return 0; /* the nodes' removal may fire: Python's */
			}
			if (!(f & XM_DOMINF_DYING)) {
				flags = ((uint32_t)f | XM_DOMINF_DYING) &
					~(uint32_t)(XH_DOMINF_RUNNING | XH_DOMINF_BLOCKED);
				xh_update(e, domid, index, flags, cpu, "dying", NULL);
				if (fl & XH_FLAG_ZOMBIE)
					xh_journal(e, XH_J_ZOMBIE, domid, 0, 0);
				xh_raise_virq(e);
			}
			if (!(fl & XH_FLAG_ZOMBIE)) {
				xh_remove(e, domid, index);
				xh_raise_virq(e);
			}
		} else {
			if ((f & XM_DOMINF_SHUTDOWN) || reason > 255 || !e->reasons[reason])
				return 0;
			flags = ((uint32_t)f & ~(uint32_t)(XM_DOMINF_SHUTDOWNMASK
							    << XM_DOMINF_SHUTDOWNSHIFT)) |
				XM_DOMINF_SHUTDOWN | (reason << XM_DOMINF_SHUTDOWNSHIFT);
			cpu += xh_rand(e, 10000000ull, 100000000ull);
			xh_update(e, domid, index, flags, cpu, "shutdown", e->reasons[reason]);
			if (!(op == XH_OP_SUSPEND && (fl & XH_FLAG_SILENT)))
				xh_raise_virq(e);
		}
	} else {
		return 0;
	}
	/* changes.py REPLY: status (i8), pad, domid (u16), four u32 */
	v32[0] = (uint32_t)(e->c_release - before[0]);
	v32[1] = (uint32_t)(e->c_release_dom - before[1]);
	v32[2] = 0;
	v32[3] = (uint32_t)(e->c_events - before[3]);
	memcpy(reply, &status, 1);
	reply[1] = 0;
	memcpy(reply + 2, &made, 2);
	memcpy(reply + 4, v32, 16);
	*reply_len = 20;
	return 1;
}

/* -- the thread -------------------------------------------------------------------------- */

static inline void xh_serve_client(xh_engine *e, int i)
{
	unsigned char msg[XH_MSG_MAX], reply[XH_MSG_MAX];
	size_t reply_len = 0;
	ssize_t n = recv(e->clients[i], msg, sizeof(msg), MSG_DONTWAIT);
	int answered;

	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n <= 0) {
		close(e->clients[i]);
		e->clients[i] = e->clients[--e->nclients];
		return;
	}
	pthread_mutex_lock(&e->lock);
	answered = xh_apply(e, msg, (size_t)n, reply, &reply_len);
	if (!answered) { /* Python's: hand it to the loop and wait for its reply */
		memcpy(e->hand_msg, msg, (size_t)n);
		e->hand_len = (size_t)n;
		e->hand_state = 1;
		xh_notify(e->notify_fd);
		while (e->hand_state == 1 && !e->stopping)
			pthread_cond_wait(&e->cond, &e->lock);
		if (e->hand_state == 2) {
			memcpy(reply, e->hand_reply, e->hand_reply_len);
			reply_len = e->hand_reply_len;
			answered = 1;
		}
		e->hand_state = 0;
	}
	pthread_mutex_unlock(&e->lock);
	if (!answered || send(e->clients[i], reply, reply_len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		/* the sim is stopping, or a client that went away or stopped reading its replies */
		close(e->clients[i]);
		e->clients[i] = e->clients[--e->nclients];
	}
}

static void *xh_main(void *arg)
{
	xh_engine *e = arg;
	struct pollfd *fds = NULL;
	uint64_t *ids = NULL;
	size_t cap = 0;

	for (;;) {
		size_t nf = 0, base, i;
		int r;

		pthread_mutex_lock(&e->lock);
		if (e->stopping) {
			pthread_mutex_unlock(&e->lock);
			break;
		}
		if (cap < 2 + XH_CLIENTS_MAX + e->nwriters) {
			cap = 2 + XH_CLIENTS_MAX + e->nwriters * 2;
			fds = realloc(fds, cap * sizeof(*fds));
			ids = realloc(ids, cap * sizeof(*ids));
			if (!fds || !ids) {
				pthread_mutex_unlock(&e->lock);
				break;
			}
		}
		fds[nf++] = (struct pollfd){ e->wake_fd, POLLIN, 0 };
		fds[nf++] = (struct pollfd){ e->listener, POLLIN, 0 };
		for (i = 0; i < (size_t)e->nclients; i++)
			fds[nf++] = (struct pollfd){ e->clients[i], POLLIN, 0 };
		base = nf;
		for (i = 0; i < e->nwriters; i++) { /* what the thread queued, it writes out */
			xh_writer *w = e->writers[i];

			if (!w->closed && w->end > w->start) {
				ids[nf] = w->id;
				fds[nf++] = (struct pollfd){ w->fd, POLLOUT, 0 };
			}
		}
		pthread_mutex_unlock(&e->lock);
		r = poll(fds, nf, base == nf ? -1 : 100);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (fds[0].revents) {
			uint64_t v;
			ssize_t rr = read(e->wake_fd, &v, sizeof(v));
			(void)rr;
		}
		for (i = base; i < nf; i++) {
			xh_writer *w;

			if (!fds[i].revents)
				continue;
			pthread_mutex_lock(&e->lock);
			w = xh_find_writer(e, ids[i]);
			if (w)
				xh_flush(w);
			pthread_mutex_unlock(&e->lock);
		}
		for (i = 2; i < base; i++) {
			int j;

			if (!fds[i].revents)
				continue;
			for (j = 0; j < e->nclients; j++) {
				if (e->clients[j] == fds[i].fd) {
					xh_serve_client(e, j);
					break;
				}
			}
		}
		if (fds[1].revents & POLLIN) {
			int c = accept4(e->listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

			if (c >= 0) {
				if (e->nclients < XH_CLIENTS_MAX)
					e->clients[e->nclients++] = c;
				else
					close(c);
			}
		}
	}
	free(fds);
	free(ids);
	while (e->nclients)
		close(e->clients[--e->nclients]);
	return NULL;
}

#endif
