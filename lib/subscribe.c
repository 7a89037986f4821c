/*
 * subscribe.c - subscription records: creating, joining (durable and
 * groups), pausing, removing, and the routing masks publishers read.
 *
 * Changes to the table are serialised by an OFD lock on the segment (not a
 * futex mutex: a holder that dies releases it). Publishers never take it;
 * they see a subscription through the header's masks, which change only
 * after the record is complete (set) or before it is torn down (cleared,
 * then a grace period waits out publishers still routing).
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "asym_fence.h"
#include "crash_point.h"

static void mask_types(shmbus_bus_t *bus, uint32_t idx, uint32_t type_union, bool on)
{
	struct seg_header *h = bus->hdr;
	unsigned w = idx / 64;
	uint64_t bit = 1ull << (idx % 64);
	for (unsigned t = 1; t <= SEG_EVENT_TYPES; t++) {
		if (on && (type_union >> t & 1))
			at_fetch_or_u64(&h->type_mask[t - 1][w], bit);
		else if (!on)
			at_fetch_and_u64(&h->type_mask[t - 1][w], ~bit);
	}
}

void sub_mask_set(shmbus_bus_t *bus, uint32_t idx, bool active)
{
	struct seg_header *h = bus->hdr;
	uint64_t bit = 1ull << (idx % 64);
	if (active)
		at_fetch_or_u64(&h->active_mask[idx / 64], bit);
	else
		at_fetch_and_u64(&h->active_mask[idx / 64], ~bit);
}

/*
 * route_epoch brackets every change to what a filter walk reads (masks,
 * a subscription's pause flag, state and filter): odd from before the
 * change's first store to after its last, even otherwise. A publisher
 * trusts its memo of the last match (route_event) only under the even
 * epoch it read before the walk that made it, so the memo never outlives
 * a change, not even one whose maker died half way: the epoch then stays
 * odd, publishers walk every event, and the next holder of the table
 * lock makes it even again (sub_lock_recover). The caller holds the
 * table lock, so changes do not overlap.
 */
void sub_route_change_begin(shmbus_bus_t *bus)
{
	at_fetch_add_u64(&bus->hdr->route_epoch, 1);
}

void sub_route_change_end(shmbus_bus_t *bus)
{
	at_fetch_add_u64(&bus->hdr->route_epoch, 1);
}

/*
 * How long a member that cannot issue membarrier waits, after telling
 * publishers to route with the full fence, before it relies on that: a
 * pass that began with the light fence before the word was visible has
 * had its routing word's store reach memory long before (a store buffer
 * drains in microseconds, and a CPU that stops, a preempted thread or a
 * virtual CPU descheduled, drains it first), so the pass is seen odd and
 * waited for, or is over.
 */
#define ROUTE_FENCE_SETTLE_NS 10000000ull

void sub_route_fence_full(shmbus_bus_t *bus)
{
	at_fetch_or_u32(&bus->hdr->route_fence, SEG_ROUTE_FENCE_FULL);
	at_fence_seq_cst();
	struct timespec ts = {0, (long)ROUTE_FENCE_SETTLE_NS};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
	bus->route_fence_settled = true;
}

/*
 * Wait until no publisher can still be routing with masks read before now:
 * every live publisher whose routing word is odd finishes its pass. The
 * caller changed what routing reads first. The fence between that change
 * and the loads of the routing words below is the heavy half of the
 * handshake with routing_begin's light one (membarrier: every CPU running
 * a registered publisher executes a full barrier); where membarrier
 * fails here, publishers are told to use full fences from now on first.
 */
void sub_wait_routing_grace(shmbus_bus_t *bus)
{
	at_fence_seq_cst();
	if (asym_fence_heavy() < 0 && !bus->route_fence_settled)
		sub_route_fence_full(bus);
	/* one bound for the whole grace period, however many words lie */
	uint64_t deadline = now_mono_ns() + 2 * bus->hdr->reclaim_timeout_ns;
	for (uint32_t p = 0; p < bus->max_members; p++) {
		struct seg_pub *r = &bus->pubs[p];
		if (!at_load_acquire_u32(&r->state))
			continue;
		uint64_t seen = at_load_acquire_u64(&r->routing);
		if (!(seen & 1))
			continue;
		while (at_load_acquire_u64(&r->routing) == seen && at_load_acquire_u32(&r->state)) {
			if (now_mono_ns() > deadline || !member_alive(bus, r->member))
				break; /* a dead publisher routes no more */
			sched_yield();
		}
	}
}

uint64_t sub_drop_queued(shmbus_bus_t *bus, uint32_t idx, uint64_t max_seq, struct seg_take_intent *intent,
			 bool lost)
{
	uint64_t dropped = 0, descs[64], first;
	for (unsigned cls = 0; cls < SEG_QUEUE_CLASSES; cls++) {
		struct queue_view q = bus_queue(bus, idx, cls);
		uint32_t n;
		uint64_t head_seq;
		if (lost && queue_peek_seq(&q, &head_seq) && head_seq <= max_seq)
			catchup_extend(bus, idx, head_seq, max_seq + 1);
		while ((n = queue_take(&q, intent, 64, max_seq, descs, &first)) > 0) {
			/* the run is counted (missed, or a gap the log fills) before
			 * its holds go, and the intent says so (NOTED): a survivor
			 * of a dropper that dies in between passes the rest of the
			 * run over without counting it again (recover_drains) */
			uint64_t lo = UINT64_MAX, hi = 0, live = 0;
			for (uint32_t i = 0; i < n && lost; i++) {
				uint64_t seq = descs[i] & SEG_DESC_SEQ_MASK;
				if (descs[i] & SEG_DESC_TOMBSTONE)
					continue;
				lo = seq < lo ? seq : lo;
				hi = seq + 1 > hi ? seq + 1 : hi;
				live++;
			}
			if (live)
				catchup_note_drop(bus, idx, lo, hi, live);
			/* counted: a survivor of ours must not count the run again */
			queue_take_noted(intent);
			CRASH_POINT("drain.noted");
			for (uint32_t i = 0; i < n; i++) {
				if (descs[i] & SEG_DESC_TOMBSTONE)
					continue;
				if (descs[i] & SEG_DESC_HOLDS_REF)
					slot_release(bus, descs[i] & SEG_DESC_SEQ_MASK, idx);
				CRASH_POINT("drain.released");
				dropped++;
			}
			queue_release(&q, intent, first, n);
		}
	}
	return dropped;
}

/*
 * The routing bits of every active subscription, set again from what its
 * record says: its filter's types, and its pause flag. For a routing
 * change whose maker died half way (the epoch still odd): a filter
 * replacement cut short in its grace period left the subscription out of
 * routing for good, a resume cut short after clearing the flag left it
 * unpaused but unrouted. Every change writes the record (filter, flags)
 * before the bits, so the record says what the bits should be; bits left
 * set for types no longer in the filter cost a filter walk, nothing more.
 */
static void reroute_active(shmbus_bus_t *bus)
{
	for (uint32_t i = 0; i < bus->max_subs; i++) {
		struct seg_sub *s = bus_sub(bus, i);
		if (at_load_acquire_u32(&s->state) != SEG_SUB_ACTIVE)
			continue;
		mask_types(bus, i, s->filter.type_union, true);
		sub_mask_set(bus, i, !(at_load_acquire_u32(&s->flags) & SEG_SUB_PAUSED));
	}
}

/* Finish what a holder of the table lock that died left half done: a
 * routing change, a drain (its take intent) and a subscription being
 * created or removed. */
void sub_lock_recover(shmbus_bus_t *bus)
{
	/* the records first: one still being created goes */
	reclaim_locked_revoke(bus);
	reclaim_locked_take(bus);
	for (uint32_t i = 0; i < bus->max_subs; i++)
		if (at_load_acquire_u32(&bus_sub(bus, i)->state) == SEG_SUB_INIT)
			sub_remove_locked(bus, i);
	/* a routing change whose maker died: the bits are set again from the
	 * records, and the memos made before it must not stand (see
	 * sub_route_change_begin) */
	if (at_load_acquire_u64(&bus->hdr->route_epoch) & 1) {
		reroute_active(bus);
		sub_route_change_end(bus);
	}
}

/* Whether consumer con's owner lives and is still this attachment. */
static bool consumer_alive(shmbus_bus_t *bus, const struct seg_consumer *con)
{
	uint32_t m = con->member;
	return m < bus->max_members && at_load_acquire_u64(&bus->members[m].generation) == con->member_gen &&
	       member_alive(bus, m);
}

/* A DROPPING entry is its consumer's to finish: it clears the bit, then
 * stores 0, within a few instructions. Wait for that (at most a reclaim
 * interval: a stopped process is not waited for) while the consumer
 * lives; a dead one's drop is finished here. */
static void wait_dropped(shmbus_bus_t *bus, uint32_t idx, struct seg_consumer *con, uint64_t *e, uint64_t d)
{
	uint64_t deadline = now_mono_ns() + bus->reclaim_interval_ns;
	while (at_load_acquire_u64(e) == d) {
		if (!consumer_alive(bus, con)) {
			reclaim_orphan_hold(bus, idx, d);
			at_cas_u64(e, &d, 0);
			return;
		}
		if (now_mono_ns() > deadline)
			return;
		sched_yield();
	}
}

/* Release what the consumers of a vanishing subscription hold. Each
 * entry is won first (a CAS to REVOKED: the consumer may be dropping the
 * same hold), then its hold dropped, then the entry cleared; an entry its
 * consumer won is left to it. A REVOKED entry found here is a removal's
 * that died (this one runs again from sub_lock_recover): what is left of
 * its drop is finished. */
static void revoke_all_held(shmbus_bus_t *bus, uint32_t idx)
{
	struct seg_sub *s = bus_sub(bus, idx);
	for (unsigned c = 0; c < SEG_CONSUMERS; c++) {
		struct seg_consumer *con = &s->consumers[c];
		uint32_t st = at_load_acquire_u32(&con->state);
		if (st != SEG_CONSUMER_FREE)
			reclaim_consumer_take(bus, con);
		for (unsigned k = 0; k < SEG_HELD_MAX; k++) {
			uint64_t *e = &con->held[k];
			uint64_t d = at_load_u64_sc(e);
			while (d && !(d & SEG_DESC_REVOKED) && !seg_desc_dropping(d) && !at_cas_u64(e, &d, d | SEG_DESC_REVOKED))
				;
			if (!d)
				continue;
			if (seg_desc_dropping(d)) {
				wait_dropped(bus, idx, con, e, d);
				continue;
			}
			if (d & SEG_DESC_REVOKED) {
				reclaim_orphan_hold(bus, idx, d);
			} else if ((d & SEG_DESC_HOLDS_REF) && !(d & SEG_DESC_TOMBSTONE)) {
				slot_release(bus, d & SEG_DESC_SEQ_MASK, idx);
			}
			uint64_t r = d | SEG_DESC_REVOKED;
			at_cas_u64(e, &r, 0);
		}
		at_count_u64(&s->delivered_total, at_load_relaxed_u64(&con->delivered));
		at_store_relaxed_u64(&con->delivered, 0);
		/* A consumer in the middle of a take (its intent names a run
		 * the drain could not see) keeps its entry, dead or alive: it
		 * drops the run when it sees the removal and frees the entry
		 * then (sub_consumer_forget); one that died after the sweep
		 * above left its run here, and only its reclaim finds it
		 * (reclaim_detached). Freed now, the run would be nobody's.
		 * So does any live one: until it has seen the removal it may
		 * still take from the record's queues and write its entry, and
		 * a record with a DETACHED entry is not given to a new
		 * subscription (find_free). Reused at once, the stale consumer
		 * took the new subscription's events and dropped them as
		 * removed, or shared an entry with its consumer. */
		bool taking = st != SEG_CONSUMER_FREE &&
			      seg_take_state(at_load_acquire_u32(&con->take.info)) != SEG_TAKE_NONE;
		bool keep = taking || (st == SEG_CONSUMER_ACTIVE && consumer_alive(bus, con));
		at_store_release_u32(&con->state, keep ? SEG_CONSUMER_DETACHED : SEG_CONSUMER_FREE);
	}
}

void sub_consumer_forget(shmbus_sub_t *sub)
{
	struct seg_consumer *con = sub->cons;
	uint32_t st = SEG_CONSUMER_DETACHED;
	if (con->member == sub->bus->member && con->member_gen == sub->bus->member_gen &&
	    seg_take_state(at_load_acquire_u32(&con->take.info)) == SEG_TAKE_NONE)
		at_cas_u32(&con->state, &st, SEG_CONSUMER_FREE);
}

/* Tear down subscription idx; the caller holds the table lock. */
void sub_remove_locked(shmbus_bus_t *bus, uint32_t idx)
{
	struct seg_sub *s = bus_sub(bus, idx);
	sub_route_change_begin(bus);
	sub_mask_set(bus, idx, false);
	mask_types(bus, idx, 0, false);
	sub_route_change_end(bus);
	at_store_release_u32(&s->state, SEG_SUB_INIT);
	at_fence_seq_cst();
	sub_wait_routing_grace(bus);
	/* No live publisher pushes here any more; a cell one that died left
	 * half pushed would stop the drain below, and the record's next
	 * subscription, at that cell for good. */
	reclaim_dead_writers(bus, idx);
	/* The queues first (under the table lock: its holder's intent lives
	 * in the header), then the consumers: once drained, nothing is left to
	 * take, so every run a consumer is still moving into held[] shows in
	 * its intent (stored before its head CAS) when revoke_all_held looks. */
	sub_drop_queued(bus, idx, UINT64_MAX, &bus->hdr->locked_take, false);
	revoke_all_held(bus, idx);
	metrics_retire_sub(bus, idx);
	at_fetch_add_u64(&s->generation, 1);
	at_store_release_u32(&s->flags, 0);
	at_store_release_u32(&s->state, SEG_SUB_FREE);
	route_wake(bus, idx); /* consumers still waiting learn it is gone */
}

static int check_id(const char *what, const char *s)
{
	if (strnlen(s, SHMBUS_ID_MAX + 1) > SHMBUS_ID_MAX)
		return shmbus__fail(ENAMETOOLONG, "%s is longer than %d bytes", what, SHMBUS_ID_MAX);
	if (!s[0])
		return shmbus__fail(EINVAL, "%s must not be empty", what);
	return 0;
}

/* The record a durable or group subscription with this key lives in. */
static int find_keyed(shmbus_bus_t *bus, const char *subscriber, const char *group, bool durable)
{
	for (uint32_t i = 0; i < bus->max_subs; i++) {
		struct seg_sub *s = bus_sub(bus, i);
		if (at_load_acquire_u32(&s->state) != SEG_SUB_ACTIVE)
			continue;
		uint32_t f = at_load_acquire_u32(&s->flags);
		if (group && (f & SEG_SUB_GROUP) && strncmp(s->group, group, sizeof s->group) == 0)
			return (int)i;
		if (!group && durable && (f & SEG_SUB_DURABLE) && !(f & SEG_SUB_GROUP) &&
		    strncmp(s->subscriber, subscriber, sizeof s->subscriber) == 0)
			return (int)i;
	}
	return -1;
}

/* A free record none of whose consumer entries a removal left DETACHED:
 * their consumers, still alive or still inside a take, may yet take from
 * its queues (see revoke_all_held). They free their entries once they see
 * the removal, or a survivor does once they are dead. */
static int find_free(shmbus_bus_t *bus)
{
	for (uint32_t i = 0; i < bus->max_subs; i++) {
		struct seg_sub *s = bus_sub(bus, i);
		if (at_load_acquire_u32(&s->state) != SEG_SUB_FREE)
			continue;
		bool detached = false;
		for (unsigned c = 0; c < SEG_CONSUMERS && !detached; c++)
			detached = at_load_acquire_u32(&s->consumers[c].state) == SEG_CONSUMER_DETACHED;
		if (!detached)
			return (int)i;
	}
	return -1;
}

static int consumer_join(shmbus_bus_t *bus, struct seg_sub *s)
{
	for (unsigned c = 0; c < SEG_CONSUMERS; c++) {
		struct seg_consumer *con = &s->consumers[c];
		if (at_load_acquire_u32(&con->state) != SEG_CONSUMER_FREE)
			continue;
		memset(con->held, 0, sizeof con->held);
		at_store_relaxed_u64(&con->log_low, 0);
		con->member = bus->member;
		con->member_gen = bus->member_gen;
		con->pid = (uint32_t)getpid();
		at_store_relaxed_u64(&con->delivered, 0);
		at_store_relaxed_u32(&con->processing, 0);
		at_store_relaxed_u32(&con->retrying, 0);
		at_store_release_u32(&con->state, SEG_CONSUMER_ACTIVE);
		return (int)c;
	}
	return shmbus__fail(ENOSPC, "subscription has %u consumers already", SEG_CONSUMERS);
}

/* Replace subscription idx's filter: out of routing, a grace period so
 * that no publisher still reads the old one, the new one written, back in
 * routing. The epoch stays odd from the first store to the last: should
 * we die in between, the next holder of the table lock sets the bits again
 * from the record (reroute_active). */
static void replace_filter(shmbus_bus_t *bus, uint32_t idx, const struct seg_filter *f)
{
	struct seg_sub *s = bus_sub(bus, idx);
	sub_route_change_begin(bus);
	sub_mask_set(bus, idx, false);
	mask_types(bus, idx, 0, false);
	CRASH_POINT("filter.unrouted");
	sub_wait_routing_grace(bus);
	memcpy(&s->filter, f, sizeof *f);
	mask_types(bus, idx, f->type_union, true);
	if (!(at_load_acquire_u32(&s->flags) & SEG_SUB_PAUSED))
		sub_mask_set(bus, idx, true);
	sub_route_change_end(bus);
}

struct sub_request {
	char subscriber[SHMBUS_ID_MAX + 1];
	const char *group;
	bool durable;
	uint32_t policy_flags;
	struct seg_filter filter;
	bool has_filter;
};

/* Under the table lock: find or make the record, join it as a consumer. */
static int sub_attach_locked(shmbus_bus_t *bus, const struct sub_request *r, uint32_t *idx_out, int *cons_out)
{
	int idx = (r->group || r->durable) ? find_keyed(bus, r->subscriber, r->group, r->durable) : -1;
	if (idx >= 0) {
		struct seg_sub *s = bus_sub(bus, (uint32_t)idx);
		uint32_t f = at_load_acquire_u32(&s->flags);
		if ((f & SEG_SUB_POLICY_LAG) != r->policy_flags || !!(f & SEG_SUB_DURABLE) != r->durable)
			return shmbus__fail(EEXIST, "subscription '%s' exists with another policy or durability",
					    r->group ? r->group : r->subscriber);
		/* A custom predicate is code in the consumer's process: the
		 * record keeps only that there is one. Attached without a filter,
		 * a consumer would deliver what the predicate rejects. */
		if (!r->has_filter && (s->filter.flags & SEG_FILTER_HAS_CUSTOM))
			return shmbus__fail(EINVAL,
					    "subscription '%s' filters with a custom predicate, which lives in each "
					    "consumer: attach with its filter",
					    r->group ? r->group : r->subscriber);
		int c = consumer_join(bus, s);
		if (c < 0)
			return c;
		/* A replacement takes the subscription out of routing for a
		 * grace period, and what is published meanwhile never reaches
		 * it: only for a filter that differs. A restarted durable
		 * subscriber or a group member that passes the filter it had
		 * (compiled from zeroed memory, so equal filters are equal
		 * bytes) loses nothing; each one used to. */
		if (r->has_filter && memcmp(&s->filter, &r->filter, sizeof r->filter) != 0)
			replace_filter(bus, (uint32_t)idx, &r->filter);
		*idx_out = (uint32_t)idx;
		*cons_out = c;
		return 0;
	}
	if ((idx = find_free(bus)) < 0) {
		uint32_t waiting = 0;
		for (uint32_t i = 0; i < bus->max_subs; i++)
			waiting += at_load_acquire_u32(&bus_sub(bus, i)->state) == SEG_SUB_FREE;
		if (waiting)
			return shmbus__fail(ENOSPC,
					    "bus '%s' has no free subscription record (max subscribers %u; %u of "
					    "removed subscriptions wait for their consumers to see the removal)",
					    bus->name, bus->max_subs, waiting);
		return shmbus__fail(ENOSPC, "bus '%s' has no free subscription record (max subscribers %u)", bus->name,
				    bus->max_subs);
	}
	struct seg_sub *s = bus_sub(bus, (uint32_t)idx);
	at_store_release_u32(&s->state, SEG_SUB_INIT);
	at_fetch_add_u64(&s->generation, 1);
	/* A durable subscription catches up from the log, except the
	 * recorder's own: it is what writes the log. */
	bool catchup = r->durable && strcmp(r->subscriber, SUB_RECORDER_ID) != 0;
	at_store_release_u32(&s->flags, r->policy_flags | (r->durable ? SEG_SUB_DURABLE : 0) |
						(r->group ? SEG_SUB_GROUP : 0) | (catchup ? SEG_SUB_CATCHUP : 0));
	bool plain = !r->durable && !r->group;
	s->owner = plain ? bus->member : SEG_SUB_NO_OWNER;
	s->owner_gen_lo = (uint32_t)bus->member_gen;
	s->created_ns = now_real_ns();
	snprintf(s->subscriber, sizeof s->subscriber, "%s", r->subscriber);
	snprintf(s->group, sizeof s->group, "%s", r->group ? r->group : "");
	at_store_relaxed_u64(&s->block_since_ns, 0);
	at_store_relaxed_u64(&s->delivered_total, 0);
	at_store_relaxed_u64(&s->filtered, 0);
	at_store_relaxed_u64(&s->missed, 0);
	at_store_relaxed_u64(&s->missed_taken, 0);
	at_store_relaxed_u64(&s->dropped_full, 0);
	at_store_relaxed_u64(&s->demotions, 0);
	at_store_relaxed_u64(&s->redelivered, 0);
	at_store_relaxed_u64(&s->revoked, 0);
	at_store_relaxed_u64(&s->completed, 0);
	at_store_relaxed_u64(&s->failed, 0);
	at_store_relaxed_u64(&s->retried, 0);
	at_store_relaxed_u64(&s->dead_lettered, 0);
	at_store_relaxed_u64(&s->expired, 0);
	at_store_relaxed_u64(&s->late_responses, 0);
	at_store_relaxed_u64(&s->gap_owed, 0);
	at_store_relaxed_u64(&s->gap_dropped, 0);
	at_store_relaxed_u64(&s->gap_served, 0);
	at_store_relaxed_u64(&s->gap_hi, 0);
	at_store_release_u64(&s->gap_lo, SEG_GAP_NONE);
	uint64_t tails = 0;
	for (unsigned cls = 0; cls < SEG_QUEUE_CELL_CLASSES; cls++) { /* what publishers push to */
		struct queue_view q = bus_queue(bus, (uint32_t)idx, cls);
		tails += queue_pushed(&q);
	}
	at_store_relaxed_u64(&s->routed_base, tails);
	/* none is DETACHED (find_free), and none turns so: removals hold
	 * the table lock too */
	for (unsigned c = 0; c < SEG_CONSUMERS; c++)
		at_store_relaxed_u32(&s->consumers[c].state, SEG_CONSUMER_FREE);
	int c = consumer_join(bus, s);
	if (c < 0) {
		sub_remove_locked(bus, (uint32_t)idx);
		return c;
	}
	/* Filter and routing bits before the record turns active, in one
	 * routing change: a creator that dies before leaves an INIT record,
	 * which the next holder of the table lock removes; one that dies after
	 * leaves an active subscription that is routed already. Active first,
	 * the events published between a death and that recovery were routed
	 * nowhere, and a durable subscription lost them. */
	memcpy(&s->filter, &r->filter, sizeof s->filter);
	sub_route_change_begin(bus);
	mask_types(bus, (uint32_t)idx, r->filter.type_union, true);
	sub_mask_set(bus, (uint32_t)idx, true); /* a new record is not paused */
	at_store_release_u32(&s->state, SEG_SUB_ACTIVE);
	sub_route_change_end(bus);
	*idx_out = (uint32_t)idx;
	*cons_out = c;
	return 0;
}

SHMBUS_API int shmbus_subscribe(shmbus_bus_t *bus, const shmbus_sub_opts_t *opts, shmbus_sub_t **out)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	if (!out)
		return shmbus__fail(EINVAL, "out is NULL");
	shmbus_sub_opts_t z = {0};
	if (!opts)
		opts = &z;
	if ((unsigned)opts->policy > SHMBUS_POLICY_LAG)
		return shmbus__fail(EINVAL, "unknown policy %d", (int)opts->policy);
	if ((unsigned)opts->wait > SHMBUS_WAIT_BLOCK)
		return shmbus__fail(EINVAL, "unknown wait mode %d", (int)opts->wait);
	struct sub_request *r = calloc(1, sizeof *r);
	shmbus_sub_t *sub = calloc(1, sizeof *sub);
	if (!r || !sub) {
		rc = shmbus__fail(ENOMEM, "out of memory");
		goto out;
	}
	if (opts->subscriber_id) {
		if ((rc = check_id("subscriber id", opts->subscriber_id)) < 0)
			goto out;
		snprintf(r->subscriber, sizeof r->subscriber, "%s", opts->subscriber_id);
	} else {
		snprintf(r->subscriber, sizeof r->subscriber, "pid-%d", (int)getpid());
	}
	if (opts->group && (rc = check_id("group", opts->group)) < 0)
		goto out;
	r->group = opts->group;
	r->durable = opts->durable;
	r->policy_flags = opts->policy == SHMBUS_POLICY_LAG ? SEG_SUB_POLICY_LAG : 0;
	uint32_t type_union;
	if ((rc = filter_compile(opts->filter, &r->filter, sub->custom, &type_union)) < 0)
		goto out;
	r->has_filter = opts->filter != NULL;
	sub->has_custom = r->filter.flags & SEG_FILTER_HAS_CUSTOM;
	/* Joining a durable subscription: what a departed consumer took and
	 * did not finish goes back first (into the redelivery queue, served
	 * before the rest), so a subscriber restarted after a crash gets its
	 * events in order instead of what was queued meanwhile first. A sweep
	 * costs a lock test per member; one already running elsewhere is not
	 * waited for. Not for a group that is not durable: a sweep that found
	 * its last consumer dead would remove it before we join, where a
	 * join before the sweep keeps it. */
	if (r->durable)
		(void)shmbus_reclaim(bus);
	if ((rc = bus_lock_subs(bus)) < 0)
		goto out;
	uint32_t idx = 0;
	int cons = 0;
	rc = sub_attach_locked(bus, r, &idx, &cons);
	/* the generation joined, read while nobody can remove the record: read
	 * after the unlock it may be that of a later subscription in the
	 * record, whose consumer entry we would then share */
	uint64_t gen = rc == 0 ? at_load_acquire_u64(&bus_sub(bus, idx)->generation) : 0;
	bus_unlock_subs(bus);
	if (rc < 0)
		goto out;
	sub->bus = bus;
	sub->index = idx;
	sub->rec = bus_sub(bus, idx);
	sub->generation = gen;
	sub->consumer = (uint32_t)cons;
	sub->cons = &sub->rec->consumers[cons];
	for (unsigned cls = 0; cls < SEG_QUEUE_CLASSES; cls++)
		sub->queues[cls] = bus_queue(bus, idx, cls);
	sub->wait = opts->wait;
	sub->spin_ns = opts->spin_ns ? opts->spin_ns : DEFAULT_SPIN_NS;
	sub->take_batch = opts->group ? 1 : TAKE_BATCH;
	sub->sole_consumer = !opts->group && !opts->durable;
	bus_track_sub(bus, sub, true);
	*out = sub;
	sub = NULL;
	rc = 0;
out:
	free(r);
	free(sub);
	return rc;
}

SHMBUS_API shmbus_sub_id_t shmbus_sub_id(const shmbus_sub_t *sub)
{
	return sub ? sub_id_make(sub->index, sub->generation) : 0;
}

static bool sub_current(const shmbus_sub_t *sub)
{
	return at_load_acquire_u32(&sub->rec->state) == SEG_SUB_ACTIVE &&
	       at_load_acquire_u64(&sub->rec->generation) == sub->generation;
}

/* Release everything this handle holds, then leave the consumer table;
 * a plain subscription, or a group left without consumers, goes away. */
static int sub_detach(shmbus_sub_t *sub, bool remove)
{
	shmbus_bus_t *bus = sub->bus;
	int rc = bus_lock_subs(bus);
	if (rc < 0)
		return rc; /* a dying process's entries are reclaimed anyway */
	struct seg_sub *s = sub->rec;
	if (sub_current(sub)) {
		uint32_t others = 0;
		for (unsigned c = 0; c < SEG_CONSUMERS; c++)
			others += &s->consumers[c] != sub->cons &&
				  at_load_acquire_u32(&s->consumers[c].state) == SEG_CONSUMER_ACTIVE;
		uint32_t f = at_load_acquire_u32(&s->flags);
		bool survives = !remove && ((f & SEG_SUB_DURABLE) || ((f & SEG_SUB_GROUP) && others > 0));
		consume_detach(sub, survives);
		at_count_u64(&s->delivered_total, at_load_relaxed_u64(&sub->cons->delivered));
		at_store_relaxed_u64(&sub->cons->delivered, 0);
		at_store_release_u32(&sub->cons->state, SEG_CONSUMER_FREE);
		if (!survives)
			sub_remove_locked(bus, sub->index);
	} else {
		consume_forget_removed(sub); /* removed under us while we were taking */
	}
	bus_unlock_subs(bus);
	return 0;
}

SHMBUS_API void shmbus_sub_close(shmbus_sub_t *sub)
{
	if (!sub)
		return;
	if (!sub->bus->orphaned)
		sub_detach(sub, false);
	bus_track_sub(sub->bus, sub, false);
	route_ctx_free(&sub->route);
	free(sub);
}

SHMBUS_API int shmbus_unsubscribe(shmbus_sub_t *sub)
{
	if (!sub)
		return shmbus__fail(EINVAL, "subscription is NULL");
	int rc = bus_check_usable(sub->bus);
	if (rc == 0)
		rc = sub_detach(sub, true);
	bus_track_sub(sub->bus, sub, false);
	route_ctx_free(&sub->route);
	free(sub);
	return rc;
}

/* The record behind an id, if it still exists. */
static int lookup_id(shmbus_bus_t *bus, shmbus_sub_id_t id, struct seg_sub **out)
{
	uint32_t idx = (uint32_t)(id & 0xFFFF);
	if (idx >= bus->max_subs)
		return shmbus__fail(ENOENT, "no subscription %llu", (unsigned long long)id);
	struct seg_sub *s = bus_sub(bus, idx);
	if (at_load_acquire_u32(&s->state) != SEG_SUB_ACTIVE || at_load_acquire_u64(&s->generation) != (id >> 16))
		return shmbus__fail(ENOENT, "no subscription %llu", (unsigned long long)id);
	*out = s;
	return 0;
}

static int set_paused(shmbus_bus_t *bus, shmbus_sub_id_t id, bool paused)
{
	int rc = bus_check_usable(bus);
	if (rc < 0 || (rc = bus_lock_subs(bus)) < 0)
		return rc;
	struct seg_sub *s;
	if ((rc = lookup_id(bus, id, &s)) == 0) {
		uint32_t idx = (uint32_t)(id & 0xFFFF);
		sub_route_change_begin(bus);
		if (paused)
			at_fetch_or_u32(&s->flags, SEG_SUB_PAUSED);
		else
			at_fetch_and_u32(&s->flags, ~SEG_SUB_PAUSED);
		CRASH_POINT("pause.flagged");
		sub_mask_set(bus, idx, !paused);
		sub_route_change_end(bus);
	}
	bus_unlock_subs(bus);
	return rc;
}

SHMBUS_API int shmbus_pause(shmbus_bus_t *bus, shmbus_sub_id_t id)
{
	return set_paused(bus, id, true);
}

SHMBUS_API int shmbus_resume(shmbus_bus_t *bus, shmbus_sub_id_t id)
{
	return set_paused(bus, id, false);
}

SHMBUS_API int shmbus_unsubscribe_id(shmbus_bus_t *bus, shmbus_sub_id_t id)
{
	int rc = bus_check_usable(bus);
	if (rc < 0 || (rc = bus_lock_subs(bus)) < 0)
		return rc;
	struct seg_sub *s;
	if ((rc = lookup_id(bus, id, &s)) == 0)
		sub_remove_locked(bus, (uint32_t)(id & 0xFFFF));
	bus_unlock_subs(bus);
	return rc;
}
