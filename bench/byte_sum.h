/*
 * byte_sum.h - how the benchmarks' subscribers touch a payload: every byte
 * read, eight at a time, so the reading pulls every byte through the cache
 * without becoming the figure (a byte-at-a-time loop costs about four
 * instructions a byte, 130 for a 32-byte payload: more than a third of what
 * the library spends consuming the event).
 */
#ifndef SHMBUS_BENCH_BYTE_SUM_H
#define SHMBUS_BENCH_BYTE_SUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Sum of all bytes: two bytes per 16-bit lane per word, folded every 128
 * words before a lane can overflow (128 * 510 < 65536). */
static inline uint64_t byte_sum(const uint8_t *p, size_t n)
{
	const uint64_t m = 0x00ff00ff00ff00ffull;
	uint64_t total = 0;
	size_t i = 0;

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
	for (; i < n; i++)
		total += p[i];
	return total;
}

#endif
