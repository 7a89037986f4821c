/*
 * queue.h - bounded multi-producer multi-consumer queue of descriptors in
 * shared memory, crash-recoverable.
 *
 * Producers follow Vyukov's bounded MPMC queue, except that a producer
 * first marks the cell it fills with its owner index and only then helps
 * the shared tail forward, so a producer that dies half way leaves a cell
 * naming it; where the CPU can CAS the cell's two words at once, a single
 * descriptor is pushed in that one step instead, and nothing is ever half
 * written (queue_push_in_one). A producer with many descriptors takes a
 * run of cells with one CAS of the first (its WRITING word names the run's length; see
 * FORMAT.md "Runs"): producers take cells in position order only, so the
 * EMPTY cells after the first stay free until the first is taken, and a
 * producer that finds the word steps over the whole run. The run's other
 * cells are made FULL before the first, behind which everybody waits.
 * Consumers take a run of ready cells at once by moving the
 * shared head with one CAS, read the descriptors, and release the cells
 * afterwards: a consumer writes to cells the producer may be filling only
 * once per run, not once per descriptor. Before moving head a consumer
 * records what it takes in a seg_take_intent, so a survivor can give back
 * cells taken by a consumer that died before releasing them. No policy:
 * callers decide what a full queue means.
 */
#ifndef SHMBUS_SHM_QUEUE_H
#define SHMBUS_SHM_QUEUE_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "atomics.h"
#include "crash_point.h"
#include "layout.h"

struct queue_view {
	struct seg_queue_ends *ends;
	struct seg_cell *cells;
	uint64_t cap; /* power of two */
	uint32_t sub; /* subscription index, class and generation (low bits), */
	uint32_t cls; /* for take intents */
	uint32_t gen;
};

/* Reset cells for an empty queue starting at position 0 (creation only). */
void queue_init(struct queue_view *q);

/* Append desc as member `owner`. 0, -ENOBUFS when the queue is full, or
 * -EBADMSG when its words are corrupt (no free cell after a whole lap). */
int queue_push(struct queue_view *q, uint32_t owner, uint64_t desc);

/*
 * A push at position pos (the tail hint it read) failed its CAS and found
 * turn in the cell. If the cell serves pos or a later position, the hint
 * is behind: move it past the cell (past the whole run of a WRITING word),
 * unless someone moved it already, and return true to try again. False:
 * the cell still serves the previous lap, the queue is full. The failed
 * CAS that read turn was an acquire: having seen a run's first cell FULL,
 * whoever follows the hint into the run sees its other cells FULL too,
 * and cannot take one of them.
 */
static inline bool queue_help_forward(uint64_t *hint, uint64_t pos, uint64_t turn)
{
	int64_t d = seg_turn_distance(turn, pos);
	if (d < 0 || (d == 0 && !(turn & SEG_TURN_BUSY)))
		return false;
	uint64_t expected = pos;
	(void)at_cas_u64(hint, &expected, pos + (d == 0 ? seg_turn_run(turn) : 1));
	return true;
}

/* A producer that took the cells [pos, end) moves the tail hint past
 * them. A plain forward store is enough (a racing producer that moves it
 * back only costs a later helper a step), and saves a locked instruction
 * per push. */
static inline void queue_tail_passed(uint64_t *hint, uint64_t pos, uint64_t end)
{
	if (at_load_relaxed_u64(hint) == pos)
		at_store_relaxed_u64(hint, end);
}

/* Whether a single push is one CAS of the cell's pair of words (where
 * the CPU can: see queue_push_in_one), not three steps. */
static inline bool queue_push_one_cas(void)
{
#if AT_HAVE_CAS_PAIR
	return shm_cpu_has_cas_pair;
#else
	return false;
#endif
}

/*
 * queue_push of the queue whose ends and cap cells are given, inlined: a
 * single publish pushes with it on a round trip's path, where building a
 * view and calling would cost a good part of the push.
 *
 * Where the CPU can CAS the cell's two words as one (at_cas_pair_u64), a
 * single push is that one instruction: EMPTY (holding SEG_DESC_VACANT)
 * becomes FULL with our descriptor, and nothing is ever half written, so
 * there is no WRITING word for a survivor to finish. In a round trip the consumer spins on the
 * cell: in three steps (mark, descriptor, FULL) its loads took the line
 * back between the mark and the final store, which then had to fetch it
 * again. Elsewhere the push marks the cell WRITING first (see queue.c).
 */
static inline __attribute__((always_inline)) bool queue_push_in_one(struct seg_cell *c, uint64_t pos, uint64_t desc,
								    uint64_t *turn)
{
#if AT_HAVE_CAS_PAIR
	/* An EMPTY cell holds SEG_DESC_VACANT (every release stores it), so
	 * the CAS is the first touch of the line, as below. An EMPTY cell
	 * holding anything else after all (a word overwritten) costs a
	 * second try, with the line owned by then. */
	uint64_t old_desc = SEG_DESC_VACANT;
	for (;;) {
		if (at_cas_pair_u64(&c->turn, turn, &old_desc, seg_turn_full(pos), desc))
			return true;
		if (*turn != seg_turn_empty(pos))
			return false;
	}
#else
	(void)c, (void)pos, (void)desc, (void)turn;
	return false;
#endif
}

static inline __attribute__((always_inline)) int queue_push_cells(struct seg_queue_ends *ends, struct seg_cell *cells,
								   uint64_t cap, uint32_t owner, uint64_t desc)
{
	/* A sane queue needs at most a lap of help to find its tail; more
	 * means the cells or the tail were overwritten. */
	for (uint64_t tries = 0; tries < 4 * cap; tries++) {
		uint64_t pos = at_load_acquire_u64(&ends->tail);
		struct seg_cell *c = &cells[seg_cell_index(pos, cap)];
		/* The CAS is the first touch of the cell, expecting it free for
		 * our position, as a sane tail hint finds it: the line was last
		 * written by the consumer's release, and in a round trip the
		 * consumer spins on it. A load first would fetch it shared and
		 * the CAS then need a second trip between the cores to own it
		 * (a spin round trip is about 5 % shorter without). A CAS that
		 * fails reads the turn all the same; it also takes the line,
		 * which a full queue's consumer then fetches back once per
		 * push that finds it full (rare: a lag queue a lap behind). */
		uint64_t turn = seg_turn_empty(pos);
		if (queue_push_one_cas()) {
			if (queue_push_in_one(c, pos, desc, &turn)) {
				CRASH_POINT("push.full");
				queue_tail_passed(&ends->tail, pos, pos + 1);
				return 0;
			}
		} else if (at_cas_u64(&c->turn, &turn, seg_turn_busy(owner, pos, 1))) {
			CRASH_POINT("push.marked");
			queue_tail_passed(&ends->tail, pos, pos + 1);
			/* relaxed atomics: a consumer that reads a cell and then
			 * loses the race for it may read it while we write */
			at_store_relaxed_u64(&c->desc, desc);
			CRASH_POINT("push.desc");
			at_store_release_u64(&c->turn, seg_turn_full(pos));
			CRASH_POINT("push.full");
			return 0;
		}
		if (!queue_help_forward(&ends->tail, pos, turn))
			return -ENOBUFS; /* previous lap not released yet */
	}
	return -EBADMSG;
}

/*
 * queue_push_many - append descs[0..n) in order as member `owner`, n at
 * most QUEUE_PUSH_MAX: as one run of cells taken with one CAS, or a few if
 * another producer's run comes between. The first cell is made FULL last,
 * so a consumer takes the run in one go instead of chasing the producer
 * cell by cell (every shared line would otherwise cross between the cores
 * once per descriptor, not once per four). Returns how many were
 * appended: all, or the prefix that fitted before the queue was full (or
 * corrupt).
 */
#define QUEUE_PUSH_MAX 64
uint32_t queue_push_many(struct queue_view *q, uint32_t owner, const uint64_t *descs, uint32_t n);

/*
 * queue_take - take up to max ready descriptors (in queue order) into
 * descs[], recording the run in *intent first. With max_seq below
 * UINT64_MAX, the run stops at the first descriptor whose sequence bits
 * exceed it. Returns how many were taken (0: none ready) and their first
 * position in *first. The cells stay unreleased until queue_release;
 * the caller stores the descriptors where a survivor finds them before that.
 */
uint32_t queue_take(struct queue_view *q, struct seg_take_intent *intent, uint32_t max, uint64_t max_seq,
		    uint64_t *descs, uint64_t *first);

/* Mark the range intent records as counted by its taker (NOTED): a drainer
 * that passes a run over says so before it drops the run's holds. */
void queue_take_noted(struct seg_take_intent *intent);

/* Release the n cells from first (taken by queue_take) and clear intent. */
void queue_release(struct queue_view *q, struct seg_take_intent *intent, uint64_t first, uint32_t n);

/* Whether the cell at head is FULL: a take would find something (a hint,
 * which costs two loads; queue_take decides). */
static inline bool queue_ready(const struct queue_view *q)
{
	uint64_t head = at_load_acquire_u64(&q->ends->head);
	return at_load_acquire_u64(&q->cells[seg_cell_index(head, q->cap)].turn) == seg_turn_full(head);
}

/* Descriptors queued and not yet taken (a snapshot). */
uint64_t queue_depth(const struct queue_view *q);
/* The sequence of the first descriptor from the head that is not a
 * tombstone, if one is there now (a hint: another taker may move the head
 * at once). */
bool queue_peek_seq(const struct queue_view *q, uint64_t *seq);
/* Descriptors ever pushed (the tail position). */
uint64_t queue_pushed(const struct queue_view *q);

/*
 * Survivor side, for a dead producer `owner`: every cell it was writing
 * becomes a full cell holding `tombstone`. Returns how many were fixed.
 */
int queue_recover_writer(struct queue_view *q, uint32_t owner, uint64_t tombstone);

/*
 * Survivor side, for the take intent of a dead consumer (or drainer): each cell of its
 * run that was taken (below head) and is still unreleased, and that no live
 * taker's intent covers (other_claims), is handed to on_desc() and
 * released. The intent is cleared. Returns the count given.
 */
int queue_recover_take(struct queue_view *q, struct seg_take_intent *intent,
		       bool (*other_claims)(const struct queue_view *q, uint64_t pos, void *arg),
		       void (*on_desc)(uint64_t desc, void *arg), void *arg);

#endif
