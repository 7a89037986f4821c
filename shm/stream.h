/*
 * stream.h - writing whole cache lines past the caches (non-temporal
 * stores), and the fence that orders them.
 *
 * A store to a line this core does not own first fetches the line (a
 * read for ownership), and when another core read the line last, that
 * fetch crosses to it and back. A writer that moves lines to a reader on
 * another core pays one such crossing per line, and when the two cores
 * share no cache (two chiplets), the crossing costs hundreds of
 * nanoseconds and the writer's store queue fills with stores waiting for
 * their lines. A streaming store (MOVNTDQ) sends the written line to
 * memory without fetching it, invalidating the other copies on its way:
 * the writer never waits for the reader's cache. The reader then takes the
 * line from memory.
 *
 * Streaming stores are weakly ordered, with each other and with ordinary
 * stores: stream_fence (SFENCE) must come between them and the store that
 * tells a reader the bytes are there. Only whole lines should be streamed
 * (a partly streamed line is written to memory in pieces), and nothing
 * should read a streamed line before the fence (the read waits for the
 * line to reach memory and fetches it back).
 *
 * SHM_HAVE_STREAM is 1 on x86-64 (SSE2 is in its baseline), outside a
 * ThreadSanitizer build, which does not see the stores of intrinsics: the
 * callers' other path (ordinary stores) is then the one the race checker
 * checks. Elsewhere it is 0 and nothing here is defined.
 */
#ifndef SHMBUS_SHM_STREAM_H
#define SHMBUS_SHM_STREAM_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define SHM_HAVE_STREAM 1
#include <emmintrin.h>
#include <x86intrin.h>

/* Sixteen bytes in a register, on their way to a streaming store. */
typedef __m128i stream_chunk;

/* The sixteen bytes at p (any alignment), read with an ordinary load. */
static inline stream_chunk stream_chunk_at(const void *p)
{
	return _mm_loadu_si128((const __m128i *)p);
}

/* The sixteen bytes of lo then hi (little endian: lo is bytes 0..7). */
static inline stream_chunk stream_chunk_of(uint64_t lo, uint64_t hi)
{
	return _mm_set_epi64x((long long)hi, (long long)lo);
}

/* Store c at dst, which is 16-byte aligned, past the caches. */
static inline void stream_put(void *dst, stream_chunk c)
{
	_mm_stream_si128((__m128i *)dst, c);
}

/* Copy lines whole 64-byte lines from src (any alignment) to dst (64-byte
 * aligned) with streaming stores. */
static inline void stream_copy_lines(void *dst, const void *src, size_t lines)
{
	char *d = dst;
	const char *s = src;
	for (size_t i = 0; i < lines; i++, d += 64, s += 64) {
		stream_chunk a = stream_chunk_at(s), b = stream_chunk_at(s + 16), c = stream_chunk_at(s + 32),
			     e = stream_chunk_at(s + 48);
		stream_put(d, a);
		stream_put(d + 16, b);
		stream_put(d + 32, c);
		stream_put(d + 48, e);
	}
}

/* The time-stamp counter (RDTSC, unordered): for timing one way of
 * writing against the other over thousands of events. */
static inline uint64_t stream_ticks(void)
{
	return __rdtsc();
}

/* Order every streaming store before it before every store after it
 * (SFENCE). */
static inline void stream_fence(void)
{
	_mm_sfence();
}
#else
#define SHM_HAVE_STREAM 0
#endif

#endif
