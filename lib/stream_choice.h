/*
 * stream_choice.h - whether a publisher's batches stream their events past
 * the caches (shm/stream.h) or write them through the caches
 * (lib-internal; ARCHITECTURE.md, "Streamed batches").
 *
 * Streaming spares the publisher the fetch of each line from the consumer
 * that read it a lap ago, and costs the consumer a read from memory
 * instead of from a cache. Where the two cores share no cache, the first
 * is what limits a batching publisher and streaming wins (a third more
 * events a second measured); where they share one, the consumer is the
 * slower side already and streaming slows it (28 % fewer). The publisher
 * cannot see where the cores are, but it can see who sets the pace: a
 * publisher that keeps finding the ring full waits for the consumer. So
 * batches stream until a publisher waits for space STREAM_WAITS_TO_YIELD
 * times within STREAM_STRETCH_EVENTS of its events, then go through the
 * caches for STREAM_CACHED_EVENTS events, then try streaming again (the
 * host may have moved the cores meanwhile).
 */
#ifndef SHMBUS_LIB_STREAM_CHOICE_H
#define SHMBUS_LIB_STREAM_CHOICE_H

#include <stdbool.h>
#include <stdint.h>

#define STREAM_STRETCH_EVENTS 65536u
#define STREAM_WAITS_TO_YIELD 4u
#define STREAM_CACHED_EVENTS (1u << 20)

/* A publisher's choice; all zero to start, streaming. */
struct stream_choice {
	uint64_t cached_until;	 /* while non-zero: through the caches until this many events are published */
	uint64_t mark_published; /* the start of the current stretch of streaming, */
	uint64_t mark_waits;	 /* and the publisher's waits for space then */
};

/*
 * Whether the next batch streams, for a publisher that has published
 * `published` events and waited for space `waits` times so far (its own
 * counters in the segment, which only it writes: they only grow).
 */
static inline bool stream_choose(struct stream_choice *c, uint64_t published, uint64_t waits)
{
	if (c->cached_until) {
		if (published < c->cached_until)
			return false;
		c->cached_until = 0;
		c->mark_published = published;
		c->mark_waits = waits;
	}
	if (published - c->mark_published >= STREAM_STRETCH_EVENTS) {
		c->mark_published = published;
		c->mark_waits = waits;
	}
	if (waits - c->mark_waits >= STREAM_WAITS_TO_YIELD) {
		c->cached_until = published + STREAM_CACHED_EVENTS;
		return false;
	}
	return true;
}

#endif
