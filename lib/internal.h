/*
 * internal.h - what the library's modules share and users never see.
 */
#ifndef SHMBUS_LIB_INTERNAL_H
#define SHMBUS_LIB_INTERNAL_H

#include <pthread.h>
#include <regex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "atomics.h"
#include "event_format.h"
#include "layout.h"
#include "pub_clock.h"
#include "stream_choice.h"
#include "queue.h"
#include "segment.h"
#include "shmbus.h"

#define SHMBUS_API __attribute__((visibility("default")))

#define DEFAULT_SLOTS 4096u
#define DEFAULT_SLOT_SIZE 256u
#define DEFAULT_MAX_PAYLOAD 65536u
#define DEFAULT_MAX_SUBSCRIBERS 64u
#define DEFAULT_MAX_MEMBERS 64u
#define DEFAULT_MODE 0600u
#define DEFAULT_BLOCK_TIMEOUT_NS 1000000000ull
#define DEFAULT_STALL_TIMEOUT_NS 5000000000ull
#define DEFAULT_RECLAIM_TIMEOUT_NS 1000000000ull
#define DEFAULT_SPIN_NS 50000ull
/* The recorder's durable subscription (recorder.c): the one durable
 * subscription that does not catch up from the log it writes. */
#define SUB_RECORDER_ID "shmbus.recorder"

/* errmsg.c: set the thread's message and return -err. */
int shmbus__fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

struct shmbus_bus {
	struct seg_map map;
	char name[SHMBUS_NAME_MAX + 1];
	struct seg_header *hdr;
	struct seg_member *members;
	struct seg_pub *pubs;
	struct seg_sub *subs;
	struct seg_cell *cells;
	struct seg_slot_ctl *slot_ctl;
	uint8_t *data;
	uint32_t slot_shift, slot_mask, slot_size_shift;
	uint32_t nslots, max_subs, max_members;
	uint64_t max_event_bytes;
	uint32_t member;       /* our member index */
	uint64_t member_gen;
	uint64_t reclaim_interval_ns;
	uint64_t last_reclaim_ns;  /* monotonic, relaxed: a hint */
	bool orphaned;	       /* this handle was inherited through fork() */
	/* this process told the bus's publishers to route with the full
	 * fence and waited for them (sub_route_fence_full) */
	bool route_fence_settled;
	/* OFD locks exclude other open file descriptions, not the threads
	 * sharing ours: each shared lock is paired with a local mutex. */
	pthread_mutex_t subs_mutex;    /* with the SEG_LOCK_SUBS byte */
	pthread_mutex_t reclaim_mutex; /* with the SEG_LOCK_RECLAIM byte */
	pthread_mutex_t lock;  /* process-local: the lists below */
	struct shmbus_pub *pubs_open;
	struct shmbus_sub *subs_open;
	struct shmbus_bus *next_open;
	struct log_state *log; /* log.h: readers, dead-letter maps, recorder */
};

/* Everything that can be derived from a slot index or a sub index. */
static inline struct seg_sub *bus_sub(const shmbus_bus_t *b, uint32_t i) { return &b->subs[i]; }
static inline uint8_t *bus_slot_data(const shmbus_bus_t *b, uint64_t pos)
{
	return b->data + ((uint64_t)(pos & b->slot_mask) << b->slot_size_shift);
}
static inline uint64_t *bus_slot_ctl(const shmbus_bus_t *b, uint64_t pos)
{
	return &b->slot_ctl[seg_ctl_index(pos, b->nslots)].ctl;
}
/* The SEG_HOLDER_WORDS holder words of slot position pos. */
static inline uint64_t *bus_slot_holders(const shmbus_bus_t *b, uint64_t pos)
{
	return b->slot_ctl[seg_ctl_index(pos, b->nslots)].holders;
}
static inline uint64_t bus_lap(const shmbus_bus_t *b, uint64_t pos) { return seg_lap_of(pos, b->slot_shift); }

/*
 * Copy the first n bytes (at least a header) of a committed event, maybe
 * in the ring, with its `committed` byte set in the copy and never read:
 * its publisher may still be storing that byte (after the slot's control
 * word said COMMITTED, which is what the copier went by). A plain memcpy
 * read it as it was stored: the same value either way, but a data race
 * to C11 and to ThreadSanitizer.
 */
static inline void event_copy_committed(void *dst, const void *src, size_t n)
{
	const size_t at = offsetof(struct seg_event, committed);
	memcpy(dst, src, at);
	((uint8_t *)dst)[at] = 1;
	memcpy((uint8_t *)dst + at + 1, (const uint8_t *)src + at + 1, n - at - 1);
}
/* The cells of the urgent or normal queue (cls 0 or 1) of subscription
 * sub; their ends are b->subs[sub].ends[cls], their count b->nslots. */
static inline struct seg_cell *bus_class_cells(const shmbus_bus_t *b, uint32_t sub, unsigned cls)
{
	return b->cells + ((uint64_t)sub * SEG_QUEUE_CELL_CLASSES + cls) * b->nslots;
}
/* The urgent or normal queue (cls 0 or 1) of subscription sub, the ones
 * publishers push to: no test for the redelivery queue on their path. */
static inline struct queue_view bus_class_queue(const shmbus_bus_t *b, uint32_t sub, unsigned cls)
{
	struct queue_view q = {
		.ends = &b->subs[sub].ends[cls],
		.cells = bus_class_cells(b, sub, cls),
		.cap = b->nslots,
		.sub = sub,
		.cls = cls,
		.gen = (uint32_t)at_load_relaxed_u64(&b->subs[sub].generation),
	};
	return q;
}

/* Any queue of subscription sub: urgent, normal or redelivery. */
static inline struct queue_view bus_queue(const shmbus_bus_t *b, uint32_t sub, unsigned cls)
{
	if (cls != SEG_QUEUE_REDELIVER)
		return bus_class_queue(b, sub, cls);
	struct queue_view q = {
		.ends = &b->subs[sub].redeliver_ends,
		.cells = b->subs[sub].redeliver_cells,
		.cap = SEG_REDELIVER_CELLS,
		.sub = sub,
		.cls = cls,
		.gen = (uint32_t)at_load_relaxed_u64(&b->subs[sub].generation),
	};
	return q;
}
static inline uint64_t sub_id_make(uint32_t idx, uint64_t gen) { return (gen << 16) | idx; }

uint64_t now_mono_ns(void);
uint64_t now_real_ns(void);

/* Compiled regexes of one subscription's PATTERN nodes, cached by a
 * process that evaluates them, with a memo of recent results by name hash
 * (event names repeat, so most evaluations cost one compare). */
#define PATTERN_MEMO 32
struct pattern_cache {
	uint64_t epoch;	  /* route_epoch the entry is valid for */
	uint64_t sub_gen; /* subscription generation */
	bool compiled[SEG_FILTER_NODES];
	bool ok[SEG_FILTER_NODES];
	regex_t re[SEG_FILTER_NODES];
	struct {
		uint64_t name_hash;
		uint32_t result; /* bit per node: matched; bit 31: valid */
		uint32_t node_mask;
	} memo[PATTERN_MEMO];
};

struct route_ctx {
	struct pattern_cache *cache[SEG_MAX_SUBSCRIBERS];
	bool unsure; /* a pattern went unevaluated (no memory): its false is not its answer */
};

/*
 * What the last single event a publisher routed matched (route_event): a
 * filter reads only these fields of an event (a pattern reads the name,
 * which its hash stands for, as the pattern cache has it), and every
 * change to what a walk reads (masks, pause, filters, removal) happens
 * while the header's route_epoch is odd, between two increments
 * (sub_route_change_begin). So while the epoch (even) and the fields
 * stay, an event matches what the last one did, and the filter walk is
 * skipped.
 */
struct route_memo {
	bool valid;
	uint8_t type, priority;
	uint64_t epoch; /* read before the walk that filled match */
	uint64_t name_hash, source_hash, target_hash;
	uint64_t match[SEG_MASK_WORDS];
};

struct shmbus_pub {
	shmbus_bus_t *bus;
	uint32_t index;
	struct seg_pub *rec;
	int64_t timeout_ns;
	bool low_latency; /* SHMBUS_PUB_LOW_LATENCY: a cached single publish's own fields after
			   its push, hand_off_single after its commit */
	bool stream_batches; /* not SHMBUS_PUB_CACHED_BATCHES: publish_many may stream windows */
	struct stream_choice stream; /* whether it does now (stream_choice.h) */
	char source[SHMBUS_STR_MAX + 1];
	uint64_t source_hash;
	size_t source_len;
	struct route_ctx route;
	struct route_memo memo; /* route_event */
	uint64_t ok_from, ok_to; /* positions seen reusable (slots.c) */
	/* Claim lease (slots.c): [lease_next, lease_end) are LEASED to this
	 * publisher for its next single-slot events; the next lease is
	 * lease_len slots long, and after one was taken away none is taken for
	 * lease_cooldown claims. last_claim_end tells whether another
	 * publisher claimed since our last claim. */
	uint64_t lease_next, lease_end, last_claim_end;
	uint64_t lease_taken_seen; /* rec->lease_taken before the lease */
	uint64_t lease_born;	   /* the claimer's pub_clock_ticks() at its claim (slots.c) */
	uint32_t lease_len, lease_cooldown;
	/* this process is registered for membarrier's heavy fence: it may
	 * lease claims (a taker's fence) and route with the light fence (a
	 * grace period's; see routing_begin) */
	bool asym_ok;
	bool claim_open;
	uint64_t claim_pos;
	uint32_t claim_slots;
	/* copies of unmatched commands/queries, dead-lettered after routing */
	shmbus_event_t **unrouted;
	size_t nunrouted, unrouted_cap;
	struct shmbus_pub *next;
	struct event_cache *last_event; /* of single publishes (event_encode.h) */
	struct pub_clock clock;		/* its events' wall clock (pub_clock.h) */
	/* How long this publisher has waited for the slot of position
	 * stall_seq (+1; 0: none), over all its calls: what the stall timeout
	 * is measured against (wait_for_space_once), not one call's wait,
	 * which its own timeout (1 s by default, under the 5 s stall) always
	 * ended first. Last: read only while waiting for space, away from
	 * the lines every publish reads. */
	uint64_t stall_seq, stall_waited_ns;
};

/* held_local.k of an event catch-up served from the log: it holds no
 * slot and no held[] entry, and releasing it only forgets it. */
#define HELD_FROM_LOG UINT32_MAX

struct held_local {
	const void *ev;
	uint32_t k;
	uint64_t seq; /* the entry must still carry it when released */
};

/* A descriptor taken from the queue (and recorded in held[k]) but not yet
 * handed to the user, or handed back and waiting for its reference to be
 * dropped with the next batch. */
struct held_desc {
	uint64_t desc;
	uint32_t k;
};

#define TAKE_BATCH 16	 /* descriptors taken per queue visit (1 in groups) */
#define RELEASE_BATCH 16 /* references dropped together */

struct custom_pred {
	shmbus_predicate_t fn;
	void *arg;
};

struct shmbus_sub {
	shmbus_bus_t *bus;
	uint32_t index;
	uint64_t generation;
	uint32_t consumer;
	struct seg_sub *rec;
	struct seg_consumer *cons;
	/* bus_queue(bus, index, cls) as made at subscribe: the geometry of
	 * our queues, which never changes (consume.c sub_queue). Their gen
	 * is that of subscribe time, unused: sub_queue reads it anew for a
	 * take's intent, and queue_ready needs none. */
	struct queue_view queues[SEG_QUEUE_CLASSES];
	shmbus_wait_t wait;
	uint64_t spin_ns;
	uint32_t nheld;	    /* delivered to the user, not released */
	uint64_t held_used; /* bit k: held[k] is ours */
	uint32_t held_count; /* bits set in held_used */
	uint64_t held_revoked; /* bit k: held[k] was revoked, its revoker not done */
	struct held_local held[SEG_HELD_MAX];
	uint32_t take_batch;
	/* neither durable nor a group: its only consumer is this handle, and
	 * nothing is ever given back to it, so no event has two holds here
	 * and a lone holder bit may be cleared with a plain store */
	bool sole_consumer;
	uint32_t hand_now; /* events the poll under way hands out (take_run) */
	struct held_desc ready[SEG_QUEUE_CLASSES][SEG_HELD_MAX];
	uint32_t ready_head[SEG_QUEUE_CLASSES], ready_n[SEG_QUEUE_CLASSES];
	uint64_t cells_first; /* the cells of the last run, not yet released */
	uint32_t cells_n, cells_cls;
	struct held_desc releasing[RELEASE_BATCH];
	uint32_t nreleasing;
	uint32_t releasing_slots; /* ring slots the batch keeps (lower bound) */
	struct custom_pred custom[SEG_FILTER_NODES];
	bool has_custom;
	struct seg_event_shape checked; /* header words of the last event opened (seg_event_check_same_shape) */
	bool catchup_wait; /* the gap reaches past what the recorder wrote */
	struct route_ctx route; /* for evaluating patterns in the second stage */
	struct shmbus_sub *next;
};

/* bus.c */
uint64_t bus_pid_namespace(void);
int bus_check_usable(const shmbus_bus_t *bus);
void bus_track_pub(shmbus_bus_t *bus, shmbus_pub_t *pub, bool add);
void bus_track_sub(shmbus_bus_t *bus, shmbus_sub_t *sub, bool add);
int bus_lock_subs(shmbus_bus_t *bus);
/* The table lock if nobody holds it now: 0, or -EBUSY. */
int bus_trylock_subs(shmbus_bus_t *bus);
bool bus_holds_subs_lock(void);
void bus_unlock_subs(shmbus_bus_t *bus);

/* route.c: does event ev match filter f of subscription sub_index?
 * Custom nodes count as true unless preds is given (second stage). */
bool route_match(shmbus_bus_t *bus, struct route_ctx *ctx, uint32_t sub_index, const struct seg_filter *f,
		 const struct seg_event *ev, const struct custom_pred *preds);
void route_ctx_free(struct route_ctx *ctx);
/* One event of a routing pass (route_events). */
struct route_item {
	const struct seg_event *ev; /* in: the written event */
	uint64_t seq;		    /* in: its sequence */
	bool like_prev;		    /* in: the previous item's type, priority and strings */
	bool streamed;		    /* in: written with streaming stores (publish_many), committed left 0 */
	uint64_t hold[SEG_HOLDER_WORDS]; /* out: the subscriptions it was queued for */
	bool matched;		    /* out: some filter matched, queue full or not */
	uint8_t cls;		    /* out: its queue class (SEG_QUEUE_*) */
};
/* Route one written event: push descriptor seq to every subscription it
 * matches, set their bits in hold (the slot's holders to be) and wake
 * (SEG_MASK_WORDS words). Returns how many matched, full queues included
 * (those drop the descriptor and count it). */
unsigned route_event(shmbus_pub_t *pub, const struct seg_event *ev, uint64_t seq, uint64_t *hold, uint64_t *wake);
/* Route a publisher's written events (at most QUEUE_PUSH_MAX): for every
 * subscription, push the descriptors of the events it matches in one run
 * per queue (in the events' order), set the bits of those queued in their hold[] (the
 * slots' holders to be) and of the subscriptions that got any in wake
 * (SEG_MASK_WORDS words). A descriptor that finds its queue full is
 * dropped and counted. */
void route_events(shmbus_pub_t *pub, struct route_item *items, size_t n, uint64_t *wake);
/* Wake the sleepers of the subscriptions in the bitmap (after a fence, or a
 * locked push: see routing_end). */
void route_wake_set(shmbus_bus_t *bus, const uint64_t *wake);
void route_wake(shmbus_bus_t *bus, uint32_t sub_index);

/* filter.c: compile a filter tree into its shared form. */
int filter_compile(const shmbus_filter_t *f, struct seg_filter *out, struct custom_pred *preds, uint32_t *type_union);

/* publish.c: a publisher's routing word is odd while it may be routing
 * (see sub_wait_routing_grace). */
void routing_begin(shmbus_pub_t *pub);
/* Whether pub routes with the light fence now (see routing_begin); also
 * whether it may lease claims, which a member that cannot issue
 * membarrier could not take away (slots.c). */
static inline bool routing_fence_light(const shmbus_pub_t *pub)
{
	return pub->asym_ok && !(at_load_acquire_u32(&pub->bus->hdr->route_fence) & SEG_ROUTE_FENCE_FULL);
}
void routing_abort(shmbus_pub_t *pub);

/* slots.c: subscription sub no longer holds the event at seq (its holder
 * bit is cleared; a descriptor whose slot moved on is ignored). Wakes
 * publishers waiting for space when the slot frees. Only the one owner of
 * the hold may call it (who took its cell, or won its held entry), or a
 * survivor acting for a dead owner after slot_held_by saw the bit still
 * set: the lap check before the AND holds only while the bit does, and a
 * second clearer could let the slot be reused in between, so that the AND
 * clears the next event's bit. */
void slot_release(shmbus_bus_t *bus, uint64_t seq, uint32_t sub);
/* slot_release for the sole consumer of a plain subscription (no event
 * has two holds there) that won the held entry of an event it opened (so
 * saw COMMITTED in the descriptor's lap). When the bit is the
 * only one set, on a bus of at most 64 subscriptions, it is cleared with
 * a plain release store instead of a locked AND (a tenth of a batched
 * event's cost to its subscriber) and true is returned: the slot is free
 * and the caller owes publishers the wake-up check, after a full fence
 * (at_fence_seq_cst, then slots_wake_waiters), once for all the holds it
 * drops in one go. Else it is slot_release, which did its own check. */
/* Inline: a batch consumer calls it for every event it gives back. */
/* slot_release_alone's test and store, for a caller that computed the
 * slot's control line, the COMMITTED word of the event's lap and our bit
 * (in word 0: a bus of at most 64 subscriptions). True if it cleared the
 * bit; false leaves it to slot_release. */
static inline bool slot_clear_lone_bit(struct seg_slot_ctl *s, uint64_t committed, uint64_t bit)
{
	/* The bit alone in the bus's only holder word: nobody else writes the
	 * word until the slot is reused. Publishers set bits only in a new
	 * lap, which our bit forbids; every other bit's clearer has cleared
	 * it, and one clearer per hold means nobody clears it again (an AND
	 * of a clear bit would change nothing anyway). */
	if (at_load_acquire_u64(&s->ctl) == committed && at_load_acquire_u64(&s->holders[0]) == bit) {
		/* release: our reads of the event come before a publisher
		 * that sees the slot free writes it. The load above is an
		 * acquire so that the other subscriptions' reads do too: a
		 * plain store is not part of their AND's release sequence, so
		 * the publisher's acquire of our 0 orders their reads only
		 * through our acquire of their AND's result (ThreadSanitizer
		 * reported the race with a relaxed load; x86 orders it
		 * either way, the C memory model does not). */
		at_store_release_u64(&s->holders[0], 0);
		return true;
	}
	return false;
}

static inline bool slot_release_alone(shmbus_bus_t *bus, uint64_t seq, uint32_t sub)
{
	if (bus->max_subs <= 64 && /* so sub < 64: its bit is in word 0 */
	    slot_clear_lone_bit(&bus->slot_ctl[seg_ctl_index(seq, bus->nslots)],
				seg_ctl_make(bus_lap(bus, seq), SEG_SLOT_COMMITTED, 0), 1ull << (sub % 64)))
		return true;
	slot_release(bus, seq, sub);
	return false;
}

/* The state of the event at seq once its publisher is done with it (a
 * descriptor can be seen between push and commit): COMMITTED, ABORTED, or
 * FREE when the slot moved on. Waits while CLAIMED for as long as the
 * claiming publisher lives and routes; gives up (ABORTED) on a corrupt
 * claim, or two reclaim timeouts after the claimer died. */
uint32_t slot_settle(shmbus_bus_t *bus, uint64_t seq);
/* Whether subscription sub still holds the event at seq. */
bool slot_held_by(const shmbus_bus_t *bus, uint64_t seq, uint32_t sub);


/* subscribe.c: membership of the routing masks. */
void sub_mask_set(shmbus_bus_t *bus, uint32_t idx, bool active);
/* Bracket a change to what routing reads (see subscribe.c). */
void sub_route_change_begin(shmbus_bus_t *bus);
void sub_route_change_end(shmbus_bus_t *bus);
void sub_remove_locked(shmbus_bus_t *bus, uint32_t idx);
/* Our consumer entry, left DETACHED by a removal that ran while we were
 * taking a run: once that run is dropped (no take intent), it is free. */
void sub_consumer_forget(shmbus_sub_t *sub);
/* Take every queued descriptor of subscription idx whose sequence is at
 * most max_seq and drop its hold; the runs are recorded in intent (the
 * caller's: a publisher's drain record, or the table lock holder's).
 * With lost, the subscription is passed over (catchup_note_drop, before
 * the holds go); without, it is going away. Returns how many events were
 * dropped. */
uint64_t sub_drop_queued(shmbus_bus_t *bus, uint32_t idx, uint64_t max_seq, struct seg_take_intent *intent,
			 bool lost);
void sub_wait_routing_grace(shmbus_bus_t *bus);
/* Every publisher of the bus routes with the full fence from now on
 * (route_fence), for good: called by a process that cannot issue
 * membarrier's heavy fence, when it attaches, which then waits a few
 * milliseconds for passes begun with the light one (see routing_begin). */
void sub_route_fence_full(shmbus_bus_t *bus);
void sub_lock_recover(shmbus_bus_t *bus);

/* metrics.c: add a vanishing subscription's counters to the bus totals */
void metrics_retire_sub(shmbus_bus_t *bus, uint32_t idx);

/* consume.c: before a handle goes away, drop what it released, hand back
 * what it took but never delivered (to the queue if the subscription
 * survives) and release what the user still holds. */
void consume_detach(shmbus_sub_t *sub, bool survives);
/* Our subscription was removed: drop what the last run left (holds, then
 * cells and intent) and free our entry if the removal left it DETACHED. */
void consume_forget_removed(shmbus_sub_t *sub);

/* catchup.c: events routed to subscription idx in [lo, hi) were dropped,
 * n of them: a durable subscription records them as a gap to serve from
 * the log, any other counts them missed. Called before their holds are
 * dropped. */
void catchup_note_drop(shmbus_bus_t *bus, uint32_t idx, uint64_t lo, uint64_t hi, uint64_t n);
/* A consumer of subscription idx died holding events from the log from
 * seq on: the gap opens there again. */
void catchup_reopen(shmbus_bus_t *bus, uint32_t idx, uint64_t seq);
/* A drop of sequences in [lo, hi) is about to happen: make the range a gap
 * now, counting nothing (the drop counts what it really dropped). Done
 * before the drop takes anything, so a consumer that takes or serves after
 * it sees the gap first and cannot deliver past it; what the range covers
 * but was not dropped may come twice. */
void catchup_extend(shmbus_bus_t *bus, uint32_t idx, uint64_t lo, uint64_t hi);
/* The next event of sub's pending gap, from the log: 1 and *out, 0 when
 * no gap is pending, -EAGAIN while the gap waits for the recorder, or
 * -errno. */
int catchup_next(shmbus_sub_t *sub, const struct seg_event **out);

/* reclaim.c */
/*
 * redeliver_push - give desc back to subscription sub: into its redelivery
 * queue, which consumers serve before the others, so what a departed
 * consumer took and did not finish reaches the next one before anything
 * queued after it (pushed oldest first, each publisher's order holds).
 * When more than SEG_REDELIVER_CELLS wait there, to the tail of the
 * event's own queue instead, after newer events, and *to_tail is set so
 * the rest of the same give-back follows it there (a cell freed meanwhile
 * would otherwise let a later event overtake an earlier one). cls is the
 * event's queue class when the caller knows it (its slot may not be
 * committed yet), SEG_QUEUE_REDELIVER to read it from the event. The
 * caller holds the subscription-table lock: one pusher at a time. 0 or
 * -ENOBUFS/-EBADMSG (both queues full or corrupt).
 */
int redeliver_push(shmbus_bus_t *bus, uint32_t sub, uint64_t desc, unsigned cls, bool *to_tail);

/* Sweep for dead members if the last sweep is a reclaim interval old. */
int reclaim_if_due(shmbus_bus_t *bus);
int reclaim_if_due_at(shmbus_bus_t *bus, uint64_t now_mono);
int reclaim_for_join(shmbus_bus_t *bus);
void reclaim_member(shmbus_bus_t *bus, uint32_t m);
bool member_alive(shmbus_bus_t *bus, uint32_t m);
/* A publisher waits for the slot of blocking_seq: drain the `lag` and
 * demoted subscriptions up to a quarter of the ring beyond it (and, once
 * stalled, demote the `block` ones that hold it). Returns whether there was
 * any such subscription to drain, that is whether looking again may find
 * room at once. */
bool reclaim_relieve_congestion(shmbus_bus_t *bus, struct seg_take_intent *intent, uint64_t blocking_seq,
				bool stalled);
void reclaim_locked_take(shmbus_bus_t *bus);
/* Finish the revocation a holder of the table lock died in (its
 * locked_revoke), under the lock. */
void reclaim_locked_revoke(shmbus_bus_t *bus);
/* Under the table lock, held entry d of subscription sub, whose owner is
 * dead or gone and which no live party can win any more: clear its hold if
 * the slot still has it in the entry's lap (the owner may have cleared it
 * before dying). The caller clears the entry. */
void reclaim_orphan_hold(shmbus_bus_t *bus, uint32_t sub, uint64_t d);
/* A consumer entry about to be freed with its subscription (table lock
 * held): a take its dead owner left half done is finished first, its
 * holds dropped - reclaim only visits active entries, so nobody else
 * would. */
void reclaim_consumer_take(shmbus_bus_t *bus, struct seg_consumer *con);
/* Turn every cell of subscription record idx's queues that a member no
 * longer alive left half pushed (WRITING) into a tombstone, whatever the
 * record's state: a queue must never stay wedged at a dead writer's cell,
 * even in a record that was removed before the sweep reached the writer. */
void reclaim_dead_writers(shmbus_bus_t *bus, uint32_t idx);

/* uuid.c */
void uuid_make_v7(shmbus_uuid_t *out, uint64_t unix_ms, uint64_t seq, uint64_t incarnation);


#endif
