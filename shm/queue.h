/*
 * queue.h - bounded multi-producer multi-consumer queue of descriptors in
 * shared memory, crash-recoverable.
 *
 * A variant of Vyukov's bounded MPMC queue in which a producer or consumer
 * first marks the cell it works on with its owner index (see the turn
 * encoding in layout.h) and only then advances the shared tail or head,
 * which are mere hints anyone may help forward. A process that dies in the
 * middle therefore leaves a cell that names it, and a survivor can finish or
 * undo the operation (queue_recover_*). No policy: callers decide what a
 * full queue means.
 */
#ifndef SHMBUS_SHM_QUEUE_H
#define SHMBUS_SHM_QUEUE_H

#include <stdint.h>

#include "layout.h"

struct queue_view {
	struct seg_queue_ends *ends;
	struct seg_cell *cells;
	uint64_t cap; /* power of two */
};

/* Reset cells for an empty queue starting at position 0 (creation only). */
void queue_init(struct queue_view *q);

/* Append desc as member `owner`. 0, or -ENOBUFS when the queue is full. */
int queue_push(struct queue_view *q, uint32_t owner, uint64_t desc);

/*
 * queue_take - take the oldest descriptor as member `owner`.
 * Returns 1 with *pos and *desc set and the cell marked TAKEN by owner: the
 * caller records desc where a survivor can find it, then calls
 * queue_finish_take(q, pos). Returns 0 when nothing is ready (empty, or the
 * oldest cell is still being written).
 * With max_seq != UINT64_MAX only a descriptor whose sequence bits are
 * <= max_seq is taken (draining what a congested publisher needs).
 */
int queue_take(struct queue_view *q, uint32_t owner, uint64_t max_seq, uint64_t *pos, uint64_t *desc);
void queue_finish_take(struct queue_view *q, uint64_t pos);

/* Descriptors queued and not yet taken (a snapshot). */
uint64_t queue_depth(const struct queue_view *q);
/* Descriptors ever pushed (the tail position). */
uint64_t queue_pushed(const struct queue_view *q);

/*
 * Survivor side, for a dead member `owner`: a cell it was writing becomes a
 * full cell holding `tombstone`; a cell it was taking is handed to
 * on_taken(desc, arg) and then released. Returns how many cells were fixed.
 */
int queue_recover(struct queue_view *q, uint32_t owner, uint64_t tombstone,
		  void (*on_taken)(uint64_t desc, void *arg), void *arg);

#endif
