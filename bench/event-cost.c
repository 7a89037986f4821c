/*
 * shmbus-event-cost - what one batched event costs each side, measured
 * apart. shmbus-bench times the stream with both sides running at once;
 * this splits the cost:
 *
 *   one-thread   one thread publishes batches of 64 32-byte events and
 *                consumes them (shmbus_poll_batch / shmbus_release_batch):
 *                hot caches, no transfer between cores. Run it under
 *                `valgrind --tool=callgrind` for instructions per event.
 *   apart        a publisher process (CPU 1) fills half the ring while the
 *                subscriber (CPU 0) waits, then the subscriber drains it
 *                while the publisher waits: each side's cost per event
 *                with the cache lines coming from the other core, but
 *                without the two contending.
 *
 *   single       (--single, instead of the two above) one thread
 *                publishes each event alone (shmbus_publish), waits for it
 *                (shmbus_wait) and releases it (shmbus_release): the calls
 *                of a request/response round trip, without the transfers.
 *
 *   round-trip   (--round-trip, instead of all the above) both ends of a
 *                shmbus-bench spin ping-pong in one thread, set up as
 *                there (a source, SHMBUS_PUB_LOW_LATENCY, a name filter,
 *                spin waits; two publishers taking turns, so they claim
 *                through leases): ping published; it is waited for, read
 *                and answered with a pong, and released; the pong is
 *                waited for, read and released. The instructions of a
 *                round trip without the transfers (half of it a leg).
 *
 *   empty-poll   (--empty-poll, instead of all the above) N polls of a
 *                subscription with nothing queued: what each whole poll
 *                of a spinning wait costs before an event comes (every
 *                64th round; the others only look at the queue heads).
 *
 *   shmbus-event-cost [--events N] [--one-thread | --single | --round-trip | --empty-poll]
 *                     (default 2000000 events; round trips with --round-trip)
 *
 * --one-thread skips the second part (for callgrind: instructions per
 * event = the total over the events, less the set-up of a few thousand;
 * with --single, --round-trip or --empty-poll, callgrind_annotate --inclusive=yes gives
 * each call's count over the events or polls).
 *
 * Prints ns per event for each side; the bus is unlinked at the end.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <sched.h>
#include <stdbool.h>
#include <shmbus.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "byte_sum.h"

#define BATCH 64
#define SLOTS 4096u

static char bus_name[64];

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
	fprintf(stderr, "shmbus-event-cost: %s: %s (%s)\n", what, strerror(-rc), shmbus_errmsg());
	shmbus_unlink(bus_name);
	exit(1);
}

static void pin(int cpu)
{
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	if (sched_setaffinity(0, sizeof s, &s) < 0)
		fprintf(stderr, "shmbus-event-cost: cannot pin to CPU %d; figures are unpinned\n", cpu);
}

static void fill_batch(shmbus_msg_t *m, const uint8_t *payload)
{
	for (int j = 0; j < BATCH; j++)
		m[j] = (shmbus_msg_t){.type = SHMBUS_NOTIFICATION, .name = "cost", .payload = payload, .payload_len = 32};
}

/* Publish n events in batches of BATCH. */
static void publish_n(shmbus_pub_t *pub, const shmbus_msg_t *m, long n)
{
	for (long i = 0; i < n; i += BATCH) {
		int rc = shmbus_publish_batch(pub, m, BATCH, NULL);
		if (rc < 0)
			die("publish", rc);
	}
}

/* Take and release n events, summing every payload byte. */
static uint64_t consume_n(shmbus_sub_t *sub, long n)
{
	const shmbus_event_t *evs[32];
	uint64_t sum = 0;
	for (long got = 0; got < n;) {
		int k = shmbus_poll_batch(sub, evs, 32);
		if (k <= 0)
			die("poll_batch found nothing", k < 0 ? k : -EAGAIN);
		for (int j = 0; j < k; j++) {
			size_t len;
			const uint8_t *p = shmbus_event_payload(evs[j], &len);
			sum += byte_sum(p, len);
		}
		int rc = shmbus_release_batch(sub, evs, k);
		if (rc < 0)
			die("release_batch", rc);
		got += k;
	}
	return sum;
}

/* Publish, wait for and release n events one at a time. */
static uint64_t single_n(shmbus_pub_t *pub, shmbus_sub_t *sub, const shmbus_msg_t *m, long n)
{
	uint64_t sum = 0;
	for (long i = 0; i < n; i++) {
		const shmbus_event_t *ev;
		int rc;
		if ((rc = shmbus_publish(pub, m, NULL)) < 0)
			die("publish", rc);
		if ((rc = shmbus_wait(sub, -1, &ev)) != 1)
			die("wait", rc < 0 ? rc : -EAGAIN);
		size_t len;
		const uint8_t *p = shmbus_event_payload(ev, &len);
		sum += byte_sum(p, len);
		if ((rc = shmbus_release(sub, ev)) < 0)
			die("release", rc);
	}
	return sum;
}

/* One end of a ping-pong: a subscription to events named `listen` that
 * waits by spinning, and a low-latency publisher named `label`. */
struct end {
	shmbus_sub_t *sub;
	shmbus_pub_t *pub;
	shmbus_msg_t msg;
};

static void end_open(shmbus_bus_t *bus, struct end *e, const char *label, const char *listen, const char *says,
		     const uint8_t *payload)
{
	shmbus_filter_t *filter;
	int rc;
	if ((rc = shmbus_filter_names(&listen, 1, &filter)) < 0)
		die("filter_names", rc);
	rc = shmbus_subscribe(bus, &(shmbus_sub_opts_t){.subscriber_id = label, .wait = SHMBUS_WAIT_SPIN, .filter = filter},
			      &e->sub);
	shmbus_filter_free(filter);
	if (rc < 0)
		die("subscribe", rc);
	if ((rc = shmbus_pub_open(bus, &(shmbus_pub_opts_t){.source = label, .flags = SHMBUS_PUB_LOW_LATENCY}, &e->pub)) < 0)
		die("pub_open", rc);
	e->msg = (shmbus_msg_t){.type = SHMBUS_NOTIFICATION, .name = says, .payload = payload, .payload_len = 32};
}

/* The responder's turn (wait, read, publish, release, as pong_child does)
 * or, with answer false, the pinger's end of it (wait, read, release). */
static uint64_t end_take(struct end *e, bool answer)
{
	const shmbus_event_t *ev;
	size_t len;
	int rc;
	/* in one thread the event is there already: a wait that times out
	 * means the ends do not hear each other */
	if ((rc = shmbus_wait(e->sub, 1000000000, &ev)) != 1)
		die("wait", rc < 0 ? rc : -ETIMEDOUT);
	uint64_t sum = byte_sum(shmbus_event_payload(ev, &len), len);
	if (answer && (rc = shmbus_publish(e->pub, &e->msg, NULL)) < 0)
		die("publish", rc);
	if ((rc = shmbus_release(e->sub, ev)) < 0)
		die("release", rc);
	return sum;
}

/* n ping-pong round trips between two ends in this thread. */
static uint64_t round_trips(shmbus_bus_t *bus, const uint8_t *payload, long n)
{
	struct end ping, pong;
	uint64_t sum = 0;
	end_open(bus, &ping, "cost-ping", "pong", "ping", payload);
	end_open(bus, &pong, "cost-pong", "ping", "pong", payload);
	for (long i = 0; i < n; i++) {
		int rc = shmbus_publish(ping.pub, &ping.msg, NULL);
		if (rc < 0)
			die("publish", rc);
		sum += end_take(&pong, true);
		sum += end_take(&ping, false);
	}
	struct end *ends[] = {&ping, &pong};
	for (int i = 0; i < 2; i++) {
		shmbus_pub_close(ends[i]->pub);
		shmbus_sub_close(ends[i]->sub);
	}
	return sum;
}

/* n polls that find nothing. */
static void empty_polls(shmbus_sub_t *sub, long n)
{
	for (long i = 0; i < n; i++) {
		const shmbus_event_t *ev;
		int rc = shmbus_poll(sub, &ev);
		if (rc != 0)
			die("poll of an empty subscription", rc < 0 ? rc : -EPROTO);
	}
}

static void close_all(shmbus_pub_t *pub, shmbus_sub_t *sub, shmbus_bus_t *bus)
{
	shmbus_pub_close(pub);
	shmbus_sub_close(sub);
	shmbus_close(bus);
	shmbus_unlink(bus_name);
}

int main(int argc, char **argv)
{
	long events = 2000000;
	bool one_thread = false, single = false, round_trip = false, empty_poll = false;
	for (int a = 1; a < argc; a++) {
		if (strcmp(argv[a], "--events") == 0 && a + 1 < argc && atol(argv[a + 1]) >= BATCH) {
			events = atol(argv[++a]);
		} else if (strcmp(argv[a], "--one-thread") == 0) {
			one_thread = true;
		} else if (strcmp(argv[a], "--single") == 0) {
			single = true;
		} else if (strcmp(argv[a], "--round-trip") == 0) {
			round_trip = true;
		} else if (strcmp(argv[a], "--empty-poll") == 0) {
			empty_poll = true;
		} else {
			fprintf(stderr, "usage: shmbus-event-cost [--events N] [--one-thread | --single | --round-trip | "
					"--empty-poll]\n");
			return 2;
		}
	}
	events -= events % BATCH;
	snprintf(bus_name, sizeof bus_name, "event-cost-%d", (int)getpid());
	shmbus_bus_t *bus;
	shmbus_sub_t *sub;
	shmbus_pub_t *pub;
	shmbus_config_t cfg = {.slots = SLOTS, .slot_size = 256, .max_subscribers = 4};
	int rc;
	if ((rc = shmbus_create(bus_name, &cfg, NULL, &bus)) < 0)
		die("create", rc);
	if ((rc = shmbus_subscribe(bus, &(shmbus_sub_opts_t){0}, &sub)) < 0)
		die("subscribe", rc);
	if ((rc = shmbus_pub_open(bus, NULL, &pub)) < 0)
		die("pub_open", rc);
	uint8_t payload[32];
	memset(payload, 1, sizeof payload);
	shmbus_msg_t m[BATCH];
	fill_batch(m, payload);

	if (round_trip) {
		/* the ends' subscriptions only: this one would hold every event */
		shmbus_sub_close(sub);
		sub = NULL;
		double t0 = now_s();
		round_trips(bus, payload, events);
		printf("round-trip: both ends of a spin ping-pong in one thread %.1f ns/round trip\n",
		       (now_s() - t0) / (double)events * 1e9);
		close_all(pub, sub, bus);
		return 0;
	}
	if (single || empty_poll) {
		double t0 = now_s();
		if (single)
			single_n(pub, sub, &m[0], events);
		else
			empty_polls(sub, events);
		printf("%s %.1f ns/%s\n", single ? "single: publish, wait and release" : "empty-poll: a poll finding nothing",
		       (now_s() - t0) / (double)events * 1e9, single ? "event" : "poll");
		close_all(pub, sub, bus);
		return 0;
	}

	/* one thread */
	double tp = 0, tc = 0;
	for (long i = 0; i < events; i += BATCH) {
		double t0 = now_s();
		publish_n(pub, m, BATCH);
		double t1 = now_s();
		consume_n(sub, BATCH);
		tc += now_s() - t1;
		tp += t1 - t0;
	}
	printf("one-thread: publish %.1f ns/event, consume %.1f ns/event\n", tp / (double)events * 1e9,
	       tc / (double)events * 1e9);
	shmbus_pub_close(pub);
	if (one_thread) {
		shmbus_sub_close(sub);
		shmbus_close(bus);
		shmbus_unlink(bus_name);
		return 0;
	}

	/* apart: half a ring per round, sides taking turns */
	long per_round = SLOTS / 2 - BATCH, rounds = events / per_round + 1;
	per_round -= per_round % BATCH;
	int go[2], done[2];
	if (pipe(go) < 0 || pipe(done) < 0)
		die("pipe", -errno);
	fflush(stdout);
	pid_t child = fork();
	if (child < 0)
		die("fork", -errno);
	if (child == 0) {
		pin(1);
		shmbus_bus_t *b;
		shmbus_pub_t *p;
		char c;
		if ((rc = shmbus_open(bus_name, NULL, &b)) < 0 || (rc = shmbus_pub_open(b, NULL, &p)) < 0)
			die("child attach", rc);
		double t = 0;
		for (long r = 0; r < rounds; r++) {
			if (read(go[0], &c, 1) != 1)
				_exit(1);
			double t0 = now_s();
			publish_n(p, m, per_round);
			t += now_s() - t0;
			if (write(done[1], "d", 1) != 1)
				_exit(1);
		}
		printf("apart: publish %.1f ns/event\n", t / (double)(rounds * per_round) * 1e9);
		fflush(stdout);
		shmbus_pub_close(p);
		shmbus_close(b);
		_exit(0);
	}
	pin(0);
	double t = 0;
	uint64_t sum = 0;
	char c;
	for (long r = 0; r < rounds; r++) {
		if (write(go[1], "g", 1) != 1 || read(done[0], &c, 1) != 1)
			die("child", -EPIPE);
		double t0 = now_s();
		sum += consume_n(sub, per_round);
		t += now_s() - t0;
	}
	int st = 0;
	waitpid(child, &st, 0);
	printf("apart: consume %.1f ns/event\n", t / (double)(rounds * per_round) * 1e9);
	int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0 && sum == (uint64_t)(rounds * per_round) * 32;
	shmbus_sub_close(sub);
	shmbus_close(bus);
	shmbus_unlink(bus_name);
	if (!ok)
		fprintf(stderr, "shmbus-event-cost: the publisher failed or the payload sums differ\n");
	return ok ? 0 : 1;
}
