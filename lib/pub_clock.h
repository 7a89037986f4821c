/*
 * pub_clock.h - the wall clock of a publisher's events: CLOCK_REALTIME,
 * read from the time-stamp counter between readings of the real clock.
 *
 * Every published event carries the time it was published (and its
 * UUIDv7 id the millisecond). Read through the vDSO, CLOCK_REALTIME costs
 * an ordered TSC read, a sequence-counter loop and a conversion: about
 * 28 ns on the 2-vCPU AMD EPYC guest of the README, a quarter of a single
 * publish. A bare RDTSC and one multiply cost a third of that, so each
 * publisher converts the counter itself:
 *
 *   now = real0 + ((tsc - tsc0) * mult) >> 32
 *
 * with (tsc0, real0) an anchor taken from the real clock and mult the
 * nanoseconds per tick (a 32.32 fixed-point number) measured between two
 * anchors. Until a publisher has two anchors 10 ms apart, and wherever
 * the counter cannot be trusted (no invariant TSC, the kernel does not
 * keep time with it, or pairs of readings keep coming out far apart),
 * every reading is the real clock's.
 *
 * Accuracy. An anchor pairs the real clock with the counter read just
 * before and after it (at most 5000 ticks apart, 1-2 us; about 100 ticks
 * as a rule), so it is off by half that at most. The first rate comes from
 * two anchors 10 ms apart; the publisher re-anchors 40 ms later, then at
 * doubling intervals up to one second, each time measuring mult again
 * over the whole interval, which also follows the kernel's slewing of
 * the real clock. From the pairs alone a reading is off by well under a
 * microsecond as a rule and by a few at worst (8 us in the first 40 ms).
 * While the kernel changes its slew rate, or when the real clock is set
 * by less than a millisecond, readings follow only at the next re-anchor,
 * up to that much off until then. A re-anchor more than a millisecond off
 * its prediction (the clock was set, the counter jumped with the virtual
 * machine), or whose new rate is more than 0.1 % from the old, starts the
 * calibration over. Readings of one publisher never go back by less than
 * a millisecond (a re-anchor would otherwise move them back by the error
 * it corrects); a real clock set back further is followed.
 *
 * One publisher handle is used by one thread at a time, so the state is
 * plain memory in the handle; zeroed memory is a clock that has read
 * nothing yet.
 */
#ifndef SHMBUS_LIB_PUB_CLOCK_H
#define SHMBUS_LIB_PUB_CLOCK_H

#include <stdint.h>

/* x86-64 only: the conversion's 128-bit products, and RDTSC. */
#if defined(__x86_64__)
#include <x86intrin.h>
#define PUB_CLOCK_HAVE_TSC 1
#else
#define PUB_CLOCK_HAVE_TSC 0
#endif

enum { PUB_CLOCK_UNKNOWN, PUB_CLOCK_COUNTER, PUB_CLOCK_REAL };

struct pub_clock {
	uint64_t tsc0, real0;	    /* the anchor */
	uint64_t mult;		    /* ns per tick << 32; 0 = not calibrated */
	uint64_t resync_tsc;	    /* re-anchor at this count */
	uint64_t interval_ns;	    /* ... this long after the anchor (40 ms, doubling to 1 s) */
	uint64_t cal_tsc, cal_real; /* calibration's first anchor; cal_tsc 0 = none */
	uint64_t last;		    /* the last reading */
	uint32_t pair_misses;	    /* pairs in a row read too far apart */
	int mode;		    /* PUB_CLOCK_UNKNOWN (zeroed), _COUNTER or _REAL */
};

/* The real clock and the counter together: updates c and returns the time.
 * The slow path of pub_clock_now. */
uint64_t pub_clock_sync(struct pub_clock *c);

#if PUB_CLOCK_HAVE_TSC
/*
 * What pub_clock_sync does with a pair read together (tsc, real) in
 * counter mode: calibrate, re-anchor or start over, as above; returns the
 * reading (real, not before the last reading). Apart for the unit tests,
 * which feed it pairs of their own.
 */
uint64_t pub_clock_anchor(struct pub_clock *c, uint64_t tsc, uint64_t real);

/* The time at count tsc by the anchor and rate (calibrated, tsc at or
 * after the anchor). */
static inline uint64_t pub_clock_at(const struct pub_clock *c, uint64_t tsc)
{
	return c->real0 + (uint64_t)(((unsigned __int128)(tsc - c->tsc0) * c->mult) >> 32);
}
#endif

/*
 * A reading of the publisher's counter: the time-stamp counter where
 * PUB_CLOCK_HAVE_TSC, else 0 (nothing read). A publish reads it once and
 * uses it twice: for its lease's age (slots_claim, which reads the
 * monotonic clock instead where there is no counter) and for its event's
 * time (pub_clock_now_at, which then reads the real clock). RDTSC is
 * microcoded and costs about 9 ns on the README's AMD guest, as much as
 * two locked instructions: a second reading on every single publish was a
 * tenth of its time.
 */
static inline uint64_t pub_clock_ticks(void)
{
#if PUB_CLOCK_HAVE_TSC
	return __rdtsc();
#else
	return 0;
#endif
}

/* The wall clock (ns since the epoch) for an event published at ticks, a
 * pub_clock_ticks() reading of this thread taken a moment ago (where the
 * counter is not the clock, the real clock is read now instead). */
static inline uint64_t pub_clock_now_at(struct pub_clock *c, uint64_t ticks)
{
#if PUB_CLOCK_HAVE_TSC
	/* before the anchor (a CPU whose counter is a little behind) or due:
	 * the slow path decides */
	if (__builtin_expect(c->mult == 0 || ticks - c->tsc0 >= c->resync_tsc - c->tsc0, 0))
		return pub_clock_sync(c);
	uint64_t now = pub_clock_at(c, ticks);
	return c->last = now > c->last ? now : c->last;
#else
	(void)ticks;
	return pub_clock_sync(c);
#endif
}

/* The wall clock (ns since the epoch) for an event published now. */
static inline uint64_t pub_clock_now(struct pub_clock *c) { return pub_clock_now_at(c, pub_clock_ticks()); }

#endif
