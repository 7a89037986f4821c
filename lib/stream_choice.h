/*
 * stream_choice.h - whether a publisher's batches stream their events past
 * the caches (shm/stream.h) or write them through the caches
 * (lib-internal; ARCHITECTURE.md, "Streamed batches").
 *
 * Streaming spares the publisher the fetch of each line from the consumer
 * that read it a lap before, and costs the consumer a read from memory
 * instead of from a cache. Which way is faster depends on where the two
 * cores are, which the publisher cannot see: where they share no cache
 * streaming more than doubled batched events a second, where they share
 * one it cost a quarter (with two lines of each event streamed, every
 * window). And who sets the pace does not tell it either:
 * streaming can make the consumer the slower side in both places. So the
 * publisher measures. It times its streamable batch calls (their whole
 * time, waits for space included) over a stretch of slots written one
 * way, then a stretch the other way, and keeps the faster; it tries the
 * other way again after a run of stretches that doubles each time the try
 * confirms the choice (the host may move the cores), from
 * STREAM_RUN_FIRST stretches up to STREAM_RUN_MAX. A stretch is four laps
 * of the ring and at least STREAM_STRETCH_MIN slots; after each switch
 * the first lap is not timed: the consumer is still reading what the
 * other way wrote. Counted in slots, not events, a try of big events
 * costs as many bytes as a try of small ones.
 */
#ifndef SHMBUS_LIB_STREAM_CHOICE_H
#define SHMBUS_LIB_STREAM_CHOICE_H

#include <stdbool.h>
#include <stdint.h>

#define STREAM_STRETCH_LAPS 4u
#define STREAM_STRETCH_MIN 4096u
#define STREAM_RUN_FIRST 16u
#define STREAM_RUN_MAX 1024u
/* a try wins only if it is this much faster (1/16: 6 %) */
#define STREAM_WIN_SHIFT 4

struct stream_choice {
	bool cached;	   /* this stretch writes through the caches (else it streams) */
	bool trying;	   /* this stretch tries the way not chosen */
	bool known;	   /* cost[] holds a measurement of each way */
	uint32_t run;	   /* stretches of the chosen way between tries */
	uint32_t left;	   /* stretches of it before the next try */
	uint64_t settle;   /* slots not to time yet */
	uint64_t slots;	   /* timed so far in this stretch */
	uint64_t ticks;	   /* and their time */
	uint64_t cost[2];  /* ticks a stretch took, [cached]: the last measured of each way */
};

/* The slots of a stretch on a ring of nslots. */
static inline uint64_t stream_stretch_slots(uint32_t nslots)
{
	uint64_t s = (uint64_t)nslots * STREAM_STRETCH_LAPS;
	return s < STREAM_STRETCH_MIN ? STREAM_STRETCH_MIN : s;
}

/* Whether the next streamable batch streams. A zeroed choice streams, and
 * measures that first. */
static inline bool stream_choose(const struct stream_choice *c)
{
	return !c->cached;
}

/*
 * Account a streamable batch call that wrote `slots` slots of a ring of
 * nslots and took `ticks` (time-stamp counter), written the way
 * stream_choose said; moves to the next stretch, and decides, when this
 * one is full.
 */
static inline void stream_account(struct stream_choice *c, uint32_t nslots, uint64_t slots, uint64_t ticks)
{
	if (c->settle) {
		c->settle = slots < c->settle ? c->settle - slots : 0;
		return;
	}
	c->slots += slots;
	c->ticks += ticks;
	uint64_t stretch = stream_stretch_slots(nslots);
	if (c->slots < stretch)
		return;
	/* the cost of a whole stretch, so the two ways compare */
	c->cost[c->cached] = c->ticks * stretch / c->slots;
	c->slots = c->ticks = 0;
	bool flip;
	if (!c->known) { /* the first stretch streamed: now the caches */
		c->known = c->cached;
		flip = true;
		if (c->known) { /* both measured: keep the faster */
			flip = c->cost[1] > c->cost[0];
			c->run = c->left = STREAM_RUN_FIRST;
		}
	} else if (c->trying) {
		uint64_t tried = c->cost[c->cached], chosen = c->cost[!c->cached];
		bool wins = tried + (tried >> STREAM_WIN_SHIFT) < chosen;
		flip = !wins;
		c->trying = false;
		c->run = wins ? STREAM_RUN_FIRST : (c->run < STREAM_RUN_MAX ? c->run * 2 : c->run);
		c->left = c->run;
	} else {
		flip = --c->left == 0;
		c->trying = flip;
	}
	if (flip) {
		c->cached = !c->cached;
		c->settle = nslots; /* a lap */
	}
}

#endif
