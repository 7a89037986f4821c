/*
 * publish.c - publishers: copy, batch and zero-copy (reserve/commit/abort)
 * publishing, and the five convenience calls of the spec.
 *
 * Commit order, for every event: bytes written -> routed (descriptors
 * pushed, the matched subscriptions' holder bits collected) -> holder bits
 * stored -> slot COMMITTED (release) -> commit byte in the event -> one
 * seq_cst fence per call (none after a single event's one locked push:
 * routing_end) -> futex wake of the subscriptions that announced they
 * sleep. No syscall when nobody sleeps. One exception: a
 * low-latency publisher's single publish written from its cache
 * (publish_one) writes the fields each event has of its own (id,
 * correlation and causation ids, times: bytes 16..87) after the push,
 * before the commit. Nothing may read an event's bytes before it is
 * COMMITTED.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "asym_fence.h"
#include "crash_point.h"
#include "dlq.h"
#include "event_encode.h"
#include "prefetch.h"
#include "slots.h"

#define BATCH_STACK 64

/*
 * A window of a batch with at least this many events writes the events it
 * copies from its shape's template with streaming stores (shm/stream.h;
 * ARCHITECTURE.md, "Streamed batches") while the publisher streams at all
 * (stream_choice.h; never with SHMBUS_PUB_CACHED_BATCHES). Smaller
 * windows are a few events someone may be waiting for, which a consumer
 * reads sooner from this core's caches than from memory.
 */
#define STREAM_MIN_WINDOW 16

SHMBUS_API int shmbus_pub_open(shmbus_bus_t *bus, const shmbus_pub_opts_t *opts, shmbus_pub_t **out)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	if (!out)
		return shmbus__fail(EINVAL, "out is NULL");
	const uint32_t known = SHMBUS_PUB_LOW_LATENCY | SHMBUS_PUB_CACHED_BATCHES;
	if (opts && (opts->flags & ~known))
		return shmbus__fail(EINVAL, "unknown publisher flags 0x%x", opts->flags & ~known);
	char source[SHMBUS_STR_MAX + 2];
	if (opts && opts->source) {
		size_t n = strnlen(opts->source, SHMBUS_STR_MAX + 1);
		if (n > SHMBUS_STR_MAX)
			return shmbus__fail(ENAMETOOLONG, "source is longer than %d bytes", SHMBUS_STR_MAX);
		if (n == 0)
			return shmbus__fail(EINVAL, "source must not be empty");
		memcpy(source, opts->source, n + 1);
	} else {
		snprintf(source, sizeof source, "pid-%d", (int)getpid());
	}
	shmbus_pub_t *pub = calloc(1, sizeof *pub);
	struct event_cache *last_event = calloc(1, sizeof *last_event);
	if (!pub || !last_event) {
		free(pub);
		free(last_event);
		return shmbus__fail(ENOMEM, "out of memory");
	}
	for (uint32_t i = 0; i < bus->max_members; i++) {
		struct seg_pub *r = &bus->pubs[i];
		uint32_t expected = 0;
		if (at_load_relaxed_u32(&r->state) != 0 || !at_cas_u32(&r->state, &expected, 1))
			continue;
		/* a position a former owner was taking is nothing to us */
		at_store_relaxed_u64(&r->lease_using, 0);
		at_store_relaxed_u32(&r->member, bus->member);
		r->member_gen = bus->member_gen;
		memcpy(r->source, source, strlen(source) + 1);
		at_store_relaxed_u64(&r->published, 0);
		at_store_relaxed_u64(&r->publish_bytes, 0);
		at_store_relaxed_u64(&r->block_waits, 0);
		at_store_relaxed_u64(&r->block_timeouts, 0);
		at_store_release_u64(&r->routing, 0);
		at_store_relaxed_u64(&r->claiming, 0);
		pub->bus = bus;
		pub->index = i;
		pub->rec = r;
		pub->timeout_ns = opts ? opts->timeout_ns : 0;
		pub->low_latency = opts && (opts->flags & SHMBUS_PUB_LOW_LATENCY);
		pub->stream_batches = !(opts && (opts->flags & SHMBUS_PUB_CACHED_BATCHES));
		memcpy(pub->source, source, sizeof pub->source);
		pub->source_len = strlen(source);
		pub->source_hash = seg_str_hash(source, pub->source_len);
		pub->last_event = last_event;
		/* claim leases and the light routing fence need this process
		 * to answer a heavy fence */
		pub->asym_ok = asym_fence_register() == 0;
		bus_track_pub(bus, pub, true);
		*out = pub;
		return 0;
	}
	free(pub);
	free(last_event);
	return shmbus__fail(ENOSPC, "bus '%s' has no free publisher entry (max members %u)", bus->name,
			    bus->max_members);
}

SHMBUS_API void shmbus_pub_close(shmbus_pub_t *pub)
{
	if (!pub)
		return;
	shmbus_bus_t *bus = pub->bus;
	if (!bus->orphaned) {
		if (pub->claim_open) {
			shmbus_claim_t c = {.priv = pub};
			shmbus_abort(pub, &c);
		}
		slots_lease_give_up(pub);
		struct seg_header *h = bus->hdr;
		struct seg_pub *r = pub->rec;
		at_count_u64(&h->retired_published, at_load_relaxed_u64(&r->published));
		at_count_u64(&h->retired_publish_bytes, at_load_relaxed_u64(&r->publish_bytes));
		at_count_u64(&h->retired_block_waits, at_load_relaxed_u64(&r->block_waits));
		at_count_u64(&h->retired_block_timeouts, at_load_relaxed_u64(&r->block_timeouts));
		at_store_release_u32(&r->state, 0);
	}
	bus_track_pub(bus, pub, false);
	route_ctx_free(&pub->route);
	free(pub->unrouted);
	free(pub->last_event);
	free(pub);
}

static uint32_t slots_for(const shmbus_bus_t *bus, uint32_t bytes)
{
	uint32_t size = 1u << bus->slot_size_shift;
	return (bytes + size - 1) >> bus->slot_size_shift;
}

/* A command or query that matched no subscription, on a bus that wants
 * those dead-lettered: keep a copy (the slot is reusable the moment it is
 * committed) to append once routing is over. */
static void keep_unrouted(shmbus_pub_t *pub, const struct seg_event *ev)
{
	if (!(pub->bus->hdr->flags & SEG_HDR_DEAD_LETTER_UNROUTED) ||
	    (ev->type != SHMBUS_COMMAND && ev->type != SHMBUS_QUERY))
		return;
	if (pub->nunrouted == pub->unrouted_cap) {
		size_t nc = pub->unrouted_cap ? pub->unrouted_cap * 2 : 8;
		shmbus_event_t **v = realloc(pub->unrouted, nc * sizeof *v);
		if (!v)
			return; /* counted nowhere: no memory to say more */
		pub->unrouted = v;
		pub->unrouted_cap = nc;
	}
	if (shmbus_event_copy((const shmbus_event_t *)(const void *)ev, &pub->unrouted[pub->nunrouted]) == 0)
		pub->nunrouted++;
}

/* Append the kept copies to the dead-letter log, outside the routing pass
 * (an append syncs a file): one append, and one sync, for each 64 of them
 * (letters on the stack, no allocation). */
static void flush_unrouted(shmbus_pub_t *pub)
{
	enum { CHUNK = 64 };
	struct dlq_entry_in in = {.reason = SHMBUS_DEAD_NO_SUBSCRIBER};
	struct dlq_letter letters[CHUNK];
	for (size_t from = 0; from < pub->nunrouted; from += CHUNK) {
		size_t k = pub->nunrouted - from < CHUNK ? pub->nunrouted - from : CHUNK;
		for (size_t i = 0; i < k; i++)
			letters[i] = (struct dlq_letter){.ev = pub->unrouted[from + i], .in = &in};
		int n = dlq_append_letters(pub->bus, letters, k);
		if (n > 0)
			at_count_u64(&pub->bus->hdr->retired_dead_lettered, (uint64_t)n);
	}
	for (size_t i = 0; i < pub->nunrouted; i++)
		shmbus_event_free(pub->unrouted[i]);
	pub->nunrouted = 0;
}

/* Route written events (see route_events) and keep a copy of each that
 * matched nobody when the bus dead-letters those. */
static void route_written(shmbus_pub_t *pub, struct route_item *items, size_t n, uint64_t *wake)
{
	route_events(pub, items, n, wake);
	for (size_t i = 0; i < n; i++)
		if (!items[i].matched) /* dropped from a full queue is not "no subscriber" */
			keep_unrouted(pub, items[i].ev);
}

/* Commit one routed event: holder words, then COMMITTED. Returns whether
 * nobody holds it: the slot is reusable at once, and a publisher may be
 * waiting for it. Inlined: a batch commits each of its events with it. */
static inline __attribute__((always_inline)) bool commit_routed(shmbus_bus_t *bus, struct seg_event *ev, uint64_t seq,
								const uint64_t *hold, bool mark_event)
{
	/* all four words: an aborted claim may have left bits of a commit
	 * that never happened */
	_Static_assert(SEG_HOLDER_WORDS == 4, "commit_routed stores four holder words");
	uint64_t *h = bus_slot_holders(bus, seq);
	at_store_relaxed_u64(&h[0], hold[0]);
	at_store_relaxed_u64(&h[1], hold[1]);
	at_store_relaxed_u64(&h[2], hold[2]);
	at_store_relaxed_u64(&h[3], hold[3]);
	CRASH_POINT("commit.holders");
	at_store_release_u64(bus_slot_ctl(bus, seq), seg_ctl_make(bus_lap(bus, seq), SEG_SLOT_COMMITTED, 0));
	CRASH_POINT("commit.committed");
	/* The same news in the event's own first cache line, which every
	 * reader fetches anyway: most never need to look at the control word. */
	if (mark_event)
		at_store_release_u8(&ev->committed, 1);
	CRASH_POINT("commit.byte");
	return !(hold[0] | hold[1] | hold[2] | hold[3]);
}

/*
 * SHMBUS_PUB_LOW_LATENCY, after a single event ev of `bytes` bytes is
 * committed, for its first HAND_OFF_MAX bytes:
 * - its lines go to the shared cache (at_demote, where the CPU has
 *   CLDEMOTE). A consumer that waits
 *   for the event takes its descriptor's cell from this core and then its
 *   lines: from this core's cache they cost it another snoop of a
 *   modified line each, from the shared cache a hit. Called after
 *   routing_end: the push's locked instruction, or the fence, has drained
 *   the stores before the push; those after it (a low-latency event's ids
 *   and times, the commit's, its `committed` byte in the third line) may
 *   still be on their way when the hints come, which costs those lines'
 *   hints at worst. Never by
 *   batches, whose next events follow at once and pay for every demoted
 *   line (a batched publisher's cost per event nearly doubled with it).
 *   Reads nothing: the event may be released and its slot reused
 *   meanwhile, and demoting a line of another event is harmless;
 * - the lines of the slot the next single event takes from this
 *   publisher's lease are fetched for writing while the caller waits for
 *   an answer. Last read by a consumer a lap ago, they would otherwise
 *   come over one by one as that event is written, and its push's locked
 *   instruction would wait for them (interleaved runs: a spin round trip
 *   1.3 % shorter). Only the lease's slot: it is this publisher's until it
 *   is used or taken away (whose taker then finds the lines here, no harm
 *   done), where any other position may be another publisher's.
 */
#define HAND_OFF_MAX 1024u
static void hand_off_single(const shmbus_pub_t *pub, const struct seg_event *ev, uint32_t bytes)
{
	if (bytes > HAND_OFF_MAX)
		bytes = HAND_OFF_MAX;
	if (shm_cpu_has_cldemote)
		for (uint32_t off = 0; off < bytes; off += 64)
			at_demote((const uint8_t *)ev + off);
	if (!slots_lease_ready(pub))
		return;
	const uint8_t *next = bus_slot_data(pub->bus, pub->lease_next);
	for (uint32_t off = 0; off < bytes; off += 64)
		at_prefetch_write(next + off);
}

/*
 * A single publish that will take its slot from its lease fetches the
 * slot's lines for writing first thing, so that the fetch overlaps with
 * the cache check and the claim instead of holding up the push. The
 * previous publish fetched them when it was done (hand_off_single), but by
 * now a consumer has most likely taken them back: in a spin ping-pong,
 * with those lines fetched again here, the round trip fell from 996 to
 * 920 ns (12 interleaved runs each), and a full fence after the event's
 * stores had waited about 100 ns for them before. The likely taker is the
 * hardware prefetcher of the consumer's core, which follows its reads of
 * the previous event into the slots after it. The event's length is not
 * known yet: the cached event's is the guess (a few lines too many or too
 * few cost nothing but a prefetch or a miss).
 */
static inline void fetch_lease_slot(const shmbus_pub_t *pub, const shmbus_msg_t *msg)
{
	const struct event_cache *c = pub->last_event;
	uint64_t bytes = (c->valid ? c->head.ev.payload_off : SEG_EVENT_FIXED) + (uint64_t)msg->payload_len;
	if (bytes > HAND_OFF_MAX)
		bytes = HAND_OFF_MAX;
	const uint8_t *next = bus_slot_data(pub->bus, pub->lease_next);
	for (uint32_t off = 0; off < bytes; off += 64)
		at_prefetch_write(next + off);
}

/* The time of an event at pos claimed at ticks (pub_clock_ticks), into
 * *now, and its id. */
static inline struct id_words read_clock(shmbus_pub_t *pub, uint64_t pos, uint64_t ticks, uint64_t *now)
{
	*now = pub_clock_now_at(&pub->clock, ticks);
	return uuid_v7_words(*now / 1000000, pub->bus->hdr->incarnation, pos);
}

/* Only this publisher writes its counters: no locked instruction needed. */
static inline void count_published(shmbus_pub_t *pub, uint64_t n, uint64_t bytes)
{
	struct seg_pub *r = pub->rec;
	at_store_relaxed_u64(&r->published, at_load_relaxed_u64(&r->published) + n);
	at_store_relaxed_u64(&r->publish_bytes, at_load_relaxed_u64(&r->publish_bytes) + bytes);
}

/*
 * The routing word odd, then the store-load fence that orders it before
 * the loads of the routing pass (masks, filters, route_epoch): the
 * publisher's half of the handshake whose other half is a subscription
 * change's grace period (sub_wait_routing_grace: change, fence, read the
 * routing words). The change is rare and every publish runs this, so
 * where this process answers membarrier's heavy fence (asym_ok) and no
 * member of the bus has said it cannot issue one (route_fence), the
 * fence is the light one, a compiler barrier, and the grace period pays
 * with a membarrier. Otherwise it is a full fence.
 */
void routing_begin(shmbus_pub_t *pub)
{
	at_store_relaxed_u64(&pub->rec->routing, pub->rec->routing | 1);
	if (routing_fence_light(pub))
		asym_fence_light();
	else
		at_fence_seq_cst();
	CRASH_POINT("routing.begun");
}

/* Not routing after all (the claim failed, or it waits for space). */
void routing_abort(shmbus_pub_t *pub)
{
	at_store_release_u64(&pub->rec->routing, (pub->rec->routing | 1) + 1);
}

/*
 * The end of a routing pass: the fence, the wake-ups, the routing word
 * even. The fence orders what the pass made visible before the looks at
 * who sleeps: the pushes before each woken subscription's `sleepers` (a
 * sleeper raises it, fences, then looks at its queues), and with freed
 * the commit before `space_waiters`. freed: an event went to nobody. Its
 * slot became reusable without a release, the only path that wakes
 * publishers waiting for space: a waiter that saw it CLAIMED (or not yet
 * marked) and sleeps is woken here, after the fence, instead of a reclaim
 * interval later.
 *
 * pushed_locked: every push of the pass was one locked instruction that
 * made its cell FULL, itself a full fence on x86. A single event's pass
 * (route_event) pushes only through queue_push_cells, which does so
 * exactly where queue_push_one_cas() (CMPXCHG16B, not under TSan): its
 * callers pass that. The pushes' order before the looks at `sleepers` is
 * then there already, and without freed the fence is left out: on the
 * README's AMD guest a fence costs about 5 ns, and a single publish is on
 * every request/response round trip. This holds because a sleeper judges
 * its queues by their cells, which only the locked push makes FULL: the
 * tail hint stored after it is no sign of an event to anybody who may
 * sleep (consume.c urgent_ready), and a consumer that finds a FULL cell
 * whose event is not committed yet waits for the commit in slot_settle,
 * never sleeping on it.
 */
static inline __attribute__((always_inline)) void routing_end(shmbus_pub_t *pub, const uint64_t *wake, bool freed,
								bool pushed_locked)
{
	CRASH_POINT("end.before_fence");
	if (freed || !pushed_locked)
		at_fence_seq_cst();
	if (freed)
		slots_wake_waiters(pub->bus);
	route_wake_set(pub->bus, wake);
	CRASH_POINT("end.woken");
	at_store_release_u64(&pub->rec->routing, (pub->rec->routing | 1) + 1);
}

/* One message of a copy publish: the slots its event takes, and the
 * index of the lay[] entry of its shape (its own, or that of the first
 * message of a run of its shape: the others' entries stay unset). */
struct batch_msg {
	uint32_t slots;
	uint32_t shape;
};

/* Whether pub may publish a copy now: 0, or -errno. Inlined: a single
 * publish pays for a call to it otherwise. */
static inline __attribute__((always_inline)) int publish_check(const shmbus_pub_t *pub)
{
	int rc;
	if (!pub)
		return shmbus__fail(EINVAL, "publisher is NULL");
	if ((rc = bus_check_usable(pub->bus)) < 0)
		return rc;
	if (pub->claim_open)
		return shmbus__fail(EBUSY, "a zero-copy claim is open: commit or abort it first");
	return 0;
}

/*
 * publish_one - publish one message (msg not NULL; publish_check passed):
 * written, routed and committed with none of the batch machinery, since
 * every instruction here is on a request/response round trip. A message
 * that encodes as the publisher's last one (the usual case) is written as
 * a copy of it (event_cache_hit); any other is laid out, and cached for
 * the next call. Returns 0 or -errno; the id in *id_out if not NULL.
 */
static int publish_one(shmbus_pub_t *pub, const shmbus_msg_t *msg, shmbus_uuid_t *id_out, uint16_t lib_flags)
{
	int rc;
	shmbus_bus_t *bus = pub->bus;
	if (msg->payload_len && !msg->payload)
		return shmbus__fail(EINVAL, "the message has a payload length but no payload");
	/* The claim word was most likely written last by another publisher:
	 * its transfer overlaps with the work below. A claim from the lease
	 * needs no claim word, but the slot's lines. */
	if (!slots_lease_ready(pub))
		at_prefetch_write(&bus->hdr->claim_pos);
	else
		fetch_lease_slot(pub, msg);
	uint32_t max_payload = bus->hdr->max_payload;
	struct event_cache *cache = pub->last_event;
	struct event_layout lay;
	bool cached = event_cache_hit(cache, msg, lib_flags);
	if (cached) {
		if ((rc = event_check_payload(msg->payload_len, max_payload)) < 0)
			return rc;
	} else {
		if ((rc = event_layout(msg, pub->source, pub->source_len, msg->payload_len, max_payload, &lay)) < 0)
			return rc;
		lay.lib_flags = lib_flags;
		if (!msg->source)
			lay.source_hash = pub->source_hash;
		cached = event_cache_fill(cache, msg, &lay);
	}
	uint32_t head = cached ? cache->head.ev.payload_off : lay.payload_off;
	uint32_t slots = slots_for(bus, head + (uint32_t)msg->payload_len);
	if (slots > bus->nslots / 2) /* only with a corrupt max_payload */
		return shmbus__fail(EMSGSIZE, "the event needs %u slots, more than half the ring (%u)", slots,
				    bus->nslots / 2);
	uint64_t pos, ticks = pub_clock_ticks(); /* the lease's age and the event's time */
	/* before the claim, as in publish_many */
	routing_begin(pub);
	if ((rc = slots_claim(pub, slots, slots, msg->priority >= SHMBUS_PRIORITY_HIGH, &ticks, &pos)) < 0) {
		routing_abort(pub);
		return rc;
	}
	uint64_t now = 0, wake[SEG_MASK_WORDS] = {0}, hold[SEG_HOLDER_WORDS] = {0};
	struct seg_event *ev = (struct seg_event *)bus_slot_data(bus, pos);
	struct id_words id = {0, 0};
	/* A low-latency publisher's cached event gets its id and times
	 * after its push (every event whose bytes before the payload fit the
	 * cache, 512, the first of its shape included: it was cached just
	 * above): the work (pub_clock.h: a multiply of the counter read
	 * above, the real clock's ordered read at times) then
	 * overlaps with the push's cell crossing to the consumer, who reads
	 * the event only once committed below, instead of holding
	 * the push up (spin ping-pong: 932 against 982 and 920 against 956 ns,
	 * 16 interleaved runs each way). Not for a stream: a consumer close
	 * behind has fetched the event's first lines by then, and the stores
	 * must fetch them back (single 32-byte publishes: 2.14 against 2.96 M
	 * events/s, 10 interleaved runs each). */
	bool late = cached && pub->low_latency;
	if (!late)
		id = read_clock(pub, pos, ticks, &now);
	if (!cached) {
		event_write(ev, msg, &lay, msg->payload_len, pos, id, now);
	} else {
		event_write_cached(ev, cache, msg->payload_len, pos);
		if (!late)
			event_put_own(ev, msg, id, now);
	}
	copy_short((uint8_t *)ev + head, msg->payload, msg->payload_len);
	CRASH_POINT("one.written");
	unsigned routed = route_event(pub, ev, pos, hold, wake);
	if (late) {
		id = read_clock(pub, pos, ticks, &now);
		event_put_own(ev, msg, id, now);
	}
	if (routed == 0)
		keep_unrouted(pub, ev);
	CRASH_POINT("one.routed");
	bool freed = commit_routed(bus, ev, pos, hold, true);
	routing_end(pub, wake, freed, queue_push_one_cas());
	if (pub->low_latency)
		hand_off_single(pub, ev, head + (uint32_t)msg->payload_len);
	count_published(pub, 1, msg->payload_len);
	if (pub->nunrouted)
		flush_unrouted(pub);
	if (id_out)
		id_words_put(id_out->bytes, id);
	return 0;
}

/* The bytes before the payload of a run of one shape, in private memory. */
union event_template {
	struct seg_event ev;
	uint64_t bytes[EVENT_CACHE_BYTES / 8];
};

/*
 * Write the events [from, to) of a batch (publish_many's first pass over a
 * window) at *seq on, adding their payload bytes to *bytes; *like is the
 * event the next one of the same shape is copied from (tmpl, or an event
 * of this window). Each event after the first of a run of one shape is a
 * copy of tmpl, or of the event before it when its bytes before the
 * payload do not fit tmpl; with stream, those copied from tmpl are
 * streamed whole (event_write_streamed; rt[i].streamed), and the caller
 * fences before anything reads them. stream is a constant at each call:
 * each way is compiled on its own, and the loop of ordinary stores
 * carries no test of it.
 */
static inline __attribute__((always_inline)) void write_window(shmbus_bus_t *bus, const shmbus_msg_t *msgs,
							       const struct event_layout *lay,
							       const struct batch_msg *bm, struct route_item *rt,
							       size_t from, size_t to, uint64_t pos, uint64_t now,
							       struct seg_event *tmpl, uint64_t *seq, uint64_t *bytes,
							       const struct seg_event **like, const bool stream)
{
	uint64_t incarnation = bus->hdr->incarnation;
	for (size_t i = from; i < to; i++) {
		const shmbus_msg_t *m = &msgs[i];
		struct seg_event *ev = (struct seg_event *)bus_slot_data(bus, *seq);
		const struct event_layout *shape = &lay[bm[i].shape];
		if (*seq != pos && bm[i].slots > 1) /* a later event of a batch: its head stays CLAIMED */
			slots_free_body(bus, *seq, bm[i].slots);
		/* a copy only of an event of this window: those of earlier
		 * windows are committed, and may be released and reused */
		bool like_prev = i > from && bm[i].shape == bm[i - 1].shape;
		/* from the private template only: an event copied from the one
		 * before it in the ring would read lines just streamed */
		bool streamed = SHM_HAVE_STREAM && stream && like_prev && *like == tmpl;
#if SHM_HAVE_STREAM
		if (streamed) {
			event_write_streamed(ev, *like, shape, m->payload, m->payload_len, *seq, !m->correlation_id);
		} else
#endif
		if (like_prev) {
			event_write_like(ev, *like, shape, m->payload_len, *seq, !m->correlation_id);
		} else {
			struct id_words id = uuid_v7_words(now / 1000000, incarnation, *seq);
			/* The events that follow in its shape copy the bytes
			 * before the payload from private memory: read back from
			 * the ring, they would wait for the lines this store sends
			 * for (see event_write_like). */
			bool followed = i + 1 < to && bm[i + 1].shape == bm[i].shape;
			if (followed && shape->payload_off <= sizeof(union event_template)) {
				event_write(tmpl, m, shape, m->payload_len, *seq, id, now);
				event_write_like(ev, tmpl, shape, m->payload_len, *seq, !m->correlation_id);
				*like = tmpl;
			} else {
				event_write(ev, m, shape, m->payload_len, *seq, id, now);
				*like = ev;
			}
		}
		if (!streamed) /* else written with the rest */
			copy_short((uint8_t *)ev + shape->payload_off, m->payload, m->payload_len);
		*bytes += m->payload_len;
		rt[i].ev = ev;
		rt[i].seq = *seq;
		rt[i].like_prev = like_prev;
		rt[i].streamed = streamed;
		*seq += bm[i].slots;
	}
}

static int publish_many(shmbus_pub_t *pub, const shmbus_msg_t *msgs, size_t n, shmbus_uuid_t *ids, uint16_t lib_flags)
{
	int rc;
	if ((rc = publish_check(pub)) < 0)
		return rc;
	if (n == 0)
		return 0;
	if (!msgs || n > INT32_MAX)
		return shmbus__fail(EINVAL, "bad message array");
	if (n == 1)
		return (rc = publish_one(pub, msgs, ids, lib_flags)) < 0 ? rc : 1;
#if SHM_HAVE_STREAM
	/* a call that may stream is timed whole, waits for space included:
	 * what the two ways of writing are compared by (stream_choice.h) */
	bool streamable = pub->stream_batches && n >= STREAM_MIN_WINDOW;
	uint64_t started = streamable ? stream_ticks() : 0;
#endif
	shmbus_bus_t *bus = pub->bus;
	/* The claim word was most likely written last by another publisher:
	 * its transfer overlaps with the layout work below. */
	at_prefetch_write(&bus->hdr->claim_pos);
	struct event_layout lay_stack[BATCH_STACK], *lay = lay_stack;
	struct batch_msg bm_stack[BATCH_STACK], *bm = bm_stack;
	struct route_item rt_stack[BATCH_STACK], *rt = rt_stack;
	void *heap = NULL;
	if (n > BATCH_STACK) {
		/* one allocation for the three arrays, each starting at a
		 * multiple of the next one's alignment */
		_Static_assert(sizeof(struct route_item) % _Alignof(struct event_layout) == 0, "rt then lay");
		_Static_assert(sizeof(struct event_layout) % _Alignof(struct batch_msg) == 0, "lay then bm");
		if (!(heap = malloc(n * (sizeof *rt + sizeof *lay + sizeof *bm))))
			return shmbus__fail(ENOMEM, "out of memory");
		rt = heap;
		lay = (struct event_layout *)(void *)(rt + n);
		bm = (struct batch_msg *)(void *)(lay + n);
	}
	uint32_t max_payload = bus->hdr->max_payload;
	uint64_t total = 0;
	bool urgent = false;
	for (size_t i = 0; i < n; i++) {
		const shmbus_msg_t *m = &msgs[i];
		if (m->payload_len && !m->payload) {
			rc = shmbus__fail(EINVAL, "message %zu has a payload length but no payload", i);
			goto out;
		}
		/* A batch of one kind of message is laid out once. */
		if (i > 0 && event_same_shape_batch(m - 1, m)) {
			if ((rc = event_check_payload(m->payload_len, max_payload)) < 0)
				goto out;
			bm[i].shape = bm[i - 1].shape;
		} else {
			if ((rc = event_layout(m, pub->source, pub->source_len, m->payload_len, max_payload, &lay[i])) < 0)
				goto out;
			lay[i].lib_flags = lib_flags;
			if (!m->source)
				lay[i].source_hash = pub->source_hash;
			bm[i].shape = (uint32_t)i;
			urgent |= m->priority >= SHMBUS_PRIORITY_HIGH;
		}
		bm[i].slots = slots_for(bus, event_size(&lay[bm[i].shape], m->payload_len));
		total += bm[i].slots;
	}
	if (total > bus->nslots / 2) {
		rc = shmbus__fail(EMSGSIZE, "batch needs %llu slots, more than half the ring (%u)",
				  (unsigned long long)total, bus->nslots / 2);
		goto out;
	}
	uint64_t pos;
	/* Routing starts before the claim so that its fence runs with an
	 * empty store buffer; the claim's and the event's stores then reach
	 * their cache lines together instead of one after the other. */
	routing_begin(pub);
	uint64_t ticks = pub_clock_ticks();
	if ((rc = slots_claim(pub, (uint32_t)total, bm[0].slots, urgent, &ticks, &pos)) < 0) {
		routing_abort(pub);
		goto out;
	}
	uint64_t now = pub_clock_now_at(&pub->clock, ticks), wake[SEG_MASK_WORDS] = {0}, bytes = 0, seq = pos;
	uint64_t incarnation = bus->hdr->incarnation;
	bool freed = false;
	union event_template tmpl; /* the bytes before the payload of a run of one shape */
	const struct seg_event *like = NULL;
#if SHM_HAVE_STREAM
	bool streaming = streamable && stream_choose(&pub->stream);
#endif
	/* Three passes over each window of the batch (QUEUE_PUSH_MAX events),
	 * not one event at a time: a consumer that keeps up would otherwise
	 * take each descriptor the moment it is pushed and read the event's
	 * lines while they are still being committed, and every line would
	 * cross between the cores several times. Writing the window's events,
	 * then pushing their descriptors (one run per queue), then committing
	 * them moves each line about once. Descriptors still precede the
	 * commit, as the crash protocol needs; the window bounds how long a
	 * consumer that took the first descriptor waits for its commit. */
	for (size_t from = 0; from < n; from += QUEUE_PUSH_MAX) {
		size_t to = n - from < QUEUE_PUSH_MAX ? n : from + QUEUE_PUSH_MAX;
#if SHM_HAVE_STREAM
		bool stream = streaming && to - from >= STREAM_MIN_WINDOW;
		if (stream)
			write_window(bus, msgs, lay, bm, rt, from, to, pos, now, &tmpl.ev, &seq, &bytes, &like, true);
		else
#endif
			write_window(bus, msgs, lay, bm, rt, from, to, pos, now, &tmpl.ev, &seq, &bytes, &like, false);
#if SHM_HAVE_STREAM
		/* the streamed lines reach memory before the push tells a
		 * consumer, and before routing or a dead letter reads them */
		if (stream)
			stream_fence();
#endif
		CRASH_POINT("batch.written");
		route_written(pub, rt + from, to - from, wake);
		CRASH_POINT("batch.routed");
		for (size_t i = from; i < to; i++) {
			/* a streamed event's lines are not stored to again */
			freed |= commit_routed(bus, (struct seg_event *)rt[i].ev, rt[i].seq, rt[i].hold, !rt[i].streamed);
			/* from the sequence, not the slot: once committed, the event
			 * may be released and its slot reused at any moment */
			if (ids)
				uuid_make_v7(&ids[i], now / 1000000, rt[i].seq, incarnation);
		}
	}
	routing_end(pub, wake, freed, false);
	count_published(pub, n, bytes);
	if (pub->nunrouted)
		flush_unrouted(pub);
#if SHM_HAVE_STREAM
	if (streamable)
		stream_account(&pub->stream, bus->nslots, total, stream_ticks() - started);
#endif
	rc = (int)n;
out:
	free(heap);
	return rc;
}

SHMBUS_API int shmbus_publish(shmbus_pub_t *pub, const shmbus_msg_t *msg, shmbus_uuid_t *id)
{
	int rc = publish_check(pub);
	if (rc < 0)
		return rc;
	if (!msg)
		return shmbus__fail(EINVAL, "message is NULL");
	return publish_one(pub, msg, id, 0);
}

SHMBUS_API int shmbus_publish_batch(shmbus_pub_t *pub, const shmbus_msg_t *msgs, size_t n, shmbus_uuid_t *ids)
{
	return publish_many(pub, msgs, n, ids, 0);
}

/* ------------------------------------------------------------- zero copy */

SHMBUS_API int shmbus_reserve(shmbus_pub_t *pub, const shmbus_msg_t *msg, size_t payload_len, shmbus_claim_t *claim)
{
	int rc;
	if (!pub || !claim)
		return shmbus__fail(EINVAL, "publisher or claim is NULL");
	if ((rc = bus_check_usable(pub->bus)) < 0)
		return rc;
	if (pub->claim_open)
		return shmbus__fail(EBUSY, "a zero-copy claim is already open");
	shmbus_bus_t *bus = pub->bus;
	struct event_layout lay;
	if ((rc = event_layout(msg, pub->source, pub->source_len, payload_len, bus->hdr->max_payload, &lay)) < 0)
		return rc;
	if (!msg->source)
		lay.source_hash = pub->source_hash;
	uint32_t n = slots_for(bus, event_size(&lay, payload_len));
	uint64_t pos, ticks = pub_clock_ticks();
	if ((rc = slots_claim(pub, n, n, msg->priority >= SHMBUS_PRIORITY_HIGH, &ticks, &pos)) < 0)
		return rc;
	struct seg_event *ev = (struct seg_event *)bus_slot_data(bus, pos);
	uint64_t now;
	struct id_words id = read_clock(pub, pos, ticks, &now);
	event_write(ev, msg, &lay, payload_len, pos, id, now);
	pub->claim_open = true;
	pub->claim_pos = pos;
	pub->claim_slots = n;
	claim->payload = (uint8_t *)ev + lay.payload_off;
	claim->payload_len = payload_len;
	claim->seq = pos;
	claim->priv = pub;
	CRASH_POINT("reserve.done");
	return 0;
}

static int claim_check(shmbus_pub_t *pub, const shmbus_claim_t *claim)
{
	if (!pub || !claim)
		return shmbus__fail(EINVAL, "publisher or claim is NULL");
	if (!pub->claim_open || claim->priv != pub)
		return shmbus__fail(EINVAL, "no open claim for this publisher");
	return bus_check_usable(pub->bus);
}

SHMBUS_API int shmbus_commit(shmbus_pub_t *pub, shmbus_claim_t *claim, shmbus_uuid_t *id)
{
	int rc = claim_check(pub, claim);
	if (rc < 0)
		return rc;
	shmbus_bus_t *bus = pub->bus;
	struct seg_event *ev = (struct seg_event *)bus_slot_data(bus, pub->claim_pos);
	uint64_t wake[SEG_MASK_WORDS] = {0};
	ev->published_ns = pub_clock_now(&pub->clock);
	if (id)
		memcpy(id, ev->id, sizeof *id);
	uint64_t hold[SEG_HOLDER_WORDS] = {0};
	uint32_t payload_len = ev->payload_len, size = ev->size; /* once committed, the slot may be reused */
	routing_begin(pub);
	if (route_event(pub, ev, pub->claim_pos, hold, wake) == 0)
		keep_unrouted(pub, ev);
	CRASH_POINT("zc.routed");
	bool freed = commit_routed(bus, ev, pub->claim_pos, hold, true);
	routing_end(pub, wake, freed, queue_push_one_cas());
	if (pub->low_latency)
		hand_off_single(pub, ev, size);
	count_published(pub, 1, payload_len);
	if (pub->nunrouted)
		flush_unrouted(pub);
	pub->claim_open = false;
	claim->priv = NULL;
	return 0;
}

SHMBUS_API int shmbus_abort(shmbus_pub_t *pub, shmbus_claim_t *claim)
{
	int rc = claim_check(pub, claim);
	if (rc < 0)
		return rc;
	shmbus_bus_t *bus = pub->bus;
	at_store_release_u64(bus_slot_ctl(bus, pub->claim_pos),
			     seg_ctl_make(bus_lap(bus, pub->claim_pos), SEG_SLOT_ABORTED, 0));
	slots_wake_waiters(bus); /* the slot is reusable now */
	at_count_u64(&bus->hdr->aborted_claims, 1);
	pub->claim_open = false;
	claim->priv = NULL;
	return 0;
}

/* ------------------------------------------------------ the five types */

static shmbus_msg_t json_msg(shmbus_type_t type, const char *name, const char *json, const char *target)
{
	shmbus_msg_t m = {
		.type = type,
		.name = name,
		.target = target,
		.content_type = SHMBUS_CONTENT_JSON,
		.payload = json,
		.payload_len = json ? strlen(json) : 0,
	};
	return m;
}

SHMBUS_API int shmbus_publish_command(shmbus_pub_t *pub, const char *name, const char *params_json, const char *target,
				      shmbus_uuid_t *id)
{
	shmbus_msg_t m = json_msg(SHMBUS_COMMAND, name, params_json, target);
	return shmbus_publish(pub, &m, id);
}

SHMBUS_API int shmbus_publish_notification(shmbus_pub_t *pub, const char *name, const char *data_json, shmbus_uuid_t *id)
{
	shmbus_msg_t m = json_msg(SHMBUS_NOTIFICATION, name, data_json, NULL);
	return shmbus_publish(pub, &m, id);
}

SHMBUS_API int shmbus_publish_query(shmbus_pub_t *pub, const char *name, const char *params_json, const char *target,
				    shmbus_uuid_t *id)
{
	shmbus_msg_t m = json_msg(SHMBUS_QUERY, name, params_json, target);
	return shmbus_publish(pub, &m, id);
}

SHMBUS_API int shmbus_publish_response(shmbus_pub_t *pub, const shmbus_event_t *query, const char *data_json,
				       bool success, shmbus_uuid_t *id)
{
	if (!query)
		return shmbus__fail(EINVAL, "response needs the query event");
	const char *target = shmbus_event_source(query);
	shmbus_msg_t m = json_msg(SHMBUS_RESPONSE, shmbus_event_name(query), data_json, target[0] ? target : NULL);
	m.correlation_id = shmbus_event_correlation_id(query);
	m.causation_id = shmbus_event_id(query);
	m.conversation_id = shmbus_event_conversation_id(query)[0] ? shmbus_event_conversation_id(query) : NULL;
	m.user_id = shmbus_event_user_id(query)[0] ? shmbus_event_user_id(query) : NULL;
	m.intent = shmbus_event_intent(query)[0] ? shmbus_event_intent(query) : NULL;
	int rc = publish_check(pub);
	return rc < 0 ? rc : publish_one(pub, &m, id, success ? SEG_EVF_SUCCESS : SEG_EVF_FAILURE);
}

SHMBUS_API int shmbus_publish_error(shmbus_pub_t *pub, const char *code, const char *message,
				    const shmbus_uuid_t *source_event_id, const char *details_json, shmbus_uuid_t *id)
{
	shmbus_meta_t meta = {.key = "message", .value = message};
	shmbus_msg_t m = json_msg(SHMBUS_ERROR, code, details_json, NULL);
	m.priority = SHMBUS_PRIORITY_HIGH;
	m.causation_id = source_event_id;
	m.correlation_id = source_event_id;
	if (message) {
		m.metadata = &meta;
		m.metadata_count = 1;
	}
	return shmbus_publish(pub, &m, id);
}
