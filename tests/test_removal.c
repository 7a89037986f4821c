/*
 * test_removal.c - a subscription removed while its consumers are in the
 * middle of taking or holding a run: DETACHED consumer entries, the order
 * of a taker's steps against a removal, the cells of a run left
 * unreleased. Written by an independent review as reproducers; each
 * failed before its fix.
 *
 * Each test drives the library into an interleaving the protocol allows,
 * using the same internal steps the consumer's code performs (queue_take,
 * the held[] stores, queue_release) where a real process would have to be
 * preempted at one exact instruction.
 */
#include "common.h"
#include "internal.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(removal, .init = tc_init, .fini = tc_fini, .timeout = 60);

static uint64_t ring_used(shmbus_bus_t *bus)
{
	shmbus_metrics_t m;
	cr_assert_eq(shmbus_get_metrics(bus, &m), 0);
	return m.ring_used;
}

/* take_run up to its fence, as a consumer does it: the run moved into the
 * intent (OWNED) and into held[] (UNSEEN), the cells not released yet, as
 * poll_next leaves them when it turns to the catch-up after a take
 * (next_ready returned 2 and catchup_next handed out a log event or
 * -EAGAIN). Returns the run's length. */
static uint32_t take_like_take_run(shmbus_sub_t *sub, uint32_t max)
{
	struct queue_view q = bus_queue(sub->bus, sub->index, SEG_QUEUE_NORMAL);
	uint64_t descs[SEG_TAKE_MAX], first;
	uint32_t n = queue_take(&q, &sub->cons->take, max, UINT64_MAX, descs, &first);
	for (uint32_t i = 0; i < n; i++) {
		at_store_relaxed_u64(&sub->cons->held[i], descs[i] | SEG_DESC_UNSEEN);
		sub->held_used |= 1ull << i;
		sub->held_count++;
		sub->ready[SEG_QUEUE_NORMAL][i].desc = descs[i] | SEG_DESC_UNSEEN;
		sub->ready[SEG_QUEUE_NORMAL][i].k = i;
	}
	sub->ready_head[SEG_QUEUE_NORMAL] = 0;
	sub->ready_n[SEG_QUEUE_NORMAL] = n;
	sub->cells_first = first;
	sub->cells_n = n;
	sub->cells_cls = SEG_QUEUE_NORMAL;
	at_fence_seq_cst();
	return n;
}

/* ------------------------------------------- every entry left DETACHED */

/* A removal leaves every entry of a group whose eight consumers were
 * mid-take DETACHED. The record is free; the next subscription created in
 * it finds no FREE consumer entry, and sub_attach_locked does not check
 * consumer_join's -ENOSPC: the handle gets consumer index -28 and a
 * seg_consumer pointer far outside its record. */
Test(removal, a_fresh_record_whose_entries_are_all_detached_gets_a_valid_consumer)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *h[SEG_CONSUMERS];
	shmbus_sub_opts_t o = {.group = "g"};
	for (unsigned i = 0; i < SEG_CONSUMERS; i++)
		cr_assert_eq(shmbus_subscribe(bus, &o, &h[i]), 0, "%s", shmbus_errmsg());
	uint32_t idx = h[0]->index;
	shmbus_pub_t *pub = tc_pub(bus, NULL, -1);
	for (uint32_t i = 0; i < SEG_CONSUMERS; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "x", 0, i), 0);
	for (unsigned i = 0; i < SEG_CONSUMERS; i++)
		cr_assert_eq(take_like_take_run(h[i], 1), 1);
	/* someone removes the group while its eight members are mid-take */
	cr_assert_eq(shmbus_unsubscribe_id(bus, shmbus_sub_id(h[0])), 0);
	struct seg_sub *s = bus_sub(bus, idx);
	for (unsigned c = 0; c < SEG_CONSUMERS; c++)
		cr_assert_eq(s->consumers[c].state, SEG_CONSUMER_DETACHED, "entry %u", c);
	cr_assert_eq(s->state, SEG_SUB_FREE);

	shmbus_sub_t *sub = NULL;
	int rc = shmbus_subscribe(bus, NULL, &sub);
	if (rc == 0 && sub->index != idx)
		cr_log_info("subscribe chose record %u, not the all-DETACHED record %u", sub->index, idx);
	cr_assert(rc < 0 || sub->consumer < SEG_CONSUMERS,
		  "subscribe returned %d with consumer index %u (%d): cons at %+ld bytes from its record", rc,
		  sub->consumer, (int)sub->consumer, (long)((char *)sub->cons - (char *)sub->rec));
	/* not reached with the bug: nothing is closed, the handle would write
	 * outside its record */
}

/* ------------------------------------------- a run owned at the removal */

/* A consumer whose run is OWNED when its subscription is removed by
 * someone else (shmbus_unsubscribe_id, or another member's
 * shmbus_unsubscribe) is marked DETACHED; its polls then stop at
 * poll_usable, so it never releases the run's cells, and closing the
 * handle goes through sub_detach's else branch, where sub_consumer_forget
 * refuses (the intent is still OWNED). The entry stays DETACHED while the
 * process lives, and the cells stay taken: one lap later every push into
 * the record fails (-ENOBUFS), so the record's next subscription gets
 * nothing. */
Test(removal, closing_a_handle_whose_run_was_owned_at_the_removal_frees_entry_and_cells)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *a = tc_sub(bus, NULL);
	uint32_t idx = a->index;
	shmbus_pub_t *pub = tc_pub(bus, NULL, 2 * (int64_t)TC_SEC_NS);
	for (uint32_t i = 0; i < 3; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "x", 0, i), 0);
	cr_assert_eq(take_like_take_run(a, 16), 3);
	cr_assert_eq(shmbus_unsubscribe_id(bus, shmbus_sub_id(a)), 0);
	struct seg_consumer *con = a->cons;
	cr_assert_eq(con->state, SEG_CONSUMER_DETACHED);
	cr_expect_eq(ring_used(bus), 0, "the removal revoked the run's holds");
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_poll(a, &ev), -ESHUTDOWN);
	shmbus_sub_close(a);
	cr_expect_eq(con->state, SEG_CONSUMER_FREE, "entry left %u (intent %#x) after its handle was closed",
		     con->state, con->take.info);

	shmbus_sub_t *next = tc_sub(bus, NULL);
	cr_assert_eq(next->index, idx, "the record is reused");
	uint32_t got = 0, sent = 3 * cfg.slots;
	for (uint32_t i = 0; i < sent; i++) {
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "after", 0, i), 0, "%s", shmbus_errmsg());
		while (shmbus_poll(next, &ev) == 1) {
			got++;
			cr_assert_eq(shmbus_release(next, ev), 0);
		}
	}
	shmbus_sub_info_t si[16];
	int ns = shmbus_list_subscriptions(bus, NULL, si, 16);
	cr_expect_eq(got, sent, "the record's next subscription got %u of %u (list: %d)", got, sent, ns);
	shmbus_sub_close(next);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* --------------------------------------- a taker killed after the sweep */

struct late {
	int up[2];	/* child -> parent: 'T' taken, 'R' ready to be killed */
	uint32_t n;
};

/* The consumer of durable subscription "late": its take_run has moved
 * head (OWNED, "preempted right after its head CAS"). Once the removal has
 * swept its held[] and before it reads the intent - here the remover is
 * parked in wait_dropped on held[39], a stand-in for the remover being
 * descheduled between its held[] sweep and its intent read - it goes on
 * as take_run does: held[] stores, fence, sees the removal, and is killed
 * before it drops the run. take_run drops the holds before it clears its
 * intent (queue_release): in the opposite order the remover read the
 * intent as NONE, freed the entry, and the dead taker's holds leaked. */
static int late_consumer(void *arg)
{
	struct late *lt = arg;
	shmbus_bus_t *bus = NULL;
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.subscriber_id = "late", .durable = true};
	if (shmbus_open(tc_bus, NULL, &bus) < 0 || shmbus_subscribe(bus, &o, &sub) < 0)
		return CHILD_FAIL("subscribe: %s", shmbus_errmsg());
	struct seg_consumer *con = sub->cons;
	struct queue_view q = bus_queue(bus, sub->index, SEG_QUEUE_NORMAL);
	uint64_t descs[SEG_TAKE_MAX], first;
	uint32_t n = queue_take(&q, &con->take, 16, UINT64_MAX, descs, &first);
	lt->n = n;
	/* the stand-in for a descheduled remover: a drop of ours in flight on
	 * the last entry (a tombstone: it holds nothing) */
	uint64_t parked = SEG_DESC_TOMBSTONE | SEG_DESC_DROPPING;
	at_store_release_u64(&con->held[SEG_HELD_MAX - 1], parked);
	tc_write_byte(lt->up[1], 'T');
	while (at_load_acquire_u32(&sub->rec->state) == SEG_SUB_ACTIVE)
		sched_yield();
	tc_sleep_ms(300); /* the remover has swept held[0..38] and waits on 39 */
	for (uint32_t i = 0; i < n; i++)
		at_store_relaxed_u64(&con->held[i], descs[i] | SEG_DESC_UNSEEN);
	at_fence_seq_cst();
	if (at_load_acquire_u32(&sub->rec->state) == SEG_SUB_ACTIVE)
		return CHILD_FAIL("the removal did not start");
	/* the drops come first, the intent is cleared after them: killed
	 * before the drops, the intent is still OWNED */
	(void)first;
	at_store_release_u64(&con->held[SEG_HELD_MAX - 1], 0); /* our drop ends */
	tc_write_byte(lt->up[1], 'R');
	for (;;)
		pause(); /* killed before held_drop */
}

static void late_case(void)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.reclaim_timeout_ns = 4 * TC_SEC_NS; /* wait_dropped waits up to 2 s */
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.subscriber_id = "late", .durable = true};
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0);
	uint32_t idx = sub->index;
	shmbus_pub_t *pub = tc_pub(bus, NULL, -1);
	for (uint32_t i = 0; i < 5; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "late", 0, i), 0);
	struct late *lt = tc_shared_alloc(sizeof *lt);
	cr_assert_eq(pipe(lt->up), 0);
	pid_t child = tc_fork(late_consumer, lt);
	char c = 0;
	cr_assert_eq(tc_read_byte(lt->up[0], 10000, &c), 0);
	cr_assert_eq(c, 'T');
	cr_assert_eq(lt->n, 5);

	cr_assert_eq(shmbus_unsubscribe(sub), 0); /* removes "late" under its live taker */
	cr_assert_eq(tc_read_byte(lt->up[0], 10000, &c), 0);
	cr_assert_eq(c, 'R');
	struct seg_sub *s = bus_sub(bus, idx);
	unsigned st = s->consumers[1].state;
	tc_kill9(child);
	shmbus_reclaim(bus);
	uint64_t used = ring_used(bus);
	cr_expect_eq(used, 0, "%llu ring slots held for good (the dead taker's entry was left %u by the removal)",
		     (unsigned long long)used, st);
	close(lt->up[0]);
	close(lt->up[1]);
	tc_shared_free(lt, sizeof *lt);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* The remover reads the intent after the taker stored its run in held[]:
 * the intent still names the run, the entry stays DETACHED, and reclaim
 * finishes it once the taker is dead. */
Test(removal, a_taker_killed_after_a_removal_swept_its_entries_leaks_nothing)
{
	late_case();
}

/* ------------------------------------ a normal run left by the catch-up */

/* poll_next can return with the
 * cells of a normal run still unreleased (take_run returned it, a gap
 * turned up, the catch-up handed out a log event or -EAGAIN). The next
 * poll that takes an urgent run overwrites the take intent and
 * cells_first/cells_n: the normal run's cells are never released, and one
 * lap later every push into the normal queue fails. */
Test(removal, an_urgent_take_after_a_catch_up_return_releases_the_normal_runs_cells)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 2 * (int64_t)TC_SEC_NS);
	for (uint32_t i = 0; i < 3; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "n", 0, i), 0);
	cr_assert_eq(take_like_take_run(sub, 16), 3); /* as left by the catch-up return */
	uint64_t first = sub->cells_first;
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "u", SHMBUS_PRIORITY_HIGH, 99), 0);
	const shmbus_event_t *ev;
	int got = 0;
	while (shmbus_poll(sub, &ev) == 1) {
		got++;
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	cr_assert_eq(got, 4);
	struct queue_view q = bus_queue(bus, sub->index, SEG_QUEUE_NORMAL);
	unsigned stuck = 0;
	for (uint64_t p = first; p < first + 3; p++)
		stuck += at_load_acquire_u64(&q.cells[seg_cell_index(p, q.cap)].turn) == p + 1;
	cr_expect_eq(stuck, 0, "%u cells of the normal run were never released", stuck);
	uint32_t n = 0, sent = 2 * cfg.slots;
	for (uint32_t i = 0; i < sent; i++) {
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "n", 0, i), 0);
		while (shmbus_poll(sub, &ev) == 1) {
			n++;
			cr_assert_eq(shmbus_release(sub, ev), 0);
		}
	}
	cr_expect_eq(n, sent, "got %u of %u afterwards", n, sent);
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* ------------------------- a removed record reused under a live consumer */

/* The rule itself, step by step: a subscription removed by id while its
 * consumer has not polled since keeps its record from the next
 * subscription until that consumer sees the removal. Reused at once, the
 * consumer's next take (take_like_take_run: it passed poll_usable before
 * the removal) took the new subscription's events. */
Test(removal, a_removed_record_waits_for_its_consumer_to_see_the_removal)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.max_subscribers = 1;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	shmbus_sub_t *a = tc_sub(bus, NULL), *b = NULL;
	cr_assert_eq(shmbus_unsubscribe_id(bus, shmbus_sub_id(a)), 0);
	int rc = shmbus_subscribe(bus, NULL, &b);
	if (rc == 0) {
		/* what a consumer preempted inside its poll then does */
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "y", 0, 1), 0);
		uint32_t stolen = take_like_take_run(a, 1);
		cr_assert_fail("the record went to a new subscription while the removed one's consumer could still take "
			       "(it took %u of its events)",
			       stolen);
	}
	cr_assert_eq(rc, -ENOSPC, "%s", shmbus_errmsg());
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_poll(a, &ev), -ESHUTDOWN);
	cr_assert_eq(shmbus_subscribe(bus, NULL, &b), 0, "once the consumer has seen it: %s", shmbus_errmsg());
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "y", 0, 1), 0);
	cr_assert_eq(tc_drain(b, NULL, NULL), 1);
	shmbus_sub_close(a);
	shmbus_sub_close(b);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* A thread polls subscription A while another removes A by id and
 * subscribes B on a bus of one subscription record. */
struct reuse_poller {
	shmbus_sub_t *_Atomic sub;
	_Atomic int seen_removed, may_close, closed, quit;
	_Atomic uint32_t foreign; /* B's events A's handle returned */
};

static void *reuse_poll(void *arg)
{
	struct reuse_poller *p = arg;
	while (!p->quit) {
		shmbus_sub_t *s = p->sub;
		if (!s)
			continue;
		const shmbus_event_t *ev[8];
		int n = shmbus_poll_batch(s, ev, 8);
		if (n == -ESHUTDOWN) {
			p->sub = NULL;
			p->seen_removed = 1;
			while (!p->may_close && !p->quit)
				;
			p->may_close = 0;
			shmbus_sub_close(s);
			p->closed = 1;
			continue;
		}
		for (int i = 0; i < n; i++)
			p->foreign += strcmp(shmbus_event_name(ev[i]), "y") == 0;
		if (n > 0)
			shmbus_release_batch(s, ev, n);
	}
	return NULL;
}

static void reuse_wait(_Atomic int *flag)
{
	uint64_t end = tc_now_ns() + 10 * TC_SEC_NS;
	while (!*flag && tc_now_ns() < end)
		;
	cr_assert(*flag, "the poller did not get there");
}

/* The same end to end, with a real poller thread and CPU contention: an
 * independent property test found B's events taken by A's handle in
 * about one iteration in five this way (here it needs more luck than 600
 * iterations give; the step-by-step test above is the reproducer). B
 * subscribes at once after the removal, or once A's poller has seen it
 * (-ENOSPC meanwhile); either way A's handle returns none of B's events
 * and B gets all of its own. */
Test(removal, a_removed_record_is_not_reused_while_its_consumer_may_still_take)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.max_subscribers = 1;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	pid_t busy = fork(); /* contention: the poller gets preempted mid-take */
	cr_assert_geq(busy, 0);
	if (busy == 0)
		for (;;)
			;
	struct reuse_poller *p = calloc(1, sizeof *p);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, reuse_poll, p), 0);
	const char *x[] = {"x"}, *y[] = {"y"};
	uint32_t lost = 0, enospc = 0;
	for (int it = 0; it < 600; it++) {
		shmbus_filter_t *f;
		shmbus_sub_t *a, *b;
		cr_assert_eq(shmbus_filter_names(x, 1, &f), 0);
		cr_assert_eq(shmbus_subscribe(bus, &(shmbus_sub_opts_t){.filter = f}, &a), 0, "%s", shmbus_errmsg());
		shmbus_filter_free(f);
		p->seen_removed = p->closed = 0;
		p->sub = a;
		for (int i = 0; i < it % 4; i++)
			cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "x", 0, (uint32_t)i), 0);
		cr_assert_eq(shmbus_unsubscribe_id(bus, shmbus_sub_id(a)), 0);
		cr_assert_eq(shmbus_filter_names(y, 1, &f), 0);
		int rc = shmbus_subscribe(bus, &(shmbus_sub_opts_t){.filter = f}, &b);
		bool waited = false;
		if (rc == -ENOSPC) { /* A's consumer has not seen the removal yet */
			enospc++;
			reuse_wait(&p->seen_removed);
			p->may_close = 1;
			reuse_wait(&p->closed);
			waited = true;
			rc = shmbus_subscribe(bus, &(shmbus_sub_opts_t){.filter = f}, &b);
		}
		shmbus_filter_free(f);
		cr_assert_eq(rc, 0, "subscribe B: %s", shmbus_errmsg());
		for (uint32_t i = 0; i < 5; i++)
			cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "y", 0, i), 0);
		if (!waited) {
			reuse_wait(&p->seen_removed);
			p->may_close = 1;
			reuse_wait(&p->closed);
		}
		int got = tc_drain(b, NULL, NULL);
		lost += got < 5 ? 5 - (uint32_t)got : 0;
		cr_assert_eq(shmbus_unsubscribe(b), 0);
	}
	p->quit = 1;
	pthread_join(t, NULL);
	kill(busy, SIGKILL);
	waitpid(busy, NULL, 0);
	cr_log_info("B had to wait for A's consumer %u times of 600", enospc);
	cr_expect_eq(p->foreign, 0, "the removed handle returned %u of B's events", p->foreign);
	cr_expect_eq(lost, 0, "B lost %u events to the removed handle", lost);
	free(p);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}
