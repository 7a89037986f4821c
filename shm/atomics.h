/*
 * atomics.h - the only place shmbus touches memory shared between processes
 * with atomic operations.
 *
 * Every operation names its ordering so a reader of the data path can check
 * each happens-before edge against docs/ARCHITECTURE.md without decoding
 * __atomic builtins. Plain loads and stores of shared words elsewhere are a bug.
 */
#ifndef SHMBUS_SHM_ATOMICS_H
#define SHMBUS_SHM_ATOMICS_H

#include <stdint.h>

#define SHM_CACHE_LINE 64

/* Acquire: later loads/stores of this thread cannot move before it. */
static inline uint64_t at_load_acquire_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint32_t at_load_acquire_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
/* Relaxed: counters and hints whose exact ordering nothing depends on. */
static inline uint64_t at_load_relaxed_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint32_t at_load_relaxed_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

static inline uint8_t at_load_acquire_u8(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void at_store_release_u8(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* Release: earlier loads/stores of this thread are visible before it. */
static inline void at_store_release_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void at_store_release_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void at_store_relaxed_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void at_store_relaxed_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

/* Compare-and-swap, acq_rel on success, acquire on failure (*expected is
 * refreshed with the current value). Strong: no spurious failure. The
 * acquire on failure is load-bearing: a queue producer whose CAS finds a
 * run's first cell FULL must see the run's other cells FULL too (queue.h). */
static inline int at_cas_u64(uint64_t *p, uint64_t *expected, uint64_t desired)
{
	return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static inline int at_cas_u32(uint32_t *p, uint32_t *expected, uint32_t desired)
{
	return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/*
 * Compare-and-swap of a 16-byte-aligned pair of words, p[0] and p[1], as
 * one: from (*lo, *hi) to (new_lo, new_hi), seq_cst (a locked instruction);
 * on failure *lo and *hi are refreshed with what the pair holds. Only
 * where AT_HAVE_CAS_PAIR is 1, and only once shm_cpu_has_cas_pair (set
 * before main, by cpu_detect.c) says the CPU has CMPXCHG16B, which the
 * baseline x86-64 does not promise. Not under ThreadSanitizer, which sees
 * no inline assembly: such a build takes the callers' other way, so the
 * race checker checks that way instead.
 */
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define AT_HAVE_CAS_PAIR 1
extern int shm_cpu_has_cas_pair;
static inline int at_cas_pair_u64(uint64_t *p, uint64_t *lo, uint64_t *hi, uint64_t new_lo, uint64_t new_hi)
{
	_Bool ok;
	__asm__ __volatile__("lock cmpxchg16b %1"
			     : "=@ccz"(ok), "+m"(*(unsigned __int128 *)(void *)p), "+a"(*lo), "+d"(*hi)
			     : "b"(new_lo), "c"(new_hi)
			     : "memory");
	return ok;
}
#else
#define AT_HAVE_CAS_PAIR 0
#endif

/* Read-modify-write, acq_rel: used for counts, flags and masks
 * whose result decides who acts next. */
static inline uint64_t at_fetch_add_u64(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
static inline uint32_t at_fetch_add_u32(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
static inline uint64_t at_fetch_or_u64(uint64_t *p, uint64_t v) { return __atomic_fetch_or(p, v, __ATOMIC_ACQ_REL); }
static inline uint64_t at_fetch_and_u64(uint64_t *p, uint64_t v) { return __atomic_fetch_and(p, v, __ATOMIC_ACQ_REL); }
static inline uint32_t at_fetch_or_u32(uint32_t *p, uint32_t v) { return __atomic_fetch_or(p, v, __ATOMIC_ACQ_REL); }
static inline uint32_t at_fetch_and_u32(uint32_t *p, uint32_t v) { return __atomic_fetch_and(p, v, __ATOMIC_ACQ_REL); }
static inline uint32_t at_exchange_u32(uint32_t *p, uint32_t v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }

/* Sequentially consistent RMW and load: the two halves of a Dekker
 * handshake ("I released / anyone waiting?" against "I wait / still
 * busy?") on different words. On x86 the RMW is the locked instruction it
 * would be anyway, so no extra fence is paid. */
static inline uint64_t at_fetch_and_u64_sc(uint64_t *p, uint64_t v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t at_load_u32_sc(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline uint64_t at_load_u64_sc(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }

/* Sequentially consistent exchange, compare-and-swap, minimum and maximum
 * of 64-bit words: a catch-up gap (lib/catchup.c) is two words, one lowered
 * and one raised by droppers, and a consumer closing the gap must see
 * either a dropper's raise or the dropper must see the closed gap. */
static inline uint64_t at_exchange_u64_sc(uint64_t *p, uint64_t v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
static inline int at_cas_u64_sc(uint64_t *p, uint64_t *expected, uint64_t desired)
{
	return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
/* Store min(*p, v); returns the previous value. */
static inline uint64_t at_fetch_min_u64_sc(uint64_t *p, uint64_t v)
{
	uint64_t cur = __atomic_load_n(p, __ATOMIC_SEQ_CST);
	while (v < cur && !__atomic_compare_exchange_n(p, &cur, v, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
		;
	return cur;
}
/* Store max(*p, v); returns the previous value. */
static inline uint64_t at_fetch_max_u64_sc(uint64_t *p, uint64_t v)
{
	uint64_t cur = __atomic_load_n(p, __ATOMIC_SEQ_CST);
	while (v > cur && !__atomic_compare_exchange_n(p, &cur, v, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
		;
	return cur;
}

/* Statistics counters: relaxed, never used to order anything. */
static inline void at_count_u64(uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

/* Full fence: the store-then-load (Dekker) pattern between a publisher that
 * pushes then checks "is anyone asleep" and a sleeper that announces itself
 * then re-checks the queue. Acquire/release alone allows both to miss. */
static inline void at_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline void at_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

#endif
