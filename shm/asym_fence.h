/*
 * asym_fence.h - an asymmetric memory fence between processes.
 *
 * Dekker-style handshakes (each side stores, then loads what the other
 * stored) need a store-load fence on both sides. When one side runs on
 * every event and the other almost never, the frequent side can make do
 * with a compiler barrier (asym_fence_light) if the rare side issues a
 * heavy fence (asym_fence_heavy) that runs a full barrier on every CPU
 * currently running a registered process: membarrier(2)'s
 * MEMBARRIER_CMD_GLOBAL_EXPEDITED, as userspace RCU and Folly do within a
 * process. A registered process's thread that is not running has passed
 * a context switch, itself a full barrier.
 *
 * Only processes that registered (asym_fence_register) may rely on the
 * light side. No policy: callers decide what to do without it.
 */
#ifndef SHMBUS_SHM_ASYM_FENCE_H
#define SHMBUS_SHM_ASYM_FENCE_H

/* Register this process once (later calls return the first result). 0,
 * or -errno when the kernel or a seccomp filter refuses membarrier. */
int asym_fence_register(void);

/* The heavy side: 0 once every registered process's running threads
 * executed a full barrier, or -errno. */
int asym_fence_heavy(void);

/* The light side: the compiler must keep the program's order. */
static inline void asym_fence_light(void) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

#endif
