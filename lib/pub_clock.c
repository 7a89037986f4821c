/*
 * pub_clock.c - anchoring and calibrating a publisher's event clock (see
 * pub_clock.h).
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h" /* now_real_ns */
#include "pub_clock.h"
#if PUB_CLOCK_HAVE_TSC
#include <cpuid.h>
#endif

#define CALIBRATE_NS 10000000ull   /* two anchors at least this far apart */
#define RESYNC_NS 1000000000ull	   /* re-anchor at most this far apart */
#define MAX_ERROR_NS 1000000ull	   /* a re-anchor this far off starts over */

/*
 * Whether this process may convert the counter: the CPU says its TSC is
 * invariant (CPUID 0x80000007 EDX bit 8: constant rate in every power
 * state), the kernel keeps time with it (clocksource "tsc", so it found it
 * synchronised across CPUs), and SHMBUS_REALTIME_CLOCK is not set (every
 * reading from the real clock: for comparisons, and for hosts whose
 * counter misbehaves). Read once per process.
 */
static int counter_usable(void)
{
	static int usable = -1;
	int u = __atomic_load_n(&usable, __ATOMIC_RELAXED);
	if (u >= 0)
		return u;
	u = 0;
#if PUB_CLOCK_HAVE_TSC
	unsigned a, b, c, d;
	const char *off = getenv("SHMBUS_REALTIME_CLOCK");
	if (!(off && *off && strcmp(off, "0") != 0) && __get_cpuid(0x80000007u, &a, &b, &c, &d) && (d >> 8) & 1) {
		char src[16] = {0};
		int fd = open("/sys/devices/system/clocksource/clocksource0/current_clocksource", O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			ssize_t n = read(fd, src, sizeof src - 1);
			close(fd);
			u = n >= 3 && strncmp(src, "tsc", 3) == 0 && (n == 3 || src[3] == '\n');
		}
	}
#endif
	__atomic_store_n(&usable, u, __ATOMIC_RELAXED);
	return u;
}

/* The later of t and the last reading, unless t is back by more than
 * MAX_ERROR_NS (the real clock was set back: follow it). */
static uint64_t not_back(struct pub_clock *c, uint64_t t)
{
	if (t < c->last && c->last - t < MAX_ERROR_NS)
		t = c->last;
	return c->last = t;
}

#if PUB_CLOCK_HAVE_TSC
/*
 * The real clock and the counter at one moment: the real clock read
 * between two counter readings close together, the counter taken halfway.
 * A reading interrupted (preempted, or the VM descheduled) between them
 * would pair the real clock with a count from elsewhere; such a pair is
 * read again, up to three times, and false if none was close.
 */
#define PAIR_MAX_TICKS 5000u /* 1-2 us at today's TSC rates; a pair takes ~100 */
#define PAIR_MISSES_MAX 16u  /* syncs in a row without a close pair: real clock only */
static bool read_pair(uint64_t *tsc, uint64_t *real)
{
	for (int tries = 0; tries < 3; tries++) {
		uint64_t t1 = __rdtsc();
		*real = now_real_ns();
		uint64_t t2 = __rdtsc();
		if (t2 >= t1 && t2 - t1 < PAIR_MAX_TICKS) {
			*tsc = t1 + (t2 - t1) / 2;
			return true;
		}
	}
	return false;
}

/* Start calibrating at (tsc, real): the rate comes from the next anchor. */
static void calibrate_from(struct pub_clock *c, uint64_t tsc, uint64_t real)
{
	c->mult = 0;
	c->cal_tsc = tsc;
	c->cal_real = real;
}

/* Whether the re-anchor at (tsc, real) would rest on a rate no better than
 * noise: the counter is behind the anchor, or too close to it. */
static bool too_early(const struct pub_clock *c, uint64_t tsc)
{
	return tsc < c->tsc0 || tsc - c->tsc0 < c->resync_tsc - c->tsc0;
}

uint64_t pub_clock_anchor(struct pub_clock *c, uint64_t tsc, uint64_t real)
{
	if (c->mult) {
		if (too_early(c, tsc)) {
			/* A count a little behind the anchor (this thread moved to
			 * a CPU whose counter lags by a few ticks) or a sync before
			 * its time: the real clock answers, the anchor stays. A
			 * counter a millisecond or more behind jumped: start over. */
			uint64_t behind = tsc < c->tsc0 ? c->tsc0 - tsc : 0;
			if ((((unsigned __int128)behind * c->mult) >> 32) >= MAX_ERROR_NS)
				calibrate_from(c, tsc, real);
			return not_back(c, real);
		}
		uint64_t ticks = tsc - c->tsc0, predicted = pub_clock_at(c, tsc);
		uint64_t off = predicted > real ? predicted - real : real - predicted;
		if (off > MAX_ERROR_NS || real <= c->real0) {
			calibrate_from(c, tsc, real); /* set, or jumped: over again */
			return not_back(c, real);
		}
		uint64_t mult = (uint64_t)(((unsigned __int128)(real - c->real0) << 32) / ticks);
		uint64_t change = mult > c->mult ? mult - c->mult : c->mult - mult;
		if (change > c->mult / 1000) {
			calibrate_from(c, tsc, real); /* the rate moved by over 0.1 % */
			return not_back(c, real);
		}
		c->mult = mult;
		c->interval_ns = c->interval_ns * 2 < RESYNC_NS ? c->interval_ns * 2 : RESYNC_NS;
	} else if (c->cal_tsc == 0 || tsc <= c->cal_tsc || real <= c->cal_real) {
		calibrate_from(c, tsc, real);
		return not_back(c, real);
	} else if (real - c->cal_real < CALIBRATE_NS) {
		return not_back(c, real);
	} else {
		c->mult = (uint64_t)(((unsigned __int128)(real - c->cal_real) << 32) / (tsc - c->cal_tsc));
		c->interval_ns = 4 * CALIBRATE_NS;
	}
	if (c->mult == 0) { /* more than 2^32 ticks a nanosecond: not a TSC */
		c->mode = PUB_CLOCK_REAL;
		return not_back(c, real);
	}
	c->tsc0 = tsc;
	c->real0 = real;
	c->resync_tsc = tsc + (uint64_t)(((unsigned __int128)c->interval_ns << 32) / c->mult);
	return not_back(c, real);
}
#endif

uint64_t pub_clock_sync(struct pub_clock *c)
{
	if (c->mode == PUB_CLOCK_UNKNOWN)
		c->mode = counter_usable() ? PUB_CLOCK_COUNTER : PUB_CLOCK_REAL;
#if PUB_CLOCK_HAVE_TSC
	uint64_t tsc, real;
	if (c->mode == PUB_CLOCK_COUNTER) {
		if (read_pair(&tsc, &real)) {
			c->pair_misses = 0;
			return pub_clock_anchor(c, tsc, real);
		}
		if (++c->pair_misses >= PAIR_MISSES_MAX)
			c->mode = PUB_CLOCK_REAL; /* a counter this far from the clock is no use */
	}
#endif
	return not_back(c, now_real_ns());
}
