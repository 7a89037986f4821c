/*
 * cpu_detect.c - whether the CPU has PREFETCHW and CLDEMOTE (see prefetch.h),
 * CMPXCHG16B (see at_cas_pair_u64 in atomics.h) and AVX2 (cpu_detect.h).
 */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "atomics.h"
#include "cpu_detect.h"
#include "prefetch.h"

int shm_cpu_has_prefetchw;
int shm_cpu_has_cldemote;
int shm_cpu_has_avx2;
#if AT_HAVE_CAS_PAIR
int shm_cpu_has_cas_pair;
#endif

__attribute__((constructor)) static void cpu_detect(void)
{
#if defined(__x86_64__) || defined(__i386__)
	unsigned a, b, c, d;
	if (__get_cpuid(0x80000001u, &a, &b, &c, &d))
		shm_cpu_has_prefetchw = (c >> 8) & 1; /* PRFCHW (3DNowPrefetch) */
	if (__get_cpuid_count(7, 0, &a, &b, &c, &d))
		shm_cpu_has_cldemote = (c >> 25) & 1; /* CLDEMOTE */
#endif
#if AT_HAVE_CAS_PAIR
	if (__get_cpuid(1, &a, &b, &c, &d))
		shm_cpu_has_cas_pair = (c >> 13) & 1; /* CX16 */
#endif
#if defined(__x86_64__)
	/* the builtin checks that the OS saves the YMM state (XGETBV) too */
	__builtin_cpu_init();
	shm_cpu_has_avx2 = __builtin_cpu_supports("avx2");
#endif
}
