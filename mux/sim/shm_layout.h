/*
 * The simulated host's shared-memory domain table (DIR/domains.shm), declared once.
 *
 * Every reader and writer takes the layout from here: mux.sim._simfast (and through it
 * mux/sim/shm.py, the sim's writer and its Python reader), the C stand-ins of mux/realxen
 * (hvstub.so, libxenctrl_stub.so) and the bench's C monitors. docs/internals.md describes it;
 * a test checks that description against these numbers.
 *
 * The host is the only writer, and changes the table inside seqlock sections: the sequence
 * number is odd while it writes. A reader copies between two reads of the sequence number
 * and tries again when it was odd or moved (xm_shm_try_copy below). All integers are native.
 */
#ifndef XM_SHM_LAYOUT_H
#define XM_SHM_LAYOUT_H

#include <stdint.h>
#include <string.h>

#include "../fastcore/xm_record.h"

#define XM_SHM_MAGIC "XMUXSHM1" /* char[8], no NUL in the file */
#define XM_SHM_MAGIC_SIZE 8
#define XM_SHM_VERSION 1
#define XM_SHM_HEADER_SIZE 128

#define XM_SHM_OFF_MAGIC 0
#define XM_SHM_OFF_VERSION 8 /* u32: XM_SHM_VERSION */
#define XM_SHM_OFF_RECORD_SIZE 12 /* u32: XM_RECORD_SIZE */
#define XM_SHM_OFF_CAPACITY 16 /* u32: records the file has room for */
#define XM_SHM_OFF_COUNT 20 /* u32: valid records, the first ones, sorted by domid */
#define XM_SHM_OFF_SEQLOCK 24 /* u64: odd while the writer changes the table */
#define XM_SHM_OFF_CHANGE_STAMP 32 /* u64: CLOCK_MONOTONIC ns of the latest change */
#define XM_SHM_OFF_CHANGES 40 /* u64: changes applied since the sim started */
#define XM_SHM_OFF_VIRQS 48 /* u64: VIRQ_DOM_EXC raised since the sim started */
#define XM_SHM_OFF_UNIQUE_IDS 56 /* u64: byte offset of the unique ids, 0 when Xen has none */
#define XM_SHM_OFF_XEN_VERSION 64 /* u32: the Xen release modelled, XM_SHM_XEN(major, minor) */
#define XM_SHM_OFF_RECORDS XM_SHM_HEADER_SIZE /* xc_domaininfo_t[capacity] */

/*
 * Xen 4.20+ draws a 64-bit unique id for every domain incarnation. The sim keeps them beside
 * the records, never inside them (xc_domaininfo_t has no such field): u64[XM_DOMID_FIRST_RESERVED]
 * at the byte offset the header's XM_SHM_OFF_UNIQUE_IDS gives, indexed by domid, written in the same seqlock
 * section as the record it belongs to; 0 where no domain is (Xen's ids are never 0 in the sim).
 * Whether dom0 may read them (4.21+: XEN_DOMCTL_get_domain_state) is the reader's rule, by
 * XM_SHM_OFF_XEN_VERSION.
 */
#define XM_SHM_XEN(major, minor) (((uint32_t)(major) << 16) | (uint32_t)(minor))

/* xm_shm_try_copy found the writer inside a change, or saw it make one while it copied. */
#define XM_SHM_BUSY (-1)
#define XM_SHM_MOVED (-2)

static inline void xm_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/*
 * One attempt at getinfolist(first, max) over a mapped table whose header the caller has
 * checked (`capacity` is its bound on the records the mapping holds): copies the records
 * with domid >= first, in domid order, at most max, into out, and returns how many; or
 * XM_SHM_BUSY / XM_SHM_MOVED, and the caller waits its own way and tries again. The records
 * are sorted, so finding `first` is a binary search.
 */
static inline long xm_shm_try_copy(const unsigned char *shm, uint32_t capacity, uint32_t first,
				   uint32_t max, unsigned char *out)
{
	const uint64_t *seqp = (const uint64_t *)(shm + XM_SHM_OFF_SEQLOCK);
	const unsigned char *recs = shm + XM_SHM_OFF_RECORDS;
	uint64_t s1 = __atomic_load_n(seqp, __ATOMIC_ACQUIRE);
	uint32_t count, lo = 0, hi, n;

	if (s1 & 1)
		return XM_SHM_BUSY;
	count = __atomic_load_n((const uint32_t *)(shm + XM_SHM_OFF_COUNT), __ATOMIC_RELAXED);
	if (count > capacity)
		count = capacity;
	hi = count;
	while (lo < hi) { /* the first record with domid >= first */
		uint32_t mid = lo + (hi - lo) / 2;
		uint16_t d = __atomic_load_n(
			(const uint16_t *)(recs + (size_t)mid * XM_RECORD_SIZE + XM_OFF_DOMAIN),
			__ATOMIC_RELAXED);

		if (d < first)
			lo = mid + 1;
		else
			hi = mid;
	}
	n = count - lo;
	if (n > max)
		n = max;
	memcpy(out, recs + (size_t)lo * XM_RECORD_SIZE, (size_t)n * XM_RECORD_SIZE);
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	if (__atomic_load_n(seqp, __ATOMIC_RELAXED) != s1)
		return XM_SHM_MOVED;
	return (long)n;
}

/*
 * The writer's side (the sim's, mux/sim/_simfast.pyx): a section opens with the sequence
 * number made odd and closes with the header's count, stamp and change counter, then the
 * sequence number made even again; the records change in between.
 */
static inline void xm_shm_write_begin(unsigned char *shm, uint64_t odd_seq)
{
	__atomic_store_n((uint64_t *)(shm + XM_SHM_OFF_SEQLOCK), odd_seq, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
}

static inline void xm_shm_write_end(unsigned char *shm, uint64_t even_seq, uint32_t count,
				    uint64_t stamp, uint64_t changes)
{
	__atomic_store_n((uint32_t *)(shm + XM_SHM_OFF_COUNT), count, __ATOMIC_RELAXED);
	__atomic_store_n((uint64_t *)(shm + XM_SHM_OFF_CHANGE_STAMP), stamp, __ATOMIC_RELAXED);
	__atomic_store_n((uint64_t *)(shm + XM_SHM_OFF_CHANGES), changes, __ATOMIC_RELAXED);
	__atomic_store_n((uint64_t *)(shm + XM_SHM_OFF_SEQLOCK), even_seq, __ATOMIC_RELEASE);
}

/* One record's lifecycle state: its XEN_DOMINF_* flags and its CPU time. */
static inline void xm_shm_put_state(unsigned char *shm, uint32_t index, uint32_t flags,
				    uint64_t cpu_time)
{
	unsigned char *rec = shm + XM_SHM_OFF_RECORDS + (size_t)index * XM_RECORD_SIZE;

	memcpy(rec + XM_OFF_FLAGS, &flags, sizeof(flags));
	memcpy(rec + XM_OFF_CPU_TIME, &cpu_time, sizeof(cpu_time));
}

/* The stamp of the latest change: one aligned u64, so a single atomic load reads it whole. */
static inline uint64_t xm_shm_change_stamp(const unsigned char *shm)
{
	return __atomic_load_n((const uint64_t *)(shm + XM_SHM_OFF_CHANGE_STAMP), __ATOMIC_ACQUIRE);
}

#endif
