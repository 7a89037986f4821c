/*
 * reclaim.c - what survivors do for the dead and the stuck.
 *
 * Dead members (their OFD liveness lock is gone): abort what they claimed
 * and never committed, finish or undo queue cells they were in the middle
 * of, give the events they held back to durable and group subscriptions
 * (or release them), remove their plain subscriptions and publishers.
 *
 * Congestion: a publisher that cannot claim a slot drains `lag`
 * subscriptions' oldest descriptors (they are told how many they missed)
 * and, after the stall timeout, demotes the `block` subscriptions that hold
 * the slot it waits for.
 *
 * Every step uses the same atomic protocol as the data path, so live
 * publishers and consumers carry on while a survivor works; the reclaim
 * lock (an OFD lock) keeps two survivors from reclaiming at once, and a
 * survivor that dies half way leaves the member RECLAIMING for the next.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "internal.h"
#include "liveness.h"
#include "futex.h"
#include "slots.h"

/* Whether member m's process is gone although its lock is held: held
 * through a descriptor a forked child inherited (see layout.h). */
static bool member_pid_gone(shmbus_bus_t *bus, uint32_t m)
{
	const struct seg_member *mem = &bus->members[m];
	uint64_t ns = bus_pid_namespace();
	pid_t pid = (pid_t)at_load_acquire_u32((uint32_t *)&mem->pid);
	return ns && mem->pidns == ns && pid > 0 && kill(pid, 0) < 0 && errno == ESRCH;
}

bool member_alive(shmbus_bus_t *bus, uint32_t m)
{
	if (m == bus->member)
		return true;
	if (m >= bus->max_members)
		return false;
	return live_is_locked(bus->map.fd, SEG_LOCK_MEMBER_BASE + m) != 0 && !member_pid_gone(bus, m);
}

static unsigned desc_class(shmbus_bus_t *bus, uint64_t seq)
{
	const struct seg_event *ev = (const struct seg_event *)bus_slot_data(bus, seq);
	return ev->priority >= SHMBUS_PRIORITY_HIGH ? SEG_QUEUE_URGENT : SEG_QUEUE_NORMAL;
}

void reclaim_orphan_hold(shmbus_bus_t *bus, uint32_t sub, uint64_t d)
{
	uint64_t seq = d & SEG_DESC_SEQ_MASK;
	/* Nobody else can clear this bit (the entry's winner is dead), so
	 * while it is set the slot stays in this lap and the release clears
	 * it alone; once clear it stays clear in this lap. */
	if ((d & SEG_DESC_HOLDS_REF) && !(d & SEG_DESC_TOMBSTONE) && slot_settle(bus, seq) == SEG_SLOT_COMMITTED &&
	    slot_held_by(bus, seq, sub))
		slot_release(bus, seq, sub);
}

int redeliver_push(shmbus_bus_t *bus, uint32_t sub, uint64_t desc, unsigned cls, bool *to_tail)
{
	if (!*to_tail) {
		struct queue_view q = bus_queue(bus, sub, SEG_QUEUE_REDELIVER);
		int rc = queue_push(&q, bus->member, desc);
		if (rc == 0)
			return 0;
		*to_tail = true;
	}
	if (cls >= SEG_QUEUE_CELL_CLASSES)
		cls = desc_class(bus, desc & SEG_DESC_SEQ_MASK);
	struct queue_view tail = bus_queue(bus, sub, cls);
	return queue_push(&tail, bus->member, desc);
}

/* A descriptor a dead consumer held: back into its subscription's
 * redelivery queue if the subscription lives on, else its hold is
 * released. One the consumer had already released, or whose hold is gone,
 * only has its bit cleared. The caller holds the table lock, so no live
 * party can win the entry (see redeliver_push). */
static void give_back(shmbus_bus_t *bus, uint32_t sub, uint64_t desc, bool keep, bool *to_tail)
{
	if (!desc || (desc & SEG_DESC_TOMBSTONE))
		return;
	uint64_t seq = desc & SEG_DESC_SEQ_MASK;
	if (seg_desc_dropping(desc) || (desc & SEG_DESC_REVOKED)) {
		/* won by the consumer (dropping it) or by a removal, which died
		 * before its store of 0: whatever is left of the drop */
		reclaim_orphan_hold(bus, sub, desc);
		return;
	}
	if (slot_settle(bus, seq) != SEG_SLOT_COMMITTED)
		return; /* aborted or gone: nothing to deliver or release */
	if (!slot_held_by(bus, seq, sub))
		return; /* dropped already (its dropper died after the bit) */
	struct seg_sub *s = bus_sub(bus, sub);
	if (keep && !(desc & SEG_DESC_RELEASING)) {
		/* an event the dead consumer never looked at is not redelivered,
		 * merely delivered */
		bool seen = !(desc & SEG_DESC_UNSEEN);
		uint64_t back = (desc & ~SEG_DESC_UNSEEN) | (seen ? SEG_DESC_REDELIVERED : 0);
		if (redeliver_push(bus, sub, back, SEG_QUEUE_REDELIVER, to_tail) == 0) {
			at_count_u64(&s->redelivered, seen);
			at_count_u64(&bus->hdr->recovered_events, 1);
			return;
		}
		catchup_note_drop(bus, sub, seq, seq + 1, 1);
	}
	if (desc & SEG_DESC_HOLDS_REF)
		slot_release(bus, seq, sub);
}

/* Every hold of con (a dead consumer's entry) of subscription idx, which
 * is gone or goes: released, each entry cleared after its hold (a survivor
 * dying in between leaves the entry for the next one). */
static void drop_held(shmbus_bus_t *bus, uint32_t idx, struct seg_consumer *con)
{
	bool unused = false; /* nothing is pushed */
	for (unsigned k = 0; k < SEG_HELD_MAX; k++) {
		uint64_t d = at_load_acquire_u64(&con->held[k]);
		if (!d)
			continue;
		give_back(bus, idx, d, false, &unused);
		at_store_release_u64(&con->held[k], 0);
	}
}

/* ------------------------------------------------ take intents of the dead */

static bool intent_claims(const struct seg_take_intent *in, const struct queue_view *q, uint64_t pos,
			  uint32_t *state)
{
	uint32_t info = at_load_acquire_u32((uint32_t *)&in->info);
	*state = seg_take_state(info);
	if (*state == SEG_TAKE_NONE || seg_take_sub(info) != q->sub || seg_take_class(info) != q->cls)
		return false;
	uint64_t first = at_load_acquire_u64((uint64_t *)&in->pos);
	return pos >= first && pos - first < seg_take_count(info); /* the run covers pos */
}

/* What becomes of the run a dead taker's intent names. */
enum recover_mode {
	RECOVER_DROP,	   /* its holds are dropped (the subscription is gone) */
	RECOVER_TO_HELD,   /* into free held[] entries of the dead consumer, to be
			      given back with what it held, in sequence order */
	RECOVER_PASS_OVER, /* a dead drainer's: passed over as it meant to,
			      counted once, not given back behind newer events */
};

struct recover_ctx {
	shmbus_bus_t *bus;
	uint32_t dead;	      /* member whose intents are being recovered */
	const struct seg_take_intent *self; /* the intent under recovery */
	uint32_t sub;
	enum recover_mode mode;
	bool noted;	      /* PASS_OVER: the drainer counted the run already */
	const uint64_t *held; /* the dead consumers' held entries, n of them */
	size_t n;
	struct seg_consumer *con; /* TO_HELD: the dead consumer */
	bool to_tail;		  /* TO_HELD without room: the redelivery queue was full */
};

/* Every place a live taker records what it takes. */
static bool live_intent_claims(const struct recover_ctx *r, const struct queue_view *q, uint64_t pos,
			       bool *pending)
{
	shmbus_bus_t *bus = r->bus;
	uint32_t st;
	*pending = false;
	const struct seg_sub *s = bus_sub(bus, q->sub);
	for (unsigned c = 0; c < SEG_CONSUMERS; c++) {
		const struct seg_consumer *con = &s->consumers[c];
		if (&con->take == r->self || at_load_acquire_u32((uint32_t *)&con->state) == SEG_CONSUMER_FREE ||
		    con->member == r->dead)
			continue;
		if (intent_claims(&con->take, q, pos, &st)) {
			*pending = st == SEG_TAKE_PENDING;
			return true;
		}
	}
	for (uint32_t p = 0; p < bus->max_members; p++) {
		const struct seg_pub *pr = &bus->pubs[p];
		if (&pr->drain == r->self || !at_load_acquire_u32((uint32_t *)&pr->state) || at_load_relaxed_u32((uint32_t *)&pr->member) == r->dead)
			continue;
		if (intent_claims(&pr->drain, q, pos, &st)) {
			*pending = st == SEG_TAKE_PENDING;
			return true;
		}
	}
	if (&bus->hdr->locked_take != r->self && intent_claims(&bus->hdr->locked_take, q, pos, &st)) {
		*pending = st == SEG_TAKE_PENDING;
		return true;
	}
	return false;
}

/* Does a live taker's run cover queue position pos? A PENDING claim is
 * settled in a few instructions; wait for it (bounded) before answering. */
static bool other_claims(const struct queue_view *q, uint64_t pos, void *arg)
{
	const struct recover_ctx *r = arg;
	uint64_t deadline = now_mono_ns() + r->bus->reclaim_interval_ns;
	bool pending;
	while (live_intent_claims(r, q, pos, &pending)) {
		if (!pending || now_mono_ns() > deadline)
			return true;
		at_cpu_relax();
	}
	return false;
}

/* Store d into the first free held[] entry of con (a dead consumer's; the
 * caller holds the table lock). false when none is free. */
static bool held_store_free(struct seg_consumer *con, uint64_t d)
{
	for (unsigned k = 0; k < SEG_HELD_MAX; k++) {
		if (at_load_relaxed_u64(&con->held[k]) == 0) {
			at_store_release_u64(&con->held[k], d);
			return true;
		}
	}
	return false;
}

/* A cell the dead taker had taken: unless its descriptor already reached a
 * held[] entry (it died between the two), give it back. */
static void on_recovered(uint64_t desc, void *arg)
{
	struct recover_ctx *r = arg;
	if (r->mode == RECOVER_PASS_OVER) {
		uint64_t seq = desc & SEG_DESC_SEQ_MASK;
		if (desc & SEG_DESC_TOMBSTONE)
			return;
		if (!r->noted && slot_settle(r->bus, seq) == SEG_SLOT_COMMITTED)
			catchup_note_drop(r->bus, r->sub, seq, seq + 1, 1);
		reclaim_orphan_hold(r->bus, r->sub, desc);
		return;
	}
	for (size_t i = 0; i < r->n; i++)
		if ((r->held[i] & ~(SEG_DESC_RELEASING | SEG_DESC_UNSEEN | SEG_DESC_REVOKED)) == desc)
			return;
	/* taken from its cell, never handed to a user: not a redelivery */
	/* TO_HELD: stored before its cell is released (by our caller), so a
	 * survivor of ours finds it in held[] and only releases the cell.
	 * There is room: a consumer takes no more than it has free entries.
	 * A tombstone holds and delivers nothing. */
	if (r->mode == RECOVER_TO_HELD &&
	    ((desc & SEG_DESC_TOMBSTONE) || held_store_free(r->con, desc | SEG_DESC_UNSEEN)))
		return;
	give_back(r->bus, r->sub, desc | SEG_DESC_UNSEEN, r->mode != RECOVER_DROP, &r->to_tail);
}

/* Recover one take intent of a dead taker against its queue. */
static void recover_intent(shmbus_bus_t *bus, struct seg_take_intent *in, uint32_t dead, enum recover_mode mode,
			   const uint64_t *held, size_t n, struct seg_consumer *con)
{
	uint32_t info = at_load_acquire_u32(&in->info);
	if (seg_take_state(info) == SEG_TAKE_NONE)
		return;
	uint32_t sub = seg_take_sub(info);
	/* two class bits name three queues: the fourth value, like a
	 * subscription out of range, is a corrupt word, never an index */
	if (sub >= bus->max_subs || seg_take_class(info) >= SEG_QUEUE_CLASSES) {
		at_store_release_u32(&in->info, 0);
		return;
	}
	struct queue_view q = bus_queue(bus, sub, seg_take_class(info));
	/* The record may have been removed, or removed and taken again, since
	 * the run was taken: then nothing goes back to it, holds are dropped. */
	if (at_load_acquire_u32(&bus_sub(bus, sub)->state) != SEG_SUB_ACTIVE ||
	    at_load_acquire_u32(&in->gen) != q.gen)
		mode = RECOVER_DROP;
	struct recover_ctx r = {.bus = bus,
				.dead = dead,
				.self = in,
				.sub = sub,
				.mode = mode,
				.noted = seg_take_state(info) == SEG_TAKE_NOTED,
				.held = held,
				.n = n,
				.con = con};
	queue_recover_take(&q, in, other_claims, on_recovered, &r);
}

/* The take a dead consumer left half done, given up (its subscription is
 * gone): what its intent still names and held[] does not record is
 * dropped. */
static void drop_dead_take(shmbus_bus_t *bus, struct seg_consumer *con, uint32_t dead)
{
	uint64_t held[SEG_HELD_MAX];
	size_t n = 0;
	for (unsigned k = 0; k < SEG_HELD_MAX; k++) {
		uint64_t d = at_load_acquire_u64(&con->held[k]);
		if (d)
			held[n++] = d;
	}
	recover_intent(bus, &con->take, dead, RECOVER_DROP, held, n, con);
}

void reclaim_consumer_take(shmbus_bus_t *bus, struct seg_consumer *con)
{
	if (seg_take_state(at_load_acquire_u32(&con->take.info)) == SEG_TAKE_NONE)
		return;
	uint32_t m = con->member;
	/* alive and still the same attachment: it is mid-take right now and
	 * finishes (or drops) the run itself when it sees the removal */
	if (m < bus->max_members && at_load_acquire_u64(&bus->members[m].generation) == con->member_gen &&
	    member_alive(bus, m))
		return;
	drop_dead_take(bus, con, m);
}

/* The entry of a dead consumer whose subscription was removed while it
 * was taking a run: that run and whatever held[] records go nowhere but
 * away (the subscription is gone), and the entry is free again. */
static void reclaim_detached(shmbus_bus_t *bus, uint32_t idx, struct seg_consumer *con, uint32_t dead)
{
	drop_dead_take(bus, con, dead);
	drop_held(bus, idx, con);
	at_store_relaxed_u64(&con->delivered, 0);
	at_store_release_u32(&con->state, SEG_CONSUMER_FREE);
}

static bool sub_survives(const struct seg_sub *s, uint32_t dead, uint32_t remaining_consumers)
{
	uint32_t flags = at_load_acquire_u32((uint32_t *)&s->flags);
	if (flags & SEG_SUB_DURABLE)
		return true;
	if (flags & SEG_SUB_GROUP)
		return remaining_consumers > 0;
	return s->owner != dead && remaining_consumers > 0;
}

void reclaim_dead_writers(shmbus_bus_t *bus, uint32_t idx)
{
	for (unsigned cls = 0; cls < SEG_QUEUE_CLASSES; cls++) {
		struct queue_view q = bus_queue(bus, idx, cls);
		uint64_t seen[(SEG_TURN_OWNER_MASK + 1) / 64] = {0};
		uint64_t head = at_load_acquire_u64(&q.ends->head), turn = 0;
		for (uint64_t i = 0; i < q.cap; i += seg_turn_run(turn)) {
			uint64_t p = head + i;
			turn = at_load_acquire_u64(&q.cells[seg_cell_index(p, q.cap)].turn);
			if (turn == seg_turn_empty(p))
				break; /* see queue_recover_writer */
			if (!(turn & SEG_TURN_BUSY))
				continue; /* and past a WRITING word's run */
			uint32_t o = seg_turn_owner(turn);
			if (seen[o / 64] >> (o % 64) & 1)
				continue;
			seen[o / 64] |= 1ull << (o % 64);
			if (o != bus->member && (o >= bus->max_members || !member_alive(bus, o)))
				queue_recover_writer(&q, o, SEG_DESC_TOMBSTONE);
		}
	}
}

/*
 * What still waits in subscription idx's redelivery queue is newer than a
 * run the dead consumer took from its front, and would stay ahead of it:
 * as many of those as con (a dead consumer entry) has free held[] entries
 * for are taken into them, to be sorted and given back with the rest. The
 * take goes through con's own intent, so a survivor of ours finds the
 * run there (RECOVER_TO_HELD) or in held[]. More than fit stay in front,
 * out of order with what is given back (a limit, documented).
 */
static void adopt_waiting(shmbus_bus_t *bus, uint32_t idx, struct seg_consumer *con)
{
	struct queue_view q = bus_queue(bus, idx, SEG_QUEUE_REDELIVER);
	uint32_t room = 0;
	for (unsigned k = 0; k < SEG_HELD_MAX; k++)
		room += at_load_relaxed_u64(&con->held[k]) == 0;
	uint64_t descs[SEG_HELD_MAX], first;
	uint32_t n = room ? queue_take(&q, &con->take, room, UINT64_MAX, descs, &first) : 0;
	/* UNSEEN: a give-back keeps the REDELIVERED bit it has and adds none */
	for (uint32_t i = 0; i < n; i++)
		(void)held_store_free(con, descs[i] | SEG_DESC_UNSEEN); /* room was counted */
	if (n)
		queue_release(&q, &con->take, first, n);
}

/*
 * What dead member `dead` took from subscription idx (which lives on) goes
 * back oldest first, across all its consumer entries there, so the
 * redelivery queue holds each publisher's events in order:
 *   1. each entry's half-done run moves into free held[] entries of that
 *      entry (stored before its cell is released, so a survivor of ours
 *      finds it there and only releases the cell), and what waits in the
 *      redelivery queue is taken in too (adopt_waiting);
 *   2. all the entries are sorted by sequence and given back one by one,
 *      each cleared right after its give-back: a survivor dying in between
 *      gives that one back twice, as before.
 * A run is not always newer than what its taker held: one taken from the
 * redelivery queue is older. held[] is the entries collected before
 * (n of them), which run recovery skips.
 */
static void give_back_all(shmbus_bus_t *bus, uint32_t idx, uint32_t dead, const uint64_t *held, size_t n)
{
	struct seg_sub *s = bus_sub(bus, idx);
	struct seg_consumer *spare = NULL;
	for (unsigned c = 0; c < SEG_CONSUMERS; c++) {
		struct seg_consumer *con = &s->consumers[c];
		if (at_load_acquire_u32(&con->state) == SEG_CONSUMER_ACTIVE && con->member == dead) {
			recover_intent(bus, &con->take, dead, RECOVER_TO_HELD, held, n, con);
			spare = spare ? spare : con;
		}
	}
	if (spare)
		adopt_waiting(bus, idx, spare);
	struct entry {
		uint64_t desc;
		uint64_t *word;
	} all[SEG_CONSUMERS * SEG_HELD_MAX];
	size_t m = 0;
	for (unsigned c = 0; c < SEG_CONSUMERS; c++) {
		struct seg_consumer *con = &s->consumers[c];
		if (at_load_acquire_u32(&con->state) != SEG_CONSUMER_ACTIVE || con->member != dead)
			continue;
		for (unsigned k = 0; k < SEG_HELD_MAX; k++) {
			uint64_t d = at_load_acquire_u64(&con->held[k]);
			if (!d)
				continue;
			size_t i = m++;
			for (; i > 0 && (all[i - 1].desc & SEG_DESC_SEQ_MASK) > (d & SEG_DESC_SEQ_MASK); i--)
				all[i] = all[i - 1];
			all[i] = (struct entry){d, &con->held[k]};
		}
	}
	bool to_tail = false; /* once one falls back to its queue's tail, all do */
	for (size_t i = 0; i < m; i++) {
		give_back(bus, idx, all[i].desc, true, &to_tail);
		CRASH_POINT("reclaim.given");
		at_store_release_u64(all[i].word, 0);
	}
}

static void tombstone_aborted(shmbus_bus_t *bus, uint32_t idx);

static void reclaim_sub(shmbus_bus_t *bus, uint32_t idx, uint32_t dead, bool aborted)
{
	struct seg_sub *s = bus_sub(bus, idx);
	uint32_t state = at_load_acquire_u32(&s->state);
	if (aborted && state == SEG_SUB_ACTIVE)
		tombstone_aborted(bus, idx);
	/* before anything else, and in a free record too: a removal that ran
	 * while the dead member still looked alive left its cells as they were,
	 * and the entries of its consumers that were taking (DETACHED) */
	for (unsigned cls = 0; cls < SEG_QUEUE_CLASSES; cls++) {
		struct queue_view q = bus_queue(bus, idx, cls);
		queue_recover_writer(&q, dead, SEG_DESC_TOMBSTONE);
	}
	for (unsigned c = 0; c < SEG_CONSUMERS; c++)
		if (at_load_acquire_u32(&s->consumers[c].state) == SEG_CONSUMER_DETACHED && s->consumers[c].member == dead)
			reclaim_detached(bus, idx, &s->consumers[c], dead);
	if (state == SEG_SUB_FREE)
		return;
	uint64_t held[SEG_CONSUMERS * SEG_HELD_MAX];
	size_t n = 0;
	uint32_t remaining = 0;
	for (unsigned c = 0; c < SEG_CONSUMERS; c++) {
		struct seg_consumer *con = &s->consumers[c];
		if (at_load_acquire_u32(&con->state) != SEG_CONSUMER_ACTIVE)
			continue;
		if (con->member != dead) {
			remaining++;
			continue;
		}
		for (unsigned k = 0; k < SEG_HELD_MAX; k++) {
			uint64_t d = at_load_acquire_u64(&con->held[k]);
			if (d)
				held[n++] = d;
		}
	}
	bool keep = sub_survives(s, dead, remaining);
	if (keep)
		give_back_all(bus, idx, dead, held, n);
	for (unsigned c = 0; c < SEG_CONSUMERS; c++) {
		struct seg_consumer *con = &s->consumers[c];
		if (at_load_acquire_u32(&con->state) != SEG_CONSUMER_ACTIVE || con->member != dead)
			continue;
		if (!keep) {
			recover_intent(bus, &con->take, dead, RECOVER_DROP, held, n, con);
			drop_held(bus, idx, con);
		}
		/* events it was handed from the log and never released: the
		 * gap opens again at the lowest (a survivor dying here only
		 * reopens it twice) */
		uint64_t low = at_load_acquire_u64(&con->log_low);
		if (low && keep)
			catchup_reopen(bus, idx, low - 1);
		at_store_release_u64(&con->log_low, 0);
		at_count_u64(&s->delivered_total, at_load_relaxed_u64(&con->delivered));
		at_store_relaxed_u64(&con->delivered, 0);
		at_store_release_u32(&con->state, SEG_CONSUMER_FREE);
	}
	if (!keep && state == SEG_SUB_ACTIVE && (s->owner == dead || remaining == 0) &&
	    !(at_load_acquire_u32(&s->flags) & SEG_SUB_DURABLE))
		sub_remove_locked(bus, idx);
	else if (keep)
		route_wake(bus, idx);
}

/*
 * What a dead publisher was draining from a `lag` subscription is passed
 * over, as it meant to: counted missed (or a gap the log fills) unless the
 * drainer had counted the run (NOTED), and its holds dropped. Giving the
 * run back would queue it behind events published after it, and the
 * subscription would see one publisher's events out of order.
 */
static void recover_drains(shmbus_bus_t *bus, uint32_t dead)
{
	for (uint32_t p = 0; p < bus->max_members; p++) {
		struct seg_pub *r = &bus->pubs[p];
		if (at_load_acquire_u32(&r->state) && at_load_relaxed_u32(&r->member) == dead)
			recover_intent(bus, &r->drain, dead, RECOVER_PASS_OVER, NULL, 0, NULL);
	}
}

void reclaim_locked_revoke(shmbus_bus_t *bus)
{
	uint64_t w = at_load_acquire_u64(&bus->hdr->locked_revoke);
	if (!w)
		return;
	uint32_t idx = seg_revoke_sub(w), c = seg_revoke_consumer(w), k = seg_revoke_entry(w);
	if (idx < bus->max_subs && c < SEG_CONSUMERS && k < SEG_HELD_MAX) {
		uint64_t *e = &bus_sub(bus, idx)->consumers[c].held[k];
		uint64_t d = at_load_acquire_u64(e);
		/* Marked: the dead holder won it (nobody else marks while the lock
		 * is held, and a consumer leaves a REVOKED entry alone) and died
		 * before its store of 0. Unmarked: it died before its CAS, or lost
		 * it, or after the store. */
		if (d & SEG_DESC_REVOKED) {
			reclaim_orphan_hold(bus, idx, d);
			at_cas_u64(e, &d, 0);
		}
	}
	at_store_release_u64(&bus->hdr->locked_revoke, 0);
}

void reclaim_locked_take(shmbus_bus_t *bus)
{
	/* The previous holder of the table lock died draining a subscription
	 * it was removing: finish dropping those references. */
	recover_intent(bus, &bus->hdr->locked_take, SEG_MAX_MEMBERS, RECOVER_DROP, NULL, 0, NULL);
}

/* Abort every claim of a dead member's publishers: a CLAIMED slot names
 * its publisher (low bits = 1 + pub index while claimed). Returns how many
 * event claims (not unused lease positions) it aborted. */
static uint32_t abort_claims(shmbus_bus_t *bus, uint32_t dead)
{
	uint32_t aborted = 0;
	/* first what it claimed and never marked, which names nobody */
	for (uint32_t p = 0; p < bus->max_members; p++) {
		struct seg_pub *r = &bus->pubs[p];
		if (at_load_acquire_u32(&r->state) && at_load_relaxed_u32(&r->member) == dead)
			slots_recover_claim(bus, r, dead);
	}
	for (uint64_t i = 0; i < bus->nslots; i++) {
		uint64_t c = at_load_acquire_u64(&bus->slot_ctl[i].ctl);
		bool leased = seg_ctl_leased(c);
		if (seg_ctl_state(c) != SEG_SLOT_CLAIMED && !leased)
			continue;
		uint32_t p = seg_ctl_claimer(c) - 1;
		if (p >= bus->max_members || at_load_relaxed_u32(&bus->pubs[p].member) != dead ||
		    at_load_acquire_u32(&bus->pubs[p].state) == 0)
			continue;
		/* its unused lease positions too (it takes none any more):
		 * nobody need take them away */
		if (at_cas_u64(&bus->slot_ctl[i].ctl, &c, seg_ctl_make(seg_ctl_lap(c), SEG_SLOT_ABORTED, 0)) && !leased) {
			at_count_u64(&bus->hdr->aborted_claims, 1);
			aborted++;
		}
	}
	return aborted;
}

/*
 * The descriptors a dead publisher pushed for claims reclaim just aborted
 * are of no use to anybody: each still queued for subscription idx becomes
 * a TOMBSTONE, which consumers skip like any other. Left as they were, they
 * waited for a consumer to find the slot ABORTED, and a queue nobody took
 * from for a lap kept a descriptor of a slot that had moved on, which
 * shm-dump could not tell from a lost hold. A CAS on the descriptor: the
 * cell may be taken, released and pushed again meanwhile (a new
 * descriptor is never equal: its sequence is another lap's). The caller
 * holds the table lock (the record stays what it is).
 */
static void tombstone_aborted(shmbus_bus_t *bus, uint32_t idx)
{
	for (unsigned cls = 0; cls < SEG_QUEUE_CLASSES; cls++) {
		struct queue_view q = bus_queue(bus, idx, cls);
		uint64_t head = at_load_acquire_u64(&q.ends->head), tail = at_load_acquire_u64(&q.ends->tail);
		for (uint64_t p = head; p - head < q.cap; p++) {
			struct seg_cell *c = &q.cells[seg_cell_index(p, q.cap)];
			uint64_t turn = at_load_acquire_u64(&c->turn);
			if (turn != seg_turn_full(p)) {
				if (p >= tail && p >= (tail = at_load_acquire_u64(&q.ends->tail)))
					break; /* the end of what is queued (tail is only a hint) */
				continue;
			}
			uint64_t d = at_load_relaxed_u64(&c->desc);
			if (d & SEG_DESC_TOMBSTONE)
				continue;
			uint64_t seq = d & SEG_DESC_SEQ_MASK;
			if (at_load_acquire_u64(bus_slot_ctl(bus, seq)) ==
			    seg_ctl_make(bus_lap(bus, seq), SEG_SLOT_ABORTED, 0))
				(void)at_cas_u64(&c->desc, &d, SEG_DESC_TOMBSTONE);
		}
	}
}

static void retire_pubs(shmbus_bus_t *bus, uint32_t dead)
{
	struct seg_header *h = bus->hdr;
	for (uint32_t p = 0; p < bus->max_members; p++) {
		struct seg_pub *r = &bus->pubs[p];
		if (at_load_acquire_u32(&r->state) == 0 || at_load_relaxed_u32(&r->member) != dead)
			continue;
		at_count_u64(&h->retired_published, at_load_relaxed_u64(&r->published));
		at_count_u64(&h->retired_publish_bytes, at_load_relaxed_u64(&r->publish_bytes));
		at_count_u64(&h->retired_block_waits, at_load_relaxed_u64(&r->block_waits));
		at_count_u64(&h->retired_block_timeouts, at_load_relaxed_u64(&r->block_timeouts));
		at_store_relaxed_u64(&r->routing, 0);
		at_store_release_u32(&r->state, 0);
	}
}

/*
 * reclaim_member - everything of member m, which is dead (or is us,
 * leaving). The caller holds the reclaim lock or is m itself. Ends with the
 * member entry FREE and its liveness byte unlocked.
 */
void reclaim_member(shmbus_bus_t *bus, uint32_t m)
{
	struct seg_member *mem = &bus->members[m];
	bool self = m == bus->member;
	/* Take the member's lock so nobody joins into the entry meanwhile; it
	 * stays held by a process that inherited it when the owner is merely
	 * gone by pid, and then nobody can join it until that one closes. */
	if (!self && live_lock(bus->map.fd, SEG_LOCK_MEMBER_BASE + m) < 0 && !member_pid_gone(bus, m))
		return; /* someone else took it meanwhile */
	at_store_release_u32(&mem->state, SEG_MEMBER_RECLAIMING);
	bool aborted = abort_claims(bus, m) > 0;
	if (bus_lock_subs(bus) < 0) {
		/* never touch the table without its lock: the member stays
		 * RECLAIMING, and the next sweep finishes it */
		if (!self)
			live_unlock(bus->map.fd, SEG_LOCK_MEMBER_BASE + m);
		return;
	}
	recover_drains(bus, m);
	for (uint32_t s = 0; s < bus->max_subs; s++)
		reclaim_sub(bus, s, m, aborted);
	bus_unlock_subs(bus);
	retire_pubs(bus, m);
	if (!self)
		at_count_u64(&bus->hdr->reclaims, 1);
	at_store_relaxed_u32(&mem->pid, 0);
	at_store_release_u32(&mem->state, SEG_MEMBER_FREE);
	live_unlock(bus->map.fd, SEG_LOCK_MEMBER_BASE + m);
	/* Publishers waiting for space may have it now. */
	at_fetch_add_u32(&bus->hdr->space_futex, 1);
	futex_wake_shared(&bus->hdr->space_futex, 1 << 30);
}

SHMBUS_API int shmbus_reclaim(shmbus_bus_t *bus)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	at_store_relaxed_u64(&bus->last_reclaim_ns, now_mono_ns());
	if (pthread_mutex_trylock(&bus->reclaim_mutex) != 0)
		return 0; /* another thread of ours is at it */
	if (live_lock(bus->map.fd, SEG_LOCK_RECLAIM) < 0) {
		pthread_mutex_unlock(&bus->reclaim_mutex);
		return 0; /* another survivor is at it */
	}
	int n = 0;
	for (uint32_t m = 0; m < bus->max_members; m++) {
		uint32_t st = at_load_acquire_u32(&bus->members[m].state);
		if (st == SEG_MEMBER_FREE || m == bus->member || member_alive(bus, m))
			continue;
		reclaim_member(bus, m);
		n++;
	}
	live_unlock(bus->map.fd, SEG_LOCK_RECLAIM);
	pthread_mutex_unlock(&bus->reclaim_mutex);
	return n;
}

/*
 * reclaim_for_join - a sweep by a process that has no member entry yet
 * (the table is full). Queue work during a reclaim is tagged with the
 * reclaimer's member index so that a survivor can finish it should the
 * reclaimer die; without an entry of its own, the joiner borrows the dead
 * member's: it takes that entry's lock, works under its index, and leaves
 * it FREE. Returns how many entries were freed.
 */
int reclaim_for_join(shmbus_bus_t *bus)
{
	if (live_lock(bus->map.fd, SEG_LOCK_RECLAIM) < 0)
		return 0;
	int n = 0;
	for (uint32_t m = 0; m < bus->max_members; m++) {
		uint32_t st = at_load_acquire_u32(&bus->members[m].state);
		if (st == SEG_MEMBER_FREE || member_alive(bus, m) ||
		    live_lock(bus->map.fd, SEG_LOCK_MEMBER_BASE + m) < 0)
			continue;
		bus->member = m; /* reclaim_member's own-entry path, under m's lock */
		reclaim_member(bus, m);
		bus->member = UINT32_MAX;
		at_count_u64(&bus->hdr->reclaims, 1);
		n++;
	}
	live_unlock(bus->map.fd, SEG_LOCK_RECLAIM);
	return n;
}

int reclaim_if_due_at(shmbus_bus_t *bus, uint64_t now)
{
	if (now - at_load_relaxed_u64(&bus->last_reclaim_ns) < bus->reclaim_interval_ns || bus->orphaned ||
	    bus_holds_subs_lock())
		return 0;
	return shmbus_reclaim(bus);
}

int reclaim_if_due(shmbus_bus_t *bus)
{
	return reclaim_if_due_at(bus, now_mono_ns());
}

/* ------------------------------------------------------------ congestion */

static bool queue_holds(shmbus_bus_t *bus, uint32_t idx, uint64_t seq)
{
	for (unsigned cls = 0; cls < SEG_QUEUE_CLASSES; cls++) {
		struct queue_view q = bus_queue(bus, idx, cls);
		uint64_t head = at_load_acquire_u64(&q.ends->head), tail = at_load_acquire_u64(&q.ends->tail);
		for (uint64_t p = head; p < tail && p - head < q.cap; p++) {
			const struct seg_cell *c = &q.cells[seg_cell_index(p, q.cap)];
			/* FULL only: a cell being written (a run's cells after its
			 * first, all the while the run is) still holds the descriptor
			 * of the lap before */
			if (at_load_acquire_u64((uint64_t *)&c->turn) != seg_turn_full(p))
				continue;
			if ((at_load_acquire_u64((uint64_t *)&c->desc) & SEG_DESC_SEQ_MASK) == seq)
				return true;
		}
	}
	return false;
}

static bool held_by(struct seg_sub *s, uint64_t seq)
{
	for (unsigned c = 0; c < SEG_CONSUMERS; c++) {
		/* a DETACHED entry is a removed subscription's (see revoke_held) */
		if (at_load_acquire_u32(&s->consumers[c].state) == SEG_CONSUMER_DETACHED)
			continue;
		for (unsigned k = 0; k < SEG_HELD_MAX; k++) {
			uint64_t d = at_load_acquire_u64(&s->consumers[c].held[k]);
			if (d && !(d & SEG_DESC_REVOKED) && (d & SEG_DESC_SEQ_MASK) == seq)
				return true;
		}
	}
	return false;
}

/* Held entries a lag subscription gives up like queued events: taken in
 * a run but not handed to the user yet (nobody reads them), or released
 * by the user with the hold still batched (nobody needs them; a consumer
 * that pauses after releasing would otherwise keep up to a batch of slots
 * until the stall timeout). */
#define DROPPABLE (SEG_DESC_UNSEEN | SEG_DESC_RELEASING)

/* Whether held entry d may be taken back: a hold at or below max_seq
 * its consumer has not won (DROPPING) and nobody revoked; with
 * unseen_only, a DROPPABLE one. */
static bool revocable(uint64_t d, uint64_t max_seq, bool unseen_only)
{
	if (!d || (d & (SEG_DESC_REVOKED | SEG_DESC_TOMBSTONE)) || seg_desc_dropping(d) ||
	    (d & SEG_DESC_SEQ_MASK) > max_seq)
		return false;
	return !unseen_only || (d & DROPPABLE);
}

/* Take back held events at or below max_seq from a subscription's
 * consumers; with unseen_only, only the DROPPABLE ones. The release of a
 * revoked event a user still held reports -ESTALE.
 *
 * A hold is cleared by whoever wins its entry: we mark it REVOKED with a
 * CAS, its consumer marks it DROPPING with one, and the loser leaves the
 * bit alone. Revocations run under the table lock, as removals and
 * reclaims do, so the consumer is our only rival, and the entry we are
 * revoking is named in locked_revoke: should we die between the CAS and
 * our store of 0, the next holder of the lock finishes the drop. The lock
 * is only tried: whoever holds it is busy, and the next round of the
 * publisher's wait tries again. */
static void revoke_held(shmbus_bus_t *bus, uint32_t idx, uint64_t max_seq, bool unseen_only)
{
	struct seg_sub *s = bus_sub(bus, idx);
	uint64_t gen = at_load_acquire_u64(&s->generation);
	bool locked = false;
	for (unsigned c = 0; c < SEG_CONSUMERS; c++) {
		/* An entry a removal left DETACHED belongs to the subscription
		 * that was removed, not to this one: its holds were revoked by
		 * that removal, and what its taker stored since, the taker drops
		 * as soon as it sees the removal (or reclaim does, should it
		 * die). Revoked here, they would count as this subscription's
		 * gap, missed events and stall. */
		if (at_load_acquire_u32(&s->consumers[c].state) == SEG_CONSUMER_DETACHED)
			continue;
		for (unsigned k = 0; k < SEG_HELD_MAX; k++) {
			uint64_t *slot = &s->consumers[c].held[k];
			uint64_t d = at_load_acquire_u64(slot);
			if (!revocable(d, max_seq, unseen_only))
				continue;
			if (!locked) {
				if (bus_trylock_subs(bus) < 0)
					return;
				locked = true;
				/* removed (and maybe taken again) before we had the lock */
				if (at_load_acquire_u32(&s->state) != SEG_SUB_ACTIVE ||
				    at_load_acquire_u64(&s->generation) != gen)
					goto out;
				d = at_load_acquire_u64(slot);
				if (!revocable(d, max_seq, unseen_only))
					continue;
			}
			uint64_t seq = d & SEG_DESC_SEQ_MASK;
			/* the gap first: a consumer whose seen-mark loses to us
			 * must find it when it looks for its next event */
			if (!(d & SEG_DESC_RELEASING))
				catchup_extend(bus, idx, seq, seq + 1);
			at_store_release_u64(&bus->hdr->locked_revoke, seg_revoke_where(idx, c, k));
			/* whatever the consumer does to its other bits meanwhile */
			while (revocable(d, max_seq, unseen_only) && (d & SEG_DESC_SEQ_MASK) == seq &&
			       !at_cas_u64(slot, &d, d | SEG_DESC_REVOKED))
				;
			if (!revocable(d, max_seq, unseen_only) || (d & SEG_DESC_SEQ_MASK) != seq) {
				/* dropped, handed out or released meanwhile */
				at_store_release_u64(&bus->hdr->locked_revoke, 0);
				continue;
			}
			/* noted before the hold goes: a revoker that dies in between
			 * leaves a revoked entry, whose bit a survivor only clears */
			if (!(d & SEG_DESC_RELEASING))
				catchup_note_drop(bus, idx, seq, seq + 1, 1);
			if (d & SEG_DESC_HOLDS_REF)
				slot_release(bus, seq, idx);
			uint64_t r = d | SEG_DESC_REVOKED;
			at_cas_u64(slot, &r, 0); /* the consumer frees the entry when it sees 0 */
			at_store_release_u64(&bus->hdr->locked_revoke, 0);
			at_count_u64(&s->revoked, 1);
		}
	}
out:
	if (locked)
		bus_unlock_subs(bus);
}

bool reclaim_relieve_congestion(shmbus_bus_t *bus, struct seg_take_intent *intent, uint64_t blocking_seq,
				bool stalled)
{
	/* Free the oldest quarter of the ring in one go, so a lagging reader
	 * is not drained one slot per publish. */
	uint64_t max_seq = blocking_seq + bus->nslots / 4;
	bool relieved = false;
	for (uint32_t i = 0; i < bus->max_subs; i++) {
		struct seg_sub *s = bus_sub(bus, i);
		if (at_load_acquire_u32(&s->state) != SEG_SUB_ACTIVE)
			continue;
		uint32_t flags = at_load_acquire_u32(&s->flags);
		bool lagging = flags & (SEG_SUB_POLICY_LAG | SEG_SUB_DEMOTED);
		bool culprit = stalled && (queue_holds(bus, i, blocking_seq) || held_by(s, blocking_seq));
		if (culprit && !lagging) {
			at_fetch_or_u32(&s->flags, SEG_SUB_DEMOTED);
			at_count_u64(&s->demotions, 1);
			at_count_u64(&bus->hdr->demotions, 1);
			at_store_relaxed_u64(&s->block_since_ns, now_real_ns());
			lagging = true;
		}
		if (!lagging)
			continue;
		sub_drop_queued(bus, i, max_seq, intent, true); /* passed over: missed, or a gap */
		revoke_held(bus, i, max_seq, !culprit);
		relieved = true;
	}
	return relieved;
}
