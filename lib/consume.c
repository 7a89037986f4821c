/*
 * consume.c - taking events in place, waiting for them, giving them back.
 *
 * Taking: a run of descriptors (TAKE_BATCH, or what a batch poll hands out
 * when that is more, or 1 in a group so members share the work) moves from
 * the subscription's queue into this consumer's held[] in shared memory
 * before the cells are released, so a survivor can always find them if we
 * die. Each event is then read where it lies in the ring, after its commit
 * mark is seen and its bytes pass seg_event_check.
 *
 * Releasing: shmbus_release marks the held entry RELEASING; the holds
 * are dropped RELEASE_BATCH at a time, or whenever the consumer finds
 * nothing to do, so a consumer touches the slot control words (which
 * publishers write) in bursts rather than once per event.
 *
 * Dropping a hold: the holder bit of an entry is cleared by whoever wins
 * the entry, never by two parties. The consumer wins it by a CAS to
 * DROPPING, the holder of the subscription-table lock (a revoker, a
 * removal) by a CAS to REVOKED; the winner clears the bit, then stores 0.
 * A consumer clears a bit that is alone in the word with a plain store,
 * and then owes waiting publishers one fenced look per batch of drops
 * (slot_release_alone, wake_space_waiters).
 * An entry lost to a revocation stays allocated here until its revoker
 * has stored 0 (held_reap): until then it is the revoker's record.
 *
 * Waiting: spin, block (futex) or adaptive. A sleeper first raises the
 * `sleepers` flag, fences, re-checks its queues (their head cells), then
 * sleeps on `wake_futex`; a publisher looks at the flag after a fence, or
 * after the locked push that made the cell FULL (routing_end), and, if it
 * can clear it, makes the one wake-up syscall (every sleeper raises the
 * flag again before it sleeps again, so a burst of events costs one
 * syscall, not one each).
 */
#include <errno.h>
#include <string.h>

#include "internal.h"
#include "slots.h"
#include "crash_point.h"
#include "prefetch.h"
#include "futex.h"

/* How often a consumer waiting for the recorder to write the rest of its
 * gap looks again (nothing wakes it when the log grows). */
#define CATCHUP_POLL_NS 2000000ull

static bool sub_current(const shmbus_sub_t *sub)
{
	return at_load_acquire_u32(&sub->rec->state) == SEG_SUB_ACTIVE &&
	       at_load_acquire_u64(&sub->rec->generation) == sub->generation;
}

#define HELD_ALL ((1ull << SEG_HELD_MAX) - 1)

static uint32_t held_free_count(const shmbus_sub_t *sub)
{
	return SEG_HELD_MAX - sub->held_count;
}

static uint32_t held_alloc(shmbus_sub_t *sub)
{
	uint32_t k = (uint32_t)__builtin_ctzll(~sub->held_used & HELD_ALL);
	sub->held_used |= 1ull << k;
	sub->held_count++;
	return k;
}

static void held_free(shmbus_sub_t *sub, uint32_t k)
{
	sub->held_used &= ~(1ull << k);
	sub->held_count--;
}

/* Entry k, which held desc, was won by the holder of the table lock (cur
 * is what it holds now). While it carries our sequence marked REVOKED,
 * its winner has yet to clear the bit and store 0, and the entry is the
 * record a survivor would finish that from: k stays allocated until then
 * (held_reap), so no take of ours overwrites it. */
static void held_lost(shmbus_sub_t *sub, uint32_t k, uint64_t cur, uint64_t desc)
{
	if ((cur & SEG_DESC_REVOKED) && (cur & SEG_DESC_SEQ_MASK) == (desc & SEG_DESC_SEQ_MASK))
		sub->held_revoked |= 1ull << k;
	else
		held_free(sub, k);
}

/* Entries lost to revocations that have finished since: free again. */
static void held_reap(shmbus_sub_t *sub)
{
	for (uint64_t m = sub->held_revoked; m; m &= m - 1) {
		uint32_t k = (uint32_t)__builtin_ctzll(m);
		if (!(at_load_acquire_u64(&sub->cons->held[k]) & SEG_DESC_REVOKED)) {
			sub->held_revoked &= ~(1ull << k);
			held_free(sub, k);
		}
	}
}

/* Drop held entry k, which holds desc as we last wrote it. The hold is
 * ours to clear only once we have won the entry (desc -> DROPPING): a
 * revoker or a removal that marks it REVOKED first clears the bit itself,
 * and one that comes after finds it DROPPING and leaves it. Then the bit,
 * then the entry: dying in between leaves a DROPPING entry, whose bit a
 * survivor clears if it is still set in the entry's lap. Nobody else
 * writes a DROPPING entry, so 0 is a plain store. 0, or -ESTALE if the
 * entry was taken from us. wake_owed: NULL, or (for an event the user was
 * handed, so seen COMMITTED) see held_drop_won. */
static inline void held_drop_won(shmbus_sub_t *sub, uint32_t k, uint64_t desc, bool *wake_owed);

static int held_drop(shmbus_sub_t *sub, uint32_t k, uint64_t desc, bool *wake_owed)
{
	uint64_t cur = desc;
	if (!at_cas_u64(&sub->cons->held[k], &cur, desc | SEG_DESC_DROPPING)) {
		held_lost(sub, k, cur, desc);
		return -ESTALE;
	}
	CRASH_POINT("drop.won");
	held_drop_won(sub, k, desc, wake_owed);
	return 0;
}

/* The rest of a drop once entry k (which held desc) is won, DROPPING: the
 * hold's bit, then the entry, then our slot for it. Inlined into both its
 * callers (drop_plain, release_batch's usual case, does the same steps
 * with the batch's geometry in registers). With
 * wake_owed, the event was opened (seen COMMITTED in its lap) and the bit
 * may be cleared by slot_release_alone: *wake_owed is set when the caller
 * owes the fenced wake-up check (wake_space_waiters) for it. */
static inline __attribute__((always_inline)) void held_drop_won(shmbus_sub_t *sub, uint32_t k, uint64_t desc,
								bool *wake_owed)
{
	if ((desc & SEG_DESC_HOLDS_REF) && !(desc & SEG_DESC_TOMBSTONE)) {
		/* Only for a plain subscription's one consumer: in a durable or
		 * group subscription a survivor that died while giving an event
		 * back can leave two holds of it (two records for one bit), held
		 * by two consumers at once, and a plain store racing the other's
		 * drop could wipe the bits of the slot's next lap, where the
		 * locked AND clears only our own bit. A plain subscription has
		 * one consumer and nothing is given back to it. */
		if (!wake_owed || !sub->sole_consumer)
			slot_release(sub->bus, desc & SEG_DESC_SEQ_MASK, sub->index);
		else if (slot_release_alone(sub->bus, desc & SEG_DESC_SEQ_MASK, sub->index))
			*wake_owed = true;
		CRASH_POINT("drop.bit");
	}
	at_store_release_u64(&sub->cons->held[k], 0);
	CRASH_POINT("drop.cleared");
	held_free(sub, k);
}

/* After holds dropped with slot_release_alone freed slots: the full fence
 * orders their plain stores before the look at space_waiters (the store
 * and load of the space wake protocol, see slots.c), then waiting
 * publishers are woken. Once per batch of drops, not per hold. */
static void wake_space_waiters(shmbus_sub_t *sub)
{
	at_fence_seq_cst();
	slots_wake_waiters(sub->bus);
}

/* Drop the holds of every event released since the last batch. The
 * control words are prefetched for writing first so their cache misses
 * overlap instead of queueing behind each locked decrement. */
static void flush_releases(shmbus_sub_t *sub)
{
	if (sub->nreleasing && !sub_current(sub)) {
		/* removed meanwhile: the removal dropped these holds, and the
		 * record's held[] may serve another subscription by now */
		for (uint32_t i = 0; i < sub->nreleasing; i++)
			held_free(sub, sub->releasing[i].k);
		sub->nreleasing = 0;
		sub->releasing_slots = 0;
		return;
	}
	for (uint32_t i = 0; i < sub->nreleasing; i++)
		at_prefetch_write(bus_slot_holders(sub->bus, sub->releasing[i].desc & SEG_DESC_SEQ_MASK));
	bool wake_owed = false;
	for (uint32_t i = 0; i < sub->nreleasing; i++) {
		/* released by the user, so opened: a lone bit may be cleared
		 * plainly */
		held_drop(sub, sub->releasing[i].k, sub->releasing[i].desc, &wake_owed);
		CRASH_POINT("flush.dropped");
	}
	sub->nreleasing = 0;
	sub->releasing_slots = 0;
	if (wake_owed)
		wake_space_waiters(sub);
}

static void release_cells(shmbus_sub_t *sub);

/*
 * Our queue of class cls, as bus_queue would make it: the geometry from
 * the handle (made at subscribe), the generation read now, which a take
 * records in its intent. Each bus_queue computed the cells' address anew,
 * three times in a poll that takes an event: about 70 instructions of a
 * round trip's leg.
 */
static inline struct queue_view sub_queue(const shmbus_sub_t *sub, unsigned cls)
{
	struct queue_view q = sub->queues[cls];
	q.gen = (uint32_t)at_load_relaxed_u64(&sub->rec->generation);
	return q;
}

/* Take a run of descriptors from queue class cls into held[] and the
 * local ready list. Returns how many, or -ESHUTDOWN. */
static int take_run(shmbus_sub_t *sub, unsigned cls)
{
	shmbus_bus_t *bus = sub->bus;
	struct queue_view q = sub_queue(sub, cls);
	/* a run of the other class still unreleased (poll_next turned to the
	 * catch-up after taking it): its cells go back before the intent
	 * names the new run, or nobody ever releases them */
	release_cells(sub);
	if (sub->held_revoked)
		held_reap(sub);
	uint32_t room = held_free_count(sub);
	if (room == 0) {
		flush_releases(sub);
		room = held_free_count(sub);
	}
	/* A batch poll that will hand out more than a run at once takes them
	 * as one run: every take costs a head CAS, a fence and a release of
	 * the cells whatever its length, and what it takes is handed out, not
	 * left UNSEEN. Not in a group, whose members share the work. */
	uint32_t want = sub->take_batch;
	if (want > 1 && sub->hand_now > want)
		want = sub->hand_now;
	uint32_t max = room < want ? room : want;
	uint64_t descs[SEG_HELD_MAX], first;
	uint32_t n = max ? queue_take(&q, &sub->cons->take, max, UINT64_MAX, descs, &first) : 0;
	if (n == 0)
		return 0;
	struct held_desc *ready = sub->ready[cls];
	sub->ready_head[cls] = 0;
	/* A single event's lines (a small event's all four): their misses
	 * overlap with each other instead of coming one after another as the
	 * check reads them (a spin round trip is a sixth longer without).
	 * Not a run's: its lines are consecutive, the hardware streams them,
	 * and four prefetches an event for sixteen events fill every miss
	 * buffer at once and stall here (batched throughput went up by a
	 * sixth without them). */
	if (n == 1) {
		const uint8_t *ev = bus_slot_data(bus, descs[0] & SEG_DESC_SEQ_MASK);
		__builtin_prefetch(ev);
		__builtin_prefetch(ev + 64);
		__builtin_prefetch(ev + 128);
		__builtin_prefetch(ev + 192);
	}
	for (uint32_t i = 0; i < n; i++) {
		/* What the calling poll hands out at once counts as seen from
		 * here: only the rest waits UNSEEN, revocable, in ready[] (and
		 * what the poll did not hand out after all, unsee_rest marks
		 * UNSEEN again before the poll returns). */
		uint64_t d = descs[i] | (i < sub->hand_now ? 0 : SEG_DESC_UNSEEN);
		uint32_t k = held_alloc(sub);
		at_store_relaxed_u64(&sub->cons->held[k], d);
		ready[i].desc = d;
		ready[i].k = k;
	}
	CRASH_POINT("take.stored");
	sub->hand_now -= n < sub->hand_now ? n : sub->hand_now;
	sub->ready_n[cls] = n;
	/* held[] (seq_cst) before we look at whether a removal is sweeping
	 * held[] */
	at_fence_seq_cst();
	CRASH_POINT("take.fenced");
	if (!sub_current(sub)) {
		/* the holds, then the intent: while a removal may still read
		 * our intent as NONE and free the entry, no hold of the run may
		 * be left in held[] */
		for (uint32_t i = 0; i < n; i++)
			held_drop(sub, ready[i].k, ready[i].desc, NULL);
		sub->ready_n[cls] = 0;
		queue_release(&q, &sub->cons->take, first, n);
		sub_consumer_forget(sub); /* the removal left our entry for this */
		return shmbus__fail(ESHUTDOWN, "subscription was removed");
	}
	/* The cells go back once the first event is opened (release_cells):
	 * the store to their line, which the producer shares, then drains
	 * while the user reads the event, instead of stalling the locked
	 * instruction that opens it. Until then the OWNED intent covers them
	 * and held[] has every descriptor, so a survivor loses nothing. */
	sub->cells_first = first;
	sub->cells_n = n;
	sub->cells_cls = cls;
	return (int)n;
}

/* Give back the cells of the last run taken (see take_run). */
static void release_cells(shmbus_sub_t *sub)
{
	if (!sub->cells_n)
		return;
	struct queue_view q = sub_queue(sub, sub->cells_cls);
	queue_release(&q, &sub->cons->take, sub->cells_first, sub->cells_n);
	CRASH_POINT("cells.released");
	sub->cells_n = 0;
}

/* Turn one ready descriptor into a deliverable event, or drop it.
 * Returns the event or NULL (dropped). */
static const struct seg_event *open_event(shmbus_sub_t *sub, const struct held_desc *h)
{
	shmbus_bus_t *bus = sub->bus;
	uint64_t desc = h->desc;
	if (desc & SEG_DESC_TOMBSTONE) {
		held_drop(sub, h->k, desc, NULL); /* holds nothing: no bit to clear */
		return NULL;
	}
	/* Seen from now on, before a byte of the slot is read: a congested
	 * publisher revokes only unseen entries of a lag subscription, so the
	 * slot cannot be reused under us after this (were we to die, the event
	 * goes back flagged redelivered). An entry the poll that took it hands
	 * out was stored seen (take_run): no locked instruction for it. */
	uint64_t expected = desc;
	if ((desc & SEG_DESC_UNSEEN) && !at_cas_u64(&sub->cons->held[h->k], &expected, desc & ~SEG_DESC_UNSEEN)) {
		held_lost(sub, h->k, expected, desc); /* revoked meanwhile */
		return NULL;
	}
	if (desc & SEG_DESC_UNSEEN)
		CRASH_POINT("open.seen");
	desc &= ~SEG_DESC_UNSEEN;
	uint64_t seq = desc & SEG_DESC_SEQ_MASK;
	const struct seg_event *e = (const struct seg_event *)bus_slot_data(bus, seq);
	if (!(at_load_acquire_u8(&e->committed) && e->seq == seq) && slot_settle(bus, seq) != SEG_SLOT_COMMITTED) {
		/* aborted by its publisher or a survivor: it holds nothing */
		uint64_t d = desc;
		if (at_cas_u64(&sub->cons->held[h->k], &d, 0))
			held_free(sub, h->k);
		else
			held_lost(sub, h->k, d, desc);
		return NULL;
	}
	if (seg_event_check_same_shape(e, bus->max_event_bytes, &sub->checked) < 0 || e->seq != seq) {
		held_drop(sub, h->k, desc, NULL);
		at_count_u64(&sub->rec->missed, 1);
		return NULL; /* corrupt bytes are never handed out */
	}
	if (sub->has_custom && !route_match(bus, &sub->route, sub->index, &sub->rec->filter, e, sub->custom)) {
		held_drop(sub, h->k, desc, NULL);
		at_count_u64(&sub->rec->filtered, 1);
		return NULL;
	}
	return e;
}

/*
 * open_event's usual case, inlined where events are handed out: an entry
 * stored seen and unmarked, of a subscription without a custom predicate,
 * whose event is committed in its lap and shaped like the last one opened
 * (seg_event_like_last). Returns the event, or NULL to leave the entry to
 * open_event, which decides it from scratch. It writes nothing, so an
 * entry it passes over is as it was.
 */
static inline const struct seg_event *open_event_usual(const shmbus_sub_t *sub, uint64_t desc)
{
	if ((desc & (SEG_DESC_TOMBSTONE | SEG_DESC_UNSEEN)) || sub->has_custom)
		return NULL;
	uint64_t seq = desc & SEG_DESC_SEQ_MASK;
	const struct seg_event *e = (const struct seg_event *)bus_slot_data(sub->bus, seq);
	/* a streamed event's committed stays 0 (FORMAT.md): open_event
	 * reads its control word */
	if (!at_load_acquire_u8(&e->committed) || e->seq != seq ||
	    !seg_event_like_last(e, sub->bus->max_event_bytes, &sub->checked))
		return NULL;
	return e;
}

/* Next ready descriptor of class cls, refilling from the queue. 1 (set),
 * 0 (none), -errno. */
static int next_ready(shmbus_sub_t *sub, unsigned cls, struct held_desc *out)
{
	if (sub->ready_n[cls] == 0) {
		/* Nothing ready, what a spinning wait's polls mostly find: one
		 * look at the head cell instead of a take's bookkeeping (unless
		 * the take has cells to give back or revoked holds to reap
		 * first). A failed poll cost about 290 instructions, and a
		 * waiter notices an event half a poll later on average. */
		if (!sub->cells_n && !sub->held_revoked) {
			if (!queue_ready(&sub->queues[cls]))
				return 0;
		}
		int rc = take_run(sub, cls);
		if (rc <= 0)
			return rc;
		/* A drop that took cells before ours made its gap before its
		 * take: look at the gap again before delivering past it. */
		if (at_load_u64_sc(&sub->rec->gap_lo) != SEG_GAP_NONE)
			return 2;
	}
	*out = sub->ready[cls][sub->ready_head[cls]++];
	sub->ready_n[cls]--;
	return 1;
}

/* The lowest sequence taken but not handed out yet, UINT64_MAX if none. */
static uint64_t ready_low(const shmbus_sub_t *sub)
{
	uint64_t low = UINT64_MAX;
	for (unsigned cls = 0; cls < SEG_QUEUE_CLASSES; cls++) {
		if (!sub->ready_n[cls])
			continue;
		uint64_t seq = sub->ready[cls][sub->ready_head[cls]].desc & SEG_DESC_SEQ_MASK;
		low = seq < low ? seq : low;
	}
	return low;
}

static bool queue_waiting(const struct seg_queue_ends *e)
{
	return at_load_relaxed_u64((uint64_t *)&e->tail) != at_load_relaxed_u64((uint64_t *)&e->head);
}

/*
 * Whether the urgent queue's head cell is FULL, as next_ready asks of the
 * normal queue: from the cell, not from the tail hint. A publisher stores
 * the hint plainly after the locked push that made the cell FULL, and a
 * single publish may look at `sleepers` with no fence after that push
 * (routing_end): a sleeper that judged by the hint could miss the event
 * while the publisher misses its flag. (A hint moved back by a preempted
 * publisher would also have hidden a FULL cell until the next push.)
 */
static bool urgent_ready(const shmbus_sub_t *sub)
{
	return queue_ready(&sub->queues[SEG_QUEUE_URGENT]);
}

/* What survivors gave back from a dead consumer waits. Its ends are written
 * only then, so between deaths the two loads hit this core's cache. */
static bool redeliver_waiting(const shmbus_sub_t *sub)
{
	return queue_waiting(&sub->rec->redeliver_ends);
}

/* With a gap open, what was taken below it goes first, then the gap (from
 * the log), then the rest: a redelivered event at or above the gap waits
 * while another class still has one below it. */
static bool redeliver_past_gap(const shmbus_sub_t *sub, uint64_t gap_lo)
{
	const unsigned r = SEG_QUEUE_REDELIVER;
	return gap_lo != SEG_GAP_NONE && sub->ready_n[r] &&
	       (sub->ready[r][sub->ready_head[r]].desc & SEG_DESC_SEQ_MASK) >= gap_lo;
}

void consume_forget_removed(shmbus_sub_t *sub)
{
	for (unsigned cls = 0; cls < SEG_QUEUE_CLASSES; cls++) {
		for (uint32_t i = 0; i < sub->ready_n[cls]; i++) {
			const struct held_desc *h = &sub->ready[cls][sub->ready_head[cls] + i];
			held_drop(sub, h->k, h->desc, NULL);
		}
		sub->ready_n[cls] = 0;
	}
	release_cells(sub);
	sub_consumer_forget(sub);
}

/* What every poll checks first: 0, or -errno. */
static int poll_usable(shmbus_sub_t *sub)
{
	if (sub->bus->orphaned)
		return bus_check_usable(sub->bus);
	if (!sub_current(sub)) {
		consume_forget_removed(sub);
		return shmbus__fail(ESHUTDOWN, "subscription was removed");
	}
	if (sub->nheld >= SEG_HELD_MAX)
		return shmbus__fail(ENOBUFS, "%d events held: release some first", SEG_HELD_MAX);
	return 0;
}

/* The next event for a usable subscription (poll_usable): 1, 0, -errno. */
static int poll_next(shmbus_sub_t *sub, const shmbus_event_t **ev)
{
	int rc;
	for (;;) {
		struct held_desc h;
		/* A durable subscription that was passed over catches up from
		 * the log before its queues (one relaxed load while there is no
		 * gap), except for what it took before the gap began. */
		uint64_t gap_lo = at_load_relaxed_u64(&sub->rec->gap_lo);
		if (__builtin_expect(gap_lo != SEG_GAP_NONE, 0) && ready_low(sub) >= gap_lo) {
			const struct seg_event *e;
			rc = catchup_next(sub, &e);
			sub->catchup_wait = rc == -EAGAIN;
			if (rc == 1) {
				sub->held[sub->nheld].ev = e;
				sub->held[sub->nheld].k = HELD_FROM_LOG;
				sub->held[sub->nheld].seq = e->seq;
				sub->nheld++;
				at_store_relaxed_u64(&sub->cons->delivered, at_load_relaxed_u64(&sub->cons->delivered) + 1);
				*ev = (const shmbus_event_t *)(const void *)e;
				return 1;
			}
			if (rc == -EAGAIN) {
				/* the rest of the gap is still to be written: the queue
				 * waits, or it would overtake it */
				flush_releases(sub);
				return 0;
			}
			if (rc < 0)
				return rc;
			/* the catch-up closed the gap (or moved it): what follows
			 * looks at it as it is now */
			gap_lo = at_load_relaxed_u64(&sub->rec->gap_lo);
		}
		/* What a dead consumer left comes first: it is older than
		 * everything queued (per publisher and class), so serving it
		 * first keeps each publisher's order. Then urgent, then normal:
		 * what is buffered, then what is queued. */
		rc = 0;
		if (__builtin_expect(sub->ready_n[SEG_QUEUE_REDELIVER] || redeliver_waiting(sub), 0) &&
		    !redeliver_past_gap(sub, gap_lo))
			rc = next_ready(sub, SEG_QUEUE_REDELIVER, &h);
		if (rc == 0 && (sub->ready_n[SEG_QUEUE_URGENT] || urgent_ready(sub)))
			rc = next_ready(sub, SEG_QUEUE_URGENT, &h);
		if (rc == 0)
			rc = next_ready(sub, SEG_QUEUE_NORMAL, &h);
		if (rc < 0)
			return rc;
		if (rc == 0)
			break;
		if (rc == 2)
			continue; /* refilled while a gap appeared: look at it first */
		const struct seg_event *e = open_event_usual(sub, h.desc);
		if (!e)
			e = open_event(sub, &h);
		release_cells(sub);
		if (!e)
			continue;
		sub->held[sub->nheld].ev = e;
		sub->held[sub->nheld].k = h.k;
		sub->held[sub->nheld].seq = h.desc & SEG_DESC_SEQ_MASK;
		sub->nheld++;
		at_store_relaxed_u64(&sub->cons->delivered, at_load_relaxed_u64(&sub->cons->delivered) + 1);
		*ev = (const shmbus_event_t *)(const void *)e;
		return 1;
	}
	/* Idle: publishers get our released slots now, and a demoted
	 * subscription that caught up gets its policy back. */
	flush_releases(sub);
	if (at_load_relaxed_u32(&sub->rec->flags) & SEG_SUB_DEMOTED)
		at_fetch_and_u32(&sub->rec->flags, ~SEG_SUB_DEMOTED);
	return 0;
}

/*
 * After a poll: what take_run stored seen for the poll to hand out but the
 * poll did not (a more urgent event, a gap to catch up or the end of the
 * array came first) waits in ready[] like the rest of its run: UNSEEN, so
 * a lag drain may take it back, and opened by a CAS that fails if anybody
 * (a stall's revocation, a removal) won the entry meanwhile. Such entries
 * lead their class's ready list. A failed CAS here leaves the entry to
 * open_event, whose CAS then fails too and finds out why.
 */
static void unsee_rest(shmbus_sub_t *sub)
{
	_Static_assert(SEG_QUEUE_CLASSES == 3, "unsee_rest looks at three ready lists at once");
	if (!(sub->ready_n[0] | sub->ready_n[1] | sub->ready_n[2]))
		return; /* the usual case: the poll handed out all it took */
	for (unsigned cls = 0; cls < SEG_QUEUE_CLASSES; cls++) {
		struct held_desc *h = &sub->ready[cls][sub->ready_head[cls]];
		for (uint32_t i = 0; i < sub->ready_n[cls] && !(h[i].desc & SEG_DESC_UNSEEN); i++) {
			uint64_t d = h[i].desc;
			if (d & SEG_DESC_TOMBSTONE)
				continue; /* holds nothing: nobody revokes it */
			h[i].desc = d | SEG_DESC_UNSEEN;
			at_cas_u64(&sub->cons->held[h[i].k], &d, d | SEG_DESC_UNSEEN);
		}
	}
}

SHMBUS_API int shmbus_poll(shmbus_sub_t *sub, const shmbus_event_t **ev)
{
	if (!sub || !ev)
		return shmbus__fail(EINVAL, "subscription or event pointer is NULL");
	int rc = poll_usable(sub);
	if (rc < 0)
		return rc;
	sub->hand_now = 1;
	rc = poll_next(sub, ev);
	sub->hand_now = 0;
	unsee_rest(sub);
	return rc;
}

/*
 * Hand out the rest of the run of class cls that poll_next took from, up to
 * max events, in one loop: what poll_next checks before each event (a gap
 * to catch up, a more urgent queue) the caller checked once before the
 * run; a gap can only appear meanwhile where an entry was revoked, which
 * its opening finds, and the loop stops there. The consumer's delivered
 * count is stored once. Returns how many were put in evs[].
 */
static int open_ready(shmbus_sub_t *sub, unsigned cls, const shmbus_event_t **evs, int max)
{
	const struct held_desc *ready = &sub->ready[cls][sub->ready_head[cls]];
	uint32_t avail = sub->ready_n[cls], used = 0;
	int n = 0;
	while (used < avail && n < max) {
		const struct held_desc *h = &ready[used++];
		const struct seg_event *e = open_event_usual(sub, h->desc);
		if (!e)
			e = open_event(sub, h);
		if (!e) {
			/* a revocation that took this one made a gap at it: what
			 * follows waits until poll_next has caught the gap up */
			if (at_load_relaxed_u64(&sub->rec->gap_lo) != SEG_GAP_NONE)
				break;
			continue;
		}
		struct held_local *l = &sub->held[sub->nheld++];
		l->ev = e;
		l->k = h->k;
		l->seq = h->desc & SEG_DESC_SEQ_MASK;
		evs[n++] = (const shmbus_event_t *)(const void *)e;
	}
	sub->ready_head[cls] += used;
	sub->ready_n[cls] -= used;
	at_store_relaxed_u64(&sub->cons->delivered, at_load_relaxed_u64(&sub->cons->delivered) + (uint64_t)n);
	return n;
}

SHMBUS_API int shmbus_poll_batch(shmbus_sub_t *sub, const shmbus_event_t **evs, int max)
{
	if (!sub || !evs || max < 1)
		return shmbus__fail(EINVAL, "subscription or event array is NULL, or max < 1");
	int rc = poll_usable(sub), n = 0;
	if (rc < 0)
		return rc;
	if ((uint32_t)max > SEG_HELD_MAX - sub->nheld)
		max = (int)(SEG_HELD_MAX - sub->nheld);
	/* the subscription's state was checked above; each take checks that
	 * it still exists (take_run), as a single poll does */
	while (n < max && (sub->hand_now = (uint32_t)(max - n), rc = poll_next(sub, &evs[n])) == 1) {
		n++;
		/* The rest of that event's run at once, unless a gap is to be
		 * caught up first or something more urgent waits: an urgent
		 * event that comes meanwhile leads the next call's array. */
		if (at_load_relaxed_u64(&sub->rec->gap_lo) != SEG_GAP_NONE)
			continue;
		if (sub->ready_n[SEG_QUEUE_REDELIVER])
			n += open_ready(sub, SEG_QUEUE_REDELIVER, evs + n, max - n);
		else if (redeliver_waiting(sub))
			continue;
		else if (sub->ready_n[SEG_QUEUE_URGENT])
			n += open_ready(sub, SEG_QUEUE_URGENT, evs + n, max - n);
		else if (sub->ready_n[SEG_QUEUE_NORMAL] && !urgent_ready(sub))
			n += open_ready(sub, SEG_QUEUE_NORMAL, evs + n, max - n);
	}
	sub->hand_now = 0;
	unsee_rest(sub);
	return n > 0 || rc >= 0 ? n : rc;
}

/* Announce sleep, look once more, sleep until woken, the deadline or the
 * next reclaim interval; then look again. 1 (event), 0, or -errno. */
static int sleep_once(shmbus_sub_t *sub, uint64_t now, uint64_t deadline, const shmbus_event_t **ev)
{
	shmbus_bus_t *bus = sub->bus;
	struct seg_sub *s = sub->rec;
	uint32_t seen = at_load_acquire_u32(&s->wake_futex);
	at_exchange_u32(&s->sleepers, 1);
	at_fence_seq_cst();
	int rc = shmbus_poll(sub, ev);
	if (rc != 0)
		return rc;
	uint64_t slice = bus->reclaim_interval_ns;
	/* nobody wakes a consumer when the recorder moves on: look often */
	if (sub->catchup_wait && slice > CATCHUP_POLL_NS)
		slice = CATCHUP_POLL_NS;
	if (deadline != UINT64_MAX && deadline - now < slice)
		slice = deadline - now;
	if (futex_wait_shared(&s->wake_futex, seen, (int64_t)slice) == -EINTR)
		return shmbus__fail(EINTR, "interrupted by a signal");
	/* woken (or timed out): the event, if any, comes before any clock */
	return shmbus_poll(sub, ev);
}

/*
 * Whether a poll now would most likely find nothing: no descriptor taken
 * and not handed out, no cells to give back or revoked holds to reap, no
 * gap to catch up, and the head cells of the redelivery, urgent and normal
 * queues empty (a dozen loads, all but the normal queue's head cell from
 * lines nobody writes while nothing happens). A hint for a spinning wait
 * between its polls: writes nothing, and the poll it lets through decides.
 */
static inline bool poll_would_find_nothing(const shmbus_sub_t *sub)
{
	if (sub->ready_n[0] | sub->ready_n[1] | sub->ready_n[2] | sub->cells_n | sub->held_revoked)
		return false;
	return !queue_ready(&sub->queues[SEG_QUEUE_NORMAL]) && !urgent_ready(sub) && !redeliver_waiting(sub) &&
	       at_load_relaxed_u64(&sub->rec->gap_lo) == SEG_GAP_NONE;
}

SHMBUS_API int shmbus_wait(shmbus_sub_t *sub, int64_t timeout_ns, const shmbus_event_t **ev)
{
	int rc = shmbus_poll(sub, ev);
	if (rc != 0)
		return rc;
	uint64_t start = now_mono_ns();
	uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : start + (uint64_t)timeout_ns;
	uint64_t spin_until = sub->wait == SHMBUS_WAIT_SPIN ? deadline
			      : sub->wait == SHMBUS_WAIT_BLOCK ? start
							       : start + sub->spin_ns;
	if (spin_until > deadline)
		spin_until = deadline;
	for (unsigned i = 1; sub->wait != SHMBUS_WAIT_BLOCK; i++) {
		/*
		 * A spinner notices its event half a round after it comes, on
		 * average, so most rounds only look at the queue heads (about
		 * 20 instructions) and pause every fourth time; every 64th is
		 * a whole poll (about 160 instructions), which also notices
		 * what the look does not (a removal, a bus orphaned by fork) and reads
		 * the clock. A PAUSE takes tens of cycles on recent x86: in one
		 * build, one every round made the spin round trip 20 ns longer,
		 * and a loop that never pauses is left through a pipeline flush
		 * and crowds an SMT sibling (ARCHITECTURE.md, Waiting).
		 */
		if ((i & 63) && poll_would_find_nothing(sub)) {
			if ((i & 3) == 0)
				at_cpu_relax();
			continue;
		}
		if ((rc = shmbus_poll(sub, ev)) != 0)
			return rc;
		at_cpu_relax();
		if ((i & 63) == 0) {
			uint64_t now = now_mono_ns();
			if (now >= spin_until)
				break;
			/* a pure spinner is the only one who can notice a dead
			 * group peer holding our events */
			if ((i & 0xFFFF) == 0)
				reclaim_if_due_at(sub->bus, now);
		}
	}
	for (;;) {
		uint64_t now = now_mono_ns();
		if (now >= deadline)
			return 0;
		reclaim_if_due_at(sub->bus, now);
		if ((rc = sleep_once(sub, now, deadline, ev)) != 0)
			return rc;
	}
}

/* The lowest sequence of the log events this consumer still holds, for a
 * survivor should we die (see catchup.c). */
static void log_low_update(shmbus_sub_t *sub)
{
	uint64_t low = 0;
	for (uint32_t i = 0; i < sub->nheld; i++)
		if (sub->held[i].k == HELD_FROM_LOG && (!low || sub->held[i].seq + 1 < low))
			low = sub->held[i].seq + 1;
	if (sub_current(sub))
		at_store_release_u64(&sub->cons->log_low, low);
}

/* Release held[i]: now drops its hold at once (the caller prefetched its
 * holder words and has checked that the subscription is current), else
 * it joins the deferred batch. */
static int release_held(shmbus_sub_t *sub, uint32_t i, const shmbus_event_t *ev, bool now)
{
	uint32_t k = sub->held[i].k;
	uint64_t seq = sub->held[i].seq;
	sub->held[i] = sub->held[--sub->nheld];
	if (k == HELD_FROM_LOG) {
		if (!sub->bus->orphaned)
			log_low_update(sub);
		return 0; /* in the log's mapping: nothing to give back */
	}
	if (sub->bus->orphaned) {
		held_free(sub, k);
		return 0;
	}
	/* A removed subscription's record may already serve another: its
	 * held[] is no longer ours to touch. */
	if (!now && !sub_current(sub)) {
		held_free(sub, k);
		return shmbus__fail(ESTALE, "the subscription was removed while the event was held");
	}
	/* read while the hold is ours: once RELEASING, a lag drain may
	 * drop it and the slot be reused */
	uint32_t slots = ((const struct seg_event *)ev)->size >> sub->bus->slot_size_shift;
	uint64_t desc = at_load_acquire_u64(&sub->cons->held[k]);
	if (now && desc && !(desc & SEG_DESC_REVOKED) && (desc & SEG_DESC_SEQ_MASK) == seq) {
		/* no RELEASING mark: the hold is dropped right here */
		return held_drop(sub, k, desc, NULL) == 0
			       ? 0
			       : shmbus__fail(ESTALE, "event was revoked while held (subscription was demoted or removed)");
	}
	if (desc && !(desc & SEG_DESC_REVOKED) && (desc & SEG_DESC_SEQ_MASK) == seq &&
	    at_cas_u64(&sub->cons->held[k], &desc, desc | SEG_DESC_RELEASING)) {
		CRASH_POINT("release.marked");
		sub->releasing[sub->nreleasing].desc = desc | SEG_DESC_RELEASING;
		sub->releasing[sub->nreleasing].k = k;
		sub->nreleasing++;
		sub->releasing_slots += slots;
		/* The batch is bounded in events and in ring space (a
		 * sixteenth), and cut short when a publisher waits for
		 * space, so deferring never starves a publisher. */
		if (sub->nreleasing == RELEASE_BATCH || sub->releasing_slots >= sub->bus->nslots / 16 ||
		    at_load_relaxed_u32(&sub->bus->hdr->space_waiters))
			flush_releases(sub);
		return 0;
	}
	/* revoked: its revoker clears the bit and then the entry */
	held_lost(sub, k, desc, seq);
	return shmbus__fail(ESTALE, "event was revoked while held (subscription was demoted or removed)");
}

SHMBUS_API int shmbus_release(shmbus_sub_t *sub, const shmbus_event_t *ev)
{
	if (!sub || !ev)
		return shmbus__fail(EINVAL, "subscription or event is NULL");
	for (uint32_t i = sub->nheld; i-- > 0;)
		if (sub->held[i].ev == ev)
			return release_held(sub, i, ev, false);
	return shmbus__fail(EINVAL, "event is not held by this subscription");
}

/*
 * The geometry a batch of drops reads for every event, loaded once: the
 * atomics of each drop are compiler barriers, after which every field
 * behind sub and bus would be loaded again.
 */
struct drop_ctx {
	struct seg_slot_ctl *slot_ctl;
	uint64_t slot_index_mask;
	uint32_t slot_shift;
	uint64_t *entries; /* our consumer record's held[] */
	uint64_t lone_bit; /* our holder bit, where it may be cleared plainly; else 0 */
};

static struct drop_ctx drop_ctx_of(const shmbus_sub_t *sub)
{
	const shmbus_bus_t *bus = sub->bus;
	/* slot_release_alone's condition, decided once: the sole consumer
	 * of a plain subscription on a bus with one holder word */
	bool plain_store = sub->sole_consumer && bus->max_subs <= 64;
	return (struct drop_ctx){
		.slot_ctl = bus->slot_ctl,
		.slot_index_mask = bus->nslots - 1,
		.slot_shift = bus->slot_shift,
		.entries = sub->cons->held,
		.lone_bit = plain_store ? 1ull << (sub->index % 64) : 0,
	};
}

/*
 * release_batch's usual case, with the subscription current: held[i] is a
 * ring event handed to the user, whose entry carries no mark but its hold.
 * The entry is won for the drop (DROPPING) and held[i] removed (the last
 * entry fills its place), the hold's bit cleared (plainly where
 * slot_release_alone would, decided once for the batch in d), then the
 * entry stored 0 and its index freed: held_drop_won's steps with the
 * geometry in registers. Returns 0, or -1 to leave the event to
 * release_held (from the log, marked, lost to a revoker, or the CAS lost:
 * its reading of the entry decides).
 */
static inline __attribute__((always_inline)) int drop_plain(shmbus_sub_t *sub, const struct drop_ctx *d, uint32_t i,
							    bool *wake_owed)
{
	struct held_local l = sub->held[i];
	if (l.k == HELD_FROM_LOG)
		return -1;
	uint64_t *e = &d->entries[l.k], desc = at_load_relaxed_u64(e);
	/* no flag but the hold: not marked, not a tombstone */
	if ((desc & ~SEG_DESC_HOLDS_REF) != l.seq || !at_cas_u64(e, &desc, desc | SEG_DESC_DROPPING))
		return -1;
	CRASH_POINT("plain.won");
	if (i != --sub->nheld) /* a batch's tail: the last, nothing to move */
		sub->held[i] = sub->held[sub->nheld];
	if (desc & SEG_DESC_HOLDS_REF) {
		struct seg_slot_ctl *s = &d->slot_ctl[l.seq & d->slot_index_mask];
		uint64_t committed = seg_ctl_make(seg_lap_of(l.seq, d->slot_shift), SEG_SLOT_COMMITTED, 0);
		if (d->lone_bit && slot_clear_lone_bit(s, committed, d->lone_bit))
			*wake_owed = true;
		else
			slot_release(sub->bus, l.seq, sub->index);
		CRASH_POINT("drop.bit");
	}
	at_store_release_u64(e, 0);
	CRASH_POINT("drop.cleared");
	held_free(sub, l.k);
	return 0;
}

/*
 * Whether evs[0..n) is the tail of held[] in order, which is how
 * shmbus_poll_batch hands events out: then each is dropped from the end of
 * held[] without a search. The same pass fetches the events' control lines
 * for writing, so that their misses overlap instead of queueing behind
 * each drop's locked instruction.
 */
static bool batch_is_held_tail(const shmbus_sub_t *sub, const struct drop_ctx *d, const shmbus_event_t *const *evs,
			       int n)
{
	if ((uint32_t)n > sub->nheld)
		return false;
	const struct held_local *tail = &sub->held[sub->nheld - (uint32_t)n];
	for (int j = 0; j < n; j++) {
		if (tail[j].ev != (const void *)evs[j])
			return false;
		at_prefetch_write(&d->slot_ctl[tail[j].seq & d->slot_index_mask]);
	}
	return true;
}

SHMBUS_API int shmbus_release_batch(shmbus_sub_t *sub, const shmbus_event_t *const *evs, int n)
{
	if (!sub || (!evs && n > 0) || n < 0)
		return shmbus__fail(EINVAL, "subscription or event array is NULL, or n < 0");
	/* A removed subscription's record may already serve another: then
	 * every event goes the deferred way, which only forgets them. */
	bool now = !sub->bus->orphaned && sub_current(sub);
	int first_err = 0;
	bool wake_owed = false;
	struct drop_ctx d = {0};
	if (now)
		d = drop_ctx_of(sub);
	if (now && batch_is_held_tail(sub, &d, evs, n)) {
		/* Last first: each is held[]'s last entry when its turn comes,
		 * so removing it moves nothing, whichever way it goes. */
		for (int j = n; j-- > 0;) {
			int rc = drop_plain(sub, &d, sub->nheld - 1, &wake_owed);
			if (rc == -1)
				rc = release_held(sub, sub->nheld - 1, evs[j], true);
			if (rc < 0 && !first_err)
				first_err = rc;
		}
		if (wake_owed)
			wake_space_waiters(sub);
		return first_err;
	}
	if (now)
		for (int j = 0; j < n; j++)
			if (evs[j])
				at_prefetch_write(bus_slot_holders(sub->bus, ((const struct seg_event *)(const void *)evs[j])->seq));
	/* Last first: events taken by shmbus_poll_batch sit at the end of
	 * held[] in delivery order, so each is found at once and removing it
	 * moves nothing (the gap is filled with the last entry). */
	for (int j = n; j-- > 0;) {
		uint32_t i = sub->nheld;
		while (i-- > 0 && sub->held[i].ev != evs[j])
			;
		int rc;
		if (!evs[j])
			rc = shmbus__fail(EINVAL, "event %d is NULL", j);
		else if (i == UINT32_MAX)
			rc = shmbus__fail(EINVAL, "event %d is not held by this subscription", j);
		else if (!now || (rc = drop_plain(sub, &d, i, &wake_owed)) == -1)
			rc = release_held(sub, i, evs[j], now);
		if (rc < 0 && !first_err)
			first_err = rc;
	}
	if (wake_owed)
		wake_space_waiters(sub);
	return first_err;
}

void consume_detach(shmbus_sub_t *sub, bool survives)
{
	shmbus_bus_t *bus = sub->bus;
	bool pushed = false;
	release_cells(sub);
	while (sub->nheld)
		shmbus_release(sub, sub->held[sub->nheld - 1].ev);
	flush_releases(sub);
	/* What was given back to us first: it is the oldest (redeliver_push).
	 * It goes behind whatever waits in the redelivery queue now, which
	 * is newer than it: a consumer that leaves while more is waiting
	 * there than its run took puts its share after the rest. */
	static const unsigned order[] = {SEG_QUEUE_REDELIVER, SEG_QUEUE_URGENT, SEG_QUEUE_NORMAL};
	bool to_tail = false;
	_Static_assert(sizeof order / sizeof order[0] == SEG_QUEUE_CLASSES, "every queue");
	for (unsigned o = 0; o < SEG_QUEUE_CLASSES; o++) {
		unsigned cls = order[o];
		for (uint32_t i = 0; i < sub->ready_n[cls]; i++) {
			const struct held_desc *h = &sub->ready[cls][sub->ready_head[cls] + i];
			/* taken, never seen by the user: given back, and only
			 * then out of held[] (dying in between gives it back twice,
			 * never loses its hold). We hold the table lock, so no
			 * revoker or removal can win the entry meanwhile; one that
			 * won it before is done (the lock's recovery finishes one
			 * that died), and the entry is no longer ours to push. */
			if (survives && !(h->desc & SEG_DESC_TOMBSTONE) &&
			    at_load_acquire_u64(&sub->cons->held[h->k]) == h->desc &&
			    redeliver_push(bus, sub->index, h->desc & ~SEG_DESC_UNSEEN, cls, &to_tail) == 0) {
				uint64_t d = h->desc;
				at_cas_u64(&sub->cons->held[h->k], &d, 0);
				held_free(sub, h->k);
				pushed = true;
				continue;
			}
			held_drop(sub, h->k, h->desc, NULL);
		}
		sub->ready_n[cls] = 0;
	}
	if (pushed)
		route_wake(bus, sub->index); /* group peers take them at once */
}

SHMBUS_API bool shmbus_redelivered(const shmbus_sub_t *sub, const shmbus_event_t *ev)
{
	if (!sub || !ev)
		return false;
	for (uint32_t i = 0; i < sub->nheld; i++)
		if (sub->held[i].ev == ev)
			return sub->held[i].k != HELD_FROM_LOG &&
			       (at_load_acquire_u64(&sub->cons->held[sub->held[i].k]) & SEG_DESC_REDELIVERED);
	return false;
}

SHMBUS_API bool shmbus_from_log(const shmbus_sub_t *sub, const shmbus_event_t *ev)
{
	if (!sub || !ev)
		return false;
	for (uint32_t i = 0; i < sub->nheld; i++)
		if (sub->held[i].ev == ev)
			return sub->held[i].k == HELD_FROM_LOG;
	return false;
}

/* Reported once per subscription, not per handle: a consumer that attaches
 * to a durable subscription learns what was missed while nobody was. */
SHMBUS_API uint64_t shmbus_take_missed(shmbus_sub_t *sub)
{
	if (!sub || sub->bus->orphaned)
		return 0;
	uint64_t now = at_load_acquire_u64(&sub->rec->missed);
	uint64_t seen = at_load_acquire_u64(&sub->rec->missed_taken);
	while (now > seen && !at_cas_u64(&sub->rec->missed_taken, &seen, now))
		;
	return now > seen ? now - seen : 0;
}
