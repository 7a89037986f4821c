/*
 * threads_stress.c - many threads of one process on one bus, for the
 * ThreadSanitizer build (Criterion cannot start under TSan, see
 * docs/ARCHITECTURE.md) and for every other build as well.
 *
 * Publishers (single events and batches of 1 to 70, whose shapes alternate
 * and cross the 64-event windows), plain and group subscribers (one of
 * each taking and releasing batches), a lag subscriber and a thread that
 * keeps subscribing, pausing and unsubscribing all share one bus handle. Checked: every subscriber gets exactly what its filter matches,
 * each publisher's events in order, group members split the events with
 * no loss or duplicate, and a lag subscriber's received + missed equals
 * what was published. Ends with a "N passed, N failed" line.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmbus.h"

#define PUBLISHERS 3
#define PER_PUB 20000
#define GROUP_MEMBERS 2
#define TIMEOUT_NS 10000000000LL

static shmbus_bus_t *bus;
static char bus_name[64];
static atomic_int pubs_done;
static int failures, passes;

struct payload {
	uint32_t pub;
	uint32_t n;
};

static void unlink_bus(void)
{
	shmbus_unlink(bus_name);
}

static void check(int ok, const char *what)
{
	if (ok) {
		passes++;
	} else {
		failures++;
		fprintf(stderr, "FAIL: %s\n", what);
	}
}

static void *publisher(void *arg)
{
	uint32_t id = (uint32_t)(uintptr_t)arg;
	shmbus_pub_t *pub;
	char src[32];
	snprintf(src, sizeof src, "p%u", id);
	shmbus_pub_opts_t po = {.source = src, .timeout_ns = 20000000000LL};
	if (shmbus_pub_open(bus, &po, &pub) < 0) {
		fprintf(stderr, "pub_open: %s\n", shmbus_errmsg());
		exit(1);
	}
	struct payload p[70];
	shmbus_msg_t m[70];
	for (uint32_t n = 0; n < PER_PUB;) {
		uint32_t k = (n / 3) % 4 ? 1 : 1 + (n * 7919u) % 70; /* singles, and batches of 1..70 */
		if (k > PER_PUB - n)
			k = PER_PUB - n;
		for (uint32_t j = 0; j < k; j++) {
			p[j] = (struct payload){.pub = id, .n = n + j};
			m[j] = (shmbus_msg_t){.type = SHMBUS_NOTIFICATION, .name = ((n + j) % 3 == 0) ? "a" : "b",
					      .payload = &p[j], .payload_len = sizeof p[j]};
		}
		int rc = k == 1 && n % 2 ? shmbus_publish(pub, &m[0], NULL) : shmbus_publish_batch(pub, m, k, NULL);
		if (rc < 0) {
			fprintf(stderr, "publish: %s\n", shmbus_errmsg());
			exit(1);
		}
		n += k;
	}
	shmbus_pub_close(pub);
	atomic_fetch_add(&pubs_done, 1);
	return NULL;
}

struct consumer {
	shmbus_sub_t *sub;
	uint64_t expect; /* events to receive, 0 = until publishers are done */
	uint64_t got;
	uint64_t missed;
	uint32_t next[PUBLISHERS];
	int disorder;
	uint8_t *seen; /* group: shared bitmap of (pub, n) */
	int dup;
	int batched; /* shmbus_poll_batch and shmbus_release_batch */
};

/* One received event: order (or the group's bitmap) and the count. */
static void note_event(struct consumer *c, const shmbus_event_t *ev)
{
	size_t len;
	const struct payload *p = shmbus_event_payload(ev, &len);
	if (len == sizeof *p && p->pub < PUBLISHERS) {
		if (c->seen) {
			uint8_t *b = &c->seen[p->pub * PER_PUB + p->n];
			if (__atomic_exchange_n(b, 1, __ATOMIC_RELAXED))
				c->dup++;
		} else if (p->n < c->next[p->pub]) {
			c->disorder++;
		}
		c->next[p->pub] = p->n + 1;
	}
	c->got++;
}

static void *consumer(void *arg)
{
	struct consumer *c = arg;
	const shmbus_event_t *ev;
	for (;;) {
		if (c->batched) {
			const shmbus_event_t *evs[16];
			int n = shmbus_poll_batch(c->sub, evs, 16);
			if (n < 0) {
				fprintf(stderr, "poll_batch: %s\n", shmbus_errmsg());
				exit(1);
			}
			for (int i = 0; i < n; i++)
				note_event(c, evs[i]);
			if (n > 0 && shmbus_release_batch(c->sub, evs, n) < 0) {
				fprintf(stderr, "release_batch: %s\n", shmbus_errmsg());
				exit(1);
			}
			if (c->expect && c->got >= c->expect)
				break;
			if (n > 0)
				continue;
		}
		int rc = shmbus_wait(c->sub, 200000000LL, &ev);
		if (rc < 0) {
			fprintf(stderr, "wait: %s\n", shmbus_errmsg());
			exit(1);
		}
		if (rc == 0) {
			if (c->expect == 0 && atomic_load(&pubs_done) == PUBLISHERS)
				break;
			continue;
		}
		note_event(c, ev);
		shmbus_release(c->sub, ev);
		if (c->expect && c->got == c->expect)
			break;
	}
	c->missed = shmbus_take_missed(c->sub);
	return NULL;
}

/* Subscribes, pauses, resumes and unsubscribes while everyone works. */
static void *churner(void *arg)
{
	(void)arg;
	int rounds = 0;
	while (atomic_load(&pubs_done) < PUBLISHERS) {
		shmbus_sub_t *s;
		shmbus_sub_opts_t so = {.subscriber_id = "churn", .policy = SHMBUS_POLICY_LAG};
		if (shmbus_subscribe(bus, &so, &s) < 0) {
			fprintf(stderr, "churn subscribe: %s\n", shmbus_errmsg());
			exit(1);
		}
		shmbus_pause(bus, shmbus_sub_id(s));
		shmbus_resume(bus, shmbus_sub_id(s));
		const shmbus_event_t *ev;
		for (int i = 0; i < 10 && shmbus_poll(s, &ev) == 1; i++)
			shmbus_release(s, ev);
		if (rounds++ % 2)
			shmbus_sub_close(s);
		else
			shmbus_unsubscribe(s);
		shmbus_metrics_t m;
		shmbus_get_metrics(bus, &m);
		shmbus_reclaim(bus);
	}
	return NULL;
}

static shmbus_sub_t *subscribe(const shmbus_sub_opts_t *o)
{
	shmbus_sub_t *s;
	if (shmbus_subscribe(bus, o, &s) < 0) {
		fprintf(stderr, "subscribe: %s\n", shmbus_errmsg());
		exit(1);
	}
	return s;
}

int main(void)
{
	snprintf(bus_name, sizeof bus_name, "t%d_threads", (int)getpid());
	shmbus_config_t cfg = {.slots = 1024, .max_payload = 1024, .max_subscribers = 16};
	if (shmbus_create(bus_name, &cfg, NULL, &bus) < 0) {
		fprintf(stderr, "create: %s\n", shmbus_errmsg());
		return 1;
	}
	/* Every thread works through this handle, none opens the bus by name:
	 * unlinked now, a run that ends any way leaves no segment in /dev/shm
	 * (an atexit handler did not catch a run ThreadSanitizer failed). */
	unlink_bus();
	shmbus_filter_t *fa;
	const char *a[] = {"a"};
	shmbus_filter_names(a, 1, &fa);
	struct consumer all = {.expect = (uint64_t)PUBLISHERS * PER_PUB, .batched = 1};
	struct consumer only_a = {.expect = 0};
	struct consumer lag = {.expect = 0};
	struct consumer dlag = {.expect = 0}; /* durable: its gaps close against a log that does not exist */
	struct consumer group[GROUP_MEMBERS];
	uint8_t *seen = calloc(PUBLISHERS * PER_PUB, 1);
	all.sub = subscribe(&(shmbus_sub_opts_t){.subscriber_id = "all", .wait = SHMBUS_WAIT_ADAPTIVE});
	only_a.sub = subscribe(&(shmbus_sub_opts_t){.subscriber_id = "only-a", .filter = fa, .wait = SHMBUS_WAIT_BLOCK});
	lag.sub = subscribe(&(shmbus_sub_opts_t){.subscriber_id = "lag", .policy = SHMBUS_POLICY_LAG});
	dlag.sub = subscribe(&(shmbus_sub_opts_t){.subscriber_id = "dlag", .durable = true, .policy = SHMBUS_POLICY_LAG});
	for (int i = 0; i < GROUP_MEMBERS; i++) {
		memset(&group[i], 0, sizeof group[i]);
		group[i].seen = seen;
		group[i].batched = i == 0;
		group[i].sub = subscribe(&(shmbus_sub_opts_t){.subscriber_id = "grp", .group = "g", .wait = SHMBUS_WAIT_SPIN});
	}
	shmbus_filter_free(fa);

	pthread_t tp[PUBLISHERS], tc[5 + GROUP_MEMBERS], tch;
	int nc = 0;
	pthread_create(&tc[nc++], NULL, consumer, &all);
	pthread_create(&tc[nc++], NULL, consumer, &only_a);
	pthread_create(&tc[nc++], NULL, consumer, &lag);
	pthread_create(&tc[nc++], NULL, consumer, &dlag);
	for (int i = 0; i < GROUP_MEMBERS; i++)
		pthread_create(&tc[nc++], NULL, consumer, &group[i]);
	pthread_create(&tch, NULL, churner, NULL);
	for (uintptr_t i = 0; i < PUBLISHERS; i++)
		pthread_create(&tp[i], NULL, publisher, (void *)i);
	for (int i = 0; i < PUBLISHERS; i++)
		pthread_join(tp[i], NULL);
	for (int i = 0; i < nc; i++)
		pthread_join(tc[i], NULL);
	pthread_join(tch, NULL);

	uint64_t total = (uint64_t)PUBLISHERS * PER_PUB;
	uint64_t a_expected = (uint64_t)PUBLISHERS * ((PER_PUB + 2) / 3);
	check(all.got == total && all.disorder == 0, "plain subscriber: every event, in publisher order");
	check(only_a.got == a_expected && only_a.disorder == 0, "name filter: exactly the 'a' events, in order");
	check(lag.got + lag.missed == total, "lag subscriber: received + missed == published");
	check(dlag.got + dlag.missed == total && dlag.disorder == 0,
	      "durable lag subscriber without a log: received + missed == published, in order");
	uint64_t g = 0;
	int dup = 0;
	for (int i = 0; i < GROUP_MEMBERS; i++) {
		g += group[i].got;
		dup += group[i].dup;
	}
	uint64_t covered = 0;
	for (uint64_t i = 0; i < total; i++)
		covered += seen[i];
	check(g == total && dup == 0 && covered == total, "group: each event handled by exactly one member");
	shmbus_metrics_t m;
	shmbus_get_metrics(bus, &m);
	check(m.published == total, "metrics: published == events published");
	if (all.got != total || only_a.got != a_expected || g != total)
		fprintf(stderr, "all %llu/%llu only_a %llu/%llu lag %llu+%llu group %llu dup %d\n",
			(unsigned long long)all.got, (unsigned long long)total, (unsigned long long)only_a.got,
			(unsigned long long)a_expected, (unsigned long long)lag.got, (unsigned long long)lag.missed,
			(unsigned long long)g, dup);

	shmbus_sub_close(all.sub);
	shmbus_sub_close(only_a.sub);
	shmbus_sub_close(lag.sub);
	shmbus_sub_close(dlag.sub);
	for (int i = 0; i < GROUP_MEMBERS; i++)
		shmbus_sub_close(group[i].sub);
	free(seen);
	shmbus_close(bus);
	printf("%d passed, %d failed\n", passes, failures);
	return failures ? 1 : 0;
}
