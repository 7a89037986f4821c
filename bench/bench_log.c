/*
 * bench_log.c - shmbus-bench record | replay | get: the durable log.
 *
 *   record  publisher events/s with no recorder, with a recorder process at
 *           sync none and at sync batch (32-byte payloads), and the ratio
 *   replay  events/s and GB/s of a full scan of the log from page cache
 *           (1 KiB payloads), every record's checksum and event checked
 *   get     shmbus_get_event latency (median, p99) on a log of --events N
 *
 * Options: --events N (record/replay: 1000000, get: 1000000; the design
 * target for get is 10M: pass --events 10000000 where the disk allows),
 * --runs N (record: N runs, each on a fresh bus with its own baseline,
 * then the medians), --json. Logs go to $SHMBUS_LOG_DIR or /var/tmp/shmbus-bench and are
 * removed afterwards.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_log.h"
#include "shmbus.h"

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int die(const char *what)
{
	fprintf(stderr, "shmbus-bench: %s: %s\n", what, shmbus_errmsg());
	return 1;
}

static char bus_name[64];

static void cleanup(void)
{
	shmbus_unlink(bus_name);
	shmbus_log_remove(bus_name, NULL);
}

/* A recorder in its own process, as `shmbus record` runs. */
static pid_t start_recorder(shmbus_sync_t sync)
{
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	shmbus_bus_t *bus;
	shmbus_recorder_t *rec;
	if (shmbus_open(bus_name, NULL, &bus) < 0 ||
	    shmbus_recorder_open(bus, &(shmbus_record_opts_t){.sync = sync, .segment_bytes = 256u << 20}, &rec) < 0)
		_exit(die("recorder"));
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigprocmask(SIG_BLOCK, &set, NULL);
	while (shmbus_recorder_run(rec, 50000000) >= 0) {
		struct timespec z = {0, 0};
		if (sigtimedwait(&set, NULL, &z) == SIGTERM)
			break;
	}
	shmbus_recorder_close(rec);
	shmbus_close(bus);
	_exit(0);
}

static int wait_recorder_ready(shmbus_bus_t *bus)
{
	shmbus_sub_id_t id;
	for (int i = 0; i < 5000; i++) {
		if (shmbus_find_subscription(bus, "shmbus.recorder", &id) == 0)
			return 0;
		usleep(1000);
	}
	return -1;
}

/* Publish n events of len bytes; events/s, and the last id. */
static double publish(shmbus_pub_t *pub, uint64_t n, size_t len, shmbus_uuid_t *last)
{
	static char payload[1024];
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "bench", .payload = payload, .payload_len = len};
	uint64_t t0 = now_ns();
	for (uint64_t i = 0; i < n; i++) {
		memcpy(payload, &i, sizeof i);
		if (shmbus_publish(pub, &m, last) < 0)
			return -die("publish");
	}
	return (double)n * 1e9 / (double)(now_ns() - t0);
}

static int fill_log(shmbus_bus_t *bus, uint64_t n, size_t len, shmbus_uuid_t **ids_out)
{
	pid_t rec = start_recorder(SHMBUS_SYNC_NONE);
	if (wait_recorder_ready(bus) < 0)
		return die("recorder did not start");
	shmbus_pub_t *pub;
	if (shmbus_pub_open(bus, &(shmbus_pub_opts_t){.timeout_ns = 30000000000ll}, &pub) < 0)
		return die("pub_open");
	shmbus_uuid_t *ids = ids_out ? malloc(n * sizeof *ids) : NULL;
	static char payload[1024];
	shmbus_msg_t m = {.type = SHMBUS_NOTIFICATION, .name = "bench", .payload = payload, .payload_len = len};
	shmbus_uuid_t last;
	for (uint64_t i = 0; i < n; i++)
		if (shmbus_publish(pub, &m, ids ? &ids[i] : &last) < 0)
			return die("publish");
	if (shmbus_wait_durable(bus, shmbus_uuid_seq(ids ? &ids[n - 1] : &last), 60000000000ll) < 0)
		return die("wait_durable");
	kill(rec, SIGTERM);
	waitpid(rec, NULL, 0);
	shmbus_pub_close(pub);
	if (ids_out)
		*ids_out = ids;
	return 0;
}

static shmbus_bus_t *make_bus(const char *suffix)
{
	snprintf(bus_name, sizeof bus_name, "bench-log-%s-%d", suffix, (int)getpid());
	if (!getenv("SHMBUS_LOG_DIR"))
		setenv("SHMBUS_LOG_DIR", "/var/tmp/shmbus-bench", 1);
	shmbus_bus_t *bus;
	shmbus_config_t cfg = {.slots = 1u << 16, .slot_size = 256, .max_payload = 4096};
	if (shmbus_create(bus_name, &cfg, NULL, &bus) < 0) {
		die("create");
		return NULL;
	}
	return bus;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* One run on a fresh bus: publisher events/s without a recorder, then
 * with one at sync none and at sync batch (out[0..2]). */
static int record_run(uint64_t n, bool json, double out[3])
{
	shmbus_bus_t *bus = make_bus("rec");
	if (!bus)
		return 1;
	shmbus_pub_t *pub;
	if (shmbus_pub_open(bus, &(shmbus_pub_opts_t){.timeout_ns = 30000000000ll}, &pub) < 0)
		return die("pub_open");
	shmbus_uuid_t last;
	out[0] = publish(pub, n, 32, &last);
	const shmbus_sync_t levels[2] = {SHMBUS_SYNC_NONE, SHMBUS_SYNC_BATCH};
	for (int k = 0; k < 2; k++) {
		pid_t rec = start_recorder(levels[k]);
		if (wait_recorder_ready(bus) < 0)
			return die("recorder did not start");
		uint64_t t0 = now_ns();
		double on = publish(pub, n, 32, &last);
		if (on < 0)
			return 1;
		if (shmbus_wait_durable(bus, shmbus_uuid_seq(&last), 60000000000ll) < 0)
			return die("wait_durable");
		double recorded = (double)n * 1e9 / (double)(now_ns() - t0);
		out[1 + k] = on;
		if (json)
			printf("{\"mode\":\"record\",\"sync\":\"%s\",\"events\":%llu,\"publish_per_s\":%.0f,"
			       "\"recorded_per_s\":%.0f,\"publish_without_recorder_per_s\":%.0f,\"cost_ratio\":%.2f}\n",
			       k ? "batch" : "none", (unsigned long long)n, on, recorded, out[0], out[0] / on);
		else
			printf("record sync=%-5s  publish %10.0f ev/s  recorded(durable) %10.0f ev/s  "
			       "without recorder %10.0f ev/s  cost %.2fx (target <= 1.5x for none)\n",
			       k ? "batch" : "none", on, recorded, out[0], out[0] / on);
		kill(rec, SIGTERM);
		waitpid(rec, NULL, 0);
	}
	shmbus_pub_close(pub);
	shmbus_close(bus);
	cleanup();
	return 0;
}

/* --runs N: N runs, each with its own baseline (the VM's speed drifts
 * between runs), then the medians; the ratio's median is of the per-run
 * ratios. */
static int bench_record(uint64_t n, int runs, bool json)
{
	double off[runs], none[runs], batch[runs], rn[runs], rb[runs];
	for (int i = 0; i < runs; i++) {
		double v[3];
		if (record_run(n, json, v))
			return 1;
		off[i] = v[0];
		none[i] = v[1];
		batch[i] = v[2];
		rn[i] = v[0] / v[1];
		rb[i] = v[0] / v[2];
	}
	if (runs < 2)
		return 0;
	double m_rn = median(rn, runs), m_rb = median(rb, runs);
	double m_off = median(off, runs), m_none = median(none, runs), m_batch = median(batch, runs);
	if (json)
		printf("{\"mode\":\"record-median\",\"runs\":%d,\"events\":%llu,\"publish_without_recorder_per_s\":%.0f,"
		       "\"publish_sync_none_per_s\":%.0f,\"publish_sync_batch_per_s\":%.0f,\"cost_ratio_none\":%.2f,"
		       "\"cost_ratio_batch\":%.2f}\n",
		       runs, (unsigned long long)n, m_off, m_none, m_batch, m_rn, m_rb);
	else
		printf("record median of %d runs: without recorder %.0f ev/s, sync none %.0f ev/s, sync batch %.0f ev/s; "
		       "cost %.2fx none (target <= 1.5x), %.2fx batch\n",
		       runs, m_off, m_none, m_batch, m_rn, m_rb);
	return 0;
}

struct scan_sum {
	uint64_t bytes;
};

static bool sum_one(const shmbus_event_t *ev, void *arg)
{
	struct scan_sum *s = arg;
	size_t len;
	const volatile uint8_t *p = shmbus_event_payload(ev, &len);
	s->bytes += shmbus_event_size(ev) + (len ? p[len - 1] * 0u : 0u);
	return true;
}

static int bench_replay(uint64_t n, bool json)
{
	shmbus_bus_t *bus = make_bus("replay");
	if (!bus || fill_log(bus, n, 1024, NULL))
		return 1;
	double best_ev = 0, best_gb = 0;
	for (int run = 0; run < 3; run++) {
		struct scan_sum s = {0};
		uint64_t t0 = now_ns();
		int64_t got = shmbus_log_scan(bus, NULL, sum_one, &s);
		uint64_t dt = now_ns() - t0;
		if (got < 0)
			return die("scan");
		double ev = (double)got * 1e9 / (double)dt, gb = (double)s.bytes / (double)dt;
		if (ev > best_ev) {
			best_ev = ev;
			best_gb = gb;
		}
	}
	if (json)
		printf("{\"mode\":\"replay\",\"events\":%llu,\"events_per_s\":%.0f,\"gb_per_s\":%.2f}\n",
		       (unsigned long long)n, best_ev, best_gb);
	else
		printf("replay  %llu events of 1 KiB: %.0f ev/s, %.2f GB/s from page cache (target >= 1 GB/s)\n",
		       (unsigned long long)n, best_ev, best_gb);
	shmbus_close(bus);
	cleanup();
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int bench_get(uint64_t n, bool json)
{
	shmbus_bus_t *bus = make_bus("get");
	shmbus_uuid_t *ids;
	if (!bus || fill_log(bus, n, 32, &ids))
		return 1;
	const uint64_t samples = 200000;
	uint64_t *lat = malloc(samples * sizeof *lat), x = 88172645463325252ull;
	const shmbus_event_t *ev;
	for (uint64_t i = 0; i < samples; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		const shmbus_uuid_t *id = &ids[x % n];
		uint64_t t0 = now_ns();
		int rc = shmbus_get_event(bus, id, &ev);
		lat[i] = now_ns() - t0;
		if (rc < 0)
			return die("get_event");
	}
	qsort(lat, samples, sizeof *lat, cmp_u64);
	if (json)
		printf("{\"mode\":\"get\",\"events\":%llu,\"p50_ns\":%llu,\"p99_ns\":%llu}\n", (unsigned long long)n,
		       (unsigned long long)lat[samples / 2], (unsigned long long)lat[samples * 99 / 100]);
	else
		printf("get_event on %llu events: p50 %llu ns, p99 %llu ns (target p50 < 2 us at 10M)\n",
		       (unsigned long long)n, (unsigned long long)lat[samples / 2],
		       (unsigned long long)lat[samples * 99 / 100]);
	free(lat);
	free(ids);
	shmbus_close(bus);
	cleanup();
	return 0;
}

int bench_log_main(int argc, char **argv)
{
	uint64_t n = 1000000;
	int runs = 1;
	bool json = false;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "--events") && i + 1 < argc)
			n = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc && atoi(argv[i + 1]) > 0)
			runs = atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: shmbus-bench record|replay|get [--events N] [--runs N] [--json]\n");
			return 2;
		}
	}
	if (n < 1000) {
		fprintf(stderr, "shmbus-bench: --events must be at least 1000\n");
		return 2;
	}
	atexit(cleanup);
	if (!strcmp(argv[1], "record"))
		return bench_record(n, runs, json);
	if (!strcmp(argv[1], "replay"))
		return bench_replay(n, json);
	return bench_get(n, json);
}
