/*
 * make_corpus.c - writes the fuzz targets' seed corpora from a live bus,
 * so that they follow the formats: run it after a change of the segment
 * layout, the event format or the log format, and commit what it wrote.
 *
 *   build/tests/fuzz/fuzz-make-corpus tests/fuzz/corpus
 *
 * It creates a small bus (and its log, in a temporary directory), puts
 * real traffic on it and copies bytes out:
 *   event/ev0..ev3        four events as delivered (every field and
 *                         metadata; the least; a payload spanning slots;
 *                         target and some context strings only)
 *   segment/live          the whole bus: members, a publisher, three
 *                         subscriptions (one with queued events, one
 *                         holding one, one paused), events in the ring
 *   segment/header-only   its first 4 KiB
 *   segment/truncated     its first 16 KiB
 *   log/segment           the first 8 KiB of the log's first segment
 *   log/torn              the same cut inside a record
 *   log/index-header      the first 4 KiB of that segment's index
 * The CLI corpus is hand-written text and is not made here.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shmbus.h"

static const char *out_root;
/* what to remove on the way out, however it goes: the bus and its log */
static char bus_name[64];
static char log_root[] = "/tmp/shmbus-corpus-XXXXXX";
static bool log_root_made;

static void clean_up(void)
{
	if (bus_name[0]) {
		shmbus_unlink(bus_name);
		shmbus_log_remove(bus_name, log_root);
	}
	if (log_root_made)
		rmdir(log_root);
}

static void die(const char *what, int rc)
{
	fprintf(stderr, "make_corpus: %s: %s (%s)\n", what, strerror(rc < 0 ? -rc : rc), shmbus_errmsg());
	exit(1);
}

/* Write the first n bytes of buf to <out_root>/<dir>/<name>. */
static void put(const char *dir, const char *name, const void *buf, size_t n)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/%s", out_root, dir);
	mkdir(path, 0755);
	snprintf(path, sizeof path, "%s/%s/%s", out_root, dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(buf, 1, n, f) != n || fclose(f) != 0)
		die(path, errno);
	printf("%s: %zu bytes\n", path, n);
}

/* The whole file at path, in a malloc'd buffer. */
static void *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die(path, errno);
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	void *buf = malloc((size_t)len);
	if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len)
		die(path, errno);
	fclose(f);
	*n = (size_t)len;
	return buf;
}

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* The first file in dir named by digits and suffix (a segment's
 * <first sequence>.log and .idx, not dead.log), into path. */
static void find_file(const char *dir, const char *suffix, char *path, size_t cap)
{
	DIR *d = opendir(dir);
	if (!d)
		die(dir, errno);
	struct dirent *e;
	while ((e = readdir(d))) {
		size_t l = strlen(e->d_name), s = strlen(suffix), digits = 0;
		while (digits < l && isdigit((unsigned char)e->d_name[digits]))
			digits++;
		if (digits > 0 && digits + s == l && strcmp(e->d_name + digits, suffix) == 0) {
			snprintf(path, cap, "%s/%s", dir, e->d_name);
			closedir(d);
			return;
		}
	}
	closedir(d);
	die(suffix, ENOENT);
}

static const shmbus_event_t *take(shmbus_sub_t *sub)
{
	const shmbus_event_t *ev;
	int rc = shmbus_wait(sub, 1000000000, &ev);
	if (rc != 1)
		die("wait", rc ? rc : -ETIMEDOUT);
	return ev;
}

static void write_events(shmbus_pub_t *pub, shmbus_sub_t *sub)
{
	static char big[600];
	memset(big, 'p', sizeof big);
	shmbus_meta_t meta[2] = {{.key = "tenant", .value = "blue"}, {.key = "k", .value = ""}};
	shmbus_msg_t msgs[4] = {
		{.type = SHMBUS_COMMAND, .name = "ship", .target = "courier", .priority = SHMBUS_PRIORITY_HIGH,
		 .ttl_ns = 5000000000, .max_retries = 3, .schema_version = 2, .content_type = SHMBUS_CONTENT_JSON,
		 .conversation_id = "conv", .user_id = "u7", .intent = "deliver", .decision_id = "d",
		 .has_confidence = true, .confidence = 0.5f, .metadata = meta, .metadata_count = 2,
		 .payload = "{\"n\":1}", .payload_len = 7},
		{.type = SHMBUS_NOTIFICATION, .name = "e"},
		{.type = SHMBUS_NOTIFICATION, .name = "bulk", .payload = big, .payload_len = sizeof big},
		{.type = SHMBUS_QUERY, .name = "ask", .target = "oracle", .user_id = "u7", .decision_id = "d",
		 .payload = "??", .payload_len = 2},
	};
	for (int i = 0; i < 4; i++) {
		int rc = shmbus_publish(pub, &msgs[i], NULL);
		if (rc < 0)
			die("publish", rc);
		const shmbus_event_t *ev = take(sub);
		char name[8];
		snprintf(name, sizeof name, "ev%d", i);
		put("event", name, ev, shmbus_event_size(ev));
		shmbus_release(sub, ev);
	}
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
		return 2;
	}
	out_root = argv[1];
	struct stat st;
	if (stat(out_root, &st) != 0 || !S_ISDIR(st.st_mode))
		die(out_root, ENOTDIR);
	atexit(clean_up);
	if (!mkdtemp(log_root))
		die("mkdtemp", errno);
	log_root_made = true;
	char name[64];
	snprintf(name, sizeof name, "corp%d", (int)getpid());
	shmbus_config_t cfg = {.slots = 64, .slot_size = 256, .max_payload = 1024, .max_subscribers = 4};
	shmbus_bus_t *bus;
	int rc = shmbus_create(name, &cfg, &(shmbus_open_opts_t){.label = "corpus"}, &bus);
	if (rc < 0)
		die("create", rc);
	snprintf(bus_name, sizeof bus_name, "%s", name);
	if ((rc = shmbus_log_configure(bus, &(shmbus_log_config_t){.dir = log_root, .sync = SHMBUS_SYNC_NONE})) < 0)
		die("log_configure", rc);
	shmbus_recorder_t *rec;
	if ((rc = shmbus_recorder_open(bus, &(shmbus_record_opts_t){.no_wait = true}, &rec)) < 0)
		die("recorder_open", rc);
	shmbus_pub_t *pub;
	if ((rc = shmbus_pub_open(bus, &(shmbus_pub_opts_t){.source = "corpus-pub"}, &pub)) < 0)
		die("pub_open", rc);
	shmbus_sub_t *reader, *holder, *paused;
	if ((rc = shmbus_subscribe(bus, &(shmbus_sub_opts_t){.subscriber_id = "reader"}, &reader)) < 0)
		die("subscribe", rc);
	write_events(pub, reader);
	if ((rc = shmbus_subscribe(bus, &(shmbus_sub_opts_t){.subscriber_id = "holder"}, &holder)) < 0 ||
	    (rc = shmbus_subscribe(bus, &(shmbus_sub_opts_t){.subscriber_id = "paused"}, &paused)) < 0)
		die("subscribe", rc);
	for (uint32_t i = 0; i < 12; i++) {
		shmbus_msg_t m = {.type = i % 3 ? SHMBUS_NOTIFICATION : SHMBUS_COMMAND, .name = i % 2 ? "odd" : "even",
				  .priority = i % 5 == 0 ? SHMBUS_PRIORITY_HIGH : SHMBUS_PRIORITY_NORMAL,
				  .payload = &i, .payload_len = 4};
		if ((rc = shmbus_publish(pub, &m, NULL)) < 0)
			die("publish", rc);
		if (i == 3)
			shmbus_pause(bus, shmbus_sub_id(paused));
	}
	const shmbus_event_t *held = take(holder); /* held while the segment is copied */
	(void)held;
	for (int i = 0; i < 200; i++) /* everything so far into the log */
		shmbus_recorder_run(rec, 2000000);

	char path[PATH_MAX];
	snprintf(path, sizeof path, "/dev/shm/shmbus.%s", name);
	size_t n;
	unsigned char *seg = slurp(path, &n);
	put("segment", "live", seg, n);
	put("segment", "header-only", seg, min_size(n, 4096));
	put("segment", "truncated", seg, min_size(n, 16384));
	free(seg);

	char dir[PATH_MAX];
	if ((rc = shmbus_log_dir(bus, dir, sizeof dir)) < 0)
		die("log_dir", rc);
	find_file(dir, ".log", path, sizeof path);
	unsigned char *log = slurp(path, &n);
	put("log", "segment", log, min_size(n, 8192));
	put("log", "torn", log, min_size(n, 4700));
	free(log);
	find_file(dir, ".idx", path, sizeof path);
	unsigned char *idx = slurp(path, &n);
	put("log", "index-header", idx, min_size(n, 4096));
	free(idx);

	shmbus_recorder_close(rec);
	shmbus_sub_close(reader);
	shmbus_sub_close(holder);
	shmbus_sub_close(paused);
	shmbus_pub_close(pub);
	shmbus_close(bus);
	return 0; /* clean_up removes the bus and its log */
}
