/*
 * The plain C loop the scanner's diff is measured against (bench/bench_scan.py): read what
 * the diff reads of every record (domid, flags, cpu_time, handle) and fold it into a sum.
 */
#ifndef XM_BENCH_FLOOR_H
#define XM_BENCH_FLOOR_H

#include "../fastcore/xm_helpers.h"

static inline uint64_t xm_floor_scan(const unsigned char *p, size_t count)
{
	uint64_t acc = 0;
	size_t i;

	for (i = 0; i < count; i++, p += XM_RECORD_SIZE)
		acc += xm_domid(p) ^ xm_ld32(p + XM_OFF_FLAGS) ^ xm_ld64(p + XM_OFF_CPU_TIME) ^
		       xm_ld64(p + XM_OFF_HANDLE) ^ xm_ld64(p + XM_OFF_HANDLE + 8);
	return acc;
}

#endif
