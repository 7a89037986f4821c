/*
 * test_log.c - the durable log: the recorder killed with SIGKILL at random
 * points, queries on multi-segment logs, recovery from truncation and
 * flipped bytes, dead letters across restarts, and bad input (missing,
 * unusable and full directories, foreign segments, corrupt indexes).
 *
 * Every test logs under its own root, /tmp/shmbus-logtest-<run-pid>-<bus>
 * (SHMBUS_LOG_DIR), removed by .fini and, after a crash, by the run's
 * POST_ALL hook.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "dlq.h"
#include "log.h"

static char root[512];

static void log_init(void)
{
	tc_init();
	snprintf(root, sizeof root, "%s", tc_log_root());
}

static void log_fini(void)
{
	tc_remove_tree(root);
	tc_fini();
}

TestSuite(log, .init = log_init, .fini = log_fini, .timeout = 60);

/* A bus whose publishers wait long for a missing recorder rather than
 * demote it: the kill tests restart it within that time. */
static shmbus_config_t log_cfg(void)
{
	shmbus_config_t c = tc_small_cfg();
	c.slots = 1024;
	c.block_timeout_ns = 20 * TC_SEC_NS;
	c.stall_timeout_ns = 20 * TC_SEC_NS;
	return c;
}

static void seg_dir(char *out, size_t cap)
{
	snprintf(out, cap, "%s/%s", root, tc_bus);
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

struct counted {
	uint32_t next;
	uint64_t last_seq;
	bool ordered;
	uint32_t n;
};

/* The payload's first word, however long the payload is. */
static uint32_t first_word(const shmbus_event_t *ev)
{
	size_t len;
	const void *p = shmbus_event_payload(ev, &len);
	uint32_t v = UINT32_MAX;
	if (p && len >= sizeof v)
		memcpy(&v, p, sizeof v);
	return v;
}

static bool count_in_order(const shmbus_event_t *ev, void *arg)
{
	struct counted *c = arg;
	uint32_t v = first_word(ev);
	if (v != c->next || (c->n && shmbus_event_seq(ev) <= c->last_seq))
		c->ordered = false;
	c->next = v + 1;
	c->last_seq = shmbus_event_seq(ev);
	c->n++;
	return true;
}

/* Record in process until the last of ids is written (and durable). */
static shmbus_recorder_t *record_all(shmbus_bus_t *bus, const shmbus_record_opts_t *o, const shmbus_uuid_t *last)
{
	shmbus_recorder_t *rec;
	cr_assert_eq(shmbus_recorder_open(bus, o, &rec), 0, "%s", shmbus_errmsg());
	uint64_t until = shmbus_uuid_seq(last);
	for (int i = 0; i < 2000; i++) {
		shmbus_recorder_run(rec, 5 * TC_MS_NS);
		shmbus_recorder_stats_t s;
		shmbus_recorder_stats(rec, &s);
		if (s.next_seq > until && s.durable_seq > until)
			return rec;
	}
	cr_assert_fail("the recorder did not reach sequence %llu", (unsigned long long)until);
	return NULL;
}

static void publish_n(shmbus_pub_t *pub, uint32_t n, shmbus_uuid_t *ids)
{
	for (uint32_t i = 0; i < n; i++) {
		shmbus_msg_t m = {.type = i % 3 ? SHMBUS_NOTIFICATION : SHMBUS_COMMAND,
				  .name = i % 2 ? "odd" : "even",
				  .priority = i % 5 == 0 ? SHMBUS_PRIORITY_HIGH : SHMBUS_PRIORITY_NORMAL,
				  .payload = &i,
				  .payload_len = 4};
		cr_assert_eq(shmbus_publish(pub, &m, ids ? &ids[i] : NULL), 0, "publish %u: %s", i, shmbus_errmsg());
	}
}

/* 100k events, the recorder killed with SIGKILL at random points and
 * restarted: every event in the log once, in sequence order. */
Test(log, recorder_killed_at_random_points_loses_and_repeats_nothing)
{
	const uint32_t N = 100000;
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_record_opts_t o = {.sync = SHMBUS_SYNC_NONE, .segment_bytes = 1 << 20};
	pid_t rec = tc_fork(recorder_child, &o);
	/* from its first subscription on, the recorder holds events for itself
	 * (killed or not); before it, there is nothing to record them for */
	shmbus_sub_id_t rid;
	for (int i = 0; i < 5000 && shmbus_find_subscription(bus, "shmbus.recorder", &rid) < 0; i++)
		tc_sleep_ms(1);
	cr_assert_eq(shmbus_find_subscription(bus, "shmbus.recorder", &rid), 0);
	shmbus_pub_t *pub = tc_pub(bus, "killer", 20 * (int64_t)TC_SEC_NS);
	uint64_t rng = tc_mix64((uint64_t)getpid());
	uint32_t kill_at = 5000 + (uint32_t)(rng % 15000), kills = 0;
	shmbus_uuid_t last;
	for (uint32_t i = 0; i < N; i++) {
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION,
				  .name = "n",
				  .priority = i % 7 == 0 ? SHMBUS_PRIORITY_CRITICAL : SHMBUS_PRIORITY_NORMAL,
				  .payload = &i,
				  .payload_len = 4};
		cr_assert_eq(shmbus_publish(pub, &m, &last), 0, "publish %u: %s", i, shmbus_errmsg());
		if (i == kill_at) {
			tc_kill9(rec);
			kills++;
			rng = tc_mix64(rng);
			kill_at = i + 5000 + (uint32_t)(rng % 20000);
			if (rng & 1)
				tc_sleep_ms(20); /* sometimes let the ring fill while nobody records */
			rec = tc_fork(recorder_child, &o);
		}
	}
	cr_assert_geq(kills, 3);
	cr_assert_eq(shmbus_wait_durable(bus, shmbus_uuid_seq(&last), 20 * (int64_t)TC_SEC_NS), 0, "%s", shmbus_errmsg());
	tc_kill9(rec);
	struct counted c = {.ordered = true};
	int64_t got = shmbus_log_scan(bus, NULL, count_in_order, &c);
	cr_assert_eq(got, N, "%lld events in the log, want %u (last payload %u, damage: %s)", (long long)got, N, c.next - 1,
		     shmbus_log_damage_count(bus) ? shmbus_log_damage(bus, 0) : "none");
	cr_assert(c.ordered, "the log is not every event once in sequence order");
	cr_assert_eq(c.next, N);
	cr_assert_eq(shmbus_log_damage_count(bus), 0, "%s", shmbus_log_damage(bus, 0));
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

Test(log, get_event_and_time_ranges_on_a_multi_segment_log)
{
	const uint32_t N = 6000;
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, "p", -1);
	shmbus_uuid_t *ids = calloc(N, sizeof *ids);
	uint64_t *when = calloc(N, sizeof *when);
	shmbus_record_opts_t o = {.sync = SHMBUS_SYNC_BATCH, .segment_bytes = 64 << 10, .batch_ms = 1};
	shmbus_recorder_t *rec;
	cr_assert_eq(shmbus_recorder_open(bus, &o, &rec), 0, "%s", shmbus_errmsg());
	for (uint32_t i = 0; i < N; i++) {
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = i % 2 ? "odd" : "even", .source = i % 3 ? "a" : "b",
				  .payload = &i, .payload_len = 4};
		cr_assert_eq(shmbus_publish(pub, &m, &ids[i]), 0, "%s", shmbus_errmsg());
		if (i % 64 == 63)
			shmbus_recorder_run(rec, 0);
	}
	shmbus_recorder_close(rec);
	rec = record_all(bus, &o, &ids[N - 1]);
	shmbus_recorder_stats_t s;
	shmbus_recorder_stats(rec, &s);
	for (uint32_t i = 0; i < N; i++) {
		const shmbus_event_t *ev;
		cr_assert_eq(shmbus_get_event(bus, &ids[i], &ev), 0, "get %u: %s", i, shmbus_errmsg());
		cr_assert_eq(tc_payload_u32(ev), i);
		when[i] = shmbus_event_published_ns(ev);
	}
	char d[1024];
	seg_dir(d, sizeof d);
	int segs = 0;
	{
		char cmd[1200];
		snprintf(cmd, sizeof cmd, "ls %s/*.log | wc -l", d);
		FILE *p = popen(cmd, "r");
		cr_assert(p && fscanf(p, "%d", &segs) == 1);
		pclose(p);
	}
	cr_assert_gt(segs, 3, "only %d segments", segs);
	/* time ranges: exactly the events published within them */
	for (int t = 0; t < 20; t++) {
		uint32_t a = (uint32_t)(tc_mix64((uint64_t)t * 7 + 1) % N), b = (uint32_t)(tc_mix64((uint64_t)t * 7 + 2) % N);
		if (a > b) {
			uint32_t x = a;
			a = b;
			b = x;
		}
		shmbus_query_t q = {.since_ns = when[a], .until_ns = when[b], .name = t % 2 ? "odd" : NULL};
		uint32_t want = 0;
		for (uint32_t i = 0; i < N; i++)
			want += when[i] >= when[a] && when[i] <= when[b] && (!q.name || i % 2);
		const shmbus_event_t **out = calloc(N, sizeof *out);
		int64_t got = shmbus_get_events(bus, &q, out, N);
		cr_assert_eq(got, want, "range %u..%u: %lld events, want %u", a, b, (long long)got, want);
		for (int64_t k = 0; k < got; k++) {
			uint64_t w = shmbus_event_published_ns(out[k]);
			cr_assert(w >= when[a] && w <= when[b]);
			cr_assert(k == 0 || tc_payload_u32(out[k]) > tc_payload_u32(out[k - 1]));
		}
		free(out);
	}
	shmbus_query_t lim = {.source = "b", .limit = 10};
	const shmbus_event_t *ten[10];
	cr_assert_eq(shmbus_get_events(bus, &lim, ten, 10), 10);
	cr_assert_eq(tc_payload_u32(ten[9]), 27);
	/* the same sequence with another time: flipping sequence bits instead
	 * names event 255 exactly when it was published in event 0's
	 * millisecond */
	shmbus_uuid_t bogus = ids[0];
	bogus.bytes[0] ^= 0xFF;
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_get_event(bus, &bogus, &ev), -ENOENT);
	shmbus_recorder_close(rec);
	free(ids);
	free(when);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* A one-segment log of n events; returns the segment's path and the end
 * offset of every record in ends[]. */
static void make_log(shmbus_bus_t *bus, uint32_t n, char *path, size_t cap, uint64_t *ends)
{
	shmbus_pub_t *pub = tc_pub(bus, "p", -1);
	shmbus_uuid_t last;
	shmbus_record_opts_t o = {.sync = SHMBUS_SYNC_NONE};
	shmbus_recorder_t *rec;
	cr_assert_eq(shmbus_recorder_open(bus, &o, &rec), 0, "%s", shmbus_errmsg());
	for (uint32_t i = 0; i < n; i++) {
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "x", .payload = &i, .payload_len = 4};
		cr_assert_eq(shmbus_publish(pub, &m, &last), 0);
		if (i % 32 == 31)
			shmbus_recorder_run(rec, 0);
	}
	shmbus_recorder_close(rec);
	rec = record_all(bus, &o, &last);
	shmbus_recorder_close(rec);
	shmbus_pub_close(pub);
	char d[1024];
	seg_dir(d, sizeof d);
	char cmd[1200];
	snprintf(cmd, sizeof cmd, "ls %s/*.log", d);
	FILE *p = popen(cmd, "r");
	cr_assert(p && fgets(path, (int)cap, p));
	path[strcspn(path, "\n")] = 0;
	pclose(p);
	/* record ends, from the events' own sizes: 24-byte header, padded */
	uint64_t off = 4096;
	const shmbus_event_t **all = calloc(n, sizeof *all);
	cr_assert_eq(shmbus_get_events(bus, NULL, all, n), n);
	for (uint32_t i = 0; i < n; i++) {
		off += (24 + shmbus_event_size(all[i]) + 7) & ~7ull;
		ends[i] = off;
	}
	free(all);
}

static int copy_file(const char *from, const char *to)
{
	char cmd[2200];
	snprintf(cmd, sizeof cmd, "cp -f '%s' '%s'", from, to);
	return system(cmd);
}

Test(log, truncation_and_flipped_bytes_keep_every_record_before_the_damage)
{
	const uint32_t N = 400;
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	char seg[1024], saved[1100], idx[1024], idx_saved[1100];
	uint64_t *ends = calloc(N, sizeof *ends);
	make_log(bus, N, seg, sizeof seg, ends);
	snprintf(saved, sizeof saved, "%s.saved", seg);
	snprintf(idx, sizeof idx, "%.*s.idx", (int)strlen(seg) - 4, seg);
	snprintf(idx_saved, sizeof idx_saved, "%s.saved", idx);
	cr_assert_eq(copy_file(seg, saved), 0);
	cr_assert_eq(copy_file(idx, idx_saved), 0);
	uint64_t rng = tc_mix64(42 + (uint64_t)getpid());
	for (int trial = 0; trial < 16; trial++) {
		cr_assert_eq(copy_file(saved, seg), 0);
		cr_assert_eq(copy_file(idx_saved, idx), 0); /* the last recovery rewrote it */
		rng = tc_mix64(rng);
		uint64_t at = 4096 + rng % (ends[N - 1] - 4096);
		bool flip = trial % 2;
		int fd = open(seg, O_RDWR);
		cr_assert_geq(fd, 0);
		if (flip) {
			uint8_t b;
			cr_assert_eq(pread(fd, &b, 1, (off_t)at), 1);
			b ^= (uint8_t)(1u << (rng >> 60 & 7));
			cr_assert_eq(pwrite(fd, &b, 1, (off_t)at), 1);
		} else {
			cr_assert_eq(ftruncate(fd, (off_t)at), 0);
		}
		close(fd);
		/* a fresh handle reads the damaged file */
		shmbus_bus_t *b2 = tc_open();
		const shmbus_event_t **all = calloc(N, sizeof *all);
		int64_t got = shmbus_get_events(b2, NULL, all, N);
		uint32_t before = 0;
		while (before < N && ends[before] <= at)
			before++;
		if (!flip) {
			/* a truncated file is not mapped past its end: every complete record */
			cr_assert_eq(got, before, "truncated at %llu: %lld events, want %u", (unsigned long long)at,
				     (long long)got, before);
		} else {
			/* every record but the damaged one, which is reported */
			cr_assert(got == N - 1 || got == N, "flip at %llu: %lld events (%s)", (unsigned long long)at, (long long)got,
				  shmbus_log_damage_count(b2) ? shmbus_log_damage(b2, 0) : "no damage reported");
			for (int64_t k = 0; k < got && k < before; k++)
				cr_assert_eq(tc_payload_u32(all[k]), (uint32_t)k);
			if (got == N - 1)
				cr_assert_geq(shmbus_log_damage_count(b2), 1);
		}
		free(all);
		shmbus_close(b2);
		if (!flip && trial < 8) {
			/* the recorder cuts the torn tail and resumes after the
			 * last complete record */
			shmbus_bus_t *b3 = tc_open();
			shmbus_recorder_t *rec;
			cr_assert_eq(shmbus_recorder_open(b3, &(shmbus_record_opts_t){.sync = SHMBUS_SYNC_NONE}, &rec), 0,
				     "%s", shmbus_errmsg());
			shmbus_recorder_stats_t s;
			shmbus_recorder_stats(rec, &s);
			cr_assert_eq(s.next_seq, before ? (uint64_t)before : s.next_seq,
				     "resumes at %llu, want %u", (unsigned long long)s.next_seq, before);
			shmbus_recorder_close(rec);
			shmbus_close(b3);
		}
	}
	unlink(saved);
	unlink(idx_saved);
	free(ends);
	shmbus_close(bus);
}

static int dlq_child_sub(void *arg)
{
	(void)arg;
	shmbus_bus_t *bus;
	shmbus_sub_t *sub;
	shmbus_sub_opts_t o = {.subscriber_id = "worker", .durable = true};
	return tc_child_subscribe(&o, &bus, &sub); /* and exit: the durable subscription stays */
}

Test(log, dead_letters_survive_restarts_retry_delivers_clear_removes)
{
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	int st;
	cr_assert_eq(tc_wait(tc_fork(dlq_child_sub, NULL), 5000, &st), 0);
	shmbus_sub_id_t sid;
	cr_assert_eq(shmbus_find_subscription(bus, "worker", &sid), 0);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "p", -1);
	shmbus_uuid_t ids[3];
	for (uint32_t i = 0; i < 3; i++) {
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_COMMAND, "job", SHMBUS_PRIORITY_NORMAL, i), 0);
		const shmbus_event_t *ev;
		cr_assert_eq(shmbus_wait(sub, TC_SEC_NS, &ev), 1);
		ids[i] = *shmbus_event_id(ev);
		struct dlq_entry_in in = {.sub = sid, .subscriber_id = "worker", .reason = SHMBUS_DEAD_FAILED,
					  .attempts = 3 + i, .last_error = -5};
		cr_assert_eq(dlq_append(bus, ev, &in), 0, "%s", shmbus_errmsg());
		shmbus_release(sub, ev);
	}
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	shmbus_close(bus);
	/* a restart: another handle, the same letters */
	bus = tc_open();
	shmbus_dead_letter_t dl[8];
	cr_assert_eq(shmbus_dlq_list(bus, dl, 8), 3);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(memcmp(&dl[i].event_id, &ids[i], 16), 0);
		cr_assert_eq(dl[i].attempts, 3u + (unsigned)i);
		cr_assert_eq(dl[i].reason, SHMBUS_DEAD_FAILED);
		cr_assert_eq(dl[i].last_error, -5);
		cr_assert_str_eq(dl[i].subscriber_id, "worker");
		cr_assert_eq(tc_payload_u32(dl[i].event), (uint32_t)i);
	}
	/* retry: delivered again to the durable subscription, by id kept */
	shmbus_sub_t *w = NULL;
	cr_assert_eq(shmbus_subscribe(bus, &(shmbus_sub_opts_t){.subscriber_id = "worker", .durable = true}, &w), 0);
	tc_drain(w, NULL, NULL); /* the three originals */
	cr_assert_eq(shmbus_dlq_retry(bus, &ids[1]), 0, "%s", shmbus_errmsg());
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_wait(w, TC_SEC_NS, &ev), 1);
	cr_assert_eq(memcmp(shmbus_event_id(ev), &ids[1], 16), 0);
	cr_assert_eq(tc_payload_u32(ev), 1u);
	cr_assert(shmbus_event_flags(ev) & SHMBUS_FLAG_DIRECTED);
	shmbus_release(w, ev);
	cr_assert_eq(shmbus_dlq_retry(bus, &ids[1]), -ENOENT);
	cr_assert_eq(shmbus_dlq_clear(bus, &ids[0]), 0);
	cr_assert_eq(shmbus_dlq_clear(bus, &ids[0]), -ENOENT);
	shmbus_close(bus);
	bus = tc_open();
	cr_assert_eq(shmbus_dlq_list(bus, dl, 8), 1);
	cr_assert_eq(memcmp(&dl[0].event_id, &ids[2], 16), 0);
	shmbus_close(bus);
}

struct dlq_append_arg {
	const shmbus_event_t *ev;
	uint32_t first_attempt, n;
};

/* Dead-letter a->ev a->n times, the attempts counting from first_attempt,
 * with one append each, from this process's own handle. */
static int dlq_append_n(shmbus_bus_t *bus, const struct dlq_append_arg *a)
{
	for (uint32_t i = 0; i < a->n; i++) {
		struct dlq_entry_in in = {.reason = SHMBUS_DEAD_FAILED, .attempts = a->first_attempt + i};
		if (dlq_append(bus, a->ev, &in) < 0)
			return -1;
	}
	return 0;
}

static int dlq_child_append(void *arg)
{
	shmbus_bus_t *bus;
	if (shmbus_open(tc_bus, NULL, &bus) < 0)
		return CHILD_FAIL("open: %s", shmbus_errmsg());
	if (dlq_append_n(bus, arg) < 0)
		return CHILD_FAIL("dlq_append: %s", shmbus_errmsg());
	shmbus_close(bus);
	return 0;
}

/* The attempts of the live letters, in log order, as "1 2 3". */
static void letter_attempts(shmbus_bus_t *bus, char *out, size_t cap)
{
	shmbus_dead_letter_t dl[16];
	int n = shmbus_dlq_list(bus, dl, 16);
	cr_assert_geq(n, 0, "%s", shmbus_errmsg());
	size_t len = 0;
	out[0] = '\0';
	for (int i = 0; i < n && i < 16 && len < cap; i++)
		len += (size_t)snprintf(out + len, cap - len, "%s%u", i ? " " : "", dl[i].attempts);
}

/* The next event sub gets, as a private copy (the slot is released). */
static shmbus_event_t *take_copy(shmbus_sub_t *sub)
{
	const shmbus_event_t *ev;
	shmbus_event_t *copy;
	cr_assert_eq(shmbus_wait(sub, TC_SEC_NS, &ev), 1);
	cr_assert_eq(shmbus_event_copy(ev, &copy), 0);
	shmbus_release(sub, ev);
	return copy;
}

/* The path of bus's dead-letter log. */
static void dead_log_path(shmbus_bus_t *bus, char *path, size_t cap)
{
	char dir[PATH_MAX];
	cr_assert_gt(shmbus_log_dir(bus, dir, sizeof dir), 0);
	snprintf(path, cap, "%s/dead.log", dir);
}

/* An append walks only what other processes added since this process's
 * last one (dlq_find_end): its next record must still land after theirs,
 * and a log removed and made again (on a new inode or, on some file
 * systems, the same one) must be walked from its start. */
Test(log, dead_letters_of_two_processes_and_a_remade_log_land_after_the_last_record)
{
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "p", -1);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_COMMAND, "job", SHMBUS_PRIORITY_NORMAL, 7), 0);
	shmbus_event_t *copy = take_copy(sub);

	cr_assert_eq(dlq_append_n(bus, &(struct dlq_append_arg){copy, 1, 1}), 0, "%s", shmbus_errmsg());
	struct dlq_append_arg other = {copy, 2, 2};
	int st;
	cr_assert_eq(tc_wait(tc_fork(dlq_child_append, &other), 5000, &st), 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: %s", tc_status_str(st));
	cr_assert_eq(dlq_append_n(bus, &(struct dlq_append_arg){copy, 4, 1}), 0, "%s", shmbus_errmsg());
	char got[128];
	letter_attempts(bus, got, sizeof got);
	cr_expect_str_eq(got, "1 2 3 4", "letters in the log: %s", got);

	char path[PATH_MAX + 16];
	dead_log_path(bus, path, sizeof path);
	struct stat four;
	cr_assert_eq(stat(path, &four), 0);
	off_t record = (four.st_size - LOG_DATA_OFF) / 4;
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(dlq_append_n(bus, &(struct dlq_append_arg){copy, 5, 1}), 0, "%s", shmbus_errmsg());
	struct stat one;
	cr_assert_eq(stat(path, &one), 0);
	cr_expect_eq(one.st_size, LOG_DATA_OFF + record, "a remade log of one letter has %lld bytes, not %lld",
		     (long long)one.st_size, (long long)(LOG_DATA_OFF + record));
	letter_attempts(bus, got, sizeof got);
	cr_expect_str_eq(got, "5", "letters in the remade log: %s", got);
	shmbus_event_free(copy);
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* A log cut back by hand (`: > dead.log`) and grown again by another
 * process past where this process saw its end: that offset now lies
 * inside the other's records, and an append from there would write over
 * one of them. The append must notice and walk from the start. */
Test(log, a_dead_letter_log_cut_back_and_grown_again_by_another_is_walked_from_its_start)
{
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "p", -1);
	static uint8_t big[1000];
	shmbus_msg_t m = {.type = SHMBUS_COMMAND, .name = "job", .payload = big, .payload_len = sizeof big};
	cr_assert_eq(shmbus_publish(pub, &m, NULL), 0, "%s", shmbus_errmsg());
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_COMMAND, "job", SHMBUS_PRIORITY_NORMAL, 7), 0);
	shmbus_event_t *copy[2];
	copy[0] = take_copy(sub); /* the big one: in two statements, in this order */
	copy[1] = take_copy(sub);
	char path[PATH_MAX + 16];
	dead_log_path(bus, path, sizeof path);

	/* cut to its header (kept), then to nothing (a new header comes) */
	const off_t cuts[] = {LOG_DATA_OFF, 0};
	for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
		cr_assert(c == 0 || unlink(path) == 0); /* each cut starts from an empty log */
		cr_assert_eq(dlq_append_n(bus, &(struct dlq_append_arg){copy[0], 1, 1}), 0, "%s", shmbus_errmsg());
		struct stat seen;
		cr_assert_eq(stat(path, &seen), 0);
		cr_assert_eq(truncate(path, cuts[c]), 0);
		struct dlq_append_arg other = {copy[1], 2, 4};
		int st;
		cr_assert_eq(tc_wait(tc_fork(dlq_child_append, &other), 5000, &st), 0);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: %s", tc_status_str(st));
		struct stat grown;
		cr_assert_eq(stat(path, &grown), 0);
		cr_assert_gt(grown.st_size, seen.st_size, "the other letters must reach past the end this process saw");
		cr_assert_eq(dlq_append_n(bus, &(struct dlq_append_arg){copy[1], 6, 1}), 0, "%s", shmbus_errmsg());
		char got[128];
		letter_attempts(bus, got, sizeof got);
		cr_expect_str_eq(got, "2 3 4 5 6", "cut to %lld bytes: letters in the log: %s", (long long)cuts[c], got);
	}
	for (int i = 0; i < 2; i++)
		shmbus_event_free(copy[i]);
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* Every letter says what became of it, also when the append fails before
 * it tries any: a caller that tells on_dead by the letter's result must
 * never hear "written" of a letter that is not in the log. */
Test(log, a_failed_dead_letter_append_fails_every_letter)
{
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_sub_t *sub = tc_sub(bus, NULL);
	shmbus_pub_t *pub = tc_pub(bus, "p", -1);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_COMMAND, "job", SHMBUS_PRIORITY_NORMAL, 7), 0);
	const shmbus_event_t *ev;
	cr_assert_eq(shmbus_wait(sub, TC_SEC_NS, &ev), 1);
	struct dlq_entry_in in = {.reason = SHMBUS_DEAD_FAILED};
	/* a letter without an entry: nothing is written, both letters fail */
	struct dlq_letter l[2] = {{.ev = ev, .in = &in, .rc = 0}, {.ev = ev, .in = NULL, .rc = 0}};
	cr_expect_eq(dlq_append_letters(bus, l, 2), -EINVAL);
	cr_expect_lt(l[0].rc, 0, "letter 0 says %d though nothing was written", l[0].rc);
	cr_expect_lt(l[1].rc, 0);
	cr_expect_eq(shmbus_dlq_list(bus, NULL, 0), 0);
	/* both valid: both written, in order */
	l[1].in = &in;
	cr_expect_eq(dlq_append_letters(bus, l, 2), 2, "%s", shmbus_errmsg());
	cr_expect_eq(l[0].rc, 0);
	cr_expect_eq(l[1].rc, 0);
	cr_expect_eq(shmbus_dlq_list(bus, NULL, 0), 2);
	shmbus_release(sub, ev);
	shmbus_sub_close(sub);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

Test(log, replay_to_one_subscription_and_republished)
{
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, "p", -1);
	shmbus_uuid_t ids[50];
	publish_n(pub, 50, ids);
	/* nothing recorded yet: the recorder starts after these, from the ring */
	shmbus_recorder_t *rec = record_all(bus, &(shmbus_record_opts_t){.sync = SHMBUS_SYNC_NONE}, &ids[49]);
	shmbus_sub_t *a = tc_sub(bus, NULL), *b = tc_sub(bus, NULL);
	shmbus_query_t q = {.name = "odd"};
	cr_assert_eq(shmbus_replay_to(bus, &q, shmbus_sub_id(a)), 25, "%s", shmbus_errmsg());
	const shmbus_event_t *ev;
	uint64_t seen = 0; /* urgent ones come first: compare as a set */
	for (uint32_t i = 0; i < 25; i++) {
		cr_assert_eq(shmbus_wait(a, TC_SEC_NS, &ev), 1);
		uint32_t v = tc_payload_u32(ev);
		cr_assert(v % 2 == 1 && v < 50 && !(seen >> v & 1), "replayed %u", v);
		seen |= 1ull << v;
		cr_assert(shmbus_event_flags(ev) & SHMBUS_FLAG_REPLAYED);
		shmbus_release(a, ev);
	}
	cr_assert_eq(shmbus_poll(b, &ev), 0, "replay to a reached another subscription");
	q.limit = 2;
	cr_assert_eq(shmbus_replay_republish(pub, &q), 2, "%s", shmbus_errmsg());
	for (uint32_t i = 0; i < 2; i++) {
		cr_assert_eq(shmbus_wait(b, TC_SEC_NS, &ev), 1);
		cr_assert_eq(tc_payload_u32(ev), 2 * i + 1); /* 1, 3: neither urgent */
		cr_assert(shmbus_event_flags(ev) & SHMBUS_FLAG_REPLAYED);
		cr_assert_eq(memcmp(shmbus_event_correlation_id(ev), &ids[2 * i + 1], 16), 0);
		shmbus_release(b, ev);
	}
	shmbus_recorder_close(rec);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* ------------------------------------------------------------ bad input */

Test(log, unusable_directories_give_clear_errors)
{
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_uuid_t id = {{0}};
	const shmbus_event_t *ev;
	/* missing: no log yet */
	cr_assert_eq(shmbus_get_event(bus, &id, &ev), -ENOENT);
	cr_assert(strstr(shmbus_errmsg(), root), "%s", shmbus_errmsg());
	/* not a directory */
	mkdir(root, 0700);
	char d[1024];
	seg_dir(d, sizeof d);
	FILE *f = fopen(d, "w");
	cr_assert_not_null(f);
	fclose(f);
	shmbus_recorder_t *rec;
	cr_assert_lt(shmbus_recorder_open(bus, &(shmbus_record_opts_t){.no_wait = true}, &rec), 0);
	cr_assert(strstr(shmbus_errmsg(), d), "%s", shmbus_errmsg());
	/* a file as the log root, or above it, is refused when it is set */
	shmbus_bus_t *b2 = NULL;
	cr_assert_eq(shmbus_open(tc_bus, NULL, &b2), 0);
	char under[1100];
	snprintf(under, sizeof under, "%s/logs", d);
	cr_assert_eq(shmbus_log_configure(b2, &(shmbus_log_config_t){.dir = d}), -ENOTDIR, "%s", shmbus_errmsg());
	cr_assert_eq(shmbus_log_configure(b2, &(shmbus_log_config_t){.dir = under}), -ENOTDIR, "%s", shmbus_errmsg());
	shmbus_close(b2);
	unlink(d);
	/* full: a file size limit makes the segment allocation fail */
	struct rlimit old, lim = {.rlim_cur = 1 << 16, .rlim_max = RLIM_INFINITY};
	getrlimit(RLIMIT_FSIZE, &old);
	lim.rlim_max = old.rlim_max;
	signal(SIGXFSZ, SIG_IGN);
	setrlimit(RLIMIT_FSIZE, &lim);
	shmbus_pub_t *pub = tc_pub(bus, "p", -1);
	cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "x", 0, 1), 0);
	int rc = shmbus_recorder_open(bus, &(shmbus_record_opts_t){.no_wait = true, .sync = SHMBUS_SYNC_NONE}, &rec);
	int64_t ran = rc == 0 ? shmbus_recorder_run(rec, 100 * TC_MS_NS) : rc;
	setrlimit(RLIMIT_FSIZE, &old);
	cr_assert_lt(ran, 0, "recording into a full directory succeeded");
	cr_assert(strstr(shmbus_errmsg(), "cannot allocate") || strstr(shmbus_errmsg(), "full"), "%s", shmbus_errmsg());
	if (rc == 0)
		shmbus_recorder_close(rec);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

static void on_usr1(int sig) { (void)sig; }

/* Whether pid ends within ms (0 and *status), -ETIMEDOUT if not: unlike
 * tc_wait, it leaves pid alive. */
static int ended_within(pid_t pid, int ms, int *status)
{
	for (int i = 0; i <= ms; i += 10) {
		if (waitpid(pid, status, WNOHANG) == pid)
			return 0;
		tc_sleep_ms(10);
	}
	return -ETIMEDOUT;
}

/* A standby recorder in shmbus_recorder_open: -EINTR once a handler
 * installed without SA_RESTART runs. */
static int standby_child(void *arg)
{
	const int *ready = arg; /* a pipe's write end */
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1; /* no SA_RESTART */
	sigaction(SIGUSR1, &sa, NULL);
	shmbus_bus_t *bus;
	shmbus_recorder_t *rec;
	if (shmbus_open(tc_bus, NULL, &bus) < 0)
		return CHILD_FAIL("open: %s", shmbus_errmsg());
	if (tc_write_byte(*ready, 'r') < 0)
		return CHILD_FAIL("ready pipe");
	int rc = shmbus_recorder_open(bus, &(shmbus_record_opts_t){.sync = SHMBUS_SYNC_NONE}, &rec);
	if (rc != -EINTR)
		return CHILD_FAIL("standby recorder_open: %d (%s), want -EINTR", rc, shmbus_errmsg());
	if (!strstr(shmbus_errmsg(), "interrupted"))
		return CHILD_FAIL("message: %s", shmbus_errmsg());
	shmbus_close(bus);
	return 0;
}

/* Once it stopped ignoring signals, a standby recorder could only be
 * killed: it waited for the role in a lock wait that retried on EINTR. */
Test(log, a_standby_recorder_gives_up_its_wait_on_a_signal)
{
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_recorder_t *rec;
	cr_assert_eq(shmbus_recorder_open(bus, &(shmbus_record_opts_t){.no_wait = true, .sync = SHMBUS_SYNC_NONE}, &rec),
		     0, "%s", shmbus_errmsg());
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	pid_t pid = tc_fork(standby_child, &fds[1]);
	char c;
	cr_assert_eq(tc_read_byte(fds[0], 5000, &c), 0, "the standby never got ready");
	close(fds[0]);
	close(fds[1]);
	int status = 0;
	/* again until it ends: a signal that comes before its wait begins
	 * is handled and lost, as for any blocking call */
	bool ended = false;
	for (int i = 0; i < 100 && !ended; i++) {
		kill(pid, SIGUSR1);
		ended = ended_within(pid, 50, &status) == 0;
	}
	if (!ended)
		tc_kill9(pid);
	cr_assert(ended, "the standby recorder did not give up its wait");
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "standby: %s", tc_status_str(status));
	shmbus_recorder_close(rec);
	shmbus_close(bus);
}

/* `shmbus record` on a bus that has a recorder stands by: SIGTERM ends it
 * with status 0, and one left standing takes over when the recorder goes. */
Test(log, the_cli_standby_recorder_stops_on_sigterm_and_takes_over)
{
	const char *cli = tc_tool("SHMBUS_CLI");
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_recorder_t *rec;
	cr_assert_eq(shmbus_recorder_open(bus, &(shmbus_record_opts_t){.no_wait = true, .sync = SHMBUS_SYNC_NONE}, &rec),
		     0, "%s", shmbus_errmsg());
	for (int round = 0; round < 2; round++) {
		pid_t pid = fork();
		cr_assert_geq(pid, 0);
		if (pid == 0) {
			int null = open("/dev/null", O_WRONLY);
			dup2(null, 2);
			execl(cli, cli, "record", tc_bus, (char *)NULL);
			_exit(127);
		}
		tc_sleep_ms(300); /* standing by */
		int status = 0;
		if (round == 0) {
			cr_assert_neq(ended_within(pid, 0, &status), 0, "the standby recorder ended by itself: %s",
				      tc_status_str(status));
			kill(pid, SIGTERM);
			cr_assert_eq(tc_wait(pid, 5000, &status), 0, "a standby recorder ignored SIGTERM");
			cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "standby after SIGTERM: %s",
				  tc_status_str(status));
			continue;
		}
		shmbus_recorder_close(rec); /* the standby's turn */
		shmbus_pub_t *pub = tc_pub(bus, "p", -1);
		cr_assert_eq(tc_publish_u32(pub, SHMBUS_NOTIFICATION, "x", 0, 7), 0);
		shmbus_pub_close(pub);
		/* recorded once the standby took over: poll the log */
		int64_t n = 0;
		for (int i = 0; i < 100 && n < 1; i++) {
			tc_sleep_ms(50);
			n = shmbus_get_events(bus, &(shmbus_query_t){0}, NULL, 0);
		}
		kill(pid, SIGTERM);
		cr_assert_eq(tc_wait(pid, 5000, &status), 0, "the recorder ignored SIGTERM");
		cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "recorder after SIGTERM: %s",
			  tc_status_str(status));
		cr_assert_eq(n, 1, "the standby did not record the event after taking over (%lld)", (long long)n);
	}
	shmbus_close(bus);
}

/* `shmbus record --dir D` makes D the bus's log root: what it records is
 * found by get and events (it was written where nothing looked), and a
 * bus that logs elsewhere refuses another root. */
Test(log, the_cli_recorder_dir_becomes_the_bus_log_root)
{
	const char *cli = tc_tool("SHMBUS_CLI");
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	char dir[600];
	snprintf(dir, sizeof dir, "%s/elsewhere", root);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 2);
		execl(cli, cli, "record", tc_bus, "--dir", dir, "--sync", "none", (char *)NULL);
		_exit(127);
	}
	shmbus_pub_t *pub = tc_pub(bus, "p", -1);
	shmbus_uuid_t id;
	uint32_t v = 5;
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "x", .payload = &v, .payload_len = 4};
	cr_assert_eq(shmbus_publish(pub, &m, &id), 0);
	const shmbus_event_t *ev = NULL;
	/* looked for at once, before the recorder set the root (at once under
	 * a sanitizer, whose start is slow): that lookup must not stick */
	int rc = shmbus_get_event(bus, &id, &ev);
	for (int i = 0; i < 200 && rc != 0; i++) {
		tc_sleep_ms(25);
		rc = shmbus_get_event(bus, &id, &ev);
	}
	kill(pid, SIGTERM);
	int status;
	cr_assert_eq(tc_wait(pid, 5000, &status), 0);
	cr_assert_eq(rc, 0, "the event recorded under --dir is not found: %s", shmbus_errmsg());
	cr_assert_eq(tc_payload_u32(ev), 5);
	char got[1024], want[1200];
	cr_assert_gt(shmbus_log_dir(bus, got, sizeof got), 0);
	snprintf(want, sizeof want, "%s/%s", dir, tc_bus);
	cr_assert_str_eq(got, want);
	/* another root for the same bus is refused */
	char other[700];
	snprintf(other, sizeof other, "%s/other", root);
	char *argv[] = {(char *)cli, "record", tc_bus, "--dir", other, NULL};
	struct tc_run_result r;
	cr_assert_eq(tc_run(argv, 10000, &r), 0);
	cr_expect(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 1, "record --dir OTHER: %s", tc_status_str(r.status));
	cr_expect(strstr(r.err, "already logs to"), "%s", r.err);
	tc_run_free(&r);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

struct roll_publisher {
	shmbus_bus_t *bus;
	shmbus_recorder_t *rec;
	uint32_t n, published;
	shmbus_uuid_t last;
};

static void *roll_publish(void *arg)
{
	struct roll_publisher *p = arg;
	shmbus_pub_t *pub = NULL;
	if (shmbus_pub_open(p->bus, NULL, &pub) == 0) {
		static char payload[300];
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "roll", .payload = payload,
				  .payload_len = sizeof payload};
		while (p->published < p->n && shmbus_publish(pub, &m, &p->last) == 0)
			p->published++;
		shmbus_pub_close(pub);
	}
	shmbus_recorder_stop(p->rec);
	return NULL;
}

/* Recording at sync batch through rolls of small segments: an fsync still
 * in flight at a roll ran on the sealed segment's closed descriptor, failed
 * with EBADF and took the recorder down (7 runs in 8 on an independent
 * tester's disk), and nothing published after that was recorded. The
 * reproducer is unit/a_log_sync_in_flight_outlives_the_callers_descriptor;
 * this is the whole path, through io_uring here and on plain fdatasync in
 * the log-fallback suite. */
Test(log, a_batch_sync_in_flight_survives_segment_rolls)
{
	shmbus_config_t cfg = tc_small_cfg();
	cfg.slots = 256;
	cfg.max_payload = 4096;
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_record_opts_t o = {.segment_bytes = 64 << 10, .sync = SHMBUS_SYNC_BATCH};
	struct roll_publisher p = {.bus = bus, .n = 20000};
	cr_assert_eq(shmbus_recorder_open(bus, &o, &p.rec), 0, "%s", shmbus_errmsg());
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, roll_publish, &p), 0);
	int64_t ran = shmbus_recorder_run(p.rec, -1);
	char why[256];
	snprintf(why, sizeof why, "%s", ran < 0 ? shmbus_errmsg() : "");
	if (ran < 0)
		shmbus_recorder_stop(p.rec);
	pthread_join(t, NULL);
	shmbus_recorder_stats_t st;
	shmbus_recorder_stats(p.rec, &st);
	shmbus_recorder_close(p.rec);
	cr_assert_geq(ran, 0, "the recorder failed after %llu events: %s", (unsigned long long)st.recorded, why);
	cr_expect_eq(p.published, p.n);
	cr_expect_gt(st.segments, 10, "only %u segments: no rolls to test", st.segments);
	/* whatever the stop left unrecorded comes with the next recorder */
	shmbus_recorder_t *rec = record_all(bus, &(shmbus_record_opts_t){.sync = SHMBUS_SYNC_NONE}, &p.last);
	shmbus_recorder_close(rec);
	cr_expect_eq(shmbus_get_events(bus, NULL, NULL, 0), p.n);
	shmbus_close(bus);
}

/* A zero-copy claim held 300 ms while another publisher publishes 30
 * events 5 ms apart: a query up to the 10th of them finds those 10. It
 * found none: the scan stopped at the slow event, first in sequence order,
 * whose publish time passed the window (found by an independent test). */
Test(log, a_late_commit_does_not_hide_the_events_published_behind_it)
{
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *slow = tc_pub(bus, "slow", -1), *quick = tc_pub(bus, "quick", -1);
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "slow"};
	shmbus_claim_t claim;
	cr_assert_eq(shmbus_reserve(slow, &m, 4, &claim), 0, "%s", shmbus_errmsg());
	memset(claim.payload, 0, 4);
	shmbus_uuid_t ids[31];
	for (uint32_t i = 0; i < 30; i++) {
		tc_sleep_ms(5);
		uint32_t v = i;
		shmbus_msg_t q = {.type = SHMBUS_NOTIFICATION, .name = "quick", .payload = &v, .payload_len = 4};
		cr_assert_eq(shmbus_publish(quick, &q, &ids[i]), 0, "%s", shmbus_errmsg());
	}
	tc_sleep_ms(150);
	cr_assert_eq(shmbus_commit(slow, &claim, &ids[30]), 0, "%s", shmbus_errmsg());
	uint64_t last = shmbus_uuid_seq(&ids[30]) > shmbus_uuid_seq(&ids[29]) ? 30 : 29;
	shmbus_recorder_t *rec = record_all(bus, &(shmbus_record_opts_t){.sync = SHMBUS_SYNC_NONE}, &ids[last]);
	shmbus_recorder_close(rec);
	const shmbus_event_t *tenth;
	cr_assert_eq(shmbus_get_event(bus, &ids[9], &tenth), 0, "%s", shmbus_errmsg());
	shmbus_query_t q = {.until_ns = shmbus_event_published_ns(tenth)};
	const shmbus_event_t *out[40];
	int64_t got = shmbus_get_events(bus, &q, out, 40);
	cr_assert_eq(got, 10, "a query up to the 10th quick event found %lld", (long long)got);
	for (int i = 0; i < 10; i++)
		cr_expect_eq(tc_payload_u32(out[i]), (uint32_t)i);
	shmbus_pub_close(slow);
	shmbus_pub_close(quick);
	shmbus_close(bus);
}

/* `shmbus rm` of a bus made again under the name of one removed with
 * --keep-log leaves the kept log alone (it deleted it: found by an
 * independent test), and removes a log that is all its own. */
Test(log, rm_keeps_a_log_kept_from_an_earlier_bus_of_the_name)
{
	const char *cli = tc_tool("SHMBUS_CLI");
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	char path[1200];
	uint64_t ends[4];
	make_log(bus, 4, path, sizeof path, ends);
	shmbus_close(bus);
	char *keep[] = {(char *)cli, "rm", tc_bus, "--keep-log", NULL};
	struct tc_run_result r;
	cr_assert_eq(tc_run(keep, 10000, &r), 0);
	cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0, "rm --keep-log: %s", r.err);
	tc_run_free(&r);
	bus = tc_create(&cfg); /* the same name again: another incarnation */
	cr_assert_eq(shmbus_log_owned(bus), 0, "the kept log is not the new bus's");
	shmbus_close(bus);
	char *rm[] = {(char *)cli, "rm", tc_bus, NULL};
	cr_assert_eq(tc_run(rm, 10000, &r), 0);
	cr_expect(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0, "rm: %s", r.err);
	cr_expect(strstr(r.err, "left in place"), "%s", r.err);
	tc_run_free(&r);
	cr_assert_eq(access(path, F_OK), 0, "rm deleted the log kept from the earlier bus");
	/* a log all of its own goes with its bus */
	bus = tc_create(&cfg);
	char other[1200];
	seg_dir(other, sizeof other);
	tc_remove_tree(other);
	make_log(bus, 4, path, sizeof path, ends);
	cr_assert_eq(shmbus_log_owned(bus), 1);
	shmbus_close(bus);
	cr_assert_eq(tc_run(rm, 10000, &r), 0);
	tc_run_free(&r);
	cr_assert_neq(access(path, F_OK), 0, "rm left the bus's own log");
}

/* chattr on the log tree; 0 when it worked (root on a filesystem that has
 * the immutable flag: ext4, xfs, tmpfs since 6.0). */
static int set_immutable(const char *dir, bool on)
{
	char cmd[1200];
	snprintf(cmd, sizeof cmd, "chattr -R %ci '%s' 2>/dev/null", on ? '+' : '-', dir);
	return system(cmd);
}

Test(log, a_read_only_log_directory_gives_clear_errors_and_keeps_its_records)
{
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, "p", 0);
	shmbus_uuid_t ids[5];
	for (uint32_t i = 0; i < 5; i++) {
		uint32_t v = i;
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "ro", .payload = &v, .payload_len = 4};
		cr_assert_eq(shmbus_publish(pub, &m, &ids[i]), 0);
	}
	shmbus_recorder_t *rec;
	cr_assert_eq(shmbus_recorder_open(bus, &(shmbus_record_opts_t){.no_wait = true, .sync = SHMBUS_SYNC_NONE}, &rec), 0,
		     "%s", shmbus_errmsg());
	cr_assert_eq(shmbus_recorder_run(rec, 0), 5, "%s", shmbus_errmsg());
	shmbus_recorder_close(rec);
	char d[1024];
	seg_dir(d, sizeof d);
	/* root is not bound by permission bits: the immutable flag stands in
	 * for a read-only directory (and a read-only mount) */
	if (set_immutable(d, true) != 0)
		cr_skip_test("chattr +i is not available here");
	/* from here until the flag is off again, nothing may abort the test */
	int rc = shmbus_recorder_open(bus, &(shmbus_record_opts_t){.no_wait = true}, &rec);
	if (rc == 0) {
		int64_t ran = shmbus_recorder_run(rec, 100 * TC_MS_NS);
		cr_expect_lt(ran, 0, "recording into a read-only directory succeeded");
		shmbus_recorder_close(rec);
	}
	cr_expect(strstr(shmbus_errmsg(), d) != NULL, "the error names the directory: %s", shmbus_errmsg());
	/* what is on disk stays readable */
	int found = 0;
	for (int i = 0; i < 5; i++) {
		const shmbus_event_t *ev;
		if (shmbus_get_event(bus, &ids[i], &ev) == 0 && tc_payload_u32(ev) == (uint32_t)i)
			found++;
	}
	cr_expect_eq(found, 5, "records before the damage are kept: %d of 5 (%s)", found, shmbus_errmsg());
	set_immutable(d, false);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

Test(log, foreign_segments_and_versions_are_refused_by_name)
{
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	char seg[1024];
	uint64_t ends[20];
	make_log(bus, 20, seg, sizeof seg, ends);
	/* another version */
	int fd = open(seg, O_RDWR);
	uint32_t v = 77, orig;
	cr_assert_eq(pread(fd, &orig, 4, 8), 4);
	cr_assert_eq(pwrite(fd, &v, 4, 8), 4);
	shmbus_recorder_t *rec;
	cr_assert_eq(shmbus_recorder_open(bus, &(shmbus_record_opts_t){.no_wait = true}, &rec), -EPROTO);
	cr_assert(strstr(shmbus_errmsg(), seg) && strstr(shmbus_errmsg(), "version"), "%s", shmbus_errmsg());
	cr_assert_eq(pwrite(fd, &orig, 4, 8), 4);
	close(fd);
	/* another bus: the same name created again is another incarnation */
	shmbus_close(bus);
	shmbus_unlink(tc_bus);
	bus = tc_create(&cfg);
	cr_assert_eq(shmbus_recorder_open(bus, &(shmbus_record_opts_t){.no_wait = true}, &rec), -EPROTO);
	cr_assert(strstr(shmbus_errmsg(), seg) && strstr(shmbus_errmsg(), "belongs to"), "%s", shmbus_errmsg());
	/* the records stay: nothing was touched */
	struct stat st;
	cr_assert_eq(stat(seg, &st), 0);
	shmbus_close(bus);
}

Test(log, a_corrupt_index_is_reported_and_rebuilt)
{
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, "p", -1);
	shmbus_uuid_t ids[30];
	publish_n(pub, 30, ids);
	shmbus_recorder_t *rec = record_all(bus, &(shmbus_record_opts_t){.sync = SHMBUS_SYNC_NONE}, &ids[29]);
	shmbus_recorder_close(rec);
	char idx[1200], d[1024];
	seg_dir(d, sizeof d);
	snprintf(idx, sizeof idx, "%s/%020llu.idx", d, (unsigned long long)shmbus_uuid_seq(&ids[0]));
	int fd = open(idx, O_RDWR);
	cr_assert_geq(fd, 0, "%s: %s", idx, strerror(errno));
	uint8_t junk[8192];
	memset(junk, 0xA5, sizeof junk);
	cr_assert_eq(pwrite(fd, junk, sizeof junk, 4096), (ssize_t)sizeof junk); /* position table */
	close(fd);
	shmbus_bus_t *b2 = tc_open();
	for (int i = 0; i < 30; i++) {
		const shmbus_event_t *ev;
		cr_assert_eq(shmbus_get_event(b2, &ids[i], &ev), 0, "%d: %s", i, shmbus_errmsg());
		cr_assert_eq(tc_payload_u32(ev), (uint32_t)i);
	}
	cr_assert_geq(shmbus_log_damage_count(b2), 1);
	cr_assert(strstr(shmbus_log_damage(b2, 0), idx) || strstr(shmbus_log_damage(b2, 0), ".log"), "%s",
		  shmbus_log_damage(b2, 0));
	shmbus_close(b2);
	/* a damaged index header: rebuilt by the recorder too */
	fd = open(idx, O_RDWR);
	cr_assert_eq(pwrite(fd, junk, 64, 0), 64);
	close(fd);
	cr_assert_eq(shmbus_recorder_open(bus, &(shmbus_record_opts_t){.no_wait = true}, &rec), 0, "%s", shmbus_errmsg());
	shmbus_recorder_stats_t s;
	shmbus_recorder_stats(rec, &s);
	cr_assert_gt(s.next_seq, shmbus_uuid_seq(&ids[29]));
	shmbus_recorder_close(rec);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}

/* Flip the bits of the byte at off in the file at path. */
static void damage_byte(const char *path, uint64_t off)
{
	int fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
	uint8_t b;
	cr_assert_eq(pread(fd, &b, 1, (off_t)off), 1);
	b ^= 0x5A;
	cr_assert_eq(pwrite(fd, &b, 1, (off_t)off), 1);
	close(fd);
}

static bool collect_id(const shmbus_event_t *ev, void *arg)
{
	shmbus_uuid_t *ids = arg;
	ids[first_word(ev)] = *shmbus_event_id(ev);
	return true;
}

/* How many of ids[0..n) the log returns with their own payload; the one
 * at `damaged` must not come back. */
static int readable_around(shmbus_bus_t *bus, const shmbus_uuid_t *ids, int n, int damaged)
{
	int found = 0;
	for (int i = 0; i < n; i++) {
		const shmbus_event_t *ev;
		int rc = shmbus_get_event(bus, &ids[i], &ev);
		if (i == damaged)
			cr_assert_lt(rc, 0, "the damaged record was returned");
		else if (rc == 0 && tc_payload_u32(ev) == (uint32_t)i)
			found++;
	}
	return found;
}

/* A record damaged in the middle of a segment whose index is then lost:
 * the index rebuilt from the records, by a reader and by the next
 * recorder, goes on past the damage (it used to end there, and every
 * intact record after it could no longer be read). */
Test(log, a_lost_index_is_rebuilt_past_a_damaged_record)
{
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	enum { N = 30, BAD = 10 };
	char path[1200];
	uint64_t ends[N];
	make_log(bus, N, path, sizeof path, ends);
	shmbus_uuid_t ids[N];
	cr_assert_eq(shmbus_log_scan(bus, NULL, collect_id, ids), N, "%s", shmbus_errmsg());
	damage_byte(path, ends[BAD - 1] + 40); /* inside record BAD */
	char idx[1300];
	snprintf(idx, sizeof idx, "%.*s.idx", (int)(strlen(path) - 4), path);
	cr_assert_eq(truncate(idx, 100), 0, "%s: %s", idx, strerror(errno));
	/* a reader rebuilds the index in memory */
	shmbus_bus_t *b2 = tc_open();
	cr_assert_eq(readable_around(b2, ids, N, BAD), N - 1, "a reader's rebuilt index");
	cr_assert_geq(shmbus_log_damage_count(b2), 2, "the lost index and the damaged record are both reported");
	struct counted c = {.ordered = true};
	cr_assert_eq(shmbus_log_scan(b2, NULL, count_in_order, &c), N - 1, "%s", shmbus_errmsg());
	shmbus_close(b2);
	/* the next recorder rebuilds the index file, seals the segment around
	 * the damage and writes on in a new one */
	shmbus_recorder_t *rec;
	cr_assert_eq(shmbus_recorder_open(bus, &(shmbus_record_opts_t){.no_wait = true, .sync = SHMBUS_SYNC_NONE}, &rec),
		     0, "%s", shmbus_errmsg());
	shmbus_recorder_stats_t st;
	shmbus_recorder_stats(rec, &st);
	cr_assert_gt(st.next_seq, shmbus_uuid_seq(&ids[N - 1]), "the recorder resumes after the last record");
	shmbus_recorder_close(rec);
	b2 = tc_open();
	cr_assert_eq(readable_around(b2, ids, N, BAD), N - 1, "the index file the recorder rebuilt");
	shmbus_close(b2);
	shmbus_close(bus);
}

/* shm-dump on a segment file shows its last --events records, as on a live
 * bus (it showed the first ones), and counts them all. */
Test(log, shm_dump_of_a_segment_shows_its_last_records)
{
	const char *dump = tc_tool("SHM_DUMP");
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	enum { N = 18 };
	char path[1200];
	uint64_t ends[N];
	make_log(bus, N, path, sizeof path, ends);
	const shmbus_event_t *all[N];
	cr_assert_eq(shmbus_get_events(bus, NULL, all, N), N);
	char *argv[] = {(char *)dump, path, "--events", "3", NULL};
	struct tc_run_result r;
	cr_assert_eq(tc_run(argv, 10000, &r), 0);
	cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0, "%s: %s", tc_status_str(r.status), r.err);
	int shown = 0;
	for (const char *p = r.out; (p = strstr(p, "\n@")); p++)
		shown++;
	cr_expect_eq(shown, 3, "records shown: %d\n%s", shown, r.out);
	for (int i = 0; i < N; i++) {
		char want[64];
		snprintf(want, sizeof want, " seq=%llu\n", (unsigned long long)shmbus_event_seq(all[i]));
		bool there = strstr(r.out, want) != NULL;
		cr_expect_eq(there, i >= N - 3, "record %d %s", i, there ? "shown" : "not shown");
	}
	char total[64];
	snprintf(total, sizeof total, "%d valid records", N);
	cr_expect(strstr(r.out, total), "%s", r.out);
	tc_run_free(&r);
	shmbus_close(bus);
}

/* `shmbus events` on a log with a damaged record prints the others, says
 * what is damaged under its own name, and exits 1: it exited 0 (found by
 * an independent walk through the README). */
Test(log, the_cli_reports_log_damage_as_a_failure)
{
	const char *cli = tc_tool("SHMBUS_CLI");
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	enum { N = 6 };
	char path[1200];
	uint64_t ends[N];
	make_log(bus, N, path, sizeof path, ends);
	damage_byte(path, ends[2] + 40); /* inside record 3 */
	char *argv[] = {(char *)cli, "events", tc_bus, "--json", NULL};
	struct tc_run_result r;
	cr_assert_eq(tc_run(argv, 10000, &r), 0);
	cr_expect(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 1, "events on a damaged log: %s",
		  tc_status_str(r.status));
	cr_expect(strncmp(r.err, "shmbus: events: ", 16) == 0, "stderr: %s", r.err);
	int lines = 0;
	for (const char *p = r.out; (p = strchr(p, '\n')); p++)
		lines++;
	cr_expect_eq(lines, N - 1, "the intact records are printed: %d lines", lines);
	tc_run_free(&r);
	shmbus_close(bus);
}

/* Copy the event at seq from the ring into a writer reservation. */
static void reserve_copy(struct log_writer *w, shmbus_bus_t *bus, uint64_t seq)
{
	const struct seg_event *ev = (const struct seg_event *)(const void *)bus_slot_data(bus, seq);
	int rc;
	uint8_t *dst = log_writer_reserve(w, seq, log_slots_for(bus, ev->size), ev->size, &rc);
	cr_assert(dst, "reserve at %llu: %d", (unsigned long long)seq, rc);
	memcpy(dst, ev, ev->size);
	((struct seg_event *)(void *)dst)->committed = 1;
}

static void commit_at(struct log_writer *w, shmbus_bus_t *bus, uint64_t seq)
{
	const struct seg_event *ev = (const struct seg_event *)(const void *)bus_slot_data(bus, seq);
	log_writer_commit(w, seq, log_slots_for(bus, ev->size), ev->size);
}

/* The writer as a kill -9 leaves it: mappings and staging copy gone,
 * nothing published. */
static void abandon(struct log_writer *w)
{
	log_seg_close(&w->seg);
	munmap(w->stage, (size_t)w->stage_cap);
}

/* Events in the log, in order, checked: how many, and the last payload. */
static uint32_t scan_count(uint32_t *last_payload)
{
	shmbus_bus_t *b;
	cr_assert_eq(shmbus_open(tc_bus, NULL, &b), 0, "%s", shmbus_errmsg());
	struct counted c = {.ordered = true};
	int64_t got = shmbus_log_scan(b, NULL, count_in_order, &c);
	cr_assert_geq(got, 0, "%s", shmbus_errmsg());
	cr_assert(c.ordered, "the log is not every event once in sequence order");
	cr_assert_eq(c.n, (uint32_t)got);
	cr_assert_eq(shmbus_log_damage_count(b), 0, "%s", shmbus_log_damage(b, 0));
	*last_payload = c.next - 1;
	shmbus_close(b);
	return (uint32_t)got;
}

/* A writer killed inside a batch, at every stage of it: copies reserved
 * and none sealed, some sealed, some sealed and the rest discarded, all
 * sealed, all sealed and written to the file but the header not published.
 * Sealed records live in the writer's staging copy until they are written:
 * the next writer keeps exactly the written ones (counted by the header or
 * not), resumes after the last one, and what it appends follows without a
 * gap or damage. */
Test(log, a_writer_killed_inside_a_batch_keeps_exactly_the_written_records)
{
	const uint32_t B = 8;
	shmbus_config_t cfg = log_cfg();
	shmbus_bus_t *bus = tc_create(&cfg);
	shmbus_pub_t *pub = tc_pub(bus, "p", -1);
	uint64_t seqs[200];
	for (uint32_t i = 0; i < 200; i++) {
		shmbus_uuid_t id;
		uint32_t payload[75] = {i}; /* some events take two slots */
		shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = i % 2 ? "odd" : "even", .payload = payload,
				  .payload_len = i % 3 ? 4 : sizeof payload};
		cr_assert_eq(shmbus_publish(pub, &m, &id), 0, "%s", shmbus_errmsg());
		seqs[i] = shmbus_uuid_seq(&id);
	}
	char dir[1024];
	cr_assert_geq(log_bus_dir(bus, NULL, dir, sizeof dir), 0);
	uint32_t slot = 1u << bus->slot_size_shift, next = 0;
	struct log_writer w;
	/* stage: 0 none sealed, 1 three sealed, 2 three sealed and the rest
	 * discarded, 3 all sealed, each unwritten; 4 all sealed and written,
	 * 5 three sealed and written, the rest reserved; none published */
	cr_assert_eq(log_writer_open(&w, dir, bus->name, bus->hdr->incarnation, slot, 64 << 10, 0), 0, "%s",
		     shmbus_errmsg());
	for (int stage = 0; stage < 6; stage++) {
		/* a complete batch first */
		for (uint32_t k = 0; k < B; k++)
			reserve_copy(&w, bus, seqs[next + k]);
		for (uint32_t k = 0; k < B; k++)
			commit_at(&w, bus, seqs[next + k]);
		cr_assert_eq(log_writer_publish(&w), 0, "%s", shmbus_errmsg());
		next += B;
		/* then the one killed */
		for (uint32_t k = 0; k < B; k++)
			reserve_copy(&w, bus, seqs[next + k]);
		uint32_t sealed = stage == 0 ? 0 : stage == 3 || stage == 4 ? B : 3;
		for (uint32_t k = 0; k < sealed; k++)
			commit_at(&w, bus, seqs[next + k]);
		if (stage == 2)
			log_writer_discard(&w);
		if (stage >= 4) {
			cr_assert_eq(log_writer_write(&w), 0, "%s", shmbus_errmsg());
			next += sealed;
		}
		abandon(&w);
		/* the next writer recovers: it resumes right after the last
		 * written record, which readers now see, and nothing else */
		cr_assert_eq(log_writer_open(&w, dir, bus->name, bus->hdr->incarnation, slot, 64 << 10, 0), 0, "%s",
			     shmbus_errmsg());
		cr_assert_eq(w.next_pos, seqs[next], "stage %d resumes at %llu, want %llu", stage,
			     (unsigned long long)w.next_pos, (unsigned long long)seqs[next]);
		uint32_t last, got = scan_count(&last);
		cr_assert_eq(got, next, "stage %d: %u events in the log, want %u", stage, got, next);
		cr_assert_eq(last, next - 1);
	}
	/* the last writer appends after all of it and closes cleanly */
	for (uint32_t k = 0; k < B; k++)
		reserve_copy(&w, bus, seqs[next + k]);
	for (uint32_t k = 0; k < B; k++)
		commit_at(&w, bus, seqs[next + k]);
	cr_assert_eq(log_writer_publish(&w), 0, "%s", shmbus_errmsg());
	log_writer_close(&w);
	next += B;
	uint32_t last;
	cr_assert_eq(scan_count(&last), next);
	cr_assert_eq(last, next - 1);
	shmbus_pub_close(pub);
	shmbus_close(bus);
}
