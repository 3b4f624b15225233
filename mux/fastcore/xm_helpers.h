/*
 * The C helpers of mux._fast: unaligned loads of record fields, the pieces of an event's
 * JSON frame, and the checks of a batch libxenctrl handed over. The record layout they read
 * is xm_record.h's; nothing here repeats one of its numbers.
 */
#ifndef XM_HELPERS_H
#define XM_HELPERS_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "xm_record.h"

/* Not inline (as the compiler sees fit), and not every includer calls every one. */
#define XM_UNUSED_OK __attribute__((unused))

/* The flag bits that can make an event: everything else (running, blocked...) changes all
   the time and is only copied. `paused` makes events only for a domain that is not dead,
   which the diff decides off the common path: for the one compare of an unchanged domain it
   is one more bit of the same mask. */
#define XM_EVENT_FLAGS_MASK                                                                   \
	(XM_DOMINF_DYING | XM_DOMINF_SHUTDOWN | XM_DOMINF_PAUSED |                            \
	 (XM_DOMINF_SHUTDOWNMASK << XM_DOMINF_SHUTDOWNSHIFT))

/* Record fields sit at any alignment in a caller's buffer. */
static inline uint16_t xm_ld16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t xm_ld32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t xm_ld64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint16_t xm_domid(const unsigned char *rec) { return xm_ld16(rec + XM_OFF_DOMAIN); }

/* The canonical 8-4-4-4-12 text of a handle, lowercase, 36 chars, no NUL. */
static inline void xm_uuid_format(const unsigned char *h, char *out)
{
	static const char hex[] = "0123456789abcdef";
	int i, o = 0;

	for (i = 0; i < XM_HANDLE_SIZE; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[h[i] >> 4];
		out[o++] = hex[h[i] & 15];
	}
}

static inline char *xm_put(char *p, const char *s, size_t n)
{
	memcpy(p, s, n);
	return p + n;
}

static inline char *xm_put_u64(char *p, uint64_t v)
{
	char tmp[20];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = tmp[--n];
	return p;
}

/* printf's "%.6f" of x (the exact binary value rounded half-to-even to 6 decimals, as
   glibc and Python both do it), without printf's multi-precision path for the values
   an event time takes. `p` must have room for 400 chars. */
static XM_UNUSED_OK char *xm_put_fixed6(char *p, double x)
{
	uint64_t bits, m, ip = 0, fp = 0;
	int e, s;

	memcpy(&bits, &x, 8);
	e = (int)((bits >> 52) & 0x7ff);
	m = bits & ((1ULL << 52) - 1);
	if (e == 0x7ff) { /* spelt as Python spells them, whatever the sign of a NaN */
		if (m)
			return xm_put(p, "nan", 3);
		return (bits >> 63) ? xm_put(p, "-inf", 4) : xm_put(p, "inf", 3);
	}
	if (e - 1075 > 10) /* 2^63 and beyond: let printf do it */
		return p + snprintf(p, 400, "%.6f", x);
	if (e == 0)
		e = 1;
	else
		m |= 1ULL << 52; /* x = m * 2^(e - 1075) */
	s = 1075 - e;
	if (s <= 0) {
		ip = m << -s;
	} else if (s < 100) {
		unsigned __int128 num = (unsigned __int128)m * 1000000u; /* < 2^73 */
		unsigned __int128 q = num >> s;
		unsigned __int128 rem = num - (q << s);
		unsigned __int128 half = (unsigned __int128)1 << (s - 1);

		if (rem > half || (rem == half && (q & 1)))
			q++;
		if ((q >> 64) == 0) { /* 64-bit division: the 128-bit one is a library call */
			ip = (uint64_t)q / 1000000u;
			fp = (uint64_t)q % 1000000u;
		} else {
			ip = (uint64_t)(q / 1000000u);
			fp = (uint64_t)(q % 1000000u);
		}
	} /* else below 2^-46: 0.000000 */
	if (bits >> 63)
		*p++ = '-';
	p = xm_put_u64(p, ip);
	*p++ = '.';
	for (s = 5; s >= 0; s--) {
		p[s] = (char)('0' + fp % 10);
		fp /= 10;
	}
	return p + 6;
}

static XM_UNUSED_OK int xm_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

/* A batch as xc_domain_getinfolist hands it over must hold domids >= first, rising,
   below DOMID_FIRST_RESERVED: the index of the first record that breaks this, or -1. */
static XM_UNUSED_OK long xm_check_batch(const unsigned char *p, long n, uint32_t first)
{
	long i;
	uint32_t d, lo = first;

	for (i = 0; i < n; i++, p += XM_RECORD_SIZE) {
		d = xm_domid(p);
		if (d < lo || d >= XM_DOMID_FIRST_RESERVED)
			return i;
		lo = d + 1;
	}
	return -1;
}

/* errno, read and cleared from Cython (an assignment there would make a local). */
static inline void xm_clear_errno(void) { errno = 0; }
static inline int xm_errno(void) { return errno; }

#endif
