/*
 * consume.c - taking events in place, waiting for them, giving them back.
 *
 * Taking: a descriptor moves from the subscription's queue into this
 * consumer's held[] in shared memory before its cell is released, so a
 * survivor can always find it if we die. The event is then read where it
 * lies in the ring, after its slot is seen COMMITTED and its bytes pass
 * seg_event_check.
 *
 * Waiting: spin, block (futex) or adaptive. A sleeper first raises the
 * `sleepers` flag, re-checks its queues, then sleeps on `wake_futex`;
 * a publisher looks at the flag after a fence and, if it can clear it, makes
 * the one wake-up syscall (every sleeper raises the flag again before it
 * sleeps again, so a burst of events costs one syscall, not one each).
 */
#include <errno.h>
#include <string.h>

#include "internal.h"
#include "futex.h"

static bool sub_current(const shmbus_sub_t *sub)
{
	return at_load_acquire_u32(&sub->rec->state) == SEG_SUB_ACTIVE &&
	       at_load_acquire_u64(&sub->rec->generation) == sub->generation;
}

/* held[] entries this handle uses are tracked in a local bitmap; a
 * removal or revocation may change the shared entry, never our claim on it. */
static int free_held_index(const shmbus_sub_t *sub)
{
	uint64_t free_bits = ~sub->held_used & ((1ull << SEG_HELD_MAX) - 1);
	return free_bits ? __builtin_ctzll(free_bits) : -1;
}

/* Give back held entry k: the reference it carries is released unless a
 * demotion revoked it first. */
static int held_drop(shmbus_sub_t *sub, unsigned k, uint64_t desc)
{
	uint64_t expected = desc;
	if (!at_cas_u64(&sub->cons->held[k], &expected, 0)) {
		if (expected == SEG_HELD_REVOKED)
			at_store_release_u64(&sub->cons->held[k], 0);
		return -ESTALE;
	}
	if ((desc & SEG_DESC_HOLDS_REF) && !(desc & SEG_DESC_TOMBSTONE))
		slot_release_ref(sub->bus, desc & SEG_DESC_SEQ_MASK);
	return 0;
}

/* Wait for the publisher of seq to commit (it pushes descriptors just
 * before). Returns the slot state: COMMITTED, ABORTED, or FREE when the
 * slot has moved on (our reference was revoked). */
static uint32_t await_commit(shmbus_bus_t *bus, uint64_t seq)
{
	uint64_t *ctl = bus_slot_ctl(bus, seq), lap = bus_lap(bus, seq);
	for (unsigned spins = 0;; spins++) {
		uint64_t c = at_load_acquire_u64(ctl);
		if (seg_ctl_lap(c) != lap)
			return SEG_SLOT_FREE;
		uint32_t st = seg_ctl_state(c);
		if (st != SEG_SLOT_CLAIMED)
			return st;
		at_cpu_relax();
		/* A publisher dies between push and commit only rarely; the
		 * reclaim sweep then aborts its claim. */
		if ((spins & 0xFFFF) == 0xFFFF)
			reclaim_if_due(bus);
	}
}

/* Take one descriptor from queue class cls and turn it into an event.
 * 1: *ev set; 0: queue empty; -errno. */
static int take_from(shmbus_sub_t *sub, unsigned cls, const shmbus_event_t **ev)
{
	shmbus_bus_t *bus = sub->bus;
	struct queue_view q = bus_queue(bus, sub->index, cls);
	uint64_t pos, desc;
	for (;;) {
		int k = free_held_index(sub);
		if (k < 0)
			return shmbus__fail(ENOBUFS, "%d events held: release some first", SEG_HELD_MAX);
		if (queue_take(&q, bus->member, UINT64_MAX, &pos, &desc) != 1)
			return 0;
		/* seq_cst against a concurrent removal sweeping held[] */
		__atomic_store_n(&sub->cons->held[k], desc, __ATOMIC_SEQ_CST);
		queue_finish_take(&q, pos);
		if (!sub_current(sub)) {
			held_drop(sub, (unsigned)k, desc);
			return shmbus__fail(ESHUTDOWN, "subscription was removed");
		}
		if (desc & SEG_DESC_TOMBSTONE) {
			at_store_release_u64(&sub->cons->held[k], 0);
			continue;
		}
		uint64_t seq = desc & SEG_DESC_SEQ_MASK;
		const struct seg_event *e = (const struct seg_event *)bus_slot_data(bus, seq);
		if (!(at_load_acquire_u8(&e->committed) && e->seq == seq) &&
		    await_commit(bus, seq) != SEG_SLOT_COMMITTED) {
			/* aborted by its publisher or a survivor: no reference */
			uint64_t d = desc;
			at_cas_u64(&sub->cons->held[k], &d, 0);
			continue;
		}
		if (seg_event_check(e, bus->max_event_bytes, NULL) < 0 || e->seq != seq) {
			held_drop(sub, (unsigned)k, desc);
			at_count_u64(&sub->rec->missed, 1);
			continue; /* corrupt bytes are never handed out */
		}
		if (sub->has_custom &&
		    !route_match(bus, &sub->route, sub->index, &sub->rec->filter, e, sub->custom)) {
			held_drop(sub, (unsigned)k, desc);
			at_count_u64(&sub->rec->filtered, 1);
			continue;
		}
		sub->held[sub->nheld].ev = e;
		sub->held[sub->nheld].k = (uint32_t)k;
		sub->nheld++;
		sub->held_used |= 1ull << k;
		at_store_relaxed_u64(&sub->cons->delivered, at_load_relaxed_u64(&sub->cons->delivered) + 1);
		*ev = (const shmbus_event_t *)(const void *)e;
		return 1;
	}
}

SHMBUS_API int shmbus_poll(shmbus_sub_t *sub, const shmbus_event_t **ev)
{
	if (!sub || !ev)
		return shmbus__fail(EINVAL, "subscription or event pointer is NULL");
	int rc = bus_check_usable(sub->bus);
	if (rc < 0)
		return rc;
	if (!sub_current(sub))
		return shmbus__fail(ESHUTDOWN, "subscription was removed");
	if (sub->nheld >= SEG_HELD_MAX)
		return shmbus__fail(ENOBUFS, "%d events held: release some first", SEG_HELD_MAX);
	for (unsigned cls = 0; cls < SEG_QUEUE_CLASSES; cls++)
		if ((rc = take_from(sub, cls, ev)) != 0)
			return rc;
	/* Caught up: a demoted subscription gets its policy back. */
	if (at_load_relaxed_u32(&sub->rec->flags) & SEG_SUB_DEMOTED)
		at_fetch_and_u32(&sub->rec->flags, ~SEG_SUB_DEMOTED);
	return 0;
}

static int sleep_once(shmbus_sub_t *sub, uint64_t deadline, const shmbus_event_t **ev)
{
	shmbus_bus_t *bus = sub->bus;
	struct seg_sub *s = sub->rec;
	uint32_t seen = at_load_acquire_u32(&s->wake_futex);
	at_exchange_u32(&s->sleepers, 1);
	at_fence_seq_cst();
	int rc = shmbus_poll(sub, ev);
	if (rc == 0) {
		uint64_t now = now_mono_ns();
		uint64_t slice = bus->reclaim_interval_ns;
		if (deadline != UINT64_MAX)
			slice = deadline > now ? (deadline - now < slice ? deadline - now : slice) : 0;
		if (slice) {
			int w = futex_wait_shared(&s->wake_futex, seen, (int64_t)slice);
			if (w == -EINTR)
				rc = shmbus__fail(EINTR, "interrupted by a signal");
		}
	}
	return rc;
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
	for (unsigned i = 1;; i++) {
		if ((rc = shmbus_poll(sub, ev)) != 0)
			return rc;
		at_cpu_relax();
		if ((i & 63) == 0) {
			if (now_mono_ns() >= spin_until)
				break;
			/* a pure spinner is the only one who can notice a dead
			 * group peer holding our events */
			if ((i & 0xFFFF) == 0)
				reclaim_if_due(sub->bus);
		}
	}
	for (;;) {
		uint64_t now = now_mono_ns();
		if (now >= deadline)
			return 0;
		reclaim_if_due(sub->bus);
		if ((rc = sleep_once(sub, deadline, ev)) != 0)
			return rc;
	}
}

SHMBUS_API int shmbus_release(shmbus_sub_t *sub, const shmbus_event_t *ev)
{
	if (!sub || !ev)
		return shmbus__fail(EINVAL, "subscription or event is NULL");
	for (uint32_t i = sub->nheld; i-- > 0;) {
		if (sub->held[i].ev != ev)
			continue;
		unsigned k = sub->held[i].k;
		sub->held[i] = sub->held[--sub->nheld];
		sub->held_used &= ~(1ull << k);
		if (sub->bus->orphaned)
			return 0;
		uint64_t desc = at_load_acquire_u64(&sub->cons->held[k]);
		int rc = -ESTALE;
		if (desc == SEG_HELD_REVOKED)
			at_store_release_u64(&sub->cons->held[k], 0);
		else if (desc)
			rc = held_drop(sub, k, desc);
		if (rc == -ESTALE)
			return shmbus__fail(ESTALE, "event was revoked while held (subscription was demoted or removed)");
		return 0;
	}
	return shmbus__fail(EINVAL, "event is not held by this subscription");
}

SHMBUS_API bool shmbus_redelivered(const shmbus_sub_t *sub, const shmbus_event_t *ev)
{
	if (!sub || !ev)
		return false;
	for (uint32_t i = 0; i < sub->nheld; i++)
		if (sub->held[i].ev == ev)
			return at_load_acquire_u64(&sub->cons->held[sub->held[i].k]) & SEG_DESC_REDELIVERED;
	return false;
}

SHMBUS_API uint64_t shmbus_take_missed(shmbus_sub_t *sub)
{
	if (!sub)
		return 0;
	uint64_t now = at_load_relaxed_u64(&sub->rec->missed);
	uint64_t d = now - sub->missed_seen;
	sub->missed_seen = now;
	return d;
}
