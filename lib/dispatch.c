/*
 * dispatch.c - the dispatcher loop: take events, run handlers within each
 * subscription's concurrency limit, retry failures with back-off, send
 * what cannot be handled to the dead-letter queue, release in order.
 *
 * Per subscription a window (struct dsub.win) holds every event from
 * delivery to release, in delivery order. Handlers may finish out of order
 * (workers), but only the window's completed prefix is released, so what
 * the subscription has given up is always contiguous and a crash hands the
 * rest back (held entries are redelivered by reclaim.c).
 *
 * Sleeping: a subscription with nothing to take raises its `sleepers` flag,
 * looks once more, and arms a wait on its wake word with the backend
 * (io_uring FUTEX_WAIT or futex_waitv) - the same protocol as shmbus_wait,
 * so publishers need not know a dispatcher is behind it. The loop itself
 * sleeps in the backend until a wait completes, the earliest timer is due,
 * a registered fd is ready, or the kick eventfd (stop, finished worker
 * jobs) is written.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "dispatch.h"
#include "dlq.h"

#define KIND_SUB 1u
#define KIND_FD 2u
#define KIND_KICK 3u
#define MAX_WORKERS 64u
#define PUMP_BUDGET 256u /* events per subscription per turn: fairness */
#define DEFAULT_MAX_RETRIES 3
#define DEFAULT_RETRY_BASE_NS 100000000ull
#define DEFAULT_RETRY_MAX_NS 30000000000ull
#define CATCHUP_POLL_NS 2000000ull /* as shmbus_wait: a log being written is polled */

__thread unsigned dispatch_current_attempt;
__thread shmbus_dispatcher_t *dispatch_current;

/* Tokens: kind in bits 48..55, index in 24..47, generation in 0..23 (the
 * top 16 bits stay clear: backends keep those for themselves). */
static uint64_t token(unsigned kind, uint32_t idx, uint32_t gen)
{
	return ((uint64_t)kind << 48) | ((uint64_t)(idx & 0xFFFFFF) << 24) | (gen & 0xFFFFFF);
}
static unsigned token_kind(uint64_t t) { return (unsigned)(t >> 48) & 0xFF; }
static uint32_t token_index(uint64_t t) { return (uint32_t)(t >> 24) & 0xFFFFFF; }
static uint32_t token_gen(uint64_t t) { return (uint32_t)t & 0xFFFFFF; }

static const shmbus_event_t *slot_event(const struct dslot *sl)
{
	return sl->copy ? sl->copy : sl->ev;
}

/* Gauges live in our consumer entry: only this thread writes them. */
static void gauge_add(uint32_t *g, int delta)
{
	at_store_relaxed_u32(g, at_load_relaxed_u32(g) + (uint32_t)delta);
}

static bool env_no_io_uring(void)
{
	const char *e = getenv("SHMBUS_NO_IO_URING");
	return e && *e && strcmp(e, "0") != 0;
}

SHMBUS_API const char *shmbus_backend_name(shmbus_backend_t b)
{
	return b == SHMBUS_BACKEND_IO_URING ? "io_uring" : b == SHMBUS_BACKEND_FALLBACK ? "fallback" : "unknown";
}

SHMBUS_API unsigned shmbus_handler_attempt(void)
{
	return dispatch_current_attempt;
}

/* ------------------------------------------------------------ lifecycle */

static int arm_kick(shmbus_dispatcher_t *d)
{
	if (d->kick_armed)
		return 0;
	int rc = d->w->ops->arm_fd(d->w, d->kick_fd, POLLIN, token(KIND_KICK, 0, ++d->kick_gen));
	d->kick_armed = rc == 0;
	return rc;
}

static void kick(shmbus_dispatcher_t *d)
{
	uint64_t one = 1;
	(void)!write(d->kick_fd, &one, sizeof one);
}

SHMBUS_API int shmbus_dispatcher_open(const shmbus_dispatcher_opts_t *opts, shmbus_dispatcher_t **out)
{
	if (!out)
		return shmbus__fail(EINVAL, "out is NULL");
	uint32_t workers = opts ? opts->workers : 0;
	if (workers > MAX_WORKERS)
		return shmbus__fail(EINVAL, "%u workers: at most %u", workers, MAX_WORKERS);
	shmbus_dispatcher_t *d = calloc(1, sizeof *d);
	if (!d)
		return shmbus__fail(ENOMEM, "out of memory");
	int rc;
	d->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->kick_fd < 0) {
		rc = shmbus__fail(errno, "eventfd: %s", strerror(errno));
		free(d);
		return rc;
	}
	int uring_rc = -EOPNOTSUPP;
	if (!(opts && opts->no_io_uring) && !env_no_io_uring() && (uring_rc = dwait_uring_open(&d->w)) == 0) {
		d->backend = SHMBUS_BACKEND_IO_URING;
	} else if ((rc = dwait_fallback_open(&d->w)) == 0) {
		d->backend = SHMBUS_BACKEND_FALLBACK;
	} else {
		close(d->kick_fd);
		free(d);
		return shmbus__fail(-rc, "no dispatcher backend: io_uring: %s; futex_waitv: %s", strerror(-uring_rc),
				    strerror(-rc));
	}
	d->workers = workers;
	if (workers && (rc = pool_open(workers, d->kick_fd, &d->pool)) < 0) {
		d->w->ops->close(d->w);
		close(d->kick_fd);
		free(d);
		return shmbus__fail(-rc, "cannot start %u worker threads", workers);
	}
	if ((rc = arm_kick(d)) < 0) {
		shmbus_dispatcher_close(d);
		return shmbus__fail(-rc, "cannot watch the dispatcher's eventfd");
	}
	*out = d;
	return 0;
}

SHMBUS_API shmbus_backend_t shmbus_dispatcher_backend(const shmbus_dispatcher_t *d)
{
	return d ? d->backend : 0;
}

static bool has_work(const shmbus_dispatcher_t *d);

SHMBUS_API int shmbus_dispatcher_fd(shmbus_dispatcher_t *d)
{
	if (!d)
		return shmbus__fail(EINVAL, "dispatcher is NULL");
	int fd = d->w->ops->fd(d->w);
	if (fd < 0)
		return shmbus__fail(-fd, "cannot set up the dispatcher's fd: %s", strerror(-fd));
	if (!d->fd_exported) {
		d->fd_exported = true;
		d->w->ops->flush(d->w); /* what is armed already must reach the kernel */
		/* Subscriptions added before now are armed only by a turn: until
		 * one runs, nothing would make the fd readable, and a loop that
		 * runs turns only when it is would never run one. */
		if (has_work(d))
			kick(d);
	}
	return fd;
}

SHMBUS_API void shmbus_dispatcher_stop(shmbus_dispatcher_t *d)
{
	if (!d)
		return;
	__atomic_store_n(&d->stop, 1, __ATOMIC_RELEASE);
	kick(d); /* write(2) is async-signal-safe */
}

/* ------------------------------------------------------------- handling */

static void advance(shmbus_dispatcher_t *d, struct dsub *ds);
static void start(shmbus_dispatcher_t *d, struct dsub *ds, uint32_t i);

static void count(uint64_t *counter)
{
	at_count_u64(counter, 1);
}

static void schedule_retry(shmbus_dispatcher_t *d, struct dsub *ds, uint32_t i);

/* Slot i's letter was written, or could not be: then the event comes again
 * (below), unless nobody is left to hold it for. */
static void letter_done(struct dsub *ds, uint32_t i, shmbus_dead_reason_t reason, bool written)
{
	struct dslot *sl = &ds->win[i];
	/* A letter that could not be written (the dead-letter log unusable:
	 * full, refused, another bus's) must not let its event go: it stays
	 * held and comes again after the back-off, handler and all, until a
	 * letter can be written. It was released and lost without a word.
	 * Not when the subscription is gone or no longer served: nobody is
	 * left to hold it for. */
	if (!written && !ds->shutdown && reason != SHMBUS_DEAD_ABANDONED) {
		schedule_retry(ds->d, ds, i);
		return;
	}
	if (written) {
		if (!ds->shutdown) {
			count(&ds->sub->rec->dead_lettered);
			if (reason == SHMBUS_DEAD_EXPIRED)
				count(&ds->sub->rec->expired);
		}
		if (ds->on_dead) {
			shmbus_dispatcher_t *outer = dispatch_current;
			dispatch_current = ds->d;
			ds->on_dead(slot_event(sl), (int)reason, ds->arg);
			dispatch_current = outer;
		}
	}
	sl->state = DSLOT_DONE;
	sl->gen++;
}

static void letter_entry(const struct dsub *ds, const struct dslot *sl, shmbus_dead_reason_t reason,
			 struct dlq_entry_in *in)
{
	*in = (struct dlq_entry_in){
		.sub = ds->sub_id,
		.subscriber_id = ds->subscriber,
		.group = ds->group,
		.reason = reason,
		.attempts = sl->attempts,
		.last_error = sl->last_error,
	};
}

/* Slot i's letter written at once, alone (no memory to batch it). */
static void letter_now(struct dsub *ds, uint32_t i, shmbus_dead_reason_t reason)
{
	struct dlq_entry_in in;
	letter_entry(ds, &ds->win[i], reason, &in);
	letter_done(ds, i, reason, dlq_append(ds->sub->bus, slot_event(&ds->win[i]), &in) == 0);
}

/* Hand slot i to the dead-letter queue. Its letter is written at the end
 * of the turn with the turn's others (flush_dead_letters): a burst of
 * failures costs one append and one sync, not a sync each, and the slot
 * stays in the window (DYING: not released) until then. Without memory to
 * note it, it is written at once. */
static void dead_letter(struct dsub *ds, uint32_t i, shmbus_dead_reason_t reason)
{
	shmbus_dispatcher_t *d = ds->d;
	struct dslot *sl = &ds->win[i];
	if (d->ndying == d->dying_cap) {
		size_t nc = d->dying_cap ? 2 * d->dying_cap : 16;
		struct dying *v = realloc(d->dying, nc * sizeof *v);
		if (!v) {
			letter_now(ds, i, reason);
			return;
		}
		d->dying = v;
		d->dying_cap = nc;
	}
	/* the letter is written later in the turn: from a private copy, not
	 * from the ring, where a revocation could take the slot meanwhile
	 * (without memory for one, the ring's bytes are still held by us) */
	if (!sl->copy)
		(void)shmbus_event_copy(sl->ev, &sl->copy);
	d->dying[d->ndying++] = (struct dying){.ds = ds, .slot = i, .reason = reason};
	sl->state = DSLOT_DYING;
	sl->gen++;
}

/* Without memory to batch: the first n noted letters one append each, in
 * the order noted; then what they held back is released. */
static void letters_one_by_one(shmbus_dispatcher_t *d, size_t n)
{
	for (size_t k = 0; k < n; k++)
		letter_now(d->dying[k].ds, d->dying[k].slot, d->dying[k].reason);
	memmove(d->dying, d->dying + n, (d->ndying - n) * sizeof *d->dying);
	d->ndying -= n;
	for (uint32_t x = 0; x < d->nsubs; x++)
		if (d->subs[x])
			advance(d, d->subs[x]);
}

/* Where a noted letter goes in its bus's batch: by subscription, then by
 * window position (delivery order; workers finish out of order). */
static uint64_t dying_key(const struct dying *y)
{
	return (uint64_t)y->ds->index << 32 | (y->slot + DSUB_WINDOW - y->ds->head) % DSUB_WINDOW;
}

/*
 * Write the letters dead_letter noted, one append (and one sync) per bus,
 * then finish each slot (counters, on_dead) and release what the windows
 * can now let go of, in delivery order. Runs at the end of every piece of
 * work of a turn, and before a subscription is dropped.
 */
static void flush_dead_letters(shmbus_dispatcher_t *d)
{
	if (!d->ndying || d->flushing)
		return; /* nothing noted (every turn), or re-entered: remove, close and run_once refuse */
	d->flushing = true;
	while (d->ndying) {
		/* the entries there now: an on_dead callback may note more
		 * (they wait for the next round of this loop) */
		size_t n0 = d->ndying;
		shmbus_bus_t *bus = d->dying[0].ds->sub->bus;
		/* this bus's entries, by subscription and then window position
		 * (delivery order): workers finish out of order */
		size_t m = 0, *pick = malloc(n0 * sizeof *pick);
		if (!pick) {
			letters_one_by_one(d, n0);
			continue;
		}
		for (size_t k = 0; k < n0; k++) {
			const struct dying *y = &d->dying[k];
			if (y->ds->sub->bus != bus)
				continue;
			uint64_t key = dying_key(y);
			size_t at = m++;
			for (; at > 0 && dying_key(&d->dying[pick[at - 1]]) > key; at--)
				pick[at] = pick[at - 1];
			pick[at] = k;
		}
		struct dlq_letter *letters = calloc(m, sizeof *letters);
		struct dlq_entry_in *ins = calloc(m, sizeof *ins);
		if (letters && ins) {
			for (size_t j = 0; j < m; j++) {
				const struct dying *y = &d->dying[pick[j]];
				const struct dslot *sl = &y->ds->win[y->slot];
				letter_entry(y->ds, sl, y->reason, &ins[j]);
				letters[j] = (struct dlq_letter){.ev = slot_event(sl), .in = &ins[j]};
			}
			int r = dlq_append_letters(bus, letters, m);
			for (size_t j = 0; r < 0 && j < m; j++) /* nothing was written */
				if (letters[j].rc == 0)
					letters[j].rc = r;
		}
		for (size_t j = 0; j < m; j++) {
			struct dying y = d->dying[pick[j]]; /* a copy: on_dead may note more */
			if (letters && ins)
				letter_done(y.ds, y.slot, y.reason, letters[j].rc == 0);
			else
				letter_now(y.ds, y.slot, y.reason); /* no memory to batch */
		}
		/* keep the other buses' entries and those noted meanwhile */
		size_t kept = 0;
		for (size_t k = 0; k < d->ndying; k++)
			if (k >= n0 || d->dying[k].ds->sub->bus != bus)
				d->dying[kept++] = d->dying[k];
		d->ndying = kept;
		free(pick);
		free(letters);
		free(ins);
		/* release, in delivery order, what the letters held back */
		for (uint32_t x = 0; x < d->nsubs; x++)
			if (d->subs[x] && d->subs[x]->sub->bus == bus)
				advance(d, d->subs[x]);
	}
	d->flushing = false;
}

/* The consumer gauges and counters, unless the subscription was removed
 * under us (its record may serve another one by now). */
static void ds_gauge(struct dsub *ds, uint32_t *g, int delta)
{
	if (!ds->shutdown)
		gauge_add(g, delta);
}

static void ds_count(struct dsub *ds, uint64_t *counter)
{
	if (!ds->shutdown)
		count(counter);
}

static bool expired_now(const struct dslot *sl)
{
	uint64_t exp = shmbus_event_expires_ns(slot_event(sl));
	return exp && now_real_ns() >= exp;
}

/* Back-off before retry n (n >= 1): uniform in [b/2, b], b = base * 2^(n-1)
 * capped at max. Consecutive ranges touch, so waits never shrink. */
static uint64_t backoff_ns(struct dsub *ds, uint32_t n)
{
	uint64_t b = ds->retry_base_ns;
	for (uint32_t k = 1; k < n && b < ds->retry_max_ns; k++)
		b *= 2;
	if (b > ds->retry_max_ns)
		b = ds->retry_max_ns;
	ds->rng ^= ds->rng << 13;
	ds->rng ^= ds->rng >> 7;
	ds->rng ^= ds->rng << 17;
	uint64_t half = b / 2;
	return half + (half ? ds->rng % (half + 1) : 0);
}

static void fire_retry(shmbus_dispatcher_t *d, void *obj, uint64_t gen);

static void arm_retry_timer(shmbus_dispatcher_t *d, struct dsub *ds, uint32_t i)
{
	struct dslot *sl = &ds->win[i];
	uint64_t when = sl->due < sl->expires_mono ? sl->due : sl->expires_mono;
	if (timers_add(&d->timers, when, fire_retry, ds, (sl->gen << 8) | i) < 0) {
		/* no memory for a timer: retry at the next turn instead */
		ds_gauge(ds, &ds->sub->cons->retrying, -1);
		sl->state = DSLOT_DUE;
		ds->due++;
	}
}

static void schedule_retry(shmbus_dispatcher_t *d, struct dsub *ds, uint32_t i)
{
	struct dslot *sl = &ds->win[i];
	if (!sl->copy && shmbus_event_copy(sl->ev, &sl->copy) == 0) {
		/* retries run on a private copy: its bytes cannot change under
		 * the handler even if the ring's hold is revoked meanwhile, and
		 * it can say which retry this is */
		struct seg_event *c = (struct seg_event *)(void *)sl->copy;
		c->status = SHMBUS_STATUS_RETRYING;
	}
	if (sl->copy)
		((struct seg_event *)(void *)sl->copy)->retry_count = (uint8_t)(sl->attempts > 255 ? 255 : sl->attempts);
	sl->due = now_mono_ns() + backoff_ns(ds, sl->attempts);
	sl->state = DSLOT_WAITING;
	sl->gen++;
	ds_gauge(ds, &ds->sub->cons->retrying, 1);
	arm_retry_timer(d, ds, i);
}

static void fire_retry(shmbus_dispatcher_t *d, void *obj, uint64_t gen)
{
	struct dsub *ds = obj;
	uint32_t i = (uint32_t)(gen & 0xFF);
	struct dslot *sl = &ds->win[i];
	if (sl->state != DSLOT_WAITING || sl->gen != gen >> 8)
		return; /* stale */
	if (expired_now(sl)) {
		ds_gauge(ds, &ds->sub->cons->retrying, -1);
		dead_letter(ds, i, SHMBUS_DEAD_EXPIRED);
		advance(d, ds);
		return;
	}
	if (now_mono_ns() < sl->due) { /* woke for an expiry that our clocks disagree on */
		sl->expires_mono = UINT64_MAX;
		arm_retry_timer(d, ds, i);
		return;
	}
	ds_gauge(ds, &ds->sub->cons->retrying, -1);
	if (ds->running < ds->concurrency) {
		start(d, ds, i);
	} else {
		sl->state = DSLOT_DUE;
		sl->gen++;
		ds->due++;
	}
}

/* A handler run of slot i ended with rc. */
static void complete(shmbus_dispatcher_t *d, struct dsub *ds, uint32_t i, int rc)
{
	struct dslot *sl = &ds->win[i];
	struct seg_sub *rec = ds->sub->rec;
	ds->running--;
	ds_gauge(ds, &ds->sub->cons->processing, -1);
	d->completed++;
	if (rc >= 0) {
		ds_count(ds, &rec->completed);
		sl->state = DSLOT_DONE;
		sl->gen++;
	} else {
		ds_count(ds, &rec->failed);
		sl->last_error = rc;
		unsigned own = shmbus_event_max_retries(slot_event(sl));
		uint32_t max = own ? own : ds->max_retries;
		if (ds->shutdown) {
			sl->state = DSLOT_DONE; /* nobody to retry it for */
			sl->gen++;
		} else if (sl->attempts > max)
			dead_letter(ds, i, SHMBUS_DEAD_FAILED);
		else if (expired_now(sl))
			dead_letter(ds, i, SHMBUS_DEAD_EXPIRED);
		else
			schedule_retry(d, ds, i);
	}
	advance(d, ds);
}

/* Run slot i's handler here (inline) or hand it to a worker. */
static void start(shmbus_dispatcher_t *d, struct dsub *ds, uint32_t i)
{
	struct dslot *sl = &ds->win[i];
	sl->attempts++;
	sl->state = DSLOT_RUNNING;
	sl->gen++;
	ds->running++;
	ds_gauge(ds, &ds->sub->cons->processing, 1);
	if (sl->attempts > 1)
		ds_count(ds, &ds->sub->rec->retried);
	if (d->pool && !ds->inline_only) {
		struct pool_job job = {.ds = ds, .slot = i, .gen = sl->gen};
		if (pool_submit(d->pool, &job) == 0)
			return;
		/* no memory to queue it: run it here rather than lose it */
	}
	/* restored, not cleared: a handler may run another dispatcher's turn,
	 * and its end must not lift this one's guard for our caller */
	shmbus_dispatcher_t *outer = dispatch_current;
	unsigned outer_attempt = dispatch_current_attempt;
	dispatch_current = d;
	dispatch_current_attempt = sl->attempts;
	int rc = ds->handler(slot_event(sl), ds->arg);
	dispatch_current_attempt = outer_attempt;
	dispatch_current = outer;
	complete(d, ds, i, rc);
}

/* Worker side (dispatch_pool.c): run the job's handler. */
void dispatch_run_job(struct pool_job *job)
{
	struct dsub *ds = job->ds;
	struct dslot *sl = &ds->win[job->slot];
	shmbus_dispatcher_t *outer = dispatch_current;
	unsigned outer_attempt = dispatch_current_attempt;
	dispatch_current = ds->d;
	dispatch_current_attempt = sl->attempts;
	job->rc = ds->handler(slot_event(sl), ds->arg);
	dispatch_current_attempt = outer_attempt;
	dispatch_current = outer;
}

/* Release the window's completed prefix, in delivery order. */
static void advance(shmbus_dispatcher_t *d, struct dsub *ds)
{
	(void)d;
	while (ds->count && ds->win[ds->head].state == DSLOT_DONE) {
		struct dslot *sl = &ds->win[ds->head];
		/* -ESTALE (revoked, or the subscription was removed: then the
		 * library refuses to touch the record) needs nothing more */
		shmbus_release(ds->sub, sl->ev);
		shmbus_event_free(sl->copy);
		sl->copy = NULL;
		sl->ev = NULL;
		sl->state = 0;
		sl->gen++;
		ds->head = (ds->head + 1) % DSUB_WINDOW;
		ds->count--;
	}
}

/* A new event enters the window. */
static void accept(shmbus_dispatcher_t *d, struct dsub *ds, const shmbus_event_t *ev)
{
	uint32_t i = (ds->head + ds->count++) % DSUB_WINDOW;
	struct dslot *sl = &ds->win[i];
	uint64_t gen = sl->gen + 1;
	*sl = (struct dslot){.ev = ev, .gen = gen, .expires_mono = UINT64_MAX};
	uint64_t exp = shmbus_event_expires_ns(ev);
	if (exp) {
		uint64_t real = now_real_ns(), mono = now_mono_ns();
		if (real >= exp) {
			dead_letter(ds, i, SHMBUS_DEAD_EXPIRED);
			advance(d, ds);
			return;
		}
		sl->expires_mono = mono + (exp - real);
	}
	start(d, ds, i);
}

static bool can_start(const struct dsub *ds)
{
	return ds->running < ds->concurrency;
}

static bool can_take(const struct dsub *ds)
{
	return !ds->shutdown && can_start(ds) && ds->count < DSUB_WINDOW;
}

/* Nothing to take: raise the sleepers flag, look once more, then arm a
 * wait on the wake word. Returns 1 with *ev when the last look found one. */
static int arm_sub(shmbus_dispatcher_t *d, struct dsub *ds, const shmbus_event_t **ev)
{
	struct seg_sub *s = ds->sub->rec;
	uint32_t seen = at_load_acquire_u32(&s->wake_futex);
	at_exchange_u32(&s->sleepers, 1);
	at_fence_seq_cst();
	int rc = shmbus_poll(ds->sub, ev);
	if (rc != 0)
		return rc;
	/* dispatcher-wide, so a stale completion for a removed subscription
	 * whose index was reused cannot pass for the new one's */
	ds->arm_gen = d->arm_seq = (d->arm_seq + 1) & 0xFFFFFF;
	rc = d->w->ops->arm_futex(d->w, &s->wake_futex, seen, token(KIND_SUB, ds->index, ds->arm_gen));
	if (rc < 0)
		return rc;
	ds->armed = true;
	return 0;
}

static void start_due(shmbus_dispatcher_t *d, struct dsub *ds)
{
	/* an inline handler moves head (advance), so look again from the
	 * new head after each start */
	while (ds->due && can_start(ds)) {
		uint32_t n = 0;
		while (n < ds->count && ds->win[(ds->head + n) % DSUB_WINDOW].state != DSLOT_DUE)
			n++;
		if (n == ds->count) {
			ds->due = 0; /* cannot happen; never spin on it */
			return;
		}
		ds->due--;
		start(d, ds, (ds->head + n) % DSUB_WINDOW);
	}
}

static void fire_ready(shmbus_dispatcher_t *d, void *obj, uint64_t gen);

/* The subscription was removed by someone (-ESHUTDOWN): what it holds is
 * given up without a count (its record may serve another subscription),
 * retries are dropped, and it is never pumped again. */
static void give_up_removed(shmbus_dispatcher_t *d, struct dsub *ds)
{
	ds->shutdown = true;
	ds->ready = false;
	for (uint32_t n = 0; n < ds->count; n++) {
		struct dslot *sl = &ds->win[(ds->head + n) % DSUB_WINDOW];
		if (sl->state == DSLOT_WAITING || sl->state == DSLOT_DUE) {
			sl->state = DSLOT_DONE;
			sl->gen++;
		}
	}
	ds->due = 0;
	advance(d, ds);
}

/* Take and start what the subscription's limits allow. */
static void pump(shmbus_dispatcher_t *d, struct dsub *ds)
{
	start_due(d, ds);
	for (unsigned budget = PUMP_BUDGET; budget && can_take(ds); budget--) {
		const shmbus_event_t *ev;
		int rc = shmbus_poll(ds->sub, &ev);
		if (rc == 0 && !ds->armed)
			rc = arm_sub(d, ds, &ev);
		if (rc == 0) {
			ds->ready = false;
			/* catching up from a log the recorder is still writing:
			 * nobody wakes us for that, so look again soon */
			if (ds->sub->catchup_wait)
				timers_add(&d->timers, now_mono_ns() + CATCHUP_POLL_NS, fire_ready, ds, 0);
			return;
		}
		if (rc < 0) {
			/* -ESHUTDOWN: removed by someone; anything else (the bus
			 * is unusable, the backend refused the wait): stop taking
			 * until the next sweep looks again */
			if (rc == -ESHUTDOWN)
				give_up_removed(d, ds);
			ds->ready = false;
			return;
		}
		accept(d, ds, ev);
	}
}

/* ---------------------------------------------------------- registration */

static struct dsub *find_sub(shmbus_dispatcher_t *d, const shmbus_sub_t *sub)
{
	for (uint32_t i = 0; i < d->nsubs; i++)
		if (d->subs[i] && d->subs[i]->sub == sub)
			return d->subs[i];
	return NULL;
}

static void fire_tick(shmbus_dispatcher_t *d, void *obj, uint64_t gen);

static void fire_ready(shmbus_dispatcher_t *d, void *obj, uint64_t gen)
{
	(void)d;
	(void)gen;
	struct dsub *ds = obj;
	if (!ds->shutdown)
		ds->ready = true;
}

/* An outer loop sleeping on our fd must hear about new work now: new
 * subscriptions, fds and timers only exist in memory until the next turn. */
static void wake_outer_loop(shmbus_dispatcher_t *d)
{
	if (d->fd_exported)
		kick(d);
}

static uint64_t tick_interval(const shmbus_dispatcher_t *d)
{
	uint64_t t = DEFAULT_RECLAIM_TIMEOUT_NS;
	for (uint32_t i = 0; i < d->nsubs; i++)
		if (d->subs[i] && d->subs[i]->sub->bus->reclaim_interval_ns < t)
			t = d->subs[i]->sub->bus->reclaim_interval_ns;
	return t;
}

static void ensure_tick(shmbus_dispatcher_t *d)
{
	if (d->ticking)
		return;
	if (timers_add(&d->timers, now_mono_ns() + tick_interval(d), fire_tick, NULL, ++d->tick_gen) == 0)
		d->ticking = true;
}

static int add_sub(shmbus_dispatcher_t *d, shmbus_sub_t *sub, const shmbus_handler_opts_t *o, uint32_t conc,
		   uint32_t max_retries, uint64_t base, uint64_t max, bool inline_only)
{
	if (find_sub(d, sub))
		return shmbus__fail(EEXIST, "subscription is served by this dispatcher already");
	uint32_t idx = 0;
	while (idx < d->nsubs && d->subs[idx])
		idx++;
	if (idx == d->nsubs) {
		if (d->nsubs == d->subs_cap) {
			uint32_t nc = d->subs_cap ? d->subs_cap * 2 : 16;
			struct dsub **ns = realloc(d->subs, nc * sizeof *ns);
			if (!ns)
				return shmbus__fail(ENOMEM, "out of memory");
			d->subs = ns;
			d->subs_cap = nc;
		}
		d->nsubs++;
	}
	struct dsub *ds = calloc(1, sizeof *ds);
	if (!ds)
		return shmbus__fail(ENOMEM, "out of memory");
	*ds = (struct dsub){
		.d = d,
		.sub = sub,
		.index = idx,
		.handler = o->handler,
		.arg = o->arg,
		.on_dead = o->on_dead,
		.inline_only = inline_only,
		.sub_id = shmbus_sub_id(sub),
		.concurrency = conc,
		.max_retries = max_retries,
		.retry_base_ns = base,
		.retry_max_ns = max,
		.ready = true,
		.rng = (now_mono_ns() ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)ds) | 1,
	};
	snprintf(ds->subscriber, sizeof ds->subscriber, "%s", sub->rec->subscriber);
	snprintf(ds->group, sizeof ds->group, "%s", sub->rec->group);
	d->subs[idx] = ds;
	ensure_tick(d);
	wake_outer_loop(d);
	return 0;
}

SHMBUS_API int shmbus_dispatcher_add(shmbus_dispatcher_t *d, shmbus_sub_t *sub, const shmbus_handler_opts_t *opts)
{
	if (!d || !sub || !opts)
		return shmbus__fail(EINVAL, "dispatcher, subscription or options is NULL");
	if (dispatch_current == d)
		return shmbus__fail(EBUSY, "not from inside a handler");
	if (!opts->handler)
		return shmbus__fail(EINVAL, "handler is NULL");
	int32_t conc = opts->concurrency ? opts->concurrency : 1;
	if (conc < 1 || conc > (int32_t)SHMBUS_MAX_HELD)
		return shmbus__fail(EINVAL, "concurrency %d: must be 1..%d", (int)conc, SHMBUS_MAX_HELD);
	if (conc > 1 && !d->workers)
		return shmbus__fail(EINVAL, "concurrency %d needs worker threads (shmbus_dispatcher_opts_t.workers)",
				    (int)conc);
	if (opts->max_retries < SHMBUS_NO_RETRY || opts->max_retries > 255)
		return shmbus__fail(EINVAL, "max_retries %d: must be 0..255 or SHMBUS_NO_RETRY", (int)opts->max_retries);
	int32_t retries = opts->max_retries == SHMBUS_NO_RETRY ? 0
			  : opts->max_retries		 ? opts->max_retries
							 : DEFAULT_MAX_RETRIES;
	uint64_t base = opts->retry_base_ns ? opts->retry_base_ns : DEFAULT_RETRY_BASE_NS;
	uint64_t max = opts->retry_max_ns ? opts->retry_max_ns : DEFAULT_RETRY_MAX_NS < base ? base : DEFAULT_RETRY_MAX_NS;
	if (max < base)
		return shmbus__fail(EINVAL, "retry_max_ns is below retry_base_ns");
	return add_sub(d, sub, opts, (uint32_t)conc, (uint32_t)retries, base, max, false);
}

int dispatch_add_internal(shmbus_dispatcher_t *d, shmbus_sub_t *sub, shmbus_handler_t h, void *arg)
{
	/* replies are never retried (a response nobody takes is late), and
	 * run on the dispatcher's thread, where the requester's state lives */
	shmbus_handler_opts_t o = {.handler = h, .arg = arg};
	return add_sub(d, sub, &o, 1, 0, DEFAULT_RETRY_BASE_NS, DEFAULT_RETRY_MAX_NS, true);
}

int dispatch_timer(shmbus_dispatcher_t *d, uint64_t deadline, timer_fire_fn fire, void *obj, uint64_t gen)
{
	int rc = timers_add(&d->timers, deadline, fire, obj, gen);
	if (rc == 0 && timers_next(&d->timers) == deadline) /* the earliest now */
		wake_outer_loop(d);
	return rc;
}

int dispatch_defer(shmbus_dispatcher_t *d, void (*fn)(void *), void *arg)
{
	if (dispatch_current != d) {
		fn(arg);
		return 0;
	}
	if (d->ndeferred == d->deferred_cap) {
		size_t nc = d->deferred_cap ? d->deferred_cap * 2 : 8;
		struct deferred *v = realloc(d->deferred, nc * sizeof *v);
		if (!v)
			return -ENOMEM;
		d->deferred = v;
		d->deferred_cap = nc;
	}
	d->deferred[d->ndeferred++] = (struct deferred){fn, arg};
	return 0;
}

static void run_deferred(shmbus_dispatcher_t *d)
{
	/* no handler of ours is on the stack here, so a deferred call that
	 * defers again runs at once instead of growing the list under us */
	for (size_t i = 0; i < d->ndeferred; i++)
		d->deferred[i].fn(d->deferred[i].arg);
	d->ndeferred = 0;
}

void dispatch_bind_client(shmbus_dispatcher_t *d, struct dispatch_client *c)
{
	c->next = d->clients;
	d->clients = c;
}

void dispatch_unbind_client(shmbus_dispatcher_t *d, struct dispatch_client *c)
{
	for (struct dispatch_client **p = &d->clients; *p; p = &(*p)->next) {
		if (*p == c) {
			*p = c->next;
			return;
		}
	}
}

static void handle_results(shmbus_dispatcher_t *d, bool wait);

static void drop_sub(shmbus_dispatcher_t *d, struct dsub *ds)
{
	/* the handlers that run finish first: their events are in use */
	while (ds->running && d->pool)
		handle_results(d, true);
	for (uint32_t n = 0; n < ds->count; n++) {
		uint32_t i = (ds->head + n) % DSUB_WINDOW;
		uint8_t st = ds->win[i].state;
		if (st == DSLOT_WAITING || st == DSLOT_DUE) {
			if (st == DSLOT_WAITING)
				ds_gauge(ds, &ds->sub->cons->retrying, -1);
			dead_letter(ds, i, SHMBUS_DEAD_ABANDONED);
		}
	}
	flush_dead_letters(d); /* before ds goes: the letters point into it */
	advance(d, ds);
	if (ds->armed)
		d->w->ops->disarm(d->w, token(KIND_SUB, ds->index, ds->arm_gen), -1);
	timers_drop(&d->timers, ds);
	d->subs[ds->index] = NULL;
	free(ds);
}

SHMBUS_API int shmbus_dispatcher_remove(shmbus_dispatcher_t *d, shmbus_sub_t *sub)
{
	if (!d || !sub)
		return shmbus__fail(EINVAL, "dispatcher or subscription is NULL");
	if (dispatch_current == d || d->flushing)
		return shmbus__fail(EBUSY, "not from inside a handler or an on_dead callback");
	struct dsub *ds = find_sub(d, sub);
	if (!ds)
		return shmbus__fail(ENOENT, "subscription is not served by this dispatcher");
	drop_sub(d, ds);
	return 0;
}

/* ------------------------------------------------------------------ fds */

static struct dfd *find_fd(shmbus_dispatcher_t *d, int fd)
{
	for (uint32_t i = 0; i < d->nfds; i++)
		if (d->fds[i].used && d->fds[i].fd == fd)
			return &d->fds[i];
	return NULL;
}

static int arm_user_fd(shmbus_dispatcher_t *d, uint32_t idx)
{
	struct dfd *f = &d->fds[idx];
	f->gen = (f->gen + 1) & 0xFFFFFF;
	int rc = d->w->ops->arm_fd(d->w, f->fd, f->events, token(KIND_FD, idx, f->gen));
	f->armed = rc == 0;
	return rc;
}

SHMBUS_API int shmbus_dispatcher_add_fd(shmbus_dispatcher_t *d, int fd, uint32_t events, shmbus_fd_cb_t cb, void *arg)
{
	if (!d || !cb)
		return shmbus__fail(EINVAL, "dispatcher or callback is NULL");
	if (dispatch_current == d)
		return shmbus__fail(EBUSY, "not from inside a handler");
	if (!events || (events & ~(uint32_t)(POLLIN | POLLOUT | POLLPRI)))
		return shmbus__fail(EINVAL, "events must be POLLIN, POLLOUT and/or POLLPRI");
	if (fd < 0 || fcntl(fd, F_GETFD) < 0)
		return shmbus__fail(EBADF, "fd %d is not open", fd);
	if (fd == d->kick_fd || (d->fd_exported && fd == d->w->ops->fd(d->w)))
		return shmbus__fail(EINVAL, "fd %d is the dispatcher's own", fd);
	if (find_fd(d, fd))
		return shmbus__fail(EEXIST, "fd %d is registered already", fd);
	uint32_t idx = 0;
	while (idx < d->nfds && d->fds[idx].used)
		idx++;
	if (idx == d->nfds) {
		if (d->nfds == d->fds_cap) {
			uint32_t nc = d->fds_cap ? d->fds_cap * 2 : 8;
			struct dfd *nf = realloc(d->fds, nc * sizeof *nf);
			if (!nf)
				return shmbus__fail(ENOMEM, "out of memory");
			d->fds = nf;
			d->fds_cap = nc;
		}
		d->fds[d->nfds++] = (struct dfd){0};
	}
	struct dfd *f = &d->fds[idx];
	uint32_t gen = f->gen;
	*f = (struct dfd){.fd = fd, .events = events, .cb = cb, .arg = arg, .gen = gen, .used = true};
	int rc = arm_user_fd(d, idx);
	if (rc < 0) {
		f->used = false;
		return shmbus__fail(-rc, "cannot watch fd %d: %s", fd, strerror(-rc));
	}
	ensure_tick(d);
	wake_outer_loop(d);
	return 0;
}

static void forget_fd(shmbus_dispatcher_t *d, struct dfd *f)
{
	if (f->armed)
		d->w->ops->disarm(d->w, token(KIND_FD, (uint32_t)(f - d->fds), f->gen), f->fd);
	f->used = false;
	f->armed = false;
}

SHMBUS_API int shmbus_dispatcher_remove_fd(shmbus_dispatcher_t *d, int fd)
{
	if (!d)
		return shmbus__fail(EINVAL, "dispatcher is NULL");
	struct dfd *f = find_fd(d, fd);
	if (!f)
		return shmbus__fail(ENOENT, "fd %d is not registered", fd);
	forget_fd(d, f);
	return 0;
}

/* An fd closed while registered: io_uring keeps polling the file it had
 * and epoll silently drops it, so neither would ever say. The sweep asks
 * the fd table, reports POLLNVAL once and unregisters it. */
static void check_fds(shmbus_dispatcher_t *d)
{
	for (uint32_t i = 0; i < d->nfds; i++) {
		struct dfd *f = &d->fds[i];
		if (!f->used || fcntl(f->fd, F_GETFD) >= 0 || errno != EBADF)
			continue;
		int fd = f->fd;
		shmbus_fd_cb_t cb = f->cb;
		void *arg = f->arg;
		forget_fd(d, f);
		cb(fd, POLLNVAL, arg);
	}
}

static void on_fd(shmbus_dispatcher_t *d, uint32_t idx, uint32_t gen, int32_t res)
{
	if (idx >= d->nfds)
		return;
	struct dfd *f = &d->fds[idx];
	if (!f->used || f->gen != gen)
		return;
	f->armed = false;
	uint32_t revents = res < 0 ? POLLNVAL : (uint32_t)res;
	int fd = f->fd;
	shmbus_fd_cb_t cb = f->cb;
	void *arg = f->arg;
	if (revents & POLLNVAL)
		forget_fd(d, f);
	cb(fd, revents, arg);
	/* the callback may have removed it (or removed and added another) */
	f = &d->fds[idx];
	if (f->used && !f->armed && f->gen == gen && arm_user_fd(d, idx) < 0) {
		forget_fd(d, f);
		cb(fd, POLLNVAL, arg);
	}
}

/* ----------------------------------------------------------------- loop */

static void fire_tick(shmbus_dispatcher_t *d, void *obj, uint64_t gen)
{
	(void)obj;
	if (gen != d->tick_gen)
		return;
	d->ticking = false;
	bool any = false;
	for (uint32_t i = 0; i < d->nsubs; i++) {
		struct dsub *ds = d->subs[i];
		if (!ds)
			continue;
		any = true;
		/* dead group peers holding our events are found by someone
		 * who looks; a sleeping dispatcher looks on this tick */
		reclaim_if_due(ds->sub->bus);
		if (!ds->shutdown)
			ds->ready = true; /* and errors get another chance */
	}
	for (uint32_t i = 0; i < d->nfds; i++)
		any |= d->fds[i].used;
	check_fds(d);
	if (any)
		ensure_tick(d);
}

static void handle_results(shmbus_dispatcher_t *d, bool wait)
{
	if (!d->pool)
		return;
	struct pool_job jobs[64];
	size_t n;
	/* all of them: the kick that announced them is already drained */
	do {
		n = pool_collect(d->pool, jobs, 64, wait);
		for (size_t k = 0; k < n; k++) {
			struct dsub *ds = jobs[k].ds;
			struct dslot *sl = &ds->win[jobs[k].slot];
			if (sl->state == DSLOT_RUNNING && sl->gen == jobs[k].gen)
				complete(d, ds, jobs[k].slot, jobs[k].rc);
		}
		wait = false;
	} while (n == 64);
}

static bool has_work(const shmbus_dispatcher_t *d)
{
	for (uint32_t i = 0; i < d->nsubs; i++) {
		const struct dsub *ds = d->subs[i];
		if (ds && ((ds->ready && can_take(ds)) || (ds->due && can_start(ds))))
			return true;
	}
	return false;
}

static void work(shmbus_dispatcher_t *d)
{
	handle_results(d, false);
	timers_run(&d->timers, d, now_mono_ns());
	for (uint32_t i = 0; i < d->nsubs; i++) {
		struct dsub *ds = d->subs[i];
		if (ds && ((ds->ready && can_take(ds)) || (ds->due && can_start(ds))))
			pump(d, ds);
	}
	flush_dead_letters(d);
}

static void on_done(shmbus_dispatcher_t *d, const struct dwait_done *c)
{
	if (c->token == DWAIT_TIMER_TOKEN)
		return; /* work() runs what is due */
	uint32_t idx = token_index(c->token), gen = token_gen(c->token);
	switch (token_kind(c->token)) {
	case KIND_SUB:
		if (idx < d->nsubs && d->subs[idx] && d->subs[idx]->armed && d->subs[idx]->arm_gen == gen) {
			d->subs[idx]->armed = false;
			d->subs[idx]->ready = true;
		}
		break;
	case KIND_FD:
		on_fd(d, idx, gen, c->res);
		break;
	case KIND_KICK:
		if (gen == (d->kick_gen & 0xFFFFFF)) {
			uint64_t junk;
			(void)!read(d->kick_fd, &junk, sizeof junk);
			d->kick_armed = false;
		}
		break;
	}
}

static bool take_stop(shmbus_dispatcher_t *d)
{
	return __atomic_exchange_n(&d->stop, 0, __ATOMIC_ACQ_REL) != 0;
}

/* One turn; *stopped says whether stop() ended it. */
static int turn(shmbus_dispatcher_t *d, int64_t timeout_ns, bool *stopped)
{
	*stopped = false;
	if (dispatch_current == d || d->flushing)
		return shmbus__fail(EBUSY, "not from inside a handler or an on_dead callback");
	d->completed = 0;
	work(d);
	int64_t t = timeout_ns;
	if (has_work(d) || d->completed) {
		t = 0;
	} else {
		uint64_t next = timers_next(&d->timers);
		if (next != UINT64_MAX) {
			uint64_t now = now_mono_ns();
			int64_t until = next > now ? (int64_t)(next - now) : 0;
			if (t < 0 || until < t)
				t = until;
		}
	}
	if (__atomic_load_n(&d->stop, __ATOMIC_ACQUIRE))
		t = 0;
	struct dwait_done done[64];
	int k = d->w->ops->wait(d->w, t, done, 64);
	if (k < 0 && k != -EINTR)
		return shmbus__fail(-k, "dispatcher wait failed: %s", strerror(-k));
	for (int i = 0; i < k; i++)
		on_done(d, &done[i]);
	work(d);
	run_deferred(d);
	arm_kick(d);
	d->w->ops->set_timer(d->w, timers_next(&d->timers));
	if (d->fd_exported) {
		/* an outer loop sleeps on our fd, not in our wait: what we armed
		 * goes to the kernel now, and work left makes the fd readable */
		if (has_work(d))
			kick(d);
		d->w->ops->flush(d->w);
	}
	if (take_stop(d)) {
		*stopped = true;
		return shmbus__fail(EINTR, "dispatcher stopped");
	}
	if (k == -EINTR && d->completed == 0)
		return shmbus__fail(EINTR, "interrupted by a signal");
	return (int)d->completed;
}

SHMBUS_API int shmbus_dispatcher_run_once(shmbus_dispatcher_t *d, int64_t timeout_ns)
{
	if (!d)
		return shmbus__fail(EINVAL, "dispatcher is NULL");
	bool stopped;
	return turn(d, timeout_ns, &stopped);
}

SHMBUS_API int shmbus_dispatcher_run(shmbus_dispatcher_t *d)
{
	if (!d)
		return shmbus__fail(EINVAL, "dispatcher is NULL");
	for (;;) {
		bool stopped;
		int rc = turn(d, -1, &stopped);
		if (stopped)
			return 0;
		if (rc < 0 && rc != -EINTR)
			return rc;
	}
}

SHMBUS_API void shmbus_dispatcher_close(shmbus_dispatcher_t *d)
{
	if (!d)
		return;
	if (dispatch_current == d || d->flushing) {
		/* freeing what the caller's own stack frames use: refuse */
		shmbus__fail(EBUSY, "shmbus_dispatcher_close from inside one of its handlers is ignored");
		return;
	}
	run_deferred(d);
	while (d->clients) {
		struct dispatch_client *c = d->clients;
		d->clients = c->next;
		c->unbind(c);
	}
	for (uint32_t i = 0; i < d->nsubs; i++)
		if (d->subs[i])
			drop_sub(d, d->subs[i]);
	pool_close(d->pool);
	d->w->ops->close(d->w);
	close(d->kick_fd);
	timers_free(&d->timers);
	free(d->deferred);
	free(d->dying);
	free(d->subs);
	free(d->fds);
	free(d);
}
