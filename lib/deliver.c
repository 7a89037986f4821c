/*
 * deliver.c - directed delivery: a copy of one event into the ring for one
 * subscription only (replay to a subscription, dead-letter retry).
 *
 * It is a publish with routing replaced by one push: the same claim
 * (slots_claim, with its waiting and priority headroom), the same commit
 * order (descriptor, holder bit, COMMITTED, commit byte, fence, wake), so
 * consumers, releases and crash recovery treat it like any other event.
 * The copy keeps the event's id and fields; its seq is its new position
 * and it carries SEG_EVF_DIRECTED, which the recorder skips (the original
 * is already in the log).
 */
#include <errno.h>
#include <string.h>

#include "log.h"
#include "slots.h"

/* The library's own publisher on this bus, opened on first use. */
static int directed_pub(shmbus_bus_t *bus, shmbus_pub_t **out)
{
	struct log_state *st = log_state_get(bus);
	if (!st)
		return -ENOMEM;
	pthread_mutex_lock(&st->pub_lock);
	int rc = 0;
	if (!st->pub)
		rc = shmbus_pub_open(bus, &(shmbus_pub_opts_t){.source = "shmbus.deliver"}, &st->pub);
	*out = st->pub;
	pthread_mutex_unlock(&st->pub_lock);
	return rc;
}

int deliver_to(shmbus_bus_t *bus, uint32_t idx, uint64_t gen, const struct seg_event *ev, uint16_t add_flags)
{
	shmbus_pub_t *pub;
	int rc;
	if ((rc = bus_check_usable(bus)) < 0 || (rc = directed_pub(bus, &pub)) < 0)
		return rc;
	if (idx >= bus->max_subs)
		return shmbus__fail(ESRCH, "no subscription with index %u", idx);
	if (ev->size > bus->max_event_bytes)
		return shmbus__fail(EMSGSIZE, "event of %u bytes does not fit bus '%s'", ev->size, bus->name);
	struct log_state *st = bus->log;
	pthread_mutex_lock(&st->pub_lock); /* one thread at a time on the publisher */
	uint32_t n = log_slots_for(bus, ev->size);
	bool urgent = ev->priority >= SHMBUS_PRIORITY_HIGH;
	uint64_t pos, ticks = pub_clock_ticks(); /* before routing_begin, as a publish */
	routing_begin(pub);
	if ((rc = slots_claim(pub, n, n, urgent, &ticks, &pos)) < 0) {
		routing_abort(pub);
		pthread_mutex_unlock(&st->pub_lock);
		return rc;
	}
	struct seg_event *dst = (struct seg_event *)(void *)bus_slot_data(bus, pos);
	memcpy(dst, ev, ev->size);
	dst->seq = pos;
	dst->committed = 0;
	dst->flags = (uint16_t)((ev->flags & ~SEG_EVF_REDELIVERED) | add_flags | SEG_EVF_DIRECTED);
	dst->published_ns = now_real_ns();
	struct seg_sub *s = bus_sub(bus, idx);
	uint64_t hold[SEG_HOLDER_WORDS] = {0}, wake[SEG_MASK_WORDS] = {0};
	bool live = at_load_acquire_u32(&s->state) == SEG_SUB_ACTIVE && at_load_acquire_u64(&s->generation) == gen;
	if (live) {
		struct queue_view q = bus_queue(bus, idx, urgent ? SEG_QUEUE_URGENT : SEG_QUEUE_NORMAL);
		if ((rc = queue_push(&q, bus->member, pos | SEG_DESC_HOLDS_REF)) == 0) {
			hold[idx / 64] |= 1ull << (idx % 64);
			wake[idx / 64] |= 1ull << (idx % 64);
		}
	} else {
		rc = -ESRCH;
	}
	uint64_t *h = bus_slot_holders(bus, pos);
	for (unsigned w = 0; w < SEG_HOLDER_WORDS; w++)
		at_store_relaxed_u64(&h[w], hold[w]);
	/* committed even when nobody holds it: an unheld COMMITTED slot is
	 * simply reusable, like an event that matched no subscription */
	at_store_release_u64(bus_slot_ctl(bus, pos), seg_ctl_make(bus_lap(bus, pos), SEG_SLOT_COMMITTED, 0));
	at_store_release_u8(&dst->committed, 1);
	at_fence_seq_cst();
	if (!hold[idx / 64])
		slots_wake_waiters(bus); /* reusable at once (see routing_end) */
	route_wake_set(bus, wake);
	at_store_release_u64(&pub->rec->routing, (pub->rec->routing | 1) + 1);
	pthread_mutex_unlock(&st->pub_lock);
	if (rc == -ESRCH)
		return shmbus__fail(ESRCH, "subscription %llu of bus '%s' no longer exists",
				    (unsigned long long)((gen << 16) | idx), bus->name);
	if (rc < 0)
		return shmbus__fail(-rc, "queue of subscription %u is full", idx);
	return 0;
}
