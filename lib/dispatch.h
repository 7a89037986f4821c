/*
 * dispatch.h - the dispatcher's parts, shared by dispatch.c (the loop),
 * dispatch_timers.c (deadlines), dispatch_pool.c (worker threads) and
 * request.c (request/response on top of it).
 */
#ifndef SHMBUS_LIB_DISPATCH_H
#define SHMBUS_LIB_DISPATCH_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "dwait.h"
#include "internal.h"

/* ------------------------------------------------------------- timers */

/*
 * A min-heap of deadlines (CLOCK_MONOTONIC ns). Cancelling is lazy: an
 * entry carries its owner's generation at arming, and the fire function
 * ignores an entry whose owner has moved on.
 */
typedef void (*timer_fire_fn)(shmbus_dispatcher_t *d, void *obj, uint64_t gen);

struct timer_entry {
	uint64_t deadline;
	timer_fire_fn fire;
	void *obj;
	uint64_t gen;
};

struct timer_heap {
	struct timer_entry *e;
	size_t n, cap;
};

int timers_add(struct timer_heap *h, uint64_t deadline, timer_fire_fn fire, void *obj, uint64_t gen);
/* The earliest deadline, UINT64_MAX if none. */
uint64_t timers_next(const struct timer_heap *h);
/* Pop and fire every entry due at `now`. Returns how many fired. */
size_t timers_run(struct timer_heap *h, shmbus_dispatcher_t *d, uint64_t now);
/* Remove every entry of obj (an owner that goes away). */
void timers_drop(struct timer_heap *h, const void *obj);
void timers_free(struct timer_heap *h);

/* ------------------------------------------------------- worker pool */

struct dslot;
struct dsub;

struct pool_job {
	struct dsub *ds;
	uint32_t slot;
	uint64_t gen;
	int32_t rc; /* the handler's result, once done */
};

struct pool;
/* Start n threads that run handlers; done jobs are queued and announced by
 * writing to notify_fd (an eventfd). */
int pool_open(uint32_t n, int notify_fd, struct pool **out);
/* Joins the threads after the jobs queued so far are done. */
void pool_close(struct pool *p);
int pool_submit(struct pool *p, const struct pool_job *job);
/* Move up to cap finished jobs to out; with wait, block until at least
 * one is there. Returns the count. */
size_t pool_collect(struct pool *p, struct pool_job *out, size_t cap, bool wait);

/* ------------------------------------------------------------- the loop */

enum dslot_state {
	DSLOT_RUNNING = 1, /* its handler runs (inline or on a worker) */
	DSLOT_WAITING = 2, /* failed; its retry is due at `due` */
	DSLOT_DUE = 3,	   /* its retry is due, waiting for a free handler */
	DSLOT_DONE = 4,	   /* handled, or dead-lettered: may be released */
	DSLOT_DYING = 5,   /* to be dead-lettered: its letter is written, with the
			      turn's others, at the end of the turn (flush_dead_letters) */
};

/* One event of a subscription's window, from delivery to release. */
struct dslot {
	const shmbus_event_t *ev; /* in the ring, held by the subscription */
	shmbus_event_t *copy;	  /* private copy that retries run on */
	uint32_t attempts;	  /* handler runs started */
	int32_t last_error;
	uint8_t state;
	uint64_t gen; /* bumped at every change of state: stale timers */
	uint64_t due; /* retry time (monotonic) */
	uint64_t expires_mono; /* expiry on our clock, UINT64_MAX never */
};

#define DSUB_WINDOW SEG_HELD_MAX

struct dsub {
	shmbus_dispatcher_t *d;
	shmbus_sub_t *sub;
	uint32_t index; /* in d->subs */
	shmbus_handler_t handler;
	void *arg;
	shmbus_dead_fn_t on_dead;
	bool inline_only; /* internal handlers run on the dispatcher's thread */
	/* who it is, kept at add time: dead letters written after someone
	 * removed the subscription must not take the next record's name */
	shmbus_sub_id_t sub_id;
	char subscriber[SHMBUS_ID_MAX + 1], group[SHMBUS_ID_MAX + 1];
	uint32_t concurrency;
	uint32_t max_retries;
	uint64_t retry_base_ns, retry_max_ns;
	uint32_t running; /* slots in RUNNING */
	uint32_t due;	  /* slots in DUE */
	struct dslot win[DSUB_WINDOW]; /* ring in delivery order */
	uint32_t head, count;
	bool ready;	  /* may have events: pump it */
	bool armed;	  /* a futex wait is in flight */
	bool shutdown;	  /* the subscription was removed under us: its record
			     and counters may serve another one now */
	uint32_t arm_gen;
	uint64_t rng;	  /* jitter */
};

struct dfd {
	int fd;
	uint32_t events;
	shmbus_fd_cb_t cb;
	void *arg;
	uint32_t gen;
	bool used;
	bool armed;
};

struct shmbus_dispatcher {
	struct dwait *w;
	shmbus_backend_t backend;
	struct dsub **subs;
	uint32_t nsubs, subs_cap;
	struct dfd *fds;
	uint32_t nfds, fds_cap;
	struct timer_heap timers;
	int kick_fd;	   /* eventfd: stop() and finished worker jobs */
	bool kick_armed;
	uint32_t kick_gen;
	int stop;	   /* set by stop(), atomically */
	bool fd_exported;  /* shmbus_dispatcher_fd was called: keep it true */
	bool ticking;	   /* the periodic sweep timer is armed */
	uint64_t tick_gen;
	struct pool *pool;
	uint32_t workers;
	uint32_t completed; /* handler runs finished in this run_once */
	uint32_t arm_seq;   /* generations of futex waits, dispatcher-wide */
	/* work that must wait until no handler of ours is on the stack */
	struct deferred {
		void (*fn)(void *arg);
		void *arg;
	} *deferred;
	size_t ndeferred, deferred_cap;
	/* objects bound to this dispatcher (requesters) to let go of at close */
	struct dispatch_client *clients;
	/* slots to dead-letter at the end of the turn, one append and one
	 * sync for all of them (dispatch.c, flush_dead_letters) */
	struct dying {
		struct dsub *ds;
		uint32_t slot;
		shmbus_dead_reason_t reason;
	} *dying;
	size_t ndying, dying_cap;
	bool flushing; /* flush_dead_letters runs (its on_dead callbacks) */
};

/* Something bound to a dispatcher that must let go when it closes. */
struct dispatch_client {
	void (*unbind)(struct dispatch_client *c);
	struct dispatch_client *next;
};

/* The dispatcher whose handler this thread runs now (inline or worker),
 * NULL outside handlers. */
extern __thread shmbus_dispatcher_t *dispatch_current;

/* Run fn(arg) at the end of the current turn, once no handler is on the
 * stack (or at once if none is). 0 or -ENOMEM. */
int dispatch_defer(shmbus_dispatcher_t *d, void (*fn)(void *), void *arg);
void dispatch_bind_client(shmbus_dispatcher_t *d, struct dispatch_client *c);
void dispatch_unbind_client(shmbus_dispatcher_t *d, struct dispatch_client *c);

/* The handler attempt of the job this thread runs (shmbus_handler_attempt). */
extern __thread unsigned dispatch_current_attempt;
/* Worker side: run a job's handler, storing its result in job->rc. */
void dispatch_run_job(struct pool_job *job);

/* request.c gets the dispatcher's timers and an internal handler slot. */
int dispatch_add_internal(shmbus_dispatcher_t *d, shmbus_sub_t *sub, shmbus_handler_t h, void *arg);
int dispatch_timer(shmbus_dispatcher_t *d, uint64_t deadline, timer_fire_fn fire, void *obj, uint64_t gen);

#endif
