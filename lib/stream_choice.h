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
 * one it cost a quarter. And who sets the pace does not tell it either:
 * streaming can make the consumer the slower side in both places. So the
 * publisher measures. It times its streamable batch calls (their whole
 * time, waits for space included) over a stretch of events in one way,
 * then a stretch in the other, and keeps the faster; it tries the other
 * way again after a run of stretches that doubles each time the try
 * confirms the choice (the host may move the cores), from
 * STREAM_RUN_FIRST stretches up to STREAM_RUN_MAX. After each switch the
 * first STREAM_SETTLE_EVENTS are not timed: the consumer is still reading
 * what the other way wrote.
 */
#ifndef SHMBUS_LIB_STREAM_CHOICE_H
#define SHMBUS_LIB_STREAM_CHOICE_H

#include <stdbool.h>
#include <stdint.h>

#define STREAM_STRETCH_EVENTS 16384u
#define STREAM_SETTLE_EVENTS 4096u
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
	uint64_t settle;   /* events not to time yet */
	uint64_t events;   /* timed so far in this stretch */
	uint64_t ticks;	   /* and their time */
	uint64_t cost[2];  /* ticks a stretch took, [cached]: the last measured of each way */
};

/* Whether the next streamable batch streams. A zeroed choice streams, and
 * measures that first. */
static inline bool stream_choose(const struct stream_choice *c)
{
	return !c->cached;
}

/*
 * Account a streamable batch call of `events` events that took `ticks`
 * (time-stamp counter), written the way stream_choose said; moves to the
 * next stretch, and decides, when this one is full.
 */
static inline void stream_account(struct stream_choice *c, uint64_t events, uint64_t ticks)
{
	if (c->settle) {
		c->settle = events < c->settle ? c->settle - events : 0;
		return;
	}
	c->events += events;
	c->ticks += ticks;
	if (c->events < STREAM_STRETCH_EVENTS)
		return;
	/* the cost of a whole stretch, so the two ways compare */
	c->cost[c->cached] = c->ticks * STREAM_STRETCH_EVENTS / c->events;
	c->events = c->ticks = 0;
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
		c->settle = STREAM_SETTLE_EVENTS;
	}
}

#endif
