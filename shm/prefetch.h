/*
 * prefetch.h - prefetching a line for writing, and handing a written line
 * to the shared cache.
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

extern int shm_cpu_has_prefetchw; /* set before main, by cpu_detect.c */
extern int shm_cpu_has_cldemote;  /* likewise */

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

/*
 * Move the line holding p out of this core's private caches into the
 * shared last-level cache (CLDEMOTE), so that another core's next access
 * hits there instead of snooping this core for a modified line. A hint:
 * it never faults and orders nothing, and its encoding is a NOP on
 * x86-64 processors without CLDEMOTE (hence the bytes, not the mnemonic,
 * which older assemblers reject). Elsewhere, nothing. A loop of them is
 * worth running only where shm_cpu_has_cldemote (CPUID 7, ECX bit 25):
 * elsewhere each is an instruction for nothing.
 */
static inline void at_demote(const void *p)
{
#if defined(__x86_64__)
	__asm__ __volatile__(".byte 0x0f, 0x1c, 0x00" /* cldemote (%rax) */ : : "a"(p) : "memory");
#else
	(void)p;
#endif
}

#endif
