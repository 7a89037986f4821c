/*
 * dump_log.c - shm-dump on log files: a segment (<seq>.log), its index
 * (<seq>.idx) or a dead-letter log (dead.log), decoded record by record
 * through shmbus_log_inspect_file, damage included.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli_util.h"
#include "dump_log.h"
#include "event_json.h"

struct dump_ctx {
	bool json;
	uint64_t skip;		/* records not shown: all but the last max_events */
	uint64_t records, damaged;
	int rc;
};

static void count_record(const shmbus_logi_item_t *it, void *arg)
{
	if (it->kind == SHMBUS_LOGI_RECORD)
		++*(uint64_t *)arg;
}

static void out_item(const shmbus_logi_item_t *it, void *arg)
{
	struct dump_ctx *d = arg;
	static const char *const kinds[] = {"?", "event", "dead_letter", "tombstone"};
	if (d->rc < 0)
		return;
	if (it->kind == SHMBUS_LOGI_RECORD && d->records++ < d->skip)
		return;
	if (it->kind == SHMBUS_LOGI_DAMAGE)
		d->damaged++;
	if (d->json) {
		json_t *j = json_add(json_object(), "item",
				     json_string(it->kind == SHMBUS_LOGI_RECORD ? "record"
						 : it->kind == SHMBUS_LOGI_DAMAGE ? "damage"
						 : it->kind == SHMBUS_LOGI_INDEX  ? "index"
										  : "header"),
				     "offset", json_integer((json_int_t)it->off), NULL);
		if (j && it->text)
			json_object_set_new(j, "text", json_text(it->text));
		if (j && it->kind == SHMBUS_LOGI_RECORD) {
			json_object_set_new(j, "kind", json_string(kinds[it->record_kind < 4 ? it->record_kind : 0]));
			json_object_set_new(j, "seq", json_integer((json_int_t)it->seq));
			if (it->event) {
				shmbus_inspect_event_t v;
				event_view_from_event(it->event, &v);
				json_object_set_new(j, "event", event_json(&v));
			}
		}
		d->rc = j ? json_print_line(stdout, j) : -ENOMEM;
		json_decref(j);
		return;
	}
	switch (it->kind) {
	case SHMBUS_LOGI_RECORD:
		printf("@%llu %s seq=%llu", (unsigned long long)it->off, kinds[it->record_kind < 4 ? it->record_kind : 0],
		       (unsigned long long)it->seq);
		if (it->dead)
			printf(" attempts=%u last_error=%d sub=%s", it->dead->attempts, it->dead->last_error,
			       it->dead->group[0] ? it->dead->group : it->dead->subscriber_id);
		if (it->text)
			printf(" %s", it->text);
		putchar('\n');
		if (it->event) {
			shmbus_inspect_event_t v;
			event_view_from_event(it->event, &v);
			fputs("    ", stdout);
			d->rc = event_print_line(stdout, &v);
		}
		break;
	case SHMBUS_LOGI_DAMAGE:
		printf("DAMAGE @%llu: %s\n", (unsigned long long)it->off, it->text);
		break;
	default:
		printf("%s\n", it->text);
	}
}

bool dump_is_log_file(const char *target)
{
	size_t n = strlen(target);
	return (n > 4 && (strcmp(target + n - 4, ".log") == 0 || strcmp(target + n - 4, ".idx") == 0));
}

int dump_log_file(const char *path, bool json, uint32_t max_events)
{
	/* the last max_events records, as of a live bus: counted first */
	uint64_t total = 0;
	int rc = shmbus_log_inspect_file(path, count_record, &total);
	if (rc < 0)
		return cli_lib_error(path, rc);
	struct dump_ctx d = {.json = json, .skip = total > max_events ? total - max_events : 0};
	rc = shmbus_log_inspect_file(path, out_item, &d);
	if (rc < 0)
		return cli_lib_error(path, rc);
	if (d.rc < 0)
		return cli_output_failed(path, -d.rc);
	if (!json)
		printf("%llu valid records, %llu damaged spots\n", (unsigned long long)d.records,
		       (unsigned long long)d.damaged);
	return d.damaged ? EXIT_RUNTIME : 0;
}
