/*
 * byte_sum.h - how the benchmarks' subscribers touch a payload: every byte
 * read, sixteen at a time, so the reading pulls every byte through the
 * cache without becoming the figure. A byte-at-a-time loop costs about four
 * instructions a byte (130 for a 32-byte payload: more than a third of what
 * the library spends consuming the event); eight bytes at a time in 16-bit
 * lanes, about 75; PSADBW (SSE2, in every x86-64), which sums 16 bytes into
 * two 64-bit halves in one instruction, about 25 (x86-64; elsewhere the
 * eight-byte lanes).
 */
#ifndef SHMBUS_BENCH_BYTE_SUM_H
#define SHMBUS_BENCH_BYTE_SUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#endif

/* Sum of all bytes. */
static inline uint64_t byte_sum(const uint8_t *p, size_t n)
{
	uint64_t total = 0;
	size_t i = 0;
#if defined(__SSE2__) && defined(__x86_64__)
	__m128i acc = _mm_setzero_si128(), zero = _mm_setzero_si128();
	for (; i + 16 <= n; i += 16)
		acc = _mm_add_epi64(acc, _mm_sad_epu8(_mm_loadu_si128((const __m128i *)(const void *)(p + i)), zero));
	total = (uint64_t)_mm_cvtsi128_si64(acc) + (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc));
#else
	/* two bytes per 16-bit lane per word, folded every 128 words before
	 * a lane can overflow (128 * 510 < 65536) */
	const uint64_t m = 0x00ff00ff00ff00ffull;
	while (i + 8 <= n) {
		size_t end = n - i > 1024 ? i + 1024 : n;
		uint64_t lanes = 0;
		for (; i + 8 <= end; i += 8) {
			uint64_t w;
			memcpy(&w, p + i, 8);
			lanes += (w & m) + ((w >> 8) & m);
		}
		total += (lanes & 0xffff) + ((lanes >> 16) & 0xffff) + ((lanes >> 32) & 0xffff) + (lanes >> 48);
	}
#endif
	for (; i < n; i++)
		total += p[i];
	return total;
}

#endif
