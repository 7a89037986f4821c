/*
 * test_lease.c - claim leases (docs/ARCHITECTURE.md, "Claim leases"):
 * publishers that take turns claim positions ahead and use them without a
 * locked instruction; whoever must not wait for an unused one (a claimer a
 * lap later, the recorder) takes it away. What must hold: each publisher's
 * events keep its order and their positions increase, nothing is lost or
 * torn, an idle publisher's lease never stops the ring or the recorder,
 * and the inspector finds nothing wrong.
 *
 * Leases need membarrier(2); where the kernel or a seccomp filter refuses
 * it, publishers never lease, and the checks that leases happened at all
 * are skipped (the rest must hold either way).
 */
#include "common.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <linux/filter.h>
#include <linux/membarrier.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static char root[512];

static void lease_init(void)
{
	tc_init();
	snprintf(root, sizeof root, "%s", tc_log_root());
}

static void lease_fini(void)
{
	tc_remove_tree(root);
	tc_fini();
}

TestSuite(lease, .init = lease_init, .fini = lease_fini, .timeout = 120);

/* ------------------------------------------------------------ payloads */

#define PAYLOAD 32u

/* 32 bytes that say who published and which of its events this is, and
 * that a torn or mixed-up write would not reproduce. */
static void payload_fill(uint8_t *p, uint32_t pub, uint32_t i)
{
	memcpy(p, &pub, 4);
	memcpy(p + 4, &i, 4);
	uint64_t x = tc_mix64((uint64_t)pub << 32 | i);
	for (unsigned k = 8; k < PAYLOAD; k++, x = x >> 8 | x << 56)
		p[k] = (uint8_t)x;
}

static bool payload_check(const uint8_t *p, size_t len, uint32_t *pub, uint32_t *i)
{
	if (len != PAYLOAD)
		return false;
	memcpy(pub, p, 4);
	memcpy(i, p + 4, 4);
	uint8_t want[PAYLOAD];
	payload_fill(want, *pub, *i);
	return memcmp(p, want, PAYLOAD) == 0;
}

static int publish_as(shmbus_pub_t *pub, uint32_t who, uint32_t i, shmbus_uuid_t *id)
{
	uint8_t buf[PAYLOAD];
	payload_fill(buf, who, i);
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "turn", .payload = buf, .payload_len = PAYLOAD};
	return shmbus_publish(pub, &m, id);
}

/* What a subscriber saw, per publisher: the next index it expects, the
 * last sequence, and whether everything so far was in order and whole. */
#define WHO_MAX 4
struct seen {
	uint32_t next[WHO_MAX];
	uint64_t last_seq[WHO_MAX];
	uint64_t count[WHO_MAX];
	unsigned adjacent[WHO_MAX]; /* events right after the publisher's previous one */
	bool bad;
	char why[160];
};

static void seen_event(const shmbus_event_t *ev, void *arg)
{
	struct seen *s = arg;
	uint32_t who, i;
	size_t len;
	const uint8_t *p = shmbus_event_payload(ev, &len);
	if (!payload_check(p, len, &who, &i) || who >= WHO_MAX) {
		if (!s->bad)
			snprintf(s->why, sizeof s->why, "a torn payload at seq %llu",
				 (unsigned long long)shmbus_event_seq(ev));
		s->bad = true;
		return;
	}
	uint64_t seq = shmbus_event_seq(ev);
	if (i != s->next[who] || (s->count[who] && seq <= s->last_seq[who])) {
		if (!s->bad)
			snprintf(s->why, sizeof s->why, "publisher %u: event %u (seq %llu) after %u (seq %llu)", who, i,
				 (unsigned long long)seq, s->next[who] - 1, (unsigned long long)s->last_seq[who]);
		s->bad = true;
	}
	if (s->count[who] && seq == s->last_seq[who] + 1)
		s->adjacent[who]++;
	s->next[who] = i + 1;
	s->last_seq[who] = seq;
	s->count[who]++;
}

static void expect_clean_inspection(bool want_leases)
{
	shmbus_inspect_t *in = NULL;
	cr_assert_eq(shmbus_inspect_open(tc_bus, &in), 0, "%s", shmbus_errmsg());
	for (size_t i = 0; i < shmbus_inspect_problem_count(in); i++)
		cr_expect_fail("inspector: %s", shmbus_inspect_problem(in, i));
	shmbus_inspect_ring_t ring;
	cr_assert_eq(shmbus_inspect_ring(in, &ring), 0);
	cr_expect_eq(ring.claimed, 0, "%llu slots still CLAIMED", (unsigned long long)ring.claimed);
	if (want_leases)
		cr_expect_gt(ring.leased, 0, "no slot is leased after publishers took turns");
	shmbus_inspect_close(in);
}

/* A and B publish in turns, n events each, a subscriber draining as it
 * goes. */
static void take_turns(shmbus_pub_t *a, shmbus_pub_t *b, shmbus_sub_t *sub, uint32_t from, uint32_t n,
		       struct seen *s)
{
	for (uint32_t i = from; i < from + n; i++) {
		cr_assert_eq(publish_as(a, 0, i, NULL), 0, "A %u: %s", i, shmbus_errmsg());
		cr_assert_eq(publish_as(b, 1, i, NULL), 0, "B %u: %s", i, shmbus_errmsg());
		if (i % 8 == 7)
			cr_assert_geq(tc_drain(sub, seen_event, s), 0);
	}
	cr_assert_geq(tc_drain(sub, seen_event, s), 0);
}

/* A bus with one subscriber of everything and publishers A and B (B's
 * timeout given: -1 never waits), after n turns of each. */
struct turns {
	shmbus_bus_t *bus;
	shmbus_sub_t *sub;
	shmbus_pub_t *a, *b;
	struct seen seen;
};

static void turns_open(struct turns *t, const shmbus_config_t *cfg, int64_t b_timeout_ns, uint32_t n)
{
	memset(t, 0, sizeof *t);
	t->bus = tc_create(cfg);
	t->sub = tc_sub(t->bus, NULL);
	t->a = tc_pub(t->bus, "a", 0);
	t->b = tc_pub(t->bus, "b", b_timeout_ns);
	take_turns(t->a, t->b, t->sub, 0, n, &t->seen);
}

static void turns_close(struct turns *t)
{
	shmbus_pub_close(t->a);
	shmbus_pub_close(t->b);
	shmbus_sub_close(t->sub);
	shmbus_close(t->bus);
}

/* What the inspector behind shm-dump says now: slots leased, and how
 * many positions were taken from the leases of the publisher named
 * source. */
static uint64_t leased_now(void)
{
	shmbus_inspect_t *in = NULL;
	cr_assert_eq(shmbus_inspect_open(tc_bus, &in), 0, "%s", shmbus_errmsg());
	shmbus_inspect_ring_t ring;
	cr_assert_eq(shmbus_inspect_ring(in, &ring), 0);
	shmbus_inspect_close(in);
	return ring.leased;
}

static uint64_t lease_taken_from(const char *source)
{
	shmbus_inspect_t *in = NULL;
	cr_assert_eq(shmbus_inspect_open(tc_bus, &in), 0, "%s", shmbus_errmsg());
	uint64_t taken = 0;
	for (size_t i = 0; i < shmbus_inspect_pub_count(in); i++) {
		shmbus_inspect_pub_t p;
		if (shmbus_inspect_pub(in, i, &p) == 0 && strcmp(p.source, source) == 0)
			taken = p.lease_taken;
	}
	shmbus_inspect_close(in);
	return taken;
}

/* turns_open on the small bus, for a test of what leases do: skipped
 * where publishers cannot lease, and it asserts that they do. */
static void turns_open_leasing(struct turns *t)
{
	if (!tc_leases_available())
		cr_skip_test("membarrier is refused here: publishers do not lease");
	shmbus_config_t cfg = tc_small_cfg();
	turns_open(t, &cfg, 0, 20);
	cr_assert_gt(leased_now(), 0, "publishers taking turns hold no lease");
}

/* ---------------------------------------------------------------- tests */

Test(lease, publishers_taking_turns_lease_positions_and_keep_their_order)
{
	bool leases = tc_leases_available();
	shmbus_config_t cfg = tc_small_cfg();
	struct turns t;
	turns_open(&t, &cfg, 0, 200);
	struct seen *s = &t.seen;
	cr_expect(!s->bad, "%s", s->why);
	cr_expect_eq(s->count[0], 200);
	cr_expect_eq(s->count[1], 200);
	/* Without leases the turns interleave the positions one by one; with
	 * them each publisher's events mostly sit side by side. */
	if (leases)
		cr_expect_gt(s->adjacent[0] + s->adjacent[1], 300, "only %u of 398 events sit next to their predecessor",
			     s->adjacent[0] + s->adjacent[1]);
	else
		cr_log_warn("membarrier is refused here: publishers do not lease");
	expect_clean_inspection(leases);
	turns_close(&t);
}

Test(lease, a_claimer_a_lap_later_takes_an_idle_lease_away)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.slots = 64;
	cfg.max_payload = 1024;
	struct turns t;
	/* B never waits: a slot it had to wait for fails its publish */
	turns_open(&t, &cfg, -1, 20);
	struct seen *s = &t.seen;
	/* A goes quiet on a lease; B alone goes three times round the ring */
	shmbus_uuid_t id;
	for (uint32_t i = 20; i < 20 + 3 * 64; i++) {
		cr_assert_eq(publish_as(t.b, 1, i, &id), 0, "B %u: %s", i, shmbus_errmsg());
		if (i % 8 == 7)
			cr_assert_geq(tc_drain(t.sub, seen_event, s), 0);
	}
	uint64_t b_last = shmbus_uuid_seq(&id);
	if (tc_leases_available()) /* shm-dump shows what was taken from A */
		cr_expect_gt(lease_taken_from("a"), 0, "no position was taken from A's lease");
	/* A's lease was taken: it claims anew, after everything B wrote */
	for (uint32_t i = 20; i < 30; i++) {
		cr_assert_eq(publish_as(t.a, 0, i, &id), 0, "A %u: %s", i, shmbus_errmsg());
		if (i == 20)
			cr_expect_gt(shmbus_uuid_seq(&id), b_last, "A reused position %llu of its old lease",
				     (unsigned long long)shmbus_uuid_seq(&id));
	}
	cr_assert_geq(tc_drain(t.sub, seen_event, s), 0);
	cr_expect(!s->bad, "%s", s->why);
	cr_expect_eq(s->count[0], 30);
	cr_expect_eq(s->count[1], 20 + 3 * 64);
	expect_clean_inspection(false);
	turns_close(&t);
}

Test(lease, the_recorder_takes_an_idle_lease_away_instead_of_waiting)
{
	shmbus_config_t cfg = tc_small_cfg();
	struct turns t;
	turns_open(&t, &cfg, 0, 20);
	struct seen *s = &t.seen;
	/* A is quiet on its lease when the recorder starts */
	shmbus_record_opts_t ro = {.sync = SHMBUS_SYNC_NONE};
	shmbus_recorder_t *rec = NULL;
	cr_assert_eq(shmbus_recorder_open(t.bus, &ro, &rec), 0, "%s", shmbus_errmsg());
	shmbus_uuid_t id;
	for (uint32_t i = 20; i < 60; i++)
		cr_assert_eq(publish_as(t.b, 1, i, &id), 0, "B %u: %s", i, shmbus_errmsg());
	uint64_t until = shmbus_uuid_seq(&id);
	shmbus_recorder_stats_t st = {0};
	for (int k = 0; k < 400 && st.next_seq <= until; k++) {
		cr_assert_geq(shmbus_recorder_run(rec, 5 * TC_MS_NS), 0, "%s", shmbus_errmsg());
		shmbus_recorder_stats(rec, &st);
	}
	cr_expect_gt(st.next_seq, until, "the recorder stopped at %llu, before B's last event %llu",
		     (unsigned long long)st.next_seq, (unsigned long long)until);
	cr_expect_eq(st.recorded, 80, "recorded %llu of the 80 events", (unsigned long long)st.recorded);
	cr_expect_eq(st.missed, 0);
	/* and A, back, claims after everything */
	cr_assert_eq(publish_as(t.a, 0, 20, &id), 0, "%s", shmbus_errmsg());
	cr_expect_gt(shmbus_uuid_seq(&id), until, "A reused a position the recorder had passed");
	cr_assert_geq(tc_drain(t.sub, seen_event, s), 0);
	cr_expect(!s->bad, "%s", s->why);
	cr_expect_eq(s->count[0], 21);
	cr_expect_eq(s->count[1], 60);
	shmbus_recorder_close(rec);
	expect_clean_inspection(false);
	turns_close(&t);
}


/* A publisher whose lease ends unused gives its positions back at once,
 * when it closes and when it claims otherwise (a batch), instead of
 * leaving them to takers who pay a membarrier for each. */
Test(lease, a_publisher_gives_its_lease_back_when_it_closes_or_claims_otherwise)
{
	struct turns t;
	turns_open_leasing(&t);
	shmbus_pub_close(t.b);
	t.b = NULL;
	uint8_t buf[2][PAYLOAD];
	payload_fill(buf[0], 0, 20);
	payload_fill(buf[1], 0, 21);
	shmbus_msg_t m[2] = {
		{.type = SHMBUS_NOTIFICATION, .name = "turn", .payload = buf[0], .payload_len = PAYLOAD},
		{.type = SHMBUS_NOTIFICATION, .name = "turn", .payload = buf[1], .payload_len = PAYLOAD},
	};
	cr_assert_eq(shmbus_publish_batch(t.a, m, 2, NULL), 2, "%s", shmbus_errmsg());
	cr_expect_eq(leased_now(), 0, "positions still leased after one publisher closed and the other published a batch");
	cr_assert_geq(tc_drain(t.sub, seen_event, &t.seen), 0);
	cr_expect(!t.seen.bad, "%s", t.seen.why);
	cr_expect_eq(t.seen.count[0], 22);
	expect_clean_inspection(false);
	turns_close(&t);
}

/* A lease is used for a few milliseconds at most: a publisher that comes
 * back later claims anew, so event times stay in sequence order within
 * that (the log's time queries rely on it, within 100 ms). */
Test(lease, a_lease_older_than_a_few_milliseconds_is_given_up)
{
	struct turns t;
	turns_open_leasing(&t);
	tc_sleep_ms(50);
	shmbus_metrics_t m;
	cr_assert_eq(shmbus_get_metrics(t.bus, &m), 0);
	shmbus_uuid_t id;
	cr_assert_eq(publish_as(t.a, 0, 20, &id), 0, "%s", shmbus_errmsg());
	cr_expect_geq(shmbus_uuid_seq(&id), m.next_seq, "A used position %llu of a 50 ms old lease",
		      (unsigned long long)shmbus_uuid_seq(&id));
	cr_assert_geq(tc_drain(t.sub, seen_event, &t.seen), 0);
	cr_expect(!t.seen.bad, "%s", t.seen.why);
	expect_clean_inspection(false);
	turns_close(&t);
}

/* Several processes publishing in turns on a ring of 64 slots, held full
 * by one subscriber: leases are claimed, used and taken away all the
 * time, by lap claimers that wait for space. */
#define STRESS_PUBS 3u
#define STRESS_EVENTS 20000u

static int stress_publisher(void *arg)
{
	uint32_t who = (uint32_t)(uintptr_t)arg;
	shmbus_bus_t *bus = NULL;
	shmbus_pub_t *pub = NULL;
	int rc = tc_child_publisher(&(shmbus_pub_opts_t){.timeout_ns = 20 * (int64_t)TC_SEC_NS}, &bus, &pub);
	if (rc)
		return rc;
	for (uint32_t i = 0; i < STRESS_EVENTS; i++)
		if ((rc = publish_as(pub, who, i, NULL)) < 0)
			return CHILD_FAIL("publisher %u event %u: %d %s", who, i, rc, shmbus_errmsg());
	shmbus_pub_close(pub);
	shmbus_close(bus);
	return 0;
}

Test(lease, processes_taking_turns_on_a_full_small_ring_lose_and_tear_nothing)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.slots = 64;
	cfg.max_payload = 1024;
	cfg.block_timeout_ns = 20 * TC_SEC_NS;
	cfg.stall_timeout_ns = 20 * TC_SEC_NS;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	pid_t kids[STRESS_PUBS];
	for (uint32_t k = 0; k < STRESS_PUBS; k++)
		kids[k] = tc_fork(stress_publisher, (void *)(uintptr_t)k);
	struct seen s = {0};
	int got = tc_collect(sub, (int)(STRESS_PUBS * STRESS_EVENTS), 60000, seen_event, &s);
	cr_expect_eq(got, (int)(STRESS_PUBS * STRESS_EVENTS), "received %d events", got);
	cr_expect(!s.bad, "%s", s.why);
	for (uint32_t k = 0; k < STRESS_PUBS; k++) {
		int st = 0;
		cr_expect_eq(tc_wait(kids[k], 30000, &st), 0, "publisher %u hung", k);
		cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "publisher %u %s", k, tc_status_str(st));
		cr_expect_eq(s.count[k], STRESS_EVENTS, "publisher %u: %llu events", k, (unsigned long long)s.count[k]);
	}
	expect_clean_inspection(false);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* ---------------------------------------- a member without membarrier */

/* A forked child's exit status when this machine cannot filter syscalls:
 * the test is skipped, not failed. */
#define NO_SECCOMP 77

/* Make membarrier(2) fail with ENOSYS in this process, as a container's
 * seccomp profile may: 0 or -errno. */
static int refuse_membarrier(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_membarrier, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
		return -errno;
	return syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0) < 0 ? 0 : -EPERM;
}

/* 1 when the bus's publishers route with the full fence, 0 if not, -1
 * when the bus cannot be inspected. */
static int fence_full_now(void)
{
	shmbus_inspect_t *in = NULL;
	if (shmbus_inspect_open(tc_bus, &in) < 0)
		return -1;
	int full = shmbus_inspect_route_fence_full(in);
	shmbus_inspect_close(in);
	return full < 0 ? -1 : full;
}

#define REFUSER_EVENTS 100u

/*
 * A member whose membarrier is refused, before it attaches (arg NULL) or
 * after (arg not NULL): it subscribes, receives what it publishes to
 * itself, and removes its subscription (a grace period it cannot end
 * with membarrier) while it goes on publishing. Whichever comes first,
 * its attach or its grace period, must tell publishers to route with the
 * full fence before the grace period reads their routing words.
 */
static int refuser(void *arg)
{
	bool refuse_late = arg != NULL;
	int rc;
	if (!refuse_late && refuse_membarrier() < 0)
		return NO_SECCOMP;
	shmbus_bus_t *bus = NULL;
	if ((rc = shmbus_open(tc_bus, NULL, &bus)) < 0)
		return CHILD_FAIL("open %d", rc);
	shmbus_filter_t *f = NULL;
	const char *mine = "mine";
	shmbus_sub_t *sub = NULL;
	shmbus_pub_t *pub = NULL;
	if ((rc = shmbus_filter_names(&mine, 1, &f)) < 0 ||
	    (rc = shmbus_subscribe(bus, &(shmbus_sub_opts_t){.filter = f}, &sub)) < 0 ||
	    (rc = shmbus_pub_open(bus, &(shmbus_pub_opts_t){.timeout_ns = 5 * (int64_t)TC_SEC_NS}, &pub)) < 0)
		return CHILD_FAIL("filter, subscribe or pub_open %d (%s)", rc, shmbus_errmsg());
	shmbus_filter_free(f);
	/* the attach decides: at once for a process that cannot, not at
	 * all for one that can */
	if (fence_full_now() != !refuse_late)
		return CHILD_FAIL("after attaching, route_fence is %d", fence_full_now());
	if (refuse_late && refuse_membarrier() < 0)
		return NO_SECCOMP;
	for (uint32_t i = 0; i < REFUSER_EVENTS; i++)
		if ((rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "mine", 0, i)) < 0 ||
		    (rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "other", 0, i)) < 0)
			return CHILD_FAIL("publish %u: %d", i, rc);
	if ((rc = tc_collect(sub, REFUSER_EVENTS, 10000, NULL, NULL)) != (int)REFUSER_EVENTS)
		return CHILD_FAIL("received %d of its own %u", rc, REFUSER_EVENTS);
	if ((rc = shmbus_unsubscribe(sub)) < 0)
		return CHILD_FAIL("unsubscribe %d (%s)", rc, shmbus_errmsg());
	if (fence_full_now() != 1)
		return CHILD_FAIL("a grace period without membarrier left route_fence %d", fence_full_now());
	for (uint32_t i = 0; i < REFUSER_EVENTS; i++)
		if ((rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "mine", 0, i)) < 0)
			return CHILD_FAIL("publish after unsubscribing %u: %d", i, rc);
	shmbus_pub_close(pub);
	shmbus_close(bus);
	return 0;
}

static void member_without_membarrier(bool refuse_late)
{
	if (!tc_leases_available())
		cr_skip_test("membarrier is refused here already: every bus routes with the full fence");
	shmbus_bus_t *bus = tc_create(NULL);
	cr_expect_eq(fence_full_now(), 0, "a fresh bus routes with the light fence where membarrier works");
	shmbus_sub_t *all = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "parent", 5 * (int64_t)TC_SEC_NS);
	pid_t kid = tc_fork(refuser, refuse_late ? "late" : NULL);
	int st = 0;
	cr_assert_eq(tc_wait(kid, 30000, &st), 0, "the member without membarrier hung");
	if (WIFEXITED(st) && WEXITSTATUS(st) == NO_SECCOMP)
		cr_skip_test("no seccomp filter here to refuse membarrier with");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "it %s", tc_status_str(st));
	cr_expect_eq(fence_full_now(), 1, "the bus routes with the full fence for good");
	/* every event the child published, and ours after */
	for (uint32_t i = 0; i < REFUSER_EVENTS; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "late", 0, i), 0);
	int got = tc_collect(all, 4 * REFUSER_EVENTS, 10000, NULL, NULL);
	cr_expect_eq(got, (int)(4 * REFUSER_EVENTS), "received %d of %u", got, 4 * REFUSER_EVENTS);
	expect_clean_inspection(false);
	shmbus_pub_close(pub);
	shmbus_sub_close(all);
	shmbus_close(bus);
}

Test(lease, a_member_without_membarrier_makes_every_publisher_route_with_a_full_fence)
{
	member_without_membarrier(false);
}

Test(lease, a_grace_period_whose_membarrier_fails_turns_to_the_full_fence_first)
{
	member_without_membarrier(true);
}
