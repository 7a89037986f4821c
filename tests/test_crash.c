/*
 * test_crash.c - kill -9 of a publisher at every named step of the publish
 * protocol, and of a consumer at every step of taking, opening, releasing
 * and dropping events (the consumer cases at the end of the file), and the
 * recovery the crash-recovery contract promises (docs/ARCHITECTURE.md,
 * "Crash recovery").
 *
 * Linked against shmbus_crash, the library with its crash points compiled
 * in (shm/crash_point.h). Each scenario (single publishes, batches of one
 * shape, batches of mixed shapes, zero-copy reserve/commit) first runs
 * once to the end in a child that lists the points it passed and how
 * often. Then, for every point and for five of its hits (the first, the
 * last and three between), a child on a fresh bus runs the scenario with
 * SHMBUS_CRASH_AT set and dies there by SIGKILL. The parent holds four
 * subscriptions whose filters each take some of the events and not others
 * (a plain witness of everything but "ghost" events, which go to nobody; a
 * plain block one on a name; a durable one on a type; a group on priority
 * or a name pattern). After shmbus_reclaim it checks:
 *  1. the inspector behind shm-dump finds no problem in the segment, no
 *     slot still CLAIMED and no publisher entry left;
 *  2. every subscription received exactly the events it matches among a
 *     prefix of the child's sequence (the events committed before the
 *     kill), in order within each priority class, none twice, and the
 *     prefix covers every publish call that returned;
 *  3. the bus still works: a new publisher gets more than two laps of the
 *     ring through to the same subscriptions, which a leaked hold or a
 *     wedged claimed slot would stop (the stall timeout is out of reach,
 *     so no demotion hides one).
 * A failure names the scenario, the point and the hit.
 */
#include "common.h"
#include "crash_point.h"
#include "internal.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(crash, .init = tc_init, .fini = tc_fini, .timeout = 240);

#define RING_SLOTS 1024u
#define BIG_PAYLOAD 600u /* several slots of 256 bytes */
#define POST_EVENTS (2 * RING_SLOTS + RING_SLOTS / 4)
#define POST_BASE 100000u /* payload indexes of the events after the crash */
#define RECORD_MAX 4096u
#define POINTS_MAX 64
#define FAILED_CASES_MAX 5 /* then the rest of a scenario is skipped */

/* -------------------------------------------------------------- events */

struct ev_spec {
	const char *name;
	shmbus_type_t type;
	shmbus_priority_t prio;
	size_t payload_len;
};

/* The k-th kind of event. A ghost is a normal notification that no
 * filter below takes: it goes to nobody, and its slot is free at commit. */
static struct ev_spec shape(unsigned k)
{
	static const char *const names[] = {"alpha", "beta", "ghost"};
	struct ev_spec s = {
		.name = names[k % 3],
		.type = k % 4 == 1 ? SHMBUS_COMMAND : SHMBUS_NOTIFICATION,
		.prio = k % 5 == 2 ? SHMBUS_PRIORITY_HIGH : SHMBUS_PRIORITY_NORMAL,
		.payload_len = k % 7 == 3 ? BIG_PAYLOAD : 4,
	};
	if (k % 3 == 2) {
		s.type = SHMBUS_NOTIFICATION;
		s.prio = SHMBUS_PRIORITY_NORMAL;
	}
	return s;
}

/* Pairs: the second of each is written from the publisher's cache of its
 * last single event. */
static struct ev_spec spec_single(unsigned i) { return shape(i / 2); }
static struct ev_spec spec_zero_copy(unsigned i) { return shape(i); }

/* One shape per batch of 150 (alpha, beta commands, ghosts), every tenth
 * event of several slots: event_same_shape only ignores the payload. */
static struct ev_spec spec_same(unsigned i)
{
	struct ev_spec s = shape(i / 150);
	s.payload_len = i % 10 == 9 ? BIG_PAYLOAD : 4;
	return s;
}

/* Runs of three of a shape, high priority among them. */
static struct ev_spec spec_mixed(unsigned i) { return shape(i / 3); }

/* Single-slot events in pairs, published in turns by two publishers:
 * claim leases (slots.c) form, and are used. */
static struct ev_spec spec_turns(unsigned i)
{
	struct ev_spec s = shape(i / 2);
	s.payload_len = 4;
	return s;
}

static struct ev_spec spec_post(unsigned j) { return shape(j); }

static unsigned ev_class(const struct ev_spec *s) { return s->prio >= SHMBUS_PRIORITY_HIGH; }

/* ------------------------------------------------------------ scenarios */

enum call_kind { CALL_SINGLE, CALL_BATCH, CALL_ZERO_COPY, CALL_SINGLE_TURNS };

struct scenario {
	const char *name;
	enum call_kind call;
	unsigned calls, per_call;
	struct ev_spec (*spec)(unsigned i);
	/* points the scenario must pass: a point that went missing from the
	 * code would otherwise just never be tested */
	const char *const *must_pass;
	/* the victim pushes single descriptors in three steps (mark,
	 * descriptor, FULL) even where one 16-byte CAS would do, so that the
	 * survivors' finishing of a dead single push is tried on every CPU */
	bool three_step_push;
};

static const char *const single_points[] = {
	"routing.begun", "claim.intent", "claim.cas", "claim.head_marked", "claim.marked", "one.written",
	"push.marked", "push.desc", "push.full", "route.sub_pushed", "one.routed", "commit.holders",
	"commit.committed", "commit.byte", "end.before_fence", "end.woken", NULL,
};
static const char *const batch_points[] = {
	"routing.begun", "claim.intent", "claim.cas", "claim.head_marked", "claim.marked", "batch.written",
	"push_many.marked", "push_many.rest", "push_many.full", "route.sub_run_pushed", "batch.routed",
	"commit.holders", "commit.committed", "commit.byte", "end.before_fence", "end.woken", NULL,
};
static const char *const zero_copy_points[] = {
	"claim.intent", "claim.cas", "claim.head_marked", "claim.marked", "reserve.done", "routing.begun",
	"push.marked", "push.desc", "push.full", "route.sub_pushed", "zc.routed", "commit.holders",
	"commit.committed", "commit.byte", "end.before_fence", "end.woken", NULL,
};

static const char *const turns_points[] = {
	"routing.begun", "claim.intent", "claim.cas", "claim.head_marked", "claim.marked", "lease.using",
	"lease.taken", "one.written", "push.marked", "push.desc", "push.full", "route.sub_pushed", "one.routed",
	"commit.holders", "commit.committed", "commit.byte", "end.before_fence", "end.woken", NULL,
};

static const struct scenario single_sc = {"single", CALL_SINGLE, 18, 1, spec_single, single_points, false};
static const struct scenario turns_sc = {"single-turns", CALL_SINGLE_TURNS, 24, 1, spec_turns, turns_points, false};
static const struct scenario single_steps_sc = {"single-three-step-push", CALL_SINGLE, 18, 1, spec_single,
						single_points, true};
/* 150 events: three windows of publish_many (64, 64, 22) */
static const struct scenario same_sc = {"batch-same", CALL_BATCH, 3, 150, spec_same, batch_points, false};
static const struct scenario mixed_sc = {"batch-mixed", CALL_BATCH, 2, 150, spec_mixed, batch_points, false};
static const struct scenario zero_copy_sc = {"zero-copy", CALL_ZERO_COPY, 12, 1, spec_zero_copy, zero_copy_points, false};

/* The crash points a dry run passed, with their hit counts, as its child
 * reports them (record_points) in memory that survives it. */
struct point_list {
	size_t n;
	char ids[POINTS_MAX][48];
	uint64_t hits[POINTS_MAX];
};

/* What the child tells the parent, in memory that survives its death. */
struct progress {
	uint32_t started;   /* events of the calls begun: nothing past may be visible */
	uint32_t completed; /* events of the calls that returned: all must be */
	struct point_list points; /* the dry run's */
};

struct victim {
	const struct scenario *sc;
	const char *crash_at; /* NULL: the dry run */
	struct progress *prog;
};

static void fill_msg(shmbus_msg_t *m, uint8_t *buf, struct ev_spec s, uint32_t index)
{
	memset(buf, 0xA5, s.payload_len);
	memcpy(buf, &index, sizeof index);
	*m = (shmbus_msg_t){.type = s.type, .name = s.name, .priority = s.prio, .payload = buf, .payload_len = s.payload_len};
}

/* A child's start: the crash point it is to die at (none: a dry run) for
 * the library it calls, and its own handle on the bus. 0 or a child exit
 * status. */
static int victim_open(const char *crash_at, shmbus_bus_t **bus)
{
	if (crash_at)
		setenv("SHMBUS_CRASH_AT", crash_at, 1);
	int rc = shmbus_open(tc_bus, NULL, bus);
	return rc < 0 ? CHILD_FAIL("open %d", rc) : 0;
}

/* A dry run's end: the points this process passed, for the parent to
 * kill the next children at. 0 or a child exit status. */
static int record_points(struct point_list *pl)
{
	const char *ids[POINTS_MAX];
	size_t n = crash_point_list(ids, pl->hits, POINTS_MAX);
	if (n > POINTS_MAX)
		return CHILD_FAIL("%zu crash points, more than %d", n, POINTS_MAX);
	for (size_t i = 0; i < n; i++)
		snprintf(pl->ids[i], sizeof pl->ids[i], "%s", ids[i]);
	pl->n = n;
	return 0;
}

/* The child: run the scenario, telling the parent before and after each
 * publish call how far it got. */
static int run_victim(void *arg)
{
	struct victim *v = arg;
	shmbus_bus_t *bus = NULL;
	int rc = victim_open(v->crash_at, &bus);
	if (rc)
		return rc;
	shmbus_pub_t *pub = NULL, *other = NULL;
	shmbus_pub_opts_t po = {.timeout_ns = 5 * (int64_t)TC_SEC_NS};
	if ((rc = shmbus_pub_open(bus, &po, &pub)) < 0)
		return CHILD_FAIL("pub_open %d", rc);
	const struct scenario *sc = v->sc;
#if AT_HAVE_CAS_PAIR
	if (sc->three_step_push)
		shm_cpu_has_cas_pair = 0; /* this child only: see queue_push_one_cas */
#endif
	if (sc->call == CALL_SINGLE_TURNS && (rc = shmbus_pub_open(bus, &po, &other)) < 0)
		return CHILD_FAIL("pub_open %d", rc);
	shmbus_msg_t *msgs = calloc(sc->per_call, sizeof *msgs);
	uint8_t *bufs = malloc((size_t)sc->per_call * BIG_PAYLOAD);
	if (!msgs || !bufs)
		return CHILD_FAIL("out of memory");
	for (unsigned c = 0; c < sc->calls; c++) {
		uint32_t first = c * sc->per_call, end = first + sc->per_call;
		for (unsigned j = 0; j < sc->per_call; j++)
			fill_msg(&msgs[j], bufs + (size_t)j * BIG_PAYLOAD, sc->spec(first + j), first + j);
		__atomic_store_n(&v->prog->started, end, __ATOMIC_SEQ_CST);
		switch (sc->call) {
		case CALL_SINGLE:
			rc = shmbus_publish(pub, &msgs[0], NULL);
			break;
		case CALL_SINGLE_TURNS:
			rc = shmbus_publish(c % 2 ? other : pub, &msgs[0], NULL);
			break;
		case CALL_BATCH:
			rc = shmbus_publish_batch(pub, msgs, sc->per_call, NULL);
			break;
		case CALL_ZERO_COPY: {
			shmbus_claim_t claim;
			if ((rc = shmbus_reserve(pub, &msgs[0], msgs[0].payload_len, &claim)) == 0) {
				memcpy(claim.payload, msgs[0].payload, msgs[0].payload_len);
				rc = shmbus_commit(pub, &claim, NULL);
			}
			break;
		}
		}
		if (rc < 0)
			return CHILD_FAIL("%s call %u: %d", sc->name, c, rc);
		__atomic_store_n(&v->prog->completed, end, __ATOMIC_SEQ_CST);
	}
	if (!v->crash_at && (rc = record_points(&v->prog->points)))
		return rc;
	free(msgs);
	free(bufs);
	shmbus_pub_close(other);
	shmbus_pub_close(pub);
	shmbus_close(bus);
	return 0;
}

/* -------------------------------------------------------- the survivors */

struct sink {
	const char *what;
	shmbus_sub_t *sub;
	bool (*takes)(const struct ev_spec *s);
	uint32_t got[2][RECORD_MAX]; /* payload indexes per priority class, as delivered */
	unsigned n[2];
};

static bool takes_witness(const struct ev_spec *s) { return strcmp(s->name, "ghost") != 0; }
static bool takes_name(const struct ev_spec *s) { return strcmp(s->name, "alpha") == 0; }
static bool takes_type(const struct ev_spec *s) { return s->type == SHMBUS_COMMAND; }
static bool takes_prio_or_pattern(const struct ev_spec *s)
{
	return s->prio >= SHMBUS_PRIORITY_HIGH || strncmp(s->name, "be", 2) == 0;
}

enum { WITNESS, PLAIN, DURABLE, GROUP, SINKS };

/* One scenario's bus, subscriptions and the case under way. */
struct rig {
	const struct scenario *sc;
	char label[96]; /* "scenario point:hit" */
	bool failed;
	shmbus_bus_t *bus;
	struct sink sinks[SINKS];
};

__attribute__((format(printf, 2, 3))) static void case_fail(struct rig *r, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	cr_expect(false, "[%s] %s", r->label, msg);
	r->failed = true;
}

static shmbus_config_t crash_cfg(void)
{
	shmbus_config_t c = tc_small_cfg();
	c.slots = RING_SLOTS; /* a batch of 150, big events included, fits in half */
	c.stall_timeout_ns = 120 * TC_SEC_NS; /* only reclaim may free what the dead publisher left */
	return c;
}

static shmbus_filter_t *names_filter(const char *const *names, size_t n)
{
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_names(names, n, &f), 0);
	return f;
}

static void subscribe_sinks(struct rig *r)
{
	static const char *const witness_names[] = {"alpha", "beta"}, *const plain_names[] = {"alpha"};
	shmbus_filter_t *types = NULL, *prio = NULL, *pattern = NULL, *any = NULL;
	cr_assert_eq(shmbus_filter_types(SHMBUS_TYPE_BIT(SHMBUS_COMMAND), &types), 0);
	cr_assert_eq(shmbus_filter_min_priority(SHMBUS_PRIORITY_HIGH, &prio), 0);
	cr_assert_eq(shmbus_filter_pattern("^be", &pattern), 0);
	cr_assert_eq(shmbus_filter_any((shmbus_filter_t *[]){prio, pattern}, 2, &any), 0);
	const struct {
		const char *what;
		shmbus_filter_t *filter;
		shmbus_sub_opts_t opts;
		bool (*takes)(const struct ev_spec *s);
	} def[SINKS] = {
		[WITNESS] = {"witness", names_filter(witness_names, 2), {0}, takes_witness},
		[PLAIN] = {"plain", names_filter(plain_names, 1), {.policy = SHMBUS_POLICY_BLOCK}, takes_name},
		[DURABLE] = {"durable", types, {.subscriber_id = "crash-durable", .durable = true}, takes_type},
		[GROUP] = {"group", any, {.group = "crash-group"}, takes_prio_or_pattern},
	};
	for (unsigned k = 0; k < SINKS; k++) {
		struct sink *sk = &r->sinks[k];
		shmbus_sub_opts_t o = def[k].opts;
		o.filter = def[k].filter;
		int rc = shmbus_subscribe(r->bus, &o, &sk->sub);
		shmbus_filter_free(def[k].filter);
		cr_assert_eq(rc, 0, "[%s] subscribe %s: %d (%s)", r->label, def[k].what, rc, shmbus_errmsg());
		sk->what = def[k].what;
		sk->takes = def[k].takes;
		sk->n[0] = sk->n[1] = 0;
	}
}

/* The event of payload index i: one of the scenario's, or one published
 * after the crash. */
static bool spec_of(const struct rig *r, uint32_t i, struct ev_spec *out)
{
	if (i < r->sc->calls * r->sc->per_call)
		*out = r->sc->spec(i);
	else if (i >= POST_BASE && i - POST_BASE < POST_EVENTS)
		*out = spec_post(i - POST_BASE);
	else
		return false;
	return true;
}

/* Take everything queued for sk, recording each event's index in its
 * class; an event that is none of ours, or not the one its index names,
 * fails the case. */
static void sink_drain(struct rig *r, struct sink *sk)
{
	for (;;) {
		const shmbus_event_t *ev = NULL;
		int rc = shmbus_poll(sk->sub, &ev);
		cr_assert_geq(rc, 0, "[%s] poll %s: %d (%s)", r->label, sk->what, rc, shmbus_errmsg());
		if (rc == 0)
			return;
		size_t len = 0;
		const void *payload = shmbus_event_payload(ev, &len);
		uint32_t i = UINT32_MAX;
		if (payload && len >= sizeof i)
			memcpy(&i, payload, sizeof i);
		struct ev_spec want;
		if (!spec_of(r, i, &want) || strcmp(want.name, shmbus_event_name(ev)) != 0 ||
		    want.type != shmbus_event_type(ev) || want.payload_len != len)
			case_fail(r, "%s got an event that is not ours: index %u, \"%s\", %zu bytes", sk->what, i,
				  shmbus_event_name(ev), len);
		else if (!sk->takes(&want))
			case_fail(r, "%s got event %u, which its filter does not take", sk->what, i);
		unsigned cls = shmbus_event_priority(ev) >= SHMBUS_PRIORITY_HIGH;
		if (sk->n[cls] < RECORD_MAX)
			sk->got[cls][sk->n[cls]++] = i;
		cr_assert_eq(shmbus_release(sk->sub, ev), 0, "[%s] release %s: %s", r->label, sk->what,
			     shmbus_errmsg());
	}
}

static void drain_all(struct rig *r)
{
	for (unsigned k = 0; k < SINKS; k++)
		sink_drain(r, &r->sinks[k]);
}

static void forget_all(struct rig *r)
{
	for (unsigned k = 0; k < SINKS; k++)
		r->sinks[k].n[0] = r->sinks[k].n[1] = 0;
}

/* Whether sk received exactly the events it takes among the count events
 * of spec from payload index base, in order within each class. */
static bool sink_check(struct rig *r, const struct sink *sk, uint32_t base, unsigned count,
		       struct ev_spec (*spec)(unsigned))
{
	for (unsigned cls = 0; cls < 2; cls++) {
		unsigned seen = 0;
		for (unsigned i = 0; i < count; i++) {
			struct ev_spec s = spec(i);
			if (!sk->takes(&s) || ev_class(&s) != cls)
				continue;
			if (seen == sk->n[cls]) {
				case_fail(r, "%s lost event %u (class %u; it got %u of them)", sk->what, base + i, cls,
					  seen);
				return false;
			}
			if (sk->got[cls][seen] != base + i) {
				case_fail(r, "%s got event %u where %u was due (class %u, delivery %u)", sk->what,
					  sk->got[cls][seen], base + i, cls, seen);
				return false;
			}
			seen++;
		}
		if (seen < sk->n[cls]) {
			case_fail(r, "%s got event %u, past the %u it should have had (class %u)", sk->what,
				  sk->got[cls][seen], seen, cls);
			return false;
		}
	}
	return true;
}

/* Check 2: the witness tells how many of the child's events were
 * committed (it takes all but ghosts, which nobody sees); every
 * subscription must have exactly its share of that prefix, which must
 * cover the calls that returned and nothing past the calls begun. */
static void check_prefix(struct rig *r, const struct progress *prog)
{
	const struct sink *w = &r->sinks[WITNESS];
	uint32_t committed = 0;
	for (unsigned cls = 0; cls < 2; cls++)
		for (unsigned e = 0; e < w->n[cls]; e++)
			if (w->got[cls][e] < POST_BASE && w->got[cls][e] + 1 > committed)
				committed = w->got[cls][e] + 1;
	if (committed > prog->started)
		case_fail(r, "event %u was delivered, but only %u were ever published", committed - 1, prog->started);
	for (uint32_t i = committed; i < prog->completed; i++) {
		struct ev_spec s = r->sc->spec(i);
		if (w->takes(&s)) {
			case_fail(r, "the call publishing event %u returned, but the witness got only %u events", i,
				  committed);
			break;
		}
	}
	for (unsigned k = 0; k < SINKS; k++)
		sink_check(r, &r->sinks[k], 0, committed, r->sc->spec);
}

/* Check 1, and what the dead publisher must not have left behind: a slot
 * still CLAIMED, its publisher entry. Nobody publishes while it runs. */
static void check_inspect(struct rig *r, const char *when)
{
	shmbus_inspect_t *in = NULL;
	int rc = shmbus_inspect_open(tc_bus, &in);
	if (rc < 0) {
		case_fail(r, "%s: shmbus_inspect_open: %d", when, rc);
		return;
	}
	size_t n = shmbus_inspect_problem_count(in);
	for (size_t i = 0; i < n; i++)
		case_fail(r, "%s: inspector: %s", when, shmbus_inspect_problem(in, i));
	shmbus_inspect_ring_t ring;
	if ((rc = shmbus_inspect_ring(in, &ring)) < 0)
		case_fail(r, "%s: shmbus_inspect_ring: %d", when, rc);
	else if (ring.claimed)
		case_fail(r, "%s: %llu slots are still CLAIMED", when, (unsigned long long)ring.claimed);
	if ((n = shmbus_inspect_pub_count(in)) != 0)
		case_fail(r, "%s: %zu publisher entries are still in use", when, n);
	shmbus_inspect_close(in);
}

/* A victim's end, as its case expects: killed at its crash point, or (a
 * dry run, crash_at NULL) exited cleanly; anything else fails the case. */
static void check_victim_end(struct rig *r, const char *who, pid_t child, const char *crash_at)
{
	int st = 0;
	if (tc_wait(child, 20000, &st) < 0)
		case_fail(r, "the %s hung", who);
	else if (crash_at && !(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
		case_fail(r, "the %s %s: the crash point was not reached", who, tc_status_str(st));
	else if (!crash_at && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
		case_fail(r, "the %s %s", who, tc_status_str(st));
}

/* Reclaim, which must find the victim dead (none after a dry run), then
 * check 1. */
static void reclaim_and_inspect(struct rig *r, const char *crash_at)
{
	int n = shmbus_reclaim(r->bus);
	if (n != (crash_at ? 1 : 0))
		case_fail(r, "shmbus_reclaim found %d dead members", n);
	check_inspect(r, "after reclaim");
}

/* Check 3: more than two laps of the ring through the same subscriptions.
 * A slot that stayed held or claimed would stop the publisher (-ETIMEDOUT)
 * within the lap after it. */
static void check_two_laps(struct rig *r)
{
	shmbus_pub_t *pub = tc_pub(r->bus, "after", 2 * (int64_t)TC_SEC_NS);
	forget_all(r);
	uint8_t buf[BIG_PAYLOAD];
	unsigned j = 0;
	for (; j < POST_EVENTS; j++) {
		shmbus_msg_t m;
		fill_msg(&m, buf, spec_post(j), POST_BASE + j);
		int rc = shmbus_publish(pub, &m, NULL);
		if (rc < 0) {
			case_fail(r, "publish %u of %u after the crash: %d (%s)", j, POST_EVENTS, rc, shmbus_errmsg());
			break;
		}
		if (j % 16 == 15)
			drain_all(r);
	}
	drain_all(r);
	for (unsigned k = 0; k < SINKS; k++)
		sink_check(r, &r->sinks[k], POST_BASE, j, spec_post);
	shmbus_pub_close(pub);
}

/* One case on a fresh bus: the scenario run to the end (crash_at NULL) or
 * killed at crash_at, then the three checks. */
static void run_case(struct rig *r, const char *crash_at, struct progress *prog)
{
	snprintf(r->label, sizeof r->label, "%s %s", r->sc->name, crash_at ? crash_at : "dry run");
	r->failed = false;
	shmbus_unlink(tc_bus);
	shmbus_config_t cfg = crash_cfg();
	r->bus = tc_create(&cfg);
	subscribe_sinks(r);
	memset(prog, 0, sizeof *prog);
	struct victim v = {.sc = r->sc, .crash_at = crash_at, .prog = prog};
	check_victim_end(r, "publisher", tc_fork(run_victim, &v), crash_at);
	if (!r->failed) {
		reclaim_and_inspect(r, crash_at);
		drain_all(r);
		check_prefix(r, prog);
		check_two_laps(r);
		check_inspect(r, "after two laps");
	}
	for (unsigned k = 0; k < SINKS; k++)
		shmbus_sub_close(r->sinks[k].sub);
	shmbus_close(r->bus);
	shmbus_unlink(tc_bus);
}

/* Where id is in pl, or pl->n if the dry run never passed it. */
static size_t point_find(const struct point_list *pl, const char *id)
{
	size_t i = 0;
	while (i < pl->n && strcmp(pl->ids[i], id) != 0)
		i++;
	return i;
}

/* One crash case of a test: run it with the child killed at crash_at
 * ("id:hit"); returns whether it failed. */
typedef bool (*crash_case_fn)(void *ctx, const char *crash_at);

/*
 * After a dry run that listed pl (copied: the cases reuse the shared
 * memory it came in), and that must have passed every id in must_pass:
 * every point at five of its hits (the first, the last, and three
 * between), one case each, stopping after FAILED_CASES_MAX failed ones.
 */
/* Whether crash point id is on the way of a scenario whose single pushes
 * are one pair CAS each (one_cas, see queue_push_one_cas), or not: that
 * push never passes the three-step push's middle points. */
static bool point_on_the_way(const char *id, bool one_cas)
{
	return !one_cas || (strcmp(id, "push.marked") != 0 && strcmp(id, "push.desc") != 0);
}

/* A run_spread of a scenario's victim whose single pushes are one CAS. */
static bool one_cas_push;

static void run_spread(struct point_list pl, const char *const *must_pass, const char *who, crash_case_fn run,
		       void *ctx)
{
	for (const char *const *want = must_pass; *want; want++)
		if (point_on_the_way(*want, one_cas_push))
			cr_expect_lt(point_find(&pl, *want), pl.n, "%s never passes crash point %s", who, *want);
	uint64_t start = tc_now_ns();
	unsigned cases = 0, failed = 0;
	for (size_t p = 0; p < pl.n && failed < FAILED_CASES_MAX; p++) {
		uint64_t n = pl.hits[p];
		uint64_t at[] = {1, (n + 3) / 4, (n + 1) / 2, (3 * n + 3) / 4, n};
		for (unsigned h = 0; h < sizeof at / sizeof at[0] && failed < FAILED_CASES_MAX; h++) {
			if (h > 0 && at[h] <= at[h - 1])
				continue;
			char crash_at[64];
			snprintf(crash_at, sizeof crash_at, "%s:%llu", pl.ids[p], (unsigned long long)at[h]);
			failed += run(ctx, crash_at);
			cases++;
		}
	}
	cr_expect_lt(failed, FAILED_CASES_MAX, "%s: stopped after %u failed cases", who, failed);
	fprintf(stderr, "crash/%s: %zu points, %u cases (%u failed) in %.1f s\n", who, pl.n, cases, failed,
		(double)(tc_now_ns() - start) / 1e9);
}

struct scenario_ctx {
	struct rig *r;
	struct progress *prog;
};

static bool scenario_case(void *ctx, const char *crash_at)
{
	struct scenario_ctx *x = ctx;
	run_case(x->r, crash_at, x->prog);
	return x->r->failed;
}

/* The dry run, then every point the scenario passes at five of its hits. */
static void run_scenario(const struct scenario *sc)
{
	struct rig *r = calloc(1, sizeof *r);
	cr_assert_not_null(r);
	r->sc = sc;
	struct progress *prog = tc_shared_alloc(sizeof *prog);
	run_case(r, NULL, prog);
	cr_assert(!r->failed, "the dry run of %s failed", sc->name);
	struct scenario_ctx x = {r, prog};
	one_cas_push = queue_push_one_cas() && !sc->three_step_push;
	run_spread(prog->points, sc->must_pass, sc->name, scenario_case, &x);
	tc_shared_free(prog, sizeof *prog);
	free(r);
}

Test(crash, single_publish) { run_scenario(&single_sc); }
Test(crash, batch_of_one_shape) { run_scenario(&same_sc); }
Test(crash, batch_of_mixed_shapes) { run_scenario(&mixed_sc); }
Test(crash, zero_copy_reserve_commit) { run_scenario(&zero_copy_sc); }
Test(crash, single_publish_in_three_step_pushes) { run_scenario(&single_steps_sc); }

Test(crash, single_publishes_in_turns_on_claim_leases)
{
	if (!tc_leases_available())
		cr_skip_test("membarrier is refused here: publishers do not lease");
	run_scenario(&turns_sc);
}

/* ------------------------------------------------------------ consumers */

/*
 * The consume side: a child consumes from three subscriptions, its own
 * plain one, a durable one and a group it shares with the parent (which
 * takes nothing until the child is dead), and is killed at each crash
 * point of taking, opening, releasing and dropping (lib/consume.c,
 * queue_take). The parent publishes every event before the child takes
 * any, so a run's hits are the same every time and each asked hit is
 * reached. After shmbus_reclaim it checks:
 *  1. the inspector finds no problem (as above);
 *  2. the child's plain subscription is gone; on the durable one (through
 *     a consumer attached after the death) and on the group (through the
 *     parent's member) every event the child had not finished releasing
 *     comes exactly once, flagged redelivered if the child had it in
 *     hand, and no event whose release returned comes again (its hold
 *     was released or marked RELEASING: reclaim only clears the bit);
 *  3. more than two laps of the ring go through to the parent's plain,
 *     durable and group subscriptions, which a leaked hold or a taken,
 *     never released queue cell would stop.
 */

#define CONS_EVENTS 120u
#define CONS_ROUNDS_MAX 1000u /* far more than 120 events need */

enum { C_PLAIN, C_DURABLE, C_GROUP, C_SUBS };
static const char *const csub_what[C_SUBS] = {"plain", "durable", "group"};
static const shmbus_sub_opts_t csub_opts[C_SUBS] = {
	[C_PLAIN] = {.subscriber_id = "ccrash-plain"},
	[C_DURABLE] = {.subscriber_id = "ccrash-durable", .durable = true},
	[C_GROUP] = {.subscriber_id = "ccrash-group", .group = "ccrash-group"},
};

/* How far the child got with each event of each subscription. */
enum { CS_NONE, CS_HANDED, CS_RELEASING, CS_RELEASED };

struct cprogress {
	uint32_t ready;	  /* the child has subscribed */
	uint32_t go;	  /* every event is published */
	uint32_t strange; /* events the child got twice or that were not ours */
	uint8_t state[C_SUBS][CONS_EVENTS];
	struct point_list points; /* the dry run's */
};

struct cvictim {
	const char *crash_at;
	struct cprogress *prog;
};

static uint32_t event_index(const shmbus_event_t *ev)
{
	size_t len = 0;
	const void *payload = shmbus_event_payload(ev, &len);
	uint32_t i = UINT32_MAX;
	if (payload && len >= sizeof i)
		memcpy(&i, payload, sizeof i);
	return i;
}

/* Where a child notes how far it got with each event of one
 * subscription (a CS_* per payload index), and counts what it should not
 * have been handed. */
struct ctrack {
	uint8_t *state;
	uint32_t nevents;
	uint32_t *strange; /* events got twice or not of ours */
};

static void cmark(const struct ctrack *t, const shmbus_event_t *ev, uint8_t from, uint8_t to)
{
	uint32_t i = event_index(ev);
	if (i >= t->nevents || t->state[i] != from)
		__atomic_fetch_add(t->strange, 1, __ATOMIC_SEQ_CST);
	else
		__atomic_store_n(&t->state[i], to, __ATOMIC_SEQ_CST);
}

/* One turn on a subscription in the given mode: take a few events (one
 * poll, a batch of 5 or 9, or three polls) and give them back (one by
 * one, or in one release_batch). With racing, someone else may take the
 * child's entries meanwhile: an event whose release reports it revoked
 * (-ESTALE) stays CS_RELEASING, and a removed subscription (-ESHUTDOWN)
 * ends the turn with that code. Returns how many events were taken, or
 * the child's failure code as a negative number. */
static int cturn(const struct ctrack *t, shmbus_sub_t *sub, const char *what, unsigned mode, bool racing)
{
	const shmbus_event_t *evs[9];
	int n = 0, rc = 0;
	switch (mode) {
	case 0:
		rc = n = shmbus_poll(sub, &evs[0]);
		break;
	case 1:
		rc = n = shmbus_poll_batch(sub, evs, 5);
		break;
	case 2:
		rc = n = shmbus_poll_batch(sub, evs, 9);
		break;
	default:
		while (n < 3 && (rc = shmbus_poll(sub, &evs[n])) == 1)
			n++;
		break;
	}
	if (racing && rc == -ESHUTDOWN && n <= 0)
		return -ESHUTDOWN;
	if (rc < 0 && !(racing && rc == -ESHUTDOWN))
		return -CHILD_FAIL("%s: poll (mode %u): %d", what, mode, rc);
	for (int j = 0; j < n; j++)
		cmark(t, evs[j], CS_NONE, CS_HANDED);
	if (mode % 2 == 0) {
		for (int j = 0; j < n; j++) {
			cmark(t, evs[j], CS_HANDED, CS_RELEASING);
			rc = shmbus_release(sub, evs[j]);
			if (rc < 0 && !(racing && rc == -ESTALE))
				return -CHILD_FAIL("%s: release: %d", what, rc);
			if (rc == 0)
				cmark(t, evs[j], CS_RELEASING, CS_RELEASED);
		}
	} else if (n > 0) {
		for (int j = 0; j < n; j++)
			cmark(t, evs[j], CS_HANDED, CS_RELEASING);
		if ((rc = shmbus_release_batch(sub, evs, n)) < 0 && !(racing && rc == -ESTALE))
			return -CHILD_FAIL("%s: release_batch: %d", what, rc);
		for (int j = 0; j < n && rc == 0; j++)
			cmark(t, evs[j], CS_RELEASING, CS_RELEASED);
	}
	return n;
}

/* Wait (10 s at most) until the other process raised *flag to at_least. */
static bool wait_flag(const uint32_t *flag, uint32_t at_least)
{
	uint64_t deadline = tc_now_ns() + 10 * TC_SEC_NS;
	while (__atomic_load_n(flag, __ATOMIC_SEQ_CST) < at_least)
		if (tc_now_ns() > deadline)
			return false;
		else
			sched_yield();
	return true;
}

/* The child: subscribe, wait for the events, consume them all in turns of
 * every mode on each subscription, then detach. */
static int run_consumer(void *arg)
{
	struct cvictim *v = arg;
	struct cprogress *p = v->prog;
	shmbus_bus_t *bus = NULL;
	int rc = victim_open(v->crash_at, &bus);
	if (rc)
		return rc;
	shmbus_sub_t *subs[C_SUBS];
	for (unsigned s = 0; s < C_SUBS; s++)
		if ((rc = shmbus_subscribe(bus, &csub_opts[s], &subs[s])) < 0)
			return CHILD_FAIL("subscribe %s: %d (%s)", csub_what[s], rc, shmbus_errmsg());
	__atomic_store_n(&p->ready, 1, __ATOMIC_SEQ_CST);
	if (!wait_flag(&p->go, 1))
		return CHILD_FAIL("the parent never published");
	bool busy = true;
	for (unsigned round = 0; busy && round < CONS_ROUNDS_MAX; round++) {
		busy = false;
		for (unsigned s = 0; s < C_SUBS; s++) {
			struct ctrack t = {p->state[s], CONS_EVENTS, &p->strange};
			int n = cturn(&t, subs[s], csub_what[s], (round + s) % 4, false);
			if (n < 0)
				return -n;
			busy |= n > 0;
		}
	}
	if (!v->crash_at && (rc = record_points(&p->points)))
		return rc;
	for (unsigned s = 0; s < C_SUBS; s++)
		shmbus_sub_close(subs[s]);
	shmbus_close(bus);
	return 0;
}

/* The parent's subscriptions: a plain witness, the group member, the
 * durable consumer attached once the child is dead, and the race cases'
 * new subscription in the record a removal freed. A case leaves those it
 * does not use NULL. */
enum { P_WITNESS, P_DURABLE, P_GROUP, P_FRESH, P_SUBS };

struct crig {
	struct rig r; /* label, failed, bus */
	shmbus_sub_t *subs[P_SUBS];
	uint8_t got[P_SUBS][POST_EVENTS]; /* deliveries per payload index */
	int64_t last[P_SUBS][2];	  /* payload index that came last, per class (-1: none) */
};

/* Forget what came (before each drain phase). */
static void cforget(struct crig *c)
{
	memset(c->got, 0, sizeof c->got);
	for (unsigned ps = 0; ps < P_SUBS; ps++)
		c->last[ps][0] = c->last[ps][1] = -1;
}

/* Take everything queued for the parent's subscription ps, counting each
 * event by payload index from base (count of them); on the durable and
 * the group, before the laps, an event the child had in hand must come
 * flagged redelivered. First arrivals come in publish order within each
 * priority class: what the dead child took comes back first (the
 * redelivery queue), and the parent drains only after the reclaim. */
static void cdrain(struct crig *c, unsigned ps, uint32_t base, uint32_t count, const struct cprogress *p)
{
	shmbus_sub_t *sub = c->subs[ps];
	for (;;) {
		const shmbus_event_t *ev = NULL;
		int rc = shmbus_poll(sub, &ev);
		cr_assert_geq(rc, 0, "[%s] poll %u: %d (%s)", c->r.label, ps, rc, shmbus_errmsg());
		if (rc == 0)
			return;
		uint32_t i = event_index(ev);
		unsigned urgent = shmbus_event_priority(ev) >= SHMBUS_PRIORITY_HIGH;
		if (i >= base && i - base < count && c->got[ps][i - base] == 0) {
			if ((int64_t)i < c->last[ps][urgent])
				case_fail(&c->r, "subscription %u: event %u came after event %lld of its class", ps, i,
					  (long long)c->last[ps][urgent]);
			c->last[ps][urgent] = i;
		}
		if (i < base || i - base >= count)
			case_fail(&c->r, "subscription %u got event %u, none of ours", ps, i);
		else if (c->got[ps][i - base] < UINT8_MAX && c->got[ps][i - base]++ == 0 && p &&
			 p->state[ps == P_DURABLE ? C_DURABLE : C_GROUP][i] >= CS_HANDED &&
			 !shmbus_redelivered(sub, ev))
			case_fail(&c->r, "subscription %u: event %u, which the child had, is not flagged redelivered",
				  ps, i);
		cr_assert_eq(shmbus_release(sub, ev), 0, "[%s] release %u: %s", c->r.label, ps, shmbus_errmsg());
	}
}

/* Check 2 for the durable or the group (child subscription s, parent's
 * ps): what the child did not finish releasing comes once more, nothing
 * it released comes again. */
static void ccheck_back(struct crig *c, unsigned s, unsigned ps, const struct cprogress *p)
{
	unsigned bad = 0;
	for (uint32_t i = 0; i < CONS_EVENTS && bad < 3; i++) {
		uint8_t st = p->state[s][i], n = c->got[ps][i];
		bool ok = st == CS_RELEASED ? n == 0 : st == CS_RELEASING ? n <= 1 : n == 1;
		if (!ok) {
			case_fail(&c->r, "%s: event %u came %u times after the crash; the child had %s it", csub_what[s],
				  i, n,
				  st == CS_RELEASED    ? "released"
				  : st == CS_RELEASING ? "been releasing"
				  : st == CS_HANDED    ? "in hand"
						       : "not been handed");
			bad++;
		}
	}
}

/* Check 3 for the consumer cases: every parent subscription gets each of
 * more than two laps of events exactly once. */
static void ccheck_laps(struct crig *c)
{
	shmbus_pub_t *pub = tc_pub(c->r.bus, "after", 2 * (int64_t)TC_SEC_NS);
	cforget(c);
	uint8_t buf[BIG_PAYLOAD];
	unsigned j = 0;
	for (; j < POST_EVENTS; j++) {
		shmbus_msg_t m;
		fill_msg(&m, buf, spec_post(j), POST_BASE + j);
		int rc = shmbus_publish(pub, &m, NULL);
		if (rc < 0) {
			case_fail(&c->r, "publish %u of %u after the crash: %d (%s)", j, POST_EVENTS, rc,
				  shmbus_errmsg());
			break;
		}
		if (j % 16 == 15)
			for (unsigned ps = 0; ps < P_SUBS; ps++)
				if (c->subs[ps])
					cdrain(c, ps, POST_BASE, POST_EVENTS, NULL);
	}
	for (unsigned ps = 0; ps < P_SUBS; ps++) {
		if (!c->subs[ps])
			continue;
		cdrain(c, ps, POST_BASE, POST_EVENTS, NULL);
		for (unsigned i = 0; i < j; i++)
			if (c->got[ps][i] != 1) {
				case_fail(&c->r, "subscription %u got event %u of the laps %u times", ps, POST_BASE + i,
					  c->got[ps][i]);
				break;
			}
	}
	shmbus_pub_close(pub);
}

/* One consumer case on a fresh bus: the child consumes to the end
 * (crash_at NULL) or dies at crash_at, then the three checks. */
static void run_ccase(struct crig *c, const char *crash_at, struct cprogress *p)
{
	struct rig *r = &c->r;
	snprintf(r->label, sizeof r->label, "consumer %s", crash_at ? crash_at : "dry run");
	r->failed = false;
	shmbus_unlink(tc_bus);
	shmbus_config_t cfg = crash_cfg();
	r->bus = tc_create(&cfg);
	memset(c->subs, 0, sizeof c->subs);
	c->subs[P_WITNESS] = tc_sub(r->bus, NULL);
	int rc = shmbus_subscribe(r->bus, &csub_opts[C_GROUP], &c->subs[P_GROUP]);
	cr_assert_eq(rc, 0, "[%s] subscribe group: %d (%s)", r->label, rc, shmbus_errmsg());
	memset(p, 0, sizeof *p);
	struct cvictim v = {.crash_at = crash_at, .prog = p};
	pid_t child = tc_fork(run_consumer, &v);
	(void)wait_flag(&p->ready, 1); /* a child that never subscribes fails its end's check */
	shmbus_pub_t *pub = tc_pub(r->bus, "before", 2 * (int64_t)TC_SEC_NS);
	uint8_t buf[BIG_PAYLOAD];
	for (uint32_t i = 0; i < CONS_EVENTS; i++) {
		shmbus_msg_t m;
		fill_msg(&m, buf, spec_post(i), i);
		cr_assert_eq(shmbus_publish(pub, &m, NULL), 0, "[%s] publish %u: %s", r->label, i, shmbus_errmsg());
	}
	shmbus_pub_close(pub);
	cr_assert_eq(tc_drain(c->subs[P_WITNESS], NULL, NULL), (int)CONS_EVENTS);
	__atomic_store_n(&p->go, 1, __ATOMIC_SEQ_CST);
	check_victim_end(r, "consumer", child, crash_at);
	if (p->strange)
		case_fail(r, "the child got %u events twice or not of ours", p->strange);
	if (!r->failed) {
		reclaim_and_inspect(r, crash_at);
		shmbus_sub_info_t info;
		if (shmbus_list_subscriptions(r->bus, csub_opts[C_PLAIN].subscriber_id, &info, 1) != 0)
			case_fail(r, "the dead child's plain subscription is still there");
		rc = shmbus_subscribe(r->bus, &csub_opts[C_DURABLE], &c->subs[P_DURABLE]);
		cr_assert_eq(rc, 0, "[%s] subscribe durable: %d (%s)", r->label, rc, shmbus_errmsg());
		cforget(c);
		cdrain(c, P_DURABLE, 0, CONS_EVENTS, p);
		cdrain(c, P_GROUP, 0, CONS_EVENTS, p);
		cdrain(c, P_WITNESS, 0, 0, NULL);
		ccheck_back(c, C_DURABLE, P_DURABLE, p);
		ccheck_back(c, C_GROUP, P_GROUP, p);
		ccheck_laps(c);
		check_inspect(r, "after two laps");
	}
	for (unsigned ps = 0; ps < P_SUBS; ps++)
		if (c->subs[ps])
			shmbus_sub_close(c->subs[ps]);
	shmbus_close(r->bus);
	shmbus_unlink(tc_bus);
}

static const char *const consumer_points[] = {
	"take.pending", "take.cas", "take.owned", "take.stored", "take.fenced", "open.seen", "release.cell",
	"cells.released", "release.marked", "drop.won", "drop.bit", "drop.cleared", "plain.won",
	"flush.dropped", NULL,
};

/* The dry run (which must pass every consumer point), then each point the
 * child passes at five of its hits, as run_scenario does. */
struct consumer_ctx {
	struct crig *c;
	struct cprogress *p;
};

static bool consumer_case(void *ctx, const char *crash_at)
{
	struct consumer_ctx *x = ctx;
	run_ccase(x->c, crash_at, x->p);
	return x->c->r.failed;
}

Test(crash, consumer)
{
	struct crig *c = calloc(1, sizeof *c);
	cr_assert_not_null(c);
	struct cprogress *p = tc_shared_alloc(sizeof *p);
	run_ccase(c, NULL, p);
	cr_assert(!c->r.failed, "the dry run of the consumer failed");
	for (unsigned s = 0; s < C_SUBS; s++)
		for (uint32_t i = 0; i < CONS_EVENTS; i++)
			cr_assert_eq(p->state[s][i], CS_RELEASED, "dry run: %s event %u ends in state %u", csub_what[s], i,
				     p->state[s][i]);
	struct consumer_ctx x = {c, p};
	run_spread(p->points, consumer_points, "consumer", consumer_case, &x);
	tc_shared_free(p, sizeof *p);
	free(c);
}

/* ------------------------------------------------ consumers raced for */

/*
 * Two parties that compete with a consumer for its entries while it dies:
 * a publisher relieving congestion on a lag subscription (drains its
 * queue, revokes what it took but did not hand out or released with the
 * hold batched) and a removal by id. The child is killed at the consume
 * points as above; whoever wins each entry, reclaim must leave no problem
 * and no hold behind.
 */

#define RACE_BATCH 16u		 /* events the parent publishes per child turn */
#define LAG_DRY_EVENTS 1024u	 /* four laps of the lag ring */
#define LAG_EVENTS POST_EVENTS	 /* the crash runs' bound, nine laps */
#define RACE_TIMEOUT_NS (50 * TC_MS_NS)

static const shmbus_sub_opts_t lag_opts = {
	.subscriber_id = "lcrash", .group = "lcrash", .policy = SHMBUS_POLICY_LAG};
static const shmbus_sub_opts_t removed_opts = {.subscriber_id = "rcrash"};
static const struct ev_spec race_spec = {"alpha", SHMBUS_NOTIFICATION, SHMBUS_PRIORITY_NORMAL, 4};

struct rprogress {
	uint32_t ready;	    /* the child has subscribed */
	uint32_t go;	    /* the parent published what the child starts on */
	uint32_t started;   /* the child is about to take */
	uint32_t stop;	    /* nothing more comes */
	uint32_t published; /* events published so far */
	uint32_t turns;	    /* turns the child finished */
	uint32_t strange;
	shmbus_sub_id_t id;
	uint8_t state[LAG_EVENTS];
	struct point_list points; /* the dry run's */
};

struct rvictim {
	const char *crash_at;
	struct rprogress *prog;
	bool removal; /* the removal case; else the lag case */
};

/* The child of both cases. Lag: one turn per RACE_BATCH events
 * published, one batch behind the parent, so it takes about a third of
 * what comes and the ring congests while it takes. Removal: turns from
 * the moment it tells the parent it starts until it finds the
 * subscription removed. */
static int run_raced(void *arg)
{
	struct rvictim *v = arg;
	struct rprogress *p = v->prog;
	shmbus_bus_t *bus = NULL;
	int rc = victim_open(v->crash_at, &bus);
	if (rc)
		return rc;
	shmbus_sub_t *sub = NULL;
	if ((rc = shmbus_subscribe(bus, v->removal ? &removed_opts : &lag_opts, &sub)) < 0)
		return CHILD_FAIL("subscribe: %d (%s)", rc, shmbus_errmsg());
	p->id = shmbus_sub_id(sub);
	__atomic_store_n(&p->ready, 1, __ATOMIC_SEQ_CST);
	if (!wait_flag(&p->go, 1))
		return CHILD_FAIL("the parent never published");
	struct ctrack t = {p->state, LAG_EVENTS, &p->strange};
	__atomic_store_n(&p->started, 1, __ATOMIC_SEQ_CST);
	/* a removal's child may run out of events long before it shows */
	uint64_t give_up = tc_now_ns() + 10 * TC_SEC_NS;
	for (unsigned round = 0;; round++) {
		if (tc_now_ns() > give_up)
			return CHILD_FAIL("%s", v->removal ? "the removal never showed" : "the parent never stopped");
		if (!v->removal && !__atomic_load_n(&p->stop, __ATOMIC_SEQ_CST)) {
			uint64_t deadline = tc_now_ns() + 10 * TC_SEC_NS;
			while (__atomic_load_n(&p->published, __ATOMIC_SEQ_CST) < (round + 1) * RACE_BATCH &&
			       !__atomic_load_n(&p->stop, __ATOMIC_SEQ_CST))
				if (tc_now_ns() > deadline)
					return CHILD_FAIL("the parent stopped publishing");
				else
					sched_yield();
		}
		bool stop = __atomic_load_n(&p->stop, __ATOMIC_SEQ_CST);
		int n = cturn(&t, sub, v->removal ? "removed" : "lag", round % 4, v->removal);
		if (n == -ESHUTDOWN)
			break;
		if (n < 0)
			return -n;
		__atomic_store_n(&p->turns, round + 1, __ATOMIC_SEQ_CST);
		if (!v->removal && stop && n == 0)
			break;
	}
	if (!v->crash_at && (rc = record_points(&p->points)))
		return rc;
	shmbus_sub_close(sub);
	shmbus_close(bus);
	return 0;
}

/* Whether the child is gone, reaping it (status in *st) if so. */
static bool child_gone(pid_t child, int *st, bool *reaped)
{
	if (!*reaped && waitpid(child, st, WNOHANG) == child)
		*reaped = true;
	return *reaped;
}

/* The lag case's parent: publish in batches of RACE_BATCH, at most one
 * ahead of the child's turns, until total or the child's death; a
 * publish may wait for a slot the dead child held in hand, and times out.
 * Returns how many events were published. */
static uint32_t lag_publish(struct crig *c, struct rprogress *p, pid_t child, uint32_t total, int *st, bool *reaped)
{
	shmbus_pub_t *pub = tc_pub(c->r.bus, "lag", RACE_TIMEOUT_NS);
	uint8_t buf[sizeof(uint32_t)];
	uint32_t i = 0;
	for (uint32_t b = 0; i < total; b++) {
		while (b >= 2 && __atomic_load_n(&p->turns, __ATOMIC_SEQ_CST) < b - 1 && !child_gone(child, st, reaped))
			sched_yield();
		if (child_gone(child, st, reaped))
			break;
		for (uint32_t end = i + RACE_BATCH; i < end; i++) {
			shmbus_msg_t m;
			fill_msg(&m, buf, race_spec, i);
			int rc = shmbus_publish(pub, &m, NULL);
			if (rc == -ETIMEDOUT && child_gone(child, st, reaped))
				break;
			cr_assert_eq(rc, 0, "[%s] publish %u: %d (%s)", c->r.label, i, rc, shmbus_errmsg());
		}
		__atomic_store_n(&p->published, i, __ATOMIC_SEQ_CST);
		cdrain(c, P_WITNESS, 0, LAG_EVENTS, NULL);
	}
	__atomic_store_n(&p->published, i, __ATOMIC_SEQ_CST);
	shmbus_pub_close(pub);
	return i;
}

/* After reclaim, through the parent's member of the lag group: every
 * event the child had in hand comes once more flagged redelivered, none
 * it released comes again, and the group's missed count makes up the
 * rest: released + delivered again + missed = published. */
static void lag_account(struct crig *c, const struct rprogress *p, uint32_t published, uint64_t *revoked)
{
	shmbus_sub_t *sub = c->subs[P_GROUP];
	uint8_t *got = c->got[P_GROUP];
	for (;;) {
		const shmbus_event_t *ev = NULL;
		int rc = shmbus_poll(sub, &ev);
		cr_assert_geq(rc, 0, "[%s] poll group: %d (%s)", c->r.label, rc, shmbus_errmsg());
		if (rc == 0)
			break;
		uint32_t i = event_index(ev);
		if (i >= published)
			case_fail(&c->r, "the group got event %u of %u published", i, published);
		else if (got[i]++ == 0 && p->state[i] == CS_HANDED && !shmbus_redelivered(sub, ev))
			case_fail(&c->r, "event %u, which the child had in hand, is not flagged redelivered", i);
		cr_assert_eq(shmbus_release(sub, ev), 0, "[%s] release group: %s", c->r.label, shmbus_errmsg());
	}
	uint64_t missed = shmbus_take_missed(sub), finished = 0, again = 0;
	for (uint32_t i = 0; i < published; i++) {
		uint8_t st = p->state[i];
		if (got[i] > 1 || (st == CS_RELEASED && got[i]) || (st == CS_HANDED && !got[i])) {
			case_fail(&c->r, "event %u came %u times after the crash; the child's state %u", i, got[i], st);
			return;
		}
		finished += st == CS_RELEASED || (st == CS_RELEASING && !got[i]);
		again += got[i];
	}
	if (finished + again + missed != published)
		case_fail(&c->r, "%llu released + %llu delivered again + %llu missed != %u published",
			  (unsigned long long)finished, (unsigned long long)again, (unsigned long long)missed, published);
	shmbus_sub_info_t info;
	if (shmbus_list_subscriptions(c->r.bus, lag_opts.subscriber_id, &info, 1) == 1)
		*revoked += info.revoked;
}

/* One case of either race on a fresh bus. Returns whether the child was
 * killed (a removal case's child may see the removal before its point,
 * then it exits and the checks run all the same). */
static bool run_race_case(struct crig *c, bool removal, const char *crash_at, struct rprogress *p, uint64_t *revoked)
{
	struct rig *r = &c->r;
	snprintf(r->label, sizeof r->label, "%s %s", removal ? "removed" : "lag", crash_at ? crash_at : "dry run");
	r->failed = false;
	shmbus_unlink(tc_bus);
	shmbus_config_t cfg = crash_cfg();
	if (removal)
		cfg.max_subscribers = 2; /* the new subscription can only have the freed record */
	else
		cfg.slots = RING_SLOTS / 4; /* the laps below are nine of this ring */
	r->bus = tc_create(&cfg);
	memset(c->subs, 0, sizeof c->subs);
	cforget(c);
	c->subs[P_WITNESS] = tc_sub(r->bus, NULL);
	if (!removal) {
		int rc = shmbus_subscribe(r->bus, &lag_opts, &c->subs[P_GROUP]);
		cr_assert_eq(rc, 0, "[%s] subscribe group: %d (%s)", r->label, rc, shmbus_errmsg());
	}
	memset(p, 0, sizeof *p);
	struct rvictim v = {.crash_at = crash_at, .prog = p, .removal = removal};
	pid_t child = tc_fork(run_raced, &v);
	cr_assert(wait_flag(&p->ready, 1), "[%s] the child never subscribed", r->label);
	int st = 0;
	bool reaped = false;
	uint32_t published = 0;
	if (removal) {
		shmbus_pub_t *pub = tc_pub(r->bus, "before", 2 * (int64_t)TC_SEC_NS);
		uint8_t buf[sizeof(uint32_t)];
		for (; published < CONS_EVENTS; published++) {
			shmbus_msg_t m;
			fill_msg(&m, buf, race_spec, published);
			cr_assert_eq(shmbus_publish(pub, &m, NULL), 0, "[%s] publish: %s", r->label, shmbus_errmsg());
		}
		shmbus_pub_close(pub);
		cdrain(c, P_WITNESS, 0, LAG_EVENTS, NULL);
		__atomic_store_n(&p->go, 1, __ATOMIC_SEQ_CST);
		/* as the child starts its first take */
		cr_assert(wait_flag(&p->started, 1), "[%s] the child never started", r->label);
		int rc = shmbus_unsubscribe_id(r->bus, p->id);
		if (rc < 0)
			case_fail(r, "shmbus_unsubscribe_id: %d (%s)", rc, shmbus_errmsg());
	} else {
		__atomic_store_n(&p->go, 1, __ATOMIC_SEQ_CST);
		published = lag_publish(c, p, child, crash_at ? LAG_EVENTS : LAG_DRY_EVENTS, &st, &reaped);
	}
	__atomic_store_n(&p->stop, 1, __ATOMIC_SEQ_CST);
	if (!reaped && tc_wait(child, 20000, &st) < 0)
		case_fail(r, "the consumer hung");
	bool killed = WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL;
	if (!killed && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
		case_fail(r, "the consumer %s", tc_status_str(st));
	else if (crash_at && !killed && !removal)
		case_fail(r, "the consumer exited: the crash point was not reached");
	if (p->strange)
		case_fail(r, "the child got %u events twice or not of ours", p->strange);
	if (!r->failed) {
		/* the lag case's parent may have reclaimed the child in a wait */
		int n = shmbus_reclaim(r->bus);
		if (n < 0 || n > (int)killed || (removal && n != (int)killed))
			case_fail(r, "shmbus_reclaim found %d dead members", n);
		check_inspect(r, "after reclaim");
		shmbus_sub_info_t info;
		if (removal) {
			if (shmbus_list_subscriptions(r->bus, removed_opts.subscriber_id, &info, 1) != 0)
				case_fail(r, "the removed subscription is still there");
			int rc = shmbus_subscribe(r->bus, NULL, &c->subs[P_FRESH]);
			if (rc < 0)
				case_fail(r, "the removed subscription's record is not reusable: %d (%s)", rc,
					  shmbus_errmsg());
		} else {
			lag_account(c, p, published, revoked);
		}
		if (!r->failed) {
			ccheck_laps(c);
			check_inspect(r, "after two laps");
		}
	}
	for (unsigned ps = 0; ps < P_SUBS; ps++)
		if (c->subs[ps])
			shmbus_sub_close(c->subs[ps]);
	shmbus_close(r->bus);
	shmbus_unlink(tc_bus);
	return killed;
}

/* The dry run, then the consumer points at a few hits each: for the lag
 * case the first, a quarter and half of the dry run's (the crash runs go
 * on longer, so each is reached); for the removal case, which races the
 * child's first turns, the first three. */
static void run_race(bool removal)
{
	const char *what = removal ? "consumer_removed" : "consumer_lag_revoked";
	struct crig *c = calloc(1, sizeof *c);
	cr_assert_not_null(c);
	struct rprogress *p = tc_shared_alloc(sizeof *p);
	uint64_t revoked = 0;
	run_race_case(c, removal, NULL, p, &revoked);
	cr_assert(!c->r.failed, "the dry run of %s failed", what);
	struct point_list pl = p->points; /* the cases reuse p */
	uint64_t start = tc_now_ns();
	unsigned cases = 0, failed = 0, kills = 0;
	for (const char *const *id = consumer_points; *id && failed < FAILED_CASES_MAX; id++) {
		uint64_t n = 3;
		if (!removal) {
			size_t k = point_find(&pl, *id);
			if (k == pl.n)
				continue; /* not on the lag path (the child's subscription is a group) */
			n = pl.hits[k];
		}
		uint64_t at[] = {1, removal ? 2 : (n + 3) / 4, removal ? 3 : (n + 1) / 2};
		for (unsigned h = 0; h < 3 && failed < FAILED_CASES_MAX; h++) {
			if (h > 0 && at[h] <= at[h - 1])
				continue;
			char crash_at[64];
			snprintf(crash_at, sizeof crash_at, "%s:%llu", *id, (unsigned long long)at[h]);
			kills += run_race_case(c, removal, crash_at, p, &revoked);
			cases++;
			failed += c->r.failed;
		}
	}
	cr_expect_lt(failed, FAILED_CASES_MAX, "%s: stopped after %u failed cases", what, failed);
	cr_expect_gt(kills, 0, "%s: no child died at its point", what);
	if (!removal)
		cr_expect_gt(revoked, 0, "%s: no publisher revoked a held event", what);
	fprintf(stderr, "crash/%s: %u cases (%u killed, %u failed, %llu revocations) in %.1f s\n", what, cases, kills,
		failed, (unsigned long long)revoked, (double)(tc_now_ns() - start) / 1e9);
	tc_shared_free(p, sizeof *p);
	free(c);
}

Test(crash, consumer_lag_revoked) { run_race(false); }
Test(crash, consumer_removed) { run_race(true); }

/* ------------------------------------------------ a taker of a lease */

#define TURNS_WHO(v) ((v) >> 24)
#define TURNS_I(v) ((v) & 0xFFFFFFu)

struct turns_seen {
	uint32_t next[3];
	bool bad;
	char why[128];
};

static void turns_event(const shmbus_event_t *ev, void *arg)
{
	struct turns_seen *t = arg;
	uint32_t v = tc_payload_u32(ev), who = TURNS_WHO(v);
	if (who > 2 || (who < 2 && TURNS_I(v) != t->next[who])) {
		if (!t->bad)
			snprintf(t->why, sizeof t->why, "publisher %u: event %u when %u was due", who, TURNS_I(v),
				 who < 3 ? t->next[who] : 0);
		t->bad = true;
		return;
	}
	t->next[who] = TURNS_I(v) + 1;
}

/* The taker: goes round the ring until it takes a lease position away,
 * and dies there (between its CAS to TAKING and the rest). */
static int lease_taker(void *arg)
{
	(void)arg;
	shmbus_bus_t *bus = NULL;
	int rc = victim_open("lease.taking:1", &bus);
	if (rc)
		return rc;
	shmbus_pub_t *pub = NULL;
	shmbus_pub_opts_t po = {.timeout_ns = 5 * (int64_t)TC_SEC_NS};
	if ((rc = shmbus_pub_open(bus, &po, &pub)) < 0)
		return CHILD_FAIL("pub_open %d", rc);
	for (uint32_t i = 0; i < 3 * 64; i++)
		if ((rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "taker", SHMBUS_PRIORITY_NORMAL, 2u << 24 | i)) < 0)
			return CHILD_FAIL("publish %u: %d", i, rc);
	return CHILD_FAIL("went three times round the ring without taking a lease position away");
}

/*
 * A and B take turns, so both hold leases; A goes quiet. A third process
 * goes round the ring, meets A's lease and dies taking a position of it
 * away (the word says TAKING). After reclaim, B goes three times round the
 * ring (finishing the taking on its way, it must never wait for it), and
 * A, back, publishes past everything. Nothing is lost, and the inspector
 * finds nothing wrong.
 */
Test(crash, a_taker_killed_half_way_leaves_a_word_anyone_finishes)
{
	if (!tc_leases_available())
		cr_skip_test("membarrier is refused here: publishers do not lease");
	shmbus_config_t cfg = tc_small_cfg();
	cfg.slots = 64;
	cfg.max_payload = 1024;
	cfg.stall_timeout_ns = 120 * TC_SEC_NS;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *a = tc_pub(bus, "a", 2 * (int64_t)TC_SEC_NS), *b = tc_pub(bus, "b", 2 * (int64_t)TC_SEC_NS);
	struct turns_seen t = {0};
	uint32_t ai = 0, bi = 0;
	for (; ai < 20; ai++, bi++) {
		cr_assert_eq(tc_publish_u32(a, SHMBUS_NOTIFICATION, "a", SHMBUS_PRIORITY_NORMAL, ai), 0);
		cr_assert_eq(tc_publish_u32(b, SHMBUS_NOTIFICATION, "b", SHMBUS_PRIORITY_NORMAL, 1u << 24 | bi), 0);
		if (ai % 8 == 7)
			cr_assert_geq(tc_drain(sub, turns_event, &t), 0);
	}
	cr_assert_geq(tc_drain(sub, turns_event, &t), 0);
	/* the taker runs while the subscriber drains */
	pid_t kid = tc_fork(lease_taker, NULL);
	int st = 0;
	for (int k = 0; k < 2000 && waitpid(kid, &st, WNOHANG) == 0; k++) {
		cr_assert_geq(tc_drain(sub, turns_event, &t), 0);
		tc_sleep_ms(1);
	}
	if (!WIFSIGNALED(st))
		cr_assert_eq(tc_wait(kid, 10000, &st), 0, "the taker hung");
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the taker %s", tc_status_str(st));
	cr_expect_eq(shmbus_reclaim(bus), 1);
	shmbus_uuid_t id;
	for (uint32_t end = bi + 3 * 64; bi < end; bi++) {
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "b"};
		uint32_t v = 1u << 24 | bi;
		m.payload = &v;
		m.payload_len = sizeof v;
		cr_assert_eq(shmbus_publish(b, &m, &id), 0, "B %u after the taker died: %s", bi, shmbus_errmsg());
		if (bi % 8 == 7)
			cr_assert_geq(tc_drain(sub, turns_event, &t), 0);
	}
	uint64_t b_last = shmbus_uuid_seq(&id);
	for (uint32_t end = ai + 5; ai < end; ai++) {
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "a"};
		uint32_t v = ai;
		m.payload = &v;
		m.payload_len = sizeof v;
		cr_assert_eq(shmbus_publish(a, &m, &id), 0, "A %u: %s", ai, shmbus_errmsg());
		cr_expect_gt(shmbus_uuid_seq(&id), b_last, "A published at %llu, in a lease position taken away",
			     (unsigned long long)shmbus_uuid_seq(&id));
	}
	cr_assert_geq(tc_drain(sub, turns_event, &t), 0);
	cr_expect(!t.bad, "%s", t.why);
	cr_expect_eq(t.next[0], ai);
	cr_expect_eq(t.next[1], bi);
	shmbus_inspect_t *in = NULL;
	cr_assert_eq(shmbus_inspect_open(tc_bus, &in), 0);
	for (size_t i = 0; i < shmbus_inspect_problem_count(in); i++)
		cr_expect_fail("inspector: %s", shmbus_inspect_problem(in, i));
	shmbus_inspect_close(in);
	shmbus_pub_close(a);
	shmbus_pub_close(b);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* ----------------------------------------------------------- lost wake */

/* The publisher: once the parent sleeps, one event, and death between its
 * commit and its wake (end.before_fence: the sleeper is never woken). */
static int wake_victim(void *arg)
{
	(void)arg;
	shmbus_bus_t *bus = NULL;
	int rc = victim_open("end.before_fence:1", &bus);
	if (rc)
		return rc;
	shmbus_pub_t *pub = NULL;
	if ((rc = shmbus_pub_open(bus, NULL, &pub)) < 0)
		return CHILD_FAIL("pub_open %d", rc);
	tc_sleep_ms(100); /* the parent is asleep by now */
	rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "woken", SHMBUS_PRIORITY_NORMAL, 7);
	return CHILD_FAIL("published (%d) and lived past the wake", rc);
}

/*
 * A consumer asleep in a blocking wait while its publisher commits an
 * event and dies before waking it: the wait still returns the event, at
 * its next slice (a reclaim interval), not at its timeout. A sleeper's
 * slice is what bounds a lost wake, and this is its test.
 */
Test(crash, a_sleeper_gets_the_event_whose_publisher_died_before_waking_it)
{
	shmbus_config_t cfg = tc_small_cfg(); /* reclaim 200 ms: slices of 100 ms */
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_opts_t so = {.wait = SHMBUS_WAIT_BLOCK};
	shmbus_sub_t *sub = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &so, &sub), 0, "%s", shmbus_errmsg());
	pid_t kid = tc_fork(wake_victim, NULL);
	const shmbus_event_t *ev = NULL;
	/* The timeout is far beyond the slice. A wait that relied on the
	 * wake alone would sleep to its end (and find the event only in its
	 * last look): not a speed limit, a liveness one, 50 slices wide. */
	uint64_t t0 = tc_now_ns();
	int rc = shmbus_wait(sub, 10 * (int64_t)TC_SEC_NS, &ev);
	uint64_t waited = tc_now_ns() - t0;
	int st = 0;
	cr_assert_eq(tc_wait(kid, 10000, &st), 0);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the publisher %s", tc_status_str(st));
	cr_assert_eq(rc, 1, "the sleeper got nothing (%d)", rc);
	cr_expect_lt(waited, 5 * TC_SEC_NS, "the sleeper slept %.1f s: only its timeout woke it", (double)waited / 1e9);
	cr_expect_eq(tc_payload_u32(ev), 7);
	shmbus_release(sub, ev);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* ------------------------------------------- a publisher draining lag */

#define DRAIN_SLOTS 256u
#define DRAIN_EVENTS (3 * DRAIN_SLOTS) /* three laps: every claim past the first drains */

struct drain_progress {
	uint32_t started, completed;
	struct point_list points;
};

/* The victim: single publishes of 4-byte indexes, three laps of a ring
 * that two lag subscriptions nobody consumes keep full, so that it drains
 * them (reclaim_relieve_congestion) all along. */
static int drain_victim(void *arg)
{
	struct drain_progress *prog = ((void **)arg)[0];
	const char *crash_at = ((void **)arg)[1];
	shmbus_bus_t *bus = NULL;
	int rc = victim_open(crash_at, &bus);
	if (rc)
		return rc;
	shmbus_pub_t *pub = NULL;
	shmbus_pub_opts_t po = {.timeout_ns = 5 * (int64_t)TC_SEC_NS};
	if ((rc = shmbus_pub_open(bus, &po, &pub)) < 0)
		return CHILD_FAIL("pub_open %d", rc);
	for (uint32_t i = 0; i < DRAIN_EVENTS; i++) {
		__atomic_store_n(&prog->started, i + 1, __ATOMIC_SEQ_CST);
		if ((rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "n", SHMBUS_PRIORITY_NORMAL, i)) < 0)
			return CHILD_FAIL("publish %u: %d", i, rc);
		__atomic_store_n(&prog->completed, i + 1, __ATOMIC_SEQ_CST);
	}
	if (!crash_at && (rc = record_points(&prog->points)))
		return rc;
	shmbus_pub_close(pub);
	shmbus_close(bus);
	return 0;
}

/* Everything subscription sub (number k of the case) has queued now:
 * indexes from base on, each above the one before and below end. Returns
 * how many, or -1 (reported). */
static int drain_take_all(struct rig *r, shmbus_sub_t *sub, unsigned k, uint32_t base, uint32_t end)
{
	const shmbus_event_t *ev;
	int n = 0, rc;
	uint32_t next = base;
	while ((rc = shmbus_poll(sub, &ev)) == 1) {
		uint32_t v = tc_payload_u32(ev);
		shmbus_release(sub, ev);
		if (v < next || v >= end) {
			case_fail(r, "sub %u: event %u after %u (events up to %u)", k, v, next, end);
			return -1;
		}
		next = v + 1;
		n++;
	}
	if (rc < 0)
		case_fail(r, "sub %u: poll %d", k, rc);
	return rc < 0 ? -1 : n;
}

/*
 * One case: the victim run to the end or killed at crash_at, then: the
 * inspector finds nothing wrong; each subscription's events come in order,
 * none twice, none never published, and what it received and what it was
 * told it missed add up to what was published (every publish that
 * returned, at most the one under way): a dead drainer's run is passed
 * over and counted once, whether or not the drainer had counted it; and
 * two more laps go through, drained again.
 */
static bool drain_case(void *ctx, const char *crash_at)
{
	struct drain_progress *prog = ctx;
	struct rig rig = {0}, *r = &rig;
	snprintf(r->label, sizeof r->label, "lag-drain %s", crash_at ? crash_at : "dry run");
	shmbus_unlink(tc_bus);
	shmbus_config_t cfg = tc_small_cfg();
	cfg.slots = DRAIN_SLOTS;
	cfg.stall_timeout_ns = 120 * TC_SEC_NS;
	r->bus = tc_create(&cfg);
	/* a plain lag subscription and a durable one */
	shmbus_sub_t *subs[2];
	shmbus_sub_opts_t plain = {.policy = SHMBUS_POLICY_LAG};
	shmbus_sub_opts_t durable = {.policy = SHMBUS_POLICY_LAG, .durable = true, .subscriber_id = "keeper"};
	cr_assert_eq(shmbus_subscribe(r->bus, &plain, &subs[0]), 0);
	cr_assert_eq(shmbus_subscribe(r->bus, &durable, &subs[1]), 0);
	memset(prog, 0, sizeof *prog);
	void *args[2] = {prog, (void *)crash_at};
	check_victim_end(r, "publisher", tc_fork(drain_victim, args), crash_at);
	if (!r->failed) {
		reclaim_and_inspect(r, crash_at);
		for (unsigned k = 0; k < 2 && !r->failed; k++) {
			int got = drain_take_all(r, subs[k], k, 0, prog->started);
			uint64_t missed = shmbus_take_missed(subs[k]);
			if (got >= 0 && (got + missed < prog->completed || got + missed > prog->started))
				case_fail(r, "sub %u: received %d and missed %llu, of %u to %u published", k, got,
					  (unsigned long long)missed, prog->completed, prog->started);
		}
	}
	if (!r->failed) { /* two more laps, drained as they go */
		shmbus_pub_t *pub = tc_pub(r->bus, "after", 2 * (int64_t)TC_SEC_NS);
		for (uint32_t j = 0; j < 2 * DRAIN_SLOTS + DRAIN_SLOTS / 4 && !r->failed; j++) {
			int rc = tc_publish_u32(pub, SHMBUS_NOTIFICATION, "n", SHMBUS_PRIORITY_NORMAL, POST_BASE + j);
			if (rc < 0)
				case_fail(r, "publish %u after the crash: %d (%s)", j, rc, shmbus_errmsg());
		}
		shmbus_pub_close(pub);
		for (unsigned k = 0; k < 2 && !r->failed; k++)
			drain_take_all(r, subs[k], k, POST_BASE, POST_BASE + 3 * DRAIN_SLOTS);
		check_inspect(r, "after two laps");
	}
	shmbus_unsubscribe(subs[1]);
	shmbus_sub_close(subs[0]);
	shmbus_close(r->bus);
	shmbus_unlink(tc_bus);
	return r->failed;
}

static const char *const drain_points[] = {
	"claim.intent", "take.pending", "take.cas", "take.owned", "drain.noted", "drain.released", "release.cell", NULL,
};

Test(crash, a_publisher_draining_lag_subscriptions)
{
	struct drain_progress *prog = tc_shared_alloc(sizeof *prog);
	cr_assert(!drain_case(prog, NULL), "the dry run failed");
	struct drain_progress copy = *prog;
	run_spread(copy.points, drain_points, "lag-drain", drain_case, prog);
	tc_shared_free(prog, sizeof *prog);
}

/* --------------------------------------------------------- redelivery */

/* Durable "rd": subscribe, tell the parent ('R'), take `hold` events on
 * go ('G' on fd `go`) and keep them, tell the parent ('H'), hang. */
struct rd_child {
	int up, go;
	unsigned hold;
	const char *crash_at; /* the last take of a second round dies here */
};

static int rd_holder(void *arg)
{
	const struct rd_child *k = arg;
	if (k->crash_at)
		setenv("SHMBUS_CRASH_AT", k->crash_at, 1);
	shmbus_bus_t *bus = NULL;
	shmbus_sub_t *sub = NULL;
	shmbus_sub_opts_t o = {.subscriber_id = "rd", .durable = true};
	int rc = tc_child_subscribe(&o, &bus, &sub);
	if (rc)
		return rc;
	tc_write_byte(k->up, 'R');
	char c;
	for (int round = 0; round < (k->crash_at ? 2 : 1); round++) {
		if (tc_read_byte(k->go, 10000, &c) != 0)
			return CHILD_FAIL("no go");
		const shmbus_event_t *ev;
		unsigned got = 0;
		for (int tries = 0; round == 0 && got < k->hold && tries < 100; tries++)
			got += shmbus_wait(sub, 100 * (int64_t)TC_MS_NS, &ev) == 1;
		if (round == 0 && got < k->hold)
			return CHILD_FAIL("held %u of %u", got, k->hold);
		for (int tries = 0; round == 1 && tries < 100; tries++)
			(void)shmbus_wait(sub, 10 * (int64_t)TC_MS_NS, &ev); /* dies taking */
		tc_write_byte(k->up, round == 0 ? 'H' : 'X');
	}
	for (;;)
		pause();
}

/* What the durable subscription "rd" delivers now, as "0 1 2", each
 * event released; dups counts events that came more than once. */
static void rd_drain(shmbus_bus_t *bus, char *out, size_t cap, unsigned *dups)
{
	shmbus_sub_opts_t o = {.subscriber_id = "rd", .durable = true};
	shmbus_sub_t *sub = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0, "%s", shmbus_errmsg());
	const shmbus_event_t *ev;
	uint8_t seen[64] = {0};
	size_t len = 0;
	out[0] = '\0';
	*dups = 0;
	while (shmbus_poll(sub, &ev) == 1) {
		uint32_t v = tc_payload_u32(ev);
		if (v < 64 && seen[v]++)
			(*dups)++;
		else if (len < cap)
			len += (size_t)snprintf(out + len, cap - len, "%s%u", len ? " " : "", v);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	shmbus_sub_close(sub);
}

static int rd_reclaimer(void *arg)
{
	shmbus_bus_t *bus = NULL;
	int rc = victim_open(arg, &bus);
	if (rc)
		return rc;
	(void)shmbus_reclaim(bus);
	return CHILD_FAIL("not killed at %s", (const char *)arg);
}

/* The redelivery cases' bus, publisher and rd_holder children: one pipe
 * up from all of them, one go pipe each. */
#define RD_KIDS 3
struct rd_rig {
	shmbus_bus_t *bus;
	shmbus_pub_t *pub;
	int up[2];
	int go[RD_KIDS][2];
	struct rd_child kid[RD_KIDS];
	unsigned n;
};

static void rd_open(struct rd_rig *r)
{
	*r = (struct rd_rig){0};
	shmbus_config_t cfg = tc_small_cfg();
	r->bus = tc_create(&cfg);
	r->pub = tc_pub(r->bus, NULL, 0);
	cr_assert_eq(pipe(r->up), 0);
}

/* Start an rd_holder that takes `hold` events when told (rd_hold); the
 * take after that dies at crash_at, if given. Returns its pid, once it
 * has subscribed. */
static pid_t rd_spawn(struct rd_rig *r, unsigned hold, const char *crash_at)
{
	cr_assert_lt(r->n, RD_KIDS);
	int *go = r->go[r->n];
	cr_assert_eq(pipe(go), 0);
	r->kid[r->n] = (struct rd_child){.up = r->up[1], .go = go[0], .hold = hold, .crash_at = crash_at};
	pid_t p = tc_fork(rd_holder, &r->kid[r->n++]);
	char c;
	cr_assert_eq(tc_read_byte(r->up[0], 5000, &c), 0);
	cr_assert_eq(c, 'R');
	return p;
}

/* Tell child i to go on; with `held`, wait until it holds its events. */
static void rd_go(struct rd_rig *r, unsigned i, bool held)
{
	tc_write_byte(r->go[i][1], 'G');
	char c;
	if (held) {
		cr_assert_eq(tc_read_byte(r->up[0], 5000, &c), 0);
		cr_assert_eq(c, 'H');
	}
}

/* kill -9 child p (a holder), and a survivor's reclaim finds it dead. */
static void rd_kill(struct rd_rig *r, pid_t p)
{
	tc_kill9(p);
	cr_assert_geq(shmbus_reclaim(r->bus), 1);
}

static void rd_publish(struct rd_rig *r, uint32_t from, uint32_t to)
{
	for (uint32_t i = from; i < to; i++)
		cr_assert_eq(tc_publish_u32(r->pub, SHMBUS_NOTIFICATION, "e", 0, i), 0);
}

static void rd_close(struct rd_rig *r)
{
	close(r->up[0]), close(r->up[1]);
	for (unsigned i = 0; i < r->n; i++)
		close(r->go[i][0]), close(r->go[i][1]);
	shmbus_pub_close(r->pub);
	shmbus_close(r->bus);
}

/* A survivor killed between two give-backs of a dead consumer's events
 * (reclaim.given: after a push, before clearing its entry) leaves one
 * event to be given back twice, never more: entries are cleared one by
 * one. The next survivor finishes; first arrivals stay in order. */
Test(crash, a_survivor_killed_between_give_backs_gives_one_event_back_twice_at_most)
{
	struct rd_rig r;
	rd_open(&r);
	pid_t holder = rd_spawn(&r, 5, NULL);
	rd_publish(&r, 0, 8);
	rd_go(&r, 0, true);
	tc_kill9(holder);
	int st = 0;
	cr_assert_eq(tc_wait(tc_fork(rd_reclaimer, "reclaim.given:3"), 10000, &st), 0);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the survivor %s", tc_status_str(st));
	cr_assert_geq(shmbus_reclaim(r.bus), 1);
	char got[256];
	unsigned dups;
	rd_drain(r.bus, got, sizeof got, &dups);
	cr_expect_str_eq(got, "0 1 2 3 4 5 6 7");
	cr_expect_leq(dups, 1, "%u events came twice after one survivor died", dups);
	rd_close(&r);
}

/* Two consumers of one durable subscription: D holds 0-4, C holds 5-9. D
 * dies; its events go to the redelivery queue; C starts taking them and
 * dies after its head CAS (take.owned), before they reach its held[]. The
 * run C was taking is older than what C held, so reclaim must not put it
 * after them: the next consumer gets 0..11 in order. */
Test(crash, a_run_taken_from_the_redelivery_queue_goes_back_before_newer_holds)
{
	struct rd_rig r;
	rd_open(&r);
	pid_t dp = rd_spawn(&r, 5, NULL);
	pid_t cp = rd_spawn(&r, 5, "take.owned:2");
	rd_publish(&r, 0, 5);
	rd_go(&r, 0, true);
	rd_publish(&r, 5, 10);
	rd_go(&r, 1, true);
	rd_kill(&r, dp);
	int st = 0;
	rd_go(&r, 1, false); /* C takes from the redelivery queue and dies */
	cr_assert_eq(tc_wait(cp, 10000, &st), 0, "C hung");
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "C %s", tc_status_str(st));
	cr_assert_geq(shmbus_reclaim(r.bus), 1);
	rd_publish(&r, 10, 12);
	char got[256];
	unsigned dups;
	rd_drain(r.bus, got, sizeof got, &dups);
	cr_expect_str_eq(got, "0 1 2 3 4 5 6 7 8 9 10 11");
	cr_expect_eq(dups, 0);
	rd_close(&r);
}

/* ----------------------------------------------- a half-pushed leftover */

static int rare_publisher(void *arg)
{
	(void)arg;
	shmbus_bus_t *bus = NULL;
	int rc = victim_open("one.routed:1", &bus);
	if (rc)
		return rc;
	shmbus_pub_t *pub = NULL;
	if ((rc = shmbus_pub_open(bus, NULL, &pub)) < 0)
		return CHILD_FAIL("pub_open %d", rc);
	(void)tc_publish_u32(pub, SHMBUS_NOTIFICATION, "rare", SHMBUS_PRIORITY_NORMAL, 1);
	return CHILD_FAIL("not killed at one.routed");
}

/* A publisher killed after pushing its event's descriptor and before the
 * commit (one.routed): reclaim aborts the claim and turns the descriptor,
 * queued for a subscription nobody consumes, into a tombstone. The ring
 * then laps twice; the slot is reused, and the inspector must not find a
 * queued descriptor of a slot that moved on (it reported one as damage). */
Test(crash, a_dead_publishers_half_pushed_event_leaves_no_descriptor_behind_a_lap)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.slots = 64;
	cfg.max_payload = 1024;
	shmbus_bus_t *bus = tc_create(&cfg);
	const char *rare_names[] = {"rare"}, *busy_names[] = {"busy"};
	shmbus_filter_t *fr, *fb;
	cr_assert_eq(shmbus_filter_names(rare_names, 1, &fr), 0);
	cr_assert_eq(shmbus_filter_names(busy_names, 1, &fb), 0);
	shmbus_sub_t *rare = tc_sub(bus, fr), *busy = tc_sub(bus, fb); /* take the filters */
	int st = 0;
	cr_assert_eq(tc_wait(tc_fork(rare_publisher, NULL), 10000, &st), 0);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the publisher %s", tc_status_str(st));
	cr_assert_geq(shmbus_reclaim(bus), 1);
	shmbus_pub_t *pub = tc_pub(bus, "p", 2 * (int64_t)TC_SEC_NS);
	for (uint32_t i = 0; i < 2 * 64; i++) {
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "busy", SHMBUS_PRIORITY_NORMAL, i), 0, "%s",
			     shmbus_errmsg());
		if (i % 8 == 7)
			cr_assert_geq(tc_drain(busy, NULL, NULL), 0);
	}
	cr_assert_geq(tc_drain(busy, NULL, NULL), 0);
	shmbus_inspect_t *in = NULL;
	cr_assert_eq(shmbus_inspect_open(tc_bus, &in), 0);
	for (size_t i = 0; i < shmbus_inspect_problem_count(in); i++)
		cr_expect_fail("inspector: %s", shmbus_inspect_problem(in, i));
	shmbus_inspect_close(in);
	const shmbus_event_t *ev;
	cr_expect_eq(shmbus_poll(rare, &ev), 0, "the aborted event is never delivered");
	shmbus_sub_close(rare);
	shmbus_sub_close(busy);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* A gap that closes inside a poll must not leave poll_next with its old
 * value: a redelivered run above it was passed over and the normal queue
 * served a newer event first. The gap is forged in the record (no log:
 * the catch-up closes it at once). Found by review. */
Test(crash, a_gap_closed_inside_a_poll_does_not_let_newer_events_pass_redelivered_ones)
{
	struct rd_rig r;
	rd_open(&r);
	pid_t p = rd_spawn(&r, 20, NULL);
	rd_publish(&r, 0, 40);
	rd_go(&r, 0, true);
	rd_kill(&r, p);
	shmbus_sub_opts_t o = {.subscriber_id = "rd", .durable = true};
	shmbus_sub_t *sub = NULL;
	cr_assert_eq(shmbus_subscribe(r.bus, &o, &sub), 0);
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	cr_expect_eq(tc_payload_u32(ev), 0);
	cr_assert_eq(shmbus_release(sub, ev), 0);
	struct seg_sub *s = bus_sub(r.bus, sub->index);
	at_fetch_or_u32(&s->flags, SEG_SUB_CATCHUP);
	at_store_release_u64(&s->gap_hi, 1);
	at_store_release_u64(&s->gap_lo, 0);
	cr_assert_eq(shmbus_poll(sub, &ev), 1);
	cr_expect_eq(tc_payload_u32(ev), 1, "after 0 came %u", tc_payload_u32(ev));
	shmbus_sub_close(sub);
	rd_close(&r);
}

static int record_all_child(void *arg)
{
	(void)arg;
	shmbus_bus_t *bus;
	shmbus_recorder_t *rec;
	if (shmbus_open(tc_bus, NULL, &bus) < 0)
		return CHILD_FAIL("open: %s", shmbus_errmsg());
	shmbus_record_opts_t o = {.sync = SHMBUS_SYNC_NONE};
	if (shmbus_recorder_open(bus, &o, &rec) < 0)
		return CHILD_FAIL("recorder_open: %s", shmbus_errmsg());
	if (shmbus_recorder_run(rec, -1) < 0)
		return CHILD_FAIL("run: %s", shmbus_errmsg());
	return 0;
}

/* A tombstone at the head of a durable lag subscription's queue (a dead
 * publisher's aborted descriptor, turned into one by reclaim) carries no
 * sequence: the next congestion drain must not read it as sequence 0 and
 * open a catch-up gap there, which served from the log every event the
 * subscriber had already had. Found by review. */
Test(crash, a_tombstone_at_the_head_of_a_drained_queue_opens_no_gap_at_zero)
{
	(void)tc_log_root();
	shmbus_config_t cfg = tc_small_cfg();
	cfg.block_timeout_ns = 10 * TC_SEC_NS;
	cfg.stall_timeout_ns = 10 * TC_SEC_NS;
	shmbus_bus_t *bus = tc_create(&cfg);
	pid_t rec = tc_fork(record_all_child, NULL);
	shmbus_sub_id_t id;
	for (int i = 0; i < 5000 && shmbus_find_subscription(bus, "shmbus.recorder", &id) < 0; i++)
		tc_sleep_ms(1);
	shmbus_sub_opts_t o = {.subscriber_id = "d", .durable = true, .policy = SHMBUS_POLICY_LAG};
	shmbus_sub_t *sub = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0, "%s", shmbus_errmsg());
	shmbus_pub_t *pub = tc_pub(bus, "p", 10 * (int64_t)TC_SEC_NS);
	const shmbus_event_t *ev;
	for (uint32_t i = 0; i < 10; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "e", 0, i), 0);
	for (uint32_t i = 0; i < 10; i++) {
		cr_assert_eq(shmbus_wait(sub, TC_SEC_NS, &ev), 1);
		cr_assert_eq(tc_payload_u32(ev), i);
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	cr_assert_eq(shmbus_poll(sub, &ev), 0);
	int st;
	cr_assert_eq(tc_wait(tc_fork(rare_publisher, NULL), 10000, &st), 0);
	cr_assert(WIFSIGNALED(st));
	cr_assert_geq(shmbus_reclaim(bus), 1);
	const uint32_t n = 600; /* over two rings of 256: the lag subscription is drained */
	for (uint32_t i = 10; i < 10 + n; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "e", 0, i), 0, "%s", shmbus_errmsg());
	uint32_t next = 10, again = 0, got = 0;
	uint64_t deadline = tc_now_ns() + 10 * TC_SEC_NS;
	while (next < 10 + n && tc_now_ns() < deadline) {
		if (shmbus_wait(sub, 50 * (int64_t)TC_MS_NS, &ev) != 1)
			continue;
		uint32_t v = tc_payload_u32(ev);
		if (v < next)
			again++;
		else
			next = v + 1;
		got++;
		cr_assert_eq(shmbus_release(sub, ev), 0);
	}
	cr_expect_eq(again, 0, "%u events came again (of %u received)", again, got);
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	tc_kill9(rec);
	shmbus_close(bus);
}

/* A durable subscriber in a crash loop: C1 holds 20 and has 12 more taken
 * unseen, dies; its 32 go to the redelivery queue. C2 takes a run of 16
 * from its front, is handed one, dies. What still waited there (16..31)
 * is newer than C2's run: reclaim takes it back in with C2's before it
 * gives back, so C3 gets 0..39 in order. Found by review. */
Test(crash, a_consumer_that_dies_on_redelivered_events_keeps_them_ahead_of_the_rest)
{
	struct rd_rig r;
	rd_open(&r);
	pid_t p1 = rd_spawn(&r, 20, NULL);
	rd_publish(&r, 0, 40);
	rd_go(&r, 0, true);
	rd_kill(&r, p1);
	pid_t p2 = rd_spawn(&r, 1, NULL);
	rd_go(&r, 1, true);
	rd_kill(&r, p2);
	char got[512];
	unsigned dups;
	rd_drain(r.bus, got, sizeof got, &dups);
	cr_expect_str_eq(got, "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 "
			      "33 34 35 36 37 38 39");
	cr_expect_eq(dups, 0);
	rd_close(&r);
}

/* ---------------------------------------------- a routing change cut short */

/* Pause (or resume) subscription id and die inside, between the flag and
 * the routing bit, the table lock held. */
struct pause_death {
	shmbus_sub_id_t id;
	bool resume;
};

static int pause_and_die(void *arg)
{
	const struct pause_death *p = arg;
	setenv("SHMBUS_CRASH_AT", "pause.flagged:1", 1);
	shmbus_bus_t *bus = NULL;
	if (shmbus_open(tc_bus, NULL, &bus) < 0)
		return CHILD_FAIL("open");
	(p->resume ? shmbus_resume : shmbus_pause)(bus, p->id);
	return CHILD_FAIL("survived its crash point");
}

/* A process killed while it pauses a subscription (the flag set, the
 * routing change not finished) leaves the subscription paused: a publisher
 * that remembered where its last identical event went must walk the
 * filters again, not deliver there. The next holder of the table lock
 * finishes the change, and a resume brings the events back. */
Test(crash, a_pause_cut_short_leaves_no_publisher_delivering_from_memory)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_sub_id_t id = shmbus_sub_id(sub);
	for (uint32_t i = 0; i < 2; i++) /* the second from memory */
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "memo", 0, i), 0);
	cr_assert_eq(tc_drain(sub, NULL, NULL), 2);

	int st = 0;
	cr_assert_eq(tc_wait(tc_fork(pause_and_die, &(struct pause_death){.id = id}), 10000, &st), 0);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "pauser %s", tc_status_str(st));
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "memo", 0, 2), 0);
	const shmbus_event_t *ev = NULL;
	int rc = shmbus_poll(sub, &ev);
	cr_assert_eq(rc, 0, "delivered to a subscription paused by a process that died pausing it (%d)", rc);

	cr_assert_eq(shmbus_resume(bus, id), 0, "%s", shmbus_errmsg());
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "memo", 0, 3), 0);
	cr_assert_eq(tc_drain(sub, NULL, NULL), 1, "resumed");
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* ------------------------------------------- a filter replacement cut short */

static int replace_and_die(void *arg)
{
	(void)arg;
	setenv("SHMBUS_CRASH_AT", "filter.unrouted:1", 1);
	shmbus_bus_t *bus = NULL;
	if (shmbus_open(tc_bus, NULL, &bus) < 0)
		return CHILD_FAIL("open");
	const char *other[] = {"b"};
	shmbus_filter_t *f = NULL;
	if (shmbus_filter_names(other, 1, &f) < 0)
		return CHILD_FAIL("filter");
	shmbus_sub_t *sub;
	/* a durable re-attach with another filter: dies inside, out of
	 * routing, the table lock held */
	shmbus_subscribe(bus, &(shmbus_sub_opts_t){.subscriber_id = "keep", .durable = true, .filter = f}, &sub);
	return CHILD_FAIL("survived its crash point");
}

/* A process killed while it replaced a durable subscription's filter (the
 * subscription taken out of routing, the new filter not written yet) left
 * it out of routing for good: it got nothing, ever, and attaching again
 * with the filter it had did not help (found by an independent kill -9
 * test). The next holder of the table lock puts it back, by the filter
 * its record has. */
Test(crash, a_filter_replacement_cut_short_leaves_the_subscription_routed)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	const char *names[] = {"a"};
	shmbus_filter_t *f = NULL;
	cr_assert_eq(shmbus_filter_names(names, 1, &f), 0);
	shmbus_sub_opts_t o = {.subscriber_id = "keep", .durable = true, .filter = f};
	shmbus_sub_t *sub;
	cr_assert_eq(shmbus_subscribe(bus, &o, &sub), 0, "%s", shmbus_errmsg());
	int st = 0;
	cr_assert_eq(tc_wait(tc_fork(replace_and_die, NULL), 10000, &st), 0);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "replacer %s", tc_status_str(st));
	/* the dead replacer's member is reclaimed (under the table lock) */
	tc_sleep_ms(3 * (unsigned)(cfg.reclaim_timeout_ns / TC_MS_NS));
	cr_assert_geq(shmbus_reclaim(bus), 0, "%s", shmbus_errmsg());
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	for (uint32_t i = 0; i < 3; i++)
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "a", 0, i), 0);
	cr_assert_eq(tc_drain(sub, NULL, NULL), 3, "the subscription was left out of routing");
	shmbus_pub_close(pub);
	shmbus_filter_free(f);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}

/* A process killed while it resumed a subscription (the pause flag
 * cleared, its routing bit not set yet) left it listed as not paused and
 * receiving nothing (found by an independent kill -9 test). The next
 * holder of the table lock sets the bit from the flag. */
Test(crash, a_resume_cut_short_leaves_the_subscription_routed)
{
	shmbus_config_t cfg = tc_small_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, NULL, 0);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_sub_id_t id = shmbus_sub_id(sub);
	cr_assert_eq(shmbus_pause(bus, id), 0);
	int st = 0;
	cr_assert_eq(tc_wait(tc_fork(pause_and_die, &(struct pause_death){.id = id, .resume = true}), 10000, &st), 0);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "resumer %s", tc_status_str(st));
	tc_sleep_ms(3 * (unsigned)(cfg.reclaim_timeout_ns / TC_MS_NS));
	cr_assert_geq(shmbus_reclaim(bus), 0, "%s", shmbus_errmsg());
	shmbus_sub_info_t info;
	cr_assert_eq(shmbus_list_subscriptions(bus, NULL, &info, 1), 1);
	cr_expect_not(info.paused);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "back", 0, 1), 0);
	cr_assert_eq(tc_drain(sub, NULL, NULL), 1, "listed as resumed, routed nothing");
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
}
