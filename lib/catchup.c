/*
 * catchup.c - durable subscriptions that fell behind the ring catch up
 * from the log.
 *
 * Whoever drops events routed to a durable subscription (a congested
 * publisher draining it, a stall revoking what its consumer holds, a full
 * queue, a give-back that finds no room) records the dropped sequences as
 * a gap in the subscription's record, before it drops their holds:
 * gap_hi is raised past the highest (atomic max), gap_lo lowered to the
 * lowest (atomic min), then gap_owed counts them. Nothing is counted
 * missed yet.
 *
 * A consumer that polls finds gap_lo set (one relaxed load on a line that
 * only drops and catch-ups write) and serves the gap before its queues:
 * the next event of the log in [gap_lo, gap_hi) that the subscription's
 * stored filter matches is claimed by moving gap_lo past it with a CAS, so
 * each gap event goes to one consumer even in a group, and handed out in
 * place from the log's read-only mapping. When the log holds nothing more
 * of the gap, the consumer closes it (gap_lo back to none) and whatever
 * the log could not serve (retention removed it, no recorder ran, the
 * recorder missed it) is what gap_owed still counts: it goes to `missed`.
 * While the gap reaches past what a live recorder has written, the
 * consumer waits for it rather than deliver the queue out of order.
 *
 * Closing races with drops: a dropper raises gap_hi before it lowers
 * gap_lo, and the closer re-reads gap_hi after its CAS (all sequentially
 * consistent). Either the closer sees the raise and reopens the gap at the
 * old end, or the dropper's min comes after the close and opens a new gap.
 *
 * Crash safety: a consumer notes the lowest sequence it was handed from
 * the log and has not released (seg_consumer.log_low) before it claims
 * the event; a survivor reclaiming a dead consumer lowers gap_lo to it,
 * so what the dead consumer held comes again (at least once, as held
 * queue events are redelivered).
 */
#include <errno.h>

#include "liveness.h"
#include "log.h"

void catchup_note_drop(shmbus_bus_t *bus, uint32_t idx, uint64_t lo, uint64_t hi, uint64_t n)
{
	struct seg_sub *s = bus_sub(bus, idx);
	if (!n)
		return;
	if (!(at_load_acquire_u32(&s->flags) & SEG_SUB_CATCHUP)) {
		at_count_u64(&s->missed, n);
		return;
	}
	at_fetch_max_u64_sc(&s->gap_hi, hi);
	at_fetch_min_u64_sc(&s->gap_lo, lo);
	/* counted last: a gap closing meanwhile may see too little owed,
	 * which it keeps as a debt, never too much, which it would report */
	at_fetch_add_u64(&s->gap_owed, n);
	at_count_u64(&s->gap_dropped, n);
}

void catchup_extend(shmbus_bus_t *bus, uint32_t idx, uint64_t lo, uint64_t hi)
{
	struct seg_sub *s = bus_sub(bus, idx);
	if (lo >= hi || !(at_load_acquire_u32(&s->flags) & SEG_SUB_CATCHUP))
		return;
	at_fetch_max_u64_sc(&s->gap_hi, hi);
	at_fetch_min_u64_sc(&s->gap_lo, lo);
}

void catchup_reopen(shmbus_bus_t *bus, uint32_t idx, uint64_t seq)
{
	struct seg_sub *s = bus_sub(bus, idx);
	at_fetch_max_u64_sc(&s->gap_hi, seq + 1);
	at_fetch_min_u64_sc(&s->gap_lo, seq);
}

/* Whether some process records this bus now, so that its log will grow. */
static bool recorder_live(shmbus_bus_t *bus)
{
	/* our own recorder shares our descriptor, which F_OFD_GETLK does not
	 * report as a conflict; the caller holds the log state lock */
	if (bus->log && bus->log->recorder)
		return true;
	return live_is_locked(bus->map.fd, SEG_LOCK_RECORDER) > 0;
}

/* Gap accounting: what the log could not serve is missed. A negative
 * balance (an event served before its dropper counted it) is kept for the
 * next gap. */
static void settle(struct seg_sub *s)
{
	uint64_t owed = at_exchange_u64_sc(&s->gap_owed, 0);
	if ((int64_t)owed > 0)
		at_count_u64(&s->missed, owed);
	else if (owed)
		at_fetch_add_u64(&s->gap_owed, owed);
}

struct want_ctx {
	shmbus_sub_t *sub;
};

/* The publisher-side stage of routing: what would have been queued for
 * the subscription. DIRECTED copies were never events of the bus. */
static bool want(const struct seg_event *ev, void *arg)
{
	const struct want_ctx *w = arg;
	shmbus_sub_t *sub = w->sub;
	if (ev->flags & SEG_EVF_DIRECTED)
		return false;
	return route_match(sub->bus, &sub->route, sub->index, &sub->rec->filter, ev, NULL);
}

/* Note that this consumer will hold the log event at seq; returns the
 * previous note, to be put back if the claim fails. */
static uint64_t note_low(shmbus_sub_t *sub, uint64_t seq)
{
	uint64_t prev = at_load_relaxed_u64(&sub->cons->log_low);
	if (!prev || seq + 1 < prev)
		at_store_release_u64(&sub->cons->log_low, seq + 1);
	at_fence_seq_cst(); /* noted before the claim a survivor would miss */
	return prev;
}

static int next_locked(shmbus_sub_t *sub, struct log_state *st, const struct seg_event **out)
{
	shmbus_bus_t *bus = sub->bus;
	struct seg_sub *s = sub->rec;
	struct want_ctx w = {.sub = sub};
	for (;;) {
		uint64_t lo = at_load_u64_sc(&s->gap_lo);
		if (lo == SEG_GAP_NONE)
			return 0;
		uint64_t hi = at_load_u64_sc(&s->gap_hi);
		uint64_t written = at_load_acquire_u64(&bus->hdr->log_next);
		uint64_t bound = hi < written ? hi : written;
		const struct seg_event *e = NULL;
		int rc = lo < bound ? log_reader_next(bus, &st->reader, lo, bound, want, &w, &e) : -ENOENT;
		if (rc < 0 && rc != -ENOENT)
			return rc;
		if (rc == 0) {
			uint64_t prev = note_low(sub, e->seq);
			/* served before claimed, for the same reason as a drop is
			 * counted last: a close meanwhile must not count it missed */
			at_fetch_add_u64(&s->gap_owed, (uint64_t)-1);
			if (!at_cas_u64_sc(&s->gap_lo, &lo, e->seq + 1)) {
				at_fetch_add_u64(&s->gap_owed, 1);
				at_store_release_u64(&sub->cons->log_low, prev);
				continue; /* another member took it, or a drop lowered the gap */
			}
			at_count_u64(&s->gap_served, 1);
			if (sub->has_custom && !route_match(bus, &sub->route, sub->index, &s->filter, e, sub->custom)) {
				at_store_release_u64(&sub->cons->log_low, prev);
				at_count_u64(&s->filtered, 1);
				continue;
			}
			*out = e;
			return 1;
		}
		if (bound < hi && recorder_live(bus)) {
			/* nothing wanted below what is written: skip it, wait for the rest */
			if (bound > lo)
				at_cas_u64_sc(&s->gap_lo, &lo, bound);
			return -EAGAIN;
		}
		if (!at_cas_u64_sc(&s->gap_lo, &lo, SEG_GAP_NONE))
			continue;
		if (at_load_u64_sc(&s->gap_hi) != hi) {
			/* a drop raced the close: reopen where this gap ended */
			at_fetch_min_u64_sc(&s->gap_lo, hi);
			continue;
		}
		settle(s);
		return 0;
	}
}

int catchup_next(shmbus_sub_t *sub, const struct seg_event **out)
{
	struct log_state *st = log_state_get(sub->bus);
	if (!st)
		return -ENOMEM;
	pthread_mutex_lock(&st->lock);
	int rc = next_locked(sub, st, out);
	pthread_mutex_unlock(&st->lock);
	return rc;
}

uint64_t log_retain_floor(shmbus_bus_t *bus)
{
	if (!bus)
		return UINT64_MAX;
	uint64_t claim = at_load_acquire_u64(&bus->hdr->claim_pos);
	/* a queued or held event holds its slot, so whatever may still be
	 * dropped lies within the last lap of the ring */
	uint64_t ring_lo = claim > bus->nslots ? claim - bus->nslots : 0;
	uint64_t floor = UINT64_MAX;
	for (uint32_t i = 0; i < bus->max_subs; i++) {
		struct seg_sub *s = bus_sub(bus, i);
		if (at_load_acquire_u32(&s->state) != SEG_SUB_ACTIVE ||
		    !(at_load_acquire_u32(&s->flags) & SEG_SUB_CATCHUP))
			continue;
		uint64_t lo = at_load_u64_sc(&s->gap_lo);
		if (lo < floor)
			floor = lo;
		if (ring_lo < floor)
			floor = ring_lo;
		for (unsigned c = 0; c < SEG_CONSUMERS; c++) {
			const struct seg_consumer *con = &s->consumers[c];
			uint64_t low = at_load_acquire_u64((uint64_t *)&con->log_low);
			if (at_load_acquire_u32((uint32_t *)&con->state) == SEG_CONSUMER_ACTIVE && low && low - 1 < floor)
				floor = low - 1;
		}
	}
	return floor;
}
