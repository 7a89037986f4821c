/*
 * test_fault.c - fault injection: kill -9 of a publisher between reserve
 * and commit, of subscribers (plain, durable, group member) while they hold
 * events, and a subscriber that stays alive but never releases.
 *
 * In every test a surviving subscriber in the parent must receive every
 * committed event, and publishers must get past more than a ring's worth
 * of events after the fault.
 */
#include "common.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(fault, .init = tc_init, .fini = tc_fini, .timeout = 90);

#define MAX_EVENTS 4096u

static shmbus_config_t fault_cfg(void)
{
	shmbus_config_t c = tc_small_cfg(); /* 256 slots, reclaim 200 ms */
	c.stall_timeout_ns = 120 * TC_SEC_NS; /* only reclaim may free a dead member's slots */
	return c;
}

/* --------------------------------------------------------- the survivor */

struct survivor {
	shmbus_sub_t *sub;
	uint8_t seen[MAX_EVENTS];
	unsigned count, dup, foreign, doomed, out_of_order;
	uint32_t next;
};

static void survivor_record(const shmbus_event_t *ev, void *arg)
{
	struct survivor *s = arg;
	if (strcmp(shmbus_event_name(ev), "doomed") == 0) {
		s->doomed++;
		return;
	}
	uint32_t i = tc_payload_u32(ev);
	if (i >= MAX_EVENTS) {
		s->foreign++;
		return;
	}
	if (s->seen[i]++)
		s->dup++;
	if (i < s->next)
		s->out_of_order++;
	s->next = i + 1;
	s->count++;
}

static void survivor_drain(struct survivor *s)
{
	int rc = tc_drain(s->sub, survivor_record, s);
	cr_assert_geq(rc, 0, "survivor drain: %d (%s)", rc, shmbus_errmsg());
}

static void survivor_check(struct survivor *s, uint32_t n)
{
	survivor_drain(s);
	unsigned missing = 0;
	uint32_t first = UINT32_MAX;
	for (uint32_t i = 0; i < n; i++)
		if (!s->seen[i]) {
			missing++;
			if (first == UINT32_MAX)
				first = i;
		}
	cr_expect_eq(missing, 0, "surviving subscriber lost %u committed events (first #%u)", missing, first);
	cr_expect_eq(s->count, n, "surviving subscriber got %u of %u", s->count, n);
	cr_expect_eq(s->dup, 0, "surviving subscriber got %u duplicates", s->dup);
	cr_expect_eq(s->doomed, 0, "an uncommitted (killed) claim was delivered");
	cr_expect_eq(s->foreign, 0);
	cr_expect_eq(s->out_of_order, 0, "surviving subscriber saw events out of order");
}

/* Publish [first, first + n) as "after", draining the survivor as we go. */
static void publish_draining(shmbus_pub_t *pub, struct survivor *s, uint32_t first, uint32_t n)
{
	for (uint32_t i = first; i < first + n; i++) {
		int rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "after", 0, i);
		cr_assert_eq(rc, 0, "publish #%u after the fault: %d (%s)", i, rc, shmbus_errmsg());
		survivor_drain(s);
	}
}

static void wait_byte(int fd, char want, const char *what)
{
	char c = 0;
	int rc = tc_read_byte(fd, 15000, &c);
	cr_assert_eq(rc, 0, "%s: no signal from the child (%d)", what, rc);
	cr_assert_eq(c, want, "%s: child sent '%c'", what, c);
}

static void pipe_pair(int fds[2])
{
	cr_assert_eq(pipe(fds), 0);
}

/* Wait up to timeout_ms for a bus metric to reach at least `want`. */
static uint64_t metric_eventually(shmbus_bus_t *bus, size_t offset, uint64_t want, int timeout_ms)
{
	uint64_t deadline = tc_now_ns() + (uint64_t)timeout_ms * TC_MS_NS;
	shmbus_metrics_t mt;
	for (;;) {
		cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
		uint64_t v;
		memcpy(&v, (const char *)&mt + offset, sizeof v);
		if (v >= want || tc_now_ns() >= deadline)
			return v;
		tc_sleep_ms(10);
	}
}

/* ------------------------------------------------- children used below */

struct child {
	int up;	  /* child -> parent */
	int down; /* parent -> child */
	const char *subscriber_id, *group;
	bool durable;
	size_t claim_len;
	unsigned hold;	 /* events to take and keep before reporting 'H' */
	unsigned expect; /* events to receive before finishing */
	/* results */
	uint32_t count[64], redelivered[64];
	uint32_t order[64]; /* payload indexes in the order they first came */
	unsigned norder;
	unsigned total, foreign, doomed;
	uint64_t missed, drained;
	int release_rc[64];
};

/* Reserve a claim, tell the parent, and wait to be killed. */
static int claim_and_hang(void *arg)
{
	struct child *c = arg;
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("open %d", rc);
	shmbus_pub_t *pub = NULL;
	if ((rc = shmbus_pub_open(bus, NULL, &pub)) < 0)
		return CHILD_FAIL("pub_open %d", rc);
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "doomed"};
	shmbus_claim_t claim;
	if ((rc = shmbus_reserve(pub, &m, c->claim_len, &claim)) < 0)
		return CHILD_FAIL("reserve %d", rc);
	memset(claim.payload, 0xDD, c->claim_len);
	tc_write_byte(c->up, 'C');
	for (;;)
		pause();
}

/* Subscribe, take `hold` events without releasing, tell the parent, wait
 * to be killed. */
static int hold_and_hang(void *arg)
{
	struct child *c = arg;
	shmbus_bus_t *bus = NULL;
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.subscriber_id = c->subscriber_id, .group = c->group, .durable = c->durable};
	int rc = tc_child_subscribe(&o, &bus, &sub);
	if (rc)
		return rc;
	tc_write_byte(c->up, 'R');
	unsigned held = 0;
	uint64_t deadline = tc_now_ns() + 20 * TC_SEC_NS;
	while (held < c->hold && tc_now_ns() < deadline) {
		const shmbus_event_t *ev = NULL;
		rc = shmbus_wait(sub, 100 * (int64_t)TC_MS_NS, &ev);
		if (rc < 0 && rc != -EINTR)
			return CHILD_FAIL("wait %d", rc);
		if (rc == 1)
			held++;
	}
	if (held < c->hold)
		return CHILD_FAIL("held only %u of %u", held, c->hold);
	tc_write_byte(c->up, 'H');
	for (;;)
		pause();
}

/* Subscribe (attaching to a durable or group subscription), then receive
 * `expect` events, recording payload indexes and the redelivered flag. */
static int receive_all(void *arg)
{
	struct child *c = arg;
	shmbus_bus_t *bus = NULL;
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.subscriber_id = c->subscriber_id, .group = c->group, .durable = c->durable};
	int rc = tc_child_subscribe(&o, &bus, &sub);
	if (rc)
		return rc;
	tc_write_byte(c->up, 'R');
	uint64_t deadline = tc_now_ns() + 20 * TC_SEC_NS;
	while (c->total < c->expect && tc_now_ns() < deadline) {
		const shmbus_event_t *ev = NULL;
		/* Longer than the reclaim interval: the library reclaims the dead
		 * consumer itself while we wait. */
		rc = shmbus_wait(sub, 1000 * (int64_t)TC_MS_NS, &ev);
		if (rc < 0 && rc != -EINTR)
			return CHILD_FAIL("wait %d", rc);
		if (rc != 1)
			continue;
		uint32_t i = tc_payload_u32(ev);
		if (i < 64) {
			if (c->count[i]++ == 0)
				c->order[c->norder++] = i;
			if (shmbus_redelivered(sub, ev))
				c->redelivered[i]++;
		} else {
			c->foreign++;
		}
		c->total++;
		if ((rc = shmbus_release(sub, ev)) < 0)
			return CHILD_FAIL("release %d", rc);
	}
	/* Anything more would be a duplicate. */
	const shmbus_event_t *ev = NULL;
	while (shmbus_wait(sub, 300 * (int64_t)TC_MS_NS, &ev) == 1) {
		uint32_t i = tc_payload_u32(ev);
		if (i < 64)
			c->count[i]++;
		c->total++;
		shmbus_release(sub, ev);
	}
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

/* ---------------------------------------- kill -9 between reserve and commit */

struct counting_child {
	int up;
	uint32_t expect;
	uint32_t got, doomed, dup;
	uint8_t seen[MAX_EVENTS];
};

/* A subscriber in another process that must see every "after" event. */
static int count_after_events(void *arg)
{
	struct counting_child *c = arg;
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("open %d", rc);
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.subscriber_id = "other-process"};
	if ((rc = shmbus_subscribe(bus, &o, &sub)) < 0)
		return CHILD_FAIL("subscribe %d", rc);
	tc_write_byte(c->up, 'R');
	uint64_t deadline = tc_now_ns() + 30 * TC_SEC_NS;
	while (c->got < c->expect && tc_now_ns() < deadline) {
		const shmbus_event_t *ev = NULL;
		rc = shmbus_wait(sub, 100 * (int64_t)TC_MS_NS, &ev);
		if (rc < 0 && rc != -EINTR)
			return CHILD_FAIL("wait %d", rc);
		if (rc != 1)
			continue;
		if (strcmp(shmbus_event_name(ev), "doomed") == 0) {
			c->doomed++;
		} else {
			uint32_t i = tc_payload_u32(ev);
			if (i < MAX_EVENTS && c->seen[i]++)
				c->dup++;
			c->got++;
		}
		shmbus_release(sub, ev);
	}
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

static void check_killed_claimer(bool explicit_reclaim, size_t claim_len)
{
	shmbus_config_t cfg = fault_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	struct survivor *surv = calloc(1, sizeof *surv);
	surv->sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 10 * (int64_t)TC_SEC_NS);
	const uint32_t before = 20, after = 3 * cfg.slots;

	int up[2];
	pipe_pair(up);
	struct counting_child *other = tc_shared_alloc(sizeof *other);
	other->up = up[1];
	other->expect = before + after;
	pid_t other_pid = tc_fork(count_after_events, other);
	wait_byte(up[0], 'R', "other subscriber");

	publish_draining(pub, surv, 0, before / 2);
	struct child *c = tc_shared_alloc(sizeof *c);
	c->up = up[1];
	c->claim_len = claim_len;
	pid_t claimer = tc_fork(claim_and_hang, c);
	wait_byte(up[0], 'C', "claimer");
	/* Others publish while the claim is open: the ring is not held up. */
	publish_draining(pub, surv, before / 2, before / 2);
	int st = tc_kill9(claimer);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "claimer %s", tc_status_str(st));

	if (explicit_reclaim) {
		int n = shmbus_reclaim(bus);
		cr_assert_geq(n, 1, "shmbus_reclaim found %d dead members after kill -9", n);
		shmbus_metrics_t mt;
		cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
		cr_assert_geq(mt.aborted_claims, 1, "aborted_claims %llu after shmbus_reclaim",
			      (unsigned long long)mt.aborted_claims);
		cr_assert_geq(mt.reclaims, 1);
	}
	/* More than a ring's worth: the dead claim's slots must come back. */
	publish_draining(pub, surv, before, after);
	uint64_t aborted = metric_eventually(bus, offsetof(shmbus_metrics_t, aborted_claims), 1, 5000);
	cr_assert_geq(aborted, 1, "the dead publisher's claim was never aborted");
	survivor_check(surv, before + after);

	int ost = 0;
	cr_assert_eq(tc_wait(other_pid, 30000, &ost), 0, "other subscriber hung");
	cr_assert(WIFEXITED(ost) && WEXITSTATUS(ost) == 0, "other subscriber %s", tc_status_str(ost));
	cr_expect_eq(other->got, before + after, "subscriber in another process got %u of %u", other->got,
		     before + after);
	cr_expect_eq(other->doomed, 0, "the killed claim was delivered to another process");
	cr_expect_eq(other->dup, 0);

	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_expect_eq(mt.published, before + after, "published %llu", (unsigned long long)mt.published);

	close(up[0]);
	close(up[1]);
	tc_shared_free(c, sizeof *c);
	tc_shared_free(other, sizeof *other);
	shmbus_pub_close(pub);
	shmbus_sub_close(surv->sub);
	free(surv);
	shmbus_close(bus);
}

Test(fault, kill_publisher_between_reserve_and_commit)
{
	check_killed_claimer(false, 100);
}

Test(fault, kill_publisher_with_multi_slot_claim_then_reclaim)
{
	check_killed_claimer(true, 2000);
}

/* ------------------------------------- kill -9 of a subscriber holding events */

Test(fault, kill_plain_subscriber_holding_events)
{
	shmbus_config_t cfg = fault_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	struct survivor *surv = calloc(1, sizeof *surv);
	surv->sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 10 * (int64_t)TC_SEC_NS);
	const uint32_t k = 10, after = 3 * cfg.slots;

	int up[2];
	pipe_pair(up);
	struct child *c = tc_shared_alloc(sizeof *c);
	*c = (struct child){.up = up[1], .subscriber_id = "victim", .hold = k};
	pid_t victim = tc_fork(hold_and_hang, c);
	wait_byte(up[0], 'R', "victim");
	publish_draining(pub, surv, 0, k);
	wait_byte(up[0], 'H', "victim");
	shmbus_sub_info_t info;
	cr_assert_eq(shmbus_list_subscriptions(bus, "victim", &info, 1), 1);
	cr_assert_eq(info.held, k, "victim holds %llu", (unsigned long long)info.held);
	tc_kill9(victim);
	uint64_t t0 = tc_now_ns();

	/* Its slots come back: more than a ring's worth gets through. */
	publish_draining(pub, surv, k, after);
	cr_log_info("published %u events past the dead subscriber in %llu ms", after,
		    (unsigned long long)((tc_now_ns() - t0) / TC_MS_NS));
	survivor_check(surv, k + after);

	uint64_t reclaims = metric_eventually(bus, offsetof(shmbus_metrics_t, reclaims), 1, 5000);
	cr_assert_geq(reclaims, 1, "dead subscriber never reclaimed");
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_expect_eq(mt.demotions, 0, "slots must come back by reclaim, not by demotion");
	cr_expect_eq(shmbus_list_subscriptions(bus, "victim", &info, 1), 0,
		     "a dead process's plain subscription must be removed");
	cr_expect_eq(mt.subscriptions, 1, "subscriptions %u", mt.subscriptions);

	close(up[0]);
	close(up[1]);
	tc_shared_free(c, sizeof *c);
	shmbus_pub_close(pub);
	shmbus_sub_close(surv->sub);
	free(surv);
	shmbus_close(bus);
}

/* in_order: the receiver joined after the death (a restarted durable
 * subscriber), so the dead consumer's events must come before the rest. A
 * group mate that consumed all along gets the later events while the
 * death is still unnoticed: no order between the two is promised. */
static void check_redelivery(const struct child *r, uint32_t total, uint32_t redelivered_below, bool in_order)
{
	for (uint32_t i = 0; i < total; i++) {
		cr_expect_eq(r->count[i], 1, "event #%u received %u times by the new consumer", i, r->count[i]);
		if (i < redelivered_below)
			cr_expect_eq(r->redelivered[i], 1, "event #%u was held by the dead consumer: shmbus_redelivered() false",
				     i);
		else
			cr_expect_eq(r->redelivered[i], 0, "event #%u was never delivered before: shmbus_redelivered() true", i);
	}
	cr_expect_eq(r->total, total, "new consumer got %u events, want %u", r->total, total);
	cr_expect_eq(r->foreign, 0);
	/* What the dead consumer took comes back before what was queued after
	 * it (the redelivery queue): one publisher's events stay in order. */
	for (unsigned k = 1; in_order && k < r->norder; k++)
		cr_expect_lt(r->order[k - 1], r->order[k], "event #%u came after #%u (position %u of %u)", r->order[k],
			     r->order[k - 1], k, r->norder);
}

Test(fault, kill_durable_subscriber_holding_events)
{
	shmbus_config_t cfg = fault_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	struct survivor *surv = calloc(1, sizeof *surv);
	surv->sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 10 * (int64_t)TC_SEC_NS);
	const uint32_t held = 5, first = 10, later = 10;

	int up[2];
	pipe_pair(up);
	struct child *c = tc_shared_alloc(2 * sizeof *c);
	c[0] = (struct child){.up = up[1], .subscriber_id = "audit", .durable = true, .hold = held};
	pid_t victim = tc_fork(hold_and_hang, &c[0]);
	wait_byte(up[0], 'R', "durable victim");
	publish_draining(pub, surv, 0, first);
	wait_byte(up[0], 'H', "durable victim");
	tc_kill9(victim);
	publish_draining(pub, surv, first, later);

	/* The restarted durable subscriber gets the held events again, flagged. */
	c[1] = (struct child){.up = up[1], .subscriber_id = "audit", .durable = true, .expect = first + later};
	pid_t again = tc_fork(receive_all, &c[1]);
	wait_byte(up[0], 'R', "restarted durable subscriber");
	int st = 0;
	cr_assert_eq(tc_wait(again, 40000, &st), 0, "restarted durable subscriber hung");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "restarted durable subscriber %s", tc_status_str(st));
	check_redelivery(&c[1], first + later, held, true);
	survivor_check(surv, first + later);

	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_expect_geq(mt.redelivered, held, "redelivered metric %llu", (unsigned long long)mt.redelivered);
	shmbus_sub_info_t info;
	cr_assert_eq(shmbus_list_subscriptions(bus, "audit", &info, 1), 1, "durable subscription lost");
	cr_expect_eq(info.held, 0);
	cr_expect_eq(info.queue_depth, 0);

	close(up[0]);
	close(up[1]);
	tc_shared_free(c, 2 * sizeof *c);
	shmbus_pub_close(pub);
	shmbus_sub_close(surv->sub);
	free(surv);
	shmbus_close(bus);
}

Test(fault, kill_group_member_holding_events)
{
	shmbus_config_t cfg = fault_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	struct survivor *surv = calloc(1, sizeof *surv);
	surv->sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 10 * (int64_t)TC_SEC_NS);
	const uint32_t first = 10, later = 10;

	int up[2];
	pipe_pair(up);
	struct child *c = tc_shared_alloc(2 * sizeof *c);
	c[0] = (struct child){.up = up[1], .subscriber_id = "crew", .group = "crew", .hold = first};
	pid_t victim = tc_fork(hold_and_hang, &c[0]);
	wait_byte(up[0], 'R', "group victim");
	publish_draining(pub, surv, 0, first);
	wait_byte(up[0], 'H', "group victim");

	c[1] = (struct child){.up = up[1], .subscriber_id = "crew", .group = "crew", .expect = first + later};
	pid_t mate = tc_fork(receive_all, &c[1]);
	wait_byte(up[0], 'R', "surviving group member");
	shmbus_sub_info_t info;
	cr_assert_eq(shmbus_list_subscriptions(bus, "crew", &info, 1), 1);
	cr_assert_eq(info.consumers, 2);
	tc_kill9(victim);
	publish_draining(pub, surv, first, later);

	int st = 0;
	cr_assert_eq(tc_wait(mate, 40000, &st), 0, "surviving group member hung");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "surviving group member %s", tc_status_str(st));
	check_redelivery(&c[1], first + later, first, false);
	survivor_check(surv, first + later);

	close(up[0]);
	close(up[1]);
	tc_shared_free(c, 2 * sizeof *c);
	shmbus_pub_close(pub);
	shmbus_sub_close(surv->sub);
	free(surv);
	shmbus_close(bus);
}

/* -------------------------------------------- a stalled block subscriber */

/* Hold `hold` events, report 'H', wait for 'G', then report what it was
 * told: missed count, release results, what is still queued. */
static int stall_then_report(void *arg)
{
	struct child *c = arg;
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("open %d", rc);
	shmbus_sub_opts_t o = {.subscriber_id = c->subscriber_id, .policy = SHMBUS_POLICY_BLOCK};
	shmbus_sub_t *sub = NULL;
	if ((rc = shmbus_subscribe(bus, &o, &sub)) < 0)
		return CHILD_FAIL("subscribe %d", rc);
	tc_write_byte(c->up, 'R');
	const shmbus_event_t *held[64];
	unsigned n = 0;
	uint64_t deadline = tc_now_ns() + 20 * TC_SEC_NS;
	while (n < c->hold && tc_now_ns() < deadline) {
		rc = shmbus_wait(sub, 100 * (int64_t)TC_MS_NS, &held[n]);
		if (rc < 0 && rc != -EINTR)
			return CHILD_FAIL("wait %d", rc);
		if (rc == 1)
			n++;
	}
	if (n < c->hold)
		return CHILD_FAIL("held only %u", n);
	tc_write_byte(c->up, 'H');
	char go = 0;
	if (tc_read_byte(c->down, 60000, &go) < 0)
		return CHILD_FAIL("no go from the parent");
	c->missed = shmbus_take_missed(sub);
	for (unsigned i = 0; i < n; i++)
		c->release_rc[i] = shmbus_release(sub, held[i]);
	for (;;) {
		const shmbus_event_t *ev = NULL;
		rc = shmbus_poll(sub, &ev);
		if (rc != 1)
			break;
		c->drained++;
		shmbus_release(sub, ev);
	}
	c->missed += shmbus_take_missed(sub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

/* The stall is measured over a publisher's calls, not inside one: with a
 * publish timeout shorter than the stall timeout (the defaults: 1 s and
 * 5 s) each call timed out before its own wait reached the stall, the
 * next began from zero, and a stuck block subscriber was never demoted:
 * the bus stayed frozen (found by an independent test). */
Test(fault, a_stall_longer_than_each_publish_timeout_still_demotes)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.slots = 64;
	cfg.max_payload = 1024;
	cfg.stall_timeout_ns = 500 * TC_MS_NS;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *stuck = tc_sub(bus, NULL); /* block, the default */
	shmbus_pub_t *pub = tc_pub(bus, NULL, 150 * (int64_t)TC_MS_NS);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "held", 0, 0), 0);
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_poll(stuck, &ev), 1); /* taken and never released */
	uint32_t timeouts = 0, published = 1;
	uint64_t end = tc_now_ns() + 10 * TC_SEC_NS;
	while (published < 4 * cfg.slots && tc_now_ns() < end) {
		int rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "more", 0, published);
		if (rc == -ETIMEDOUT) {
			timeouts++;
			continue;
		}
		cr_assert_eq(rc, 0, "publish: %s", shmbus_errmsg());
		published++;
	}
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_assert_geq(mt.demotions, 1, "never demoted: %u timeouts, %u published", timeouts, published);
	cr_expect_eq(published, 4 * cfg.slots, "publishers did not go on after the demotion");
	cr_expect_geq(timeouts, 2, "demoted before the stall timeout: after %u timeouts of 150 ms", timeouts);
	cr_expect_eq(shmbus_release(stuck, ev), -ESTALE);
	shmbus_sub_close(stuck);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

Test(fault, stalled_block_subscriber_is_demoted)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.stall_timeout_ns = 500 * TC_MS_NS;
	shmbus_bus_t *bus = tc_create(&cfg);
	struct survivor *surv = calloc(1, sizeof *surv);
	surv->sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 10 * (int64_t)TC_SEC_NS);
	const uint32_t held = 5, after = 3 * cfg.slots;

	int up[2], down[2];
	pipe_pair(up);
	pipe_pair(down);
	struct child *c = tc_shared_alloc(sizeof *c);
	*c = (struct child){.up = up[1], .down = down[0], .subscriber_id = "staller", .hold = held};
	pid_t staller = tc_fork(stall_then_report, c);
	wait_byte(up[0], 'R', "staller");
	publish_draining(pub, surv, 0, held);
	wait_byte(up[0], 'H', "staller");

	/* Alive but never releasing: publishers wait, then it is demoted. */
	publish_draining(pub, surv, held, after);
	survivor_check(surv, held + after);
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_assert_geq(mt.demotions, 1, "a stalled block subscriber was never demoted");
	cr_expect_eq(mt.reclaims, 0, "nobody died");
	shmbus_sub_info_t info;
	cr_assert_eq(shmbus_list_subscriptions(bus, "staller", &info, 1), 1, "a demoted subscription stays");
	cr_expect(info.demoted, "info.demoted not set");
	cr_expect_geq(info.demotions, 1);
	cr_expect_gt(info.lagged, 0, "a demoted subscription must count what it missed");

	cr_assert_eq(tc_write_byte(down[1], 'G'), 0);
	int st = 0;
	cr_assert_eq(tc_wait(staller, 30000, &st), 0, "staller hung");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "staller %s", tc_status_str(st));
	cr_expect_gt(c->missed, 0, "the demoted subscriber was not told it missed events");
	for (unsigned i = 0; i < held; i++)
		cr_expect(c->release_rc[i] == 0 || c->release_rc[i] == -ESTALE, "release of held event %u: %d", i,
			  c->release_rc[i]);
	/* Never silent loss: what it got plus what it was told it missed covers
	 * everything published while it was subscribed. */
	uint64_t accounted = held + c->drained + c->missed;
	cr_expect_geq(accounted, held + after, "held %u + drained %llu + missed %llu < published %u", held,
		      (unsigned long long)c->drained, (unsigned long long)c->missed, held + after);
	cr_expect_leq(c->drained + c->missed, held + after, "drained %llu + missed %llu > published %u",
		      (unsigned long long)c->drained, (unsigned long long)c->missed, held + after);

	close(up[0]);
	close(up[1]);
	close(down[0]);
	close(down[1]);
	tc_shared_free(c, sizeof *c);
	shmbus_pub_close(pub);
	shmbus_sub_close(surv->sub);
	free(surv);
	shmbus_close(bus);
}

/* ------------------------------------------- kill -9 in the middle of a storm */

#define STORM_STEADY 4000u  /* events of the publisher that survives */
#define STORM_VICTIM 20000u /* the killed publisher stops here at the latest */
#define STORM_BATCH 4u

enum { WHO_STEADY = 0, WHO_VICTIM = 1, WHO_PARENT = 2 };

struct storm_payload {
	uint32_t who, counter;
};

/* The killed publisher's schedule: a batch of STORM_BATCH at every multiple
 * of 11, single events otherwise (every fifth through reserve/commit). */
static uint32_t storm_step(uint32_t c)
{
	return c % 11 == 0 ? STORM_BATCH : 1;
}


struct storm_view {
	uint8_t seen[3][STORM_VICTIM];
	uint32_t count[3], next[3];
	uint32_t dup, out_of_order, foreign;
};

struct storm_shared {
	int up; /* the watcher's ready signal */
	uint32_t victim_done, steady_done;
	int stop;
	struct storm_view child_view;
};

static void storm_record(const shmbus_event_t *ev, void *arg)
{
	struct storm_view *v = arg;
	size_t len = 0;
	const struct storm_payload *p = shmbus_event_payload(ev, &len);
	if (len != sizeof *p || p->who > WHO_PARENT || p->counter >= STORM_VICTIM) {
		v->foreign++;
		return;
	}
	if (v->seen[p->who][p->counter]++)
		v->dup++;
	if (p->counter < v->next[p->who])
		v->out_of_order++;
	v->next[p->who] = p->counter + 1;
	v->count[p->who]++;
}

static int storm_publish(shmbus_pub_t *pub, uint32_t who, uint32_t c, uint32_t n)
{
	struct storm_payload pl[STORM_BATCH];
	shmbus_msg_t m[STORM_BATCH];
	for (uint32_t k = 0; k < n; k++) {
		pl[k] = (struct storm_payload){who, c + k};
		m[k] = (shmbus_msg_t){.type = SHMBUS_NOTIFICATION, .name = "storm", .payload = &pl[k],
				      .payload_len = sizeof pl[k]};
	}
	if (n > 1) {
		int rc = shmbus_publish_batch(pub, m, n, NULL);
		return rc == (int)n ? 0 : (rc < 0 ? rc : -EIO);
	}
	if (c % 5 == 2) {
		shmbus_claim_t claim;
		int rc = shmbus_reserve(pub, &m[0], sizeof pl[0], &claim);
		if (rc < 0)
			return rc;
		memcpy(claim.payload, &pl[0], sizeof pl[0]);
		return shmbus_commit(pub, &claim, NULL);
	}
	return shmbus_publish(pub, &m[0], NULL);
}

static int storm_victim(void *arg)
{
	struct storm_shared *sh = arg;
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("victim open %d", rc);
	shmbus_pub_t *pub = NULL;
	shmbus_pub_opts_t o = {.source = "victim", .timeout_ns = 20 * (int64_t)TC_SEC_NS};
	if ((rc = shmbus_pub_open(bus, &o, &pub)) < 0)
		return CHILD_FAIL("victim pub_open %d", rc);
	for (uint32_t c = 0; c < STORM_VICTIM - STORM_BATCH;) {
		uint32_t n = storm_step(c);
		if ((rc = storm_publish(pub, WHO_VICTIM, c, n)) < 0)
			return CHILD_FAIL("victim publish %u: %d", c, rc);
		c += n;
		__atomic_store_n(&sh->victim_done, c, __ATOMIC_RELEASE);
	}
	return CHILD_FAIL("the victim published everything before it was killed");
}

static int storm_steady(void *arg)
{
	struct storm_shared *sh = arg;
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("steady open %d", rc);
	shmbus_pub_t *pub = NULL;
	shmbus_pub_opts_t o = {.source = "steady", .timeout_ns = 20 * (int64_t)TC_SEC_NS};
	if ((rc = shmbus_pub_open(bus, &o, &pub)) < 0)
		return CHILD_FAIL("steady pub_open %d", rc);
	for (uint32_t c = 0; c < STORM_STEADY; c++) {
		if ((rc = storm_publish(pub, WHO_STEADY, c, 1)) < 0)
			return CHILD_FAIL("steady publish %u: %d (%s)", c, rc, shmbus_errmsg());
		__atomic_store_n(&sh->steady_done, c + 1, __ATOMIC_RELEASE);
	}
	shmbus_pub_close(pub);
	shmbus_close(bus);
	return 0;
}

/* A surviving subscriber in its own process. */
static int storm_watcher(void *arg)
{
	struct storm_shared *sh = arg;
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("watcher open %d", rc);
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.subscriber_id = "watcher"};
	if ((rc = shmbus_subscribe(bus, &o, &sub)) < 0)
		return CHILD_FAIL("watcher subscribe %d", rc);
	tc_write_byte(sh->up, 'R');
	uint64_t deadline = tc_now_ns() + 80 * TC_SEC_NS;
	while (tc_now_ns() < deadline) {
		const shmbus_event_t *ev = NULL;
		rc = shmbus_wait(sub, 200 * (int64_t)TC_MS_NS, &ev);
		if (rc < 0 && rc != -EINTR)
			return CHILD_FAIL("watcher wait %d", rc);
		if (rc == 1) {
			storm_record(ev, &sh->child_view);
			shmbus_release(sub, ev);
		} else if (rc == 0 && __atomic_load_n(&sh->stop, __ATOMIC_ACQUIRE)) {
			break;
		}
	}
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

static void storm_check_view(const struct storm_view *v, const char *who, uint32_t victim_min, uint32_t parent_n)
{
	cr_expect_eq(v->dup, 0, "%s: %u duplicates", who, v->dup);
	cr_expect_eq(v->out_of_order, 0, "%s: %u events out of publish order", who, v->out_of_order);
	cr_expect_eq(v->foreign, 0, "%s: %u foreign events", who, v->foreign);
	cr_expect_eq(v->count[WHO_STEADY], STORM_STEADY, "%s: %u of %u events of the surviving publisher", who,
		     v->count[WHO_STEADY], STORM_STEADY);
	cr_expect_eq(v->count[WHO_PARENT], parent_n, "%s: %u of %u events published after the kill", who,
		     v->count[WHO_PARENT], parent_n);
	uint32_t m = v->count[WHO_VICTIM];
	/* No hole below m: what the killed publisher left visible is a prefix
	 * of what it published, batches included (they commit in order). */
	uint32_t holes = 0;
	for (uint32_t i = 0; i < m; i++)
		holes += !v->seen[WHO_VICTIM][i];
	cr_expect_eq(holes, 0, "%s: the killed publisher's events have %u holes below %u", who, holes, m);
	cr_expect_geq(m, victim_min, "%s: the killed publisher had committed %u events, only %u arrived", who,
		      victim_min, m);
	cr_expect_leq(m, victim_min + STORM_BATCH, "%s: %u events of the killed publisher, it reported %u", who, m,
		      victim_min);
}

static void storm_run(uint32_t kill_after)
{
	shmbus_config_t cfg = fault_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	struct storm_shared *sh = tc_shared_alloc(sizeof *sh);
	struct storm_view *mine = calloc(1, sizeof *mine);
	shmbus_sub_t *sub = tc_sub(bus, NULL);

	int up[2];
	pipe_pair(up);
	sh->up = up[1];
	pid_t watcher = tc_fork(storm_watcher, sh);
	wait_byte(up[0], 'R', "watcher");

	pid_t steady = tc_fork(storm_steady, sh);
	pid_t victim = tc_fork(storm_victim, sh);
	bool killed = false, steady_done = false;
	uint32_t victim_at_kill = 0;
	int steady_status = 0;
	uint64_t deadline = tc_now_ns() + 60 * TC_SEC_NS;
	while (!(killed && steady_done) && tc_now_ns() < deadline) {
		int rc = tc_drain(sub, storm_record, mine);
		cr_assert_geq(rc, 0, "drain: %d", rc);
		if (!killed && __atomic_load_n(&sh->victim_done, __ATOMIC_ACQUIRE) >= kill_after) {
			int st = tc_kill9(victim);
			cr_assert(WIFSIGNALED(st), "victim %s before it was killed", tc_status_str(st));
			victim_at_kill = __atomic_load_n(&sh->victim_done, __ATOMIC_ACQUIRE);
			killed = true;
		}
		if (!steady_done && waitpid(steady, &steady_status, WNOHANG) == steady)
			steady_done = true;
		if (rc == 0)
			tc_sleep_ms(1);
	}
	cr_assert(killed, "the victim never reached %u events (%u)", kill_after, sh->victim_done);
	cr_assert(steady_done, "the surviving publisher hung after %u events", sh->steady_done);
	cr_assert(WIFEXITED(steady_status) && WEXITSTATUS(steady_status) == 0, "surviving publisher %s after %u events",
		  tc_status_str(steady_status), sh->steady_done);
	/* Whatever is still queued for us. */
	uint64_t until = tc_now_ns() + 10 * TC_SEC_NS;
	while (mine->count[WHO_STEADY] < STORM_STEADY && tc_now_ns() < until)
		cr_assert_geq(tc_collect(sub, 1, 100, storm_record, mine), 0);
	cr_assert_geq(tc_drain(sub, storm_record, mine), 0);

	/* The ring keeps turning: more than a ring's worth after the kill. */
	shmbus_pub_t *pub = tc_pub(bus, "parent", 10 * (int64_t)TC_SEC_NS);
	uint32_t extra = 3 * cfg.slots;
	for (uint32_t i = 0; i < extra; i++) {
		int rc = storm_publish(pub, WHO_PARENT, i, 1);
		cr_assert_eq(rc, 0, "publish %u after the kill: %d (%s)", i, rc, shmbus_errmsg());
		cr_assert_geq(tc_drain(sub, storm_record, mine), 0);
	}
	__atomic_store_n(&sh->stop, 1, __ATOMIC_RELEASE);
	int st = 0;
	cr_assert_eq(tc_wait(watcher, 30000, &st), 0, "watcher hung");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "watcher %s", tc_status_str(st));

	cr_log_info("victim killed after %u events", victim_at_kill);
	storm_check_view(mine, "subscriber in the parent", victim_at_kill, extra);
	storm_check_view(&sh->child_view, "subscriber in another process", victim_at_kill, extra);
	cr_expect_eq(mine->count[WHO_VICTIM], sh->child_view.count[WHO_VICTIM],
		     "the two survivors disagree on the killed publisher's events: %u and %u",
		     mine->count[WHO_VICTIM], sh->child_view.count[WHO_VICTIM]);

	close(up[0]);
	close(up[1]);
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	tc_shared_free(sh, sizeof *sh);
	free(mine);
	shmbus_close(bus);
}

Test(fault, kill_publisher_during_storm_early) { storm_run(50); }
Test(fault, kill_publisher_during_storm_mid) { storm_run(1234); }
Test(fault, kill_publisher_during_storm_late) { storm_run(4321); }

/* ------------------------------ kill -9 of a consumer in the middle of a storm */

#define SSTORM_N 4000u
#define SSTORM_HOLD 8u /* the victim keeps up to this many events unreleased */

enum sstorm_kind { SSTORM_PLAIN, SSTORM_GROUP, SSTORM_DURABLE };

struct sstorm_shared {
	int up;
	enum sstorm_kind kind;
	uint32_t published;
	int stop;
	uint8_t victim[SSTORM_N]; /* handled by the killed consumer */
	uint8_t other[SSTORM_N];  /* by the group mate or restarted durable consumer */
	uint8_t other_redelivered[SSTORM_N];
	uint32_t foreign;
};

static int sstorm_subscribe(struct sstorm_shared *sh, shmbus_bus_t **bus, shmbus_sub_t **sub)
{
	int rc = shmbus_open(tc_bus, NULL, bus);
	if (rc < 0)
		return rc;
	shmbus_sub_opts_t o = {.subscriber_id = "storm-consumer"};
	if (sh->kind == SSTORM_GROUP)
		o.group = "storm-crew";
	if (sh->kind == SSTORM_DURABLE)
		o.durable = true;
	return shmbus_subscribe(*bus, &o, sub);
}

static int sstorm_victim(void *arg)
{
	struct sstorm_shared *sh = arg;
	shmbus_bus_t *bus = NULL;
	shmbus_sub_t *sub = NULL;
	int rc = sstorm_subscribe(sh, &bus, &sub);
	if (rc < 0)
		return CHILD_FAIL("victim subscribe %d", rc);
	tc_write_byte(sh->up, 'R');
	const shmbus_event_t *held[SSTORM_HOLD];
	unsigned n = 0;
	for (;;) {
		const shmbus_event_t *ev = NULL;
		rc = shmbus_wait(sub, 5 * (int64_t)TC_MS_NS, &ev);
		if (rc < 0 && rc != -EINTR)
			return CHILD_FAIL("victim wait %d", rc);
		if (rc == 0) {
			/* Idle: a held event would stop the ring from turning. */
			for (unsigned k = 0; k < n; k++)
				if ((rc = shmbus_release(sub, held[k])) < 0)
					return CHILD_FAIL("victim release %d", rc);
			n = 0;
		}
		if (rc != 1)
			continue;
		uint32_t i = tc_payload_u32(ev);
		if (i < SSTORM_N)
			sh->victim[i]++;
		else
			sh->foreign++;
		/* Keep the newest few unreleased, so it dies holding events. */
		if (n == SSTORM_HOLD) {
			if ((rc = shmbus_release(sub, held[0])) < 0)
				return CHILD_FAIL("victim release %d", rc);
			memmove(held, held + 1, (SSTORM_HOLD - 1) * sizeof held[0]);
			n--;
		}
		held[n++] = ev;
	}
}

static int sstorm_other(void *arg)
{
	struct sstorm_shared *sh = arg;
	shmbus_bus_t *bus = NULL;
	shmbus_sub_t *sub = NULL;
	int rc = sstorm_subscribe(sh, &bus, &sub);
	if (rc < 0)
		return CHILD_FAIL("other subscribe %d", rc);
	tc_write_byte(sh->up, 'R');
	uint64_t deadline = tc_now_ns() + 80 * TC_SEC_NS;
	while (tc_now_ns() < deadline) {
		const shmbus_event_t *ev = NULL;
		rc = shmbus_wait(sub, 300 * (int64_t)TC_MS_NS, &ev);
		if (rc < 0 && rc != -EINTR)
			return CHILD_FAIL("other wait %d", rc);
		if (rc == 0 && __atomic_load_n(&sh->stop, __ATOMIC_ACQUIRE))
			break;
		if (rc != 1)
			continue;
		uint32_t i = tc_payload_u32(ev);
		if (i < SSTORM_N) {
			sh->other[i]++;
			if (shmbus_redelivered(sub, ev))
				sh->other_redelivered[i]++;
		} else {
			sh->foreign++;
		}
		if ((rc = shmbus_release(sub, ev)) < 0)
			return CHILD_FAIL("other release %d", rc);
	}
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

static int sstorm_publisher(void *arg)
{
	struct sstorm_shared *sh = arg;
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("publisher open %d", rc);
	shmbus_pub_t *pub = NULL;
	shmbus_pub_opts_t o = {.timeout_ns = 20 * (int64_t)TC_SEC_NS};
	if ((rc = shmbus_pub_open(bus, &o, &pub)) < 0)
		return CHILD_FAIL("pub_open %d", rc);
	for (uint32_t i = 0; i < SSTORM_N; i++) {
		if ((rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "work", 0, i)) < 0)
			return CHILD_FAIL("publish %u: %d (%s)", i, rc, shmbus_errmsg());
		__atomic_store_n(&sh->published, i + 1, __ATOMIC_RELEASE);
	}
	shmbus_pub_close(pub);
	shmbus_close(bus);
	return 0;
}

static bool sstorm_all_handled(const struct sstorm_shared *sh)
{
	for (uint32_t i = 0; i < SSTORM_N; i++)
		if (!sh->victim[i] && !sh->other[i])
			return false;
	return true;
}

static void sstorm_run(enum sstorm_kind kind)
{
	shmbus_config_t cfg = fault_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	struct sstorm_shared *sh = tc_shared_alloc(sizeof *sh);
	sh->kind = kind;
	struct survivor *surv = calloc(1, sizeof *surv);
	surv->sub = tc_sub(bus, NULL);
	int up[2];
	pipe_pair(up);
	sh->up = up[1];

	pid_t victim = tc_fork(sstorm_victim, sh);
	wait_byte(up[0], 'R', "victim consumer");
	pid_t other = -1;
	if (kind == SSTORM_GROUP) {
		other = tc_fork(sstorm_other, sh);
		wait_byte(up[0], 'R', "group mate");
	}
	pid_t publisher = tc_fork(sstorm_publisher, sh);

	bool killed = false, published = false;
	int pub_status = 0;
	uint64_t deadline = tc_now_ns() + 60 * TC_SEC_NS;
	while (tc_now_ns() < deadline) {
		survivor_drain(surv);
		if (!killed && __atomic_load_n(&sh->published, __ATOMIC_ACQUIRE) >= SSTORM_N / 4) {
			tc_kill9(victim);
			killed = true;
			if (kind == SSTORM_DURABLE) {
				other = tc_fork(sstorm_other, sh); /* the restarted consumer */
				wait_byte(up[0], 'R', "restarted durable consumer");
			}
		}
		if (!published && waitpid(publisher, &pub_status, WNOHANG) == publisher)
			published = true;
		if (killed && published && surv->count >= SSTORM_N && (kind == SSTORM_PLAIN || sstorm_all_handled(sh)))
			break;
		tc_sleep_ms(1);
	}
	__atomic_store_n(&sh->stop, 1, __ATOMIC_RELEASE);
	cr_assert(killed, "the publisher never got a quarter through (%u)", sh->published);
	cr_assert(published, "the publisher hung after %u events", sh->published);
	cr_assert(WIFEXITED(pub_status) && WEXITSTATUS(pub_status) == 0, "publisher %s after %u events",
		  tc_status_str(pub_status), sh->published);
	if (other > 0) {
		int st = 0;
		cr_assert_eq(tc_wait(other, 30000, &st), 0, "surviving consumer hung");
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "surviving consumer %s", tc_status_str(st));
	}
	survivor_check(surv, SSTORM_N);

	if (kind != SSTORM_PLAIN) {
		unsigned never = 0, twice = 0, unflagged_twice = 0, other_dups = 0;
		uint32_t first_never = UINT32_MAX, first_unflagged = UINT32_MAX;
		for (uint32_t i = 0; i < SSTORM_N; i++) {
			unsigned n = sh->victim[i] + sh->other[i];
			if (n == 0 && never++ == 0)
				first_never = i;
			if (sh->other[i] > 1 || sh->victim[i] > 1)
				other_dups++;
			if (sh->victim[i] && sh->other[i]) {
				twice++;
				if (!sh->other_redelivered[i] && unflagged_twice++ == 0)
					first_unflagged = i;
			}
		}
		cr_expect_eq(never, 0, "%u events were handled by nobody (first #%u)", never, first_never);
		cr_expect_eq(other_dups, 0, "%u events handled twice by the same consumer", other_dups);
		cr_expect_eq(unflagged_twice, 0, "%u events handled by both consumers without the redelivered mark (first #%u)",
			     unflagged_twice, first_unflagged);
		cr_expect_leq(twice, SHMBUS_MAX_HELD, "%u events handled twice: more than the dead consumer could hold", twice);
		cr_expect_eq(sh->foreign, 0);
		cr_log_info("%u events redelivered after the kill", twice);
	} else {
		shmbus_sub_info_t info;
		cr_expect_eq(shmbus_list_subscriptions(bus, "storm-consumer", &info, 1), 0,
			     "the dead consumer's plain subscription was not removed");
	}
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_expect_geq(mt.reclaims, 1, "the dead consumer was never reclaimed");
	cr_expect_eq(mt.demotions, 0, "progress came from demotion, not reclaim");

	close(up[0]);
	close(up[1]);
	shmbus_sub_close(surv->sub);
	free(surv);
	tc_shared_free(sh, sizeof *sh);
	shmbus_close(bus);
}

Test(fault, kill_plain_consumer_during_storm) { sstorm_run(SSTORM_PLAIN); }
Test(fault, kill_group_member_during_storm) { sstorm_run(SSTORM_GROUP); }
Test(fault, kill_durable_consumer_during_storm) { sstorm_run(SSTORM_DURABLE); }

/* ------------------------------- kill -9 while attaching and subscribing */

/* Attach, subscribe (plain, durable, group), publish, detach, forever. */
static int churn(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	for (unsigned it = 0;; it++) {
		shmbus_bus_t *bus = NULL;
		if (shmbus_open(tc_bus, NULL, &bus) < 0)
			continue;
		shmbus_sub_t *sub = NULL;
		shmbus_sub_opts_t o = {.subscriber_id = "churn"};
		if ((it + seed) % 3 == 1) {
			o.durable = true;
			o.subscriber_id = "churn-durable";
		} else if ((it + seed) % 3 == 2) {
			o.group = "churn-group";
		}
		const char *name = "churn";
		shmbus_filter_t *f = NULL;
		shmbus_filter_names(&name, 1, &f);
		o.filter = f;
		if (shmbus_subscribe(bus, &o, &sub) == 0) {
			shmbus_pub_t *pub = NULL;
			if (shmbus_pub_open(bus, NULL, &pub) == 0) {
				tc_publish_u32(pub, SHMBUS_NOTIFICATION, "churn", 0, it);
				shmbus_pub_close(pub);
			}
			const shmbus_event_t *ev = NULL;
			if (shmbus_poll(sub, &ev) == 1)
				shmbus_release(sub, ev);
			if (o.durable && it % 2)
				shmbus_unsubscribe(sub);
			else
				shmbus_sub_close(sub);
		}
		shmbus_filter_free(f);
		shmbus_close(bus);
	}
	return 0;
}

Test(fault, kill_while_attaching_and_subscribing_leaks_nothing)
{
	shmbus_config_t cfg = fault_cfg();
	cfg.max_members = 6;
	cfg.max_subscribers = 6;
	shmbus_bus_t *bus = tc_create(&cfg);
	for (unsigned round = 0; round < 40; round++) {
		pid_t a = tc_fork(churn, (void *)(uintptr_t)round);
		pid_t b = tc_fork(churn, (void *)(uintptr_t)(round + 1));
		tc_sleep_ms(1 + (unsigned)(tc_mix64(round) % 15));
		tc_kill9(a);
		tc_kill9(b);
		int n = shmbus_reclaim(bus);
		cr_assert_geq(n, 0, "reclaim after round %u: %d", round, n);
	}
	/* Whatever they left half done is gone: the tables are usable in full. */
	shmbus_member_info_t members[8];
	int nm = shmbus_list_members(bus, members, 8);
	int alive = 0;
	for (int i = 0; i < nm && i < 8; i++)
		alive += members[i].alive;
	cr_expect_eq(alive, 1, "%d live members, only this process is attached", alive);
	cr_expect_eq(nm, 1, "%d member entries still in use after reclaim", nm);

	shmbus_sub_info_t subs[8];
	int ns = shmbus_list_subscriptions(bus, NULL, subs, 8);
	int durable = 0, other = 0;
	for (int i = 0; i < ns && i < 8; i++) {
		if (subs[i].durable)
			durable++;
		else
			other++;
		cr_expect_eq(subs[i].consumers, 0, "subscription \"%s\" still has %u consumers", subs[i].subscriber_id,
			     subs[i].consumers);
		cr_expect_eq(subs[i].held, 0, "subscription \"%s\" still holds %llu events", subs[i].subscriber_id,
			     (unsigned long long)subs[i].held);
	}
	cr_expect_leq(durable, 1, "%d durable subscriptions with one key", durable);
	cr_expect_eq(other, 0, "%d plain or group subscriptions of dead processes remain", other);

	/* A durable subscription with nobody attached keeps its queued events
	 * (and so their ring slots): remove it before pushing a ring's worth. */
	for (int i = 0; i < ns && i < 8; i++)
		if (subs[i].durable)
			cr_assert_eq(shmbus_unsubscribe_id(bus, subs[i].id), 0);
	durable = 0;
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_expect_eq(mt.ring_used, 0, "no subscription left, yet %llu ring slots are not reusable (leaked references)",
		     (unsigned long long)mt.ring_used);

	shmbus_bus_t *extra[5] = {0};
	for (int i = 0; i < 5; i++) {
		int rc = shmbus_open(tc_bus, NULL, &extra[i]);
		cr_expect_eq(rc, 0, "attach %d of 5 on a bus for 6: %d (%s)", i + 1, rc, shmbus_errmsg());
	}
	shmbus_sub_t *mine[6] = {0};
	int free_records = cfg.max_subscribers - durable;
	for (int i = 0; i < free_records; i++) {
		shmbus_sub_opts_t o = {0};
		int rc = shmbus_subscribe(bus, &o, &mine[i]);
		cr_expect_eq(rc, 0, "subscription %d of %d free records: %d (%s)", i + 1, free_records, rc,
			     shmbus_errmsg());
	}
	/* And the bus still carries events through all of it. */
	shmbus_pub_t *pub = tc_pub(bus, NULL, 10 * (int64_t)TC_SEC_NS);
	for (uint32_t i = 0; i < 3 * cfg.slots; i++) {
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "after.churn", 0, i), 0, "publish %u: %s", i,
			     shmbus_errmsg());
		for (int k = 0; k < free_records; k++)
			if (mine[k])
				cr_assert_geq(tc_drain(mine[k], NULL, NULL), 0);
	}
	shmbus_pub_close(pub);
	for (int i = 0; i < free_records; i++)
		shmbus_sub_close(mine[i]);
	for (int i = 0; i < 5; i++)
		shmbus_close(extra[i]);
	shmbus_close(bus);
}

Test(fault, dead_member_is_listed_dead_then_reclaimed)
{
	shmbus_config_t cfg = fault_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	int up[2];
	pipe_pair(up);
	struct child *c = tc_shared_alloc(sizeof *c);
	*c = (struct child){.up = up[1], .subscriber_id = "doomed-member", .hold = 0};
	pid_t pid = tc_fork(hold_and_hang, c);
	wait_byte(up[0], 'R', "member");
	wait_byte(up[0], 'H', "member");
	shmbus_member_info_t m[4];
	cr_assert_eq(shmbus_list_members(bus, m, 4), 2);
	bool found = false;
	for (int i = 0; i < 2; i++)
		if (m[i].pid == (uint32_t)pid) {
			found = true;
			cr_assert(m[i].alive, "a live member listed dead");
		}
	cr_assert(found, "member %d not listed", (int)pid);
	tc_kill9(pid);
	int n = shmbus_list_members(bus, m, 4);
	for (int i = 0; i < n && i < 4; i++)
		if (m[i].pid == (uint32_t)pid)
			cr_assert_not(m[i].alive, "a killed member listed alive");
	cr_assert_eq(shmbus_reclaim(bus), 1);
	cr_assert_eq(shmbus_list_members(bus, m, 4), 1, "reclaimed member still listed");
	cr_assert_eq(m[0].pid, (uint32_t)getpid());
	cr_assert_eq(shmbus_reclaim(bus), 0, "a second sweep finds nothing");
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_assert_eq(mt.reclaims, 1);
	cr_assert_eq(mt.subscriptions, 0, "the dead member's plain subscription remains");
	close(up[0]);
	close(up[1]);
	tc_shared_free(c, sizeof *c);
	shmbus_close(bus);
}

/* --------------------------------------------------- stale buses are visible */

static int create_and_hang(void *arg)
{
	struct child *c = arg; /* subscriber_id carries the bus name */
	shmbus_config_t cfg = fault_cfg();
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_create(c->subscriber_id, &cfg, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("create %s: %d", c->subscriber_id, rc);
	tc_write_byte(c->up, 'C');
	for (;;)
		pause();
}

static const shmbus_bus_entry_t *find_bus(const shmbus_bus_entry_t *v, int n, const char *name)
{
	for (int i = 0; i < n; i++)
		if (strcmp(v[i].name, name) == 0)
			return &v[i];
	return NULL;
}

Test(fault, bus_whose_members_died_is_listed_stale)
{
	shmbus_config_t cfg = fault_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	char stale[SHMBUS_NAME_MAX + 1], junk[SHMBUS_NAME_MAX + 1];
	tc_name(stale, "stale-bus");
	tc_name(junk, "junk-bus");
	int up[2];
	pipe_pair(up);
	struct child *c = tc_shared_alloc(sizeof *c);
	*c = (struct child){.up = up[1], .subscriber_id = stale};
	pid_t pid = tc_fork(create_and_hang, c);
	wait_byte(up[0], 'C', "creator");
	tc_kill9(pid);
	static const char garbage[8192] = "definitely not a bus";
	cr_assert_eq(tc_write_segment(junk, garbage, sizeof garbage), 0);

	int n = shmbus_list_buses(NULL, 0);
	cr_assert_geq(n, 3, "list_buses counts %d", n);
	size_t cap = (size_t)n + 32; /* other suites may create buses meanwhile */
	shmbus_bus_entry_t *v = calloc(cap, sizeof *v);
	n = shmbus_list_buses(v, cap);
	cr_assert_geq(n, 3);
	if ((size_t)n > cap)
		n = (int)cap;
	const shmbus_bus_entry_t *live = find_bus(v, n, tc_bus), *dead = find_bus(v, n, stale),
				 *bad = find_bus(v, n, junk);
	cr_assert_not_null(live, "live bus not listed");
	cr_assert_not_null(dead, "bus of a dead creator not listed");
	cr_assert_not_null(bad, "garbage segment not listed");
	cr_expect(live->valid && !live->stale && live->alive >= 1, "live bus: valid %d stale %d alive %u", live->valid,
		  live->stale, live->alive);
	cr_expect(dead->valid && dead->stale && dead->alive == 0, "dead bus: valid %d stale %d alive %u", dead->valid,
		  dead->stale, dead->alive);
	cr_expect_not(bad->valid, "a garbage segment listed as valid");
	cr_expect_gt(live->size, 0);
	free(v);
	close(up[0]);
	close(up[1]);
	tc_shared_free(c, sizeof *c);
	shmbus_close(bus);
}

/* ---------------------------- a forked child does not keep a dead parent alive */

struct forker {
	int up;
	pid_t grandchild;
};

static int subscribe_fork_and_hang(void *arg)
{
	struct forker *f = arg;
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("open %d", rc);
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.subscriber_id = "forker"};
	if ((rc = shmbus_subscribe(bus, &o, &sub)) < 0)
		return CHILD_FAIL("subscribe %d", rc);
	fflush(NULL);
	pid_t g = fork();
	if (g == 0) {
		/* Inherits the descriptors; must not inherit the liveness. */
		for (;;)
			pause();
	}
	f->grandchild = g;
	tc_write_byte(f->up, 'R');
	for (;;)
		pause();
}

Test(fault, forked_child_does_not_keep_a_dead_member_alive)
{
	shmbus_config_t cfg = fault_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	int up[2];
	pipe_pair(up);
	struct forker *f = tc_shared_alloc(sizeof *f);
	f->up = up[1];
	pid_t member = tc_fork(subscribe_fork_and_hang, f);
	wait_byte(up[0], 'R', "forking member");
	cr_assert_gt(f->grandchild, 0);
	tc_kill9(member);
	int n = shmbus_reclaim(bus);
	bool grandchild_alive = kill(f->grandchild, 0) == 0;
	kill(f->grandchild, SIGKILL);
	cr_assert(grandchild_alive, "the grandchild should still be running during the sweep");
	cr_expect_eq(n, 1, "reclaim found %d dead members: a forked child kept the dead member looking alive", n);
	shmbus_sub_info_t info;
	cr_expect_eq(shmbus_list_subscriptions(bus, "forker", &info, 1), 0,
		     "the dead member's subscription survived because its child inherited the segment descriptor");
	close(up[0]);
	close(up[1]);
	tc_shared_free(f, sizeof *f);
	shmbus_close(bus);
}

/* ------------------------ joining a full table that holds a dead member */

/* With every member entry taken, one by a dead process, a new process can
 * still attach: it reclaims the dead entry itself (working under that
 * entry's index) and the events the dead one held come back to the durable
 * subscription. */
Test(fault, attaching_to_a_full_table_reclaims_a_dead_member)
{
	shmbus_config_t cfg = fault_cfg();
	cfg.max_members = 2; /* this process and the doomed one */
	shmbus_bus_t *bus = tc_create(&cfg);
	int up[2];
	pipe_pair(up);
	struct child *c = tc_shared_alloc(sizeof *c);
	*c = (struct child){.up = up[1], .subscriber_id = "full-table", .durable = true, .hold = 3};
	pid_t holder = tc_fork(hold_and_hang, c);
	wait_byte(up[0], 'R', "durable holder");
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	for (uint32_t i = 0; i < 3; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "held", 0, i), 0);
	wait_byte(up[0], 'H', "durable holder");
	shmbus_pub_close(pub);
	shmbus_close(bus); /* only the holder is attached now */
	bus = tc_open();   /* takes the free entry */
	tc_kill9(holder);

	/* The table is full (us and the dead holder): a second attach must
	 * reclaim the holder's entry to get one. */
	shmbus_bus_t *second = NULL;
	cr_assert_eq(shmbus_open(tc_bus, NULL, &second), 0, "attach to a full table: %s", shmbus_errmsg());
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.subscriber_id = "full-table", .durable = true};
	cr_assert_eq(shmbus_subscribe(second, &o, &sub), 0, "%s", shmbus_errmsg());
	unsigned seen = 0, redelivered = 0;
	const shmbus_event_t *ev;
	while (shmbus_wait(sub, 500 * (int64_t)TC_MS_NS, &ev) == 1) {
		seen |= 1u << tc_payload_u32(ev);
		redelivered += shmbus_redelivered(sub, ev);
		shmbus_release(sub, ev);
	}
	cr_expect_eq(seen, 7u, "events the dead holder kept: got mask %#x, want all three", seen);
	cr_expect_eq(redelivered, 3, "%u of 3 flagged redelivered", redelivered);
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(second, &mt), 0);
	cr_expect_geq(mt.reclaims, 1);
	cr_assert_eq(shmbus_unsubscribe(sub), 0);
	close(up[0]);
	close(up[1]);
	tc_shared_free(c, sizeof *c);
	shmbus_close(second);
	shmbus_close(bus);
}
