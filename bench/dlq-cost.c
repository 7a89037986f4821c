/*
 * dlq-cost.c - what one dead-letter append costs as the dead-letter log
 * grows: a publisher on a bus created with dead_letter_unrouted publishes
 * commands nobody subscribes to, one call each (one append and one sync
 * each), and the median append of each tenth of the run is printed. A
 * cost that rises from the first tenth to the last means an append does
 * work in proportion to the log. Then a dispatcher dead-letters a burst of
 * events that expired before it could handle them (min(N, 2000)), and the
 * cost per letter is printed: a dispatcher writes the letters of a turn
 * together, one sync for up to a window (40) of them.
 *
 *   shmbus-dlq-cost [--letters N (10000)] [--dir DIR]
 *
 * The log goes under DIR (default: a new directory in /tmp, removed at
 * the end), on whatever disk that is: the sync dominates, so run it on the
 * disk the logs will live on.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shmbus.h"

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int never_run(const shmbus_event_t *ev, void *arg)
{
	(void)ev;
	(void)arg;
	return -EIO; /* the events expire first: never called */
}

static void count_dead(const shmbus_event_t *ev, int reason, void *arg)
{
	(void)ev;
	(void)reason;
	++*(long *)arg;
}

/* A burst of n expired events through a dispatcher: 0, or -1. */
static int dispatcher_burst(shmbus_bus_t *bus, shmbus_pub_t *pub, long n)
{
	shmbus_sub_t *sub = NULL;
	shmbus_dispatcher_t *d = NULL;
	shmbus_filter_t *f = NULL;
	const char *names[] = {"burst.job"};
	int rc = -1;
	long dead = 0;
	if (shmbus_filter_names(names, 1, &f) < 0 ||
	    shmbus_subscribe(bus, &(shmbus_sub_opts_t){.filter = f}, &sub) < 0)
		goto out;
	uint8_t payload[64] = {0};
	shmbus_msg_t m = {.type = SHMBUS_COMMAND, .name = "burst.job", .ttl_ns = 1, .payload = payload,
			  .payload_len = sizeof payload};
	for (long i = 0; i < n; i++)
		if (shmbus_publish(pub, &m, NULL) < 0)
			goto out;
	usleep(2000); /* every one expired */
	shmbus_handler_opts_t o = {.handler = never_run, .on_dead = count_dead, .arg = &dead};
	if (shmbus_dispatcher_open(NULL, &d) < 0 || shmbus_dispatcher_add(d, sub, &o) < 0)
		goto out;
	uint64_t t0 = now_ns();
	while (dead < n)
		if (shmbus_dispatcher_run_once(d, 100 * 1000000LL) < 0 && dead < n)
			goto out;
	double us = (double)(now_ns() - t0) / 1e3 / (double)n;
	printf("dispatcher: %ld expired events dead-lettered, %.1f us per letter\n", n, us);
	rc = 0;
out:
	if (rc < 0)
		fprintf(stderr, "shmbus-dlq-cost: dispatcher: %s\n", shmbus_errmsg());
	shmbus_dispatcher_close(d);
	shmbus_sub_close(sub);
	shmbus_filter_free(f);
	return rc;
}

static void usage(void)
{
	fprintf(stderr, "usage: shmbus-dlq-cost [--letters N (10000)] [--dir DIR]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	long letters = 10000;
	const char *dir = NULL;
	static const struct option opts[] = {{"letters", required_argument, NULL, 'n'},
					     {"dir", required_argument, NULL, 'd'},
					     {NULL, 0, NULL, 0}};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'n')
			letters = strtol(optarg, NULL, 10);
		else if (c == 'd')
			dir = optarg;
		else
			usage();
	}
	if (optind != argc || letters < 10)
		usage();
	char tmp[] = "/tmp/shmbus-dlq-cost-XXXXXX";
	if (!dir && !(dir = mkdtemp(tmp))) {
		perror("mkdtemp");
		return 1;
	}
	char name[64];
	snprintf(name, sizeof name, "dlq-cost-%d", (int)getpid());
	shmbus_config_t cfg = {.dead_letter_unrouted = true};
	shmbus_bus_t *bus = NULL;
	shmbus_pub_t *pub = NULL;
	uint64_t *took = malloc((size_t)letters * sizeof *took);
	int rc = 1;
	if (!took) {
		fprintf(stderr, "out of memory\n");
		goto out;
	}
	if (shmbus_create(name, &cfg, NULL, &bus) < 0 ||
	    shmbus_log_configure(bus, &(shmbus_log_config_t){.dir = dir}) < 0 || shmbus_pub_open(bus, NULL, &pub) < 0) {
		fprintf(stderr, "shmbus-dlq-cost: %s\n", shmbus_errmsg());
		goto out;
	}
	uint8_t payload[64] = {0};
	shmbus_msg_t m = {.type = SHMBUS_COMMAND, .name = "unrouted.job", .target = "nobody",
			  .payload = payload, .payload_len = sizeof payload};
	for (long i = 0; i < letters; i++) {
		uint64_t t0 = now_ns();
		if (shmbus_publish(pub, &m, NULL) < 0) {
			fprintf(stderr, "shmbus-dlq-cost: publish: %s\n", shmbus_errmsg());
			goto out;
		}
		took[i] = now_ns() - t0;
	}
	shmbus_metrics_t mt;
	if (shmbus_get_metrics(bus, &mt) < 0 || mt.dead_lettered != (uint64_t)letters) {
		fprintf(stderr, "shmbus-dlq-cost: %llu letters appended, not %ld\n",
			(unsigned long long)mt.dead_lettered, letters);
		goto out;
	}
	long tenth = letters / 10;
	for (int t = 0; t < 10; t++) {
		qsort(took + t * tenth, (size_t)tenth, sizeof *took, cmp_u64);
		printf("letters %ld..%ld: median append %.1f us\n", t * tenth, (t + 1) * tenth - 1,
		       (double)took[t * tenth + tenth / 2] / 1e3);
	}
	rc = dispatcher_burst(bus, pub, letters < 2000 ? letters : 2000) < 0;
out:
	free(took);
	if (pub)
		shmbus_pub_close(pub);
	if (bus) {
		/* the bus's log directory holds only dead.log: no recorder ran */
		char logdir[4096], file[4200];
		if (shmbus_log_dir(bus, logdir, sizeof logdir) > 0) {
			snprintf(file, sizeof file, "%s/dead.log", logdir);
			if ((unlink(file) < 0 && errno != ENOENT) || rmdir(logdir) < 0)
				fprintf(stderr, "shmbus-dlq-cost: could not remove %s: %s\n", logdir, strerror(errno));
		}
		shmbus_close(bus);
		shmbus_unlink(name);
	}
	if (dir == tmp)
		rmdir(tmp);
	return rc;
}
