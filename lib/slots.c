/*
 * slots.c - claiming ring slots and giving them back.
 *
 * A publisher claims n consecutive slot positions with one CAS on the
 * header's claim_pos, after checking that every slot it would take is
 * reusable. The check cannot go stale in a harmful way: a reusable slot
 * stays reusable until claimed (references are only ever added by the
 * publisher of the slot's own lap), and claiming moves claim_pos, which
 * makes any competing CAS fail.
 *
 * Claim leases. Publishers that take turns (a request and its response,
 * ping-pong) would pass claim_pos between their cores on every event, and
 * the locked instruction that claims would wait for whatever the consumer
 * side left in the store buffer: together a good part of a round trip. So
 * a publisher that sees others claim between its own single-slot claims
 * claims several positions at once: the first for the event at hand, the
 * others LEASED to it (see seg_slot_ctl), each of which a later
 * single-slot event of it takes with plain stores and loads on its own
 * lines. Nobody waits for a lease: a claimer a lap later and the recorder
 * take an unused position away (slots_take_lease), at the price of a
 * membarrier, and the publisher that then finds its count of positions
 * taken away changed claims anew. A publisher's events keep the order of their positions, because
 * any other claim of it first gives its lease up (leaving its positions to
 * be taken away). A process that cannot register for membarrier never
 * leases.
 */
#include <errno.h>
#include <sched.h>

#include "internal.h"
#include "asym_fence.h"
#include "crash_point.h"
#include "prefetch.h"
#include "futex.h"
#include "slots.h"

enum range_state { RANGE_FREE, RANGE_TAKEN, RANGE_BUSY, RANGE_FREE_RETRY };

/* The lap tag before lap (the tag wraps at 44 bits). */
static uint64_t lap_before(uint64_t lap)
{
	return (lap - 1) & ((1ull << (64 - SEG_CTL_LAP_SHIFT)) - 1);
}

/* Whether any subscription holds the slot (its four holder words). */
static inline bool slot_held(const uint64_t *h)
{
	_Static_assert(SEG_HOLDER_WORDS == 4, "slot_held reads four words");
	return (at_load_acquire_u64(&h[0]) | at_load_acquire_u64(&h[1]) | at_load_acquire_u64(&h[2]) |
		at_load_acquire_u64(&h[3])) != 0;
}

/* The end of the run of positions from p (at most end) in p's lap: they
 * share a lap tag, so a loop over a claim computes its control words once
 * per run instead of once per slot. */
static inline uint64_t lap_run_end(const shmbus_bus_t *bus, uint64_t p, uint64_t end)
{
	uint64_t next_lap = (p | (bus->nslots - 1)) + 1;
	return next_lap < end ? next_lap : end;
}

/* Whether the slot at position p is in use by an older lap's event that is
 * not released yet; sets *taken if position p was already claimed. */
static bool slot_busy(shmbus_bus_t *bus, uint64_t p, bool *taken)
{
	uint64_t *ctl = bus_slot_ctl(bus, p);
again:;
	uint64_t c = at_load_acquire_u64(ctl);
	uint64_t lap = bus_lap(bus, p);
	if (seg_ctl_lap(c) == lap) {
		*taken = true;
		return false;
	}
	/* Position p - N is claimed already (it is below claim_pos), but its
	 * claimer marks the slot only after its CAS: a word of an older lap
	 * means that mark is still to come, not that the slot is free. (On a
	 * new segment the all-zero word carries lap 0, the lap before the
	 * first.) A claimer that dies before marking is finished by reclaim
	 * (slots_recover_claim). */
	if (seg_ctl_lap(c) != lap_before(lap))
		return true;
	if (seg_ctl_leased(c)) {
		/* leased a lap ago and never used: take it from its publisher;
		 * if it is taking the slot itself, it is busy for now */
		if (slots_take_lease(bus, p - bus->nslots, c))
			return false;
		if (at_load_acquire_u64(ctl) != c)
			goto again;
		return true;
	}
	uint32_t st = seg_ctl_state(c);
	if (st == SEG_SLOT_CLAIMED)
		return true;
	if (st != SEG_SLOT_COMMITTED)
		return false;
	return slot_held(bus_slot_holders(bus, p));
}

/*
 * The first position of [p, end) that may not be reusable, reading each
 * slot once: the words a reusable slot normally has (the previous lap's
 * FREE, ABORTED, or COMMITTED with no holder, naming no claimer) are
 * compared whole, against values computed once per lap, where slot_busy
 * decodes every word. Whatever else a word says is slot_busy's to judge.
 */
static uint64_t reusable_until(shmbus_bus_t *bus, uint64_t p, uint64_t end)
{
	while (p < end) {
		uint64_t stop = lap_run_end(bus, p, end), before = lap_before(bus_lap(bus, p));
		uint64_t freed = seg_ctl_make(before, SEG_SLOT_FREE, 0), aborted = seg_ctl_make(before, SEG_SLOT_ABORTED, 0);
		uint64_t committed = seg_ctl_make(before, SEG_SLOT_COMMITTED, 0);
		struct seg_slot_ctl *s = &bus->slot_ctl[seg_ctl_index(p, bus->nslots)];
		for (; p < stop; p++, s++) {
			uint64_t c = at_load_acquire_u64(&s->ctl);
			if (c == committed ? slot_held(s->holders) : c != freed && c != aborted)
				return p;
		}
	}
	return p;
}

/* How far beyond the slot it waits for a publisher that found the ring
 * full waits to see reusable (wait_for_space_once): a sixteenth of the
 * ring, so the claims after the wait find room without one. A claim needs
 * at most half the ring plus the eighth of headroom, so the stretch's end
 * stays within the lap before the claim position. */
#define SPACE_STRETCH(bus) ((uint64_t)(bus)->nslots / 16)

/* Slots verified beyond what a claim needs. None: verifying ahead in
 * bursts turns a steady miss per claim into a burst of misses every few
 * claims, which shows in the latency tail; one new slot per claim (the
 * headroom's end) overlaps with the claim's other work. */
#define VERIFY_AHEAD 0u

/*
 * Whether [pos, pos + n) can be claimed. Low and normal events leave the
 * last eighth of the ring to high and critical ones: the slots up to N/8
 * beyond their claim must be reusable too.
 *
 * A reusable slot stays reusable until it is claimed, and claiming moves
 * claim_pos past it; so the publisher keeps the window [ok_from, ok_to) of
 * positions it saw reusable, and every position of it at or beyond
 * claim_pos is reusable still. Only the part of the range beyond the window
 * is read (each slot once per lap, a few ahead of need), and the window is
 * dropped when claim_pos is outside it.
 */
static enum range_state range_state(shmbus_pub_t *pub, uint64_t pos, uint32_t n, bool urgent, uint64_t *blocking)
{
	shmbus_bus_t *bus = pub->bus;
	uint64_t need = pos + n + (urgent ? 0 : bus->nslots / 8 + 1);
	if (pos < pub->ok_from || pos > pub->ok_to || pub->ok_to - pos > bus->nslots)
		pub->ok_from = pub->ok_to = pos;
	if (pub->ok_to >= need)
		return RANGE_FREE;
	uint64_t end = need + VERIFY_AHEAD, p = pub->ok_to;
	/* The slots' control lines, for writing: the claim's commit writes
	 * each, and read first they would come shared from the consumer that
	 * released them, to be fetched a second time for the commit. */
	for (uint64_t q = p; q < end; q++)
		at_prefetch_write(bus_slot_ctl(bus, q));
	while ((p = reusable_until(bus, p, end)) < end) {
		bool taken = false;
		bool busy = slot_busy(bus, p, &taken);
		if (busy || taken)
			break;
		p++;
	}
	pub->ok_to = p;
	if (p >= need)
		return RANGE_FREE;
	bool taken = false;
	if (slot_busy(bus, p, &taken)) {
		*blocking = p - bus->nslots;
		return RANGE_BUSY;
	}
	/* claimed by someone else (claim_pos moved), or freed meanwhile */
	return taken ? RANGE_TAKEN : RANGE_FREE_RETRY;
}

/*
 * wait_for_space - one round of waiting for the slot holding blocking_seq.
 * First relieves congestion (drains `lag` subscriptions); then spins
 * briefly, then sleeps on the header's space futex, waking at least every
 * reclaim interval to look for dead members; past the stall timeout it
 * demotes the `block` subscriptions that hold the slot. Returns 0 to try
 * again, -EAGAIN (timeout < 0), or -ETIMEDOUT.
 */
static int wait_for_space_once(shmbus_pub_t *pub, uint64_t blocking_seq, struct space_wait *w);

/* A waiting publisher is not routing: a subscription being removed must
 * not wait for it. Its routing word is odd again when it retries. */
static int wait_for_space(shmbus_pub_t *pub, uint64_t blocking_seq, struct space_wait *w)
{
	bool routing = at_load_relaxed_u64(&pub->rec->routing) & 1;
	if (routing)
		routing_abort(pub);
	int rc = wait_for_space_once(pub, blocking_seq, w);
	if (routing && rc == 0)
		routing_begin(pub);
	return rc;
}

static int wait_for_space_once(shmbus_pub_t *pub, uint64_t blocking_seq, struct space_wait *w)
{
	shmbus_bus_t *bus = pub->bus;
	struct seg_header *h = bus->hdr;
	uint64_t now = now_mono_ns();
	bool just_relieved = false;
	if (!w->started) {
		w->started = true;
		w->start_ns = now;
		w->timeout_ns = pub->timeout_ns > 0 ? pub->timeout_ns : (int64_t)h->block_timeout_ns;
		/* the same slot held us back before: that wait counts too */
		if (pub->stall_seq != blocking_seq + 1) {
			pub->stall_seq = blocking_seq + 1; /* 0: none */
			pub->stall_waited_ns = 0;
		}
		w->stall_base_ns = pub->stall_waited_ns;
		at_count_u64(&pub->rec->block_waits, 1);
		/* Nothing drained (no `lag` subscription) means the slot is as
		 * busy as a moment ago: a blocking wait goes on to spin rather
		 * than look at its line again at once. */
		if (reclaim_relieve_congestion(bus, &pub->rec->drain, blocking_seq, false) || pub->timeout_ns < 0)
			return 0;
		just_relieved = true;
	}
	uint64_t stalled_for = w->stall_base_ns + (now - w->start_ns);
	pub->stall_waited_ns = stalled_for;
	if (pub->timeout_ns < 0 || now - w->start_ns >= (uint64_t)w->timeout_ns) {
		at_count_u64(&pub->rec->block_timeouts, 1);
		if (pub->timeout_ns < 0)
			return shmbus__fail(EAGAIN, "the ring is full: a subscriber still holds the oldest slot (publish would wait)");
		return shmbus__fail(ETIMEDOUT, "the ring stayed full for %.3f s: a subscriber still holds the oldest slot",
				    (double)w->timeout_ns / 1e9);
	}
	bool stalled = stalled_for >= h->stall_timeout_ns;
	if (stalled || (w->rounds % 64 == 0 && !just_relieved))
		reclaim_relieve_congestion(bus, &pub->rec->drain, blocking_seq, stalled);
	reclaim_if_due(bus);
	if (w->rounds < 64) {
		/* Spin until a stretch of slots beyond the blocking one is
		 * reusable, looking only at the stretch's far end: its line is
		 * one the consumers reach later. Looking at the blocking slot
		 * itself (range_state, after each round) takes from them the
		 * line they are about to release; under a steady full ring that
		 * happened for every batch, slowed the consumers and kept the
		 * ring full. With the stretch free, the claims that follow find
		 * their slots reusable without waiting. When the far end is
		 * free already (released out of order), the blocking slot is
		 * looked at after every round, as before; and at once when
		 * another publisher claimed meanwhile (the far end may be its
		 * slot now: never free this lap). */
		do {
			w->rounds++;
			for (int i = 0; i < 64; i++)
				at_cpu_relax();
		} while (w->rounds < 64 && reusable_until(bus, w->ahead, w->ahead + 1) == w->ahead &&
			 at_load_relaxed_u64(&h->claim_pos) == w->claim_seen &&
			 now_mono_ns() - w->start_ns < (uint64_t)w->timeout_ns); /* a short timeout is kept */
		return 0;
	}
	uint64_t slice = bus->reclaim_interval_ns;
	uint64_t left = w->start_ns + (uint64_t)w->timeout_ns - now;
	if (left < slice)
		slice = left;
	if (!stalled && h->stall_timeout_ns - stalled_for < slice)
		slice = h->stall_timeout_ns - stalled_for;
	uint32_t seen = at_load_acquire_u32(&h->space_futex);
	at_exchange_u32(&h->space_waiters, 1);
	at_fence_seq_cst();
	bool taken = false;
	if (slot_busy(bus, blocking_seq + bus->nslots, &taken) && !taken)
		futex_wait_shared(&h->space_futex, seen, (int64_t)slice);
	return 0;
}

/* Store the word of state (naming claimer) in the control word of every
 * position of [p, end), in position order. */
static inline __attribute__((always_inline)) void mark_slots(shmbus_bus_t *bus, uint64_t p, uint64_t end,
							     uint32_t state, uint32_t claimer)
{
	while (p < end) {
		uint64_t stop = lap_run_end(bus, p, end), word = seg_ctl_make(bus_lap(bus, p), state, claimer);
		struct seg_slot_ctl *s = &bus->slot_ctl[seg_ctl_index(p, bus->nslots)];
		for (; p < stop; p++, s++)
			at_store_release_u64(&s->ctl, word);
	}
}

/* Lease lengths: at most LEASE_MAX positions; after a lease of ours was
 * taken away, LEASE_COOLDOWN single claims before the next. */
#define LEASE_MAX 16u
#define LEASE_COOLDOWN 64u

/*
 * A lease is used for LEASE_MAX_AGE at most, so that the events of a bus
 * stay in time order by sequence within a few milliseconds (the log's
 * time queries allow LOG_TIME_SLACK_NS, 100 ms), however slowly two
 * publishers take turns. Measured with the claimer's own reading of its
 * counter (pub_clock_ticks: the time-stamp counter where there is one,
 * 2^22 ticks being 1 to 4 ms; else nanoseconds).
 */
#if PUB_CLOCK_HAVE_TSC
#define LEASE_MAX_AGE (1ull << 22)
#else
#define LEASE_MAX_AGE 2000000ull
#endif

/* A lease's clock now, from the claimer's reading: the counter itself, or
 * where there is none (pub_clock_ticks reads nothing) the monotonic
 * clock, read only by the claims that take or make a lease. */
static inline uint64_t lease_clock(uint64_t ticks)
{
#if PUB_CLOCK_HAVE_TSC
	return ticks;
#else
	(void)ticks;
	return now_mono_ns();
#endif
}

/*
 * lease_take - the next position of pub's lease (it has one) as its
 * claim, if nobody took it away (seg_slot_ctl has the protocol; the taker's
 * side is slots_take_lease). When a position of the lease was taken away,
 * the rest is given back and leases pause for a while; a lease older than
 * LEASE_MAX_AGE is given back too.
 */
static inline bool lease_take(shmbus_pub_t *pub, uint64_t ticks, uint64_t *pos_out)
{
	shmbus_bus_t *bus = pub->bus;
	uint64_t p = pub->lease_next; /* below lease_end (the caller saw) */
	if (lease_clock(ticks) - pub->lease_born > LEASE_MAX_AGE) {
		slots_lease_give_up(pub); /* too old: its positions lie too far back */
		return false;
	}
	uint64_t *ctl = bus_slot_ctl(bus, p), lap = bus_lap(bus, p);
	struct seg_pub *r = pub->rec;
	at_store_relaxed_u64(&r->lease_using, p + 1);
	asym_fence_light(); /* a taker's membarrier is the store-load fence */
	CRASH_POINT("lease.using");
	/* our own line, not the slot's: a load of the slot's word would wait
	 * for a line the consumer side may have pulled away */
	if (at_load_relaxed_u64(&r->lease_taken) != pub->lease_taken_seen) {
		at_store_release_u64(&r->lease_using, 0);
		slots_lease_give_up(pub); /* what the taker left, back at once */
		pub->lease_len = 1;
		pub->lease_cooldown = LEASE_COOLDOWN;
		slots_wake_waiters(bus); /* a taker may wait for our retreat */
		return false;
	}
	at_store_release_u64(ctl, seg_ctl_make(lap, SEG_SLOT_CLAIMED, pub->index + 1));
	CRASH_POINT("lease.taken");
	pub->lease_next = ++p;
	/* the next event's control line, last written by a consumer's
	 * release a lap ago, is fetched while this one is in flight */
	if (p < pub->lease_end)
		at_prefetch_write(bus_slot_ctl(bus, p));
	*pos_out = p - 1;
	return true;
}

/* Whether the publisher of record index o may still be taking position p
 * of its lease (the taker's side of the handshake, after its fence). */
static bool lease_in_use(shmbus_bus_t *bus, uint32_t o, uint64_t p)
{
	if (o >= bus->max_members)
		return false;
	struct seg_pub *r = &bus->pubs[o];
	return at_load_acquire_u64(&r->lease_using) == p + 1 && at_load_acquire_u32(&r->state) &&
	       member_alive(bus, at_load_acquire_u32(&r->member));
}

/* Turn the LEASED positions right after p that belong to the same lease
 * (the same publisher, consecutive) into TAKING, so one fence serves
 * them all; *n says how many (at most LEASE_MAX - 1). */
static void take_lease_rest(shmbus_bus_t *bus, uint64_t p, uint32_t claimer, uint32_t *n)
{
	*n = 0;
	for (uint64_t q = p + 1; q < p + LEASE_MAX; q++) {
		uint64_t lap = bus_lap(bus, q), c = seg_ctl_make(lap, SEG_SLOT_FREE, claimer);
		if (!at_cas_u64(bus_slot_ctl(bus, q), &c, seg_ctl_make(lap, SEG_SLOT_ABORTED, claimer)))
			break;
		(*n)++;
	}
}

bool slots_take_lease(shmbus_bus_t *bus, uint64_t p, uint64_t c)
{
	uint64_t *ctl = bus_slot_ctl(bus, p), lap = seg_ctl_lap(c);
	uint32_t claimer = seg_ctl_claimer(c), rest = 0;
	uint64_t taking = seg_ctl_make(lap, SEG_SLOT_ABORTED, claimer);
	if (seg_ctl_state(c) == SEG_SLOT_FREE) {
		if (!at_cas_u64(ctl, &c, taking))
			return false; /* changed: its publisher took it, or a taker is at it */
		take_lease_rest(bus, p, claimer, &rest);
	}
	CRASH_POINT("lease.taking");
	/* Tell the publisher (each party that finishes a TAKING word does:
	 * one that died may not have); a count too many only makes it give
	 * up a lease early. */
	if (claimer - 1 < bus->max_members)
		at_fetch_add_u64(&bus->pubs[claimer - 1].lease_taken, 1 + rest);
	/* Without the fence we cannot know that the publisher did not read
	 * the count before our increment and is about to store CLAIMED. */
	if (asym_fence_heavy() < 0)
		return false;
	/* The rest of the lease: finished here, or left TAKING for whoever
	 * comes next if its publisher is taking one of them. */
	for (uint64_t q = p + 1; q <= p + rest; q++) {
		uint64_t t = seg_ctl_make(bus_lap(bus, q), SEG_SLOT_ABORTED, claimer);
		if (!lease_in_use(bus, claimer - 1, q))
			at_cas_u64(bus_slot_ctl(bus, q), &t, seg_ctl_make(bus_lap(bus, q), SEG_SLOT_ABORTED, 0));
	}
	if (lease_in_use(bus, claimer - 1, p))
		return false;
	/* false: another taker finished first, or the publisher's CLAIMED
	 * landed after our CAS (it read the count before our increment) */
	return at_cas_u64(ctl, &taking, seg_ctl_make(lap, SEG_SLOT_ABORTED, 0)) ||
	       taking == seg_ctl_make(lap, SEG_SLOT_ABORTED, 0);
}

/*
 * How many positions a single-slot claim at pos takes, and the length of
 * the next lease: leases grow (doubling) while other publishers claim
 * between ours, and shrink while nobody does, when a lease would only add
 * the marking of positions that claim_pos alone gives as cheaply.
 */
static inline uint32_t lease_size(shmbus_pub_t *pub, uint64_t pos)
{
	uint32_t len = pub->lease_len ? pub->lease_len : 1;
	/* alone on the claim word (nobody claimed since our last claim, and
	 * no lease yet): claim_pos is as cheap as a lease, decided in two
	 * loads */
	if (pos == pub->last_claim_end && len == 1)
		return 1;
	/* a recorder takes every lease away, each at a membarrier's price,
	 * and a member that cannot issue one could not take any away */
	if (!routing_fence_light(pub) || at_load_relaxed_u32(&pub->bus->hdr->log_recorder_pid))
		return 1;
	if (pub->lease_cooldown) {
		pub->lease_cooldown--;
		return 1;
	}
	if (pos != pub->last_claim_end)
		pub->lease_len = len * 2 < LEASE_MAX ? len * 2 : LEASE_MAX;
	else
		pub->lease_len = len > 1 ? len / 2 : 1;
	return len;
}

void slots_lease_give_up(shmbus_pub_t *pub)
{
	shmbus_bus_t *bus = pub->bus;
	/* Not in use by us (one thread per handle), so no fence: a CAS back
	 * to reusable spares a taker its membarrier; a lost CAS means a taker
	 * is at it already. */
	for (uint64_t p = pub->lease_next; p < pub->lease_end; p++) {
		uint64_t lap = bus_lap(bus, p), c = seg_ctl_make(lap, SEG_SLOT_FREE, pub->index + 1);
		at_cas_u64(bus_slot_ctl(bus, p), &c, seg_ctl_make(lap, SEG_SLOT_ABORTED, 0));
	}
	pub->lease_next = pub->lease_end;
}

/* slots_claim beyond the lease: a claim of the shared position. Out of
 * line, so that a claim from the lease (lease_take, most single events)
 * does not pay for this loop's registers and stack. */
static __attribute__((noinline)) int claim_shared(shmbus_pub_t *pub, uint32_t n, uint32_t first_slots, bool urgent,
						  uint64_t *ticks, uint64_t *pos_out)
{
	shmbus_bus_t *bus = pub->bus;
	/* any claim here lies beyond the lease, whose positions this
	 * publisher must then no longer use */
	if (pub->lease_next < pub->lease_end)
		slots_lease_give_up(pub);
	uint64_t *claim = &bus->hdr->claim_pos;
	struct space_wait w = {.started = false}; /* its timeout is read when it starts */
	uint32_t want = 0; /* n, or a lease's length for a single slot */
	for (bool again = false;; again = true) {
		/* another claimer came first, or we waited for space: the
		 * caller's reading is too old to time the event by */
		if (again)
			*ticks = pub_clock_ticks();
		/* for writing: the CAS then needs no second transfer of the line
		 * another publisher wrote last */
		at_prefetch_write(claim);
		uint64_t pos = at_load_acquire_u64(claim), blocking = 0;
		if (!want)
			want = n == 1 ? lease_size(pub, pos) : n;
		switch (range_state(pub, pos, want, urgent, &blocking)) {
		case RANGE_FREE_RETRY:
			continue;
		case RANGE_FREE: {
			/* The intent goes first (the CAS orders it): should we die
			 * between the CAS and the marks below, a survivor finds the
			 * unmarked slots through it. */
			struct seg_pub *r = pub->rec;
			/* before the lease exists: a taking away counts only if
			 * it came after this */
			if (want > n) {
				pub->lease_taken_seen = at_load_acquire_u64(&r->lease_taken);
				pub->lease_born = lease_clock(*ticks);
			}
			at_store_relaxed_u32(&r->claiming_n, want);
			at_store_relaxed_u64(&r->claiming, pos + 1);
			CRASH_POINT("claim.intent");
			if (!at_cas_u64(claim, &pos, pos + want)) {
				at_store_relaxed_u64(&r->claiming, 0);
				continue;
			}
			CRASH_POINT("claim.cas");
			/* Each slot turns from reusable-for-us to busy exactly once,
			 * here, and never back before its event is done: a slot
			 * another publisher's claim window holds as reusable must
			 * stay so. So every head of a batch is CLAIMED now, not when
			 * the publisher reaches it (a later head left FREE meanwhile
			 * was claimed a lap ahead while a preempted batch still had
			 * it to write). The first event's other slots are FREE; a
			 * later event's turn FREE when its publisher reaches it
			 * (slots_free_body). */
			at_store_release_u64(bus_slot_ctl(bus, pos),
					     seg_ctl_make(bus_lap(bus, pos), SEG_SLOT_CLAIMED, pub->index + 1));
			CRASH_POINT("claim.head_marked");
			/* the loops only for the events that need them: most
			 * claims are one single-slot event */
			if (first_slots > 1)
				mark_slots(bus, pos + 1, pos + first_slots, SEG_SLOT_FREE, 0);
			if (n > first_slots)
				mark_slots(bus, pos + first_slots, pos + n, SEG_SLOT_CLAIMED, pub->index + 1);
			if (want > n) {
				mark_slots(bus, pos + n, pos + want, SEG_SLOT_FREE, pub->index + 1); /* LEASED */
				pub->lease_next = pos + n;
				pub->lease_end = pos + want;
			}
			CRASH_POINT("claim.marked");
			at_store_release_u64(&r->claiming, 0);
			pub->last_claim_end = pos + want;
			*pos_out = pos;
			return 0;
		}
		case RANGE_TAKEN:
			/* A claimer moves claim_pos before it marks the slots, so a
			 * slot of this lap at an unmoved claim_pos means the header
			 * was overwritten: never wait for a claim that cannot come. */
			if (at_load_acquire_u64(claim) == pos)
				return shmbus__fail(EBADMSG, "bus '%s' is corrupt: claim position %llu is behind claimed slots",
						    bus->name, (unsigned long long)pos);
			at_cpu_relax();
			continue;
		case RANGE_BUSY: {
			if (want > n) { /* no room for a lease: the one slot will do */
				want = n;
				continue;
			}
			w.ahead = blocking + bus->nslots + SPACE_STRETCH(bus);
			w.claim_seen = pos;
			int rc = wait_for_space(pub, blocking, &w);
			if (rc < 0)
				return rc;
			continue;
		}
		}
	}
}

int slots_claim(shmbus_pub_t *pub, uint32_t n, uint32_t first_slots, bool urgent, uint64_t *ticks,
		uint64_t *pos_out)
{
	if (n == 1 && pub->lease_next < pub->lease_end && lease_take(pub, *ticks, pos_out))
		return 0;
	return claim_shared(pub, n, first_slots, urgent, ticks, pos_out);
}

void slots_free_body(shmbus_bus_t *bus, uint64_t head, uint32_t n)
{
	mark_slots(bus, head + 1, head + n, SEG_SLOT_FREE, 0);
}

/* Whether a publisher of a member other than dead, and alive, may still be
 * between its claim CAS and marking position x: its intent covers x. */
static bool live_claim_covers(shmbus_bus_t *bus, uint32_t dead, uint64_t x)
{
	for (uint32_t p = 0; p < bus->max_members; p++) {
		struct seg_pub *r = &bus->pubs[p];
		uint32_t m = at_load_relaxed_u32(&r->member);
		if (!at_load_acquire_u32(&r->state) || m == dead)
			continue;
		uint64_t from = at_load_acquire_u64(&r->claiming);
		uint32_t n = at_load_relaxed_u32(&r->claiming_n);
		if (from && x + 1 >= from && x + 1 - from < n && member_alive(bus, m))
			return true;
	}
	return false;
}

/*
 * A claimer that died between its claim CAS and its marks left positions
 * below claim_pos whose words still carry the lap before theirs: busy to
 * every later claim (slot_busy), for ever. Its intent names the claim.
 * Each such position that no live publisher's intent covers (a live
 * claimer marks within instructions and clears its intent only after;
 * one whose CAS lost clears it at once) is aborted: ABORTED is reusable,
 * and readers skip it like any aborted claim. The CAS on the word loses to
 * a mark that comes meanwhile; a live intent that does not settle within
 * two reclaim timeouts is left alone (a stopped process), never guessed.
 */
void slots_recover_claim(shmbus_bus_t *bus, struct seg_pub *r, uint32_t dead)
{
	uint64_t from = at_load_acquire_u64(&r->claiming);
	uint32_t n = at_load_relaxed_u32(&r->claiming_n);
	/* claim_pos after the intent: a CAS that moved it past a position made
	 * the intent that covers the position visible */
	uint64_t claim = at_load_u64_sc(&bus->hdr->claim_pos);
	bool aborted = false;
	for (uint64_t x = from - 1; from && n <= bus->nslots / 2 && x < from - 1 + n && x < claim; x++) {
		uint64_t *ctl = bus_slot_ctl(bus, x), lap = bus_lap(bus, x), deadline = 0;
		for (;;) {
			uint64_t c = at_load_acquire_u64(ctl);
			if (seg_ctl_lap(c) != lap_before(lap))
				break; /* marked */
			if (!live_claim_covers(bus, dead, x)) {
				if (!at_cas_u64(ctl, &c, seg_ctl_make(lap, SEG_SLOT_ABORTED, 0)))
					continue;
				aborted = true;
				break;
			}
			uint64_t now = now_mono_ns();
			if (!deadline)
				deadline = now + 2 * bus->hdr->reclaim_timeout_ns;
			else if (now > deadline)
				break;
			sched_yield();
		}
	}
	if (aborted)
		at_count_u64(&bus->hdr->aborted_claims, 1);
	at_store_release_u64(&r->claiming, 0);
}

bool slot_held_by(const shmbus_bus_t *bus, uint64_t seq, uint32_t sub)
{
	uint64_t c = at_load_acquire_u64(bus_slot_ctl(bus, seq));
	if (seg_ctl_lap(c) != bus_lap(bus, seq) || seg_ctl_state(c) != SEG_SLOT_COMMITTED || sub >= SEG_MAX_SUBSCRIBERS)
		return false;
	return at_load_acquire_u64(&bus_slot_holders(bus, seq)[sub / 64]) >> (sub % 64) & 1;
}

/*
 * A descriptor of a CLAIMED slot exists only while its publisher routes
 * (between pushing descriptors and committing), and a routing publisher
 * keeps its routing word odd. So a claim is waited for as long as its
 * publisher lives and routes, however slow (a preempted publisher must not
 * cost an event); it is given up when the word names no publisher, or one
 * that is not routing (a corrupt word), or after two reclaim timeouts when
 * the publisher is dead (the reclaim sweep normally aborts it first).
 */
uint32_t slot_settle(shmbus_bus_t *bus, uint64_t seq)
{
	uint64_t *ctl = bus_slot_ctl(bus, seq), lap = bus_lap(bus, seq), deadline = 0, pass = 0;
	for (unsigned spins = 0;; spins++) {
		uint64_t c = at_load_acquire_u64(ctl);
		if (seg_ctl_lap(c) != lap)
			return SEG_SLOT_FREE;
		uint32_t st = seg_ctl_state(c);
		if (st != SEG_SLOT_CLAIMED)
			return st;
		at_cpu_relax();
		if ((spins & 0xFFF) != 0xFFF)
			continue;
		uint32_t p = seg_ctl_claimer(c) - 1;
		if (p >= bus->max_members)
			return SEG_SLOT_ABORTED;
		struct seg_pub *r = &bus->pubs[p];
		/* the claim belongs to one routing pass of its publisher: if the
		 * word is even, or a later pass began, and the slot is still
		 * claimed, nobody will commit it (a corrupt word) */
		uint64_t routing = at_load_acquire_u64(&r->routing);
		if (!pass)
			pass = routing;
		if (!(routing & 1) || routing != pass) {
			if (at_load_acquire_u64(ctl) == c)
				return SEG_SLOT_ABORTED;
			continue;
		}
		uint64_t now = now_mono_ns();
		if (member_alive(bus, at_load_acquire_u32(&r->member))) {
			deadline = 0;
			sched_yield(); /* it was preempted: let it run */
			continue;
		}
		if (!deadline)
			deadline = now + 2 * bus->hdr->reclaim_timeout_ns;
		else if (now > deadline)
			return SEG_SLOT_ABORTED;
		reclaim_if_due_at(bus, now);
	}
}

void slot_release(shmbus_bus_t *bus, uint64_t seq, uint32_t sub)
{
	/* a descriptor whose slot moved on must not clear a bit of the
	 * slot's new event; an aborted event holds nothing. A release almost
	 * always finds its slot committed: one load, no settling loop. */
	if (sub >= SEG_MAX_SUBSCRIBERS)
		return;
	uint64_t c = at_load_acquire_u64(bus_slot_ctl(bus, seq));
	if (c != seg_ctl_make(bus_lap(bus, seq), SEG_SLOT_COMMITTED, 0) && slot_settle(bus, seq) != SEG_SLOT_COMMITTED)
		return;
	uint64_t *h = bus_slot_holders(bus, seq), bit = 1ull << (sub % 64);
	uint64_t old = at_fetch_and_u64_sc(&h[sub / 64], ~bit);
	if (!(old & bit) || (old & ~bit))
		return;
	/* seq_cst loads: two releasers of different words must not both miss
	 * the other's bit and leave a waiter asleep. Words past the bus's
	 * subscriptions are never set by a publisher. */
	unsigned words = (bus->max_subs + 63) / 64;
	for (unsigned w = 0; w < words; w++)
		if (w != sub / 64 && at_load_u64_sc(&h[w]))
			return;
	slots_wake_waiters(bus); /* the slot is free */
}

void slots_wake_waiters(shmbus_bus_t *bus)
{
	/* A waiting publisher raised the flag; whoever clears it wakes them
	 * all, once. They raise it again if they must sleep again. */
	if (at_load_u32_sc(&bus->hdr->space_waiters) && at_exchange_u32(&bus->hdr->space_waiters, 0)) {
		at_fetch_add_u32(&bus->hdr->space_futex, 1);
		futex_wake_shared(&bus->hdr->space_futex, 1 << 30);
	}
}
