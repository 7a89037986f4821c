/*
 * test_catchup.c - durable subscriptions that fall behind the ring catch
 * up from the log: a subscriber process that exits while publishers
 * publish several rings' worth under a recorder process gets every event
 * on return, in order, once; retention by size and by age spares what it
 * needs, or, told to delete it, leaves it a missed count; a slow live
 * subscriber, a demoted block subscriber, a group, and a consumer killed
 * during its catch-up.
 *
 * Every test logs under its own root (tc_log_root), removed by .fini.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

static void cu_init(void)
{
	tc_init();
}

static void cu_fini(void)
{
	tc_fini();
}

TestSuite(catchup, .init = cu_init, .fini = cu_fini, .timeout = 60);

/* The small bus (256 slots), with publishers that wait for the recorder
 * rather than demote it. */
static shmbus_config_t cu_cfg(void)
{
	shmbus_config_t c = tc_small_cfg();
	c.block_timeout_ns = 10 * TC_SEC_NS;
	c.stall_timeout_ns = 10 * TC_SEC_NS;
	return c;
}

static int recorder_child(void *arg)
{
	const shmbus_record_opts_t *o = arg;
	shmbus_bus_t *bus;
	shmbus_recorder_t *rec;
	if (shmbus_open(tc_bus, NULL, &bus) < 0)
		return CHILD_FAIL("open: %s", shmbus_errmsg());
	if (shmbus_recorder_open(bus, o, &rec) < 0)
		return CHILD_FAIL("recorder_open: %s", shmbus_errmsg());
	if (shmbus_recorder_run(rec, -1) < 0)
		return CHILD_FAIL("run: %s", shmbus_errmsg());
	return 0;
}

/* A recorder process, started once its subscription exists (from then on
 * it holds every event until it has written it). */
static pid_t start_recorder(shmbus_bus_t *bus, const shmbus_record_opts_t *o)
{
	pid_t pid = tc_fork(recorder_child, (void *)o);
	shmbus_sub_id_t id;
	for (int i = 0; i < 5000 && shmbus_find_subscription(bus, "shmbus.recorder", &id) < 0; i++)
		tc_sleep_ms(1);
	cr_assert_eq(shmbus_find_subscription(bus, "shmbus.recorder", &id), 0, "no recorder");
	return pid;
}

struct durable_spec {
	const char *id;
	const char *group;
	shmbus_policy_t policy;
};

static shmbus_sub_opts_t durable_opts(const struct durable_spec *d)
{
	return (shmbus_sub_opts_t){.subscriber_id = d->id,
				   .group = d->group,
				   .durable = true,
				   .policy = d->policy,
				   .wait = SHMBUS_WAIT_BLOCK};
}

/* A process subscribes durably and exits: the subscription stays. */
static int subscribe_and_exit(void *arg)
{
	shmbus_sub_opts_t o = durable_opts(arg);
	shmbus_bus_t *bus;
	shmbus_sub_t *sub;
	int rc = tc_child_subscribe(&o, &bus, &sub);
	if (rc)
		return rc;
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

static void durable_offline(const struct durable_spec *d)
{
	int st;
	pid_t pid = tc_fork(subscribe_and_exit, (void *)d);
	cr_assert_eq(tc_wait(pid, 10000, &st), 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "subscriber %s", tc_status_str(st));
}

static void publish_n(shmbus_pub_t *pub, uint32_t from, uint32_t n, shmbus_uuid_t *last)
{
	for (uint32_t i = from; i < from + n; i++) {
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "n", .payload = &i, .payload_len = 4};
		cr_assert_eq(shmbus_publish(pub, &m, last), 0, "publish %u: %s", i, shmbus_errmsg());
	}
}

/* What a returning consumer got. */
struct got {
	uint32_t n;	  /* events received */
	uint32_t first;	  /* payload of the first */
	uint32_t next;	  /* payload expected next */
	uint32_t from_log;
	uint64_t missed;
	bool ordered;	  /* each payload one more than the one before */
	uint64_t last_seq;
};

/* Receive until every one of `total` events was received or reported
 * missed (or 20 s passed), checking order. */
static void receive_all(shmbus_sub_t *sub, uint32_t total, struct got *g)
{
	memset(g, 0, sizeof *g);
	g->ordered = true;
	uint64_t deadline = tc_now_ns() + 20 * TC_SEC_NS;
	while (g->n + g->missed < total && tc_now_ns() < deadline) {
		const shmbus_event_t *ev;
		int rc = shmbus_wait(sub, 50 * (int64_t)TC_MS_NS, &ev);
		cr_assert_geq(rc, 0, "wait: %s", shmbus_errmsg());
		if (rc == 0) {
			g->missed += shmbus_take_missed(sub);
			continue;
		}
		uint32_t v = tc_payload_u32(ev);
		if (g->n == 0)
			g->first = v;
		else if (v != g->next || shmbus_event_seq(ev) <= g->last_seq)
			g->ordered = false;
		g->next = v + 1;
		g->last_seq = shmbus_event_seq(ev);
		g->n++;
		g->from_log += shmbus_from_log(sub, ev);
		cr_assert_eq(shmbus_release(sub, ev), 0, "release: %s", shmbus_errmsg());
	}
	g->missed += shmbus_take_missed(sub);
	/* an idle poll hands the releases batched so far to publishers: this
	 * thread may publish next */
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_poll(sub, &ev), 0);
}

static shmbus_sub_t *durable_return(shmbus_bus_t *bus, const struct durable_spec *d)
{
	shmbus_sub_opts_t o = durable_opts(d);
	shmbus_sub_t *sub;
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0, "%s", shmbus_errmsg());
	return sub;
}

/* The test: offline for several rings' worth, every event on
 * return, in order, none twice, nothing missed. */
static void offline_case(shmbus_policy_t policy)
{
	const uint32_t N = 3000; /* ~12 rings */
	shmbus_config_t cfg = cu_cfg();
	if (policy == SHMBUS_POLICY_BLOCK)
		cfg.stall_timeout_ns = 300 * TC_MS_NS; /* demoted once, then drained */
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_record_opts_t ro = {.sync = SHMBUS_SYNC_NONE};
	pid_t rec = start_recorder(bus, &ro);
	struct durable_spec d = {.id = "offline", .policy = policy};
	durable_offline(&d);
	shmbus_pub_t *pub = tc_pub(bus, "p", 10 * (int64_t)TC_SEC_NS);
	shmbus_uuid_t last;
	publish_n(pub, 0, N, &last);
	shmbus_sub_t *sub = durable_return(bus, &d);
	struct got g;
	receive_all(sub, N, &g);
	cr_assert_eq(g.missed, 0, "missed %llu", (unsigned long long)g.missed);
	cr_assert_eq(g.n, N, "received %u of %u", g.n, N);
	cr_assert_eq(g.first, 0);
	cr_assert(g.ordered, "not in order, or an event came twice");
	cr_assert_gt(g.from_log, N / 2, "only %u from the log", g.from_log);
	/* and it goes on from the queue like any subscription */
	publish_n(pub, N, 10, &last);
	struct got more;
	receive_all(sub, 10, &more);
	cr_assert_eq(more.n, 10);
	cr_assert_eq(more.first, N);
	cr_assert_eq(more.from_log, 0);
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	tc_kill9(rec);
	shmbus_close(bus);
}

Test(catchup, offline_lag_subscriber_gets_every_event_in_order_once)
{
	offline_case(SHMBUS_POLICY_LAG);
}

Test(catchup, offline_block_subscriber_demoted_after_a_stall_gets_every_event)
{
	offline_case(SHMBUS_POLICY_BLOCK);
}

/* Without a recorder nothing can be caught up: the events still queued
 * arrive and the rest is reported missed, exactly. */
Test(catchup, without_a_log_the_lost_events_are_counted_missed)
{
	const uint32_t N = 1000;
	shmbus_config_t cfg = cu_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	struct durable_spec d = {.id = "nolog", .policy = SHMBUS_POLICY_LAG};
	durable_offline(&d);
	shmbus_pub_t *pub = tc_pub(bus, "p", 10 * (int64_t)TC_SEC_NS);
	publish_n(pub, 0, N, NULL);
	shmbus_sub_t *sub = durable_return(bus, &d);
	struct got g;
	receive_all(sub, N, &g);
	cr_assert_gt(g.missed, 0);
	cr_assert_eq(g.n + g.missed, N, "received %u, missed %llu", g.n, (unsigned long long)g.missed);
	cr_assert_eq(g.first, N - g.n, "what arrives is the newest, without a hole");
	cr_assert(g.ordered);
	cr_assert_eq(g.from_log, 0);
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* Segment files in the test's log directory, and the first sequence of
 * the oldest. */
static unsigned count_segments(uint64_t *oldest)
{
	char dir[1024];
	snprintf(dir, sizeof dir, "%s/%s", tc_log_root(), tc_bus);
	DIR *dp = opendir(dir);
	cr_assert(dp, "no log directory %s", dir);
	unsigned n = 0;
	*oldest = UINT64_MAX;
	struct dirent *de;
	while ((de = readdir(dp))) {
		size_t len = strlen(de->d_name);
		if (len == 24 && strcmp(de->d_name + 20, ".log") == 0) {
			uint64_t first = strtoull(de->d_name, NULL, 10);
			*oldest = first < *oldest ? first : *oldest;
			n++;
		}
	}
	closedir(dp);
	return n;
}

/*
 * Retention while a durable subscription is offline: by size or by age,
 * spared (every event arrives) or forced (the oldest segments go; the
 * events after them arrive, in order, and the rest is reported missed).
 */
static void retention_case(uint64_t bytes, uint64_t age_ns, bool force)
{
	const uint32_t N = 4000;
	shmbus_config_t cfg = cu_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	/* 64 KiB segments of ~250 records each */
	shmbus_record_opts_t ro = {.sync = SHMBUS_SYNC_NONE,
				   .segment_bytes = 64 << 10,
				   .retain_bytes = bytes,
				   .retain_ns = age_ns,
				   .retain_force = force};
	pid_t rec = start_recorder(bus, &ro);
	struct durable_spec d = {.id = "retained", .policy = SHMBUS_POLICY_LAG};
	durable_offline(&d);
	shmbus_pub_t *pub = tc_pub(bus, "p", 10 * (int64_t)TC_SEC_NS);
	shmbus_uuid_t last;
	publish_n(pub, 0, N, &last);
	cr_assert_eq(shmbus_wait_durable(bus, shmbus_uuid_seq(&last), 10 * (int64_t)TC_SEC_NS), 0, "%s",
		     shmbus_errmsg());
	uint64_t oldest;
	unsigned segs = count_segments(&oldest);
	shmbus_sub_t *sub = durable_return(bus, &d);
	struct got g;
	receive_all(sub, N, &g);
	cr_assert(g.ordered, "not in order, or an event came twice");
	cr_assert_eq(g.n + g.missed, N, "received %u, missed %llu", g.n, (unsigned long long)g.missed);
	if (!force) {
		cr_assert_eq(oldest, 0, "retention deleted what the subscription needed (oldest %llu)",
			     (unsigned long long)oldest);
		cr_assert_eq(g.missed, 0);
		cr_assert_eq(g.n, N);
		/* caught up: now nothing holds the old segments back */
		publish_n(pub, N, 1500, &last);
		cr_assert_eq(shmbus_wait_durable(bus, shmbus_uuid_seq(&last), 10 * (int64_t)TC_SEC_NS), 0);
		struct got rest;
		receive_all(sub, 1500, &rest);
		cr_assert_eq(rest.n, 1500);
		uint64_t now_oldest;
		count_segments(&now_oldest);
		cr_assert_gt(now_oldest, 0, "retention deleted nothing once the subscription caught up");
	} else {
		cr_assert_gt(oldest, 0, "retention deleted nothing (%u segments)", segs);
		cr_assert_gt(g.missed, 0);
		cr_assert_eq(g.first, N - g.n, "what arrives is the newest, without a hole");
	}
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	tc_kill9(rec);
	shmbus_close(bus);
}

Test(catchup, retention_by_size_spares_what_a_durable_subscription_needs)
{
	retention_case(256 << 10, 0, false);
}

Test(catchup, retention_by_size_forced_reports_what_it_deleted_as_missed)
{
	retention_case(256 << 10, 0, true);
}

Test(catchup, retention_by_age_spares_what_a_durable_subscription_needs)
{
	retention_case(0, 1, false);
}

Test(catchup, retention_by_age_forced_reports_what_it_deleted_as_missed)
{
	retention_case(0, 1, true);
}

/* Shared between the publisher child and the consumer. */
struct live_state {
	uint32_t published;
};

static int publish_live(void *arg)
{
	struct live_state *ls = arg;
	shmbus_bus_t *bus;
	shmbus_pub_t *pub;
	if (shmbus_open(tc_bus, NULL, &bus) < 0 ||
	    shmbus_pub_open(bus, &(shmbus_pub_opts_t){.timeout_ns = 10 * (int64_t)TC_SEC_NS}, &pub) < 0)
		return CHILD_FAIL("open: %s", shmbus_errmsg());
	for (uint32_t i = 0; i < 3000; i++) {
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "n", .payload = &i, .payload_len = 4};
		if (shmbus_publish(pub, &m, NULL) < 0)
			return CHILD_FAIL("publish %u: %s", i, shmbus_errmsg());
		__atomic_store_n(&ls->published, i + 1, __ATOMIC_RELEASE);
	}
	shmbus_pub_close(pub);
	shmbus_close(bus);
	return 0;
}

/* A lag subscriber that stops reading for a while is passed over, then
 * catches up from the log while the publisher goes on, and drops keep
 * racing its reads. Every event arrives, none missed, and each arrives for
 * the first time in order; an event may come a second time (catch-up is at
 * least once: a drop marks its range as a gap before it takes anything,
 * and what the range covers but was not dropped can come again). */
Test(catchup, a_slow_lag_subscriber_catches_up_while_publishing_goes_on)
{
	const uint32_t N = 3000;
	shmbus_config_t cfg = cu_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_record_opts_t ro = {.sync = SHMBUS_SYNC_NONE};
	pid_t rec = start_recorder(bus, &ro);
	struct durable_spec d = {.id = "slow", .policy = SHMBUS_POLICY_LAG};
	shmbus_sub_t *sub = durable_return(bus, &d);
	struct live_state *ls = tc_shared_alloc(sizeof *ls);
	pid_t pub = tc_fork(publish_live, ls);
	static uint8_t seen[3000];
	memset(seen, 0, sizeof seen);
	uint32_t distinct = 0, n = 0, from_log = 0, disorder = 0, dups = 0;
	uint64_t missed = 0;
	uint64_t deadline = tc_now_ns() + 20 * TC_SEC_NS;
	bool paused = false;
	while (distinct + missed < N && tc_now_ns() < deadline) {
		/* after 50 events, stop reading until two rings went by */
		if (n == 50 && !paused) {
			while (__atomic_load_n(&ls->published, __ATOMIC_ACQUIRE) < 50 + 2 * cfg.slots &&
			       tc_now_ns() < deadline)
				tc_sleep_ms(1);
			paused = true;
		}
		const shmbus_event_t *ev;
		int rc = shmbus_wait(sub, 50 * (int64_t)TC_MS_NS, &ev);
		cr_assert_geq(rc, 0, "%s", shmbus_errmsg());
		if (rc == 0) {
			missed += shmbus_take_missed(sub);
			continue;
		}
		uint32_t v = tc_payload_u32(ev);
		cr_assert_lt(v, N);
		if (seen[v]) {
			dups++;
		} else {
			disorder += v != distinct; /* first arrivals: 0, 1, 2, ... */
			distinct++;
			seen[v] = 1;
		}
		n++;
		from_log += shmbus_from_log(sub, ev);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	int st;
	cr_assert_eq(tc_wait(pub, 10000, &st), 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "publisher %s", tc_status_str(st));
	missed += shmbus_take_missed(sub);
	cr_assert_eq(missed, 0);
	cr_assert_eq(distinct, N, "received %u distinct events of %u", distinct, N);
	cr_assert_gt(from_log, 0, "nothing was caught up from the log");
	cr_assert_eq(disorder, 0, "%u events arrived for the first time out of order", disorder);
	if (dups)
		cr_log_info("%u events came twice (at least once)", dups);
	(void)n;
	tc_shared_free(ls, sizeof *ls);
	shmbus_sub_close(sub);
	tc_kill9(rec);
	shmbus_close(bus);
}

/* Per payload: how many times a group member received it. */
struct group_seen {
	uint32_t total;
	uint32_t from_log;
	uint32_t count[3000];
};

static int group_consumer(void *arg)
{
	struct group_seen *gs = arg;
	struct durable_spec d = {.id = "m", .group = "grp", .policy = SHMBUS_POLICY_LAG};
	shmbus_sub_opts_t o = durable_opts(&d);
	shmbus_bus_t *bus;
	shmbus_sub_t *sub;
	int rc = tc_child_subscribe(&o, &bus, &sub);
	if (rc)
		return rc;
	uint64_t deadline = tc_now_ns() + 20 * TC_SEC_NS;
	while (__atomic_load_n(&gs->total, __ATOMIC_ACQUIRE) < 3000 && tc_now_ns() < deadline) {
		const shmbus_event_t *ev;
		rc = shmbus_wait(sub, 20 * (int64_t)TC_MS_NS, &ev);
		if (rc < 0)
			return CHILD_FAIL("wait: %s", shmbus_errmsg());
		if (rc == 0)
			continue;
		uint32_t v = tc_payload_u32(ev);
		if (v < 3000)
			__atomic_fetch_add(&gs->count[v], 1, __ATOMIC_RELAXED);
		if (shmbus_from_log(sub, ev))
			__atomic_fetch_add(&gs->from_log, 1, __ATOMIC_RELAXED);
		if (shmbus_release(sub, ev) < 0)
			return CHILD_FAIL("release: %s", shmbus_errmsg());
		__atomic_fetch_add(&gs->total, 1, __ATOMIC_RELEASE);
	}
	if (shmbus_take_missed(sub))
		return CHILD_FAIL("a group member was told it missed events");
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

/* A durable group offline for several rings: two members come back and
 * share the catch-up, each event handled once. */
Test(catchup, a_durable_group_catches_up_each_event_once)
{
	const uint32_t N = 3000;
	shmbus_config_t cfg = cu_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_record_opts_t ro = {.sync = SHMBUS_SYNC_NONE};
	pid_t rec = start_recorder(bus, &ro);
	struct durable_spec d = {.id = "m", .group = "grp", .policy = SHMBUS_POLICY_LAG};
	durable_offline(&d);
	shmbus_pub_t *pub = tc_pub(bus, "p", 10 * (int64_t)TC_SEC_NS);
	shmbus_uuid_t last;
	publish_n(pub, 0, N, &last);
	struct group_seen *gs = tc_shared_alloc(sizeof *gs);
	pid_t a = tc_fork(group_consumer, gs), b = tc_fork(group_consumer, gs);
	int sa, sb;
	cr_assert_eq(tc_wait(a, 30000, &sa), 0);
	cr_assert_eq(tc_wait(b, 30000, &sb), 0);
	cr_assert(WIFEXITED(sa) && WEXITSTATUS(sa) == 0, "member a %s", tc_status_str(sa));
	cr_assert(WIFEXITED(sb) && WEXITSTATUS(sb) == 0, "member b %s", tc_status_str(sb));
	for (uint32_t i = 0; i < N; i++)
		cr_assert_eq(gs->count[i], 1, "event %u handled %u times", i, gs->count[i]);
	cr_assert_gt(gs->from_log, N / 2);
	tc_shared_free(gs, sizeof *gs);
	shmbus_pub_close(pub);
	tc_kill9(rec);
	shmbus_close(bus);
}

struct killed_state {
	uint32_t released; /* payloads released, all below this one */
	uint32_t holding;  /* 1: holds events from the log unreleased */
};

/* Catch up, release 500 events, then hold three and wait to be killed. */
static int catch_and_hold(void *arg)
{
	struct killed_state *ks = arg;
	struct durable_spec d = {.id = "killed", .policy = SHMBUS_POLICY_LAG};
	shmbus_sub_opts_t o = durable_opts(&d);
	shmbus_bus_t *bus;
	shmbus_sub_t *sub;
	int rc = tc_child_subscribe(&o, &bus, &sub);
	if (rc)
		return rc;
	for (uint32_t i = 0; i < 503; i++) {
		const shmbus_event_t *ev;
		if (shmbus_wait(sub, 5 * (int64_t)TC_SEC_NS, &ev) != 1 || !shmbus_from_log(sub, ev))
			return CHILD_FAIL("event %u did not come from the log", i);
		if (tc_payload_u32(ev) != i)
			return CHILD_FAIL("event %u is payload %u", i, tc_payload_u32(ev));
		if (i < 500) {
			shmbus_release(sub, ev);
			__atomic_store_n(&ks->released, i + 1, __ATOMIC_RELEASE);
		}
	}
	__atomic_store_n(&ks->holding, 1, __ATOMIC_RELEASE);
	for (;;)
		pause();
}

/* A consumer killed with SIGKILL while it holds events from the log: its
 * successor gets them again, and everything after, in order. */
Test(catchup, a_consumer_killed_during_catch_up_loses_nothing)
{
	const uint32_t N = 2000;
	shmbus_config_t cfg = cu_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_record_opts_t ro = {.sync = SHMBUS_SYNC_NONE};
	pid_t rec = start_recorder(bus, &ro);
	struct durable_spec d = {.id = "killed", .policy = SHMBUS_POLICY_LAG};
	durable_offline(&d);
	shmbus_pub_t *pub = tc_pub(bus, "p", 10 * (int64_t)TC_SEC_NS);
	shmbus_uuid_t last;
	publish_n(pub, 0, N, &last);
	struct killed_state *ks = tc_shared_alloc(sizeof *ks);
	pid_t c = tc_fork(catch_and_hold, ks);
	for (int i = 0; i < 10000 && !__atomic_load_n(&ks->holding, __ATOMIC_ACQUIRE); i++) {
		int st;
		if (waitpid(c, &st, WNOHANG) == c)
			cr_assert_fail("consumer ended: %s", tc_status_str(st));
		tc_sleep_ms(1);
	}
	cr_assert(ks->holding);
	tc_kill9(c);
	/* the dead consumer's entry is reclaimed after the reclaim timeout */
	for (int i = 0; i < 100 && shmbus_reclaim(bus) == 0; i++)
		tc_sleep_ms(20);
	shmbus_sub_t *sub = durable_return(bus, &d);
	struct got g;
	receive_all(sub, N - 500, &g);
	cr_assert_eq(g.missed, 0);
	cr_assert(g.ordered);
	cr_assert_leq(g.first, 500, "the held events were lost (first %u)", g.first);
	cr_assert_eq(g.next, N, "ends at %u", g.next);
	tc_shared_free(ks, sizeof *ks);
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	tc_kill9(rec);
	shmbus_close(bus);
}
