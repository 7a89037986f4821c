/*
 * queue.c - the descriptor queue (see queue.h for the protocol).
 *
 * For a cell at index p & (cap-1) serving position p, the turn word moves
 *   p -> WRITING(o,p) -> p+1 -> TAKEN(o,p+1) -> p+cap
 * Producers only start from "p", consumers only from "p+1"; every other
 * value tells the caller the tail/head hint is stale (help it forward) or the
 * queue is full/empty.
 */
#include "queue.h"

#include <errno.h>

#include "atomics.h"

static struct seg_cell *cell_at(const struct queue_view *q, uint64_t pos)
{
	return &q->cells[seg_cell_index(pos, q->cap)];
}

void queue_init(struct queue_view *q)
{
	for (uint64_t p = 0; p < q->cap; p++) {
		cell_at(q, p)->desc = 0;
		at_store_relaxed_u64(&cell_at(q, p)->turn, p);
	}
	at_store_relaxed_u64(&q->ends->tail, 0);
	at_store_release_u64(&q->ends->head, 0);
}

static void help_forward(uint64_t *hint, uint64_t seen)
{
	uint64_t expected = seen;
	(void)at_cas_u64(hint, &expected, seen + 1);
}

int queue_push(struct queue_view *q, uint32_t owner, uint64_t desc)
{
	for (;;) {
		uint64_t pos = at_load_acquire_u64(&q->ends->tail);
		struct seg_cell *c = cell_at(q, pos);
		uint64_t turn = at_load_acquire_u64(&c->turn);
		uint64_t p = pos & SEG_TURN_POS_MASK;
		if (turn == p) {
			if (!at_cas_u64(&c->turn, &turn, seg_turn_busy(0, owner, p)))
				continue;
			help_forward(&q->ends->tail, pos);
			c->desc = desc;
			at_store_release_u64(&c->turn, p + 1);
			return 0;
		}
		/* Signed distance of the cell's position from ours. */
		int64_t d = (int64_t)(seg_turn_pos(turn) - p);
		if (d < 0 || (d == 0 && !(turn & SEG_TURN_BUSY)))
			return -ENOBUFS; /* previous lap not consumed yet */
		/* The cell already serves our position or a later one: the tail
		 * hint is behind. */
		help_forward(&q->ends->tail, pos);
	}
}

int queue_take(struct queue_view *q, uint32_t owner, uint64_t max_seq, uint64_t *pos_out, uint64_t *desc_out)
{
	for (;;) {
		uint64_t pos = at_load_acquire_u64(&q->ends->head);
		struct seg_cell *c = cell_at(q, pos);
		uint64_t turn = at_load_acquire_u64(&c->turn);
		uint64_t p = pos & SEG_TURN_POS_MASK;
		if (turn == p + 1) {
			uint64_t desc = c->desc;
			if (max_seq != UINT64_MAX && (desc & SEG_DESC_SEQ_MASK) > max_seq)
				return 0;
			if (!at_cas_u64(&c->turn, &turn, seg_turn_busy(1, owner, p + 1)))
				continue;
			help_forward(&q->ends->head, pos);
			*pos_out = pos;
			*desc_out = desc;
			return 1;
		}
		if (turn == p || ((turn & SEG_TURN_BUSY) && !(turn & SEG_TURN_TAKER) && seg_turn_pos(turn) == p))
			return 0; /* empty, or being written */
		int64_t d = (int64_t)(seg_turn_pos(turn) - p);
		if (d <= 0)
			return 0; /* a stale view: nothing newer than head */
		/* Taken by someone else, or already released: head is behind. */
		help_forward(&q->ends->head, pos);
	}
}

void queue_finish_take(struct queue_view *q, uint64_t pos)
{
	at_store_release_u64(&cell_at(q, pos)->turn, (pos & SEG_TURN_POS_MASK) + q->cap);
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

int queue_recover(struct queue_view *q, uint32_t owner, uint64_t tombstone,
		  void (*on_taken)(uint64_t desc, void *arg), void *arg)
{
	int fixed = 0;
	for (uint64_t i = 0; i < q->cap; i++) {
		struct seg_cell *c = &q->cells[i];
		uint64_t turn = at_load_acquire_u64(&c->turn);
		if (!(turn & SEG_TURN_BUSY) || seg_turn_owner(turn) != owner)
			continue;
		uint64_t p = seg_turn_pos(turn);
		if (turn & SEG_TURN_TAKER) {
			on_taken(c->desc, arg);
			at_store_release_u64(&c->turn, (p - 1) + q->cap);
		} else {
			c->desc = tombstone;
			at_store_release_u64(&c->turn, p + 1);
		}
		fixed++;
	}
	return fixed;
}
