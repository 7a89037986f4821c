/*
 * cpu_detect.h - CPU features read once before main (cpu_detect.c) for
 * code that has a faster path where they exist. PREFETCHW and CMPXCHG16B
 * are declared next to their users (prefetch.h, atomics.h).
 */
#ifndef SHMBUS_SHM_CPU_DETECT_H
#define SHMBUS_SHM_CPU_DETECT_H

/* AVX2, with the operating system saving the YMM registers. */
extern int shm_cpu_has_avx2;

#endif
