/*
 * prefetch.h - prefetching a line for writing.
 *
 * GCC's __builtin_prefetch(p, 1) emits PREFETCHW only when the build
 * targets a CPU with PRFCHW; for the baseline x86-64 of a distribution it
 * emits a read prefetch, which brings the line in shared, and the store
 * or locked instruction that follows still waits for a second transfer to
 * own it. So the CPU is asked once (CPUID 0x80000001, ECX bit 8) and
 * PREFETCHW is issued where it exists.
 */
#ifndef SHMBUS_SHM_PREFETCH_H
#define SHMBUS_SHM_PREFETCH_H

extern int shm_cpu_has_prefetchw; /* set before main, by prefetch.c */

/* Fetch the line holding p in a state that lets this core write it. A
 * hint: never faults, never orders anything. */
static inline void at_prefetch_write(const void *p)
{
#if defined(__x86_64__) || defined(__i386__)
	if (__builtin_expect(shm_cpu_has_prefetchw, 1)) {
		__asm__ __volatile__("prefetchw %0" : : "m"(*(const char *)p));
		return;
	}
#endif
	__builtin_prefetch(p, 1);
}

#endif
