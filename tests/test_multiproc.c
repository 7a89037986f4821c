/*
 * test_multiproc.c - several processes on one bus at once: publishers and
 * filtered subscribers, a competing-consumer group, durable queueing across
 * a process exit. Children open the bus themselves and report through
 * shared anonymous memory; the parent checks.
 */
#include "common.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(multiproc, .init = tc_init, .fini = tc_fini, .timeout = 100);

#define NPUB 3
#define NSUB 3
#define PER_PUB 20000u

static shmbus_config_t mp_cfg(void)
{
	shmbus_config_t c = tc_small_cfg();
	c.slots = 4096;
	c.max_payload = 1024;
	c.stall_timeout_ns = 120 * TC_SEC_NS; /* a starved subscriber is not a stalled one here */
	return c;
}

/* ------------------------------------------------- the events, by formula */

static const char *const mp_names[] = {"order.created", "order.paid", "user.login", "user.logout", "sys.tick", "sys.alert"};
static const char *const mp_targets[] = {NULL, "t1", "t2"};
static const char *const mp_sources[NPUB] = {"pub-0", "pub-1", "pub-2"};

struct mp_event {
	shmbus_type_t type;
	shmbus_priority_t prio;
	const char *name, *target;
	uint32_t check;
};

static struct mp_event mp_event_of(uint32_t p, uint32_t i)
{
	uint64_t h = tc_mix64(((uint64_t)p << 32) | i);
	struct mp_event e = {
		.type = (shmbus_type_t)(1 + h % 5),
		.name = mp_names[(h >> 8) % 6],
		.prio = (shmbus_priority_t)(1 + (h >> 16) % 4),
		.target = mp_targets[(h >> 24) % 3],
		.check = (uint32_t)(h >> 32),
	};
	return e;
}

struct mp_payload {
	uint32_t pub, counter, check;
};

/* What each subscriber's filter selects (the reference implementation). */
static bool mp_match(int s, uint32_t p, uint32_t i)
{
	struct mp_event e = mp_event_of(p, i);
	switch (s) {
	case 0:
		return e.type == SHMBUS_COMMAND || e.type == SHMBUS_QUERY || e.type == SHMBUS_ERROR;
	case 1:
		return (strncmp(e.name, "order.", 6) == 0 || strncmp(e.name, "user.", 5) == 0) &&
		       e.prio >= SHMBUS_PRIORITY_NORMAL;
	default:
		return (p == 1 || (e.target && strcmp(e.target, "t2") == 0)) && i % 4 != 0;
	}
}

static bool mp_custom(const shmbus_event_t *ev, void *arg)
{
	(void)arg;
	size_t len = 0;
	const struct mp_payload *pl = shmbus_event_payload(ev, &len);
	return len == sizeof *pl && pl->counter % 4 != 0;
}

static int mp_filter(int s, shmbus_filter_t **out)
{
	shmbus_filter_t *k[2], *any2[2];
	int rc;
	switch (s) {
	case 0:
		return shmbus_filter_types(SHMBUS_TYPE_BIT(SHMBUS_COMMAND) | SHMBUS_TYPE_BIT(SHMBUS_QUERY) |
						   SHMBUS_TYPE_BIT(SHMBUS_ERROR),
					   out);
	case 1:
		if ((rc = shmbus_filter_pattern("^(order|user)\\.", &k[0])) < 0)
			return rc;
		if ((rc = shmbus_filter_min_priority(SHMBUS_PRIORITY_NORMAL, &k[1])) < 0) {
			shmbus_filter_free(k[0]);
			return rc;
		}
		return shmbus_filter_all(k, 2, out);
	default: {
		const char *src = "pub-1", *tgt = "t2";
		if ((rc = shmbus_filter_sources(&src, 1, &any2[0])) < 0)
			return rc;
		if ((rc = shmbus_filter_targets(&tgt, 1, &any2[1])) < 0) {
			shmbus_filter_free(any2[0]);
			return rc;
		}
		if ((rc = shmbus_filter_any(any2, 2, &k[0])) < 0)
			return rc;
		if ((rc = shmbus_filter_custom(mp_custom, NULL, &k[1])) < 0) {
			shmbus_filter_free(k[0]);
			return rc;
		}
		return shmbus_filter_all(k, 2, out);
	}
	}
}

/* ------------------------------------------------------ shared results */

struct mp_sub_result {
	uint64_t got[NPUB];
	uint64_t dups, out_of_order, unmatched, bad_fields, foreign, missed;
	uint64_t left_behind; /* queued although the last shmbus_wait timed out */
	int done;
};

struct mp_shared {
	int pubs_done;
	struct mp_sub_result subs[NSUB];
	uint32_t pub_sent[NPUB];
	uint8_t seen[NSUB][NPUB][PER_PUB];
};

struct mp_child {
	struct mp_shared *sh;
	int index;
	int ready_fd;
};

static bool mp_fields_ok(const shmbus_event_t *ev, uint32_t p, uint32_t i, const struct mp_payload *pl)
{
	struct mp_event e = mp_event_of(p, i);
	return pl->check == e.check && shmbus_event_type(ev) == e.type && shmbus_event_priority(ev) == e.prio &&
	       strcmp(shmbus_event_name(ev), e.name) == 0 && strcmp(shmbus_event_source(ev), mp_sources[p]) == 0 &&
	       strcmp(shmbus_event_target(ev), e.target ? e.target : "") == 0;
}

static int mp_subscriber(void *arg)
{
	struct mp_child *c = arg;
	struct mp_sub_result *r = &c->sh->subs[c->index];
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("sub %d: open %d", c->index, rc);
	shmbus_filter_t *f = NULL;
	if ((rc = mp_filter(c->index, &f)) < 0)
		return CHILD_FAIL("sub %d: filter %d", c->index, rc);
	char id[32];
	snprintf(id, sizeof id, "mp-sub-%d", c->index);
	shmbus_sub_opts_t o = {.subscriber_id = id, .filter = f};
	shmbus_sub_t *sub = NULL;
	rc = shmbus_subscribe(bus, &o, &sub);
	shmbus_filter_free(f);
	if (rc < 0)
		return CHILD_FAIL("sub %d: subscribe %d", c->index, rc);
	tc_write_byte(c->ready_fd, 'R');

	uint32_t next[NPUB][2] = {{0}}; /* per publisher and priority class */
	uint64_t deadline = tc_now_ns() + 90 * TC_SEC_NS;
	while (tc_now_ns() < deadline) {
		const shmbus_event_t *ev = NULL;
		rc = shmbus_wait(sub, 100 * (int64_t)TC_MS_NS, &ev);
		if (rc == -EINTR)
			continue;
		if (rc < 0)
			return CHILD_FAIL("sub %d: wait %d", c->index, rc);
		if (rc == 0) {
			if (!__atomic_load_n(&c->sh->pubs_done, __ATOMIC_ACQUIRE))
				continue;
			/* Every publisher has returned: a 100 ms wait found
			 * nothing, so nothing may be left queued. */
			if ((rc = shmbus_poll(sub, &ev)) != 1)
				break;
			r->left_behind++;
		}
		size_t len = 0;
		const struct mp_payload *pl = shmbus_event_payload(ev, &len);
		if (len != sizeof *pl || pl->pub >= NPUB || pl->counter >= PER_PUB) {
			r->foreign++;
		} else {
			uint32_t p = pl->pub, i = pl->counter;
			if (!mp_fields_ok(ev, p, i, pl))
				r->bad_fields++;
			if (!mp_match(c->index, p, i))
				r->unmatched++;
			if (c->sh->seen[c->index][p][i]++)
				r->dups++;
			int cls = shmbus_event_priority(ev) >= SHMBUS_PRIORITY_HIGH ? 0 : 1;
			if (i < next[p][cls])
				r->out_of_order++;
			next[p][cls] = i + 1;
			r->got[p]++;
		}
		if ((rc = shmbus_release(sub, ev)) < 0)
			return CHILD_FAIL("sub %d: release %d", c->index, rc);
	}
	r->missed = shmbus_take_missed(sub);
	r->done = 1;
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

static int mp_publisher(void *arg)
{
	struct mp_child *c = arg;
	uint32_t p = (uint32_t)c->index;
	shmbus_bus_t *bus = NULL;
	shmbus_pub_t *pub = NULL;
	shmbus_pub_opts_t o = {.source = mp_sources[p], .timeout_ns = 60 * (int64_t)TC_SEC_NS};
	int rc = tc_child_publisher(&o, &bus, &pub);
	if (rc)
		return rc;

	enum { BATCH = 16 };
	struct mp_payload pls[BATCH];
	shmbus_msg_t msgs[BATCH];
	uint32_t i = 0;
	while (i < PER_PUB) {
		/* Mix the three ways to publish: batches, zero copy, plain. */
		uint32_t n = (i % 512 == 0 && i + BATCH <= PER_PUB) ? BATCH : 1;
		for (uint32_t k = 0; k < n; k++) {
			struct mp_event e = mp_event_of(p, i + k);
			pls[k] = (struct mp_payload){.pub = p, .counter = i + k, .check = e.check};
			msgs[k] = (shmbus_msg_t){.type = e.type, .name = e.name, .target = e.target, .priority = e.prio,
						 .payload = &pls[k], .payload_len = sizeof pls[k]};
		}
		if (n > 1) {
			rc = shmbus_publish_batch(pub, msgs, n, NULL);
			if (rc != (int)n)
				return CHILD_FAIL("pub %u: batch at %u: %d", p, i, rc);
		} else if (i % 7 == 3) {
			shmbus_claim_t claim;
			if ((rc = shmbus_reserve(pub, &msgs[0], sizeof pls[0], &claim)) < 0)
				return CHILD_FAIL("pub %u: reserve %u: %d", p, i, rc);
			memcpy(claim.payload, &pls[0], sizeof pls[0]);
			if ((rc = shmbus_commit(pub, &claim, NULL)) < 0)
				return CHILD_FAIL("pub %u: commit %u: %d", p, i, rc);
		} else if ((rc = shmbus_publish(pub, &msgs[0], NULL)) < 0) {
			return CHILD_FAIL("pub %u: publish %u: %d", p, i, rc);
		}
		i += n;
		c->sh->pub_sent[p] = i;
	}
	shmbus_pub_close(pub);
	shmbus_close(bus);
	return 0;
}

static void wait_ready(int fd, int n)
{
	for (int k = 0; k < n; k++) {
		char ch = 0;
		int rc = tc_read_byte(fd, 10000, &ch);
		cr_assert_eq(rc, 0, "child %d of %d never became ready (%d)", k + 1, n, rc);
		cr_assert_eq(ch, 'R');
	}
}

/* Fork fn(arg), a reader that writes 'R' to *up (set here) once it has
 * subscribed, and wait for that. The pipe is closed again then. */
static pid_t fork_ready_reader(int (*fn)(void *), void *arg, int *up)
{
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	*up = fds[1];
	pid_t pid = tc_fork(fn, arg);
	wait_ready(fds[0], 1);
	close(fds[0]);
	close(fds[1]);
	return pid;
}

static void expect_exit_ok(pid_t pid, int timeout_ms, const char *what)
{
	int st = 0;
	int rc = tc_wait(pid, timeout_ms, &st);
	cr_assert_eq(rc, 0, "%s did not finish in %d ms", what, timeout_ms);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s %s", what, tc_status_str(st));
}

Test(multiproc, publishers_and_filtered_subscribers)
{
	shmbus_config_t cfg = mp_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	struct mp_shared *sh = tc_shared_alloc(sizeof *sh);
	int ready[2];
	cr_assert_eq(pipe(ready), 0);

	struct mp_child subs[NSUB], pubs[NPUB];
	pid_t sub_pid[NSUB], pub_pid[NPUB];
	for (int s = 0; s < NSUB; s++) {
		subs[s] = (struct mp_child){.sh = sh, .index = s, .ready_fd = ready[1]};
		sub_pid[s] = tc_fork(mp_subscriber, &subs[s]);
	}
	wait_ready(ready[0], NSUB);
	for (int p = 0; p < NPUB; p++) {
		pubs[p] = (struct mp_child){.sh = sh, .index = p, .ready_fd = -1};
		pub_pid[p] = tc_fork(mp_publisher, &pubs[p]);
	}
	for (int p = 0; p < NPUB; p++) {
		int st = 0;
		int rc = tc_wait(pub_pid[p], 90000, &st);
		cr_assert_eq(rc, 0, "publisher %d hung after %u events", p, sh->pub_sent[p]);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "publisher %d %s after %u events", p, tc_status_str(st),
			  sh->pub_sent[p]);
	}
	__atomic_store_n(&sh->pubs_done, 1, __ATOMIC_RELEASE);
	for (int s = 0; s < NSUB; s++) {
		char what[32];
		snprintf(what, sizeof what, "subscriber %d", s);
		expect_exit_ok(sub_pid[s], 30000, what);
	}

	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_expect_eq(mt.published, NPUB * PER_PUB, "published %llu", (unsigned long long)mt.published);

	for (int s = 0; s < NSUB; s++) {
		struct mp_sub_result *r = &sh->subs[s];
		cr_expect(r->done, "subscriber %d did not finish", s);
		cr_expect_eq(r->dups, 0, "subscriber %d: %llu events twice", s, (unsigned long long)r->dups);
		cr_expect_eq(r->out_of_order, 0, "subscriber %d: %llu events out of publish order", s,
			     (unsigned long long)r->out_of_order);
		cr_expect_eq(r->unmatched, 0, "subscriber %d: %llu events its filter rejects", s,
			     (unsigned long long)r->unmatched);
		cr_expect_eq(r->bad_fields, 0, "subscriber %d: %llu events with wrong fields", s,
			     (unsigned long long)r->bad_fields);
		cr_expect_eq(r->foreign, 0, "subscriber %d: %llu foreign events", s, (unsigned long long)r->foreign);
		cr_expect_eq(r->missed, 0, "subscriber %d: missed %llu", s, (unsigned long long)r->missed);
		cr_expect_eq(r->left_behind, 0,
			     "subscriber %d: shmbus_wait timed out (100 ms) while %llu events were queued for it",
			     s, (unsigned long long)r->left_behind);
		for (uint32_t p = 0; p < NPUB; p++) {
			uint64_t expected = 0, missing = 0;
			uint32_t first_missing = UINT32_MAX;
			for (uint32_t i = 0; i < PER_PUB; i++) {
				bool want = mp_match(s, p, i);
				expected += want;
				if (want && sh->seen[s][p][i] == 0) {
					missing++;
					if (first_missing == UINT32_MAX)
						first_missing = i;
				}
			}
			cr_expect_gt(expected, 0);
			cr_expect_eq(r->got[p], expected, "subscriber %d from publisher %u: got %llu, want %llu", s, p,
				     (unsigned long long)r->got[p], (unsigned long long)expected);
			cr_expect_eq(missing, 0, "subscriber %d from publisher %u: %llu missing, first #%u", s, p,
				     (unsigned long long)missing, first_missing);
		}
	}
	close(ready[0]);
	close(ready[1]);
	tc_shared_free(sh, sizeof *sh);
	shmbus_close(bus);
}

/* ------------------------------------------------------------- groups */

#define GROUP_N 6000u
#define GROUP_MEMBERS 3

struct group_shared {
	int pubs_done;
	uint32_t handled[GROUP_N];
	uint32_t per_member[GROUP_MEMBERS];
	uint32_t out_of_order[GROUP_MEMBERS];
	uint32_t foreign;
};

struct group_child {
	struct group_shared *sh;
	int index;
	int ready_fd;
};

static int pool_member(void *arg)
{
	struct group_child *c = arg;
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("member %d: open %d", c->index, rc);
	shmbus_sub_opts_t o = {.subscriber_id = "pool", .group = "pool"};
	shmbus_sub_t *sub = NULL;
	if ((rc = shmbus_subscribe(bus, &o, &sub)) < 0)
		return CHILD_FAIL("member %d: subscribe %d", c->index, rc);
	tc_write_byte(c->ready_fd, 'R');
	uint32_t next = 0;
	uint64_t deadline = tc_now_ns() + 60 * TC_SEC_NS;
	while (tc_now_ns() < deadline) {
		const shmbus_event_t *ev = NULL;
		rc = shmbus_wait(sub, 100 * (int64_t)TC_MS_NS, &ev);
		if (rc == -EINTR)
			continue;
		if (rc < 0)
			return CHILD_FAIL("member %d: wait %d", c->index, rc);
		if (rc == 0) {
			if (__atomic_load_n(&c->sh->pubs_done, __ATOMIC_ACQUIRE))
				break;
			continue;
		}
		uint32_t i = tc_payload_u32(ev);
		if (i >= GROUP_N) {
			__atomic_fetch_add(&c->sh->foreign, 1, __ATOMIC_RELAXED);
		} else {
			__atomic_fetch_add(&c->sh->handled[i], 1, __ATOMIC_RELAXED);
			if (i < next)
				c->sh->out_of_order[c->index]++;
			next = i + 1;
			c->sh->per_member[c->index]++;
		}
		if ((rc = shmbus_release(sub, ev)) < 0)
			return CHILD_FAIL("member %d: release %d", c->index, rc);
	}
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

static int group_publisher(void *arg)
{
	(void)arg;
	return tc_child_publish_n(SHMBUS_COMMAND, "job.run", GROUP_N, 30 * (int64_t)TC_SEC_NS);
}

Test(multiproc, group_across_three_processes)
{
	shmbus_config_t cfg = mp_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	struct group_shared *sh = tc_shared_alloc(sizeof *sh);
	int ready[2];
	cr_assert_eq(pipe(ready), 0);
	struct group_child kids[GROUP_MEMBERS];
	pid_t pids[GROUP_MEMBERS];
	for (int m = 0; m < GROUP_MEMBERS; m++) {
		kids[m] = (struct group_child){.sh = sh, .index = m, .ready_fd = ready[1]};
		pids[m] = tc_fork(pool_member, &kids[m]);
	}
	wait_ready(ready[0], GROUP_MEMBERS);
	shmbus_sub_info_t info;
	cr_assert_eq(shmbus_list_subscriptions(bus, "pool", &info, 1), 1, "one group subscription");
	cr_assert_eq(info.consumers, GROUP_MEMBERS, "group consumers %u", info.consumers);

	pid_t pub = tc_fork(group_publisher, NULL);
	expect_exit_ok(pub, 60000, "group publisher");
	__atomic_store_n(&sh->pubs_done, 1, __ATOMIC_RELEASE);
	for (int m = 0; m < GROUP_MEMBERS; m++)
		expect_exit_ok(pids[m], 30000, "group member");

	uint32_t total = 0, never = 0, twice = 0, first_bad = UINT32_MAX;
	for (uint32_t i = 0; i < GROUP_N; i++) {
		if (sh->handled[i] != 1 && first_bad == UINT32_MAX)
			first_bad = i;
		never += sh->handled[i] == 0;
		twice += sh->handled[i] > 1;
	}
	for (int m = 0; m < GROUP_MEMBERS; m++) {
		total += sh->per_member[m];
		cr_expect_eq(sh->out_of_order[m], 0, "member %d saw events out of order", m);
		cr_log_info("member %d handled %u", m, sh->per_member[m]);
	}
	cr_expect_eq(sh->foreign, 0);
	cr_expect_eq(never, 0, "%u events handled by no member (first #%u)", never, first_bad);
	cr_expect_eq(twice, 0, "%u events handled by more than one member (first #%u)", twice, first_bad);
	cr_expect_eq(total, GROUP_N);
	close(ready[0]);
	close(ready[1]);
	tc_shared_free(sh, sizeof *sh);
	shmbus_close(bus);
}

/* ------------------------------------------------------------- durable */

#define DUR_FIRST 10u
#define DUR_OFFLINE 50u

struct dur_child {
	int ready_fd;
	bool clean_exit; /* close handles before exiting, or just _exit */
	uint32_t from, count;
	uint32_t got, wrong, extra;
};

static int durable_consumer(void *arg)
{
	struct dur_child *c = arg;
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("open %d", rc);
	shmbus_filter_t *f = NULL;
	const char *name = "ledger.entry";
	/* The first incarnation sets the filter; later ones keep the stored one. */
	if (c->from == 0 && (rc = shmbus_filter_names(&name, 1, &f)) < 0)
		return CHILD_FAIL("filter %d", rc);
	shmbus_sub_opts_t o = {.subscriber_id = "ledger", .durable = true, .filter = f};
	shmbus_sub_t *sub = NULL;
	rc = shmbus_subscribe(bus, &o, &sub);
	shmbus_filter_free(f);
	if (rc < 0)
		return CHILD_FAIL("subscribe %d", rc);
	tc_write_byte(c->ready_fd, 'R');
	uint64_t deadline = tc_now_ns() + 20 * TC_SEC_NS;
	while (c->got < c->count && tc_now_ns() < deadline) {
		const shmbus_event_t *ev = NULL;
		rc = shmbus_wait(sub, 100 * (int64_t)TC_MS_NS, &ev);
		if (rc < 0 && rc != -EINTR)
			return CHILD_FAIL("wait %d", rc);
		if (rc != 1)
			continue;
		if (tc_payload_u32(ev) != c->from + c->got || strcmp(shmbus_event_name(ev), "ledger.entry") != 0)
			c->wrong++;
		c->got++;
		shmbus_release(sub, ev);
	}
	/* Nothing beyond. */
	const shmbus_event_t *ev = NULL;
	if (shmbus_wait(sub, 200 * (int64_t)TC_MS_NS, &ev) == 1) {
		c->extra++;
		shmbus_release(sub, ev);
	}
	if (!c->clean_exit)
		_exit(0);
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

static void check_durable_across_exit(bool clean_exit)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 10 * (int64_t)TC_SEC_NS);
	int ready[2];
	cr_assert_eq(pipe(ready), 0);
	struct dur_child *c = tc_shared_alloc(2 * sizeof *c);

	c[0] = (struct dur_child){.ready_fd = ready[1], .clean_exit = clean_exit, .from = 0, .count = DUR_FIRST};
	pid_t first = tc_fork(durable_consumer, &c[0]);
	wait_ready(ready[0], 1);
	for (uint32_t i = 0; i < DUR_FIRST; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "ledger.entry", 0, i), 0);
	expect_exit_ok(first, 30000, "first durable consumer");
	cr_assert_eq(c[0].got, DUR_FIRST);
	cr_assert_eq(c[0].wrong, 0);
	cr_assert_eq(c[0].extra, 0);

	/* Its process is gone; events queue for it. */
	for (uint32_t i = DUR_FIRST; i < DUR_FIRST + DUR_OFFLINE; i++) {
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "ledger.entry", 0, i), 0, "%s", shmbus_errmsg());
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "other.entry", 0, 5000 + i), 0);
	}
	shmbus_sub_info_t info;
	cr_assert_eq(shmbus_list_subscriptions(bus, "ledger", &info, 1), 1, "durable subscription gone with its process");
	cr_assert(info.durable);

	c[1] = (struct dur_child){.ready_fd = ready[1], .clean_exit = true, .from = DUR_FIRST, .count = DUR_OFFLINE};
	pid_t second = tc_fork(durable_consumer, &c[1]);
	wait_ready(ready[0], 1);
	expect_exit_ok(second, 30000, "second durable consumer");
	cr_assert_eq(c[1].got, DUR_OFFLINE, "received %u of %u queued events", c[1].got, DUR_OFFLINE);
	cr_assert_eq(c[1].wrong, 0, "%u events out of order or not matching the stored filter", c[1].wrong);
	cr_assert_eq(c[1].extra, 0, "events beyond the queued ones");

	close(ready[0]);
	close(ready[1]);
	tc_shared_free(c, 2 * sizeof *c);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

Test(multiproc, durable_queue_across_process_exit) { check_durable_across_exit(true); }
Test(multiproc, durable_queue_across_exit_without_close) { check_durable_across_exit(false); }

/* ------------------------------------------ attach/detach churn, no kills */

struct churn_args {
	unsigned seed;
	unsigned iterations;
	int publish_rc; /* the first failed publish, 0 if none */
};

/* For a while: attach, subscribe, publish one event (routed to every churner
 * subscribed at the moment), take and release one, detach. Clean exits only. */
static int churn_cleanly(void *arg)
{
	struct churn_args *a = arg;
	uint64_t until = tc_now_ns() + 1500 * TC_MS_NS;
	while (tc_now_ns() < until) {
		shmbus_bus_t *bus = NULL;
		int rc = shmbus_open(tc_bus, NULL, &bus);
		if (rc < 0)
			return CHILD_FAIL("open %d", rc);
		shmbus_sub_t *sub = NULL;
		/* lag: with block policy a churner descheduled right after
		 * subscribing lets the others fill the ring with its backlog, and
		 * then blocks on itself in its own publish (a real deadlock of
		 * block policy that only the stall timeout breaks, not a leak) */
		shmbus_sub_opts_t o = {.subscriber_id = "churn", .policy = SHMBUS_POLICY_LAG};
		if ((rc = shmbus_subscribe(bus, &o, &sub)) < 0)
			return CHILD_FAIL("subscribe %d", rc);
		shmbus_pub_t *pub = NULL;
		shmbus_pub_opts_t po = {.timeout_ns = 5 * (int64_t)TC_SEC_NS};
		if ((rc = shmbus_pub_open(bus, &po, &pub)) < 0)
			return CHILD_FAIL("pub_open %d", rc);
		if ((rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "churn", 0, a->seed)) < 0) {
			a->publish_rc = rc;
			return CHILD_FAIL("publish after %u rounds: %d (%s)", a->iterations, rc, shmbus_errmsg());
		}
		shmbus_pub_close(pub);
		const shmbus_event_t *ev = NULL;
		if (shmbus_poll(sub, &ev) == 1 && (rc = shmbus_release(sub, ev)) < 0)
			return CHILD_FAIL("release %d", rc);
		shmbus_sub_close(sub);
		shmbus_close(bus);
		a->iterations++;
	}
	return 0;
}

Test(multiproc, subscribe_publish_detach_churn_leaks_no_slot)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.stall_timeout_ns = 120 * TC_SEC_NS;
	shmbus_bus_t *bus = tc_create(&cfg);
	enum { CHURNERS = 3 };
	struct churn_args *args = tc_shared_alloc(CHURNERS * sizeof *args);
	pid_t pids[CHURNERS];
	for (unsigned i = 0; i < CHURNERS; i++) {
		args[i].seed = i;
		pids[i] = tc_fork(churn_cleanly, &args[i]);
	}
	unsigned total = 0;
	for (unsigned i = 0; i < CHURNERS; i++) {
		int st = 0;
		cr_assert_eq(tc_wait(pids[i], 30000, &st), 0, "churner %u hung", i);
		total += args[i].iterations;
		cr_expect_eq(args[i].publish_rc, 0,
			     "churner %u: publish failed with %d after %u rounds although no subscriber holds anything: "
			     "ring slots are leaked by concurrent subscribe/poll/release/close",
			     i, args[i].publish_rc, args[i].iterations);
		cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "churner %u %s", i, tc_status_str(st));
	}
	cr_log_info("%u attach/subscribe/publish/detach rounds", total);

	/* Nobody is subscribed and nothing is held: every slot is reusable. */
	shmbus_metrics_t mt;
	cr_assert_eq(shmbus_get_metrics(bus, &mt), 0);
	cr_expect_eq(mt.subscriptions, 0);
	cr_expect_eq(mt.ring_used, 0, "%llu ring slots still referenced after %u clean rounds with nothing held",
		     (unsigned long long)mt.ring_used, total);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 2 * (int64_t)TC_SEC_NS);
	for (uint32_t i = 0; i < 3 * cfg.slots; i++) {
		int rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "after.churn", 0, i);
		cr_assert_eq(rc, 0, "publish %u after the churn: %d (%s)", i, rc, shmbus_errmsg());
		cr_assert_eq(tc_drain(sub, NULL, NULL), 1);
	}
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	tc_shared_free(args, CHURNERS * sizeof *args);
	shmbus_close(bus);
}

/* ------------------------------------------- lag accounting under load */

#define LAG_N 20000u

struct lag_shared {
	int up;
	int published;
	uint32_t received, dups, out_of_order;
	uint64_t missed;
	uint8_t seen[LAG_N];
};

static int slow_lag_reader(void *arg)
{
	struct lag_shared *sh = arg;
	shmbus_bus_t *bus = NULL;
	int rc = shmbus_open(tc_bus, NULL, &bus);
	if (rc < 0)
		return CHILD_FAIL("open %d", rc);
	shmbus_sub_opts_t o = {.subscriber_id = "slowpoke", .policy = SHMBUS_POLICY_LAG};
	shmbus_sub_t *sub = NULL;
	if ((rc = shmbus_subscribe(bus, &o, &sub)) < 0)
		return CHILD_FAIL("subscribe %d", rc);
	tc_write_byte(sh->up, 'R');
	uint32_t next = 0;
	uint64_t deadline = tc_now_ns() + 60 * TC_SEC_NS;
	while (tc_now_ns() < deadline) {
		const shmbus_event_t *ev = NULL;
		rc = shmbus_wait(sub, 100 * (int64_t)TC_MS_NS, &ev);
		if (rc < 0 && rc != -EINTR)
			return CHILD_FAIL("wait %d", rc);
		if (rc == 0 && __atomic_load_n(&sh->published, __ATOMIC_ACQUIRE))
			break;
		if (rc != 1)
			continue;
		uint32_t i = tc_payload_u32(ev);
		if (i < LAG_N && sh->seen[i]++)
			sh->dups++;
		if (i < next)
			sh->out_of_order++;
		next = i + 1;
		sh->received++;
		if (sh->received % 16 == 0)
			tc_sleep_ms(1); /* slower than the publisher */
		sh->missed += shmbus_take_missed(sub);
		if ((rc = shmbus_release(sub, ev)) < 0 && rc != -ESTALE)
			return CHILD_FAIL("release %d", rc);
	}
	sh->missed += shmbus_take_missed(sub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

static int flood(void *arg)
{
	(void)arg;
	/* The reader holds one event at a time while it sleeps: a publisher may
	 * wait for that one slot, but never for the reader's backlog. */
	return tc_child_publish_n(SHMBUS_NOTIFICATION, "flood", LAG_N, 10 * (int64_t)TC_SEC_NS);
}

Test(multiproc, lag_subscriber_in_another_process_is_told_exactly_what_it_missed)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	struct lag_shared *sh = tc_shared_alloc(sizeof *sh);
	pid_t reader = fork_ready_reader(slow_lag_reader, sh, &sh->up);
	pid_t pub = tc_fork(flood, NULL);
	expect_exit_ok(pub, 60000, "flooding publisher");
	__atomic_store_n(&sh->published, 1, __ATOMIC_RELEASE);
	expect_exit_ok(reader, 60000, "slow lag reader");
	cr_log_info("lag reader: %u received, %llu missed", sh->received, (unsigned long long)sh->missed);
	cr_expect_eq(sh->dups, 0, "%u events twice", sh->dups);
	cr_expect_eq(sh->out_of_order, 0, "%u events out of order", sh->out_of_order);
	cr_expect_gt(sh->missed, 0, "the reader was never passed over: the test did not exercise the lag path");
	cr_expect_eq(sh->received + sh->missed, LAG_N, "received %u + missed %llu != published %u", sh->received,
		     (unsigned long long)sh->missed, LAG_N);
	tc_shared_free(sh, sizeof *sh);
	shmbus_close(bus);
}

/* --------------------------------------- streamed batches, another process */

#define STREAM_BATCHES 1500u
#define STREAM_BATCH 64u
#define STREAM_PAYLOAD 200u

/* Byte k of the payload of event i: a function of both. */
static uint8_t stream_byte(uint32_t i, uint32_t k)
{
	return (uint8_t)(tc_mix64(((uint64_t)i << 16) | k) >> 24);
}

struct stream_shared {
	int up;
	uint32_t received, bad_payload, bad_len, out_of_order, bad_id, missed;
	int done;
};

static int stream_reader(void *arg)
{
	struct stream_shared *sh = arg;
	shmbus_bus_t *bus = NULL;
	shmbus_sub_t *sub = NULL;
	int rc = tc_child_subscribe(&(shmbus_sub_opts_t){.subscriber_id = "stream-reader"}, &bus, &sub);
	if (rc)
		return rc;
	tc_write_byte(sh->up, 'R');
	uint64_t last_seq = 0, deadline = tc_now_ns() + 60 * TC_SEC_NS;
	const uint32_t total = STREAM_BATCHES * STREAM_BATCH;
	while (sh->received < total && tc_now_ns() < deadline) {
		const shmbus_event_t *evs[32];
		int n = shmbus_poll_batch(sub, evs, 32);
		if (n < 0)
			return CHILD_FAIL("reader: poll_batch %d", n);
		for (int j = 0; j < n; j++) {
			size_t len = 0;
			const uint8_t *p = shmbus_event_payload(evs[j], &len);
			uint32_t i;
			if (len != STREAM_PAYLOAD) {
				sh->bad_len++;
			} else {
				memcpy(&i, p, sizeof i);
				for (uint32_t k = sizeof i; k < len; k++)
					if (p[k] != stream_byte(i, k)) {
						sh->bad_payload++;
						break;
					}
				if (i != sh->received)
					sh->out_of_order++;
			}
			uint64_t seq = shmbus_event_seq(evs[j]);
			if (seq <= last_seq && sh->received > 0)
				sh->out_of_order++;
			if (shmbus_uuid_seq(shmbus_event_id(evs[j])) != seq ||
			    memcmp(shmbus_event_correlation_id(evs[j]), shmbus_event_id(evs[j]), 16) != 0)
				sh->bad_id++;
			last_seq = seq;
			sh->received++;
		}
		if (n > 0 && (rc = shmbus_release_batch(sub, evs, n)) < 0)
			return CHILD_FAIL("reader: release_batch %d", rc);
	}
	sh->missed = (uint32_t)shmbus_take_missed(sub);
	sh->done = 1;
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

/*
 * Batches of 64 events of one shape are written with streaming stores,
 * every line of each event but the first of a window (a new publisher
 * streams its first stretch, 4096 slots here, about 2000 of these
 * events, before it times the caches; stream_choice.h): a consumer in
 * another process, polling the queue, must find every event whole as soon
 * as it can take it. 96,000 events of 200 payload bytes,
 * each byte a function of the event, checked in the reader with its
 * sequence and id. (The publisher's SFENCE before the push is what the
 * architecture asks for; on the AMD machine where this was written the
 * push's locked CAS kept the order without it too, so this test does not
 * notice the fence missing. It notices lines streamed wrong or not at all.)
 */
Test(multiproc, streamed_batches_arrive_whole_in_another_process)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.slots = 1024;
	shmbus_bus_t *bus = tc_create(&cfg);
	struct stream_shared *sh = tc_shared_alloc(sizeof *sh);
	pid_t reader = fork_ready_reader(stream_reader, sh, &sh->up);
	shmbus_pub_t *pub = tc_pub(bus, "streamer", 30 * (int64_t)TC_SEC_NS);
	static uint8_t payloads[STREAM_BATCH][STREAM_PAYLOAD];
	shmbus_msg_t msgs[STREAM_BATCH];
	for (uint32_t b = 0; b < STREAM_BATCHES; b++) {
		for (uint32_t j = 0; j < STREAM_BATCH; j++) {
			uint32_t i = b * STREAM_BATCH + j;
			memcpy(payloads[j], &i, sizeof i);
			for (uint32_t k = sizeof i; k < STREAM_PAYLOAD; k++)
				payloads[j][k] = stream_byte(i, k);
			msgs[j] = (shmbus_msg_t){.type = SHMBUS_NOTIFICATION, .name = "stream",
						 .payload = payloads[j], .payload_len = STREAM_PAYLOAD};
		}
		int rc = shmbus_publish_batch(pub, msgs, STREAM_BATCH, NULL);
		cr_assert_eq(rc, (int)STREAM_BATCH, "batch %u: %d (%s)", b, rc, shmbus_errmsg());
	}
	expect_exit_ok(reader, 60000, "stream reader");
	cr_expect(sh->done, "the reader did not finish");
	cr_expect_eq(sh->received, STREAM_BATCHES * STREAM_BATCH, "received %u", sh->received);
	cr_expect_eq(sh->missed, 0, "%u missed", sh->missed);
	cr_expect_eq(sh->bad_len, 0, "%u events of a wrong length", sh->bad_len);
	cr_expect_eq(sh->bad_payload, 0, "%u events with wrong payload bytes", sh->bad_payload);
	cr_expect_eq(sh->bad_id, 0, "%u events with a wrong id or correlation id", sh->bad_id);
	cr_expect_eq(sh->out_of_order, 0, "%u events out of order", sh->out_of_order);
	shmbus_pub_close(pub);
	tc_shared_free(sh, sizeof *sh);
	shmbus_close(bus);
}

/* ----------------------------------------- wake-ups, another process */

#define WAKE_EVENTS 10000u
#define WAKE_LOST_NS (5 * TC_SEC_NS)

/* How the publisher of a wake-up run publishes. */
struct wake_way {
	const char *what;
	shmbus_priority_t prio; /* high: the urgent queue */
	bool zero_copy;		/* shmbus_reserve and shmbus_commit */
};

struct wake_shared {
	struct wake_way way;
	uint32_t acked; /* events the consumer has taken */
};

static int wake_publish_one(shmbus_pub_t *pub, const struct wake_way *way, uint32_t i)
{
	if (!way->zero_copy)
		return tc_publish_u32(pub, SHMBUS_NOTIFICATION, "wake", way->prio, i);
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "wake", .priority = way->prio};
	shmbus_claim_t claim;
	int rc = shmbus_reserve(pub, &m, sizeof i, &claim);
	if (rc < 0)
		return rc;
	memcpy(claim.payload, &i, sizeof i);
	return shmbus_commit(pub, &claim, NULL);
}

/*
 * Publish WAKE_EVENTS events counting up, each once the consumer took the
 * one before (through shared memory, which wakes nobody) and a
 * pseudo-random 0-2 us later (busy-waited): about when the consumer is on
 * its way back to sleep.
 */
static int wake_publisher(void *arg)
{
	struct wake_shared *sh = arg;
	shmbus_bus_t *bus = NULL;
	shmbus_pub_t *pub = NULL;
	int rc = tc_child_publisher(&(shmbus_pub_opts_t){.source = "waker", .timeout_ns = 90 * TC_SEC_NS}, &bus, &pub);
	if (rc)
		return rc;
	for (uint32_t i = 0; i < WAKE_EVENTS; i++) {
		uint64_t deadline = tc_now_ns() + 90 * TC_SEC_NS;
		while (__atomic_load_n(&sh->acked, __ATOMIC_ACQUIRE) < i)
			if (tc_now_ns() > deadline)
				return CHILD_FAIL("the consumer never took event %u", i - 1);
		uint64_t until = tc_now_ns() + tc_mix64(i) % 2000;
		while (tc_now_ns() < until)
			;
		if ((rc = wake_publish_one(pub, &sh->way, i)) < 0)
			return CHILD_FAIL("%s: publish #%u: %d (%s)", sh->way.what, i, rc, shmbus_errmsg());
	}
	shmbus_pub_close(pub);
	shmbus_close(bus);
	return 0;
}

static long voluntary_switches(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_nvcsw;
}

/*
 * A consumer asleep in a block wait is woken by the publish of the event
 * it waits for, every time. It raises its subscription's `sleepers` flag,
 * fences, looks at its queues once more and sleeps; a publisher pushes,
 * then looks at the flag: without a store-load order on both sides each
 * can miss the other, and the consumer then sleeps until something else
 * wakes it. Here nothing else does: another process publishes each event
 * only once the consumer took the one before, 0-2 us after, as the
 * consumer goes back to sleep. The event of a lost wake-up still arrives
 * when the sleep's slice runs out (the wait polls once more), so the time
 * tells: the bus's reclaim timeout is 300 s, a sleep's slice half that,
 * and each wait may take 10 s, so a lost wake-up is a wait of 10 s (the
 * first ends the run). Four runs: copies and zero-copy commits, at normal
 * and at high priority (the urgent queue, which a sleeper must judge by
 * its head cell: see consume.c urgent_ready). Counted: waits over 5 s
 * (none), events in order, and how often the consumer slept (the test
 * exercises nothing if it never does). It fails with a wake-up skipped
 * once in 1024 publishes. The races of a missing store-load order are
 * narrower than it can aim at: on the AMD guest of the README it passed
 * with the consumer's fence taken out, and a review's scratch test needed
 * about 10^6 urgent events a lost wake-up to catch the urgent queue judged
 * by its tail hint, so it guards the wake-up, not each order.
 */
Test(multiproc, a_sleeping_consumer_is_woken_by_every_publish_in_another_process)
{
	static const struct wake_way ways[] = {
		{"copy", SHMBUS_PRIORITY_NORMAL, false},
		{"copy, high", SHMBUS_PRIORITY_HIGH, false},
		{"zero-copy", SHMBUS_PRIORITY_NORMAL, true},
		{"zero-copy, high", SHMBUS_PRIORITY_HIGH, true},
	};
	shmbus_config_t cfg = tc_small_cfg();
	cfg.reclaim_timeout_ns = 300 * TC_SEC_NS;
	cfg.stall_timeout_ns = 300 * TC_SEC_NS;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &(shmbus_sub_opts_t){.subscriber_id = "sleeper", .wait = SHMBUS_WAIT_BLOCK},
				      &sub),
		     0);
	struct wake_shared *sh = tc_shared_alloc(sizeof *sh);
	for (unsigned w = 0; w < sizeof ways / sizeof ways[0]; w++) {
		sh->way = ways[w];
		sh->acked = 0;
		long switches0 = voluntary_switches();
		pid_t pub = tc_fork(wake_publisher, sh);
		uint32_t received = 0, out_of_order = 0, lost = 0;
		uint64_t longest = 0;
		while (received < WAKE_EVENTS) {
			const shmbus_event_t *ev;
			uint64_t t0 = tc_now_ns();
			int rc = shmbus_wait(sub, 10 * (int64_t)TC_SEC_NS, &ev);
			uint64_t took = tc_now_ns() - t0;
			if (rc != 1) {
				cr_log_error("%s: wait for event %u: %d", ways[w].what, received, rc);
				break;
			}
			longest = took > longest ? took : longest;
			if (took > WAKE_LOST_NS) {
				lost++;
				break;
			}
			out_of_order += tc_payload_u32(ev) != received;
			received++;
			cr_assert_eq(shmbus_release(sub, ev), 0);
			__atomic_store_n(&sh->acked, received, __ATOMIC_RELEASE);
		}
		long slept = voluntary_switches() - switches0;
		int st = 0;
		if (received < WAKE_EVENTS)
			tc_kill9(pub); /* waiting for an event we will not take */
		else
			cr_assert_eq(tc_wait(pub, 60000, &st), 0, "%s: publisher hung", ways[w].what);
		cr_expect(received < WAKE_EVENTS || (WIFEXITED(st) && WEXITSTATUS(st) == 0), "%s: publisher %s",
			  ways[w].what, tc_status_str(st));
		cr_log_info("%s: %u events, %ld sleeps, longest wait %.1f ms", ways[w].what, received, slept,
			    (double)longest / 1e6);
		cr_expect_eq(received, WAKE_EVENTS, "%s", ways[w].what);
		cr_expect_eq(lost, 0, "%s: %u waits outlasted 5 s (lost wake-ups), the longest %.1f s", ways[w].what, lost,
			     (double)longest / 1e9);
		cr_expect_eq(out_of_order, 0, "%s", ways[w].what);
		cr_expect_gt(slept, WAKE_EVENTS / 2, "%s: the consumer slept %ld times: the test did not exercise the wake-ups",
			     ways[w].what, slept);
		if (received < WAKE_EVENTS) {
			/* what the killed publisher left: the next run starts empty */
			const shmbus_event_t *ev;
			while (shmbus_poll(sub, &ev) == 1)
				shmbus_release(sub, ev);
			break;
		}
	}
	tc_shared_free(sh, sizeof *sh);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* ------------------------------------- rejoining with the filter one has */

#define REJOIN_EVENTS 200000u

static int rejoin_publisher(void *arg)
{
	(void)arg;
	return tc_child_publish_n(SHMBUS_NOTIFICATION, "ev.g", REJOIN_EVENTS, 30 * (int64_t)TC_SEC_NS);
}

static shmbus_filter_t *rejoin_filter(void)
{
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_pattern("^ev\\.g$", &f), 0);
	return f;
}

/* A member of a durable group consumes while another process publishes
 * and this one joins the group and leaves again, over and over, passing
 * the filter the group has. Each join replaced the filter, which takes the
 * subscription out of routing for a grace period: the events published
 * then were never queued and never counted (an independent stress test
 * lost hundreds in seconds; the README's own restart example does this on
 * every restart). Every event must arrive, once, in order. */
Test(multiproc, joining_a_group_with_its_own_filter_loses_nothing)
{
	shmbus_config_t cfg = mp_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_filter_t *f = rejoin_filter();
	shmbus_sub_opts_t o = {.subscriber_id = "m", .group = "grp", .durable = true, .filter = f};
	shmbus_sub_t *member;
	cr_assert_eq(shmbus_subscribe(bus, &o, &member), 0, "%s", shmbus_errmsg());
	pid_t pub = tc_fork(rejoin_publisher, NULL);
	uint32_t got = 0, wrong = 0, joins = 0;
	uint64_t deadline = tc_now_ns() + 40 * TC_SEC_NS;
	while (got < REJOIN_EVENTS && tc_now_ns() < deadline) {
		const shmbus_event_t *ev;
		int rc = shmbus_wait(member, 50 * (int64_t)TC_MS_NS, &ev);
		cr_assert_geq(rc, 0, "wait: %s", shmbus_errmsg());
		if (rc == 1) {
			wrong += tc_payload_u32(ev) != got;
			got++;
			cr_assert_eq(shmbus_release(member, ev), 0);
		}
		if (got % 500 == 0 && joins < 400 && rc == 1) { /* a second member joins and leaves */
			shmbus_sub_t *other;
			cr_assert_eq(shmbus_subscribe(bus, &o, &other), 0, "%s", shmbus_errmsg());
			shmbus_sub_close(other);
			joins++;
		}
	}
	int st;
	cr_assert_eq(tc_wait(pub, 10000, &st), 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "publisher: %s", tc_status_str(st));
	cr_log_info("%u joins while %u events went by", joins, REJOIN_EVENTS);
	cr_expect_eq(got, REJOIN_EVENTS, "the group got %u of %u events (%u joins)", got, REJOIN_EVENTS, joins);
	cr_expect_eq(wrong, 0, "%u events out of order", wrong);
	cr_expect_eq(shmbus_take_missed(member), 0);
	shmbus_filter_free(f);
	shmbus_sub_close(member);
	shmbus_close(bus);
}

/* ------------------------------------------------- closing after a fork */

static shmbus_bus_t *fork_bus;
static atomic_int fork_stop;

static void *fork_churn(void *arg)
{
	bool pub = arg != NULL;
	while (!atomic_load(&fork_stop)) {
		if (pub) {
			shmbus_pub_t *p;
			if (shmbus_pub_open(fork_bus, NULL, &p) == 0)
				shmbus_pub_close(p);
		} else {
			shmbus_sub_t *s;
			if (shmbus_subscribe(fork_bus, &(shmbus_sub_opts_t){.subscriber_id = "churn"}, &s) == 0)
				shmbus_sub_close(s);
		}
	}
	return NULL;
}

/* A child closing the handles it inherited (the fork rule: closing them
 * only frees memory) while parent threads were busy with the same bus at
 * the fork: it hung on a handle lock one of them held then, within a
 * hundred or two forks (found by an independent threading test). */
Test(multiproc, a_forked_child_closes_inherited_handles_whatever_the_parent_threads_held)
{
	shmbus_config_t cfg = mp_cfg();
	fork_bus = tc_create(&cfg);
	shmbus_sub_t *mine = tc_sub(fork_bus, NULL);
	shmbus_pub_t *mypub = tc_pub(fork_bus, NULL, 0);
	pthread_t t[2];
	atomic_store(&fork_stop, 0);
	cr_assert_eq(pthread_create(&t[0], NULL, fork_churn, NULL), 0);
	cr_assert_eq(pthread_create(&t[1], NULL, fork_churn, (void *)1), 0);
	int hung = 0, forks = 0;
	for (; forks < 400 && !hung; forks++) {
		pid_t pid = fork();
		cr_assert_geq(pid, 0);
		if (pid == 0) {
			alarm(5); /* a hang ends as SIGALRM */
			shmbus_sub_close(mine);
			shmbus_pub_close(mypub);
			shmbus_close(fork_bus);
			_exit(0);
		}
		int st;
		cr_assert_eq(waitpid(pid, &st, 0), pid);
		hung += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	atomic_store(&fork_stop, 1);
	pthread_join(t[0], NULL);
	pthread_join(t[1], NULL);
	cr_expect_eq(hung, 0, "a child hung closing inherited handles (after %d forks)", forks);
	shmbus_pub_close(mypub);
	shmbus_sub_close(mine);
	shmbus_close(fork_bus);
}
