/*
 * dispatch_stress.c - the dispatcher's threads under ThreadSanitizer (and in
 * every other build): a worker pool running handlers for two subscriptions
 * while publisher threads fill the bus, some handler runs fail and are
 * retried, and another thread stops the dispatcher at the end.
 *
 * Checked: every event is handled successfully exactly once per
 * subscription, a subscription never has more handlers running than its
 * limit, retries happened, and the counters agree. meson runs it on both
 * backends. Ends with a "N passed, N failed" line.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shmbus.h"

#define PUBLISHERS 2
#define PER_PUB 3000
#define TOTAL (PUBLISHERS * PER_PUB)
#define LIMIT 3

static shmbus_bus_t *bus;
static char bus_name[64];
static int failures, passes;

struct target {
	atomic_int running, max_running, ok, fails;
	atomic_uchar done[TOTAL];
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

static int handler(const shmbus_event_t *ev, void *arg)
{
	struct target *t = arg;
	int now = atomic_fetch_add(&t->running, 1) + 1;
	int m = atomic_load(&t->max_running);
	while (now > m && !atomic_compare_exchange_weak(&t->max_running, &m, now))
		;
	size_t len;
	const uint32_t *v = shmbus_event_payload(ev, &len);
	int rc = 0;
	if (len != 8 || v[0] >= PUBLISHERS || v[1] >= PER_PUB) {
		rc = -EBADMSG;
	} else if (v[1] % 97 == 0 && shmbus_handler_attempt() == 1) {
		rc = -EAGAIN; /* fails once, the retry succeeds */
		atomic_fetch_add(&t->fails, 1);
	} else {
		atomic_fetch_add(&t->done[v[0] * PER_PUB + v[1]], 1);
		atomic_fetch_add(&t->ok, 1);
	}
	atomic_fetch_sub(&t->running, 1);
	return rc;
}

static void *publisher(void *arg)
{
	uint32_t id = (uint32_t)(uintptr_t)arg;
	shmbus_pub_t *pub;
	if (shmbus_pub_open(bus, &(shmbus_pub_opts_t){.timeout_ns = 20000000000LL}, &pub) < 0) {
		fprintf(stderr, "pub_open: %s\n", shmbus_errmsg());
		return NULL;
	}
	for (uint32_t n = 0; n < PER_PUB; n++) {
		uint32_t v[2] = {id, n};
		shmbus_msg_t m = {.type = SHMBUS_COMMAND, .name = "job", .payload = v, .payload_len = sizeof v};
		if (shmbus_publish(pub, &m, NULL) < 0) {
			fprintf(stderr, "publish: %s\n", shmbus_errmsg());
			break;
		}
	}
	shmbus_pub_close(pub);
	return NULL;
}

static struct target targets[2];
static shmbus_dispatcher_t *disp;

/* Whether subscription `name` has counted every event completed: the
 * dispatcher counts a run once its handler returned and the loop saw it,
 * a moment after the handler's own count. */
static int all_completed(const char *name)
{
	shmbus_sub_info_t si[4];
	return shmbus_list_subscriptions(bus, name, si, 4) == 1 && si[0].completed == TOTAL;
}

/* Stops the dispatcher from another thread once everything is handled and
 * counted (stopping when the handlers' own counts are complete raced with
 * the loop's accounting of the last run). */
static void *stopper(void *arg)
{
	(void)arg;
	for (int i = 0; i < 60000; i++) {
		if (atomic_load(&targets[0].ok) == TOTAL && atomic_load(&targets[1].ok) == TOTAL &&
		    all_completed("a") && all_completed("b"))
			break;
		usleep(1000);
	}
	shmbus_dispatcher_stop(disp);
	return NULL;
}

int main(void)
{
	snprintf(bus_name, sizeof bus_name, "t%d_dstress", (int)getpid());
	shmbus_config_t cfg = {.slots = 1024, .max_payload = 1024, .max_subscribers = 8};
	if (shmbus_create(bus_name, &cfg, NULL, &bus) < 0) {
		fprintf(stderr, "create: %s\n", shmbus_errmsg());
		return 1;
	}
	/* Every thread works through this handle, none opens the bus by name:
	 * unlinked now, a run that ends any way leaves no segment in /dev/shm
	 * (an atexit handler did not catch a run ThreadSanitizer failed). */
	unlink_bus();
	if (shmbus_dispatcher_open(&(shmbus_dispatcher_opts_t){.workers = 4}, &disp) < 0) {
		fprintf(stderr, "dispatcher: %s\n", shmbus_errmsg());
		return 1;
	}
	printf("backend: %s\n", shmbus_backend_name(shmbus_dispatcher_backend(disp)));
	shmbus_sub_t *subs[2];
	for (int i = 0; i < 2; i++) {
		if (shmbus_subscribe(bus, &(shmbus_sub_opts_t){.subscriber_id = i ? "b" : "a"}, &subs[i]) < 0 ||
		    shmbus_dispatcher_add(disp, subs[i],
					  &(shmbus_handler_opts_t){.handler = handler,
								   .arg = &targets[i],
								   .concurrency = LIMIT,
								   .retry_base_ns = 1000000}) < 0) {
			fprintf(stderr, "subscribe/add: %s\n", shmbus_errmsg());
			return 1;
		}
	}
	pthread_t tp[PUBLISHERS], ts;
	for (uintptr_t i = 0; i < PUBLISHERS; i++)
		pthread_create(&tp[i], NULL, publisher, (void *)i);
	pthread_create(&ts, NULL, stopper, NULL);
	int rc = shmbus_dispatcher_run(disp);
	check(rc == 0, "run returns 0 after stop from another thread");
	for (int i = 0; i < PUBLISHERS; i++)
		pthread_join(tp[i], NULL);
	pthread_join(ts, NULL);
	for (int i = 0; i < 2; i++) {
		struct target *t = &targets[i];
		int once = 1;
		for (int k = 0; k < TOTAL; k++)
			once &= atomic_load(&t->done[k]) == 1;
		check(atomic_load(&t->ok) == TOTAL && once, "every event handled successfully exactly once");
		check(atomic_load(&t->max_running) <= LIMIT, "never more handlers than the limit");
		check(atomic_load(&t->fails) > 0, "failures happened and were retried");
		shmbus_sub_info_t si[4];
		int n = shmbus_list_subscriptions(bus, i ? "b" : "a", si, 4);
		check(n == 1 && si[0].completed == TOTAL && si[0].retried == (uint64_t)atomic_load(&t->fails) &&
			      si[0].dead_lettered == 0,
		      "counters: completed, retried, no dead letters");
	}
	shmbus_dispatcher_close(disp);
	for (int i = 0; i < 2; i++)
		shmbus_sub_close(subs[i]);
	shmbus_close(bus);
	printf("%d passed, %d failed\n", passes, failures);
	return failures ? 1 : 0;
}
