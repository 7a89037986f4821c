/*
 * prefetch.c - whether the CPU has PREFETCHW (see prefetch.h).
 */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "prefetch.h"

int shm_cpu_has_prefetchw;

__attribute__((constructor)) static void prefetch_detect(void)
{
#if defined(__x86_64__) || defined(__i386__)
	unsigned a, b, c, d;
	if (__get_cpuid(0x80000001u, &a, &b, &c, &d))
		shm_cpu_has_prefetchw = (c >> 8) & 1; /* PRFCHW (3DNowPrefetch) */
#endif
}
