/*
 * slots.h - claiming ring slots (lib-internal).
 */
#ifndef SHMBUS_LIB_SLOTS_H
#define SHMBUS_LIB_SLOTS_H

#include "internal.h"

struct space_wait {
	bool started;
	uint64_t start_ns;
	uint64_t stall_base_ns; /* what earlier calls waited on the same slot (shmbus_pub.stall_*) */
	int64_t timeout_ns;
	uint32_t rounds;
	uint64_t ahead;	     /* the position whose reuse a spinning waiter watches (wait_for_space_once; set by the caller) */
	uint64_t claim_seen; /* the claim position when the wait began: it stops the watch when it moves */
};

/*
 * slots_claim - claim n consecutive slot positions for pub, the first
 * first_slots of them for its first event (n for a single event). Urgent
 * (high, critical) claims may use the headroom low and normal ones leave.
 * The first event's head turns CLAIMED naming the publisher and its other
 * slots FREE; every slot after it turns CLAIMED too, and a batch frees the
 * other slots of each later event with slots_free_body when it reaches it.
 * A single-slot claim (n == 1) takes the next position of the publisher's
 * claim lease if it has one, and may claim a new lease (see slots.c); any
 * other claim gives the lease up. Waits for space as the publisher's
 * timeout allows: 0, -EAGAIN or -ETIMEDOUT.
 *
 * *ticks is the caller's pub_clock_ticks() reading, taken a moment
 * before: the lease's age is told by it. A claim that had to try again
 * (another claimer came first, it waited for space) reads the counter
 * again, so on return *ticks is a reading from no more than one try
 * before the claim's end (microseconds at worst, where a try took a lease
 * away with membarrier), and the caller may time its events by it
 * (pub_clock_now_at) instead of reading the counter again.
 */
int slots_claim(shmbus_pub_t *pub, uint32_t n, uint32_t first_slots, bool urgent, uint64_t *ticks,
		uint64_t *pos_out);

/* Give up the rest of pub's lease: its positions turn reusable at once
 * (pub_close, and any claim other than a lease's). */
void slots_lease_give_up(shmbus_pub_t *pub);

/* Whether pub's next single-slot claim comes from its lease (no claim_pos
 * then: callers need not fetch its line). */
static inline bool slots_lease_ready(const shmbus_pub_t *pub) { return pub->lease_next < pub->lease_end; }

/*
 * slots_take_lease - take position p, whose control word was c (LEASED or
 * TAKING, see seg_slot_ctl), from the publisher it was leased to. true:
 * the slot is ABORTED, naming nobody (reusable, nothing to read); false:
 * its publisher has it or may be taking it right now (look again later).
 */
bool slots_take_lease(shmbus_bus_t *bus, uint64_t p, uint64_t c);

/* The slots after the head of an n-slot event of a batch: FREE. */
void slots_free_body(shmbus_bus_t *bus, uint64_t head, uint32_t n);

/* Finish the claim a dead member's publisher r was making, if it died
 * between its claim CAS and its marks (reclaim, before abort_claims). */
void slots_recover_claim(shmbus_bus_t *bus, struct seg_pub *r, uint32_t dead);

/* Wake the publishers waiting for space, if any announced it (cheap when
 * none did). */
void slots_wake_waiters(shmbus_bus_t *bus);

#endif
