/*
 * queue.c - the descriptor queue (see queue.h for the protocol).
 *
 * For a cell serving position p the turn word moves
 *   p -> WRITING(o,p,r) -> p+1 -> (head moves past p) -> p+cap
 * where WRITING is the first cell of a run of r (the run's other cells go
 * p -> p+1 behind it, see queue.h). A single push where the CPU can CAS
 * both words of the cell at once goes from p, holding SEG_DESC_VACANT,
 * straight to p+1 with its descriptor; every release stores
 * SEG_DESC_VACANT again before the new turn.
 * Producers only start from "p"; consumers only take a run of "p+1" cells
 * starting at head. Any other value tells a producer that its tail hint is
 * stale (help it forward) or that the queue is full.
 */
#include "queue.h"

#include <errno.h>

static struct seg_cell *cell_at(const struct queue_view *q, uint64_t pos)
{
	return &q->cells[seg_cell_index(pos, q->cap)];
}

/* Give back the cell that served position p: EMPTY for p + cap, holding
 * SEG_DESC_VACANT (see there) before the turn says so. */
static void cell_release(const struct queue_view *q, uint64_t p)
{
	struct seg_cell *c = cell_at(q, p);
	at_store_relaxed_u64(&c->desc, SEG_DESC_VACANT);
	at_store_release_u64(&c->turn, seg_turn_empty(p + q->cap));
}

void queue_init(struct queue_view *q)
{
	for (uint64_t p = 0; p < q->cap; p++) {
		at_store_relaxed_u64(&cell_at(q, p)->desc, SEG_DESC_VACANT);
		at_store_relaxed_u64(&cell_at(q, p)->turn, seg_turn_empty(p));
	}
	at_store_relaxed_u64(&q->ends->tail, 0);
	at_store_release_u64(&q->ends->head, 0);
}

int queue_push(struct queue_view *q, uint32_t owner, uint64_t desc)
{
	return queue_push_cells(q->ends, q->cells, q->cap, owner, desc);
}

/*
 * Claim the run of free cells from the tail for descs[0..n) with one CAS
 * (see queue.h): 0 if the queue is full, the run's length otherwise. A
 * push of many with a CAS per cell spent about a fifth of a batched
 * publisher's time in those locked instructions.
 */
static uint32_t push_run(const struct queue_view *q, uint32_t owner, const uint64_t *descs, uint32_t n)
{
	for (uint64_t tries = 0; tries < 4 * q->cap; tries++) {
		uint64_t pos = at_load_acquire_u64(&q->ends->tail);
		/* The cells after the first that are EMPTY for their position.
		 * They stay so until the first is taken (claims go in
		 * position order), and then they are ours. */
		uint32_t run = 1;
		while (run < n && at_load_acquire_u64(&cell_at(q, pos + run)->turn) == seg_turn_empty(pos + run))
			run++;
		uint64_t turn = seg_turn_empty(pos);
		if (!at_cas_u64(&cell_at(q, pos)->turn, &turn, seg_turn_busy(owner, pos, run))) {
			if (!queue_help_forward(&q->ends->tail, pos, turn))
				return 0; /* full: the previous lap is not released yet */
			continue;
		}
		CRASH_POINT("push_many.marked");
		queue_tail_passed(&q->ends->tail, pos, pos + run);
		/* The rest FULL before the first: nobody reaches them before the
		 * first is FULL, neither a producer nor a consumer, which both
		 * stop at the WRITING word. */
		for (uint32_t i = 1; i < run; i++) {
			struct seg_cell *c = cell_at(q, pos + i);
			at_store_relaxed_u64(&c->desc, descs[i]);
			at_store_release_u64(&c->turn, seg_turn_full(pos + i));
			CRASH_POINT("push_many.rest");
		}
		struct seg_cell *c = cell_at(q, pos);
		at_store_relaxed_u64(&c->desc, descs[0]);
		at_store_release_u64(&c->turn, seg_turn_full(pos));
		CRASH_POINT("push_many.full");
		return run;
	}
	return 0; /* corrupt: no free cell after a whole lap of help */
}

uint32_t queue_push_many(struct queue_view *q_in, uint32_t owner, const uint64_t *descs, uint32_t n)
{
	/* A private copy of the view: as far as the compiler knows, every
	 * store into a cell could change *q_in, which it would then read
	 * again for each cell. */
	const struct queue_view view = *q_in, *q = &view;
	_Static_assert(QUEUE_PUSH_MAX <= SEG_TURN_RUN_MAX, "a push's run fits one WRITING word");
	if (n > QUEUE_PUSH_MAX)
		n = QUEUE_PUSH_MAX;
	uint32_t done = 0;
	while (done < n) {
		uint32_t run = push_run(q, owner, descs + done, n - done);
		if (run == 0)
			break;
		done += run;
	}
	return done;
}

static void intent_set(struct seg_take_intent *in, const struct queue_view *q, uint64_t pos, uint32_t n,
		       uint32_t state)
{
	at_store_relaxed_u64(&in->pos, pos);
	at_store_relaxed_u32(&in->gen, q->gen);
	at_store_release_u32(&in->info, seg_take_info(n, q->cls, q->sub, state));
}

uint32_t queue_take(struct queue_view *q, struct seg_take_intent *intent, uint32_t max, uint64_t max_seq,
		    uint64_t *descs, uint64_t *first)
{
	if (max > SEG_TAKE_MAX)
		max = SEG_TAKE_MAX;
	for (;;) {
		uint64_t head = at_load_acquire_u64(&q->ends->head);
		uint32_t n = 0;
		while (n < max) {
			uint64_t p = head + n;
			const struct seg_cell *c = cell_at(q, p);
			if (at_load_acquire_u64((uint64_t *)&c->turn) != seg_turn_full(p))
				break;
			uint64_t d = at_load_relaxed_u64((uint64_t *)&c->desc);
			if ((d & SEG_DESC_SEQ_MASK) > max_seq)
				break;
			descs[n++] = d;
		}
		if (n == 0)
			return 0;
		/* The intent must be visible before head moves: the CAS below
		 * is a full barrier on x86 and acq_rel elsewhere. */
		intent_set(intent, q, head, n, SEG_TAKE_PENDING);
		CRASH_POINT("take.pending");
		uint64_t expected = head;
		if (at_cas_u64(&q->ends->head, &expected, head + n)) {
			CRASH_POINT("take.cas");
			/* Head could not have passed these cells and come back, so
			 * the descriptors read above are the ones taken. */
			at_store_release_u32(&intent->info, seg_take_info(n, q->cls, q->sub, SEG_TAKE_OWNED));
			CRASH_POINT("take.owned");
			*first = head;
			return n;
		}
		at_store_release_u32(&intent->info, 0);
	}
}

void queue_take_noted(struct seg_take_intent *intent)
{
	uint32_t info = at_load_relaxed_u32(&intent->info);
	at_store_release_u32(&intent->info, seg_take_info(seg_take_count(info), seg_take_class(info),
							  seg_take_sub(info), SEG_TAKE_NOTED));
}

void queue_release(struct queue_view *q, struct seg_take_intent *intent, uint64_t first, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		cell_release(q, first + i);
		CRASH_POINT("release.cell");
	}
	at_store_release_u32(&intent->info, 0);
}

bool queue_peek_seq(const struct queue_view *q, uint64_t *seq)
{
	uint64_t head = at_load_acquire_u64(&q->ends->head);
	/* past tombstones: they carry no sequence (their bits read 0) */
	for (uint64_t p = head; p - head < q->cap; p++) {
		const struct seg_cell *c = &q->cells[p & (q->cap - 1)];
		if (at_load_acquire_u64((uint64_t *)&c->turn) != seg_turn_full(p))
			return false; /* empty, or being written */
		uint64_t d = at_load_relaxed_u64((uint64_t *)&c->desc);
		if (d & SEG_DESC_TOMBSTONE)
			continue;
		*seq = d & SEG_DESC_SEQ_MASK;
		return true;
	}
	return false;
}

uint64_t queue_depth(const struct queue_view *q)
{
	uint64_t head = at_load_acquire_u64(&q->ends->head);
	uint64_t tail = at_load_acquire_u64(&q->ends->tail);
	return tail > head ? tail - head : 0;
}

uint64_t queue_pushed(const struct queue_view *q)
{
	return at_load_acquire_u64(&q->ends->tail);
}

int queue_recover_writer(struct queue_view *q, uint32_t owner, uint64_t tombstone)
{
	int fixed = 0;
	/* Producers take cells in position order from the tail, which only
	 * passes taken cells, and takers take FULL cells from head: a WRITING
	 * cell lies at or past head and before the first EMPTY cell of its
	 * lap that no WRITING word's run covers. */
	uint64_t head = at_load_acquire_u64(&q->ends->head);
	for (uint64_t n = 0; n < q->cap;) {
		uint64_t p = head + n;
		struct seg_cell *c = cell_at(q, p);
		uint64_t turn = at_load_acquire_u64(&c->turn);
		if (turn == seg_turn_empty(p))
			break; /* not taken yet: nothing past it is */
		uint32_t run = seg_turn_run(turn);
		n += run;
		if (!(turn & SEG_TURN_BUSY) || seg_turn_owner(turn) != owner)
			continue;
		/* The run's position from the word itself: head may have
		 * moved since it was read, and a lap with it. */
		uint64_t first = p + (uint64_t)seg_turn_distance(turn, p);
		/* The rest of the run first, as its producer would have: a
		 * cell it had not made FULL gets the tombstone. Then the
		 * first, which lets producers and consumers past. */
		for (uint32_t i = 1; i < run; i++) {
			uint64_t pi = first + i;
			struct seg_cell *ci = cell_at(q, pi);
			if (at_load_acquire_u64(&ci->turn) != seg_turn_empty(pi))
				continue; /* made FULL by its producer */
			at_store_relaxed_u64(&ci->desc, tombstone);
			at_store_release_u64(&ci->turn, seg_turn_full(pi));
			fixed++;
		}
		at_store_relaxed_u64(&c->desc, tombstone);
		at_store_release_u64(&c->turn, seg_turn_full(first));
		fixed++;
	}
	return fixed;
}

int queue_recover_take(struct queue_view *q, struct seg_take_intent *intent,
		       bool (*other_claims)(const struct queue_view *q, uint64_t pos, void *arg),
		       void (*on_desc)(uint64_t desc, void *arg), void *arg)
{
	uint32_t info = at_load_acquire_u32(&intent->info);
	uint32_t state = seg_take_state(info);
	if (state == SEG_TAKE_NONE)
		return 0;
	uint64_t first = at_load_acquire_u64(&intent->pos);
	uint32_t n = seg_take_count(info);
	uint64_t head = at_load_acquire_u64(&q->ends->head);
	int given = 0;
	/* PENDING: the head CAS may or may not have been ours; it was not if
	 * head never passed first. Cell by cell, a taken cell (below head,
	 * still FULL) is the dead taker's unless a live taker's intent covers
	 * it: a live run may start inside ours, after a shorter run took the
	 * cells before it. */
	if (state == SEG_TAKE_PENDING && head <= first)
		n = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t p = first + i;
		struct seg_cell *c = cell_at(q, p);
		if (p >= head || at_load_acquire_u64(&c->turn) != seg_turn_full(p) || other_claims(q, p, arg))
			continue; /* released already, never taken, or a live taker's */
		on_desc(at_load_relaxed_u64(&c->desc), arg);
		cell_release(q, p);
		given++;
	}
	at_store_release_u32(&intent->info, 0);
	return given;
}
