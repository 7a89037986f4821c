/*
 * recorder.c - the recorder: one per bus, appends every committed event to
 * the log in sequence order, each exactly once, and publishes how far the
 * log is written and durable.
 *
 * It is a durable `block` subscription matching everything, but it does
 * not record in delivery order (urgent events overtake, handed-back events
 * are re-queued at the tail, concurrent publishers push out of order).
 * It walks the ring by position instead, from where the log ends:
 *
 *   COMMITTED head   copy the event into the log, then check that the slot
 *                    was not reused while copying (control word unchanged,
 *                    and our holder bit still set or the claim position not
 *                    a lap past it): a seqlock read, since a slot we hold
 *                    cannot be reused and one we do not hold is caught
 *   CLAIMED head     its publisher is writing: wait (reclaim aborts it if
 *                    the publisher died)
 *   ABORTED head     skip it and the unreached positions of its claim
 *   older lap        claimed but not marked yet: wait; after two reclaim
 *                    timeouts without change (a dead claimer, whose
 *                    positions reclaim aborts), skip them
 *   newer lap        overwritten before we got there: missed
 *
 * The descriptors it is delivered only keep the slots held (holder bits)
 * until the walk has passed them; then they are released. On restart the
 * walk resumes after the last complete record, and descriptors of events
 * already in the log are released unread: nothing is written twice.
 *
 * Nothing is lost either, because of one ordering: records are staged in
 * the log writer's private memory, and die with the process, until
 * log_writer_publish writes them to the file, at the end of walk(). Every
 * release of a hold - release_passed, take_one, sub_drop_queued in
 * take_descriptors, all bounded by r->next - runs after walk() has
 * returned, so a hold is dropped only once its event's bytes are in the
 * page cache, where a kill -9 cannot take them. A failed write puts
 * r->next back to where the written records end (r->written): the holds
 * past it stay, and those events are copied again.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "futex.h"
#include "liveness.h"
#include "log.h"
#include "log_sync.h"
#include "slots.h"

#define RECORDER_ID SUB_RECORDER_ID
#define REC_HELD 32	 /* descriptors kept while the walk catches up */
#define REC_RUN 64	 /* heads copied before one validation */
#define REC_TAKE 1024	 /* descriptors taken per pass */
#define REC_BUDGET 4096 /* positions walked per pass */

struct shmbus_recorder {
	shmbus_bus_t *bus;
	shmbus_sub_t *sub;
	struct log_writer w;
	struct log_sync sync;
	shmbus_sync_t level;
	uint64_t batch_ns;
	int stop;
	uint64_t next;	       /* next position to record */
	uint64_t written;      /* r->next when the log writer last wrote what it had */
	bool skip_old;	       /* past an aborted or lost head: old-lap positions are its leftovers */
	uint64_t stuck_pos, stuck_since;
	const shmbus_event_t *held[REC_HELD];
	uint32_t nheld;
	uint64_t durable, last_sync_ns;
	shmbus_recorder_stats_t stats;
};

static void publish_progress(shmbus_recorder_t *r)
{
	struct seg_header *h = r->bus->hdr;
	at_store_release_u64(&h->log_next, r->next);
	if (r->durable > at_load_acquire_u64(&h->log_durable)) {
		at_store_release_u64(&h->log_durable, r->durable);
		at_fence_seq_cst();
		if (at_load_u32_sc(&h->log_waiters) && at_exchange_u32(&h->log_waiters, 0)) {
			at_fetch_add_u32(&h->log_futex, 1);
			futex_wake_shared(&h->log_futex, 1 << 30);
		}
	}
}

/* Advance durability as the sync level says. 0 or -errno. */
static int sync_step(shmbus_recorder_t *r, bool final)
{
	uint64_t written = r->next;
	int rc = 0;
	switch (r->level) {
	case SHMBUS_SYNC_NONE:
		r->durable = written;
		break;
	case SHMBUS_SYNC_ALWAYS:
		if (written > r->durable) {
			if ((rc = log_sync_start(&r->sync, r->w.seg.fd, written)) == 0 && r->sync.inflight)
				rc = log_sync_poll(&r->sync, true);
			if (rc >= 0)
				r->durable = written;
		}
		break;
	default: {
		if ((rc = log_sync_poll(&r->sync, final)) > 0)
			r->durable = r->sync.done;
		uint64_t now = now_mono_ns();
		if (rc >= 0 && written > r->durable && !r->sync.inflight &&
		    (final || now - r->last_sync_ns >= r->batch_ns)) {
			r->last_sync_ns = now;
			if ((rc = log_sync_start(&r->sync, r->w.seg.fd, written)) == 0) {
				if (r->sync.inflight && final && (rc = log_sync_poll(&r->sync, true)) > 0)
					rc = 0;
				if (!r->sync.inflight)
					r->durable = r->sync.done;
			}
		}
		break;
	}
	}
	if (rc < 0)
		return shmbus__fail(-rc, "log of bus '%s': sync failed: %s", r->bus->name, strerror(-rc));
	r->stats.syncs = r->sync.syncs;
	publish_progress(r);
	return 0;
}

static void lost(shmbus_recorder_t *r, uint64_t p)
{
	r->stats.missed++;
	r->skip_old = true;
	r->next = p + 1;
}

/* The log writer failed to write committed records: forget what it had
 * not written, as a crash would, and walk on from the end of the log as
 * the file has it (never before r->written: what lies between was missed
 * or was not for the log, and its holds are gone). rc returned. */
static int unwrite(shmbus_recorder_t *r, int rc)
{
	int rc2 = log_writer_reopen(&r->w, 1u << r->bus->slot_size_shift);
	r->next = r->written;
	if (rc2 == 0 && r->w.has_records && r->w.next_pos > r->next)
		r->next = r->w.next_pos;
	return rc2 < 0 ? rc2 : rc;
}

/* One head of a run copied (or, for a DIRECTED copy, looked at) before
 * the run is validated. */
struct rec_copy {
	uint64_t pos, ctl;
	uint8_t *dst; /* NULL: DIRECTED, not recorded */
	uint32_t size, slots;
	bool seq_ok; /* DIRECTED: the ring said its seq is pos */
};

/*
 * copy_run - copy the COMMITTED heads from r->next on into reserved log
 * room, up to REC_RUN of them, stopping before the first head that is not
 * a plausible COMMITTED event of this lap (walk_step deals with it), at
 * claim, or where the open segment is full. Nothing read here is trusted
 * yet: a slot may be reused while it is copied; validate_run decides.
 * Returns how many heads (0: the walk must step), or -errno.
 */
static int copy_run(shmbus_recorder_t *r, uint64_t claim, struct rec_copy *run)
{
	shmbus_bus_t *bus = r->bus;
	uint64_t p = r->next;
	uint32_t n = 0;
	if (claim > bus->nslots && p < claim - bus->nslots)
		return 0; /* a lap behind: walk_step skips to the ring's oldest */
	while (n < REC_RUN && p < claim) {
		uint64_t c = at_load_acquire_u64(bus_slot_ctl(bus, p));
		if (seg_ctl_lap(c) != bus_lap(bus, p) || seg_ctl_state(c) != SEG_SLOT_COMMITTED)
			break;
		const struct seg_event *ev = (const struct seg_event *)(const void *)bus_slot_data(bus, p);
		uint32_t size = __atomic_load_n(&ev->size, __ATOMIC_RELAXED);
		if (size < SEG_EVENT_FIXED || size > bus->max_event_bytes)
			break;
		struct rec_copy *e = &run[n];
		e->pos = p;
		e->ctl = c;
		e->size = size;
		e->slots = log_slots_for(bus, size);
		e->dst = NULL;
		if (__atomic_load_n(&ev->flags, __ATOMIC_RELAXED) & SEG_EVF_DIRECTED) {
			e->seq_ok = __atomic_load_n(&ev->seq, __ATOMIC_RELAXED) == p;
		} else {
			int rc;
			if (!(e->dst = log_writer_reserve(&r->w, p, e->slots, size, &rc))) {
				if (rc < 0)
					return rc;
				break; /* the segment is full: commit this run, roll on the next */
			}
			event_copy_committed(e->dst, ev, size);
		}
		n++;
		p += e->slots;
	}
	return (int)n;
}

/*
 * validate_run - keep the copies of a run that are the events the walk
 * saw, in order, up to the first that is not. One fence and one load of
 * claim_pos serve the whole run (a seqlock read): a copy stands if its
 * control word is unchanged and either claim_pos has not passed its
 * position by a lap (nothing of the slot can have been claimed again, since
 * a claim moves claim_pos before it writes) or our holder bit is still set
 * (a held slot cannot be reused). The first copy that fails is counted
 * missed and the rest of the run is dropped unsealed; the walk goes on
 * after it and copies the rest again. The records are sealed in the log
 * writer's staging copy; walk() writes them.
 */
static void validate_run(shmbus_recorder_t *r, const struct rec_copy *run, uint32_t n)
{
	shmbus_bus_t *bus = r->bus;
	uint32_t me = (uint32_t)(shmbus_sub_id(r->sub) & 0xFFFF);
	at_fence_seq_cst();
	uint64_t claim = at_load_acquire_u64(&bus->hdr->claim_pos);
	for (uint32_t k = 0; k < n; k++) {
		const struct rec_copy *e = &run[k];
		bool stable = at_load_acquire_u64(bus_slot_ctl(bus, e->pos)) == e->ctl &&
			      (claim <= e->pos + bus->nslots || slot_held_by(bus, e->pos, me));
		struct seg_event *copy = (struct seg_event *)(void *)e->dst;
		const char *why;
		if (!stable || (copy ? copy->size != e->size || copy->seq != e->pos ||
					       seg_event_check(copy, e->size, &why) < 0
				     : !e->seq_ok)) {
			log_writer_discard(&r->w); /* this copy and the ones after it */
			lost(r, e->pos);	   /* reused under us, or corrupt */
			break;
		}
		r->skip_old = false;
		r->next = e->pos + e->slots;
		if (!copy)
			continue; /* a copy for one subscription, not an event of the bus */
		copy->committed = 1;
		log_writer_commit(&r->w, e->pos, e->slots, e->size);
		r->stats.recorded++;
		r->stats.bytes += log_rec_size(e->size);
	}
}

/* One step of the walk at r->next, where copy_run stopped. 1 moved, 0
 * wait, -errno. */
static int walk_step(shmbus_recorder_t *r, uint64_t claim)
{
	shmbus_bus_t *bus = r->bus;
	uint64_t p = r->next;
	if (claim > bus->nslots && p < claim - bus->nslots) {
		r->stats.missed++; /* a lap behind: all of it is overwritten */
		r->next = claim - bus->nslots;
		r->skip_old = true;
		return 1;
	}
	uint64_t c = at_load_acquire_u64(bus_slot_ctl(bus, p));
	uint64_t lap = bus_lap(bus, p), clap = seg_ctl_lap(c);
	uint64_t lapmask = (1ull << (64 - SEG_CTL_LAP_SHIFT)) - 1;
	if (clap != lap) {
		if (((clap - lap) & lapmask) < (lapmask >> 1)) {
			lost(r, p); /* a newer lap: overwritten */
			return 1;
		}
		if (r->skip_old) {
			r->next = p + 1;
			return 1;
		}
		/* older lap: claimed, not marked yet (every head of a batch is
		 * marked at its claim), or its claimer died in between */
		uint64_t now = now_mono_ns();
		if (r->stuck_pos != p) {
			r->stuck_pos = p;
			r->stuck_since = now;
		} else if (now - r->stuck_since > 2 * bus->hdr->reclaim_timeout_ns) {
			r->skip_old = true;
			r->next = p + 1;
			return 1;
		}
		return 0;
	}
	if (seg_ctl_leased(c)) {
		/* an unused position of a publisher's claim lease: it may never
		 * be used, so take it away rather than wait */
		if (slots_take_lease(bus, p, c)) {
			r->skip_old = true;
			r->next = p + 1;
			return 1;
		}
		/* its publisher has it (look again), or is taking it (wait) */
		return at_load_acquire_u64(bus_slot_ctl(bus, p)) != c;
	}
	switch (seg_ctl_state(c)) {
	case SEG_SLOT_COMMITTED: {
		/* copy_run stopped here on an implausible size: a corrupt event
		 * in the ring, nothing to record, if the word still stands */
		const struct seg_event *ev = (const struct seg_event *)(const void *)bus_slot_data(bus, p);
		uint32_t size = __atomic_load_n(&ev->size, __ATOMIC_RELAXED);
		if (size >= SEG_EVENT_FIXED && size <= bus->max_event_bytes)
			return 0; /* plausible now (it was being reused): look again */
		if (at_load_acquire_u64(bus_slot_ctl(bus, p)) != c)
			return 0;
		lost(r, p);
		return 1;
	}
	case SEG_SLOT_ABORTED:
		r->skip_old = true;
		r->next = p + 1;
		return 1;
	default:
		return 0; /* CLAIMED: being written */
	}
}

/* Walk from r->next towards claim, a run at a time, for at most budget
 * positions, then write what it recorded to the log (one pwrite and one
 * header store for the pass). Returns the positions passed (0: waiting on
 * a writer), or -errno. */
static int64_t walk(shmbus_recorder_t *r, uint64_t claim, uint64_t budget)
{
	struct rec_copy run[REC_RUN];
	uint64_t from = r->next;
	int rc = 0;
	while (r->next < claim && r->next - from < budget) {
		int n = copy_run(r, claim, run);
		if (n < 0) {
			log_writer_discard(&r->w);
			rc = n;
			break;
		}
		if (n > 0) {
			validate_run(r, run, (uint32_t)n);
			continue;
		}
		if ((rc = walk_step(r, claim)) <= 0)
			break;
	}
	/* Before anything can release a hold r->next now passes (see the top
	 * of this file): the caller releases only after this returns. */
	int wrc = log_writer_publish(&r->w);
	if (wrc < 0)
		return unwrite(r, wrc);
	r->written = r->next;
	return rc < 0 ? rc : (int64_t)(r->next - from);
}

/* Release the held descriptors the walk has passed. Newest first: the
 * subscription finds each one at the end of its own list. The kept ones
 * are gathered at the end (below what is still to visit), then moved
 * down in their order. */
static void release_passed(shmbus_recorder_t *r)
{
	uint32_t w = r->nheld;
	for (uint32_t i = r->nheld; i-- > 0;)
		if (shmbus_event_seq(r->held[i]) < r->next)
			shmbus_release(r->sub, r->held[i]);
		else
			r->held[--w] = r->held[i];
	r->nheld -= w;
	memmove(r->held, r->held + w, r->nheld * sizeof r->held[0]);
}

/* A descriptor the subscription delivered: released at once if the walk
 * has passed its event (the usual case: the walk reads the ring directly
 * and runs ahead of the queue), else held until it does. */
static void take_one(shmbus_recorder_t *r, const shmbus_event_t *ev)
{
	if (shmbus_event_seq(ev) < r->next)
		shmbus_release(r->sub, ev);
	else
		r->held[r->nheld++] = ev;
}

/* Take what the queues have, up to a bound per call. Returns how many
 * were taken, or -errno. */
static int take_descriptors(shmbus_recorder_t *r)
{
	const shmbus_event_t *ev;
	int rc = 0, n = 0;
	release_passed(r);
	/* Descriptors of events the walk has passed only keep slots held: drop
	 * their holds in runs, without delivering them one by one (no seen
	 * mark, no event check, no held[] entry). The runs go through our own
	 * take intent, so reclaim finishes them if we die in one. */
	if (r->next && r->nheld == 0)
		n = (int)sub_drop_queued(r->bus, r->sub->index, r->next - 1, &r->sub->cons->take, false);
	while (r->nheld < REC_HELD && n < REC_TAKE && (rc = shmbus_poll(r->sub, &ev)) == 1) {
		take_one(r, ev);
		n++;
	}
	return rc < 0 ? rc : n;
}

SHMBUS_API int64_t shmbus_recorder_run(shmbus_recorder_t *r, int64_t timeout_ns)
{
	if (!r)
		return shmbus__fail(EINVAL, "recorder is NULL");
	int rc = bus_check_usable(r->bus);
	if (rc < 0)
		return rc;
	uint64_t start = now_mono_ns(), before = r->stats.recorded;
	uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : start + (uint64_t)timeout_ns;
	while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
		uint64_t claim = at_load_acquire_u64(&r->bus->hdr->claim_pos);
		int64_t moved = walk(r, claim, REC_BUDGET);
		if (moved < 0)
			return moved;
		int took = take_descriptors(r);
		if (took < 0)
			return took;
		if ((rc = sync_step(r, false)) < 0)
			return rc;
		if (moved || took)
			continue;
		uint64_t now = now_mono_ns();
		if (now >= deadline)
			break;
		uint64_t slice = r->next < claim ? 200000 : 100000000; /* blocked on a writer: look again soon */
		if (r->level == SHMBUS_SYNC_BATCH && (r->sync.inflight || r->durable < r->next) && slice > r->batch_ns)
			slice = r->batch_ns;
		if (slice > deadline - now)
			slice = deadline - now;
		const shmbus_event_t *ev;
		if (r->nheld < REC_HELD) {
			rc = shmbus_wait(r->sub, (int64_t)slice, &ev);
			if (rc == 1)
				take_one(r, ev);
			else if (rc < 0 && rc != -EINTR)
				return rc;
		} else {
			struct timespec ts = {0, (long)(slice < 200000 ? slice : 200000)};
			nanosleep(&ts, NULL);
		}
	}
	return (int64_t)(r->stats.recorded - before);
}

SHMBUS_API void shmbus_recorder_stop(shmbus_recorder_t *r)
{
	if (r)
		__atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
}

static shmbus_sync_t level_of(shmbus_bus_t *bus, shmbus_sync_t asked)
{
	return asked ? asked : shmbus_log_sync(bus);
}

SHMBUS_API int shmbus_recorder_open(shmbus_bus_t *bus, const shmbus_record_opts_t *opts, shmbus_recorder_t **out)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	if (!out)
		return shmbus__fail(EINVAL, "out is NULL");
	shmbus_record_opts_t z = {0};
	if (!opts)
		opts = &z;
	if ((unsigned)opts->sync > SHMBUS_SYNC_ALWAYS)
		return shmbus__fail(EINVAL, "unknown sync level %d", (int)opts->sync);
	struct log_state *st = log_state_get(bus);
	if (!st)
		return -ENOMEM;
	shmbus_recorder_t *r = calloc(1, sizeof *r);
	if (!r)
		return shmbus__fail(ENOMEM, "out of memory");
	pthread_mutex_lock(&st->lock);
	bool mine = st->recorder != NULL;
	if (!mine)
		st->recorder = r; /* reserved for this thread while it waits */
	pthread_mutex_unlock(&st->lock);
	if (mine) {
		free(r);
		return shmbus__fail(EBUSY, "this process is already the recorder of bus '%s'", bus->name);
	}
	r->bus = bus;
	r->w.seg.fd = r->w.seg.idx_fd = -1;
	rc = opts->no_wait ? live_lock(bus->map.fd, SEG_LOCK_RECORDER)
			   : live_lock_wait_or_signal(bus->map.fd, SEG_LOCK_RECORDER);
	if (rc < 0) {
		pthread_mutex_lock(&st->lock);
		st->recorder = NULL;
		pthread_mutex_unlock(&st->lock);
		free(r);
		if (rc == -EAGAIN || rc == -EACCES)
			return shmbus__fail(EBUSY, "bus '%s' has a recorder already (pid %u)", bus->name,
					    at_load_acquire_u32(&bus->hdr->log_recorder_pid));
		if (rc == -EINTR)
			return shmbus__fail(EINTR, "interrupted by a signal while waiting to become the recorder of bus '%s'",
					    bus->name);
		return shmbus__fail(-rc, "waiting to become the recorder of bus '%s': %s", bus->name, strerror(-rc));
	}
	char dir[PATH_MAX];
	if ((rc = log_bus_dir(bus, opts->dir, dir, sizeof dir)) < 0)
		goto fail;
	r->level = level_of(bus, opts->sync);
	r->batch_ns = (uint64_t)(opts->batch_ms ? opts->batch_ms : LOG_DEFAULT_BATCH_MS) * 1000000ull;
	if ((rc = log_writer_open(&r->w, dir, bus->name, bus->hdr->incarnation, 1u << bus->slot_size_shift,
				  opts->segment_bytes, opts->index_positions)) < 0)
		goto fail;
	r->w.sync_on_roll = r->level != SHMBUS_SYNC_NONE;
	r->w.retain_bytes = opts->retain_bytes;
	r->w.retain_ns = opts->retain_ns;
	r->w.retain_force = opts->retain_force;
	r->w.spare = bus;
	log_sync_init(&r->sync);
	/* A new log starts with the oldest event still in the ring: read
	 * before subscribing, so what was published before anyone recorded is
	 * copied from the ring as far as it is still there. */
	uint64_t claim0 = at_load_acquire_u64(&bus->hdr->claim_pos);
	claim0 = claim0 > bus->nslots ? claim0 - bus->nslots : 0;
	shmbus_sub_opts_t so = {.subscriber_id = RECORDER_ID,
				.durable = true,
				.policy = SHMBUS_POLICY_BLOCK,
				.wait = SHMBUS_WAIT_ADAPTIVE,
				.spin_ns = 20000};
	if ((rc = shmbus_subscribe(bus, &so, &r->sub)) < 0)
		goto fail;
	r->next = r->w.has_records ? r->w.next_pos : claim0;
	r->written = r->next;
	r->durable = r->next; /* what the log holds is as durable as it gets */
	if (r->level != SHMBUS_SYNC_NONE)
		log_writer_sync(&r->w);
	at_store_release_u32(&bus->hdr->log_recorder_pid, (uint32_t)getpid());
	publish_progress(r);
	*out = r;
	return 0;
fail:
	log_writer_close(&r->w);
	log_sync_fini(&r->sync);
	live_unlock(bus->map.fd, SEG_LOCK_RECORDER);
	pthread_mutex_lock(&st->lock);
	st->recorder = NULL;
	pthread_mutex_unlock(&st->lock);
	free(r);
	return rc;
}

/*
 * Closing on purpose hands the bus back to publishers: the recorder's
 * subscription goes away, so nobody waits for a recorder that is not
 * coming (a recorder that dies keeps it, and its successor resumes without
 * a gap).
 */
SHMBUS_API void shmbus_recorder_close(shmbus_recorder_t *r)
{
	if (!r)
		return;
	shmbus_bus_t *bus = r->bus;
	if (!bus->orphaned) {
		if (r->w.seg.base)
			sync_step(r, true);
		if (r->level != SHMBUS_SYNC_NONE)
			log_writer_sync(&r->w);
		r->durable = r->next;
		publish_progress(r);
		while (r->nheld)
			shmbus_release(r->sub, r->held[--r->nheld]);
		shmbus_unsubscribe(r->sub);
		at_store_release_u32(&bus->hdr->log_recorder_pid, 0);
		live_unlock(bus->map.fd, SEG_LOCK_RECORDER);
	}
	log_sync_fini(&r->sync);
	log_writer_close(&r->w);
	if (bus->log && bus->log->recorder == r)
		bus->log->recorder = NULL;
	free(r);
}

SHMBUS_API void shmbus_recorder_stats(const shmbus_recorder_t *r, shmbus_recorder_stats_t *out)
{
	if (!r || !out)
		return;
	*out = r->stats;
	out->next_seq = r->next;
	out->durable_seq = r->durable;
	out->segments = r->w.segments_created;
	out->io_uring = r->sync.ring != NULL;
}

SHMBUS_API int shmbus_wait_durable(shmbus_bus_t *bus, uint64_t seq, int64_t timeout_ns)
{
	int rc = bus_check_usable(bus);
	if (rc < 0)
		return rc;
	struct seg_header *h = bus->hdr;
	uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : now_mono_ns() + (uint64_t)timeout_ns;
	for (;;) {
		if (at_load_acquire_u64(&h->log_durable) > seq)
			return 0;
		uint32_t seen = at_load_acquire_u32(&h->log_futex);
		at_exchange_u32(&h->log_waiters, 1);
		at_fence_seq_cst();
		if (at_load_u64_sc(&h->log_durable) > seq)
			return 0;
		uint64_t now = now_mono_ns();
		if (now >= deadline)
			return shmbus__fail(ETIMEDOUT, "event %llu of bus '%s' is not durable yet (durable up to %llu)",
					    (unsigned long long)seq, bus->name,
					    (unsigned long long)at_load_acquire_u64(&h->log_durable));
		uint64_t slice = deadline - now < 100000000 ? deadline - now : 100000000;
		if (futex_wait_shared(&h->log_futex, seen, (int64_t)slice) == -EINTR)
			return shmbus__fail(EINTR, "interrupted by a signal");
	}
}
